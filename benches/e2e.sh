#!/usr/bin/env bash
# End-to-end load runs: the release server pinned to core 0, the load generator to core 1.
# usage: benches/e2e.sh CONFIG [loadgen args...]     e.g. benches/e2e.sh benches/configs/live-only.toml --concurrency 1,8,32
# Prints the loadgen table and the server's RSS after the run.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
config="$1"; shift
scripts/setup >/dev/null
cargo build --release --locked --bins 2>/dev/null
addr="$(grep -m1 '^grpc_listen' "$config" | sed 's/.*"\(.*\)"/\1/')"
taskset -c 0 target/release/modserve --config "$config" --log-format json 2>/tmp/modserve-bench.log &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null' EXIT
for _ in $(seq 1 300); do grep -q '"serving"' /tmp/modserve-bench.log && break; sleep 0.1; done
echo "server pid $pid on core 0, RSS at start: $(ps -o rss= -p $pid) KiB"
taskset -c 1 target/release/loadgen --addr "http://$addr" "$@"
echo "RSS after the run: $(ps -o rss= -p $pid) KiB"
metrics="$(grep -m1 '^metrics_listen' "$config" | sed 's/.*"\(.*\)"/\1/')"
curl -s "http://$metrics/metrics" | grep -E '^modserve_shadow_reviews_total' | grep -v ' 0$' || true
