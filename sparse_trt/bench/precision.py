"""Which precision each side of a benchmark computes in, known before anything is loaded or measured.

``bench compare`` refuses a dense/sparse pair of different precisions (e.g. an FP8 sparse engine
against a float16 dense one: the ratio would mix the gain of 2:4 with that of FP8) unless asked to
compare anyway; the report flags such pairs. The precision of a side comes from what is on disk:

* an engine (``trtllm``, or ``triton`` with ``--opt engine_dir=``): its ``build_report.json``
  (``checkpoint.precision``: the ``quant_algo`` when quantized, else the dtype), else the engine's
  ``config.json`` (``pretrained_config.quantization.quant_algo``, else ``pretrained_config.dtype``);
* a model folder: its ``quantization.json`` (``quant_algo``: the model is the FP8 / INT8-SQ one, and
  its quality is the simulated figure), else ``--dtype``, else the dtype in its ``config.json``.
  The ``hf`` and ``torch-2of4`` backends run an FP8 folder's quantized linears as FP8 GEMMs
  (``--opt fp8=auto|on``; backends/fp8_linear.py), so it is FP8; with ``--opt fp8=off`` they run it
  as stored, so its precision is the stored dtype (like the unquantized folder it came from). When
  ``fp8=auto`` finds that FP8 GEMMs cannot run on the device, the run records it (``quality.quantization.
  compute == "stored"``) and the report shows the stored dtype, flagging a pair that became mixed.
  INT8-SQ folders are not run in INT8 by these backends: they keep their ``quant_algo`` precision (the
  quality is simulated, the timing is not) and the report says the weights ran unquantized;
* anything else (a hub id with ``--dtype auto``, ``triton`` without ``engine_dir``): unknown, and
  the pair is compared with a note that its precisions could not be checked.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparse_trt.core.errors import InputError

#: backends that run a HF folder in process: an FP8 quantization.json is applied as FP8 GEMMs unless --opt fp8=off
#: (backends/fp8_linear.py); other formats run as stored
HF_BACKENDS = ("hf", "torch-2of4")
FP8_OFF_NOTE = "not applied (--opt fp8=off)"


class MixedPrecisionError(InputError):
    """The two sides of a comparison compute in different precisions (refused unless allowed)."""


@dataclass(frozen=True)
class Precision:
    key: str | None  # "FP8", "W8A8_SQ_PER_CHANNEL", "float16" ...; None = unknown
    source: str  # where it was read, for messages

    @property
    def known(self) -> bool:
        return self.key is not None


def _json(path: Path) -> dict[str, Any] | None:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def engine_precision(engine_dir: Path) -> Precision:
    rep = _json(engine_dir / "build_report.json")
    ck = rep.get("checkpoint") if rep else None
    if isinstance(ck, dict) and isinstance(ck.get("precision"), str):
        return Precision(ck["precision"], f"{engine_dir}/build_report.json")
    cfg = _json(engine_dir / "config.json") or {}
    pc = cfg.get("pretrained_config") if isinstance(cfg.get("pretrained_config"), dict) else {}
    q = pc.get("quantization") if isinstance(pc.get("quantization"), dict) else {}
    if q.get("quant_algo"):
        return Precision(str(q["quant_algo"]), f"{engine_dir}/config.json quantization")
    if isinstance(pc.get("dtype"), str):
        return Precision(pc["dtype"], f"{engine_dir}/config.json dtype")
    return Precision(None, f"engine '{engine_dir}' records no precision")


def folder_quantization(folder: Path) -> dict[str, Any] | None:
    """``{"format", "quant_algo", "kv_cache", "excluded"}`` from a folder's quantization.json, or None."""
    d = _json(Path(folder) / "quantization.json")
    if not d or not isinstance(d.get("format"), str):
        return None
    ex = d.get("exclude_modules")
    return {"format": d["format"], "quant_algo": str(d.get("quant_algo") or d["format"]),
            "kv_cache": d.get("kv_cache"),
            "excluded": [m for m in ex if m != "lm_head"] if isinstance(ex, list) else []}


def folder_precision(folder: Path, dtype: Any, apply_fp8: bool = True) -> Precision:
    """A model folder's precision: its quant_algo when quantized (unless it is FP8 and ``apply_fp8`` is False:
    then it runs as stored), else ``dtype``, else its config.json dtype."""
    q = folder_quantization(folder)
    if q is not None and (apply_fp8 or q["format"] != "fp8"):
        return Precision(q["quant_algo"], f"{folder}/quantization.json")
    stored = stored_precision(folder, dtype)
    if q is not None:
        return Precision(stored.key, f"{stored.source}: FP8 {folder}/quantization.json {FP8_OFF_NOTE}")
    return stored


def fp8_option_off(backend: str, opts: Mapping[str, Any]) -> bool:
    """Does this side run an FP8 folder as stored (``--opt fp8=off`` on hf / torch-2of4)?"""
    return backend in HF_BACKENDS and str(opts.get("fp8", "auto")).strip().lower() == "off"


def stored_precision(folder: Path, dtype: Any) -> Precision:
    """The dtype a folder's weights compute in when run as stored: ``--dtype``, else its config.json dtype."""
    if dtype is not None:
        return Precision(str(dtype).removeprefix("torch."), "--dtype")
    cfg = _json(folder / "config.json") or {}
    dt = cfg.get("torch_dtype") or cfg.get("dtype")
    if not isinstance(dt, str) and isinstance(cfg.get("text_config"), dict):
        dt = cfg["text_config"].get("torch_dtype") or cfg["text_config"].get("dtype")
    return Precision(dt, f"{folder}/config.json dtype") if isinstance(dt, str) else Precision(None, f"'{folder}' records no dtype")


def declared_precision(backend: str, model: str, dtype: Any, opts: Mapping[str, Any]) -> Precision:
    """The precision a side will compute in, from files only (nothing is loaded)."""
    engine = model if backend == "trtllm" else opts.get("engine_dir") if backend == "triton" else None
    if engine:
        p = Path(str(engine)).expanduser()
        return engine_precision(p) if p.is_dir() else Precision(None, f"engine '{p}' not found")
    if backend == "triton":
        return Precision(None, "triton without --opt engine_dir=ENGINE")
    p = Path(model).expanduser()
    if p.is_dir():
        return folder_precision(p, dtype, apply_fp8=not fp8_option_off(backend, opts))
    if dtype is not None:
        return Precision(str(dtype).removeprefix("torch."), "--dtype")
    return Precision(None, f"'{model}' is not a local folder (hub id?) and --dtype is auto")


def _how(dense: Precision, sparse: Precision, labels: tuple[str, str]) -> str:
    fmt = {d: _format_of(d) for d in (dense.key, sparse.key) if d}
    for side, other, label in ((dense, sparse, labels[0]), (sparse, dense, labels[1])):
        if fmt.get(other.key) == "fp8" and FP8_OFF_NOTE in side.source:
            return f"drop --opt fp8=off on '{label}': its folder is FP8-quantized and then runs as FP8 GEMMs"
        if fmt.get(other.key) and not fmt.get(side.key):
            return (f"make '{label}' {other.key} too: `sparse-trt quantize` its model folder with --format "
                    f"{fmt[other.key]}, then export and build it as the other side")
    return "same --dtype, same quantization format, same build options"


def check_same_precision(dense: Precision, sparse: Precision, labels: tuple[str, str], allow_mixed: bool) -> str | None:
    """None when the precisions agree; refuses a mixed pair unless ``allow_mixed``, then returns its description.

    An unknown side cannot be checked: returns None (the caller notes it).
    """
    if not dense.known or not sparse.known or dense.key == sparse.key:
        return None
    what = (f"dense '{labels[0]}' is {dense.key} ({dense.source}) but sparse '{labels[1]}' is {sparse.key} "
            f"({sparse.source})")
    if not allow_mixed:
        raise MixedPrecisionError(
            f"{what}: the ratios would mix the effect of {sparse.key} vs {dense.key} with that of sparsity, "
            "not like with like",
            fix=f"build / quantize the other side the same way ({_how(dense, sparse, labels)}), or pass "
                "--allow-mixed-precision to compare anyway (recorded in the results and flagged in the report)",
        )
    return what


# ------------------------------------------------------------------------------- quality of a side
#: TensorRT-LLM quant_algo -> our format name (quantize/formats.py): the eval key of its simulated perplexity
def _format_of(quant_algo: str) -> str | None:
    from sparse_trt.quantize.formats import FORMATS

    return next((f.name for f in FORMATS.values() if f.quant_algo == quant_algo), None)


def simulated_key(fmt: str) -> str:
    """Where `sparse-trt eval` records a quantized folder's simulated perplexity (``quality.<key>``)."""
    return f"perplexity_{fmt}_simulated"


def with_quantization(folder: Path, quality: dict[str, Any], fp8: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A side's manifest quality, plus ``quantization`` (format, quant_algo, which perplexity counts) when
    ``folder`` is quantized: its quality is the simulated figure for that format, not the unquantized one.

    ``fp8``: what an hf / torch-2of4 run did with an FP8 folder (backends/fp8_linear.py's ``fp8_info``):
    ``compute`` is then ``"fp8"`` (FP8 GEMMs ran; ``fp8_gemms`` counts them) or ``"stored"`` (the folder ran as
    stored, ``compute_reason`` says why: its quality is then the unquantized figure, its precision the dtype)."""
    q = folder_quantization(folder)
    if q is None:
        return quality
    key = simulated_key(q["format"])
    quant: dict[str, Any] = {**q, "perplexity_key": key if key in quality else None}
    if fp8 is not None and q["format"] == "fp8":
        if fp8.get("applied"):
            quant["compute"] = "fp8"
            quant["fp8_gemms"] = {"dense": fp8.get("fp8_dense", 0), "2of4": fp8.get("fp8_2of4", 0),
                                  "kept": len(fp8.get("kept_quantized_as_stored") or {})}
        else:
            quant["compute"] = "stored"
            quant["compute_reason"] = str(fp8.get("reason", ""))
            quant["perplexity_key"] = None
    return {**quality, "quantization": quant}


def ran_as_stored(quality: Any) -> bool:
    """Did an hf / torch-2of4 run execute an FP8 folder as stored (not in FP8)? Its precision is then its dtype."""
    quant = quality.get("quantization") if isinstance(quality, dict) else None
    return isinstance(quant, dict) and quant.get("compute") == "stored"


def hf_run_note(backend: str, dtype: str | None, quant: Mapping[str, Any]) -> str | None:
    """What an hf / torch-2of4 run computed with a quantized folder, for the precision column (None: other
    backends). FP8 GEMMs when they ran; else the stored weights, and why."""
    if backend not in HF_BACKENDS:
        return None
    if quant.get("compute") == "fp8":
        n = quant.get("fp8_gemms") or {}
        kept = f", {n['kept']} kept as stored" if n.get("kept") else ""
        return (f"quantization.json; {backend} ran FP8 GEMMs: {n.get('dense', 0)} dense, {n.get('2of4', 0)} 2:4"
                f"{kept}; KV cache not quantized")
    if quant.get("compute") == "stored":
        return f"FP8 quantization.json not applied: {quant.get('compute_reason') or 'fp8=off'}"
    return f"quantization.json; {backend} ran {dtype or 'unquantized'} weights"


@dataclass(frozen=True)
class SidePerplexity:
    value: float | None
    label: str  # "" (unquantized model), "fp8 simulated", ...
    note: str | None = None  # set when a quantized side falls back to another figure


def side_perplexity(quality: dict[str, Any], precision_key: str | None, perplexity_of) -> SidePerplexity:
    """The perplexity that stands for a side: for a quantized side (quality.quantization, or a quant_algo
    precision) the simulated figure of its format, else an explicit fallback to the unquantized one."""
    quant = quality.get("quantization") if isinstance(quality, dict) else None
    fmt = quant.get("format") if isinstance(quant, dict) and not ran_as_stored(quality) else None
    if fmt is None and precision_key and not ran_as_stored(quality):
        fmt = _format_of(precision_key)
    if fmt is None:
        return SidePerplexity(perplexity_of(quality), "")
    sim = perplexity_of(quality, simulated_key(fmt))
    if sim is not None:
        return SidePerplexity(sim, f"{fmt} simulated")
    plain = perplexity_of(quality)
    return SidePerplexity(plain, "unquantized" if plain is not None else "",
                          f"no simulated {fmt} perplexity recorded ({simulated_key(fmt)}): "
                          + ("the figure shown is the unquantized model's" if plain is not None else "none shown")
                          + "; run `sparse-trt eval` on the quantized folder")
