#!/usr/bin/env bash
# Start the services the project's tests use: a single-node Apache Kafka (./kafka.sh) and the
# Apicurio schema registry (./registry.sh), both on 127.0.0.1, started side by side. Returns when
# both are ready and prints exactly five lines on stdout (progress goes to stderr):
#   KAFKA_BOOTSTRAP=127.0.0.1:9092
#   KAFKA_SSL_BOOTSTRAP=127.0.0.1:9292          (TLS listener, client certificate required)
#   KAFKA_TLS_DIR=<dir>/tls                      (ca.pem, client.pem, client.key)
#   KAFKA_LOG_DIRS=<dir>/node-1/data             (the broker's log.dirs: topic partition files)
#   SCHEMA_REGISTRY_URL=http://127.0.0.1:8081/apis/ccompat/v7
# Idempotent: services already running are only reported. Stop them with ./down.sh.
#
# Usage:
#   up.sh [--kafka-port P] [--registry-port P] [--fresh]
#   up.sh --help
#   set -a; eval "$(ops/services/up.sh)"; set +a    # exports the five variables
#
# --fresh wipes the single-node Kafka's data first (the registry always starts empty).
# Environment: as for kafka.sh and registry.sh (ESG_SERVICES_DIR, KAFKA_HEAP_OPTS, ...).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
kafka_args=(start --nodes 1)
registry_args=(start)
while (($#)); do
  case "$1" in
    --kafka-port) kafka_args+=(--port "${2:?--kafka-port needs a number}"); shift 2 ;;
    --registry-port) registry_args+=(--port "${2:?--registry-port needs a number}"); shift 2 ;;
    --fresh) kafka_args+=(--fresh); shift ;;
    -h | --help) sed -n '2,/^set -euo pipefail/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "up.sh: error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

registry_out="$(mktemp)"
trap 'rm -f "$registry_out"' EXIT
"$here/registry.sh" "${registry_args[@]}" >"$registry_out" &
registry_job=$!
kafka_rc=0
kafka_line="$("$here/kafka.sh" "${kafka_args[@]}")" || kafka_rc=$?
registry_rc=0
wait "$registry_job" || registry_rc=$?

if ((kafka_rc != 0 || registry_rc != 0)); then
  ((kafka_rc == 0)) || echo "up.sh: error: Kafka did not start (see above)" >&2
  ((registry_rc == 0)) || echo "up.sh: error: the schema registry did not start (see above)" >&2
  echo "up.sh: run ops/services/down.sh to stop whatever did start" >&2
  exit 1
fi
echo "$kafka_line"
cat "$registry_out"
