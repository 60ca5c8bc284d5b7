"""The text interface of ``sparse-trt triton repo`` repositories, for the benchmark's ``triton`` backend.

The bench backend (``sparse_trt/bench/backends/triton.py``) speaks TensorRT-LLM's token-id model by
default; with ``--opt interface=text`` it uses this adapter instead and calls the entry model of our
repositories (``ensemble`` or ``--name``; either backend): prompt ids are decoded to text with the
model's tokenizer (``--opt tokenizer=DIR``, required), ``ignore_eos`` makes the server generate exactly
``max_new_tokens``, and every streamed response carries one token. The server re-tokenises the text,
so its prompt length can differ slightly from the id list's (the results record the id count).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .client import SamplingParams, _inputs
from .errors import TokenizerError
from .repo import validate_tokenizer


class TextInterface:
    def __init__(self, options: dict[str, str]) -> None:
        tok = options.get("tokenizer")
        if not tok:
            raise TokenizerError("--opt interface=text needs --opt tokenizer=DIR (the served model's HF folder)",
                                 fix="add --opt tokenizer=PATH/TO/HF_MODEL")
        self.tokenizer = validate_tokenizer(Path(tok), what="--opt tokenizer")
        self.vocab_size = int(getattr(self.tokenizer, "vocab_size", 0) or len(self.tokenizer))
        self.temperature = float(options["temperature"]) if "temperature" in options else None

    def prompt_text(self, prompt: list[int]) -> str:
        return self.tokenizer.decode(prompt, skip_special_tokens=True)

    def build_inputs(self, grpc, prompt: list[int], max_new_tokens: int) -> list[Any]:
        params = SamplingParams(max_tokens=max_new_tokens, temperature=self.temperature, ignore_eos=True)
        return _inputs(grpc, self.prompt_text(prompt), params, stream=True)

    @staticmethod
    def tokens_in(result) -> int:
        """One streamed response = one token; the empty final response carries none."""
        resp = result.get_response()
        return 1 if any(o.name == "text_output" for o in resp.outputs) else 0
