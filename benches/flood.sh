#!/usr/bin/env bash
# One client floods Classify while another measures its own latency (docs/reliability.md, "Fair
# turns between callers"). Starts BINARY on CONFIG (default modserve.toml) on free ports; the
# normal client (modserve-loadgen beside BINARY, open loop at 200 single-review calls/s on one
# connection, tasks abuse and fraud) runs 8 s alone, then 8 s beside a closed-loop flood of
# CONCURRENCY calls (default 512) on 8 connections. The normal client runs under SCHED_FIFO
# when allowed (chrt), so its own process is not what waits for a core. Prints both clients'
# tables and the server's refusal counts.
# usage: [CONFIG=file.toml] benches/flood.sh BINARY [CONCURRENCY]
set -euo pipefail
cd "$(dirname "$0")/.."
binary="$1"; concurrency="${2:-512}"
loadgen="$(dirname "$binary")/loadgen"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
grpc="127.0.0.1:$(free_port)"; metrics="127.0.0.1:$(free_port)"; http="127.0.0.1:$(free_port)"
log="$(mktemp)"
"$binary" --config "${CONFIG:-modserve.toml}" --grpc-listen "$grpc" --metrics-listen "$metrics" --http-listen "$http" \
    --log-format json 2>"$log" &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 600); do grep -q '"serving"' "$log" && break; sleep 0.1; done
rt=(); chrt -f 50 true 2>/dev/null && rt=(chrt -f 50)
normal() { "${rt[@]}" "$loadgen" --addr "http://$grpc" --rate 200 --duration 8s --warmup "$1" --connections 1 --tasks abuse,fraud; }
echo "normal client alone:"
normal 2s | tail -2
"$loadgen" --addr "http://$grpc" --concurrency "$concurrency" --duration 14s --warmup 0s --connections 8 \
    --tasks abuse,fraud > "$log.flood" 2>&1 &
flood=$!
sleep 3
echo "normal client beside the flood:"
normal 1s | tail -2
wait $flood
echo "the flood:"
tail -2 "$log.flood"; rm -f "$log.flood"
curl -s "http://$metrics/metrics" | grep -E '^modserve_(dropped_total|transport_refusals_total)\{' | grep -v ' 0$' || true
