#!/usr/bin/env bash
# Growth curves, one core for the server: throughput and p99 against reviews per request, text
# length, tasks per request and number of shadows. Runs the whole sweep ROUNDS times (default 3)
# and prints, per point, the median of the rounds (raw loadgen JSON in target/bench/growth-*.jsonl).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
run() {  # run LABEL CONFIG LOADGEN-ARGS...
    local label="$1" config="$2"; shift 2
    local addr; addr="$(grep -m1 '^grpc_listen' "$config" | sed 's/.*"\(.*\)"/\1/')"
    taskset -c 0 target/release/modserve --config "$config" 2>/tmp/growth-server.log &
    local pid=$!
    for _ in $(seq 1 300); do grep -q 'serving' /tmp/growth-server.log && break; sleep 0.1; done
    taskset -c 1 target/release/loadgen --addr "http://$addr" --duration "${DURATION:-5s}" --warmup 1s --json "$@" \
        | sed "s/^/$label\t/" >>"$out"
    kill $pid; wait $pid 2>/dev/null || true
}
scripts/setup >/dev/null
cargo build --release --locked --bins 2>/dev/null
c=benches/configs
out="target/bench/growth-$(date +%Y%m%dT%H%M%S).jsonl"
mkdir -p target/bench
for round in $(seq 1 "${ROUNDS:-3}"); do
    echo "growth: round $round" >&2
    for n in 1 8 32 64; do run "reviews_per_request=$n" $c/live-only.toml --tasks abuse --reviews $n --concurrency 16; done
    for bytes in 0 2048; do run "text_bytes=$bytes reviews=1" $c/live-only.toml --tasks abuse --text-bytes $bytes --concurrency 16; done
    for bytes in 0 2048; do run "text_bytes=$bytes reviews=32" $c/live-only.toml --tasks abuse --text-bytes $bytes --reviews 32 --concurrency 4; done
    run "tasks=1" $c/live-only.toml --tasks abuse --concurrency 16
    run "tasks=2" $c/live-only.toml --concurrency 16
    run "shadows=0" $c/live-only.toml --concurrency 16
    run "shadows=1(abuse-v2)" $c/shadow-v2.toml --concurrency 16
    run "shadows=2(default)" modserve.toml --concurrency 16
done
python3 - "$out" <<'PY'
import collections, json, statistics, sys
points = collections.OrderedDict()
for line in open(sys.argv[1]):
    label, result = line.rstrip("\n").split("\t", 1)
    points.setdefault(label, []).append(json.loads(result))
print("| point | req/s | reviews/s | p50 ms | p99 ms | errors | rounds |")
print("|---|---|---|---|---|---|---|")
for label, runs in points.items():
    m = lambda k: statistics.median(r[k] for r in runs)
    errors = sum(sum(r["errors"].values()) for r in runs)
    print(f"| {label} | {m('requests_per_s'):,.0f} | {m('reviews_per_s'):,.0f} | {m('p50_ms'):.3f} | {m('p99_ms'):.3f} | {errors} | {len(runs)} |")
PY
