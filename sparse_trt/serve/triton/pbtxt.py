"""``config.pbtxt`` as ``ModelConfig`` protobuf messages: build, write (text_format) and read back strictly."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sparse_trt.core.deps import require

from .errors import TritonRepoError


def pb():
    """The ``model_config_pb2`` module (tritonclient is an optional dependency)."""
    return require("tritonclient.grpc.model_config_pb2", "building and checking Triton model configs")


def text_format():
    require("google.protobuf", "building and checking Triton model configs")
    from google.protobuf import text_format as tf

    return tf


def data_type(name: str) -> int:
    """'TYPE_INT32' (or 'INT32') -> the DataType enum value."""
    key = name if name.startswith("TYPE_") else f"TYPE_{name}"
    return pb().DataType.Value(key)


def type_name(value: int) -> str:
    return pb().DataType.Name(value)


def tensor(name: str, dtype: str, dims: Sequence[int], *, optional: bool = False,
           reshape: Sequence[int] | None = None, ragged: bool = False) -> dict[str, Any]:
    """A plain description of one input/output tensor (turned into a message by ``model_config``)."""
    return {"name": name, "dtype": dtype, "dims": list(dims), "optional": optional,
            "reshape": None if reshape is None else list(reshape), "ragged": ragged}


def model_config(
    name: str,
    *,
    backend: str | None = None,
    platform: str | None = None,
    max_batch_size: int = 0,
    inputs: Sequence[Mapping[str, Any]] = (),
    outputs: Sequence[Mapping[str, Any]] = (),
    decoupled: bool | None = None,
    parameters: Mapping[str, str] | None = None,
    instances: int | None = None,
    instance_kind: str = "KIND_CPU",
    dynamic_batching: bool = False,
    max_queue_delay_us: int | None = None,
):
    """Build a ``ModelConfig`` message field by field."""
    m = pb()
    cfg = m.ModelConfig(name=name, max_batch_size=max_batch_size)
    if backend:
        cfg.backend = backend
    if platform:
        cfg.platform = platform
    for spec, field in ((inputs, cfg.input), (outputs, cfg.output)):
        for t in spec:
            item = field.add(name=t["name"], data_type=data_type(t["dtype"]), dims=list(t["dims"]))
            if t.get("reshape") is not None:
                item.reshape.shape.extend(t["reshape"])
                if not t["reshape"]:
                    item.reshape.SetInParent()  # an empty reshape (scalar) must still be present
            if field is cfg.input:
                if t.get("optional"):
                    item.optional = True
                if t.get("ragged"):
                    item.allow_ragged_batch = True
    if decoupled is not None:
        cfg.model_transaction_policy.decoupled = decoupled
    for k, v in (parameters or {}).items():
        cfg.parameters[k].string_value = str(v)
    if instances is not None:
        cfg.instance_group.add(count=instances, kind=m.ModelInstanceGroup.Kind.Value(instance_kind))
    if dynamic_batching:
        cfg.dynamic_batching.SetInParent()
        if max_queue_delay_us is not None:
            cfg.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    return cfg


def add_ensemble_step(cfg, model_name: str, input_map: Mapping[str, str], output_map: Mapping[str, str]) -> None:
    """Append a step: ``input_map`` maps the step model's input -> ensemble tensor, ``output_map`` its output -> tensor."""
    step = cfg.ensemble_scheduling.step.add(model_name=model_name, model_version=-1)
    for k, v in input_map.items():
        step.input_map[k] = v
    for k, v in output_map.items():
        step.output_map[k] = v


def to_text(cfg) -> str:
    return text_format().MessageToString(cfg)


def write_config(model_dir: Path, cfg) -> Path:
    path = Path(model_dir) / "config.pbtxt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_text(cfg), encoding="utf-8")
    return path


def parse_text(text: str, where: str):
    """Parse config text strictly: unknown fields and syntax errors raise TritonRepoError naming the file."""
    m = pb()
    cfg = m.ModelConfig()
    try:
        text_format().Parse(text, cfg)
    except text_format().ParseError as e:
        raise TritonRepoError(f"{where} is not a valid Triton ModelConfig: {e}",
                              fix="fix or regenerate it with `sparse-trt triton repo`") from None
    return cfg


def read_config(path: Path):
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TritonRepoError(f"cannot read {path}: {e}", fix="check the repository folder") from None
    return parse_text(text, str(path))
