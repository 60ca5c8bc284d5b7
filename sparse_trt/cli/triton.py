"""``sparse-trt triton``: model repositories, a managed tritonserver, and streaming requests against it."""

from __future__ import annotations

import signal
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from sparse_trt.core.errors import InputError

from .common import console, handle_errors, out, setup_logging

LOOPBACK = ("127.0.0.1", "localhost", "::1")
PORT = {"min": 1, "max": 65535}  # typer refuses other values with a clear message and exit 2


def _int_list(text: str, what: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"{what} '{text}' is not a comma-separated list of integers", fix=f"e.g. {what} 1,4,8") from None
    if not vals or min(vals) < 1:
        raise InputError(f"{what} '{text}' needs positive integers", fix=f"e.g. {what} 1,4,8")
    return vals


app = typer.Typer(name="triton", no_args_is_help=True,
                  help="Triton Inference Server: build model repositories, serve them, send streaming requests.")

@app.command("repo")
@handle_errors
def repo_cmd(
    source: Path = typer.Argument(..., help="tensorrtllm: the engine folder (config.json + rank*.engine). "
                                  "pytorch: the HF model folder (dense or pruned)."),
    out_dir: Path = typer.Option(..., "-o", "--out", help="Repository folder to write (must not exist)."),
    backend: str = typer.Option("tensorrtllm", "--backend", help="tensorrtllm or pytorch."),
    tokenizer: Path | None = typer.Option(None, "--tokenizer", help="tensorrtllm: HF folder holding the tokenizer."),
    name: str = typer.Option("ensemble", "--name", help="Name of the model clients call; other models get it as prefix."),
    max_batch_size: int = typer.Option(8, "--max-batch-size", help="Triton max_batch_size (pytorch: concurrent generations)."),
    decoupled: bool = typer.Option(True, "--decoupled/--no-decoupled", help="tensorrtllm: streaming (decoupled) mode."),
    kv_frac: float = typer.Option(0.9, "--kv-cache-free-gpu-mem-fraction", help="tensorrtllm: share of free GPU memory for the KV cache."),
    instances: int = typer.Option(1, "--instances", help="Instances of each Python model."),
    threads: str = typer.Option("auto", "--threads", help="pytorch: intra-op threads per instance; auto = usable "
                                "cores // --instances (resolved when the server loads the model, logged)."),
    device: str = typer.Option("auto", "--device", help="pytorch: auto, cpu, cuda, cuda:N (resolved when the server loads it)."),
    dtype: str = typer.Option("auto", "--dtype", help="pytorch: auto, float32, float16, bfloat16."),
    sparse_kernels: bool = typer.Option(False, "--sparse-kernels", help="pytorch: 2:4 weights through torch semi-structured kernels (CUDA)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing repository (only on success)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what is done."),
) -> None:
    """Write a model repository: TensorRT-LLM ensemble (+ the cancellable tensorrt_llm_bls), or one PyTorch model.

    TensorRT-LLM runs in-flight batching (static batching was removed from its Triton backend).
    """
    setup_logging(verbose)
    from sparse_trt.serve.triton.check import check_repo
    from sparse_trt.serve.triton.errors import TritonRepoError
    from sparse_trt.serve.triton.repo import BACKENDS, build_pytorch_repo, build_trtllm_repo

    if backend not in BACKENDS:
        raise TritonRepoError(f"--backend '{backend}' is not known", fix=f"use one of: {', '.join(BACKENDS)}")
    if backend == "pytorch":
        res = build_pytorch_repo(source, out_dir, name=name, device=device, dtype=dtype, sparse_kernels=sparse_kernels,
                                 max_batch_size=max_batch_size, instances=instances, threads=threads,
                                 overwrite=overwrite)
    else:
        res = build_trtllm_repo(source, tokenizer, out_dir, name=name, max_batch_size=max_batch_size,
                                decoupled=decoupled, kv_cache_free_gpu_mem_fraction=kv_frac,
                                instances=instances, overwrite=overwrite)
    rep = check_repo(res.path)
    if not rep.ok:  # our own output must pass our own check
        raise TritonRepoError("the generated repository fails its check:\n  " + "\n  ".join(rep.problems))
    for n in res.notes:
        console.print(f"[yellow]note:[/] {escape(n)}", highlight=False)
    cancels = f" ('{res.cancellable}' stops generating when its client cancels)" if res.cancellable else ""
    console.print(f"wrote {res.path} ({res.backend}: {', '.join(res.models)}); clients call '{res.entry}'{cancels}.\n"
                  f"serve it: sparse-trt triton serve {res.path}", markup=False, highlight=False)

@app.command("check")
@handle_errors
def check_cmd(
    repo: Path = typer.Argument(..., help="Model repository folder."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what is checked."),
) -> None:
    """Re-parse every config.pbtxt strictly and check the ensemble wiring."""
    setup_logging(verbose)
    from sparse_trt.serve.triton.check import check_repo
    from sparse_trt.serve.triton.errors import TritonRepoError

    rep = check_repo(repo)
    t = Table(title=str(repo))
    for c in ("model", "backend/platform", "max_batch_size", "decoupled", "inputs", "outputs"):
        t.add_column(c)
    for n, c in rep.models.items():
        t.add_row(n, c.backend or c.platform, str(c.max_batch_size), "yes" if c.model_transaction_policy.decoupled else "",
                  str(len(c.input)), str(len(c.output)))
    out.print(t)
    for w in rep.warnings:
        console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)
    if not rep.ok:
        raise TritonRepoError(f"{len(rep.problems)} problem(s) in '{repo}':\n  " + "\n  ".join(rep.problems),
                              fix="regenerate the repository with `sparse-trt triton repo`, or fix the files named")
    console.print(f"[green]OK[/]: {len(rep.models)} models; entry point(s): {', '.join(rep.entry_points())}")

@app.command("serve")
@handle_errors
def serve_cmd(
    repos: list[Path] = typer.Argument(..., help="One or more model repositories (model names must not clash)."),
    http_port: int = typer.Option(8000, "--http-port", **PORT, help="HTTP port (generate, generate_stream, "
                                  "KServe v2); served by our front, which refuses malformed JSON with 400."),
    grpc_port: int = typer.Option(8001, "--grpc-port", **PORT, help="gRPC port (streaming clients, `triton generate`)."),
    metrics_port: int = typer.Option(8002, "--metrics-port", **PORT, help="Prometheus metrics port."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (loopback by default)."),
    tritonserver: Path | None = typer.Option(None, "--tritonserver", help="tritonserver binary (default: container, PATH, pytriton wheel)."),
    log_file: Path | None = typer.Option(None, "--log-file", help="Also write the server log here."),
    show_log: bool = typer.Option(False, "--show-log", help="Stream the server log to the console."),
    log_verbose: int = typer.Option(0, "--log-verbose", help="tritonserver --log-verbose level."),
    startup_timeout: float = typer.Option(300.0, "--startup-timeout", help="Seconds to wait for /v2/health/ready."),
    exit_timeout: int = typer.Option(30, "--exit-timeout", min=0, help="Seconds in-flight requests get to finish on shutdown."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log the server command line and start-up steps."),
) -> None:
    """Run tritonserver on REPO(S) until Ctrl-C / SIGTERM (then refuse new requests, drain in-flight ones, exit).

    The server dies with this command (also on kill -9: it gets SIGTERM from the kernel).
    """
    setup_logging(verbose)
    from sparse_trt.serve.triton.server import TritonServer, check_host, find_tritonserver

    check_host(host)
    if host not in LOOPBACK:
        console.print(f"[yellow]warning:[/] listening on {escape(host)}: the server has no authentication; "
                      "anyone who can reach this address can use it")
    install = find_tritonserver(tritonserver) if tritonserver else None  # else: found in start()
    srv = TritonServer(repos, host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                       install=install, log_file=log_file, log_verbose=log_verbose, exit_timeout_s=exit_timeout,
                       on_log_line=(lambda ln: console.print(ln, markup=False, highlight=False)) if show_log else None)

    class _Term(Exception):
        pass

    def on_term(signum, frame):
        raise _Term()

    old = signal.signal(signal.SIGTERM, on_term)
    old_int = signal.getsignal(signal.SIGINT)
    try:
        with console.status("starting tritonserver (loading models)..."):
            srv.start(timeout_s=startup_timeout)
        console.print(f"tritonserver: {srv.install.binary} ({srv.install.source})", highlight=False)
        console.print(f"[green]ready[/]: models {', '.join(srv.models_ready) or '?'}\n"
                      f"  HTTP  http://{srv.http_url}  (POST /v2/models/<model>/generate, generate_stream)\n"
                      f"  gRPC  {srv.grpc_url}\n  metrics http://{srv._client_host}:{metrics_port}/metrics\n"
                      "Ctrl-C or SIGTERM stops it after in-flight requests finish.")
        code = None
        while code is None:
            code = srv.wait(0.5)
        tail = "\n".join(srv.log_tail(15))
        console.print(f"[red]tritonserver exited on its own (code {code})[/]; last log lines:\n{tail}",
                      markup=True, highlight=False)
        from sparse_trt.serve.triton.errors import TritonServerError

        raise TritonServerError(f"tritonserver exited on its own (code {code})", fix="see its last log lines above")
    except (KeyboardInterrupt, _Term):
        console.print(f"stopping: draining in-flight requests (up to {exit_timeout}s)...")
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        code = srv.stop()
        console.print(f"tritonserver stopped (exit code {code})")
    finally:
        signal.signal(signal.SIGTERM, old)
        signal.signal(signal.SIGINT, old_int)  # ignored only while draining
        srv.stop()

@app.command("generate")
@handle_errors
def generate_cmd(
    prompt: str = typer.Argument(..., help="Prompt text."),
    url: str = typer.Option("127.0.0.1:8001", "--url", help="gRPC host:port (with --http: the HTTP host:port)."),
    model: str = typer.Option("ensemble", "--model", help="Model to call (a repository's entry: ensemble, "
                              "tensorrt_llm_bls, or the --name given to `triton repo`)."),
    max_tokens: int = typer.Option(64, "--max-tokens", help="New tokens to generate: 1 to 2147483647, and at most "
                                   "the model's context minus the prompt (the server says how many fit)."),
    stream: bool = typer.Option(True, "--stream/--no-stream", help="Print tokens as they arrive (one response per "
                                "token), or the whole completion at the end."),
    http: bool = typer.Option(False, "--http", help="Use the HTTP generate endpoints instead of gRPC."),
    temperature: float | None = typer.Option(None, "--temperature", help="Sampling temperature (omit or 0: greedy)."),
    seed: int | None = typer.Option(None, "--seed", help="Sampling seed (with --temperature)."),
    timeout: float = typer.Option(300.0, "--timeout", min=0.1, help="Seconds to wait; then the request is "
                                  "cancelled on the server."),
) -> None:
    """Send one request and print the completion as it streams in, then TTFT and total time."""
    import time

    from sparse_trt.serve.triton import client as C
    from sparse_trt.serve.triton.errors import TritonClientError

    params = C.SamplingParams(max_tokens=max_tokens, temperature=temperature, random_seed=seed)  # checked here
    show = stream  # print each piece as it arrives

    def piece(text: str, _t: float = 0.0) -> None:
        out.file.write(text)
        out.file.flush()

    if http:
        t0 = time.perf_counter()
        first = None
        n = 0
        if stream:
            text = []
            for ev in C.http_generate_stream(url, prompt, params, model=model, timeout_s=timeout):
                first = first or time.perf_counter()
                n += 1
                text.append(ev.get("text_output", ""))
                if show:
                    piece(text[-1])
            out.file.write("\n" if show else "".join(text) + "\n")
        else:
            body = C.http_generate(url, prompt, params, model=model, timeout_s=timeout)
            first = time.perf_counter()
            n = 1
            out.print(body.get("text_output", ""), markup=False, highlight=False)
        total = time.perf_counter() - t0
        ttft = f"{(first - t0) * 1000:.1f} ms" if first is not None else "-"
        console.print(f"{n} responses, TTFT {ttft}, total {total * 1000:.1f} ms", highlight=False)
        return
    r = C.generate_stream(url, prompt, params, model=model, stream=stream, timeout_s=timeout,
                          on_piece=piece if stream else None)
    if stream:
        out.file.write("\n")
        out.file.flush()
    if r.error:
        raise TritonClientError(f"request to {url}/{model} failed: {r.error}",
                                fix=f"is a server running at {url} (sparse-trt triton serve)? Otherwise see the "
                                "message and the server log")
    if not stream:
        out.print(r.text, markup=False, highlight=False)
    ttft = f"{r.ttft_s * 1000:.1f} ms" if r.ttft_s is not None else "-"
    console.print(f"{r.output_tokens} responses, TTFT {ttft}, total {r.e2e_s * 1000:.1f} ms", highlight=False)

@app.command("load")
@handle_errors
def load_cmd(
    url: str = typer.Option("127.0.0.1:8001", "--url", help="gRPC host:port."),
    model: str = typer.Option("ensemble", "--model", help="Model to call (the text entry model of the repository)."),
    prompts_file: Path | None = typer.Option(None, "--prompts", help="Text file, one prompt per line (default: built-in)."),
    requests: int = typer.Option(32, "--requests", help="Measured requests per concurrency level."),
    concurrency: str = typer.Option("1,4", "--concurrency", help="Comma-separated concurrency levels (closed-loop workers)."),
    max_tokens: int = typer.Option(64, "--max-tokens", help="Tokens to generate per request."),
    ignore_eos: bool = typer.Option(True, "--ignore-eos/--stop-at-eos", help="Generate exactly --max-tokens tokens."),
    warmup: int | None = typer.Option(None, "--warmup", help="Unmeasured warm-up requests per level (default: one per worker)."),
    json_path: Path | None = typer.Option(None, "--json", help="Write the results here (the `bench run` results JSON)."),
) -> None:
    """Closed-loop streaming load test: `sparse-trt bench run --backend triton` with text prompts."""
    from sparse_trt.bench.backends.base import BackendSpec
    from sparse_trt.bench.environment import capture
    from sparse_trt.bench.loadgen import LoadSpec
    from sparse_trt.bench.session import Side, run_to_file, text_requests
    from sparse_trt.bench.workload import grid

    from .bench import run_table
    from .common import progress_bar
    from .options import resolve_device

    if prompts_file is not None:
        try:
            base = [ln.strip() for ln in prompts_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
        except OSError as e:
            raise InputError(f"cannot read --prompts '{prompts_file}': {e}", fix="check the path") from None
        if not base:
            raise InputError(f"--prompts '{prompts_file}' holds no prompts", fix="one prompt per line")
    else:
        base = ["Explain why sparse matrices can speed up inference.", "Write a short story about a river.",
                "List three facts about the planet Mars.", "What is the capital of France and why?"]
    if max_tokens < 1:
        raise InputError(f"--max-tokens {max_tokens} must be at least 1", fix="e.g. --max-tokens 64")
    dev = resolve_device("cpu")
    spec = BackendSpec(model, dev, None, {"url": url, "interface": "text", "ignore_eos": str(ignore_eos).lower()})
    points = grid([1], [0], [max_tokens], _int_list(concurrency, "--concurrency"))  # input length 0: text prompts
    if json_path is not None and json_path.is_dir():
        raise InputError(f"--json '{json_path}' is a folder", fix="give a file name such as load.json")
    with progress_bar(f"load {model}") as (prog, task):
        run = run_to_file(Side("triton", spec, f"triton:{model}"), points, LoadSpec(requests=requests, warmup=warmup),
                          json_path, capture(dev), requests=text_requests(base),
                          progress=lambda d, i, n: prog.update(task, description=d, completed=i, total=n))
    out.print(run_table(run))
    if json_path is not None:
        console.print(f"wrote {json_path}", markup=False, highlight=False)
