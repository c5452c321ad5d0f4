#!/usr/bin/env bash
# The full test run: formatting, lints, then every test of the workspace.
# Installs what the tests need when it is missing (Debian packages need root).
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
# (packages the integration tests need are added here as targets arrive)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}"
  else
    echo "missing Debian packages: ${need_pkgs[*]} (run as root or install them)" >&2
    exit 1
  fi
fi

if [ -d ../shared ]; then
  echo "../shared is present: tests also check the official Azure examples and specs."
else
  echo "../shared is absent: tests that read it say so and skip that part."
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --all-targets
