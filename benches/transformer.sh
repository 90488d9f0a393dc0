#!/usr/bin/env bash
# The transformer path: abuse-minilm as the live model, served by modserve and by the Python peer
# (benches/peers/python) on the same package, alternating within each round, the server pinned to
# core 0 and the load generator to core 1 (so every figure is one server core). With OLD=BINARY an
# older modserve runs too, for a before/after ratio in the same run. Then the compute bound
# (benches/compute_bound.py): the encoder's multiply-adds per token over this core's measured int8
# matrix-multiply rate. With OLD_CONFIG=FILE the older run uses that config instead (e.g. one whose
# abuse-minilm is an earlier package, for a before/after of the model with the same binary).
#
#   [OLD=path/to/old/modserve] [OLD_CONFIG=config.toml] benches/transformer.sh [ROUNDS]
#                                       (default 3 rounds; ~2 min a round per server)
#
# Raw loadgen JSON lines go to target/bench/transformer-*.jsonl, each with the server's CPU time over
# the measured window (utime + stime of the whole process, from /proc): reviews per CPU-second is
# the rate per core actually used, which differs from the wall-clock rate where the core idles
# (at concurrency 1, while an answer travels to the client and the next request back). The
# summary (Markdown) goes to stdout.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
rounds="${1:-3}"
config=benches/configs/minilm-live.toml
warmup=2 window=8  # seconds of each loadgen run: warm-up, then the measured window
out="target/bench/transformer-$(date +%Y%m%dT%H%M%S).jsonl"
mkdir -p target/bench
scripts/setup >/dev/null
benches/peers/python/setup.sh >/dev/null
cargo build --release --locked --bins 2>/dev/null

# Reviews of about 20 words (the eval suite's texts, as every loadgen run uses by default).
# NAME|ARGS|CONCURRENCY LEVELS (one loadgen run a level, so each has its own CPU reading).
scenarios=(
    "single|--tasks abuse|1 64"
    "batch32|--tasks abuse --reviews 32|1 4"
)

wait_port() {  # wait_port HOST:PORT
    for _ in $(seq 1 600); do
        (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "transformer.sh: nothing listens on $1" >&2; return 1
}

cpu_ticks() {  # cpu_ticks PID: user + system CPU time of the process and its threads, in clock ticks
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}

measure() {  # measure SERVER ROUND ADDR PID
    local name="$1" round="$2" addr="$3" pid="$4"
    wait_port "$addr"
    sleep 1  # the peer listens before its warm-up inference is done
    local s scenario args levels c loadgen line before after cpu
    for s in "${scenarios[@]}"; do
        IFS='|' read -r scenario args levels <<<"$s"
        for c in $levels; do
            # shellcheck disable=SC2086
            taskset -c 1 target/release/loadgen --addr "http://$addr" --duration "${window}s" --warmup "${warmup}s" --json $args \
                --concurrency "$c" >"$out.level" &
            loadgen=$!
            # The measured window follows loadgen's warm-up (to within its connect).
            sleep "$warmup"; before=$(cpu_ticks "$pid"); sleep "$window"; after=$(cpu_ticks "$pid")
            wait "$loadgen"
            line=$(cat "$out.level")
            cpu=$(awk -v t="$((after - before))" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.3f", t / hz }')
            echo "{\"server\":\"$name\",\"round\":$round,\"scenario\":\"$scenario\",\"server_cpu_s\":$cpu,\"window_s\":$window,\"result\":$line}" >>"$out"
        done
    done
    rm -f "$out.level"
    kill "$pid"; wait "$pid" 2>/dev/null || true
}

modserve() {  # modserve NAME BINARY ROUND [CONFIG]
    echo "round $3/$rounds: $1" >&2
    taskset -c 0 "$2" --config "${4:-$config}" 2>"/tmp/transformer-$1.log" &
    measure "$1" "$3" 127.0.0.1:50071 $!
}

for round in $(seq 1 "$rounds"); do
    if [ -n "${OLD:-}${OLD_CONFIG:-}" ]; then
        modserve modserve-old "${OLD:-target/release/modserve}" "$round" "${OLD_CONFIG:-$config}"
    fi
    modserve modserve target/release/modserve "$round"
    echo "round $round/$rounds: python peer" >&2
    (cd benches/peers/python && exec taskset -c 0 .venv/bin/python server.py --config "../../../$config" \
        --listen 127.0.0.1:50091) >/tmp/transformer-peer.log 2>&1 &
    measure peer "$round" 127.0.0.1:50091 $!
done
echo "raw results: $out" >&2
[ -x .tools/bound-venv/bin/python ] || { python3 -m venv .tools/bound-venv && .tools/bound-venv/bin/pip install -q --disable-pip-version-check -r benches/bound-requirements.txt; }
taskset -c 0 .tools/bound-venv/bin/python benches/compute_bound.py models/abuse-minilm >"$out.bound.json"
python3 benches/summarise_transformer.py "$out" "$out.bound.json"
