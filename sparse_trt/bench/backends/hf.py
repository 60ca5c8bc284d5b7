"""``hf``: eager PyTorch (transformers) with a KV cache, greedy decoding, on CPU or CUDA.

The dense baseline everywhere. Run on a pruned model it demonstrates that zeros alone speed nothing
up: the same dense kernels multiply the zeros like any other value, so it reports no sparse kernels.
"""

from __future__ import annotations

import inspect
import json
import logging
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
        params = inspect.signature(self.loaded.model.forward).parameters
        if "logits_to_keep" in params:
            self._logits_kw = {"logits_to_keep": 1}
        elif "num_logits_to_keep" in params:
            self._logits_kw = {"num_logits_to_keep": 1}
        # transformers 5.x renamed past_key_values -> cache (input and output); 4.x uses past_key_values
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

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
        q = with_quantization(Path(self.spec.model).expanduser(), dict(m.quality) if m is not None else {})
        return (m.pattern if m is not None else None), q

    def sparse_kernels(self) -> SparseKernels:
        m = self._manifest()
        eligible = sum(1 for r in m.layers if r.pattern) if m is not None else None
        return SparseKernels(
            active=False,
            kind="none: dense PyTorch kernels (zero weights are multiplied like any other value)",
            eligible_layers=eligible,
            sparse_layers=0,
            detail="hf backend never uses sparse kernels; a pruned model here shows what zeros alone buy: nothing",
        )

    def weights_bytes(self) -> int | None:
        return weights_bytes(self.model) if self.loaded is not None else None

    def close(self) -> None:
        self.loaded = None
        if self.spec.device.type == "cuda":
            torch.cuda.empty_cache()
