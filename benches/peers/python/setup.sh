#!/usr/bin/env bash
# Sets up the Python peer: a venv in .venv/, the pinned requirements, and the gRPC stubs in gen/.
# Idempotent: re-running reuses the venv and regenerates the stubs.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
proto_root="$(cd "$here/../../../proto" && pwd)"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3

if [ ! -x "$here/.venv/bin/python" ]; then
  "$python" -m venv "$here/.venv"
fi
"$here/.venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"

rm -rf "$here/gen"
mkdir -p "$here/gen"
"$here/.venv/bin/python" -m grpc_tools.protoc \
  -I "$proto_root" \
  --python_out="$here/gen" \
  --grpc_python_out="$here/gen" \
  "$proto_root/modserve/v1/moderation.proto"
# Make the generated tree importable as packages (modserve.v1.moderation_pb2).
touch "$here/gen/modserve/__init__.py" "$here/gen/modserve/v1/__init__.py"
echo "python peer ready: $here/.venv, stubs in $here/gen"
