#!/usr/bin/env bash
# Installs the test tools and peers, then runs the whole test suite: unit and
# property tests, the shared-corpus tests, the Python gRPC peer self-test, and the
# end-to-end tests that drive real clients through the real proxy (some need root).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --test
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
venv="${NODE_PROXY_VENV:-$HOME/.cache/node-proxy/venv}"
export PATH="$venv/bin:$PATH"   # python3 with grpcio for the gRPC peers

# The shared corpus (istiod output, CQL captures) sits beside the repository when present.
if [ -z "${NODE_PROXY_CORPUS:-}" ] && [ -d ../shared/corpus ]; then
  export NODE_PROXY_CORPUS="$(cd ../shared/corpus && pwd)"
fi

scripts/target-space.sh "${CARGO_TARGET_DIR:-target}"

echo "==> gRPC peer self-test"
python3 tests/peers/grpc/selftest.py
echo "==> cargo test"
cargo build --workspace --bins
cargo test --workspace --no-fail-fast -- --test-threads "${NODE_PROXY_TEST_THREADS:-2}"
