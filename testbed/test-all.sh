#!/usr/bin/env bash
# Install everything the test suite needs (Debian packages + Python packages) and run it all.
# This is the README's test command and what .ci/run calls. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBS=(
  curl openssl
  davix
  gfal2 gfal2-util-scripts python3-gfal2-util python3-gfal2 gfal2-plugin-http gfal2-plugin-file
  xrootd-server xrootd-server-plugins xrootd-scitokens-plugins xrootd-voms-plugins xrootd-plugins
  xrootd-client
  voms-clients
  litmus
  wrk apache2-utils
  util-linux
)

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
missing=()
for d in "${DEBS[@]}"; do
  dpkg -s "$d" >/dev/null 2>&1 || missing+=("$d")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python3 -m pip install -q --disable-pip-version-check -e '.[test]'

# gfal2's command-line tools are Python scripts that need Debian's python3 (PEERS.md).
export GFAL_PYTHONBIN=/usr/bin/python3

python3 -m pytest "$@"
