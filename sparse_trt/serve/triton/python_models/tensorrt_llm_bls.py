"""Triton Python-backend model: the cancellable entry to a TensorRT-LLM engine (business logic scripting).

Copied verbatim into a model repository as ``tensorrt_llm_bls/1/model.py`` (with ``--name N``:
``N_tensorrt_llm_bls``) by ``sparse-trt triton repo``. It takes the same inputs as the ensemble and
gives the same output, but runs the steps itself: it tokenizes the prompt, sends one streaming request
to the ``tensorrt_llm`` model, and detokenizes each response as it arrives (holding back a UTF-8
character split across tokens, which the stateless postprocessing model of the ensemble cannot).

Why it exists: Triton does not forward a client's cancellation into an ensemble's steps, so a cancelled
or disconnected request to ``ensemble`` runs to max_tokens. This model checks ``is_cancelled()`` at every
response of the engine (every token: the inner request always streams) and then cancels the inner
request: ``ResponseIterator.cancel()`` where the Python backend has it (Triton 25.x), and always a
``stop`` request with the inner request's id, which the TensorRT-LLM backend turns into
``Executor.cancelRequest``; the in-flight batch slot is freed within the backend's cancellation check
period.

Inputs: text_input STRING, max_tokens INT64 (1 <= n <= max_seq_len - prompt), stream BOOL, temperature
FP32, top_k INT32, top_p FP32, random_seed UINT64, ignore_eos BOOL (all [batch, 1], the last six
optional). Output: text_output STRING.
Parameters: tokenizer_dir, tensorrt_llm_model_name, max_seq_len, max_input_len, add_special_tokens,
skip_special_tokens, decoupled_llm (whether the tensorrt_llm model streams).
"""

import json
import os
import random
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils

DRAIN_ENV = "SPARSE_TRT_DRAIN_FILE"
EXIT_TIMEOUT_ENV = "SPARSE_TRT_EXIT_TIMEOUT_S"  # the server's --exit-timeout-secs


def _param(cfg, key, default=""):
    return cfg.get("parameters", {}).get(key, {}).get("string_value", default)


def _scalar(request, name, default=None):
    t = pb_utils.get_input_tensor_by_name(request, name)
    if t is None:
        return default
    arr = t.as_numpy().reshape(-1)
    if arr.size == 0:
        return default
    v = arr[0]
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    return v.item() if hasattr(v, "item") else v


def _error(message, code="INVALID_ARG"):
    c = getattr(pb_utils.TritonError, code, None)
    return pb_utils.TritonError(message) if c is None else pb_utils.TritonError(message, c)


def _int_param(cfg, key):
    v = _param(cfg, key, "")
    return int(v) if v.strip().lstrip("-").isdigit() and int(v) > 0 else None


class BadRequest(ValueError):
    pass


def _exit_with_server(interval_s=1.0):
    """Exit this stub process once tritonserver, its parent, is gone (killed, or timed out while draining).

    Without this an orphaned stub keeps a generation thread (and the model's memory) alive for ever.
    """
    parent = os.getppid()

    def watch():
        while True:
            time.sleep(interval_s)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, name="exit-with-server", daemon=True).start()


class TritonPythonModel:
    def initialize(self, args):
        from transformers import AutoTokenizer

        cfg = json.loads(args["model_config"])
        self.name = cfg.get("name", "tensorrt_llm_bls")
        self.tokenizer = AutoTokenizer.from_pretrained(_param(cfg, "tokenizer_dir"))
        self.add_special = _param(cfg, "add_special_tokens", "true").lower() == "true"
        self.skip = _param(cfg, "skip_special_tokens", "true").lower() == "true"
        self.llm = _param(cfg, "tensorrt_llm_model_name", "tensorrt_llm")
        self.llm_decoupled = _param(cfg, "decoupled_llm", "true").lower() == "true"
        self.max_seq_len = _int_param(cfg, "max_seq_len")
        self.max_input_len = _int_param(cfg, "max_input_len")
        eos = self.tokenizer.eos_token_id
        if isinstance(eos, (list, tuple)):
            eos = eos[0]
        if eos is None:
            raise pb_utils.TritonModelException("the tokenizer has no eos token: set one in tokenizer_config.json")
        pad = self.tokenizer.pad_token_id
        self.end_id, self.pad_id = int(eos), int(pad if pad is not None else eos)
        _exit_with_server()
        self.drain_file = os.environ.get(DRAIN_ENV, "")
        self.closing = False
        self.active = set()
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)

    # ------------------------------------------------------------------ requests
    def execute(self, requests):
        draining = bool(self.drain_file) and os.path.exists(self.drain_file)
        for request in requests:
            sender = request.get_response_sender()
            if draining:
                self._fail(sender, _error("the server is shutting down and takes no new requests", "UNAVAILABLE"))
                continue
            try:
                job = self._parse(request)
            except BadRequest as e:
                self._fail(sender, _error(str(e)))
                continue
            except Exception as e:  # noqa: BLE001
                self._fail(sender, _error(f"bad request: {e}"))
                continue
            t = threading.Thread(target=self._run, args=(sender, job), daemon=True)
            with self.lock:
                self.active.add(t)
            t.start()
        return None

    @staticmethod
    def _fail(sender, error):
        sender.send(pb_utils.InferenceResponse(error=error), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _parse(self, request):
        prompt = _scalar(request, "text_input")
        if prompt is None or prompt == "":
            raise BadRequest("text_input is empty: send a prompt of at least one token")
        ids = self.tokenizer.encode(prompt, add_special_tokens=self.add_special)
        if not ids:
            raise BadRequest("text_input gives no tokens: send a prompt of at least one token")
        if self.max_input_len is not None and len(ids) > self.max_input_len:
            raise BadRequest(f"the prompt has {len(ids)} tokens, more than the engine's max_input_len "
                             f"{self.max_input_len}: shorten it")
        raw = _scalar(request, "max_tokens")
        if raw is None:
            raise BadRequest("max_tokens is required (1 or more)")
        n = int(raw)
        if n < 1:
            raise BadRequest(f"max_tokens must be at least 1, got {n}")
        if self.max_seq_len is not None and n > self.max_seq_len - len(ids):
            room = self.max_seq_len - len(ids)
            raise BadRequest(f"max_tokens {n} exceeds the room left in the engine's context: max_seq_len "
                             f"{self.max_seq_len} - {len(ids)} prompt tokens = {room}; ask for at most {room}")
        if n > 2**31 - 1:  # no max_seq_len known: the engine's request_output_len is INT32
            raise BadRequest(f"max_tokens {n} is beyond what the engine takes (2147483647)")
        return {"ids": ids, "max_tokens": n, "stream": bool(_scalar(request, "stream", False)),
                "ignore_eos": bool(_scalar(request, "ignore_eos", False)),
                "temperature": _scalar(request, "temperature"), "top_k": _scalar(request, "top_k"),
                "top_p": _scalar(request, "top_p"), "seed": _scalar(request, "random_seed")}

    def _inner_inputs(self, job):
        ids = job["ids"]
        t = pb_utils.Tensor
        inputs = [
            t("input_ids", np.array([ids], dtype=np.int32)),
            t("input_lengths", np.array([[len(ids)]], dtype=np.int32)),
            t("request_output_len", np.array([[job["max_tokens"]]], dtype=np.int32)),
            t("end_id", np.array([[-1 if job["ignore_eos"] else self.end_id]], dtype=np.int32)),
            t("pad_id", np.array([[self.pad_id]], dtype=np.int32)),
            t("streaming", np.array([[self.llm_decoupled]], dtype=np.bool_)),
        ]
        for key, name, dtype in (("temperature", "temperature", np.float32), ("top_k", "runtime_top_k", np.int32),
                                 ("top_p", "runtime_top_p", np.float32), ("seed", "seed", np.uint64)):
            if job[key] is not None:
                inputs.append(t(name, np.array([[job[key]]], dtype=dtype)))
        return inputs

    def _send_stop(self, request_id):
        """Ask the TensorRT-LLM backend to cancel the inner request (its `stop` input with the same request id)."""
        t = pb_utils.Tensor
        stop = pb_utils.InferenceRequest(
            model_name=self.llm, request_id=request_id, requested_output_names=["output_ids", "sequence_length"],
            inputs=[t("input_ids", np.array([[self.pad_id]], dtype=np.int32)),
                    t("input_lengths", np.array([[1]], dtype=np.int32)),
                    t("request_output_len", np.array([[1]], dtype=np.int32)),
                    t("stop", np.array([[True]], dtype=np.bool_))])
        try:
            if self.llm_decoupled:
                for _ in stop.exec(decoupled=True):
                    pass
            else:
                stop.exec()
        except Exception as e:  # noqa: BLE001 - the request may have ended already
            pb_utils.Logger.log_warn(f"{self.name}: stop request {request_id} failed: {e}")

    def _decode(self, ids):
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip)

    def _text(self, sender, text, final=False):
        out = pb_utils.Tensor("text_output", np.array([[text.encode("utf-8")]], dtype=np.object_))
        sender.send(pb_utils.InferenceResponse(output_tensors=[out]),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if final else 0)

    def _run(self, sender, job):
        request_id = str(random.getrandbits(62) + 1)  # the TensorRT-LLM backend accepts numeric ids everywhere
        state = {"ids": [], "text": ""}
        try:
            inner = pb_utils.InferenceRequest(model_name=self.llm, inputs=self._inner_inputs(job),
                                              requested_output_names=["output_ids", "sequence_length"],
                                              request_id=request_id)
            responses = inner.exec(decoupled=True) if self.llm_decoupled else [inner.exec()]
            cancelled = False
            for resp in responses:
                if resp.has_error():
                    raise RuntimeError(resp.error().message())
                if sender.is_cancelled() or self.closing:
                    cancelled = True
                    if hasattr(responses, "cancel"):
                        responses.cancel()
                    self._send_stop(request_id)
                    break
                out = pb_utils.get_output_tensor_by_name(resp, "output_ids")
                if out is None:
                    continue
                arr = out.as_numpy()
                lens = pb_utils.get_output_tensor_by_name(resp, "sequence_length")
                new = arr.reshape(arr.shape[0], -1, arr.shape[-1])[0, 0]
                if lens is not None:
                    new = new[: int(lens.as_numpy().reshape(-1)[0])]
                new = [int(x) for x in new.tolist() if int(x) >= 0]
                state["ids"].extend(new)
                if job["stream"] and new:
                    full = self._decode(state["ids"])
                    if full.endswith("\ufffd"):
                        delta = ""
                    else:
                        delta = full[len(state["text"]):] if full.startswith(state["text"]) else full
                        state["text"] = full
                    self._text(sender, delta)
            if cancelled:
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                for _ in responses:  # let the inner stream end (it stops at its next cancellation check)
                    pass
                return
            full = self._decode(state["ids"])
            if job["stream"]:
                tail = full[len(state["text"]):] if full.startswith(state["text"]) else ""
                if tail:
                    self._text(sender, tail, final=True)
                else:
                    sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            else:
                self._text(sender, full, final=True)
        except Exception as e:  # noqa: BLE001 - answer the client, keep the model alive
            try:
                self._fail(sender, _error(f"generation failed: {e}", "INTERNAL"))
            except Exception:  # noqa: BLE001
                pass
        finally:
            with self.lock:
                self.active.discard(threading.current_thread())
                self.idle.notify_all()

    def finalize(self):
        try:
            limit = max(0.0, float(os.environ.get(EXIT_TIMEOUT_ENV, "61")) - 1.0)
        except ValueError:
            limit = 60.0
        with self.lock:
            self.idle.wait_for(lambda: not self.active, timeout=limit)
            self.closing = True  # stop (and cancel inside the engine) what still runs
            self.idle.wait_for(lambda: not self.active, timeout=5.0)
