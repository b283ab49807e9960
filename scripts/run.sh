#!/usr/bin/env bash
# Installs what is needed, builds node-proxy (release) and runs it on the embedded
# default configuration (or pass node-proxy arguments, e.g. --config FILE).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release -p node-proxy
exec target/release/node-proxy "$@"
