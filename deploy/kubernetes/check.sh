#!/usr/bin/env bash
# Offline validation of deploy/kubernetes/ (and the Dockerfile's paths), for CI and by hand:
#
#   deploy/kubernetes/check.sh
#
# 1. Installs kubernetes-validate (PyPI; it carries the Kubernetes JSON schemas) into
#    .tools/kv, once; later runs reuse it.
# 2. validate.py: every manifest in kustomization.yaml and the generated ConfigMap, strictly,
#    against Kubernetes 1.29 and 1.37; PodMonitor and PrometheusRule (CRDs, which
#    kubernetes-validate has no schema for) against subset schemas written in validate.py; the
#    cross-checks between files, the config keys and the metric names (see its docstring).
#    When kubectl is on PATH, `kubectl kustomize` renders the base and the output is validated
#    too; without kubectl that step is skipped (and says so).
# 3. prometheusrule.yaml is what gen_prometheusrule.py makes from deploy/prometheus/ (else:
#    stale, run the generator).
# 4. `promtool check rules` on the rules taken out of the PrometheusRule (promtool comes from
#    Debian's `prometheus` package, which `scripts/setup --test` installs).
# Needs python3 (3.11 or newer) with pip. Writes only .tools/kv and a temporary folder.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"

KV_VERSION=1.37.0
kv=".tools/kv"

python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
    || { echo "check.sh: python3 3.11 or newer is required (tomllib)" >&2; exit 1; }

if ! grep -qs "__version__ = ['\"]$KV_VERSION['\"]" "$kv/kubernetes_validate/version.py"; then
    echo "check.sh: installing kubernetes-validate==$KV_VERSION into $kv ..." >&2
    rm -rf "$kv"
    python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
        --root-user-action=ignore --target "$kv" "kubernetes-validate==$KV_VERSION" >&2
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

rendered_arg=()
if command -v kubectl >/dev/null 2>&1; then
    kubectl kustomize deploy/kubernetes >"$tmp/rendered.yaml"
    rendered_arg=(--rendered "$tmp/rendered.yaml")
    echo "check.sh: kubectl kustomize rendered the base"
else
    echo "check.sh: kubectl not found: skipped rendering with kubectl kustomize (each file is still validated)"
fi

PYTHONPATH="$root/$kv" PYTHONDONTWRITEBYTECODE=1 \
    python3 deploy/kubernetes/validate.py "${rendered_arg[@]}" --rules-out "$tmp/rules.yml"

python3 deploy/kubernetes/gen_prometheusrule.py --check

# The pod's config through modserve's own parser and model loader, when a binary is already
# built (this script builds nothing): the image's paths are mapped to the work tree.
bin="${MODSERVE_BIN:-}"
for candidate in target/release/modserve target/debug/modserve; do
    [[ -z "$bin" && -x "$candidate" ]] && bin="$candidate"
done
ort_lib="$(sed -n 's|^onnxruntime_lib = "/opt/modserve/lib/\(.*\)"$|\1|p' deploy/kubernetes/modserve.toml)"
if [[ -n "$bin" && -n "$ort_lib" && -f ".ort/$ort_lib" ]]; then
    sed -e "s|/opt/modserve/models/|$root/models/|" \
        -e "s|/opt/modserve/lib/|$root/.ort/|" \
        -e "s|/var/lib/modserve/disagreements/|$tmp/log/|" \
        deploy/kubernetes/modserve.toml >"$tmp/modserve.toml"
    if ! "$bin" check-config "$tmp/modserve.toml" >"$tmp/check-config.out" 2>&1; then
        cat "$tmp/check-config.out" >&2
        echo "check.sh: $bin check-config refused deploy/kubernetes/modserve.toml" >&2
        exit 1
    fi
    echo "check.sh: $bin check-config accepts deploy/kubernetes/modserve.toml"
else
    echo "check.sh: no built modserve (or no .ort/ library): skipped check-config of modserve.toml"
fi

if ! command -v promtool >/dev/null 2>&1; then
    echo "check.sh: promtool not found: run scripts/setup --test (Debian package prometheus)" >&2
    exit 1
fi
promtool check rules "$tmp/rules.yml"
echo "check.sh: OK"
