#!/usr/bin/env bash
# Builds one bench target (release profile) and prints the path of its executable, so scripts
# can run the same binary repeatedly without cargo rebuilding between measurements.
# usage: benches/bench-exe.sh NAME        (a [[bench]] in Cargo.toml: inference, instructions)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --locked --bench "$1" --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == sys.argv[1] and m.get("executable"):
        print(m["executable"])' "$1"
