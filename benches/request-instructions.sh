#!/usr/bin/env bash
# What a held-back shadow costs the request path, in instructions: the release server under
# callgrind, once live-only and once with the MiniLM shadow sampling every review but held back as
# on a busy node (shadow.cpu_reserve = 0.99, so the headroom never lets shadow work start: the
# state of every 25-80% cell of benches/isolation.sh, where the shadow did 0.000 CPU-s/s). Each
# gets the same open-loop load; callgrind counts every thread of the server, only while the load
# runs, and the script prints instructions per request. Unlike a p99, the count barely moves run to
# run, so a cost far below this machine's timing noise still shows.
#
# usage: [RATE=50] [DURATION=20s] benches/request-instructions.sh
# Needs valgrind (Debian package valgrind). About 2 minutes (the server starts slowly under callgrind).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
command -v valgrind >/dev/null || { echo "request-instructions.sh: valgrind is required (Debian package valgrind)" >&2; exit 1; }
rate="${RATE:-50}"
duration="${DURATION:-20s}"
grpc=127.0.0.1:50077
metrics=127.0.0.1:9487
scripts/setup >/dev/null
CARGO_BUILD_JOBS=2 flock /tmp/cargo.lock cargo build --release --locked --bins 2>/dev/null
tmp="$(mktemp -d)"
pid=""
cleanup() { [[ -n "$pid" ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT

config() {  # config NAME ABUSE_SHADOWS EXTRA
    cat >"$tmp/$1.toml" <<EOF
[server]
grpc_listen = "$grpc"
metrics_listen = "$metrics"
onnxruntime_lib = "$root/.ort/libonnxruntime.so.1.31.1"
watch_config = false
$3
[models.abuse-v1]
path = "$root/models/abuse-v1"
[models.fraud-v1]
path = "$root/models/fraud-v1"
[models.abuse-minilm]
path = "$root/models/abuse-minilm"
[tasks.abuse]
live = "abuse-v1"
shadows = [$2]
[tasks.fraud]
live = "fraud-v1"
EOF
}
config none "" ""
config held '{ model = "abuse-minilm", sample_rate = 1.0 }' "[shadow]
max_cpu_fraction = 0.05
cpu_reserve = 0.99"

echo "| config | requests | instructions | per request | shadow outcomes |"
echo "|---|---|---|---|---|"
for name in none held; do
    log="$tmp/$name.log"
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$tmp/$name.out" \
        target/release/modserve --config "$tmp/$name.toml" --log-format json 2>"$log" &
    pid=$!
    for _ in $(seq 1 1800); do grep -q '"serving"' "$log" && break; sleep 0.2; done
    grep -q '"serving"' "$log" || { echo "request-instructions.sh: the server did not start ($name):" >&2; cat "$log" >&2; exit 1; }
    # Warm-up outside the count: connections, the first calls' allocations, the effective rate settling.
    target/release/loadgen --addr "http://$grpc" --rate "$rate" --duration 5s --warmup 0s --json >/dev/null
    callgrind_control -i on "$pid" >/dev/null 2>&1
    target/release/loadgen --addr "http://$grpc" --rate "$rate" --duration "$duration" --warmup 0s --json >"$tmp/result"
    callgrind_control -i off "$pid" >/dev/null 2>&1
    outcomes="$(curl -s "http://$metrics/metrics" | awk '/^modserve_shadow_reviews_total/ && $2 > 0 {
        match($0, /outcome="[a-z_]+"/); printf "%s %d, ", substr($0, RSTART + 9, RLENGTH - 10), $2 }')"
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
    requests="$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["ok"] + sum(r["errors"].values()))' "$tmp/result")"
    total="$(callgrind_annotate "$tmp/$name.out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')"
    echo "| $name | $requests | $total | $((total / requests)) | ${outcomes%, } |"
done
