"""Triton Python-backend model: a Hugging Face causal LM run with PyTorch, streaming (decoupled).

Copied verbatim into a model repository as ``<model>/1/model.py`` by ``sparse-trt triton repo --backend
pytorch``; it imports only numpy, torch, transformers and Triton's ``triton_python_backend_utils``, so a
repository works wherever those are installed (sparse_trt itself is not needed by the server).

Interface (batch dimension first; every tensor is [batch, 1]):
  text_input  STRING  the prompt                     max_tokens  INT32  new tokens to generate
  stream      BOOL    one response per token (opt.)  temperature FP32, top_k INT32, top_p FP32,
  random_seed UINT64  sampling (optional; greedy without temperature > 0)
  ignore_eos  BOOL    generate exactly max_tokens tokens (optional; for benchmarks)
  -> text_output STRING  streaming: the text added by each new token ("" while a UTF-8 character is
     incomplete), one response per generated token; non-streaming: the whole completion in one response.

Settings come from the config's ``parameters``: model_dir, device (auto|cpu|cuda|cuda:N), dtype
(auto|float32|float16|bfloat16), sparse_kernels (true|false), max_concurrency.

Concurrent requests each run ``model.generate`` in their own thread (at most max_concurrency at once),
so streams progress side by side; there is no batched decoding. Greedy decoding is exactly
``model.generate(do_sample=False)``.
"""

import json
import threading

import numpy as np
import triton_python_backend_utils as pb_utils

_DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
           "bfloat16": "bfloat16", "bf16": "bfloat16"}


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


class _Stop(Exception):
    pass


class TritonPythonModel:
    def initialize(self, args):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        cfg = json.loads(args["model_config"])
        self.cfg = cfg
        model_dir = _param(cfg, "model_dir")
        if not model_dir:
            raise pb_utils.TritonModelException("parameter model_dir is empty: regenerate the repository")
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
        self.closing = False
        pb_utils.Logger.log_info(
            f"pytorch_llm: loaded {model_dir} on {self.device} ({next(self.model.parameters()).dtype}); "
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
                pb_utils.Logger.log_warn(f"pytorch_llm: {name} stays dense: {e}")
        if n == 0:
            pb_utils.Logger.log_warn("pytorch_llm: sparse_kernels requested but no linear layer holds a 2:4 pattern")
        return n

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                job = self._parse(request)
            except Exception as e:  # noqa: BLE001 - any bad input is answered, not raised
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e))),
                            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                continue
            t = threading.Thread(target=self._run, args=(sender, job), daemon=True)
            with self.active_lock:
                self.active.add(t)
            t.start()
        return None

    def _parse(self, request):
        prompt = _scalar(request, "text_input")
        if prompt is None:
            raise ValueError("text_input is required")
        max_tokens = int(_scalar(request, "max_tokens", 16))
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        return {
            "prompt": prompt,
            "max_tokens": max_tokens,
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
                enc = self.tokenizer(job["prompt"], return_tensors="pt").to(self.device)
                n_prompt = enc["input_ids"].shape[1]
                state = {"ids": [], "text": ""}
                model = self

                class Streamer:
                    first = True

                    def put(self, value):
                        if self.first:  # generate() first passes the prompt
                            self.first = False
                            return
                        if sender.is_cancelled():
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
                    text = self.tokenizer.decode(out[0, n_prompt:].tolist(), skip_special_tokens=True)
                    self._respond(sender, text, final=True)
        except Exception as e:  # noqa: BLE001 - report to the client, keep the model alive
            try:
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"generation failed: {e}")),
                            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            except Exception:  # noqa: BLE001 - the stream may already be closed
                pass
        finally:
            with self.active_lock:
                self.active.discard(threading.current_thread())
                self.idle.notify_all()

    def finalize(self):
        # Drain: let in-flight generations finish (Triton waits for this before exiting).
        with self.active_lock:
            self.idle.wait_for(lambda: not self.active, timeout=float(_param(self.cfg, "drain_timeout_s", "60")))
