#!/usr/bin/env bash
# Throughput and memory benchmarks of the embedded pipeline (docs/benchmarks.md).
#
#   ops/bench.sh            # 100,000 accounts, vendor limit 1,000 req/s, 20 ms latency
#   ops/bench.sh million    # 1,000,000 accounts, the limit lifted
#   ops/bench.sh two-days   # 1,000,000 accounts on two consecutive days (the second incremental)
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

# Two consecutive days of a million accounts against a standalone simulator: the second day
# finds nothing changed, calls the API for no account, and carries every score forward.
two_days() {
  local port=18089
  "$bin" simulator --listen "127.0.0.1:$port" --accounts 1000000 --rate-limit 0 --latency-ms 20 \
    > "$dir/sim.log" 2>&1 &
  sim_pid=$!
  trap 'kill "$sim_pid" 2>/dev/null; rm -rf "$dir"' EXIT
  sleep 1
  cat > "$dir/esg.toml" <<TOML
[auth]
token_url = "http://127.0.0.1:$port/oauth2/token"
[accounts]
url = "http://127.0.0.1:$port"
client_id = "esg-accounts"
client_secret = "accounts-secret"
[esg_api]
url = "http://127.0.0.1:$port"
client_id = "esg-scorer"
client_secret = "scorer-secret"
rate_limit_per_second = 1000000
max_in_flight = 256
[output]
dir = "$dir/out"
[state]
dir = "$dir/state"
[log]
level = "warn"
TOML
  for day in 2026-11-23 2026-11-24; do
    echo "== esg run --once --business-date $day"
    /usr/bin/time -v "$bin" run --once --config "$dir/esg.toml" --business-date "$day" 2> "$dir/time.txt"
    grep -E "Elapsed \(wall clock\)|Maximum resident set size" "$dir/time.txt"
  done
  curl -s "http://127.0.0.1:$port/_sim/stats"; echo
}

case "${1:-hundred-thousand}" in
  million) run --accounts 1000000 --unlimited --max-in-flight 256 --latency-ms 20 ;;
  two-days) two_days ;;
  *) run --accounts 100000 --rate-limit 1000 --latency-ms 20 --max-in-flight 64 ;;
esac
