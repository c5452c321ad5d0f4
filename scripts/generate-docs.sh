#!/usr/bin/env bash
# Regenerates the man page and the shell completions in packaging/ from the binary's
# command-line definition (tests/it/ops_packaging.rs checks they are current).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q -p vmss-sync --bin vmss-sync
bin=target/debug/vmss-sync
"$bin" generate man > packaging/man/vmss-sync.1
"$bin" generate completions bash > packaging/completions/vmss-sync.bash
"$bin" generate completions zsh > packaging/completions/_vmss-sync
"$bin" generate completions fish > packaging/completions/vmss-sync.fish
