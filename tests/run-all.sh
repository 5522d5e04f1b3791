#!/usr/bin/env bash
# The whole test suite: installs the real components the end-to-end tests
# drive (when missing), checks formatting and lints, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# program → Debian package
declare -A needs=(
  [docker-registry]=docker-registry
  [skopeo]=skopeo
  [dockerd]=docker.io
  [ctr]=containerd
)
missing=()
for prog in "${!needs[@]}"; do
  command -v "$prog" >/dev/null 2>&1 || missing+=("${needs[$prog]}")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
# The end-to-end suites start heavyweight daemons; they serialise
# themselves, the rest run in parallel.
cargo test --all-targets 2>&1
