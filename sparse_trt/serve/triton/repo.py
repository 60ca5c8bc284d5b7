"""Generate Triton model repositories: the TensorRT-LLM ensemble (+ a cancellable BLS entry), or a PyTorch model.

Both repositories expose the same entry model (default name ``ensemble``)::

    text_input STRING [1], max_tokens INT64 [1], stream BOOL [1] (optional), temperature FP32 [1],
    top_k INT32 [1], top_p FP32 [1], random_seed UINT64 [1], ignore_eos BOOL [1] (all optional)
    -> text_output STRING [1]

so a client (``client.py``) cannot tell them apart. ``max_tokens`` is INT64 so that a JSON value beyond
int32 reaches the model unchanged and is refused (HTTP 400) instead of wrapping.

Cancellation: Triton does not forward a client's cancellation into an ensemble's steps. The PyTorch
repository therefore has no ensemble: its entry is one decoupled Python model that tokenizes, generates
and detokenizes and stops at the next decoding step once cancelled. The TensorRT-LLM repository keeps
NVIDIA's ensemble layout and adds ``tensorrt_llm_bls`` (``NAME_tensorrt_llm_bls``) beside it, which
cancels the engine's request when its client cancels. Every config.pbtxt is a ModelConfig message.
Paths to the engine / model / tokenizer are stored absolute: generate the repository where it will be
served (or on the same mount layout), as with NVIDIA's own tensorrtllm_backend templates.
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from sparse_trt.core.atomic import atomic_output_dir
from sparse_trt.engine.folder import read_engine_dir

from . import pbtxt
from .errors import TokenizerError, TritonRepoError
from .names import validate_model_name

log = logging.getLogger(__name__)

BACKENDS = ("tensorrtllm", "pytorch")
# static batching ("V1") was removed from the TensorRT-LLM Triton backend and cannot stream: in-flight only
BATCHING = "inflight_fused_batching"
_PY_MODELS = Path(__file__).parent / "python_models"


@dataclass
class RepoResult:
    path: Path
    backend: str
    entry: str  # the model clients call
    models: list[str]
    notes: list[str] = field(default_factory=list)
    cancellable: str | None = None  # the entry that stops generation when its client cancels


# ----------------------------------------------------------------------------------------- interface
def client_inputs() -> list[dict]:
    t = pbtxt.tensor
    return [
        t("text_input", "STRING", [1]),
        t("max_tokens", "INT64", [1]),
        t("stream", "BOOL", [1], optional=True),
        t("temperature", "FP32", [1], optional=True),
        t("top_k", "INT32", [1], optional=True),
        t("top_p", "FP32", [1], optional=True),
        t("random_seed", "UINT64", [1], optional=True),
        t("ignore_eos", "BOOL", [1], optional=True),
    ]


def client_outputs() -> list[dict]:
    return [pbtxt.tensor("text_output", "STRING", [1])]


def _names(name: str) -> tuple[str, str]:
    """(entry model name, prefix for composing models): standard names for 'ensemble', else '<name>_...'."""
    validate_model_name(name)
    return name, ("" if name == "ensemble" else f"{name}_")


# ----------------------------------------------------------------------------------------- validation
def validate_engine_dir(engine_dir: Path) -> dict:
    """Check a TensorRT-LLM engine folder (engine.folder.read_engine_dir); return its parsed config.json."""
    return read_engine_dir(engine_dir).config


def validate_tokenizer(tokenizer_dir: Path | None, what: str = "--tokenizer"):
    """Check a tokenizer folder loads with AutoTokenizer; return the tokenizer."""
    if tokenizer_dir is None:
        raise TokenizerError(f"{what} is required", fix="pass the HF folder the engine was built from (it holds the tokenizer)")
    d = Path(tokenizer_dir)
    if not d.is_dir():
        raise TokenizerError(f"tokenizer folder '{d}' ({what}) does not exist", fix="pass a folder with tokenizer.json / tokenizer_config.json")
    names = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    if not any((d / n).is_file() for n in names):
        raise TokenizerError(f"'{d}' ({what}) holds no tokenizer files ({', '.join(names)})",
                             fix="pass the HF model folder the engine was built from, or save its tokenizer there")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(d))
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds
        raise TokenizerError(f"the tokenizer in '{d}' ({what}) does not load: {e}", fix="re-save it with tokenizer.save_pretrained") from None


def _check_device_spec(device: str, sparse_kernels: bool) -> str:
    s = device.strip().lower()
    if s not in ("auto", "cpu") and not re.fullmatch(r"cuda(:\d+)?", s):
        raise TritonRepoError(f"--device '{device}' is not understood", fix="use auto, cpu, cuda or cuda:N")
    if sparse_kernels and s == "cpu":
        raise TritonRepoError("--sparse-kernels needs a CUDA device (torch 2:4 kernels run on Ampere or newer GPUs)",
                              fix="use --device cuda (or auto on a GPU machine), or drop --sparse-kernels")
    return s


def _positive(value: int, what: str) -> int:
    if int(value) < 1:
        raise TritonRepoError(f"{what} must be >= 1, got {value}", fix=f"pass {what} 1 or more")
    return int(value)


def _copy_model_code(dst_version_dir: Path, source_name: str) -> None:
    dst_version_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_PY_MODELS / source_name, dst_version_dir / "model.py")


def _check_existing(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise TritonRepoError(f"repository folder '{out}' already exists",
                              fix="choose another -o path, or pass --overwrite to replace it (only on success)")


# ----------------------------------------------------------------------------------------- pytorch
def threads_setting(threads: int | str | None) -> str:
    """--threads: 'auto' (usable cores // instances, resolved when the server loads the model) or a count >= 1."""
    if threads is None or str(threads).strip().lower() == "auto":
        return "auto"
    try:
        n = int(str(threads).strip())
    except ValueError:
        n = 0
    if n < 1:
        raise TritonRepoError(f"--threads '{threads}' is not a thread count",
                              fix="use auto (cores divided by --instances) or a whole number >= 1")
    return str(n)


def pytorch_configs(model_dir: Path, *, name: str = "ensemble", device: str = "auto", dtype: str = "auto",
                    sparse_kernels: bool = False, max_batch_size: int = 8, instances: int = 1,
                    threads: int | str | None = "auto") -> dict[str, object]:
    """model name -> ModelConfig for the PyTorch repository: one decoupled Python model, the entry itself."""
    entry, _ = _names(name)
    mbs = _positive(max_batch_size, "--max-batch-size")
    cfg = pbtxt.model_config(
        entry, backend="python", max_batch_size=mbs, inputs=client_inputs(), outputs=client_outputs(),
        decoupled=True, instances=_positive(instances, "--instances"),
        parameters={"model_dir": str(Path(model_dir).absolute()), "device": device, "dtype": dtype,
                    "sparse_kernels": "true" if sparse_kernels else "false", "max_concurrency": str(mbs),
                    "intra_op_threads": threads_setting(threads)},
    )
    return {entry: cfg}


def build_pytorch_repo(model_dir: Path, out: Path, *, name: str = "ensemble", device: str = "auto", dtype: str = "auto",
                       sparse_kernels: bool = False, max_batch_size: int = 8, instances: int = 1,
                       threads: int | str | None = "auto", overwrite: bool = False) -> RepoResult:
    from sparse_trt.models.loading import load_config, resolve_source

    out = Path(out)
    _check_existing(out, overwrite)
    device = _check_device_spec(device, sparse_kernels)
    src = resolve_source(str(model_dir))  # ModelLoadError names the input
    if src.kind != "dir":
        raise TritonRepoError(f"'{model_dir}' is not a local Hugging Face model folder",
                              fix="download or convert it to a folder first (the server loads it from disk)")
    load_config(src)  # readable config, no custom code
    validate_tokenizer(Path(src.location), what="the model folder's tokenizer")
    configs = pytorch_configs(Path(src.location), name=name, device=device, dtype=dtype,
                              sparse_kernels=sparse_kernels, max_batch_size=max_batch_size, instances=instances,
                              threads=threads)
    with atomic_output_dir(out, overwrite=overwrite, what="model repository") as tmp:
        for model, cfg in configs.items():
            pbtxt.write_config(tmp / model, cfg)
            if cfg.backend == "python":
                _copy_model_code(tmp / model / "1", "pytorch_llm.py")
            else:
                (tmp / model / "1").mkdir(parents=True, exist_ok=True)
    entry = next(iter(configs))
    notes = []
    if sparse_kernels:
        notes.append("2:4 kernels need an Ampere+ GPU and fp16/bf16 weights (use dtype float16 if the checkpoint is fp32)")
    return RepoResult(out, "pytorch", entry, list(configs), notes, cancellable=entry)


# ----------------------------------------------------------------------------------------- tensorrt-llm
def trtllm_configs(engine_dir: Path, tokenizer_dir: Path, *, name: str = "ensemble", max_batch_size: int = 8,
                   decoupled: bool = True, kv_cache_free_gpu_mem_fraction: float = 0.9, instances: int = 1,
                   max_queue_delay_us: int = 0, max_seq_len: int | None = None,
                   max_input_len: int | None = None) -> dict[str, object]:
    """model name -> ModelConfig: the ensemble (entry), its three steps, and the cancellable BLS entry."""
    entry, prefix = _names(name)
    pre, llm, post = f"{prefix}preprocessing", f"{prefix}tensorrt_llm", f"{prefix}postprocessing"
    bls = f"{prefix}tensorrt_llm_bls"
    mbs = _positive(max_batch_size, "--max-batch-size")
    inst = _positive(instances, "--instances")
    limits = {k: str(int(v)) for k, v in (("max_seq_len", max_seq_len), ("max_input_len", max_input_len))
              if isinstance(v, int) and v > 0}
    if not 0.0 < float(kv_cache_free_gpu_mem_fraction) <= 1.0:
        raise TritonRepoError(f"--kv-cache-free-gpu-mem-fraction {kv_cache_free_gpu_mem_fraction} is outside (0, 1]",
                              fix="use e.g. 0.9")
    t = pbtxt.tensor
    tok = str(Path(tokenizer_dir).absolute())
    pre_cfg = pbtxt.model_config(
        pre, backend="python", max_batch_size=mbs, instances=inst,
        inputs=[t("QUERY", "STRING", [1]), t("MAX_TOKENS", "INT64", [1]), t("IGNORE_EOS", "BOOL", [1], optional=True)],
        outputs=[t("INPUT_ID", "INT32", [-1]), t("REQUEST_INPUT_LEN", "INT32", [1]), t("REQUEST_OUTPUT_LEN", "INT32", [1]),
                 t("END_ID", "INT32", [1]), t("PAD_ID", "INT32", [1])],
        parameters={"tokenizer_dir": tok, "add_special_tokens": "true"} | limits,
    )
    # as in the TensorRT-LLM backend's own template: per-request scalars are dims [1] reshaped to [], and the
    # sampling seed is read from `seed` (inflight_batcher_llm/src/utils.h); `stop` + a request id cancels
    scalar: list[int] = []
    llm_cfg = pbtxt.model_config(
        llm, backend="tensorrtllm", max_batch_size=mbs, decoupled=decoupled, instances=1,
        dynamic_batching=True, max_queue_delay_us=max_queue_delay_us,
        inputs=[
            t("input_ids", "INT32", [-1], ragged=True),
            t("input_lengths", "INT32", [1], reshape=scalar),
            t("request_output_len", "INT32", [1], reshape=scalar),
            t("end_id", "INT32", [1], reshape=scalar, optional=True),
            t("pad_id", "INT32", [1], reshape=scalar, optional=True),
            t("streaming", "BOOL", [1], reshape=scalar, optional=True),
            t("stop", "BOOL", [1], reshape=scalar, optional=True),
            t("temperature", "FP32", [1], reshape=scalar, optional=True),
            t("runtime_top_k", "INT32", [1], reshape=scalar, optional=True),
            t("runtime_top_p", "FP32", [1], reshape=scalar, optional=True),
            t("seed", "UINT64", [1], reshape=scalar, optional=True),
        ],
        outputs=[t("output_ids", "INT32", [-1, -1]), t("sequence_length", "INT32", [-1])],
        parameters={
            "gpt_model_type": BATCHING,
            "gpt_model_path": str(Path(engine_dir).absolute()),
            "max_beam_width": "1",
            "batch_scheduler_policy": "guaranteed_no_evict",
            "kv_cache_free_gpu_mem_fraction": str(float(kv_cache_free_gpu_mem_fraction)),
            "exclude_input_in_output": "true",
            "enable_kv_cache_reuse": "false",
            "enable_chunked_context": "false",
            "FORCE_CPU_ONLY_INPUT_TENSORS": "no",
        },
    )
    # the TensorRT-LLM backend schedules on the GPU itself; Triton's instance kind stays CPU
    post_cfg = pbtxt.model_config(
        post, backend="python", max_batch_size=mbs, instances=inst,
        inputs=[t("TOKENS_BATCH", "INT32", [-1, -1]), t("SEQUENCE_LENGTH", "INT32", [-1])],
        outputs=[t("OUTPUT", "STRING", [-1])],
        parameters={"tokenizer_dir": tok, "skip_special_tokens": "true"},
    )
    ens = pbtxt.model_config(entry, platform="ensemble", max_batch_size=mbs, inputs=client_inputs(), outputs=client_outputs())
    pbtxt.add_ensemble_step(ens, pre, {"QUERY": "text_input", "MAX_TOKENS": "max_tokens", "IGNORE_EOS": "ignore_eos"},
                            {"INPUT_ID": "_INPUT_ID", "REQUEST_INPUT_LEN": "_INPUT_LEN", "REQUEST_OUTPUT_LEN": "_OUTPUT_LEN",
                             "END_ID": "_END_ID", "PAD_ID": "_PAD_ID"})
    pbtxt.add_ensemble_step(ens, llm, {
        "input_ids": "_INPUT_ID", "input_lengths": "_INPUT_LEN", "request_output_len": "_OUTPUT_LEN",
        "end_id": "_END_ID", "pad_id": "_PAD_ID", "streaming": "stream", "temperature": "temperature",
        "runtime_top_k": "top_k", "runtime_top_p": "top_p", "seed": "random_seed",
    }, {"output_ids": "_TOKENS", "sequence_length": "_SEQ_LEN"})
    pbtxt.add_ensemble_step(ens, post, {"TOKENS_BATCH": "_TOKENS", "SEQUENCE_LENGTH": "_SEQ_LEN"}, {"OUTPUT": "text_output"})
    # the cancellable entry: same interface, runs the steps itself (python_models/tensorrt_llm_bls.py)
    bls_cfg = pbtxt.model_config(
        bls, backend="python", max_batch_size=mbs, inputs=client_inputs(), outputs=client_outputs(),
        decoupled=True, instances=inst,
        parameters={"tokenizer_dir": tok, "tensorrt_llm_model_name": llm, "add_special_tokens": "true",
                    "skip_special_tokens": "true", "decoupled_llm": "true" if decoupled else "false"} | limits,
    )
    return {entry: ens, pre: pre_cfg, llm: llm_cfg, post: post_cfg, bls: bls_cfg}


def build_trtllm_repo(engine_dir: Path, tokenizer_dir: Path | None, out: Path, *, name: str = "ensemble",
                      max_batch_size: int = 8, decoupled: bool = True, kv_cache_free_gpu_mem_fraction: float = 0.9,
                      instances: int = 1, overwrite: bool = False) -> RepoResult:
    out = Path(out)
    _check_existing(out, overwrite)
    ecfg = validate_engine_dir(Path(engine_dir))
    validate_tokenizer(tokenizer_dir)
    notes: list[str] = []
    build = ecfg.get("build_config", {}) if isinstance(ecfg.get("build_config"), dict) else {}
    engine_mbs = build.get("max_batch_size")
    if isinstance(engine_mbs, int) and max_batch_size > engine_mbs:
        raise TritonRepoError(f"--max-batch-size {max_batch_size} exceeds the engine's max_batch_size {engine_mbs}",
                              fix=f"pass --max-batch-size {engine_mbs} or less, or rebuild the engine")
    world = int(((ecfg.get("pretrained_config") or {}).get("mapping") or {}).get("world_size", 1) or 1)
    if world > 1:
        notes.append(f"the engine has {world} ranks: serve it with MPI (tensorrtllm_backend's launch_triton_server.py "
                     f"--world_size {world}) inside the TensorRT-LLM container")
    if not decoupled:
        notes.append("--no-decoupled: streaming requests (stream=true) will be refused by the tensorrt_llm model, "
                     "and tensorrt_llm_bls cannot cancel a running request")
    lens = {k: build.get(k) for k in ("max_seq_len", "max_input_len")}
    configs = trtllm_configs(Path(engine_dir), Path(tokenizer_dir), name=name, max_batch_size=max_batch_size,
                             decoupled=decoupled, kv_cache_free_gpu_mem_fraction=kv_cache_free_gpu_mem_fraction,
                             instances=instances, **{k: v for k, v in lens.items() if isinstance(v, int)})
    code = {"preprocessing": "preprocessing.py", "postprocessing": "postprocessing.py",
            "tensorrt_llm_bls": "tensorrt_llm_bls.py"}
    with atomic_output_dir(out, overwrite=overwrite, what="model repository") as tmp:
        for model, cfg in configs.items():
            pbtxt.write_config(tmp / model, cfg)
            kind = next((k for k in code if model.endswith(k)), None)
            if cfg.backend == "python" and kind:
                _copy_model_code(tmp / model / "1", code[kind])
            else:
                (tmp / model / "1").mkdir(parents=True, exist_ok=True)
    entry, prefix = _names(name)
    notes.append(f"'{entry}' (the ensemble) does not stop generating when its client cancels or disconnects: "
                 f"clients that cancel should call '{prefix}tensorrt_llm_bls', which does")
    return RepoResult(out, "tensorrtllm", entry, list(configs), notes, cancellable=f"{prefix}tensorrt_llm_bls")
