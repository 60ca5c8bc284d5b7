"""Triton Python-backend model: a Hugging Face causal LM run with PyTorch, streaming (decoupled).

Copied verbatim into a model repository as ``<entry>/1/model.py`` by ``sparse-trt triton repo --backend
pytorch``; it imports only numpy, torch, transformers and Triton's ``triton_python_backend_utils``, so a
repository works wherever those are installed (sparse_trt itself is not needed by the server).

It is the entry model itself (no ensemble in front of it): it tokenizes, generates and detokenizes, and
checks ``is_cancelled()`` at every decoding step, so a cancelled request (client cancel, disconnect,
timeout) stops within one step and frees its slot. Triton does not forward cancellation through
ensembles, which is why there is none.

Interface (batch dimension first; every tensor is [batch, 1]):
  text_input  STRING  the prompt (not empty)         max_tokens  INT64  new tokens, 1 <= n <= context - prompt
  stream      BOOL    one response per token (opt.)  temperature FP32, top_k INT32, top_p FP32,
  random_seed UINT64  sampling (optional; greedy without temperature > 0)
  ignore_eos  BOOL    generate exactly max_tokens tokens (optional; for benchmarks)
  -> text_output STRING  streaming: the text added by each new token ("" while a UTF-8 character is
     incomplete), one response per generated token; non-streaming: the whole completion in one response.
Bad requests are answered with INVALID_ARG (HTTP 400) naming the input; requests that arrive while the
server drains for shutdown with UNAVAILABLE (HTTP 503).

Settings come from the config's ``parameters``: model_dir, device (auto|cpu|cuda|cuda:N), dtype
(auto|float32|float16|bfloat16), sparse_kernels (true|false), max_concurrency, intra_op_threads (auto|N;
auto = usable cores // instances of this model), drain_timeout_s.

Concurrent requests each run ``model.generate`` in their own thread (at most max_concurrency at once),
so streams progress side by side; there is no batched decoding. Greedy decoding is exactly
``model.generate(do_sample=False)``.
"""

import json
import os
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils

_DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
           "bfloat16": "bfloat16", "bf16": "bfloat16"}
# set by `sparse-trt triton serve` in the server's environment: the file exists once shutdown has begun
DRAIN_ENV = "SPARSE_TRT_DRAIN_FILE"
EXIT_TIMEOUT_ENV = "SPARSE_TRT_EXIT_TIMEOUT_S"  # the server's --exit-timeout-secs


def drain_timeout(cfg_value, default=60.0):
    """Seconds finalize() lets in-flight generations run: under the server's exit timeout when it is known."""
    try:
        t = float(cfg_value) if cfg_value not in (None, "") else default
    except ValueError:
        t = default
    env = os.environ.get(EXIT_TIMEOUT_ENV, "")
    if env.strip():
        try:
            t = min(t, max(0.0, float(env) - 1.0))
        except ValueError:
            pass
    return t


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
    """A TritonError with a status code (400 for INVALID_ARG, 503 for UNAVAILABLE over HTTP) where supported."""
    c = getattr(pb_utils.TritonError, code, None)
    return pb_utils.TritonError(message) if c is None else pb_utils.TritonError(message, c)


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


class _Stop(Exception):
    pass


def resolve_threads(setting, instances, cores=None):
    """Intra-op threads per instance: an explicit positive count, or usable cores // instances (at least 1)."""
    s = str(setting or "auto").strip().lower()
    if s != "auto":
        n = int(s)
        if n < 1:
            raise ValueError(f"intra_op_threads must be >= 1 or auto, got {setting}")
        return n
    if cores is None:
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cores = os.cpu_count() or 1
    return max(1, int(cores) // max(1, int(instances)))


def context_length(config, tokenizer=None):
    """Positions the model can attend to (max_position_embeddings and its aliases)."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx"):
        v = getattr(config, key, None)
        if isinstance(v, int) and v > 0:
            return v
    v = getattr(tokenizer, "model_max_length", None)
    return int(v) if isinstance(v, int) and 0 < v < 10**7 else None


def check_max_tokens(value, n_prompt, context):
    """Return max_tokens as int when 1 <= value <= context - n_prompt, else raise BadRequest saying why."""
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise BadRequest(f"max_tokens must be an integer, got {value!r}") from None
    if n < 1:
        raise BadRequest(f"max_tokens must be at least 1, got {n}")
    if context is not None:
        room = context - n_prompt
        if room < 1:
            raise BadRequest(f"the prompt has {n_prompt} tokens, which fills the model's context of {context}: "
                             "shorten the prompt")
        if n > room:
            raise BadRequest(f"max_tokens {n} exceeds the room left in the model's context: {context} positions - "
                             f"{n_prompt} prompt tokens = {room}; ask for at most {room}")
    return n


class TritonPythonModel:
    def initialize(self, args):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        cfg = json.loads(args["model_config"])
        self.cfg = cfg
        self.name = cfg.get("name", "pytorch_llm")
        model_dir = _param(cfg, "model_dir")
        if not model_dir:
            raise pb_utils.TritonModelException("parameter model_dir is empty: regenerate the repository")
        instances = sum(int(g.get("count", 1) or 1) for g in cfg.get("instance_group", [])) or 1
        try:
            self.threads = resolve_threads(_param(cfg, "intra_op_threads", "auto"), instances)
        except ValueError as e:
            raise pb_utils.TritonModelException(f"{e}: regenerate the repository with --threads N or auto") from None
        torch.set_num_threads(self.threads)
        dev = _param(cfg, "device", "auto").strip().lower() or "auto"
        if dev == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        if dev.startswith("cuda") and not torch.cuda.is_available():
            raise pb_utils.TritonModelException(
                f"device '{dev}' requested but CUDA is not available to the Python backend: "
                "regenerate the repository with --device cpu or auto")
        self.device = torch.device(dev)
        dtype_s = _param(cfg, "dtype", "auto").strip().lower()
        kw = {"dtype": "auto"}
        if dtype_s in _DTYPES:
            kw["dtype"] = getattr(torch, _DTYPES[dtype_s])
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, **kw).to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.context = context_length(self.model.config, self.tokenizer)
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        self.sparse_layers = 0
        if _param(cfg, "sparse_kernels", "false").lower() == "true":
            self.sparse_layers = self._to_semi_structured()
        self.slots = threading.Semaphore(max(1, int(_param(cfg, "max_concurrency", "8") or 8)))
        self.seed_lock = threading.Lock()
        self.active = set()
        self.active_lock = threading.Lock()
        self.idle = threading.Condition(self.active_lock)
        _exit_with_server()
        self.drain_file = os.environ.get(DRAIN_ENV, "")
        self.closing = False  # set by finalize() once the drain time is over: generations stop at the next step
        pb_utils.Logger.log_info(
            f"{self.name}: loaded {model_dir} on {self.device} ({next(self.model.parameters()).dtype}); "
            f"context {self.context}; intra-op threads {self.threads} "
            f"(setting '{_param(cfg, 'intra_op_threads', 'auto')}', {instances} instance(s)); "
            f"2:4 sparse kernels on {self.sparse_layers} linear layers")

    def _to_semi_structured(self):
        torch = self.torch
        if self.device.type != "cuda":
            raise pb_utils.TritonModelException(
                "sparse_kernels needs a CUDA device (torch semi-structured sparsity runs on Ampere or newer GPUs): "
                "regenerate the repository without --sparse-kernels or with --device cuda")
        from torch.sparse import to_sparse_semi_structured

        n = 0
        for name, mod in self.model.named_modules():
            if not isinstance(mod, torch.nn.Linear) or "lm_head" in name:
                continue
            w = mod.weight.data
            if w.dtype not in (torch.float16, torch.bfloat16) or w.shape[0] % 64 or w.shape[1] % 64:
                continue
            groups = (w.reshape(-1, 4) != 0).sum(dim=1)
            if bool((groups > 2).any()):
                continue  # not 2:4 sparse
            try:
                mod.weight = torch.nn.Parameter(to_sparse_semi_structured(w), requires_grad=False)
                n += 1
            except (RuntimeError, ValueError) as e:  # shape/dtype/arch the kernels cannot take
                pb_utils.Logger.log_warn(f"{self.name}: {name} stays dense: {e}")
        if n == 0:
            pb_utils.Logger.log_warn(f"{self.name}: sparse_kernels requested but no linear layer holds a 2:4 pattern")
        return n

    def _draining(self):
        return bool(self.drain_file) and os.path.exists(self.drain_file)

    @staticmethod
    def _fail(sender, error):
        sender.send(pb_utils.InferenceResponse(error=error), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def execute(self, requests):
        draining = self._draining()
        for request in requests:
            sender = request.get_response_sender()
            if draining:
                self._fail(sender, _error("the server is shutting down and takes no new requests; retry on another "
                                          "server or after it restarts", "UNAVAILABLE"))
                continue
            try:
                job = self._parse(request)
            except BadRequest as e:
                self._fail(sender, _error(str(e)))
                continue
            except Exception as e:  # noqa: BLE001 - any bad input is answered, not raised
                self._fail(sender, _error(f"bad request: {e}"))
                continue
            t = threading.Thread(target=self._run, args=(sender, job), daemon=True)
            with self.active_lock:
                self.active.add(t)
            t.start()
        return None

    def _parse(self, request):
        prompt = _scalar(request, "text_input")
        if prompt is None or prompt == "":
            raise BadRequest("text_input is empty: send a prompt of at least one token")
        enc = self.tokenizer(prompt, return_tensors="pt")
        n_prompt = int(enc["input_ids"].shape[1])
        if n_prompt == 0:
            raise BadRequest("text_input gives no tokens: send a prompt of at least one token")
        raw = _scalar(request, "max_tokens")
        if raw is None:
            raise BadRequest("max_tokens is required (1 or more)")
        return {
            "enc": enc,
            "n_prompt": n_prompt,
            "max_tokens": check_max_tokens(raw, n_prompt, self.context),
            "stream": bool(_scalar(request, "stream", False)),
            "temperature": float(_scalar(request, "temperature", 0.0) or 0.0),
            "top_k": _scalar(request, "top_k"),
            "top_p": _scalar(request, "top_p"),
            "seed": _scalar(request, "random_seed"),
            "ignore_eos": bool(_scalar(request, "ignore_eos", False)),
        }

    def _respond(self, sender, text, final=False):
        out = pb_utils.Tensor("text_output", np.array([[text.encode("utf-8")]], dtype=np.object_))
        flags = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if final else 0
        sender.send(pb_utils.InferenceResponse(output_tensors=[out]), flags=flags)

    def _run(self, sender, job):
        torch = self.torch
        try:
            with self.slots:
                if sender.is_cancelled():  # cancelled while it waited for a slot
                    sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                    return
                enc = job["enc"].to(self.device)
                state = {"ids": [], "text": ""}
                model = self

                class Streamer:
                    first = True

                    def put(self, value):
                        if self.first:  # generate() first passes the prompt
                            self.first = False
                            return
                        if sender.is_cancelled() or model.closing:  # checked at every decoding step
                            raise _Stop()
                        new = [int(x) for x in value.reshape(-1).tolist()]
                        state["ids"].extend(new)
                        if job["stream"]:
                            full = model.tokenizer.decode(state["ids"], skip_special_tokens=True)
                            last = len(state["ids"]) >= job["max_tokens"] or (
                                not job["ignore_eos"] and any(t in model.eos_ids for t in new))
                            # hold back a trailing incomplete UTF-8 character until its last byte arrives
                            # (one response per token: the last token's response flushes everything)
                            if full.endswith("\ufffd") and not last:
                                delta = ""
                            else:
                                delta = full[len(state["text"]):] if full.startswith(state["text"]) else full
                                state["text"] = full
                            model._respond(sender, delta)

                    def end(self):
                        pass

                gen = {"max_new_tokens": job["max_tokens"], "streamer": Streamer(),
                       "pad_token_id": self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None
                       else self.tokenizer.eos_token_id}
                if job["ignore_eos"]:
                    gen["min_new_tokens"] = job["max_tokens"]
                if job["temperature"] > 0:
                    gen.update(do_sample=True, temperature=job["temperature"])
                    if job["top_k"]:
                        gen["top_k"] = int(job["top_k"])
                    if job["top_p"]:
                        gen["top_p"] = float(job["top_p"])
                else:
                    gen["do_sample"] = False
                if job["seed"] is not None:
                    with self.seed_lock:
                        torch.manual_seed(int(job["seed"]))
                try:
                    with torch.inference_mode():
                        out = self.model.generate(**enc, **gen)
                except _Stop:
                    pb_utils.Logger.log_verbose(f"{self.name}: request cancelled after {len(state['ids'])} tokens")
                    sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                    return
                if job["stream"]:
                    full = self.tokenizer.decode(state["ids"], skip_special_tokens=True)
                    tail = full[len(state["text"]):] if full.startswith(state["text"]) else ""
                    if tail:  # only if generation stopped for a reason we could not see coming
                        self._respond(sender, tail, final=True)
                    else:
                        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                else:
                    text = self.tokenizer.decode(out[0, job["n_prompt"]:].tolist(), skip_special_tokens=True)
                    self._respond(sender, text, final=True)
        except Exception as e:  # noqa: BLE001 - report to the client, keep the model alive
            try:
                self._fail(sender, _error(f"generation failed: {e}", "INTERNAL"))
            except Exception:  # noqa: BLE001 - the stream may already be closed
                pass
        finally:
            with self.active_lock:
                self.active.discard(threading.current_thread())
                self.idle.notify_all()

    def finalize(self):
        # Drain: let in-flight generations finish (Triton waits for this before exiting), but only until just
        # before the server's exit timeout; then stop them at their next step so the server can exit on time.
        with self.active_lock:
            self.idle.wait_for(lambda: not self.active, timeout=drain_timeout(_param(self.cfg, "drain_timeout_s", "")))
            self.closing = True
            self.idle.wait_for(lambda: not self.active, timeout=5.0)
