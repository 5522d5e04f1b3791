#!/usr/bin/env bash
# The whole test suite: installs the real components the end-to-end tests
# drive (when missing), checks formatting and lints, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# program → Debian package
declare -A needs=(
  [docker-registry]=docker-registry
  [skopeo]=skopeo
  # Signature verification through the mirror (GPG: Debian's skopeo and
  # Podman are built without sigstore).
  [podman]=podman
  [gpg]=gpg
  [dockerd]=docker.io
  [ctr]=containerd
  [promtool]=prometheus
  [haproxy]=haproxy
  [docker-compose]=docker-compose
  [systemd-analyze]=systemd
  [openssl]=openssl
  [curl]=curl
  # The page at / is checked in a real browser (headless).
  [chromium]=chromium
  # Ceph's RADOS Gateway, the object store the S3 tier is tested against.
  [ceph-mon]=ceph-mon
  [ceph-osd]=ceph-osd
  [radosgw]=radosgw
  [ceph]=ceph-common
  [tinyproxy]=tinyproxy
  [microsocks]=microsocks
)
missing=()
for prog in "${!needs[@]}"; do
  command -v "$prog" >/dev/null 2>&1 || missing+=("${needs[$prog]}")
done
# The Chinese page's screenshot needs a CJK font (Chromium finds fonts
# through fontconfig; without one the page renders as boxes).
fc-list :lang=zh 2>/dev/null | grep -q . || missing+=(fonts-noto-cjk)
# Debian's own python3 needs PyYAML for the deploy checks.
/usr/bin/python3 -c 'import yaml' 2>/dev/null || missing+=(python3-yaml)
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  # As the machines here were set up (recommended packages included: the
  # Docker daemon has been exercised that way).
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The Kubernetes manifests are checked against the API schemas offline.
tools_venv="$PWD/target/tools-venv"
if ! command -v kubernetes-validate >/dev/null 2>&1 && [ ! -x "$tools_venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$tools_venv"
  "$tools_venv/bin/pip" install -q kubernetes-validate
fi
# ORAS (its Python client) pushes and pulls artifacts in the e2e suites.
if ! "$tools_venv/bin/python" -c 'import oras.provider' 2>/dev/null; then
  [ -x "$tools_venv/bin/python" ] || python3 -m venv "$tools_venv"
  "$tools_venv/bin/pip" install -q oras
fi
export PATH="$PATH:$tools_venv/bin"

cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
# The end-to-end suites start heavyweight daemons; they serialise
# themselves, the rest run in parallel.
cargo test --all-targets 2>&1
