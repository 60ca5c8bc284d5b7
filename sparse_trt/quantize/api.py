"""The quantize stage: calibrate a (pruned) HF folder, compute FP8 / INT8-SQ scales, write the artifact.

The output is the input folder with its weights unchanged (same files, same dtype) plus
``quantization.json`` (and ``quant_scales.safetensors`` for int8-sq), written atomically. Every
transform a weight will undergo at export (smoothing, fused-GEMM re-smoothing, quantization) is
applied here once in memory and its N:M pattern checked, so a pattern-breaking transform fails
before anything is written.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

import sparse_trt
from sparse_trt.core.atomic import atomic_output_dir, check_output_dir
from sparse_trt.core.device import dtype_name
from sparse_trt.core.errors import CalibrationError, InputError
from sparse_trt.core.jsonio import read_json_object
from sparse_trt.core.manifest import MANIFEST_NAME, Manifest
from sparse_trt.core.patterns import NM, parse_pattern
from sparse_trt.data.text import TextSource
from sparse_trt.data.windows import calibration_windows

from . import scales as sc
from .calibrate import CalibStats, calibrate
from .errors import AlreadyQuantizedError, QuantExportError
from .exclude import ALWAYS_EXCLUDED, parse_excludes, resolve_excludes
from .formats import QUANT_EXPORT_ARCHITECTURES, KVFormat, QuantFormat, fused_groups
from .spec import QUANT_NAME, SCALES_NAME, KVQuant, LinearQuant, QuantSpec

log = logging.getLogger(__name__)

MIN_CALIB_TOKENS = 128  # fewer tokens than this cannot give activation ranges worth exporting
DEFAULT_ALPHA = 1.0  # SmoothQuant migration strength; NVIDIA ModelOpt's INT8_SMOOTHQUANT_CFG default


@dataclass(frozen=True)
class QuantizeOptions:
    fmt: QuantFormat
    kv: KVFormat | None
    calib: TextSource
    nsamples: int = 128
    seqlen: int = 512
    seed: int = 0
    alpha: float = DEFAULT_ALPHA
    batch_size: int = 1
    exclude: tuple[str, ...] = ()  # --exclude globs: linears kept unquantized (quantize/exclude.py)

    def __post_init__(self) -> None:
        object.__setattr__(self, "exclude", parse_excludes(self.exclude))
        if not 0.0 <= self.alpha <= 1.0:
            raise InputError(f"--alpha {self.alpha} is outside [0, 1]", fix="use e.g. --alpha 0.5 (SmoothQuant paper) or 1.0")
        if self.nsamples < 1 or self.seqlen < 2:
            raise CalibrationError(f"--nsamples {self.nsamples} / --seqlen {self.seqlen} are too small",
                                   fix="use at least 1 window of at least 2 tokens (e.g. --nsamples 128 --seqlen 512)")
        if self.nsamples * self.seqlen < MIN_CALIB_TOKENS:
            raise CalibrationError(
                f"calibration of {self.nsamples} x {self.seqlen} = {self.nsamples * self.seqlen} tokens is too short "
                f"to estimate activation ranges (at least {MIN_CALIB_TOKENS} tokens)",
                fix="raise --nsamples or --seqlen (e.g. --nsamples 128 --seqlen 512)",
            )


@dataclass(frozen=True)
class QuantizeResult:
    out: Path
    spec: QuantSpec
    checked_weights: int  # weights whose N:M pattern was verified after every transform
    calib_tokens: int
    seconds: float


def refuse_quantized(model_dir: Path) -> None:
    """Refuse a folder that is already quantized (ours, an HF quantized model, or a TensorRT-LLM checkpoint)."""
    if (model_dir / QUANT_NAME).is_file():
        raise AlreadyQuantizedError(
            f"'{model_dir}' is already quantized (it has {QUANT_NAME})",
            fix="quantize the unquantized folder it came from (the output of `sparse-trt prune`)",
        )
    cfg_path = model_dir / "config.json"
    if cfg_path.is_file():
        cfg = read_json_object(cfg_path, InputError, fix="pass a Hugging Face model folder")
        q = cfg.get("quantization_config") or (cfg.get("quantization") or {}).get("quant_algo")
        if q:
            raise AlreadyQuantizedError(
                f"'{model_dir}' holds an already quantized model ({'HF quantization_config' if 'quantization_config' in cfg else 'TensorRT-LLM checkpoint'})",
                fix="quantize the unquantized HF folder (bf16/fp16/fp32 weights)",
            )


def export_family(hf_config: dict, source: str, fmt: QuantFormat) -> str:
    """The fused-GEMM layout of the TensorRT-LLM checkpoint the quantized model will be exported as; refuse
    architectures whose quantized checkpoints sparse_trt does not export (before any calibration)."""
    arch = (hf_config.get("architectures") or ["?"])[0]
    family = QUANT_EXPORT_ARCHITECTURES.get(arch)
    if family is None:
        raise QuantExportError(
            f"model '{source}' ({arch}, {hf_config.get('model_type', '?')} family) has no {fmt.name} TensorRT-LLM "
            "export in sparse_trt",
            fix=f"quantized export covers {', '.join(QUANT_EXPORT_ARCHITECTURES)}; export this model unquantized",
        )
    return family


def _patterns(model_dir: Path | None) -> tuple[dict[str, NM], str | None]:
    if model_dir is None or not (model_dir / MANIFEST_NAME).is_file():
        return {}, None
    m = Manifest.load(model_dir)
    out = {}
    for rec in m.layers:
        p = None if rec.pattern is None else parse_pattern(rec.pattern)
        if isinstance(p, NM):
            out[rec.name] = p
    return out, m.pattern


def _groups(names: list[str], family: str, layers_prefix: str, n_layers: int) -> dict[str, tuple[str, ...]]:
    present = set(names)
    group_of = {n: (n,) for n in names}
    for i in range(n_layers):
        for g in fused_groups(f"{layers_prefix}.{i}", family):
            members = tuple(m for m in g if m in present)
            for m in members:
                group_of[m] = members
    return group_of


def compute_spec(
    opts: QuantizeOptions,
    stats: CalibStats,
    names: list[str],
    get_weight: Callable[[str], torch.Tensor],
    group_of: dict[str, tuple[str, ...]],
    patterns: dict[str, NM],
) -> tuple[list[LinearQuant], dict[str, torch.Tensor], int, set[str]]:
    """Per-linear scales (unified over fused groups) and SmoothQuant vectors; checks N:M after every transform.

    Weights are read one fused group at a time (``get_weight(name)`` -> ``[out, in]``), so memory holds one
    group beside the model. Also returns the weights' dtypes.
    """
    fmt = opts.fmt
    linears: list[LinearQuant] = []
    tensors: dict[str, torch.Tensor] = {}
    checked = 0
    dtypes: set[str] = set()

    def check(name: str, w: torch.Tensor, where: str) -> None:
        nonlocal checked
        if name in patterns:
            sc.check_pattern(name, w, patterns[name], where)
            checked += 1

    done: set[str] = set()
    for name in names:
        if name in done:
            continue
        group = group_of[name]
        done.update(group)
        weights = {m: get_weight(m) for m in group}
        dtypes.update(dtype_name(w.dtype) for w in weights.values())
        if not fmt.smoothquant:
            in_amax = torch.max(torch.stack([stats.input_amax(m) for m in group]))
            w_amax = torch.max(torch.stack([sc.tensor_amax(weights[m]) for m in group]))
            in_scale, w_scale = sc.scale_from_amax(in_amax, fmt.qmax), sc.scale_from_amax(w_amax, fmt.qmax)
            for m in group:
                check(m, sc.quantize_per_tensor(weights[m], w_scale, fmt.weight_dtype), f"{fmt.name} quantization")
                linears.append(LinearQuant(m, group, float(stats.input_amax(m)), float(in_scale), float(w_scale)))
            continue
        own = {}
        for m in group:
            a = stats.channel_amax[m].float()
            s = sc.smoothing_factors(a, weights[m], opts.alpha)
            own[m] = (a, s, s.to(weights[m].dtype))
        fused = sc.fuse_smoothing([own[m][2] for m in group])
        act = []
        for m in group:
            a, s, stored = own[m]
            w = weights[m]
            w1 = sc.smooth_weight(w, s)
            check(m, w1, "SmoothQuant smoothing")
            w2 = sc.resmooth_weight(w1, stored, fused)
            check(m, w2, "re-smoothing for the fused GEMM")
            ws = sc.scale_from_amax(sc.row_amax(w2), fmt.qmax)
            check(m, sc.quantize_per_row(w2, ws, fmt.qmax, fmt.weight_dtype), "INT8 quantization")
            # The activation range of x * s: with the member's own factors when fusion did not change them
            # (NVIDIA's exporter does the same), else with the fused factors the GEMM applies.
            applied = s if torch.equal(stored, fused) else fused.float()
            act.append(sc.smoothed_act_amax(a, applied, w.dtype))
            tensors.update({f"{m}.act_amax": a, f"{m}.smoothing": s, f"{m}.prequant": fused.clone(), f"{m}.weight_scale": ws})
        in_scale = sc.scale_from_amax(torch.max(torch.stack(act)), fmt.qmax)
        for m in group:
            linears.append(LinearQuant(m, group, float(stats.input_amax(m)), float(in_scale), None))
    return linears, tensors, checked, dtypes


def quantize_model(
    model: str,
    out: Path | str,
    opts: QuantizeOptions,
    *,
    device: torch.device,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> QuantizeResult:
    """Calibrate ``model`` and write ``out`` = its folder + quantization.json, atomically."""
    from sparse_trt.models.loading import load_model, resolve_source

    t0 = time.perf_counter()
    out = Path(out)
    check_output_dir(out, overwrite, "quantized model folder")
    source = resolve_source(model)
    model_dir = Path(source.location) if source.kind == "dir" else None
    if model_dir is not None:
        refuse_quantized(model_dir)
        if model_dir.resolve() == out.resolve():
            raise InputError(f"-o '{out}' is the input folder", fix="write the quantized folder elsewhere")
    loaded = load_model(model, dtype=dtype, trust_remote_code=trust_remote_code)
    hf_config = loaded.model.config.to_dict()
    if not hf_config.get("architectures"):  # a .gguf (or a config.json without it): the class save_pretrained records
        hf_config["architectures"] = [type(loaded.model).__name__]
    family = export_family(hf_config, source.display, opts.fmt)
    adapter = loaded.adapter
    layers = adapter.layers(loaded.model)
    from sparse_trt.models.adapters import all_targets

    all_linears = all_targets(loaded.model, adapter)
    # --exclude is resolved (and refused when it matches nothing, everything, or part of a fused group)
    # before calibration; excluded linears get no hooks, no scales and no entry in quantization.json.
    excluded = resolve_excludes(opts.exclude, [t.name for t in all_linears],
                                _groups([t.name for t in all_linears], family, adapter.layers_path, len(layers)),
                                adapter.layers_path)
    targets = [t for t in all_linears if t.name not in set(excluded)]
    bos = loaded.add_bos()
    windows = calibration_windows(loaded.tokenizer, opts.calib, opts.nsamples, opts.seqlen, opts.seed, bos)
    stats = calibrate(loaded.model, layers, adapter.layers_path, targets, windows, device,
                      kv_cache=opts.kv is not None, batch_size=opts.batch_size, progress=progress)
    loaded.model.to("cpu")

    # Weight-side numbers come from the weights as the folder stores them (what export reads).
    by_name = {t.name: t for t in targets}
    if model_dir is not None:
        from sparse_trt.models.safetensors_io import WeightIndex

        hfw = WeightIndex.open(model_dir)

        def get_weight(name: str) -> torch.Tensor:
            return hfw.get(name + ".weight")
    else:

        def get_weight(name: str) -> torch.Tensor:
            return by_name[name].weight_out_in().detach().clone()

    patterns, pattern = _patterns(model_dir)
    names = list(by_name)
    group_of = _groups(names, family, adapter.layers_path, len(layers))
    linears, tensors, checked, wdtype = compute_spec(opts, stats, names, get_weight, group_of, patterns)

    kv: list[KVQuant] = []
    if opts.kv is not None:
        for name in stats.k_amax:
            ka, va = float(stats.k_amax[name]), float(stats.v_amax[name])
            kv.append(KVQuant(name, ka, va, sc.kv_scale(ka, opts.kv.qmax, opts.kv.min_scale),
                              sc.kv_scale(va, opts.kv.qmax, opts.kv.min_scale)))
    spec = QuantSpec(
        format=opts.fmt.name, quant_algo=opts.fmt.quant_algo,
        kv_cache=None if opts.kv is None else opts.kv.name,
        kv_cache_quant_algo=None if opts.kv is None else opts.kv.quant_algo,
        alpha=opts.alpha if opts.fmt.smoothquant else None,
        calibration={"source": opts.calib.name, "nsamples": opts.nsamples, "seqlen": opts.seqlen, "seed": opts.seed,
                     "tokens": stats.tokens, "bos": bos},
        calib_dtype=dtype_name(next(loaded.model.parameters()).dtype), weight_dtype=",".join(sorted(wdtype)),
        family=family, pattern=pattern, linears=tuple(linears), kv=tuple(kv),
        exclude_modules=ALWAYS_EXCLUDED + excluded,
        tool_version=sparse_trt.__version__, seconds=round(time.perf_counter() - t0, 3), tensors=tensors,
    )
    with atomic_output_dir(out, overwrite=overwrite, what="quantized model folder") as tmp:
        if model_dir is not None:
            for f in sorted(model_dir.iterdir()):
                if f.is_file() and f.name not in (QUANT_NAME, SCALES_NAME) and not f.name.startswith("."):
                    shutil.copy2(f, tmp / f.name)
        else:
            loaded.model.save_pretrained(tmp)
            if loaded.tokenizer is not None:
                loaded.tokenizer.save_pretrained(tmp)
        spec.save(tmp)
    log.info("quantized %s to %s (%s, %d linears, %d sparse weights checked)", model, out, opts.fmt.name, len(linears), checked)
    return QuantizeResult(out.absolute(), spec, checked, stats.tokens, time.perf_counter() - t0)
