#!/usr/bin/env bash
# One attack of the suite in its short form against a fresh BINARY on the default config, then
# where the server's CPU went: OUT.txt (the suite's table), OUT.json, OUT.metrics (a scrape after
# the attack) and OUT.threads (CPU-seconds per thread name, from /proc/PID/task).
# usage: [CONFIG=other.toml] benches/attack-threads.sh BINARY ATTACK OUT
#   e.g. benches/attack-threads.sh target/release/modserve i /tmp/i
set -euo pipefail
cd "$(dirname "$0")/.."
binary="$1"; attack="$2"; out="$3"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
grpc="127.0.0.1:$(free_port)"; metrics="127.0.0.1:$(free_port)"; http="127.0.0.1:$(free_port)"
log="$(mktemp)"
"$binary" --config "${CONFIG:-modserve.toml}" --grpc-listen "$grpc" --metrics-listen "$metrics" --http-listen "$http" --log-format json 2>"$log" &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 600); do grep -q '"serving"' "$log" && break; sleep 0.1; done
python3 benches/attack.py --grpc "$grpc" --metrics "$metrics" --pid "$pid" --loadgen "$(dirname "$binary")/loadgen" --short --only "$attack" --json "$out.json" > "$out.txt" 2>&1 || true
curl -s "http://$metrics/metrics" > "$out.metrics"
for t in /proc/$pid/task/*; do echo "$(cat $t/comm) $(awk "{print \$14+\$15}" $t/stat)"; done | awk "{a[\$1]+=\$2} END {for (k in a) print k, a[k]/100}" | sort -k2 -nr > "$out.threads"
