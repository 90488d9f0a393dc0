#!/usr/bin/env bash
# Starts BINARY on the default config (modserve.toml, free loopback ports), runs the attack suite
# (benches/attack.py) against it, stops it, and exits with the suite's code.
# usage: benches/attack.sh BINARY [attack.py args...]
#   e.g. benches/attack.sh target/release/modserve            # the full suite, ~7 min
#        benches/attack.sh target/debug/modserve --short --no-latency-targets   # what CI runs
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
binary="$1"; shift
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
grpc="127.0.0.1:$(free_port)"
metrics="127.0.0.1:$(free_port)"
# The HTTP/JSON listener of modserve.toml moves to a free port too, so the suite runs beside a
# server started with scripts/serve.
http="127.0.0.1:$(free_port)"
log="$(mktemp)"
"$binary" --config modserve.toml --grpc-listen "$grpc" --metrics-listen "$metrics" --http-listen "$http" \
    --log-format json 2>"$log" &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 600); do
    grep -q '"serving"' "$log" && break
    kill -0 $pid 2>/dev/null || { echo "attack.sh: the server exited:" >&2; cat "$log" >&2; exit 1; }
    sleep 0.1
done
grep -q '"serving"' "$log" || { echo "attack.sh: the server did not start within 60 s" >&2; exit 1; }
python3 benches/attack.py --grpc "$grpc" --metrics "$metrics" --pid "$pid" --loadgen "$(dirname "$binary")/loadgen" "$@"
