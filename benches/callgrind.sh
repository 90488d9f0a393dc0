#!/usr/bin/env bash
# Instruction counts of the tokenization stage under callgrind: repeatable run to run on a noisy
# machine, so a change can be judged by one before/after pair. Counts only inside
# `tokenize_pass` (benches/instructions.rs: the eval reviews, 10 passes, one review at a time).
# usage: benches/callgrind.sh [MODEL_DIR...]      (default models/abuse-v1)
# Run it before and after a change; the totals are comparable only for the same toolchain.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind is required (Debian package valgrind)" >&2; exit 1; }
bin="$(benches/bench-exe.sh instructions)"
out="$(mktemp)"
for model in "${@:-models/abuse-v1}"; do
    reviews="$(valgrind --tool=callgrind --callgrind-out-file="$out" --toggle-collect='*tokenize_pass*' "$bin" "$model" 2>/dev/null \
        | awk '/ reviews, / {print $2}')"
    total="$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')"
    echo "$model: $total instructions for $reviews reviews, $((total / reviews)) per review"
    callgrind_annotate --inclusive=yes "$out" 2>/dev/null \
        | grep -E 'normalizers::(replace|unicode|utils)|pre_tokenizers::whitespace|NormalizedString::(nfkc|lowercase)|find_matches' \
        | sed -E 's#/root/.cargo/registry/src/[^/]*/##; s#\[.*##' | cut -c1-150 | head -8
done
rm -f "$out"
