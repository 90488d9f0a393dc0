#!/usr/bin/env bash
# Fetches the ONNX Runtime shared library from the PyPI onnxruntime wheel (no CDN, no venv) into
# .ort/ and prints its path. Idempotent: does nothing when the library is already there.
set -euo pipefail
ORT_VERSION="${ORT_VERSION:-1.31.1}"
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="$root/.ort"
lib="$dir/libonnxruntime.so.$ORT_VERSION"
if [[ -f "$lib" ]]; then
    echo "$lib"
    exit 0
fi
mkdir -p "$dir"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "fetching onnxruntime==$ORT_VERSION from PyPI ..." >&2
python3 -m pip download --quiet --no-deps --only-binary=:all: "onnxruntime==$ORT_VERSION" -d "$tmp" >&2
wheel="$(ls "$tmp"/onnxruntime-*.whl)"
python3 - "$wheel" "$lib" <<'PY'
import shutil, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.startswith("onnxruntime/capi/libonnxruntime.so."))
    with z.open(name) as src, open(dest + ".part", "wb") as out:
        shutil.copyfileobj(src, out)
shutil.move(dest + ".part", dest)
PY
echo "$lib"
