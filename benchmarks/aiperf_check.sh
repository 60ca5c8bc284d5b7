#!/usr/bin/env bash
# Cross-check `sparse-trt bench run --backend triton` against NVIDIA's AIPerf on one local Triton server.
#
#   bash benchmarks/aiperf_check.sh [OUT_DIR]        (default OUT_DIR: ${TMPDIR:-/tmp}/sparse_trt-aiperf-check)
#
# What it does (loopback only, bounded; nothing is downloaded except AIPerf itself from PyPI):
#   1. installs AIPerf (PyPI `aiperf`, pinned below) in its own venv (its dependency pins differ from ours);
#   2. writes the model as a Hugging Face folder (default: the built-in SmolLM2-135M), a PyTorch-backend
#      Triton repository for it, and starts `sparse-trt triton serve` on free loopback ports;
#   3. runs the same workload RUNS times with each client, alternating which goes first
#      (prompt ISL tokens, exactly OSL generated tokens, CONC closed-loop workers, REQS measured
#      requests after WARM warm-up requests): AIPerf through Triton's HTTP generate_stream endpoint,
#      sparse-trt through the same endpoint (PROTOCOL=http, default) or gRPC streaming (PROTOCOL=grpc);
#   4. writes both side by side to OUT_DIR/summary.md and into benchmarks/RESULTS.md (between the
#      `aiperf-check` markers), with machine, date and load.
# Target: output token throughput and p50 TTFT / ITL within 10% of AIPerf's.
#
# Knobs (environment): MODEL (HF folder or `smollm2`), ISL (64), OSL (32), CONC (2), REQS (16), WARM (2),
# PROTOCOL (http: sparse-trt uses the same HTTP generate_stream endpoint as AIPerf; grpc: gRPC streaming),
# PIN (0; 1: the server and its model on CPU 0 with one torch thread, both clients on CPU 1, via taskset, so
# neither client's own CPU use takes time from the server), RUNS (2), AIPERF_VENV (~/.cache/sparse_trt/aiperf-venv), AIPERF_VERSION (0.13.0), TIMEOUT_S (900 per client run),
# RESULTS (benchmarks/RESULTS.md; set RESULTS= to skip writing it).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_ARG="${1:-${TMPDIR:-/tmp}/sparse_trt-aiperf-check}"
OUT="$(mkdir -p "$OUT_ARG" && cd "$OUT_ARG" && pwd)"
MODEL="${MODEL:-smollm2}"
ISL="${ISL:-64}"; OSL="${OSL:-32}"; CONC="${CONC:-2}"; REQS="${REQS:-16}"; WARM="${WARM:-2}"; RUNS="${RUNS:-2}"
PROTOCOL="${PROTOCOL:-http}"
PIN="${PIN:-0}"
SERVER_CPU=(); CLIENT_CPU=(); THREADS=(); PLACEMENT="no CPU pinning"
if [ "$PIN" = 1 ]; then
  SERVER_CPU=(taskset -c 0); CLIENT_CPU=(taskset -c 1); THREADS=(--threads 1)
  PLACEMENT="server (and its model, one torch thread) pinned to CPU 0, each client to CPU 1 (taskset)"
fi
AIPERF_VENV="${AIPERF_VENV:-$HOME/.cache/sparse_trt/aiperf-venv}"
AIPERF_VERSION="${AIPERF_VERSION:-0.13.0}"
TIMEOUT_S="${TIMEOUT_S:-900}"
RESULTS="${RESULTS-$ROOT/benchmarks/RESULTS.md}"
PY="${PYTHON:-python3}"
log() { echo "[aiperf_check $(date -u +%H:%M:%S)] $*" >&2; }

# 1. AIPerf in its own venv -------------------------------------------------------------------------
if [ ! -x "$AIPERF_VENV/bin/aiperf" ]; then
  log "installing aiperf==$AIPERF_VERSION into $AIPERF_VENV"
  "$PY" -m venv "$AIPERF_VENV"
  timeout 900 "$AIPERF_VENV/bin/pip" install -q "aiperf==$AIPERF_VERSION"
fi
AIPERF_VER="$("$AIPERF_VENV/bin/aiperf" --version 2>/dev/null | tail -1)"
log "aiperf $AIPERF_VER"

# 2. model folder, repository, server -----------------------------------------------------------------
if [ -f "$MODEL/config.json" ]; then
  HF="$(cd "$MODEL" && pwd)"
  MODEL_NAME="$(basename "$HF")"
else
  MODEL_NAME="$MODEL"
  HF="$OUT/model"
  if [ ! -f "$HF/config.json" ]; then
    log "writing $MODEL as a Hugging Face folder: $HF"
    "$PY" - "$MODEL" "$HF" <<'EOF'
import sys
from sparse_trt.models.loading import load_model
m = load_model(sys.argv[1], with_tokenizer=True)
m.model.save_pretrained(sys.argv[2])
m.tokenizer.save_pretrained(sys.argv[2])
EOF
  fi
fi
REPO="$OUT/repo"
sparse-trt triton repo "$HF" --backend pytorch --device cpu "${THREADS[@]}" -o "$REPO" --overwrite >/dev/null

read -r HTTP GRPC METRICS < <("$PY" - <<'EOF'
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
EOF
)
SERVER_LOG="$OUT/server.log"
log "starting tritonserver on 127.0.0.1 (http $HTTP, grpc $GRPC, metrics $METRICS)"
"${SERVER_CPU[@]}" sparse-trt triton serve "$REPO" --host 127.0.0.1 --http-port "$HTTP" --grpc-port "$GRPC" --metrics-port "$METRICS" \
  --log-file "$SERVER_LOG" > "$OUT/serve.out" 2>&1 &
SERVER_PID=$!
cleanup() { kill -TERM "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 1 300); do
  if curl -sf "http://127.0.0.1:$HTTP/v2/health/ready" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then log "server exited:"; tail -20 "$OUT/serve.out" >&2; exit 1; fi
  sleep 1
done
curl -sf "http://127.0.0.1:$HTTP/v2/health/ready" >/dev/null || { log "server not ready after 300 s"; exit 1; }

# AIPerf resolves --tokenizer through the Hugging Face hub cache even offline: give it one.
CACHE="$OUT/hf_cache"; SNAP="0000000000000000000000000000000000000000"
mkdir -p "$CACHE/models--local--model/snapshots/$SNAP" "$CACHE/models--local--model/refs"
cp "$HF"/tokenizer* "$HF"/special_tokens_map.json "$HF"/config.json "$CACHE/models--local--model/snapshots/$SNAP/" 2>/dev/null || true
echo -n "$SNAP" > "$CACHE/models--local--model/refs/main"
cat > "$OUT/payload.jinja" <<'EOF'
{"text_input": {{ text|tojson }}, "max_tokens": {{ max_tokens }}, "ignore_eos": true, "stream": true}
EOF

run_aiperf() {  # $1: run number
  local dir="$OUT/aiperf-$1"
  rm -rf "$dir"
  log "aiperf run $1"
  HF_HUB_OFFLINE=1 HF_HUB_CACHE="$CACHE" HF_HOME="$OUT/hf_home" timeout "$TIMEOUT_S" nice -n 5 "${CLIENT_CPU[@]}" \
    "$AIPERF_VENV/bin/aiperf" profile --model ensemble --url "http://127.0.0.1:$HTTP" \
    --endpoint-type template --custom-endpoint /v2/models/ensemble/generate_stream \
    --extra-inputs "payload_template:$OUT/payload.jinja" --extra-inputs response_field:text_output --streaming \
    --tokenizer local/model --prompt-input-tokens-mean "$ISL" --prompt-input-tokens-stddev 0 \
    --prompt-output-tokens-mean "$OSL" --prompt-output-tokens-stddev 0 \
    --request-count "$REQS" --warmup-request-count "$WARM" --concurrency "$CONC" --random-seed 0 \
    --no-gpu-telemetry --no-server-metrics --ui-type none --artifact-dir "$dir" > "$dir.log" 2>&1 \
    || { log "aiperf failed, last lines:"; tail -30 "$dir.log" >&2; exit 1; }
}
run_ours() {
  log "sparse-trt run $1"
  timeout "$TIMEOUT_S" nice -n 5 "${CLIENT_CPU[@]}" sparse-trt bench run ensemble --backend triton --device cpu \
    --opt "url=127.0.0.1:$GRPC" --opt "http_url=127.0.0.1:$HTTP" --opt "protocol=$PROTOCOL" \
    --opt interface=text --opt "tokenizer=$HF" \
    --input-lens "$ISL" --output-lens "$OSL" --concurrency "$CONC" --requests "$REQS" --warmup "$WARM" \
    --label "sparse-trt run $1" -o "$OUT/ours-$1.json" --overwrite > "$OUT/ours-$1.log" 2>&1 \
    || { log "sparse-trt failed:"; tail -30 "$OUT/ours-$1.log" >&2; exit 1; }
}

UPTIME_START="$(uptime)"
for r in $(seq 1 "$RUNS"); do
  if [ $((r % 2)) -eq 1 ]; then run_aiperf "$r"; run_ours "$r"; else run_ours "$r"; run_aiperf "$r"; fi
done
UPTIME_END="$(uptime)"

# 4. side by side -----------------------------------------------------------------------------------
"$PY" - "$OUT" "$RUNS" "$AIPERF_VER" "$UPTIME_START" "$UPTIME_END" "$ISL" "$OSL" "$CONC" "$REQS" "$WARM" "$MODEL_NAME" "$PROTOCOL" "$PLACEMENT" "${RESULTS:-}" <<'EOF'
import json, os, platform, sys, datetime
from pathlib import Path
out, runs, aiver, up0, up1, isl, osl, conc, reqs, warm, hf, proto, placement, results = sys.argv[1:]
out, runs = Path(out), int(runs)

def aiperf(run):
    d = json.loads((out / f"aiperf-{run}" / "profile_export_aiperf.json").read_text())  # not phases/warmup/
    def get(tag, stat):
        m = d.get(tag) or next((x for x in d.get("records", []) if x.get("tag") == tag), None)
        if m is None:
            return None
        v = m.get(stat)
        unit = (m.get("unit") or "").lower()
        if v is not None and unit == "ms":
            v = v / 1e3
        return v
    return {"tput": get("output_token_throughput", "avg"), "ttft": get("time_to_first_token", "p50"),
            "itl": get("inter_token_latency", "p50"), "e2e": get("request_latency", "p50"),
            "icl": get("inter_chunk_latency", "p50"), "reqs": get("request_count", "avg"),
            "osl": get("output_sequence_length", "avg")}

def ours(run):
    d = json.loads((out / f"ours-{run}.json").read_text())
    p = d["runs"][0]["points"][0]
    return {"tput": p["output_token_throughput"], "ttft": p["ttft_s"]["p50"], "itl": p["itl_s"]["p50"],
            "e2e": p["e2e_s"]["p50"], "icl": p["inter_chunk_s"]["p50"], "reqs": p["requests"],
            "osl": p["output_tokens"] / max(1, p["sequences"])}

def ms(v): return "–" if v is None else f"{v * 1e3:.1f} ms"
def tp(v): return "–" if v is None else f"{v:.2f}"
def diff(a, b):
    return "–" if a is None or b is None or not b else f"{(a / b - 1) * 100:+.1f}%"

rows = []
for r in range(1, runs + 1):
    a, o = aiperf(r), ours(r)
    rows.append(f"| {r} | AIPerf | {tp(a['tput'])} | {ms(a['ttft'])} | {ms(a['itl'])} | {ms(a['icl'])} | {ms(a['e2e'])} | "
                f"{tp(a['osl'])} | {a['reqs']} |")
    rows.append(f"| {r} | sparse-trt | {tp(o['tput'])} ({diff(o['tput'], a['tput'])}) | {ms(o['ttft'])} ({diff(o['ttft'], a['ttft'])}) | "
                f"{ms(o['itl'])} ({diff(o['itl'], a['itl'])}) | {ms(o['icl'])} | {ms(o['e2e'])} ({diff(o['e2e'], a['e2e'])}) | "
                f"{tp(o['osl'])} | {o['reqs']} |")
cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), platform.machine())
md = "\n".join([
    "<!-- aiperf-check:start -->",
    "## AIPerf cross-check (`benchmarks/aiperf_check.sh`)",
    "",
    f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {cpu} x{os.cpu_count()}, AIPerf {aiver}, "
    f"one local tritonserver (PyTorch backend, CPU) serving `{hf}`; both clients at `nice -n 5`; {placement}.",
    f"Workload: {isl} prompt tokens, exactly {osl} output tokens (ignore_eos), concurrency {conc} closed loop, "
    f"{reqs} measured requests after {warm} warm-up; runs alternate which client goes first.",
    f"Load: start `{up0.strip()}`; end `{up1.strip()}`.",
    "",
    "| run | client | output tok/s (vs AIPerf) | TTFT p50 | ITL p50 | inter-chunk p50 | e2e p50 | output tokens / request | requests |",
    "|---|---|---|---|---|---|---|---|---|",
    *rows,
    "",
    "AIPerf counts output tokens by re-tokenising the streamed text; sparse-trt counts the server's streamed "
    "responses (one per generated token). AIPerf sends over HTTP (generate_stream); sparse-trt over "
    + ("the same HTTP endpoint." if proto == "http" else "gRPC streaming."),
    "<!-- aiperf-check:end -->",
    ""])
(out / "summary.md").write_text(md)
print(md)
if results:
    p = Path(results)
    text = p.read_text() if p.exists() else ""
    if "<!-- aiperf-check:start -->" in text:
        a, rest = text.split("<!-- aiperf-check:start -->", 1)
        b = rest.split("<!-- aiperf-check:end -->", 1)[1].lstrip("\n")
        text = a + md + b
    else:
        text = text.rstrip("\n") + "\n\n" + md
    p.write_text(text)
EOF
