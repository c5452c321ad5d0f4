#!/usr/bin/env bash
# The full test run: formatting, lints, then every test of the workspace.
# Installs what the tests need when it is missing (Debian packages need root).
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
# (packages the integration tests need are added here as targets arrive)
# Real HAProxy and nginx for the target tests (tests/it/targets_*.rs); Debian puts them in
# /usr/sbin, which may not be on a non-root PATH.
for prog in haproxy nginx; do
  command -v "$prog" >/dev/null || [ -x "/usr/sbin/$prog" ] || need_pkgs+=("$prog")
done
# Packaging checks (tests/it/ops_packaging.rs): lintian on the .deb, systemd-analyze on the
# unit, man to render the man page, xz for cargo-deb (built without its own lzma),
# rpmbuild for the RPM, the python3 venv module for kubernetes-validate below.
command -v lintian >/dev/null || need_pkgs+=(lintian)
command -v systemd-analyze >/dev/null || need_pkgs+=(systemd)
command -v man >/dev/null || need_pkgs+=(man-db)
command -v xz >/dev/null || need_pkgs+=(xz-utils)
command -v rpmbuild >/dev/null || need_pkgs+=(rpm)
command -v python3 >/dev/null || need_pkgs+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_pkgs+=(python3-venv)
# The openssl CLI makes the private CA and server certificate of the TLS trust tests
# (tests/it/tls_trust.rs).
command -v openssl >/dev/null || need_pkgs+=(openssl)
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
# both formats, the alert rules and their unit tests (tests/it/ops_metrics.rs,
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

# cargo-deb (crates.io), pinned, without its bundled lzma (the system xz compresses).
CARGO_DEB_VERSION=3.8.0
if ! cargo deb --version 2>/dev/null | grep -q " $CARGO_DEB_VERSION\$"; then
  echo "Installing cargo-deb $CARGO_DEB_VERSION ..."
  cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked --no-default-features
fi

# kubernetes-validate (PyPI; schemas bundled, works offline) in its own venv under .tools/.
if [ -z "${KUBERNETES_VALIDATE:-}" ]; then
  KUBERNETES_VALIDATE="$PWD/.tools/kubernetes-validate/bin/kubernetes-validate"
  if [ ! -x "$KUBERNETES_VALIDATE" ]; then
    echo "Installing kubernetes-validate into .tools/kubernetes-validate ..."
    python3 -m venv .tools/kubernetes-validate
    .tools/kubernetes-validate/bin/pip install -q kubernetes-validate==1.37.0
  fi
fi
export KUBERNETES_VALIDATE

if [ -d ../shared ]; then
  echo "../shared is present: tests also check the official Azure examples and specs."
else
  echo "../shared is absent: tests that read it say so and skip that part."
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The API docs, public and private items, build without a warning (broken intra-doc links,
# bare URLs, stray HTML).
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --document-private-items
# Licences of every dependency: tests/it/licenses.rs (from `cargo metadata`, offline). cargo-deny
# is not used: its advisory database is cloned from GitHub, which CI cannot reach.

# The release .deb (a release build of the binary): checked by tests/it/ops_packaging.rs with
# dpkg-deb and lintian, and run from a scratch root.
rm -f target/debian/vmss-sync_*.deb
cargo deb -p vmss-sync --output target/debian/
VMSS_SYNC_DEB="$(ls "$PWD"/target/debian/vmss-sync_*.deb)"
export VMSS_SYNC_DEB
echo "Debian package: $VMSS_SYNC_DEB ($(stat -c %s "$VMSS_SYNC_DEB") bytes)"

cargo test --workspace --all-targets --no-fail-fast
