"""A model whose decoder layers are read from the safetensors shards only while the walker needs them.

``load_skeleton`` builds the model from its config with every parameter on the ``meta`` device
(buffers such as rotary tables are real: they are computed, not stored), then reads the tensors
outside the decoder layers (embeddings, final norm, head) once and re-ties tied embeddings the way
``from_pretrained`` does. ``StreamedLayers.load(i, layer)`` reads decoder layer ``i``'s tensors
(only its keys, from the shards that hold them); ``release`` puts them back on ``meta``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from sparse_trt.core.errors import ModelLoadError

from .adapters import Adapter
from .safetensors_io import WeightIndex

_META = torch.device("meta")


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Every parameter registered inside is created on ``meta`` (no memory, no initialisation cost)."""
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        p = module._parameters.get(name)
        if p is not None and p.device != _META:
            module._parameters[name] = nn.Parameter(p.to(_META), requires_grad=p.requires_grad)

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


class _Libc:
    """glibc's allocator controls (no-ops elsewhere)."""

    M_MMAP_THRESHOLD = -3

    def __init__(self) -> None:
        import ctypes
        import ctypes.util

        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            self.trim, self.mallopt = lib.malloc_trim, lib.mallopt
        except (OSError, AttributeError):
            self.trim = self.mallopt = None

    def large_blocks_from_mmap(self, threshold: int = 1 << 20) -> None:
        """Allocate blocks above ``threshold`` with mmap, so freeing one returns it to the OS at once.

        glibc raises its mmap threshold after large frees and then serves layer-sized tensors from
        its heap, which it keeps: measured on a 12-layer fp32 model (hidden 768), the streamed walk
        grew by about a layer per layer walked, and its peak was 294 MB above the start; with a
        fixed 1 MiB threshold (and a trim after each layer) it stays flat, peak 195 MB.
        """
        if self.mallopt is not None:
            self.mallopt(self.M_MMAP_THRESHOLD, threshold)

    def return_freed(self) -> None:
        if self.trim is not None:
            self.trim(0)


_LIBC: _Libc | None = None


def _libc() -> _Libc:
    global _LIBC
    if _LIBC is None:
        _LIBC = _Libc()
    return _LIBC


def _set_tensor(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Replace parameter or buffer ``name`` (dotted, relative to ``module``) by ``value``."""
    *path, leaf = name.split(".")
    owner = module.get_submodule(".".join(path)) if path else module
    if leaf in owner._parameters:
        owner._parameters[leaf] = nn.Parameter(value, requires_grad=False)
    else:
        owner._buffers[leaf] = value


class StreamedLayers:
    """Reads one decoder layer's tensors from the checkpoint when asked (the walker's ``LayerSource``)."""

    def __init__(self, index: WeightIndex, adapter: Adapter, prefixes: tuple[str, ...],
                 rest: dict[str, str] | None = None):
        self.index = index
        self.adapter = adapter
        self.prefixes = prefixes
        self.rest = dict(rest or {})  # model name -> stored name of every tensor outside the decoder layers

    def names(self, i: int, layer: nn.Module) -> dict[str, str]:
        """Layer-relative tensor name -> stored name, for every persistent tensor of layer ``i``."""
        prefix = f"{self.adapter.layers_path}.{i}"
        out = {}
        for n in layer.state_dict(keep_vars=True):
            stored = self.index.resolve(self.adapter.stored_name(f"{prefix}.{n}"), self.prefixes)
            if stored is None:
                raise ModelLoadError(
                    f"the checkpoint in '{self.index.folder}' has no tensor '{prefix}.{n}'",
                    fix="the weights do not match config.json: re-download or re-create the checkpoint",
                )
            out[n] = stored
        return out

    def load(self, index: int, layer: nn.Module) -> None:
        names = self.names(index, layer)
        current = layer.state_dict(keep_vars=True)
        dtypes = {n: current[n].dtype for n in names}
        for n, t in self.index.read(names, dtypes).items():
            if tuple(t.shape) != tuple(current[n].shape):
                raise ModelLoadError(
                    f"'{self.adapter.layers_path}.{index}.{n}' has shape {tuple(t.shape)} in the checkpoint, "
                    f"config.json implies {tuple(current[n].shape)}", fix="the weights do not match config.json",
                )
            _set_tensor(layer, n, t)

    def release(self, index: int, layer: nn.Module) -> None:
        for n, t in layer.state_dict(keep_vars=True).items():
            if n in self._persistent_params(layer):
                _set_tensor(layer, n, torch.empty(t.shape, dtype=t.dtype, device=_META))
        _libc().return_freed()

    def capture_done(self, model: nn.Module) -> None:
        """Put the parameters outside the decoder layers (embeddings, final norm, head) back on ``meta``.

        The walk needs them only to capture the first layer's inputs; the output takes them from the
        checkpoint again (``read_rest``). Ties are kept: a tensor shared by two modules stays shared.
        """
        layer_params = {id(p) for p in self.adapter.layers(model).parameters()}
        swapped: dict[int, nn.Parameter] = {}
        for mod in model.modules():
            for k, p in list(mod._parameters.items()):
                if p is None or id(p) in layer_params or p.device == _META:
                    continue
                if id(p) not in swapped:
                    swapped[id(p)] = nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device=_META), requires_grad=False)
                mod._parameters[k] = swapped[id(p)]
        _libc().return_freed()

    def read_rest(self, model: nn.Module, skip: set[str]) -> dict[str, torch.Tensor]:
        """The tensors outside the decoder layers (but ``skip``), read from the checkpoint in the model's dtypes."""
        current = model.state_dict(keep_vars=True)
        names = {n: s for n, s in self.rest.items() if n not in skip and n in current}
        return self.index.read(names, {n: current[n].dtype for n in names})

    @staticmethod
    def _persistent_params(layer: nn.Module) -> set[str]:
        return {n for n, _ in layer.named_parameters()}


def load_skeleton(folder: Path, config, adapter: Adapter, dtype: torch.dtype | None) -> tuple[nn.Module, StreamedLayers]:
    """The model with its decoder layers weightless (``meta``) and everything else read from ``folder``."""
    from transformers import AutoModelForCausalLM

    _libc().large_blocks_from_mmap()  # before anything layer-sized is allocated
    index = WeightIndex.open(folder)
    if dtype is None:
        dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or index.first_float_dtype()
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype.replace("torch.", ""), None)
    dtype = dtype if isinstance(dtype, torch.dtype) else torch.float32
    with parameters_on_meta():
        try:
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        except Exception as e:  # noqa: BLE001 - transformers raises many kinds
            raise ModelLoadError(f"could not build the model of '{folder}' from its config: {e}") from None
    model.eval()
    prefixes = tuple(p for p in (getattr(model, "base_model_prefix", ""),) if p)
    layers_prefix = adapter.layers_path + "."
    names = [n for n in model.state_dict(keep_vars=True) if not n.startswith(layers_prefix)]
    found: dict[str, str] = {}
    missing: set[str] = set()
    for n in names:
        stored = index.resolve(adapter.stored_name(n), prefixes)
        if stored is None:
            missing.add(n)
        else:
            found[n] = stored
    current = model.state_dict(keep_vars=True)
    for n, t in index.read(found, {n: current[n].dtype for n in found}).items():
        _set_tensor(model, n, t)
    if missing:
        model.tie_weights(missing_keys=set(missing), recompute_mapping=False)
    left = [n for n, p in model.named_parameters() if p.device == _META and not n.startswith(layers_prefix)]
    if left:
        raise ModelLoadError(
            f"the checkpoint in '{folder}' has no tensor '{left[0]}'" + (f" (and {len(left) - 1} more)" if len(left) > 1 else ""),
            fix="the weights do not match config.json: re-download or re-create the checkpoint",
        )
    for p in model.parameters():
        p.requires_grad_(False)
    return model, StreamedLayers(index, adapter, prefixes, found)


def tied_duplicates(model: nn.Module) -> set[str]:
    """Names that ``save_pretrained`` leaves out because they are tied to another parameter."""
    tied = getattr(model, "all_tied_weights_keys", None) or getattr(model, "_tied_weights_keys", None) or {}
    if not isinstance(tied, dict):
        return set()
    params = dict(model.named_parameters(remove_duplicate=False))
    return {t for t, s in tied.items() if t in params and s in params and params[t] is params[s]}
