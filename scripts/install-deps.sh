#!/usr/bin/env bash
# Installs what node-proxy needs on Debian/Ubuntu, idempotently.
#   scripts/install-deps.sh          build + run dependencies
#   scripts/install-deps.sh --test   also the real clients and peers the tests drive
# Python packages go into a virtualenv (Debian's python is externally managed):
#   ${NODE_PROXY_VENV:-$HOME/.cache/node-proxy/venv}
set -euo pipefail

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
  command -v sudo >/dev/null || die "not root and no sudo: run as root"
else
  SUDO=
fi

# Build: a C toolchain (ring, eBPF programs), clang + libbpf headers for the BPF programs.
packages=(ca-certificates curl build-essential pkg-config clang llvm libbpf-dev nftables iproute2)
if [ "$want_test" = 1 ]; then
  # Real clients and peers: curl, h2load, python3 (grpcio), nginx/haproxy for benches,
  # iptables/nftables for the redirect tests, tcpdump for captures, iperf3 for the HBONE bench.
  packages+=(nghttp2-client python3 python3-venv python3-pip iptables procps psmisc util-linux tcpdump iperf3)
  # Go >= 1.24: the X25519MLKEM768 TLS peer (tests/peers/tls-pqc), unless a Go is there.
  command -v go >/dev/null || [ -x /usr/local/go/bin/go ] || packages+=(golang-go)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  command -v apt-get >/dev/null || die "apt-get not found: install ${missing[*]} with your package manager"
  log "apt-get install ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Rust: the workspace needs rustc >= 1.95 (see rust-version in Cargo.toml).
if ! command -v cargo >/dev/null; then
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null; then
  log "installing Rust with rustup"
  curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain 1.95.0 \
    || die "rustup install failed: install Rust 1.95 from https://rustup.rs and re-run"
  export PATH="$HOME/.cargo/bin:$PATH"
fi
rustc_minor=$(rustc --version | sed -E 's/rustc 1\.([0-9]+).*/\1/')
[ "$rustc_minor" -ge 95 ] || die "rustc $(rustc --version) is too old: need 1.95 (rustup update)"

if [ "$want_test" = 1 ]; then
  venv="${NODE_PROXY_VENV:-$HOME/.cache/node-proxy/venv}"
  if [ ! -x "$venv/bin/python3" ]; then
    log "creating Python virtualenv $venv"
    python3 -m venv "$venv" || die "python3 -m venv failed: apt-get install python3-venv"
  fi
  if ! "$venv/bin/python3" -c 'import grpc, grpc_tools, google.protobuf' 2>/dev/null; then
    log "pip install grpcio grpcio-tools protobuf"
    "$venv/bin/pip" install -q --disable-pip-version-check grpcio grpcio-tools protobuf \
      || die "pip install failed: check access to PyPI"
  fi
fi
log "dependencies ready"
