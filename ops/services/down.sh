#!/usr/bin/env bash
# Stop the test services started by ./up.sh: the schema registry and Kafka, both the single-node
# and the 3-node cluster in their default directories (SIGTERM, SIGKILL after 30 s). Data stays in
# target/services/run/ (Kafka keeps its topics; `up.sh --fresh` wipes them).
#
# Usage:
#   down.sh
#   down.sh --help
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
case "${1:-}" in
  "") ;;
  -h | --help) sed -n '2,/^set -euo pipefail/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"; exit 0 ;;
  *) echo "down.sh: error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
esac
rc=0
"$here/registry.sh" stop || rc=1
"$here/kafka.sh" stop || rc=1
exit "$rc"
