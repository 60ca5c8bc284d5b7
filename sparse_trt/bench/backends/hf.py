"""``hf``: eager PyTorch (transformers) with a KV cache, greedy decoding, on CPU or CUDA.

The dense baseline everywhere. Run on a pruned model it demonstrates that zeros alone speed nothing
up: the same dense kernels multiply the zeros like any other value, so it reports no sparse kernels.

A folder quantized with ``sparse-trt quantize --format fp8`` runs its listed linears as FP8 GEMMs
(torch._scaled_mm, static per-tensor scales from quantization.json: fp8_linear.py) where torch can run
them on the device (CPU included): ``--opt fp8=auto`` (default; else the folder runs as stored and
info()["fp8"] says why), ``fp8=on`` (refuse when it cannot), ``fp8=off`` (as stored). ``fp8_rtol=``:
tolerance of the check of every FP8 linear against the simulated reference before timing (default 0.02).
"""

from __future__ import annotations

import inspect
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sparse_trt.core.errors import InputError, ManifestError
from sparse_trt.core.manifest import MANIFEST_NAME, Manifest
from sparse_trt.models.loading import LoadedModel, load_config, load_model, resolve_source

from ..memory import weights_bytes
from ..results import SparseKernels
from ..timing import Clock
from ..workload import Limits
from .base import Backend, GenerationRequest, SequenceTiming

log = logging.getLogger(__name__)

#: rows of random input in the check of each FP8 linear against the simulated reference
FP8_CHECK_ROWS = 16


@dataclass(frozen=True)
class HFOptions:
    fp8: str = "auto"  # auto | on | off: run an FP8-quantized folder's linears as FP8 GEMMs
    fp8_rtol: float = 0.02  # FP8-vs-simulated relative tolerance of the check before timing

    def __post_init__(self) -> None:
        if self.fp8 not in ("auto", "on", "off"):
            raise ValueError("fp8 must be one of auto, on, off")
        if not self.fp8_rtol > 0:
            raise ValueError("fp8_rtol must be > 0")


def looks_like_engine_dir(path: Path) -> bool:
    """A TensorRT-LLM engine folder: rank*.engine files, or a config.json with build_config."""
    if not path.is_dir():
        return False
    if any(path.glob("rank*.engine")) or any(path.glob("*.engine")):
        return True
    cfg = path / "config.json"
    if cfg.is_file():
        try:
            d = json.loads(cfg.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return False
        return isinstance(d, dict) and "build_config" in d and "pretrained_config" in d
    return False


class HFBackend(Backend):
    name = "hf"
    thread_safe = True
    model_kind = "Hugging Face model folder, hub id, .gguf file or built-in name"
    Options = HFOptions
    #: FP8 folders: try FP8 2:4 GEMMs (cuSPARSELt) for 2:4 linears (torch-2of4), else dense FP8 only
    fp8_sparse = False

    def __init__(self, spec) -> None:
        super().__init__(spec)
        p = Path(spec.model).expanduser()
        if looks_like_engine_dir(p):
            raise InputError(
                f"'{spec.model}' is a TensorRT-LLM engine folder, not a Hugging Face model",
                fix="use --backend trtllm for engines; --backend hf/torch-2of4 take HF model folders",
            )
        if p.exists() and p.is_dir() and not (p / "config.json").is_file():
            raise InputError(f"'{spec.model}' has no config.json: not a Hugging Face model folder",
                             fix="pass a folder written by save_pretrained / `sparse-trt prune`")
        self.loaded: LoadedModel | None = None
        self._config = None
        self._logits_kw: dict[str, int] = {}
        self._cache_kw = "past_key_values"
        if getattr(self.opts, "fp8", "off") == "on":  # refuse a folder that is not FP8-quantized before loading
            from .fp8_linear import fp8_folder

            fp8_folder("on", spec.model, self.name)
        self._fp8 = None  # fp8_linear.Fp8Decision, set by load()
        self._fp8_done = None  # fp8_linear.Fp8Applied when FP8 linears replaced the quantized ones

    # -- limits / loading ---------------------------------------------------------------------------
    def _cfg(self):
        if self._config is None:
            self._config = load_config(resolve_source(self.spec.model), self.spec.trust_remote_code)
        return self._config

    def limits(self) -> Limits:
        from sparse_trt.models.adapters import adapter_for

        cfg = self._cfg()
        adapter = adapter_for(getattr(cfg, "model_type", "?"))
        ctx = adapter.max_context(cfg)
        attr = next((a for a in adapter.context_attr if getattr(cfg, a, None) == ctx), "context")
        return Limits(max_seq_len=ctx, source=f"{attr} in the model's config.json")

    def load(self) -> None:
        self.loaded = load_model(self.spec.model, dtype=self.spec.dtype, trust_remote_code=self.spec.trust_remote_code,
                                 with_tokenizer=False)
        self.loaded.model.to(self.spec.device)
        self._load_fp8(sparse=self.fp8_sparse)
        params = inspect.signature(self.loaded.model.forward).parameters
        if "logits_to_keep" in params:
            self._logits_kw = {"logits_to_keep": 1}
        elif "num_logits_to_keep" in params:
            self._logits_kw = {"num_logits_to_keep": 1}
        # transformers 5.x renamed past_key_values -> cache (input and output); 4.x uses past_key_values
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    def _load_fp8(self, sparse: bool) -> None:
        """Decide ``--opt fp8`` and, when it applies, replace the quantized linears by FP8 ones (checked)."""
        from .fp8_linear import apply_fp8, decide_fp8

        self._fp8 = decide_fp8(getattr(self.opts, "fp8", "off"), self.spec.model, self.spec.device, self.name, sparse)
        if self._fp8.apply:
            self._fp8_done = apply_fp8(self.loaded.model, self.loaded.adapter, self._fp8,
                                       rtol=getattr(self.opts, "fp8_rtol", 0.02),
                                       rows=getattr(self.opts, "check_tokens", FP8_CHECK_ROWS), want_sparse=sparse)
            d = self._fp8_done
            log.info("%s: %d linears FP8 dense, %d FP8 2:4, %d quantized kept as stored (max rel. error %.2g)",
                     self.name, len(d.dense), len(d.sparse), len(d.kept), d.max_rel_err)
        elif self._fp8.spec is not None:
            log.info("%s: %s", self.name, self._fp8.reason)

    def fp8_info(self) -> dict[str, Any] | None:
        """What ran of the folder's FP8 quantization (None before load)."""
        from .fp8_linear import fp8_info

        return None if self._fp8 is None else fp8_info(self._fp8, self._fp8_done)

    def info(self) -> dict[str, Any]:
        f = self.fp8_info()
        return {} if f is None else {"fp8": f}

    @property
    def model(self) -> torch.nn.Module:
        if self.loaded is None:
            raise RuntimeError("backend not loaded")
        return self.loaded.model

    def vocab_size(self) -> int:
        v = getattr(self.model.config, "vocab_size", None)
        return int(v) if v else int(self.model.get_input_embeddings().weight.shape[0])

    def dtype_name(self) -> str | None:
        if self.loaded is not None:
            return str(next(self.model.parameters()).dtype).removeprefix("torch.")
        return super().dtype_name()

    # -- generation ---------------------------------------------------------------------------------
    def generate(self, request: GenerationRequest) -> list[SequenceTiming]:
        model = self.model
        dev = self.spec.device
        clock = Clock(dev)
        n_new = request.max_new_tokens
        ids = torch.tensor(request.prompts, dtype=torch.long, device=dev)
        times: list[float] = []
        with torch.inference_mode():
            start = clock.now()
            out = model(input_ids=ids, use_cache=True, **self._logits_kw)
            nxt = out.logits[:, -1, :].argmax(dim=-1, keepdim=True)
            times.append(clock.now())
            past = getattr(out, self._cache_kw)
            for _ in range(n_new - 1):
                out = model(input_ids=nxt, use_cache=True, **{self._cache_kw: past}, **self._logits_kw)
                past = getattr(out, self._cache_kw)
                nxt = out.logits[:, -1, :].argmax(dim=-1, keepdim=True)
                times.append(clock.now())
        end = times[-1]
        in_len = ids.shape[1]
        return [SequenceTiming(start, times[0], end, in_len, n_new, list(times)) for _ in request.prompts]

    # -- honesty ------------------------------------------------------------------------------------
    def token_counts(self) -> str:
        return "model: tokens generated in this process (exact; end-of-sequence ignored)"

    def model_signature(self) -> dict[str, Any] | None:
        cfg = self._cfg()
        keys = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "vocab_size", "n_embd", "n_layer", "n_head", "ffn_dim")
        return {k: getattr(cfg, k) for k in keys if getattr(cfg, k, None) is not None}

    def _manifest(self) -> Manifest | None:
        p = Path(self.spec.model).expanduser()
        if not (p / MANIFEST_NAME).is_file():
            return None
        try:
            return Manifest.load(p)
        except ManifestError as e:
            log.warning("ignoring unreadable manifest: %s", e.message)
            return None

    def quality(self) -> tuple[str | None, dict[str, Any]]:
        from ..precision import with_quantization  # a quantized folder: its quality is the simulated figure

        m = self._manifest()
        q = with_quantization(Path(self.spec.model).expanduser(), dict(m.quality) if m is not None else {},
                              self.fp8_info())
        return (m.pattern if m is not None else None), q

    def sparse_kernels(self) -> SparseKernels:
        m = self._manifest()
        eligible = sum(1 for r in m.layers if r.pattern) if m is not None else None
        return SparseKernels(
            active=False,
            kind="none: dense PyTorch kernels (zero weights are multiplied like any other value)",
            eligible_layers=eligible,
            sparse_layers=0,
            detail="hf backend never uses sparse kernels; a pruned model here shows what zeros alone buy: nothing"
            + self._fp8_detail(),
        )

    def _fp8_detail(self) -> str:
        f = self.fp8_info()
        if f is None or f.get("format") is None:
            return ""
        if not f["applied"]:
            return f"; quantization.json ({f['format']}) not applied: {f['reason']}"
        return (f"; FP8 GEMMs: {f['fp8_dense']} linears FP8 dense, {f['fp8_2of4']} FP8 2:4, "
                f"{len(f['kept_quantized_as_stored'])} quantized kept as stored, {f['not_quantized']} not quantized "
                f"(checked against simulated FP8, max relative error {f['max_rel_err']:.3g}); {f['kv_cache']}")

    def weights_bytes(self) -> int | None:
        return weights_bytes(self.model) if self.loaded is not None else None

    def close(self) -> None:
        self.loaded = None
        if self.spec.device.type == "cuda":
            torch.cuda.empty_cache()
