"""Triton Python-backend model: tokenise prompts for the TensorRT-LLM ensemble.

Copied verbatim into a model repository as ``preprocessing/1/model.py`` by ``sparse-trt triton repo``.
Inputs  QUERY STRING [batch, 1]; MAX_TOKENS INT64 [batch, 1]; IGNORE_EOS BOOL [batch, 1] (optional: END_ID
        -1, so generation runs to max_tokens, as benchmarks need).
Outputs INPUT_ID INT32 [batch, max_len] (right-padded with the pad id), REQUEST_INPUT_LEN INT32 [batch, 1],
        REQUEST_OUTPUT_LEN INT32 [batch, 1] (MAX_TOKENS once checked: 1 <= n <= max_seq_len - prompt, so
        an oversized or wrapped value is refused with INVALID_ARG / HTTP 400 instead of reaching the engine),
        END_ID / PAD_ID INT32 [batch, 1] (from the tokenizer, so clients need not know them).
Parameters: tokenizer_dir, add_special_tokens (true|false), max_seq_len, max_input_len (the engine's).
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


def _param(cfg, key, default=""):
    return cfg.get("parameters", {}).get(key, {}).get("string_value", default)


def _int_param(cfg, key):
    v = _param(cfg, key, "")
    return int(v) if v.strip().isdigit() and int(v) > 0 else None


def _error(message, code="INVALID_ARG"):
    c = getattr(pb_utils.TritonError, code, None)
    return pb_utils.TritonError(message) if c is None else pb_utils.TritonError(message, c)


class BadRequest(ValueError):
    pass


class TritonPythonModel:
    def initialize(self, args):
        from transformers import AutoTokenizer

        cfg = json.loads(args["model_config"])
        self.tokenizer = AutoTokenizer.from_pretrained(_param(cfg, "tokenizer_dir"))
        self.add_special = _param(cfg, "add_special_tokens", "true").lower() == "true"
        self.max_seq_len = _int_param(cfg, "max_seq_len")
        self.max_input_len = _int_param(cfg, "max_input_len")
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
        drain = os.environ.get("SPARSE_TRT_DRAIN_FILE", "")  # set by `sparse-trt triton serve`
        draining = bool(drain) and os.path.exists(drain)
        for request in requests:
            if draining:
                responses.append(pb_utils.InferenceResponse(
                    error=_error("the server is shutting down and takes no new requests", "UNAVAILABLE")))
                continue
            try:
                q = pb_utils.get_input_tensor_by_name(request, "QUERY").as_numpy().reshape(-1)
                texts = [x.decode("utf-8", errors="replace") if isinstance(x, bytes) else str(x) for x in q]
                ids = [self.tokenizer.encode(t, add_special_tokens=self.add_special) for t in texts]
                if any(t == "" for t in texts) or any(len(i) == 0 for i in ids):
                    raise BadRequest("text_input is empty: send a prompt of at least one token")
                mt = pb_utils.get_input_tensor_by_name(request, "MAX_TOKENS")
                if mt is None:
                    raise BadRequest("max_tokens is required (1 or more)")
                max_tokens = [int(x) for x in mt.as_numpy().reshape(-1)]
                for i, n in zip(ids, max_tokens, strict=True):
                    self._check(len(i), n)
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
                    pb_utils.Tensor("REQUEST_OUTPUT_LEN", np.array([[n] for n in max_tokens], dtype=np.int32)),
                    pb_utils.Tensor("END_ID", end),
                    pb_utils.Tensor("PAD_ID", np.full((n, 1), self.pad_id, dtype=np.int32)),
                ]))
            except BadRequest as e:
                responses.append(pb_utils.InferenceResponse(error=_error(str(e))))
            except Exception as e:  # noqa: BLE001 - answer the request with the reason
                responses.append(pb_utils.InferenceResponse(error=_error(f"preprocessing: {e}")))
        return responses

    def _check(self, n_prompt, n):
        if self.max_input_len is not None and n_prompt > self.max_input_len:
            raise BadRequest(f"the prompt has {n_prompt} tokens, more than the engine's max_input_len "
                             f"{self.max_input_len}: shorten it")
        if n < 1:
            raise BadRequest(f"max_tokens must be at least 1, got {n}")
        if self.max_seq_len is not None and n > self.max_seq_len - n_prompt:
            room = self.max_seq_len - n_prompt
            raise BadRequest(f"max_tokens {n} exceeds the room left in the engine's context: max_seq_len "
                             f"{self.max_seq_len} - {n_prompt} prompt tokens = {room}; ask for at most {room}")
        if n > 2**31 - 1:  # no max_seq_len known: the engine's request_output_len is INT32
            raise BadRequest(f"max_tokens {n} is beyond what the engine takes (2147483647)")
