#!/usr/bin/env bash
# Nightly-style soak (not CI): mixed load with shadows and periodic reloads for DURATION
# (default 60m). The server runs the default models with both v2 shadows and a disagreement log;
# the load generator sends single-review and 8-review requests open loop; every RELOAD_EVERY
# (default 60s) the config file is rewritten, alternating the shadows' sample rates (1.0 / 0.5),
# and the file watch reloads it. Every 30 s it records RSS, open file descriptors and threads.
# usage: benches/soak.sh [DURATION] [RATE]          e.g. benches/soak.sh 60m 400
# Output: target/bench/soak-*.csv (one row per sample) and a summary on stdout.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
duration="${1:-60m}"
rate="${2:-400}"
reload_every="${RELOAD_EVERY:-60}"
scripts/setup >/dev/null
cargo build --release --locked --bins 2>/dev/null
dir="$(mktemp -d)"
csv="target/bench/soak-$(date +%Y%m%dT%H%M%S).csv"
mkdir -p target/bench
write_config() {  # write_config SAMPLE_RATE
    cat > "$dir/modserve.toml.tmp" <<TOML
[server]
grpc_listen = "127.0.0.1:50061"
metrics_listen = "127.0.0.1:9471"
onnxruntime_lib = "$root/.ort/libonnxruntime.so.1.31.1"
watch_interval = "1s"
[shadow.disagreement_log]
path = "$dir/disagreements.jsonl"
max_file_bytes = 8388608
max_files = 3
[models.abuse-v1]
path = "$root/models/abuse-v1"
[models.abuse-v2]
path = "$root/models/abuse-v2"
[models.fraud-v1]
path = "$root/models/fraud-v1"
[models.fraud-v2]
path = "$root/models/fraud-v2"
[tasks.abuse]
live = "abuse-v1"
shadows = [{ model = "abuse-v2", sample_rate = $1 }]
[tasks.fraud]
live = "fraud-v1"
shadows = [{ model = "fraud-v2", sample_rate = $1 }]
TOML
    mv "$dir/modserve.toml.tmp" "$dir/modserve.toml"
}
write_config 1.0
taskset -c 0 target/release/modserve --config "$dir/modserve.toml" --log-format json 2>"$dir/server.log" &
pid=$!
loads=()
trap 'kill "${loads[@]}" $pid 2>/dev/null; wait $pid 2>/dev/null' EXIT
for _ in $(seq 1 300); do grep -qs '"serving"' "$dir/server.log" && break; sleep 0.1; done
seconds="$(python3 -c "import sys,re; m=re.fullmatch(r'(\d+)(s|m|h)', sys.argv[1]); print(int(m[1]) * {'s': 1, 'm': 60, 'h': 3600}[m[2]])" "$duration")"
taskset -c 1 target/release/loadgen --addr http://127.0.0.1:50061 --rate "$((rate * 3 / 4))" \
    --duration "${seconds}s" --warmup 0s --json >"$dir/load-single.json" 2>&1 &
loads+=($!)
taskset -c 1 target/release/loadgen --addr http://127.0.0.1:50061 --rate "$((rate / 4))" --reviews 8 \
    --duration "${seconds}s" --warmup 0s --json >"$dir/load-batch.json" 2>&1 &
loads+=($!)
echo "elapsed_s,rss_kib,fds,threads,reloads_ok,reloads_failed" >"$csv"
start=$(date +%s); next_reload=$reload_every; flip=0
while kill -0 "${loads[0]}" 2>/dev/null; do
    sleep 30
    elapsed=$(( $(date +%s) - start ))
    if (( elapsed >= next_reload )); then
        flip=$((1 - flip)); write_config "$([[ $flip == 1 ]] && echo 0.5 || echo 1.0)"
        next_reload=$((next_reload + reload_every))
    fi
    metrics="$(curl -s http://127.0.0.1:9471/metrics)"
    ok="$(awk '/^modserve_config_reloads_total\{.*result="success"/ {s+=$2} END {print s+0}' <<<"$metrics")"
    failed="$(awk '/^modserve_config_reloads_total\{.*result="failure"/ {s+=$2} END {print s+0}' <<<"$metrics")"
    echo "$elapsed,$(ps -o rss= -p $pid | tr -d ' '),$(ls /proc/$pid/fd | wc -l),$(ls /proc/$pid/task | wc -l),$ok,$failed" >>"$csv"
done
wait "${loads[@]}" || true
echo "load results (open loop):"; cat "$dir/load-single.json" "$dir/load-batch.json"
echo "errors in the server log: $(grep -c '"level":"ERROR"' "$dir/server.log" || true)"
python3 - "$csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
first, last = rows[min(2, len(rows) - 1)], rows[-1]  # skip the first minute (warm-up)
print(f"samples: {len(rows)} ({sys.argv[1]})")
for key in ("rss_kib", "fds", "threads"):
    values = [int(r[key]) for r in rows]
    print(f"{key}: after 1 min {first[key]}, at the end {last[key]}, min {min(values)}, max {max(values)}")
print(f"reloads: {last['reloads_ok']} applied, {last['reloads_failed']} failed")
PY
