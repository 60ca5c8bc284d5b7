"""A lone request's per-token latency on the PyTorch Triton model vs transformers' generate in one process.

    python3 benchmarks/triton_lone_request.py [--model smollm2] [--tokens 32] [--reps 3] [--threads auto]
        [--instances 1] [--json out.json]

Both sides generate the same greedy tokens (``ignore_eos``) for the same prompt with the same intra-op
thread count: the in-process side sets ``torch.set_num_threads`` to what the server's model resolves
(``--threads auto`` = usable cores // instances). Per-token latency = (end - first token) / (tokens - 1)
for each request (time per output token, TTFT excluded), median over ``--reps`` requests, the two sides
alternating so machine load hits both alike. Target: server / in-process <= 1.5.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "The history of the river city begins with"


def in_process(model_dir: str, tokens: int, threads: int):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    enc = tok(PROMPT, return_tensors="pt")

    def one() -> float:
        times: list[float] = []

        class Streamer:
            first = True

            def put(self, value):
                if self.first:
                    self.first = False
                    return
                times.append(time.perf_counter())

            def end(self):
                pass

        with torch.inference_mode():
            model.generate(**enc, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, streamer=Streamer(),
                           pad_token_id=tok.eos_token_id)
        return (times[-1] - times[0]) / (len(times) - 1)

    one()  # warm-up
    return one


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2", help="HF folder or built-in name (default smollm2)")
    ap.add_argument("--tokens", type=int, default=32, help="tokens per request")
    ap.add_argument("--reps", type=int, default=3, help="requests per side")
    ap.add_argument("--threads", default="auto", help="--threads of the repository (auto = cores // instances)")
    ap.add_argument("--instances", type=int, default=1, help="--instances of the repository")
    ap.add_argument("--json", type=Path, default=None, help="write the result here")
    a = ap.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from sparse_trt.models.loading import resolve_source
    from sparse_trt.serve.triton import client as C
    from sparse_trt.serve.triton.repo import build_pytorch_repo
    from sparse_trt.serve.triton.server import TritonServer, free_port

    model_dir = resolve_source(a.model).location
    cores = len(os.sched_getaffinity(0))
    threads = int(a.threads) if a.threads != "auto" else max(1, cores // a.instances)
    local = in_process(model_dir, a.tokens, threads)
    with tempfile.TemporaryDirectory() as tmp:
        repo = build_pytorch_repo(model_dir, Path(tmp) / "repo", device="cpu", max_batch_size=4,
                                  instances=a.instances, threads=a.threads).path
        ports = set()
        while len(ports) < 3:
            ports.add(free_port())
        h, g, m = sorted(ports)
        log = Path(tmp) / "server.log"
        with TritonServer([repo], http_port=h, grpc_port=g, metrics_port=m, log_file=log) as srv:
            params = C.SamplingParams(max_tokens=a.tokens, ignore_eos=True)
            C.generate_stream(srv.grpc_url, PROMPT, params)  # warm-up

            def served() -> float:
                r = C.generate_stream(srv.grpc_url, PROMPT, params)
                assert r.ok and r.output_tokens == a.tokens, r.error
                return (r.token_times[-1] - r.token_times[0]) / (r.output_tokens - 1)

            loc, srv_t = [], []
            for _ in range(a.reps):
                loc.append(local())
                srv_t.append(served())
            chosen = [ln for ln in log.read_text().splitlines() if "intra-op threads" in ln]
    res = {
        "model": a.model, "tokens": a.tokens, "reps": a.reps, "threads_setting": a.threads,
        "instances": a.instances, "threads": threads, "cores": cores,
        "server_log": chosen[-1].split("] ", 1)[-1] if chosen else None,
        "in_process_s_per_token": statistics.median(loc), "server_s_per_token": statistics.median(srv_t),
        "in_process_all": loc, "server_all": srv_t,
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {cores} usable cores",
        "load_avg": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    res["ratio"] = res["server_s_per_token"] / res["in_process_s_per_token"]
    print(json.dumps(res, indent=2))
    if a.json:
        a.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
