#!/usr/bin/env bash
# Throughput and memory benchmarks of the embedded pipeline (docs/benchmarks.md).
#
#   ops/bench.sh              # 100,000 accounts, single calls, vendor limit 1,000 req/s, 20 ms
#   ops/bench.sh batch        # 100,000 accounts, batches of 100, the contract's quota of 50 req/s
#   ops/bench.sh throttled [Q] # 100,000 accounts, single calls, quota Q req/s (default 50), the
#                             # vendor answering 429 to 8% of first attempts whatever the rate
#   ops/bench.sh million      # 1,000,000 accounts, batches of 100, the limit lifted
#   ops/bench.sh million-job  # the million day against a standalone simulator: the job's own RSS
#   ops/bench.sh two-days     # 1,000,000 accounts on two consecutive days (the second incremental)
#   ops/bench.sh encrypted [N] # one day of N accounts (default 1,000,000), plaintext then age-encrypted
#   ops/bench.sh state-encrypted [N] # one day of N accounts (default 1,000,000), plaintext stores
#                             # then SQLCipher-encrypted stores ([state] encryption_key_file)
#   ops/bench.sh kafka N      # the single-call 100,000-account day in Kafka mode, N scorers
#   ops/bench.sh kafka-batch N # the batch day (50 req/s) in Kafka mode with N scorer processes
#                             # (Kafka modes: a real broker and registry from ops/services/up.sh)
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
  /usr/bin/time -v "$bin" demo --dir "$dir/demo" --transient-error-rate 0 --permanent-error-rate 0 \
    --partial-rate 0 --no-call-tracking "$@" 2> "$dir/time.txt" | grep -vE '^  (ACC|Account ID)|^first lines|^$'
  grep -E "Elapsed \(wall clock\)|Maximum resident set size" "$dir/time.txt"
}

# The job's configuration for a standalone simulator on PORT: the vendor at RATE req/s, outputs
# and state under DIR; more sections may be appended.
job_config() {
  local port="$1" rate="$2" base="$3"
  cat <<TOML
[auth]
token_url = "http://127.0.0.1:$port/oauth2/token"
[accounts]
url = "http://127.0.0.1:$port"
client_id = "esg-accounts"
client_secret = "accounts-secret"
[output]
dir = "$base/out"
[state]
dir = "$base/state"
[log]
level = "warn"
[esg_api]
url = "http://127.0.0.1:$port"
client_id = "esg-scorer"
client_secret = "scorer-secret"
rate_limit_per_second = $rate
max_in_flight = 64
TOML
}

# Days of a million accounts (batches, the limit lifted) against a standalone simulator, so the
# peak RSS measured is the job's alone: `million-job` runs one day; `two-days` two consecutive
# days, the second of which finds nothing changed, calls the API for no account, and carries
# every score forward.
standalone_days() {
  local port=18089
  "$bin" simulator --listen "127.0.0.1:$port" --accounts 1000000 --rate-limit 0 --latency-ms 20 \
    > "$dir/sim.log" 2>&1 &
  sim_pid=$!
  trap 'kill "$sim_pid" 2>/dev/null; rm -rf "$dir"' EXIT
  sleep 1
  job_config "$port" 1000000 "$dir" > "$dir/esg.toml"
  for day in "$@"; do
    echo "== esg run --once --business-date $day"
    /usr/bin/time -v "$bin" run --once --config "$dir/esg.toml" --business-date "$day" 2> "$dir/time.txt"
    grep -E "Elapsed \(wall clock\)|Maximum resident set size" "$dir/time.txt"
  done
  curl -s "http://127.0.0.1:$port/_sim/stats"; echo
}

# The cost of encrypting the outputs: one day of N accounts (default 1,000,000; batches, no
# limit) against a standalone simulator, run by `esg run --once` in plaintext and then again with
# [encryption] on fresh state; the encrypted ratings file, decrypted by the age CLI, must be the
# plaintext file byte for byte.
encrypted_day() {
  local accounts="${1:-1000000}" port=18088
  "$bin" simulator --listen "127.0.0.1:$port" --accounts "$accounts" --rate-limit 0 --latency-ms 20 \
    > "$dir/sim.log" 2>&1 &
  sim_pid=$!
  trap 'kill "$sim_pid" 2>/dev/null; rm -rf "$dir"' EXIT
  sleep 1
  age-keygen -o "$dir/officer.key" 2>/dev/null
  local recipient
  recipient="$(age-keygen -y "$dir/officer.key")"
  for mode in plaintext encrypted; do
    job_config "$port" 1000000 "$dir/$mode" > "$dir/$mode.toml"
    if [[ $mode == encrypted ]]; then
      printf '[encryption]\nrecipients = ["%s"]\n' "$recipient" >> "$dir/$mode.toml"
    fi
    echo "== esg run --once, $accounts accounts, $mode"
    /usr/bin/time -v "$bin" run --once --config "$dir/$mode.toml" --business-date 2026-11-23 2> "$dir/time.txt"
    grep -E "Elapsed \(wall clock\)|Maximum resident set size" "$dir/time.txt"
    ls -l "$dir/$mode/out"
  done
  age -d -i "$dir/officer.key" "$dir/encrypted/out/FirmESGRatings_20261123.csv.age" \
    | cmp - "$dir/plaintext/out/FirmESGRatings_20261123.csv" \
    && echo "the decrypted ratings file is the plaintext file byte for byte"
}

# The cost of encrypting the job's own stores: one day of N accounts (default 1,000,000;
# batches, no limit) against a standalone simulator, `esg run --once` on fresh state with
# plaintext SQLite and then with SQLCipher; the two ratings files must be the same bytes.
state_encrypted_day() {
  local accounts="${1:-1000000}" port=18087
  "$bin" simulator --listen "127.0.0.1:$port" --accounts "$accounts" --rate-limit 0 --latency-ms 20 \
    > "$dir/sim.log" 2>&1 &
  sim_pid=$!
  trap 'kill "$sim_pid" 2>/dev/null; rm -rf "$dir"' EXIT
  sleep 1
  (umask 077; openssl rand -hex 32 > "$dir/state.key")
  for mode in plaintext sqlcipher; do
    job_config "$port" 1000000 "$dir/$mode" > "$dir/$mode.toml"
    if [[ $mode == sqlcipher ]]; then
      sed -i "s|^\[state\]\$|[state]\nencryption_key_file = \"$dir/state.key\"|" "$dir/$mode.toml"
    fi
    echo "== esg run --once, $accounts accounts, stores $mode"
    /usr/bin/time -v "$bin" run --once --config "$dir/$mode.toml" --business-date 2026-11-23 2> "$dir/time.txt"
    grep -E "Elapsed \(wall clock\)|Maximum resident set size" "$dir/time.txt"
    du -sh "$dir/$mode/state"
  done
  cmp "$dir/sqlcipher/out/FirmESGRatings_20261123.csv" "$dir/plaintext/out/FirmESGRatings_20261123.csv" \
    && echo "the ratings files are the same bytes"
}

# The 100,000-account day on Kafka: a standalone simulator with the settings of the embedded
# benchmark, `esg assembler` and N `esg scorer` processes, then `esg producer --wait`. Wall time
# is the producer's (trigger to RunCompleted); peak RSS per process.
kafka_day() {
  local scorers="${1:-1}" port=$((18090 + ${1:-1})) prefix
  # Single calls at 1,000 req/s, or batches of 100 at the contract's 50 req/s.
  local rate=1000 batch_size=1
  if [[ "${2:-}" == batch ]]; then rate=50 batch_size=100; fi
  prefix="bench$(date +%s)"
  ./ops/services/fetch.sh all
  local services
  services="$(./ops/services/up.sh)"
  local bootstrap registry
  bootstrap="$(sed -n 's/^KAFKA_BOOTSTRAP=//p' <<<"$services")"
  registry="$(sed -n 's/^SCHEMA_REGISTRY_URL=//p' <<<"$services")"
  cat > "$dir/sim.toml" <<TOML
accounts = 100000
rate_limit_per_second = $rate
burst = $rate
latency = "20ms"
transient_error_rate = 0.0
permanent_error_rate = 0.0
partial_rate = 0.0
track_calls = false
TOML
  "$bin" simulator --listen "127.0.0.1:$port" --config "$dir/sim.toml" > "$dir/sim.log" 2>&1 &
  sim_pid=$!
  pids=()
  # The esg processes run under /usr/bin/time: signal time's child, so time reports.
  trap 'for p in "${pids[@]}"; do pkill -TERM -P "$p"; done; kill "$sim_pid" 2>/dev/null; rm -rf "$dir"' EXIT
  sleep 1
  {
    job_config "$port" "$rate" "$dir"
    cat <<TOML
batch_size = $batch_size
[bus]
kind = "kafka"
topic_prefix = "$prefix."
[scorer]
group = "$prefix-scorer"
[kafka]
bootstrap_servers = "$bootstrap"
[kafka.schema_registry]
url = "$registry"
TOML
  } > "$dir/esg.toml"
  /usr/bin/time -v "$bin" assembler --config "$dir/esg.toml" > "$dir/assembler.log" 2> "$dir/assembler.time" &
  pids+=($!)
  for i in $(seq 1 "$scorers"); do
    /usr/bin/time -v "$bin" scorer --config "$dir/esg.toml" > "$dir/scorer-$i.log" 2> "$dir/scorer-$i.time" &
    pids+=($!)
  done
  sleep 5 # the scorer group settles, as it has by 05:00 in production
  echo "== esg producer --wait, Kafka mode, $scorers scorer(s), $rate req/s, batch_size $batch_size"
  /usr/bin/time -v "$bin" producer --wait --config "$dir/esg.toml" --business-date 2026-11-23 2> "$dir/producer.time"
  grep -E "Elapsed \(wall clock\)|Maximum resident set size" "$dir/producer.time"
  for pid in "${pids[@]}"; do pkill -TERM -P "$pid"; done
  wait "${pids[@]}" 2>/dev/null || true
  pids=()
  for f in "$dir"/assembler.time "$dir"/scorer-*.time; do
    echo "$(basename "$f" .time): $(grep -E 'Maximum resident set size' "$f")"
  done
  cat "$dir"/scorer-*.log
  curl -s "http://127.0.0.1:$port/_sim/stats" | python3 -c '
import json, sys
s = json.load(sys.stdin)
n, refused = s["esg_requests"], s["rate_limited"]
secs = (s["last_esg_request_ms"] - s["first_esg_request_ms"]) / 1000
print("API requests %d (%d answered 429) in %.1f s of scoring: %.0f requests/s" % (n, refused, secs, n / secs))'
}

case "${1:-hundred-thousand}" in
  kafka) kafka_day "${2:-1}" ;;
  kafka-batch) kafka_day "${2:-1}" batch ;;
  batch) run --accounts 100000 --rate-limit 50 --latency-ms 20 --max-in-flight 64 ;;
  throttled) run --accounts 100000 --rate-limit "${2:-50}" --latency-ms 20 --max-in-flight 64 \
    --batch-size 1 --rate-limited-share 0.08 ;;
  million) run --accounts 1000000 --unlimited --max-in-flight 64 --latency-ms 20 ;;
  million-job) standalone_days 2026-11-23 ;;
  two-days) standalone_days 2026-11-23 2026-11-24 ;;
  encrypted) encrypted_day "${2:-1000000}" ;;
  state-encrypted) state_encrypted_day "${2:-1000000}" ;;
  hundred-thousand) run --accounts 100000 --rate-limit 1000 --latency-ms 20 --max-in-flight 64 --batch-size 1 ;;
  *) echo "unknown mode $1 (see the head of $0)" >&2; exit 2 ;;
esac
