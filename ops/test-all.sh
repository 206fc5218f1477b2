#!/usr/bin/env bash
# The whole test suite: formatting, lints, then every test of the workspace (unit, integration,
# end-to-end against the simulator, kill -9 resume). Needs only the Rust toolchain; everything
# else the tests use is built from crates.io.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export RUST_BACKTRACE=1

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

echo "== cargo test"
cargo test --workspace --locked --no-fail-fast 2>&1 | tee target/test-output.txt
status=${PIPESTATUS[0]}

echo
echo "== summary"
grep -E "^test result:" target/test-output.txt | awk '
  { passed += $4; failed += $6; ignored += $8 }
  END { printf "%d passed, %d failed\n", passed, failed }'
exit "$status"
