"""Triton Python-backend model: detokenise TensorRT-LLM output ids, streaming-aware.

Copied verbatim into a model repository as ``postprocessing/1/model.py`` by ``sparse-trt triton repo``.
Inputs  TOKENS_BATCH INT32 [batch, beams, len], SEQUENCE_LENGTH INT32 [batch, beams].
Output  OUTPUT STRING [batch, beams].

In streaming mode each response carries only the new token(s) and this model keeps no per-request
state, so it decodes them after a fixed anchor token and strips the anchor's text: tokenizers that
drop a word's leading space at the start of a sequence (SentencePiece) then keep it, and the streamed
pieces concatenate to the same text as a non-streamed response. (A character split across two
responses' bytes shows as U+FFFD in the streamed pieces.)
Parameters: tokenizer_dir, skip_special_tokens (true|false).
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils


def _param(cfg, key, default=""):
    return cfg.get("parameters", {}).get(key, {}).get("string_value", default)


class TritonPythonModel:
    def initialize(self, args):
        from transformers import AutoTokenizer

        cfg = json.loads(args["model_config"])
        self.tokenizer = AutoTokenizer.from_pretrained(_param(cfg, "tokenizer_dir"))
        self.skip = _param(cfg, "skip_special_tokens", "true").lower() == "true"
        anchor = self.tokenizer.encode("a", add_special_tokens=False)
        self.anchor = anchor[-1:] if anchor else []
        self.anchor_text = self.tokenizer.decode(self.anchor, skip_special_tokens=self.skip)

    def _decode(self, ids):
        if not self.anchor:
            return self.tokenizer.decode(ids, skip_special_tokens=self.skip)
        text = self.tokenizer.decode(self.anchor + ids, skip_special_tokens=self.skip)
        if text.startswith(self.anchor_text):
            return text[len(self.anchor_text):]
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                tokens = pb_utils.get_input_tensor_by_name(request, "TOKENS_BATCH").as_numpy()
                lengths = pb_utils.get_input_tensor_by_name(request, "SEQUENCE_LENGTH").as_numpy()
                if tokens.ndim == 2:  # [batch, len] without a beam axis
                    tokens, lengths = tokens[:, None, :], lengths.reshape(-1, 1)
                out = np.empty(lengths.shape, dtype=np.object_)
                for b in range(tokens.shape[0]):
                    for k in range(tokens.shape[1]):
                        n = min(int(lengths[b, k]), tokens.shape[2])
                        out[b, k] = self._decode(tokens[b, k, :n].tolist()).encode("utf-8")
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT", out)]))
            except Exception as e:  # noqa: BLE001
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"postprocessing: {e}")))
        return responses
