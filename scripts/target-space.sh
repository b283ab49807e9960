#!/usr/bin/env bash
# Checks there is room for a build in the cargo target dir, before cargo dies half-way
# with ENOSPC: when the disk has less free than a cold build needs (NODE_PROXY_BUILD_GB,
# default 5), it stops saying how much is free and how much is needed.
#   scripts/target-space.sh TARGET_DIR
# Under CI (CI=true) the target dir is a cache kept outside the clone, and a cache can
# always be rebuilt, so first:
# - incremental state is dropped (CI builds with CARGO_INCREMENTAL=0; it only grows);
# - a cache above NODE_PROXY_TARGET_MAX_GB (default 12) is emptied: artifacts of old
#   commits and toolchains pile up beside the current ones;
# - a cache on a disk with less free than a build needs is emptied.
set -euo pipefail

target="${1:?usage: scripts/target-space.sh TARGET_DIR}"
max_gb="${NODE_PROXY_TARGET_MAX_GB:-12}"
need_gb="${NODE_PROXY_BUILD_GB:-5}"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Free space (GiB) on the filesystem that holds (or will hold) the target dir.
free_gb() {
  local dir="$target"
  while [ ! -d "$dir" ]; do dir="$(dirname "$dir")"; done
  df -Pk "$dir" | awk 'NR == 2 { printf "%d", $4 / 1048576 }'
}
used_gb() {
  if [ -d "$target" ]; then du -sk "$target" | awk '{ printf "%d", $1 / 1048576 }'; else echo 0; fi
}

# `du` walks the whole cache (GBs of files): it is measured once.
if [ "${CI:-}" = true ] && [ -d "$target" ]; then
  find "$target" -maxdepth 2 -type d -name incremental -prune -exec rm -rf {} +
fi
used="$(used_gb)"

if [ "${CI:-}" = true ] && [ "$used" -gt "$max_gb" ]; then
  log "target cache $target holds $used GB (> $max_gb): emptying it"
  rm -rf "$target"
  used=0
fi

if [ "${CI:-}" = true ] && [ "$(free_gb)" -lt "$need_gb" ] && [ -d "$target" ]; then
  log "only $(free_gb) GB free for the build: emptying the target cache $target ($used GB)"
  rm -rf "$target"
  used=0
fi

free="$(free_gb)"
if [ "$free" -lt "$need_gb" ]; then
  printf 'error: only %s GB free on the disk that holds %s; a build needs about %s GB: free some space, or set CARGO_TARGET_DIR to a disk with room\n' \
    "$free" "$target" "$need_gb" >&2
  exit 1
fi
log "target cache $target: $used GB, $free GB free"
