#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 30 s each) from the seed corpora in
# fuzz/seeds/ (read-only: new inputs go to target/fuzz-corpus/). Any crash fails the run and
# leaves the input in fuzz/artifacts/TARGET/.
# usage: fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`; this script installs it if missing).
# libFuzzer instrumentation needs nightly rustc flags: RUSTC_BOOTSTRAP=1 lets the stable
# toolchain accept them. No sanitizer (`-s none`): the targets are safe Rust, and skipping ASan
# halves the build. FUZZ_BUILD_FLAGS=--dev builds without optimisation (CI: a quicker build,
# fewer executions).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/fuzz"
seconds="${1:-30}"; shift || true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(classify_request manifest config)
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: installing cargo-fuzz ..." >&2
    cargo install --locked --debug --quiet cargo-fuzz@0.13.2 >&2
fi
export RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR="$root/target/fuzz"
for t in "${targets[@]}"; do
    corpus="$root/target/fuzz-corpus/$t"
    mkdir -p "$corpus"
    echo "fuzz/run.sh: $t for ${seconds}s" >&2
    log="$root/target/fuzz-$t.log"
    status=0
    # shellcheck disable=SC2086
    cargo fuzz run ${FUZZ_BUILD_FLAGS:-} --sanitizer none "$t" "$corpus" "seeds/$t" -- \
        -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    grep -E '^stat::(number_of_executed_units|new_units_added|peak_rss_mb)|^Done [0-9]+ runs' "$log" | sed "s/^/  $t: /" >&2 || true
    if [[ $status -ne 0 ]]; then
        tail -40 "$log" >&2
        echo "fuzz/run.sh: $t failed (exit $status); crash inputs, if any, are in fuzz/artifacts/$t/" >&2
        exit 1
    fi
done
echo "fuzz/run.sh: OK (${targets[*]}, ${seconds}s each)" >&2
