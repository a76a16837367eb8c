#!/usr/bin/env bash
# Runs every check and test Sluice has, on a fresh machine: formatting, lints, and the test
# suites of every crate. Anything a suite needs beyond the Rust toolchain is installed here.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
