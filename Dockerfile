# Fairway broker image.
#   podman build -t fairway .       (or docker build)
#   podman run -p 50051:50051 -v fairway-data:/data fairway
# Offline builds pass local base images, e.g. (see scripts/container-build):
#   --build-arg RUST_IMAGE=localhost/fairway-rust:bookworm
#   --build-arg RUNTIME_IMAGE=localhost/debian:bookworm-slim
#
# Stage 1 builds the release binary (RocksDB's C++ needs clang/libclang);
# stage 2 is a slim Debian with only the binary and tini, run as a non-root
# user with its data in the /data volume.
#
# Reproducible inputs: both base images are pinned by digest (the tag is
# informational; bump both deliberately, e.g. with
# `skopeo inspect --raw docker://docker.io/library/debian:bookworm-slim`,
# using the multi-arch index digest), crates come from Cargo.lock
# (`--locked`), and the runtime stage installs nothing from the network.
# The build stage's Debian packages (clang, tini) follow bookworm's point
# releases: see the hadolint note at that step.

# Any Debian bookworm image with a Rust toolchain >= 1.89 on PATH.
ARG RUST_IMAGE=docker.io/library/rust:1.89-bookworm@sha256:948f9b08a66e7fe01b03a98ef1c7568292e07ec2e4fe90d88c07bb14563c84ff
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim@sha256:7b140f374b289a7c2befc338f42ebe6441b7ea838a042bbd5acbfca6ec875818

FROM ${RUST_IMAGE} AS build
# DL3008 (pin apt versions): bookworm only keeps the current point release of
# a package on its mirrors, so `pkg=version` pins break the build at the next
# Debian point release. These are build tools only (compiler, bindgen's
# libclang, tini); the image's own inputs are pinned by digest and Cargo.lock.
# hadolint ignore=DL3008
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      ca-certificates build-essential clang libclang-dev tini \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, with stub sources and a stub build script, so edits
# to src/ or proto/ don't rebuild RocksDB.
# The workspace's other member (the bench) only needs its manifest and a
# stub: the image builds the broker package alone.
COPY Cargo.toml Cargo.lock ./
COPY bench/Cargo.toml ./bench/
RUN mkdir src bench/src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs bench/src/lib.rs \
 && echo 'fn main() {}' > build.rs && echo 'fn main() {}' > bench/src/main.rs \
 && cargo build --release --locked -p fairway \
 && rm -rf src build.rs
COPY build.rs ./
COPY proto ./proto
COPY src ./src
# COPY keeps old mtimes: touch so cargo sees the real sources as newer.
RUN touch build.rs src/main.rs src/lib.rs && cargo build --release --locked -p fairway --bin fairway \
 && strip target/release/fairway

FROM ${RUNTIME_IMAGE}
# A fixed uid/gid (not the next free system id), so files in a volume or a
# bind mount keep the same owner across image rebuilds.
RUN groupadd --gid 10001 fairway \
 && useradd --no-log-init --no-create-home --uid 10001 --gid fairway --home-dir /data --shell /usr/sbin/nologin fairway \
 && mkdir -p /data && chown fairway:fairway /data
# tini as PID 1: forwards SIGTERM to the broker, which drains, flushes
# RocksDB and exits 0. (A bare PID 1 ignores signals it has no handler for,
# so a stop during start-up would wait for the SIGKILL.) The static build
# needs nothing from the runtime image.
COPY --from=build /usr/bin/tini-static /usr/bin/tini
COPY --from=build /src/target/release/fairway /usr/local/bin/fairway
# Numeric, so runtimes that check for a non-root user (runAsNonRoot) can
# without reading /etc/passwd: 10001 is the `fairway` user made above.
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
# FAIRWAY_ADDR is what the CLI, and so the HEALTHCHECK, connects to: when
# FAIRWAY_LISTEN moves to another port, set FAIRWAY_ADDR to match.
ENV FAIRWAY_DATA_DIR=/data \
    FAIRWAY_LISTEN=0.0.0.0:50051 \
    FAIRWAY_ADDR=http://127.0.0.1:50051 \
    FAIRWAY_LOG_FORMAT=json \
    FAIRWAY_METRICS_LISTEN=0.0.0.0:9090
EXPOSE 50051 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 CMD ["fairway", "health"]
# The broker drains for at most ~5 s after SIGTERM before closing idle
# connections, inside the default 10 s stop timeout.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "fairway"]
CMD ["serve"]
