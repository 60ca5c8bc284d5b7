"""TensorRT-LLM unified checkpoints: export (writer), splitting rules (sharding), read-back + reference forward (reader)."""

from .families import FAMILIES, supported_architectures
from .reader import Checkpoint, assemble, load_checkpoint, reference_logits
from .writer import EXPORT_DTYPES, ExportResult, export_trtllm, parse_export_dtype

__all__ = [
    "EXPORT_DTYPES",
    "FAMILIES",
    "Checkpoint",
    "ExportResult",
    "assemble",
    "export_trtllm",
    "load_checkpoint",
    "parse_export_dtype",
    "reference_logits",
    "supported_architectures",
]
