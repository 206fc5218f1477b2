#!/usr/bin/env bash
# The whole test suite: formatting, lints, then every test of the workspace (unit, integration,
# end-to-end against the simulator, kill -9 resume, and Kafka mode on a real Apache Kafka broker
# with a schema registry). Sets up what the tests need on a fresh machine: kcat from Debian,
# Apache Kafka and Apicurio Registry from Maven Central (ops/services/fetch.sh), started with
# ops/services/up.sh and stopped at the end. Where a Docker engine runs, set
# ESG_TEST_USE_DOCKER=1 to have the Kafka tests start their services with testcontainers instead.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export RUST_BACKTRACE=1
# A build from scratch: no incremental state (it doubled the target directory), and debug info
# of line tables only (backtraces keep file and line; the test binaries shrink severalfold).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
export CARGO_PROFILE_DEV_DEBUG="${CARGO_PROFILE_DEV_DEBUG:-line-tables-only}"

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

# Real peers of the tests, from Debian: kcat (a Kafka client), promtool and amtool (Prometheus and
# Alertmanager), an SMTP server (aiosmtpd), openssl (the certificates of the test SMTP server and
# of the Kafka SSL listener), age (the independent reader of the encrypted outputs), OpenSSH's
# sshd and ssh-keygen (the SFTP delivery target's server), headless Chromium (the pages:
# the HTML summary and the dashboard), and libfaketime (the soak runs the job on each business
# day's clock, tests/soak.rs).
missing=()
command -v kcat >/dev/null || missing+=(kcat)
command -v promtool >/dev/null || missing+=(prometheus)
command -v amtool >/dev/null || missing+=(prometheus-alertmanager)
command -v openssl >/dev/null || missing+=(openssl)
command -v age >/dev/null || missing+=(age)
[[ -x /usr/sbin/sshd ]] && command -v ssh-keygen >/dev/null || missing+=(openssh-server)
command -v curl >/dev/null || missing+=(curl)
command -v chromium >/dev/null || missing+=(chromium)
compgen -G "/usr/lib/*/faketime/libfaketime.so.1" >/dev/null || missing+=(faketime)
/usr/bin/python3 -c 'import aiosmtpd' 2>/dev/null || missing+=(python3-aiosmtpd)
if ((${#missing[@]})); then
  echo "== installing ${missing[*]} (Debian)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! python3 -c 'import yaml' 2>/dev/null; then
  echo "== installing PyYAML (checks of ops/kubernetes)"
  python3 -m pip install -q pyyaml
fi

if ! python3 -c 'import duckdb' 2>/dev/null; then
  echo "== installing DuckDB (the warehouse's reader of the Parquet, tests/parquet.rs)"
  python3 -m pip install -q duckdb
fi

echo "== Go's golang.org/x/mod/sumdb/note (the independent reader of the audit checkpoints)"
(cd ops/audit && go mod download)

echo "== test services: SeaweedFS (the S3 delivery target's server) and boto3 (its reader)"
./ops/services/s3.sh install
python3 -c 'import boto3' 2>/dev/null || python3 -m pip install -q boto3

if [[ "${ESG_TEST_USE_DOCKER:-0}" != 1 ]]; then
  echo "== test services: Apache Kafka and Apicurio Registry from Maven Central"
  ./ops/services/fetch.sh all
  services="$(./ops/services/up.sh)"
  trap './ops/services/down.sh >/dev/null 2>&1 || true' EXIT
  ESG_TEST_KAFKA_BOOTSTRAP="$(sed -n 's/^KAFKA_BOOTSTRAP=//p' <<<"$services")"
  ESG_TEST_SCHEMA_REGISTRY_URL="$(sed -n 's/^SCHEMA_REGISTRY_URL=//p' <<<"$services")"
  ESG_TEST_KAFKA_SSL_BOOTSTRAP="$(sed -n 's/^KAFKA_SSL_BOOTSTRAP=//p' <<<"$services")"
  ESG_TEST_KAFKA_TLS_DIR="$(sed -n 's/^KAFKA_TLS_DIR=//p' <<<"$services")"
  ESG_TEST_KAFKA_LOG_DIRS="$(sed -n 's/^KAFKA_LOG_DIRS=//p' <<<"$services")"
  export ESG_TEST_KAFKA_BOOTSTRAP ESG_TEST_SCHEMA_REGISTRY_URL
  export ESG_TEST_KAFKA_SSL_BOOTSTRAP ESG_TEST_KAFKA_TLS_DIR ESG_TEST_KAFKA_LOG_DIRS
  echo "   Kafka at $ESG_TEST_KAFKA_BOOTSTRAP, schema registry at $ESG_TEST_SCHEMA_REGISTRY_URL"
fi

echo "== cargo test"
# The summary below is printed whether or not a test failed.
set +e
cargo test --workspace --locked --no-fail-fast 2>&1 | tee target/test-output.txt
status=${PIPESTATUS[0]}
set -e

echo
echo "== summary"
grep -E "^test result:" target/test-output.txt | awk '
  { passed += $4; failed += $6; ignored += $8 }
  END { printf "%d passed, %d failed\n", passed, failed }'
exit "$status"
