"""The one reader of a TensorRT-LLM engine folder (``config.json`` + ``rank{r}.engine``), without TensorRT-LLM.

Serving (Triton repositories) and benchmarking both start from an engine folder; both read it here, so a
wrong folder gets the same diagnosis everywhere: missing, a file, an HF model folder, a TensorRT-LLM
checkpoint, an unreadable config, or ranks missing for the config's world size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparse_trt.core.errors import InputError

_FIX_BUILD = "pass the output folder of `sparse-trt build` / trtllm-build"


class EngineDirError(InputError):
    """A path given as a TensorRT-LLM engine folder is not one (or is incomplete)."""


@dataclass(frozen=True)
class EngineDir:
    path: Path
    config: dict[str, Any]  # the parsed config.json trtllm-build wrote
    world_size: int


def read_engine_dir(path: Path | str) -> EngineDir:
    """Check ``path`` is a complete engine folder and return it with its parsed config."""
    d = Path(path).expanduser()
    if not d.exists():
        raise EngineDirError(f"engine folder '{d}' does not exist", fix=f"build one with `sparse-trt build`, or {_FIX_BUILD}")
    if not d.is_dir():
        raise EngineDirError(f"engine path '{d}' is a file; a TensorRT-LLM engine is a folder (config.json + rank*.engine)",
                             fix=_FIX_BUILD)
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise EngineDirError(f"engine folder '{d}' has no config.json: not a TensorRT-LLM engine folder",
                             fix=f"{_FIX_BUILD} (config.json + rank0.engine ...), not a checkpoint or HF model folder")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EngineDirError(f"engine config '{cfg_path}' is not readable JSON ({e})", fix="rebuild the engine") from None
    if not isinstance(cfg, dict):
        raise EngineDirError(f"engine config '{cfg_path}' is not a JSON object", fix="rebuild the engine")
    if "pretrained_config" not in cfg and "build_config" not in cfg:
        if (d / "rank0.safetensors").is_file():
            kind = "a TensorRT-LLM checkpoint, not an engine"
        elif "model_type" in cfg or "architectures" in cfg:
            kind = "a Hugging Face model folder"
        else:
            kind = "something else"
        raise EngineDirError(
            f"'{d}' is not a TensorRT-LLM engine folder: it is {kind} (its config.json has no pretrained_config/build_config)",
            fix="build an engine first (`sparse-trt build`), or use the HF folder as it is: `bench --backend hf` or "
            "`torch-2of4`, `triton repo --backend pytorch`")
    pretrained = cfg.get("pretrained_config") if isinstance(cfg.get("pretrained_config"), dict) else {}
    mapping = pretrained.get("mapping") if isinstance(pretrained.get("mapping"), dict) else {}
    try:
        world = int(mapping.get("world_size", 1) or 1)
    except (TypeError, ValueError):
        raise EngineDirError(f"engine config '{cfg_path}' has a malformed mapping.world_size", fix="rebuild the engine") from None
    missing = [f"rank{r}.engine" for r in range(world) if not (d / f"rank{r}.engine").is_file()]
    if missing:
        found = sorted(p.name for p in d.glob("rank*.engine"))
        raise EngineDirError(
            f"engine folder '{d}' lacks {', '.join(missing)} (world_size {world}; found: {', '.join(found) or 'none'})",
            fix="rebuild the engine, or pass the folder that holds every rank*.engine")
    return EngineDir(d, cfg, world)
