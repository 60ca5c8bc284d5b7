"""Build TensorRT-LLM engines with weight sparsity (or the dense baseline) and report what TensorRT did.

Runs ``trtllm-build`` (TensorRT-LLM 1.2.x) as a subprocess with ``--weight_sparsity`` and
``--gemm_plugin disable``: the GEMM plugin's cuBLASLt GEMMs never use sparse kernels, only
TensorRT's own GEMM tactics do. ``--dense`` builds the baseline with identical settings otherwise.
The whole build log is kept; its ``(Sparsity)`` lines become ``build_report.json`` beside the engines.
"""

from __future__ import annotations

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
from sparse_trt.core.errors import InputError, MissingDependencyError, SparseTrtError
from sparse_trt.core.patterns import NM, nm_violations
from sparse_trt.export.trtllm.reader import Checkpoint, load_checkpoint

from .logparse import parse_build_log
from .report import REPORT_NAME, REPORT_VERSION, diagnose, write_report

log = logging.getLogger(__name__)

TRTLLM_PIN = "1.2"
TRTLLM_DOCKER_IMAGE = "nvcr.io/nvidia/tensorrt-llm/release:1.2.0"
_INSTALL_HINT = (
    f"use NVIDIA's TensorRT-LLM {TRTLLM_PIN}.x release container ({TRTLLM_DOCKER_IMAGE}; see docker/README.md), "
    f"or on a CUDA machine: pip install 'tensorrt_llm>={TRTLLM_PIN},<1.3' --extra-index-url https://pypi.nvidia.com. "
    "Releases after 1.2.x removed the TensorRT engine build path (trtllm-build --weight_sparsity)."
)


class BuildError(SparseTrtError):
    """trtllm-build failed or produced no engines."""

    exit_code = 8


@dataclass(frozen=True)
class BuildRequest:
    source: Path  # TensorRT-LLM checkpoint folder, or a pruned HF folder (exported first)
    out: Path
    dense: bool = False
    max_batch_size: int = 8
    max_input_len: int = 2048
    max_seq_len: int = 4096
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
    ]
    if not req.dense:
        args.append("--weight_sparsity")
    return args


def _versions() -> dict[str, Any]:
    out: dict[str, Any] = {"sparse_trt": sparse_trt.__version__, "tensorrt_llm": trtllm_version(), "tensorrt": None,
                           "torch": torch.__version__, "gpu": None}
    for dist in ("tensorrt", "tensorrt_cu12", "tensorrt-cu12", "tensorrt_cu13"):
        try:
            out["tensorrt"] = importlib.metadata.version(dist)
            break
        except importlib.metadata.PackageNotFoundError:
            continue
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            res = subprocess.run([smi, "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20, check=False)
            first = res.stdout.strip().splitlines()[0] if res.stdout.strip() else ""
            if first:
                name, cc, driver = (s.strip() for s in (first.split(",") + ["", ""])[:3])
                out["gpu"] = {"name": name, "compute_capability": cc or None, "driver": driver or None}
        except (OSError, subprocess.SubprocessError):
            pass
    return out


def checkpoint_summary(ckpt: Checkpoint) -> dict[str, Any]:
    """dtype, mapping and where the 2:4 pattern runs in the linear weights of a checkpoint."""
    two4 = NM(2, 4)
    n = along_in = along_out = 0
    for tensors in ckpt.ranks:
        for name, t in tensors.items():
            if t.dim() != 2 or not name.endswith(("qkv.weight", "dense.weight", "fc.weight", "gate.weight", "proj.weight")):
                continue
            n += 1
            if t.shape[1] % 4 == 0 and nm_violations(t, two4, 1) == 0:
                along_in += 1
            elif t.shape[0] % 4 == 0 and nm_violations(t, two4, 0) == 0:
                along_out += 1
    cfg = ckpt.config
    return {
        "path": str(ckpt.directory),
        "architecture": cfg.get("architecture"),
        "dtype": cfg.get("dtype"),
        "tp": ckpt.mapping.tp,
        "pp": ckpt.mapping.pp,
        "world_size": ckpt.mapping.world_size,
        "pattern_2of4": {"weights": n, "along_input": along_in, "along_output": along_out},
        "manifest_pattern": (cfg.get("producer") or {}).get("sparsity_pattern"),
    }


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
) -> dict[str, Any]:
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
        world = ck_summary["world_size"]
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
        report: dict[str, Any] = {
            "report_version": REPORT_VERSION,
            "engine_dir": str(out.absolute()),
            "mode": "dense" if req.dense else "sparse",
            "source": str(source.absolute()),
            "exported_from_hf": not is_ckpt,
            "settings": {
                "weight_sparsity": not req.dense,
                "gemm_plugin": "disable",
                "max_batch_size": req.max_batch_size,
                "max_input_len": req.max_input_len,
                "max_seq_len": req.max_seq_len,
                "workers": req.workers,
            },
            "command": cmd,
            "build_seconds": round(seconds, 3),
            "engine_bytes": sum(engine_files.values()),
            "engine_files": engine_files,
            "checkpoint": ck_summary,
            "versions": _versions(),
            "sparsity": parsed.to_dict(),
            "log": str(log_path.absolute()),
        }
        if parsed.trtllm_version and not report["versions"]["tensorrt_llm"]:
            report["versions"]["tensorrt_llm"] = parsed.trtllm_version
        report["diagnosis"] = diagnose(report)
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
