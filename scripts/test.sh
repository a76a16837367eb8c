#!/usr/bin/env bash
# Runs every check and test Sluice has, on a fresh machine: formatting, lints, the test suites
# of every crate, and the cross-client suite (kafka-python, confluent-kafka, kcat) in
# tests/clients. Anything a suite needs beyond the Rust toolchain is installed here, and only
# when missing, so a second run installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
# Pinned so every machine tests the same clients; all of them install from wheels.
PYTHON_PINS=('confluent-kafka==2.16.1' 'kafka-python[lz4,snappy,zstd,crc32c]==3.0.12' 'aiokafka==0.13.0' 'pytest==9.2.0')

# --- System packages: kcat (Debian's 1.7.1 on librdkafka 2.0.2, the old client the suite
# wants) and Python's venv support. apt-get runs only if one of them is missing.
apt_needed=()
command -v kcat >/dev/null 2>&1 || apt_needed+=(kcat)
command -v python3 >/dev/null 2>&1 || apt_needed+=(python3)
# Debian splits venv/ensurepip into python3-venv; without it `python3 -m venv` fails.
if ! [ -x "$VENV/bin/pip" ] && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  apt_needed+=(python3-venv)
fi
if ((${#apt_needed[@]})); then
  as_root=()
  if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
      echo "scripts/test.sh needs ${apt_needed[*]}: run it as root, or install them and rerun" >&2
      exit 1
    fi
    as_root=(sudo)
  fi
  echo "installing ${apt_needed[*]} with apt-get"
  ${as_root[@]+"${as_root[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  ${as_root[@]+"${as_root[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_needed[@]}" >/dev/null
fi

# --- Python clients in a venv under the repo (.venv is git-ignored). pip runs only if a pinned
# version is missing or different; --only-binary makes a missing wheel fail loudly instead of
# compiling librdkafka from source.
# A venv whose creation was interrupted has python but no pip: make it again.
[ -x "$VENV/bin/pip" ] || python3 -m venv --clear "$VENV"
if ! "$VENV/bin/python" - "${PYTHON_PINS[@]}" <<'EOF' >/dev/null 2>&1
import importlib.metadata, re, sys
for pin in sys.argv[1:]:
    name, version = re.fullmatch(r"([\w-]+)(?:\[.*\])?==(.+)", pin).groups()
    if importlib.metadata.version(name) != version:
        sys.exit(1)
import confluent_kafka, kafka, aiokafka, pytest, lz4, snappy, zstandard, crc32c  # noqa: E401,F401
EOF
then
  "$VENV/bin/pip" install -q --disable-pip-version-check --only-binary=:all: "${PYTHON_PINS[@]}"
fi

# --- Rust
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked

# --- Cross-client suite against the broker binary (cargo test built it; this makes sure).
cargo build --locked --bin sluice
SLUICE_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/sluice" "$VENV/bin/python" -m pytest tests/clients -q
