# Fairway broker image.
#   podman build -t fairway .       (or docker build)
#   podman run -p 50051:50051 -v fairway-data:/data fairway
# Offline builds pass local base images, e.g. (see scripts/container-build):
#   --build-arg RUST_IMAGE=localhost/fairway-rust:bookworm
#   --build-arg RUNTIME_IMAGE=localhost/debian:bookworm-slim
#
# Stage 1 builds the release binary (RocksDB's C++ needs clang/libclang);
# stage 2 is a slim Debian with only the binary, run as a non-root user.

# Any Debian bookworm image with a Rust toolchain >= 1.89 on PATH.
ARG RUST_IMAGE=docker.io/library/rust:1-bookworm
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      ca-certificates build-essential clang libclang-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, with stub sources and a stub build script, so edits
# to src/ or proto/ don't rebuild RocksDB.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs && echo 'fn main() {}' > build.rs \
 && cargo build --release --locked \
 && rm -rf src build.rs
COPY build.rs ./
COPY proto ./proto
COPY src ./src
# COPY keeps old mtimes: touch so cargo sees the real sources as newer.
RUN touch build.rs src/main.rs src/lib.rs && cargo build --release --locked --bin fairway \
 && strip target/release/fairway

FROM ${RUNTIME_IMAGE}
RUN groupadd --system fairway && useradd --system --gid fairway --home-dir /data fairway \
 && mkdir -p /data && chown fairway:fairway /data
COPY --from=build /src/target/release/fairway /usr/local/bin/fairway
USER fairway
VOLUME ["/data"]
ENV FAIRWAY_DATA_DIR=/data \
    FAIRWAY_LISTEN=0.0.0.0:50051 \
    FAIRWAY_ADDR=http://127.0.0.1:50051 \
    FAIRWAY_LOG_FORMAT=json \
    FAIRWAY_METRICS_LISTEN=0.0.0.0:9090
EXPOSE 50051 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 CMD ["fairway", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["fairway"]
CMD ["serve"]
