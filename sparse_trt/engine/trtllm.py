"""Build TensorRT-LLM engines with weight sparsity (or the dense baseline) and report what TensorRT did.

Runs ``trtllm-build`` (TensorRT-LLM 1.2.x) as a subprocess with ``--weight_sparsity`` and
``--gemm_plugin disable``: the GEMM plugin's cuBLASLt GEMMs never use sparse kernels, only
TensorRT's own GEMM tactics do. ``--dense`` builds the baseline with identical settings otherwise.

TensorRT picks each GEMM's tactic at the optimization profile's opt shape, and TensorRT-LLM sets that
from ``opt_num_tokens`` (default ``max_batch_size x max_beam_width``: decode-sized GEMMs), not from
``max_input_len``. Both engines are therefore built with ``--multiple_profiles enable`` by default
(profiles up to 64, 128, 256, 512, 1024 and ``max_num_tokens`` tokens); ``--opt_num_tokens`` is the
alternative with one profile (trtllm-build refuses the two together).

The whole build log is kept; its ``(Sparsity)`` lines become ``build_report.json`` beside the engines,
together with the engine's own config (``use_fused_mlp``, token limits) and the TensorRT timing cache.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import sparse_trt
from sparse_trt.core.atomic import atomic_output_dir, check_output_dir
from sparse_trt.core.errors import BuildFailedError, InputError, MissingDependencyError
from sparse_trt.core.patterns import NM, nm_violations
from sparse_trt.export.trtllm.reader import Checkpoint, load_checkpoint

from .logparse import BuildLog, mapped_linears, parse_build_log
from .report import (
    REPORT_NAME,
    SCHEMA,
    SCHEMA_VERSION,
    SPARSE_THRESHOLD,
    BuildReport,
    CheckpointInfo,
    EngineSettings,
    EngineSparsity,
    Gpu,
    Pattern2of4,
    Settings,
    Sparsity,
    Versions,
    diagnose,
    sparse_verdict,
    write_report,
)

log = logging.getLogger(__name__)

TRTLLM_PIN = "1.2"
TRTLLM_DOCKER_IMAGE = "nvcr.io/nvidia/tensorrt-llm/release:1.2.0"
_INSTALL_HINT = (
    f"use NVIDIA's TensorRT-LLM {TRTLLM_PIN}.x release container ({TRTLLM_DOCKER_IMAGE}; see docker/README.md), "
    f"or on a CUDA machine: pip install 'tensorrt_llm>={TRTLLM_PIN},<1.3' --extra-index-url https://pypi.nvidia.com. "
    "Releases after 1.2.x removed the TensorRT engine build path (trtllm-build --weight_sparsity)."
)


class BuildError(BuildFailedError):
    """trtllm-build failed or produced no engines (exit 10)."""


@dataclass(frozen=True)
class BuildRequest:
    source: Path  # TensorRT-LLM checkpoint folder, or a pruned HF folder (exported first)
    out: Path
    dense: bool = False
    max_batch_size: int = 8
    max_input_len: int = 2048
    max_seq_len: int = 4096
    max_num_tokens: int | None = None  # None: trtllm-build's default
    opt_num_tokens: int | None = None  # only with multiple_profiles=False
    multiple_profiles: bool = True
    extra_args: tuple[str, ...] = ()  # other trtllm-build flags, already split (see parse_passthrough)
    workers: int = 1
    log_path: Path | None = None
    overwrite: bool = False
    # only used when ``source`` is an HF folder
    dtype: torch.dtype = torch.float16
    tp: int = 1
    pp: int = 1
    allow_dense: bool = False

    def validate(self) -> None:
        if self.max_batch_size < 1 or self.max_input_len < 1 or self.max_seq_len < 1 or self.workers < 1:
            raise InputError("--max-batch-size, --max-input-len, --max-seq-len and --workers must be at least 1",
                             fix="e.g. --max-batch-size 8 --max-input-len 2048 --max-seq-len 4096")
        if self.max_input_len > self.max_seq_len:
            raise InputError(f"--max-input-len {self.max_input_len} exceeds --max-seq-len {self.max_seq_len}",
                             fix="max-seq-len counts prompt plus generated tokens: make it at least max-input-len")
        for name, v in (("--max-num-tokens", self.max_num_tokens), ("--opt-num-tokens", self.opt_num_tokens)):
            if v is not None and v < 1:
                raise InputError(f"{name} {v} must be at least 1", fix=f"e.g. {name} 2048")
        if self.opt_num_tokens is not None and self.multiple_profiles:
            raise InputError(
                "--opt-num-tokens and multiple optimization profiles cannot be combined (trtllm-build refuses "
                "multiple_profiles together with opt_num_tokens)",
                fix="drop --opt-num-tokens (profiles then cover 1..max_num_tokens), or add --no-multiple-profiles",
            )
        if self.opt_num_tokens is not None and self.max_num_tokens is not None and self.opt_num_tokens > self.max_num_tokens:
            raise InputError(f"--opt-num-tokens {self.opt_num_tokens} exceeds --max-num-tokens {self.max_num_tokens}",
                             fix="make opt-num-tokens at most max-num-tokens")
        check_passthrough(self.extra_args)


#: trtllm-build flags sparse_trt sets itself (or that would bypass what it reports); refused in --trtllm-arg.
OWN_FLAGS = frozenset({
    "checkpoint_dir", "model_config", "build_config", "output_dir", "gemm_plugin", "max_batch_size", "max_input_len",
    "max_seq_len", "max_decoder_seq_len", "max_num_tokens", "opt_num_tokens", "multiple_profiles", "workers",
    "log_level", "weight_sparsity", "output_timing_cache", "input_timing_cache",
})
TIMING_CACHE = "timing.cache"


def _flag_name(token: str) -> str:
    return token.lstrip("-").split("=", 1)[0].replace("-", "_")


def parse_passthrough(values: Sequence[str]) -> tuple[str, ...]:
    """``--trtllm-arg`` values (``--flag``, ``--flag=value`` or ``--flag value``) -> argv tokens for trtllm-build."""
    out: list[str] = []
    for v in values:
        tokens = shlex.split(v)
        if not tokens or not tokens[0].startswith("--"):
            raise InputError(f"--trtllm-arg '{v}' is not a trtllm-build flag",
                             fix="pass one flag per --trtllm-arg, e.g. --trtllm-arg=--use_fused_mlp=disable")
        head = tokens[0]
        if "=" in head:
            flag, value = head.split("=", 1)
            tokens = [flag, value, *tokens[1:]]
        out += tokens
    result = tuple(out)
    check_passthrough(result)
    return result


def check_passthrough(tokens: Sequence[str]) -> None:
    for t in tokens:
        if t.startswith("--") and _flag_name(t) in OWN_FLAGS:
            raise InputError(
                f"--trtllm-arg {t} is a flag sparse_trt sets itself",
                fix="use the matching `sparse-trt build` option (--max-batch-size, --max-num-tokens, --opt-num-tokens, "
                "--multiple-profiles/--no-multiple-profiles, --workers, --dense, ...)",
            )


def trtllm_version() -> str | None:
    for dist in ("tensorrt_llm", "tensorrt-llm"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def check_trtllm() -> str:
    """The installed TensorRT-LLM version; MissingDependencyError unless it is the pinned 1.2.x line."""
    v = trtllm_version()
    if v is None:
        raise MissingDependencyError(f"TensorRT-LLM {TRTLLM_PIN}.x is needed to build engines but is not installed",
                                     fix=_INSTALL_HINT)
    parts = v.split(".")
    try:
        major_minor = (int(parts[0]), int(parts[1]))
    except (IndexError, ValueError):
        major_minor = (0, 0)
    if major_minor != (1, 2):
        later = major_minor > (1, 2)
        raise MissingDependencyError(
            f"TensorRT-LLM {v} is installed but sparse_trt builds engines with {TRTLLM_PIN}.x"
            + (" (later releases removed the TensorRT engine path and --weight_sparsity)" if later else ""),
            fix=_INSTALL_HINT,
        )
    return v


def builder_command() -> list[str]:
    """``trtllm-build`` of the installed TensorRT-LLM 1.2.x; ``$SPARSE_TRT_TRTLLM_BUILD`` overrides it (a wrapper
    script, or a stand-in in tests) and skips the version check."""
    override = os.environ.get("SPARSE_TRT_TRTLLM_BUILD")
    if override:
        return shlex.split(override)
    check_trtllm()
    exe = shutil.which("trtllm-build")
    return [exe] if exe else [sys.executable, "-m", "tensorrt_llm.commands.build"]


def build_args(req: BuildRequest, ckpt_dir: Path, out_dir: Path) -> list[str]:
    args = [
        "--checkpoint_dir", str(ckpt_dir),
        "--output_dir", str(out_dir),
        "--gemm_plugin", "disable",
        "--max_batch_size", str(req.max_batch_size),
        "--max_input_len", str(req.max_input_len),
        "--max_seq_len", str(req.max_seq_len),
        "--workers", str(req.workers),
        "--log_level", "info",
        "--multiple_profiles", "enable" if req.multiple_profiles else "disable",
        "--output_timing_cache", str(out_dir / TIMING_CACHE),
    ]
    if req.max_num_tokens is not None:
        args += ["--max_num_tokens", str(req.max_num_tokens)]
    if req.opt_num_tokens is not None:
        args += ["--opt_num_tokens", str(req.opt_num_tokens)]
    if not req.dense:
        args.append("--weight_sparsity")
    return args + list(req.extra_args)


def _versions(logged_trtllm: str | None = None) -> Versions:
    trt = None
    for dist in ("tensorrt", "tensorrt_cu12", "tensorrt-cu12", "tensorrt_cu13"):
        try:
            trt = importlib.metadata.version(dist)
            break
        except importlib.metadata.PackageNotFoundError:
            continue
    return Versions(sparse_trt=sparse_trt.__version__, tensorrt_llm=trtllm_version() or logged_trtllm, tensorrt=trt,
                    torch=torch.__version__, gpu=_gpu())


def _gpu() -> Gpu | None:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        res = subprocess.run([smi, "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    first = res.stdout.strip().splitlines()[0] if res.stdout.strip() else ""
    if not first:
        return None
    name, cc, driver = (x.strip() for x in (first.split(",") + ["", ""])[:3])
    return Gpu(name=name, compute_capability=cc or None, driver=driver or None)


_LINEAR_SUFFIXES = ("qkv.weight", "dense.weight", "fc.weight", "gate.weight", "proj.weight")


def linear_params(ckpt: Checkpoint) -> list[dict[str, int]]:
    """Per rank: weight parameters of every linear (GEMM) in the checkpoint, keyed as the log parser names them
    (``transformer.layers.{i}.attention.qkv``, ``lm_head``, ...). Quantized weights count their elements."""
    out: list[dict[str, int]] = []
    for tensors in ckpt.ranks:
        d: dict[str, int] = {}
        for name, t in tensors.items():
            if t.dim() == 2 and (name.endswith(_LINEAR_SUFFIXES) or name == "lm_head.weight"):
                d[name.removesuffix(".weight")] = int(t.numel())
        out.append(d)
    return out


def sparse_weight_fraction(log: BuildLog, per_rank: list[dict[str, int]]) -> tuple[float | None, str]:
    """Fraction of all linear weight parameters that sit in GEMMs TensorRT picked a sparse tactic for.

    Engine block *i* of the log is rank *i* (trtllm-build builds ranks in order with one worker). A
    GEMM's FLOPs per token are 2 x its weight parameters, so this is also the GEMM-FLOP fraction.
    """
    total = sum(sum(r.values()) for r in per_rank)
    basis = "linear weight parameters (= GEMM FLOPs per token) on sparse tactics / all, over all ranks"
    if not log.blocks or total == 0:
        return None, basis
    if len(log.blocks) == len(per_rank):
        pairs = list(zip(log.blocks, per_rank, strict=True))
    else:
        merged: dict[str, int] = {}
        for r in per_rank:
            for k, v in r.items():
                merged[k] = max(merged.get(k, 0), v)
        pairs = [(b, merged) for b in log.blocks]
        basis += f" (approximate: {len(log.blocks)} log blocks for {len(per_rank)} ranks)"
    picked = sum(params.get(lin, 0) for block, params in pairs for lin in mapped_linears(block.picked))
    return picked / total, basis


def checkpoint_summary(ckpt: Checkpoint) -> CheckpointInfo:
    """dtype, precision, mapping and where the 2:4 pattern runs in the linear weights of a checkpoint."""
    two4 = NM(2, 4)
    n = along_in = along_out = 0
    for tensors in ckpt.ranks:
        for name, t in tensors.items():
            if t.dim() != 2 or not name.endswith(_LINEAR_SUFFIXES):
                continue
            n += 1
            if t.is_floating_point() and t.element_size() < 2:  # FP8: check the pattern on a float16 copy
                t = t.to(torch.float16)
            if t.shape[1] % 4 == 0 and nm_violations(t, two4, 1) == 0:
                along_in += 1
            elif t.shape[0] % 4 == 0 and nm_violations(t, two4, 0) == 0:
                along_out += 1
    cfg = ckpt.config
    quant = cfg.get("quantization") if isinstance(cfg.get("quantization"), dict) else {}
    qa, kvqa = quant.get("quant_algo"), quant.get("kv_cache_quant_algo")
    dtype = cfg.get("dtype")
    manifest = (cfg.get("producer") or {}).get("sparsity_pattern") if isinstance(cfg.get("producer"), dict) else None
    return CheckpointInfo(
        path=str(ckpt.directory),
        architecture=cfg.get("architecture"),
        dtype=dtype,
        tp=ckpt.mapping.tp,
        pp=ckpt.mapping.pp,
        world_size=ckpt.mapping.world_size,
        pattern_2of4=Pattern2of4(n, along_in, along_out),
        manifest_pattern=manifest if isinstance(manifest, str) else None,
        quant_algo=str(qa) if qa else None,
        kv_cache_quant_algo=str(kvqa) if kvqa else None,
        precision=str(qa) if qa else str(dtype),
        linear_weight_params=sum(sum(r.values()) for r in linear_params(ckpt)),
    )


def _opt_int(d: Any, key: str) -> int | None:
    v = d.get(key) if isinstance(d, dict) else None
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _opt_bool(d: Any, key: str) -> bool | None:
    v = d.get(key) if isinstance(d, dict) else None
    if isinstance(v, bool):
        return v
    return {"enable": True, "disable": False}.get(v) if isinstance(v, str) else None


def engine_settings(engine_config: dict[str, Any]) -> EngineSettings:
    """The settings trtllm-build recorded in the engine's config.json (``build_config``, its ``plugin_config``
    and the pretrained config's ``mapping``); None for whatever it did not record."""
    bc = engine_config.get("build_config") if isinstance(engine_config.get("build_config"), dict) else {}
    pc = bc.get("plugin_config") if isinstance(bc.get("plugin_config"), dict) else {}
    pre = engine_config.get("pretrained_config") if isinstance(engine_config.get("pretrained_config"), dict) else {}
    gemm: str | None = None
    if "gemm_plugin" in pc:  # None in the dump means the plugin is off
        gemm = "disable" if pc["gemm_plugin"] in (None, "disable") else str(pc["gemm_plugin"])
    return EngineSettings(
        max_batch_size=_opt_int(bc, "max_batch_size"),
        max_input_len=_opt_int(bc, "max_input_len"),
        max_seq_len=_opt_int(bc, "max_seq_len"),
        max_num_tokens=_opt_int(bc, "max_num_tokens"),
        opt_num_tokens=_opt_int(bc, "opt_num_tokens"),
        multiple_profiles=_opt_bool(pc, "multiple_profiles"),
        use_fused_mlp=_opt_bool(pc, "use_fused_mlp"),
        gemm_plugin=gemm,
        weight_sparsity=_opt_bool(bc, "weight_sparsity"),
        world_size=_opt_int(pre.get("mapping"), "world_size"),
    )


def sparsity_section(mode: str, log: BuildLog, per_rank: list[dict[str, int]]) -> Sparsity:
    frac, basis = sparse_weight_fraction(log, per_rank)
    return Sparsity(
        sparsity_lines_found=log.has_sparsity_lines,
        eligible_count=len(log.eligible),
        picked_count=len(log.picked),
        eligible_layers=tuple(log.eligible),
        picked_layers=tuple(log.picked),
        eligible_linears=tuple(log.eligible_linears),
        picked_linears=tuple(log.picked_linears),
        unmapped_layers=tuple(log.unmapped),
        foreign_nodes=tuple(log.foreign_nodes),
        per_engine=tuple(EngineSparsity(tuple(b.eligible), tuple(b.picked), b.picked_seen) for b in log.blocks),
        sparse_weight_fraction=None if frac is None else round(frac, 6),
        fraction_basis=basis,
        threshold=SPARSE_THRESHOLD,
        verdict=sparse_verdict(mode, log.has_sparsity_lines, len(log.picked), frac),
        engine_generation_seconds=tuple(log.engine_seconds),
        total_build_seconds_logged=log.total_seconds,
        errors=tuple(log.errors[-20:]),
    )


def _is_checkpoint(path: Path) -> bool:
    try:
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and "architecture" in cfg and "mapping" in cfg


def _run(cmd: Sequence[str], log_file: Path, on_line: Callable[[str], None] | None) -> tuple[int, str]:
    """Run ``cmd``, stream stdout+stderr to ``log_file`` (and ``on_line``), return (rc, full text)."""
    lines: list[str] = []
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    with open(log_file, "w", encoding="utf-8") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        try:
            proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    errors="replace", env=env)
        except OSError as e:
            raise BuildError(f"could not start the engine builder '{cmd[0]}' ({e})", fix=_INSTALL_HINT) from None
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                fh.write(line)
                fh.flush()
                lines.append(line)
                if on_line is not None:
                    on_line(line.rstrip("\n"))
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    return rc, "".join(lines)


def build_engine(
    req: BuildRequest,
    *,
    builder: Sequence[str] | None = None,
    on_line: Callable[[str], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> BuildReport:
    """Build engines for ``req.source`` into ``req.out`` atomically; return the build report (also written there).

    ``builder`` is the command that stands for ``trtllm-build`` (default: the installed TensorRT-LLM 1.2.x).
    """
    req.validate()
    out = Path(req.out)
    check_output_dir(out, req.overwrite, "engine directory")
    source = Path(req.source)
    if not source.is_dir():
        raise InputError(f"'{source}' is not a folder", fix="pass a TensorRT-LLM checkpoint folder or a pruned HF model folder")
    is_ckpt = _is_checkpoint(source)
    cmd_prefix = list(builder) if builder is not None else builder_command()  # fail fast before any export
    log_path = Path(req.log_path) if req.log_path else out.parent / f"{out.name}.build.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    stage = on_stage or (lambda s: None)
    with atomic_output_dir(out, overwrite=req.overwrite, what="engine directory") as tmp:
        if is_ckpt:
            ckpt_dir = source
        else:
            from sparse_trt.export.trtllm.writer import export_trtllm

            stage("exporting checkpoint")
            ckpt_dir = tmp / "_checkpoint"
            export_trtllm(source, ckpt_dir, dtype=req.dtype, tp=req.tp, pp=req.pp, allow_dense=req.allow_dense or req.dense)
        stage("checking checkpoint")
        ckpt = load_checkpoint(ckpt_dir)
        ck_summary = checkpoint_summary(ckpt)
        per_rank = linear_params(ckpt)
        del ckpt
        engines_dir = tmp / "_engines"
        cmd = cmd_prefix + build_args(req, ckpt_dir, engines_dir)
        stage("building engines" + (" (dense)" if req.dense else " (weight sparsity)"))
        t0 = time.perf_counter()
        rc, text = _run(cmd, log_path, on_line)
        seconds = time.perf_counter() - t0
        parsed = parse_build_log(text)
        if rc != 0:
            tail = "\n".join(text.splitlines()[-15:])
            raise BuildError(f"trtllm-build exited with code {rc}; last lines:\n{tail}",
                             fix=f"read the full log at {log_path}")
        world = ck_summary.world_size
        missing = [f"rank{r}.engine" for r in range(world) if not (engines_dir / f"rank{r}.engine").is_file()]
        if missing:
            raise BuildError(f"trtllm-build finished but wrote no {', '.join(missing)} in its output",
                             fix=f"read the full log at {log_path}")
        for item in engines_dir.iterdir():
            shutil.move(str(item), str(tmp / item.name))
        engines_dir.rmdir()
        if not is_ckpt:
            shutil.rmtree(ckpt_dir)
        for name in ("sparsity.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                     "tokenizer.model", "vocab.json", "merges.txt", "generation_config.json"):
            src = (source if not is_ckpt else ckpt_dir) / name
            if src.is_file():
                shutil.copy2(src, tmp / name)
        shutil.copy2(log_path, tmp / "build.log")
        engine_files = {p.name: p.stat().st_size for p in sorted(tmp.glob("rank*.engine"))}
        try:
            eng_cfg = json.loads((tmp / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            eng_cfg = {}
        mode = "dense" if req.dense else "sparse"
        settings = Settings(
            weight_sparsity=not req.dense, gemm_plugin="disable", max_batch_size=req.max_batch_size,
            max_input_len=req.max_input_len, max_seq_len=req.max_seq_len, max_num_tokens=req.max_num_tokens,
            opt_num_tokens=req.opt_num_tokens, multiple_profiles=req.multiple_profiles, workers=req.workers,
            extra_args=tuple(req.extra_args), timing_cache=TIMING_CACHE if (tmp / TIMING_CACHE).is_file() else None,
        )
        draft = BuildReport(
            schema=SCHEMA, schema_version=SCHEMA_VERSION, engine_dir=str(out.absolute()), mode=mode,
            source=str(source.absolute()), exported_from_hf=not is_ckpt, settings=settings,
            engine=engine_settings(eng_cfg if isinstance(eng_cfg, dict) else {}), command=tuple(cmd),
            build_seconds=round(seconds, 3), engine_bytes=sum(engine_files.values()), engine_files=engine_files,
            checkpoint=ck_summary, versions=_versions(parsed.trtllm_version),
            sparsity=sparsity_section(mode, parsed, per_rank), log=str(log_path.absolute()), diagnosis=(),
        )
        report = dataclasses.replace(draft, diagnosis=tuple(diagnose(draft)))
        write_report(tmp, report)
    log.info("built %s in %.1fs (%s)", out, seconds, REPORT_NAME)
    return report


def run_command_hint(engine_dir: Path, world_size: int, tokenizer_dir: Path | None = None) -> str:
    """How to run the engines (mpirun for more than one rank), for docs and CLI output."""
    tok = f" --tokenizer_dir {tokenizer_dir or engine_dir}"
    base = f"python3 /app/tensorrt_llm/examples/run.py --engine_dir {engine_dir}{tok} --max_output_len 64 --input_text 'Hello'"
    if world_size > 1:
        return f"mpirun -n {world_size} --allow-run-as-root {base}"
    return base
