# syntax=docker/dockerfile:1
# modserve's container image: the binary, the ONNX Runtime library and the bundled model
# packages, run as a non-root user. Build from the repository root (docs/deploying.md):
#
#   docker build -t modserve:0.1.0 .
#
# Tag it with a version that names the models too (the image carries them): a model change is
# a new tag. deploy/kubernetes/ runs it; deploy/kubernetes/check.sh checks that the paths below
# match the config there.

# The base images. Rust 1.92 is the crate's rust-version (Cargo.toml); bookworm matches the runtime
# stage's glibc. Where no registry is reachable, deploy/image/check.sh makes both from Debian
# packages and passes them in.
ARG BUILDER_IMAGE=rust:1.92-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ---- build ----
FROM ${BUILDER_IMAGE} AS builder
# scripts/fetch-onnxruntime.sh takes the library from the PyPI onnxruntime wheel with pip.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The same ONNX Runtime version as everywhere else (scripts/fetch-onnxruntime.sh, modserve.toml).
# Fetched before the sources are copied, so a source change does not fetch it again; .ort/ is
# not in the build context (.dockerignore), so the COPY below leaves it alone.
ARG ORT_VERSION=1.31.1
COPY scripts/fetch-onnxruntime.sh scripts/
RUN ORT_VERSION="$ORT_VERSION" scripts/fetch-onnxruntime.sh
COPY . .
# Cache mounts keep the crates and build artefacts between builds (BuildKit, the default
# builder since Docker 23); target/ is a cache, so the binary is copied out of it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin modserve \
 && install -m 0755 target/release/modserve /usr/local/bin/modserve

# ---- run ----
FROM ${RUNTIME_IMAGE}
ARG ORT_VERSION=1.31.1
# No packages added: libstdc++ (for ONNX Runtime) and glibc are in the slim image, and so is
# `sleep` for the Kubernetes preStop hook.
RUN groupadd --system --gid 10001 modserve \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin modserve
COPY --from=builder /usr/local/bin/modserve /usr/local/bin/modserve
# server.onnxruntime_lib in deploy/kubernetes/modserve.toml points here.
COPY --from=builder /src/.ort/libonnxruntime.so.${ORT_VERSION} /opt/modserve/lib/libonnxruntime.so.${ORT_VERSION}
# Model packages (one folder per model version; .dockerignore leaves out models/train and
# models/eval), owned by root and read-only for the server. The repository's default config
# comes along, so `docker run` works without a config of its own (docs/deploying.md).
COPY models/ /opt/modserve/models/
COPY modserve.toml /opt/modserve/modserve.toml
# gRPC (Moderation, health, reflection), the Admin port when admin.listen sets it (as the
# Kubernetes config does), and HTTP /metrics, /health/live, /health/ready.
EXPOSE 50051 50052 9464
USER 10001:10001
WORKDIR /opt/modserve
ENTRYPOINT ["/usr/local/bin/modserve"]
# Kubernetes mounts the config here (deploy/kubernetes/deployment.yaml).
CMD ["--config", "/etc/modserve/modserve.toml"]
