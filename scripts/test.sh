#!/usr/bin/env bash
# The full test run: formatting, lints, then every test of the workspace.
# Installs what the tests need when it is missing (Debian packages need root).
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
# (packages the integration tests need are added here as targets arrive)
# Real HAProxy and nginx for the target tests (tests/targets_*.rs); Debian puts them in
# /usr/sbin, which may not be on a non-root PATH.
for prog in haproxy nginx; do
  command -v "$prog" >/dev/null || [ -x "/usr/sbin/$prog" ] || need_pkgs+=("$prog")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    # RUNLEVEL=1: the packages' own services (the system nginx and haproxy) are not started.
    apt-get update -qq && RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}"
  else
    echo "missing Debian packages: ${need_pkgs[*]} (run as root or install them)" >&2
    exit 1
  fi
fi

# promtool and prometheus (Debian's prometheus package, 2.42 on bookworm) check /metrics in
# both formats, the alert rules and their unit tests (tests/ops_metrics.rs,
# packaging/prometheus). RUNLEVEL=1: the package's own prometheus service is not started.
if ! command -v promtool >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
  else
    echo "promtool is missing: install Debian's prometheus package (as root)" >&2
    exit 1
  fi
fi

# Azurite (Microsoft's Azure Storage emulator, from the npm registry) for the leader
# election tests; installed under .tools/ and found there by the tests (or through
# $AZURITE_BLOB).
if [ -z "${AZURITE_BLOB:-}" ]; then
  AZURITE_BLOB="$PWD/.tools/azurite/node_modules/.bin/azurite-blob"
  if [ ! -x "$AZURITE_BLOB" ]; then
    if ! command -v npm >/dev/null; then
      if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
      else
        echo "npm is missing (needed to install Azurite): install nodejs and npm" >&2
        exit 1
      fi
    fi
    echo "Installing Azurite into .tools/azurite ..."
    npm install --prefix .tools/azurite --no-audit --no-fund --loglevel=error azurite@3 >/dev/null
  fi
fi
export AZURITE_BLOB
# The same package's queue service, for the event queue tests.
export AZURITE_QUEUE="${AZURITE_QUEUE:-$(dirname "$AZURITE_BLOB")/azurite-queue}"

if [ -d ../shared ]; then
  echo "../shared is present: tests also check the official Azure examples and specs."
else
  echo "../shared is absent: tests that read it say so and skip that part."
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --all-targets --no-fail-fast
