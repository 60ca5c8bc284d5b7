"""Triton Python-backend model: tokenise prompts for the TensorRT-LLM ensemble.

Copied verbatim into a model repository as ``preprocessing/1/model.py`` by ``sparse-trt triton repo``.
Inputs  QUERY STRING [batch, 1]; IGNORE_EOS BOOL [batch, 1] (optional: END_ID -1, so generation runs to
        max_tokens, as benchmarks need).
Outputs INPUT_ID INT32 [batch, max_len] (right-padded with the pad id), REQUEST_INPUT_LEN INT32 [batch, 1],
        END_ID / PAD_ID INT32 [batch, 1] (from the tokenizer, so clients need not know them).
Parameters: tokenizer_dir, add_special_tokens (true|false).
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
        self.add_special = _param(cfg, "add_special_tokens", "true").lower() == "true"
        eos = self.tokenizer.eos_token_id
        if isinstance(eos, (list, tuple)):
            eos = eos[0]
        if eos is None:
            raise pb_utils.TritonModelException("the tokenizer has no eos token: set one in tokenizer_config.json")
        pad = self.tokenizer.pad_token_id
        self.end_id = int(eos)
        self.pad_id = int(pad if pad is not None else eos)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                q = pb_utils.get_input_tensor_by_name(request, "QUERY").as_numpy().reshape(-1)
                texts = [x.decode("utf-8", errors="replace") if isinstance(x, bytes) else str(x) for x in q]
                ids = [self.tokenizer.encode(t, add_special_tokens=self.add_special) for t in texts]
                if any(len(i) == 0 for i in ids):
                    raise ValueError("empty prompt: text_input must hold at least one token")
                width = max(len(i) for i in ids)
                arr = np.full((len(ids), width), self.pad_id, dtype=np.int32)
                for r, i in enumerate(ids):
                    arr[r, : len(i)] = i
                n = len(ids)
                ign = pb_utils.get_input_tensor_by_name(request, "IGNORE_EOS")
                end = np.full((n, 1), self.end_id, dtype=np.int32)
                if ign is not None:
                    end[ign.as_numpy().reshape(-1).astype(bool)[:n]] = -1
                responses.append(pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("INPUT_ID", arr),
                    pb_utils.Tensor("REQUEST_INPUT_LEN", np.array([[len(i)] for i in ids], dtype=np.int32)),
                    pb_utils.Tensor("END_ID", end),
                    pb_utils.Tensor("PAD_ID", np.full((n, 1), self.pad_id, dtype=np.int32)),
                ]))
            except Exception as e:  # noqa: BLE001 - answer the request with the reason
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"preprocessing: {e}")))
        return responses
