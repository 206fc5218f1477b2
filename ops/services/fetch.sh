#!/usr/bin/env bash
# Fetch the test services from Maven Central into $ESG_SERVICES_DIR (default target/services):
#   kafka/libs      Apache Kafka broker (kafka_2.13 with its runtime dependencies and log4j 2)
#   apicurio/       Apicurio Registry (Quarkus app, Confluent-compatible API under /apis/ccompat/v7)
# Idempotent: a service already fetched is left alone. Needs java and mvn.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
dir="${ESG_SERVICES_DIR:-$root/target/services}"
kafka_version="${KAFKA_VERSION:-4.3.1}"
log4j_version="${LOG4J_VERSION:-2.24.3}"
apicurio_version="${APICURIO_VERSION:-3.3.3}"
mkdir -p "$dir"

fetch_kafka() {
  local libs="$dir/kafka-$kafka_version/libs"
  if [[ -f "$dir/kafka-$kafka_version/.complete" ]]; then return; fi
  echo "fetching Apache Kafka $kafka_version from Maven Central into $libs" >&2
  rm -rf "$dir/kafka-$kafka_version"
  mkdir -p "$libs"
  sed -e "s/@KAFKA_VERSION@/$kafka_version/" -e "s/@LOG4J_VERSION@/$log4j_version/" \
    "$here/kafka-pom.xml" > "$dir/kafka-$kafka_version/pom.xml"
  mvn -q -B -f "$dir/kafka-$kafka_version/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$libs" >&2
  touch "$dir/kafka-$kafka_version/.complete"
}

fetch_apicurio() {
  local target="$dir/apicurio-$apicurio_version"
  if [[ -f "$target/.complete" ]]; then return; fi
  echo "fetching Apicurio Registry $apicurio_version from Maven Central into $target" >&2
  rm -rf "$target"
  mkdir -p "$target"
  mvn -q -B dependency:copy \
    -Dartifact="io.apicurio:apicurio-registry-app:$apicurio_version:tar.gz:all" \
    -DoutputDirectory="$target" >&2
  tar -xzf "$target"/apicurio-registry-app-*.tar.gz -C "$target"
  rm -f "$target"/apicurio-registry-app-*.tar.gz
  touch "$target/.complete"
}

case "${1:-all}" in
  kafka) fetch_kafka ;;
  apicurio) fetch_apicurio ;;
  all) fetch_kafka; fetch_apicurio ;;
  *) echo "usage: $0 [kafka|apicurio|all]" >&2; exit 2 ;;
esac
