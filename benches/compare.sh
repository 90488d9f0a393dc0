#!/usr/bin/env bash
# Side by side, in one run: modserve, the Python peer (benches/peers/python) and the in-process
# ceiling (criterion, benches/inference.rs), ROUNDS times, alternating, then medians and ratios.
# Servers are pinned to core 0 and the load generator to core 1, so every server figure is one core.
#
# usage: benches/compare.sh [ROUNDS]         (default 3; about 5 minutes a round)
# Raw loadgen JSON lines go to target/bench/compare-*.jsonl; the summary (Markdown) to stdout.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
rounds="${1:-3}"
config=benches/configs/live-only.toml
out="target/bench/compare-$(date +%Y%m%dT%H%M%S).jsonl"
mkdir -p target/bench
scripts/setup >/dev/null
benches/peers/python/setup.sh >/dev/null
cargo build --release --locked --bins 2>/dev/null
# Built once, before any measurement, so no round measures a different build.
ceiling_bin="$(benches/bench-exe.sh inference)"

# The scenarios, identical for both servers: single reviews (closed loop), 32 reviews per request
# (closed loop) and single reviews at fixed offered loads below the peer's saturation (open loop).
scenarios=(
    "single|--tasks abuse --concurrency 1,4,16,64"
    "batch32|--tasks abuse --reviews 32 --concurrency 1,4,16"
    "open|--tasks abuse --rate 250,1000,1500"
)

wait_port() {  # wait_port HOST:PORT
    for _ in $(seq 1 300); do
        (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "compare.sh: nothing listens on $1" >&2; return 1
}

drive() {  # drive SERVER ROUND ADDR
    local name="$1" round="$2" addr="$3"
    for s in "${scenarios[@]}"; do
        # shellcheck disable=SC2086
        taskset -c 1 target/release/loadgen --addr "http://$addr" --duration 8s --warmup 2s --json ${s#*|} \
            | sed "s/^/{\"server\":\"$name\",\"round\":$round,\"scenario\":\"${s%%|*}\",\"result\":/; s/\$/}/" >>"$out"
    done
}

measure() {  # measure SERVER ROUND ADDR PID: load it, record its RSS, stop it
    wait_port "$3"
    drive "$1" "$2" "$3"
    echo "{\"server\":\"$1\",\"round\":$2,\"rss_kib\":$(ps -o rss= -p "$4")}" >>"$out"
    kill "$4"; wait "$4" 2>/dev/null || true
}

for round in $(seq 1 "$rounds"); do
    echo "round $round/$rounds: modserve" >&2
    taskset -c 0 target/release/modserve --config "$config" 2>/tmp/compare-modserve.log &
    measure modserve "$round" 127.0.0.1:50071 $!

    echo "round $round/$rounds: python peer" >&2
    (cd benches/peers/python && exec taskset -c 0 .venv/bin/python server.py --config "../../../$config" \
        --listen 127.0.0.1:50091) >/tmp/compare-peer.log 2>&1 &
    measure peer "$round" 127.0.0.1:50091 $!

    echo "round $round/$rounds: in-process ceiling" >&2
    taskset -c 0 "$ceiling_bin" --bench --warm-up-time 1 --measurement-time 3 >/dev/null 2>&1
    for stage in tokenize inference decide_and_respond; do
        for n in 1 8 32 64; do
            ns="$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['median']['point_estimate'])" \
                "target/criterion/$stage/$n/new/estimates.json")"
            echo "{\"server\":\"ceiling\",\"round\":$round,\"stage\":\"$stage\",\"batch\":$n,\"median_ns\":$ns}" >>"$out"
        done
    done
done
echo "raw results: $out" >&2
python3 benches/summarise.py "$out"
