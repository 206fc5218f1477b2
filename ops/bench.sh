#!/usr/bin/env bash
# Throughput and memory benchmarks of the embedded pipeline (docs/benchmarks.md).
#
#   ops/bench.sh            # 100,000 accounts, vendor limit 1,000 req/s, 20 ms latency
#   ops/bench.sh million    # 1,000,000 accounts, the limit lifted
#
# Each run is `esg demo` (simulator in-process, no faults, call tracking off) under
# /usr/bin/time -v; it prints the demo's report and the wall time and peak RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked
bin=target/release/esg
dir=$(mktemp -d /tmp/esg-bench.XXXXXX)
trap 'rm -rf "$dir"' EXIT

run() {
  echo "== esg demo $*"
  /usr/bin/time -v "$bin" demo --dir "$dir" --transient-error-rate 0 --permanent-error-rate 0 \
    --partial-rate 0 --no-call-tracking "$@" 2> "$dir/time.txt" | grep -vE '^  (ACC|Account ID)|^first lines|^$'
  grep -E "Elapsed \(wall clock\)|Maximum resident set size" "$dir/time.txt"
}

case "${1:-hundred-thousand}" in
  million) run --accounts 1000000 --unlimited --max-in-flight 256 --latency-ms 20 ;;
  *) run --accounts 100000 --rate-limit 1000 --latency-ms 20 --max-in-flight 64 ;;
esac
