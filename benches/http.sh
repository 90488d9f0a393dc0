#!/usr/bin/env bash
# What the HTTP/JSON API costs against gRPC: the same single-review Classify (one fixed text,
# task abuse) sent by loadgen over gRPC and by wrk over HTTP/1.1 keep-alive to one release
# server pinned to core 0, the client pinned to core 1; closed loop at each concurrency,
# alternating gRPC and HTTP within each round.
#
#   benches/http.sh [ROUNDS] [CONCURRENCY...]      (default 2 rounds, concurrency 1 and 16)
#
# Needs `wrk` (Debian package). Prints one line per run: protocol, concurrency, req/s, p50, p99,
# and the server's CPU time per answered request (utime + stime from /proc over the run, divided
# by the requests the client counted): the client differs between the protocols (tonic in Rust,
# wrk in C), so req/s and latency partly measure the client; CPU per request is the server's.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
rounds="${1:-2}"; shift || true
levels=("${@:-1 16}")
read -r -a levels <<< "${levels[*]}"
command -v wrk >/dev/null || { echo "http.sh: install wrk (apt-get install wrk)" >&2; exit 1; }
target="${CARGO_TARGET_DIR:-target}"
config=benches/configs/live-only.toml
grpc="$(grep -m1 '^grpc_listen' "$config" | sed 's/.*"\(.*\)"/\1/')"
http=127.0.0.1:50081
duration=8s
text="Great blender, arrived fast, works as described."
work="$(mktemp -d)"
echo "$text" > "$work/texts.txt"
cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.body = '{"reviews":[{"id":"r1","text":"$text"}],"tasks":["abuse"]}'
LUA
taskset -c 0 "$target/release/modserve" --config "$config" --http-listen "$http" --log-format json 2>"$work/server.log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 300); do grep -qs '"serving"' "$work/server.log" && break; sleep 0.1; done
# Every answer over HTTP must be a classification, not an error.
curl -sf "http://$http/v1/classify" --data-binary "{\"reviews\":[{\"id\":\"r1\",\"text\":\"$text\"}],\"tasks\":[\"abuse\"]}" \
    | grep -q '"decision":"DECISION_' || { echo "http.sh: /v1/classify did not answer a decision" >&2; exit 1; }
# Warm both paths once.
taskset -c 1 wrk -t1 -c4 -d2s -s "$work/post.lua" "http://$http/v1/classify" >/dev/null
taskset -c 1 "$target/release/loadgen" --addr "http://$grpc" --texts "$work/texts.txt" --tasks abuse \
    --concurrency 4 --duration 2s --warmup 0s >/dev/null
cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
hz="$(getconf CLK_TCK)"
per_request() { python3 -c 'import sys; t, n, hz = map(float, sys.argv[1:]); print("server CPU %.1f us/request" % (t / hz / n * 1e6))' "$1" "$2" "$hz"; }
summary() {
    python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.0f req/s p50 %.3fms p99 %.3fms%s" % (d["requests_per_s"], d["p50_ms"], d["p99_ms"], " ERRORS %s" % d["errors"] if d["errors"] else ""))'
}
for round in $(seq 1 "$rounds"); do
    for c in "${levels[@]}"; do
        before="$(cpu_ticks)"
        line="$(taskset -c 1 "$target/release/loadgen" --addr "http://$grpc" --texts "$work/texts.txt" --tasks abuse \
            --concurrency "$c" --connections "$(( c < 4 ? c : 4 ))" --duration "$duration" --warmup 0s --json)"
        ticks=$(( $(cpu_ticks) - before ))
        ok="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["ok"])' <<< "$line")"
        echo "round $round grpc c=$c $(summary <<< "$line"), $(per_request "$ticks" "$ok")"
        before="$(cpu_ticks)"
        out="$(taskset -c 1 wrk -t1 -c"$c" -d"$duration" --latency -s "$work/post.lua" "http://$http/v1/classify")"
        ticks=$(( $(cpu_ticks) - before ))
        total="$(awk '/requests in/ {print $1}' <<< "$out")"
        rps="$(awk '/Requests\/sec/ {print $2}' <<< "$out")"
        p50="$(awk '$1=="50%" {print $2}' <<< "$out")"
        p99="$(awk '$1=="99%" {print $2}' <<< "$out")"
        non2xx="$(awk '/Non-2xx/ {print $NF}' <<< "$out")"
        echo "round $round http c=$c ${rps%.*} req/s p50 $p50 p99 $p99${non2xx:+ NON-2XX $non2xx}, $(per_request "$ticks" "$total")"
    done
done
echo "server RSS after the runs: $(ps -o rss= -p $pid) KiB"
