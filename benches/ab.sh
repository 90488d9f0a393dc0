#!/usr/bin/env bash
# A/B: two modserve binaries on the same config and load, alternating within each round (A, B,
# B, A, ...), the server pinned to core 0 and the load generator (this tree's) to core 1. For a
# change that must not cost speed (a refactor): build the old commit's binary elsewhere, then
#
#   [CONFIG=benches/configs/live-only.toml] benches/ab.sh OLD_BINARY NEW_BINARY [ROUNDS]
#   (default 3 rounds; about 2 minutes a round)
#
# With CONFIG_B, B runs on its own config: one binary against itself compares two configs
# (the journal's cost: CONFIG_B=benches/configs/live-journal.toml benches/ab.sh BIN BIN).
#
# Scenarios: single reviews, closed loop at concurrency 1 and 16; 32 reviews per request at
# concurrency 4. Prints medians per binary and the B/A ratio (Markdown); raw JSON lines go to
# target/bench/ab-*.jsonl.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
a="$(realpath "$1")"; b="$(realpath "$2")"; rounds="${3:-3}"
config="${CONFIG:-benches/configs/live-only.toml}"
config_b="${CONFIG_B:-$config}"
addr=127.0.0.1:50071
out="target/bench/ab-$(date +%Y%m%dT%H%M%S).jsonl"
mkdir -p target/bench
scripts/setup >/dev/null
cargo build --release --locked --bin loadgen 2>/dev/null
scenarios=(
    "single-c1|--tasks abuse --concurrency 1"
    "single-c16|--tasks abuse --concurrency 16"
    "batch32-c4|--tasks abuse --reviews 32 --concurrency 4"
)

run() {  # run LABEL BINARY ROUND CONFIG
    local label="$1" bin="$2" round="$3" cfg="$4" log pid
    log="$(mktemp)"
    taskset -c 0 "$bin" --config "$cfg" --log-format json 2>"$log" &
    pid=$!
    for _ in $(seq 1 300); do grep -q '"serving"' "$log" && break; sleep 0.1; done
    for s in "${scenarios[@]}"; do
        name="${s%%|*}"; args="${s#*|}"
        # shellcheck disable=SC2086
        taskset -c 1 target/release/loadgen --addr "http://$addr" $args --duration 8s --warmup 2s --json \
            | sed "s/^{/{\"binary\":\"$label\",\"scenario\":\"$name\",\"round\":$round,/" >>"$out"
    done
    kill "$pid"; wait "$pid" 2>/dev/null || true
    rm -f "$log"
}

for round in $(seq 1 "$rounds"); do
    echo "round $round/$rounds" >&2
    if (( round % 2 )); then
        run A "$a" "$round" "$config"; run B "$b" "$round" "$config_b"
    else
        run B "$b" "$round" "$config_b"; run A "$a" "$round" "$config"
    fi
done

python3 - "$out" "$a" "$b" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"A = {sys.argv[2]}\nB = {sys.argv[3]}\n")
print("| scenario | A reviews/s | B reviews/s | B/A | A p99 ms | B p99 ms | B/A |")
print("|---|---|---|---|---|---|---|")
for s in dict.fromkeys(r["scenario"] for r in rows):
    med = lambda b, k: statistics.median(r[k] for r in rows if r["scenario"] == s and r["binary"] == b)
    ra, rb, pa, pb = med("A", "reviews_per_s"), med("B", "reviews_per_s"), med("A", "p99_ms"), med("B", "p99_ms")
    print(f"| {s} | {ra:,.0f} | {rb:,.0f} | {rb / ra:.2f} | {pa:.3f} | {pb:.3f} | {pb / pa:.2f} |")
print(f"\nmedians of {len({r['round'] for r in rows})} rounds; raw: {sys.argv[1]}")
EOF
