#!/usr/bin/env bash
# Run Apicurio Registry 3.x for tests on 127.0.0.1, without Docker, and expose its
# Confluent-compatible schema registry API (/apis/ccompat/v7). In-memory storage: every start
# begins empty. The app is fetched from Maven Central by ./fetch.sh apicurio.
#
# Usage:
#   registry.sh start [--port P] [--dir DIR] [--timeout SECS]
#   registry.sh stop [--dir DIR]
#   registry.sh status [--dir DIR]
#   registry.sh --help
#
# `start` returns once GET /apis/ccompat/v7/subjects answers, then prints exactly one line on
# stdout, `SCHEMA_REGISTRY_URL=http://127.0.0.1:P/apis/ccompat/v7`; progress goes to stderr.
# Starting a registry that is already running in DIR only prints that line.
# Default port 8081; the Quarkus management interface (health, metrics) listens on P+1000.
# Behaves like a Confluent registry: global compatibility BACKWARD, enforced when a version is
# registered (409 otherwise); schema ids are Apicurio content ids (one id per distinct schema,
# shared across subjects, resolvable with GET /schemas/ids/N). Subject and version deletion
# (DELETE /subjects/...) is enabled so that tests can clean up.
# Files: DIR/registry.env (port), DIR/registry.log, DIR/pid.
# Default DIR: <repo>/target/services/run/registry.
# Needs Java 21+ (REGISTRY_JAVA, else the first found in JAVA_HOME, PATH or /usr/lib/jvm).
# Environment: ESG_SERVICES_DIR (default <repo>/target/services), APICURIO_VERSION (default
# 3.3.3), REGISTRY_HEAP_OPTS (default -Xms64m -Xmx512m), REGISTRY_COMPATIBILITY (global
# default, BACKWARD), REGISTRY_JAVA_OPTS (extra -D settings, e.g.
# -Dapicurio.ccompat.legacy-id-mode.enabled=true for global ids), REGISTRY_START_TIMEOUT (90).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
services="${ESG_SERVICES_DIR:-$root/target/services}"
apicurio_version="${APICURIO_VERSION:-3.3.3}"
app="$services/apicurio-$apicurio_version"
heap_opts="${REGISTRY_HEAP_OPTS:--Xms64m -Xmx512m}"
extra_opts="${REGISTRY_JAVA_OPTS:-}"
launched="" # pid of the registry started by this invocation, stopped again if start-up fails
compatibility="${REGISTRY_COMPATIBILITY:-BACKWARD}"

# Apicurio Registry 3.3 is compiled for Java 21: use REGISTRY_JAVA, else the first java >= 21 of
# $JAVA_HOME, PATH and /usr/lib/jvm/* (this machine kind has Temurin 25 beside OpenJDK 17).
java_major() { "$1" -version 2>&1 | sed -n '1s/.*version "\(1\.\)\{0,1\}\([0-9]*\).*/\2/p'; }
find_java() {
  local candidate major
  if [[ -n "${REGISTRY_JAVA:-}" ]]; then echo "$REGISTRY_JAVA"; return 0; fi
  for candidate in ${JAVA_HOME:+"$JAVA_HOME/bin/java"} "$(command -v java || true)" /usr/lib/jvm/*/bin/java; do
    [[ -n "$candidate" && -x "$candidate" ]] || continue
    major="$(java_major "$candidate")"
    if [[ "$major" =~ ^[0-9]+$ ]] && ((major >= 21)); then echo "$candidate"; return 0; fi
  done
  return 1
}

# True while process $1 exists and is not a zombie (an unreaped zombie counts as stopped).
alive() {
  local state
  kill -0 "$1" 2>/dev/null || return 1
  state="$(sed -n "s/^[0-9]* (.*) \\([A-Z]\\).*/\\1/p" "/proc/$1/stat" 2>/dev/null)"
  [[ "$state" != Z ]]
}

usage() { sed -n '2,/^set -euo pipefail/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"; }
log() { echo "registry.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

registry_pid() {
  local pid
  [[ -f "$dir/pid" ]] || return 1
  pid="$(<"$dir/pid")"
  [[ "$pid" =~ ^[0-9]+$ ]] && alive "$pid" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "-Desg.registry.dir=$dir " || return 1
  echo "$pid"
}

recorded_port() {
  local key value
  [[ -f "$dir/registry.env" ]] || return 1
  while IFS='=' read -r key value; do [[ "$key" == PORT ]] && { echo "$value"; return 0; }; done <"$dir/registry.env"
  return 1
}

answers() { curl -fsS -m 2 -o /dev/null "http://127.0.0.1:$1/apis/ccompat/v7/subjects" 2>/dev/null; }
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

fail_with_log() {
  log "error: $*"
  log "last lines of $dir/registry.log:"
  tail -n 30 "$dir/registry.log" >&2 2>/dev/null || true
  if [[ -n "$launched" ]]; then
    log "stopping the registry this command started (pid $launched)"
    cmd_stop
  fi
  exit 1
}

cmd_start() {
  local pid rec t0=$SECONDS deadline
  if pid="$(registry_pid)"; then
    rec="$(recorded_port)" || die "registry running in $dir (pid $pid) without $dir/registry.env"
    [[ -z "$opt_port" || "$opt_port" == "$rec" ]] ||
      die "a registry already runs in $dir on port $rec; stop it or use another --dir"
    port="$rec"
    log "registry already running in $dir (pid $pid)"
  else
    port="${opt_port:-8081}"
    local mgmt=$((port + 1000)) p
    for p in "$port" "$mgmt"; do
      port_in_use "$p" && die "port $p is already in use by another process"
    done
    local java_bin
    java_bin="$(find_java)" ||
      die "Apicurio Registry $apicurio_version needs Java 21 or newer and none was found; set REGISTRY_JAVA"
    if [[ ! -f "$app/quarkus-run.jar" ]]; then
      log "Apicurio Registry $apicurio_version missing in $app; running fetch.sh apicurio"
      "$here/fetch.sh" apicurio
    fi
    mkdir -p "$dir"
    printf 'PORT=%s\n' "$port" >"$dir/registry.env"
    # The -Desg.registry.dir marker lets stop/status recognise this process by its command line.
    # stdin/stdout/stderr detached so that callers capturing our stdout do not wait for the JVM.
    # shellcheck disable=SC2086 # heap_opts and extra_opts are lists of JVM options
    (cd "$dir" && exec nohup "$java_bin" $heap_opts -Desg.registry.dir="$dir" \
      -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$port" \
      -Dquarkus.management.host=127.0.0.1 -Dquarkus.management.port="$mgmt" \
      -Dquarkus.http.access-log.enabled=false \
      -Dapicurio.storage.kind=sql -Dapicurio.storage.sql.kind=h2 \
      -Dapicurio.rest.deletion.artifact.enabled=true \
      -Dapicurio.rest.deletion.artifact-version.enabled=true \
      -Dapicurio.rest.deletion.group.enabled=true \
      -Dapicurio.rules.global.compatibility="$compatibility" \
      -Dapicurio.storage.snapshot.location="$dir" -Dapicurio.import.work-dir="$dir" \
      $extra_opts -jar "$app/quarkus-run.jar" \
      </dev/null >>"$dir/registry.log" 2>&1) &
    echo $! >"$dir/pid"
    launched=$!
    log "started Apicurio Registry (pid $!) on 127.0.0.1:$port (management on $mgmt)"
  fi
  deadline=$((SECONDS + timeout))
  until answers "$port"; do
    registry_pid >/dev/null || fail_with_log "the registry exited during start-up"
    ((SECONDS < deadline)) || fail_with_log "the registry did not answer on port $port within ${timeout}s"
    sleep 0.5
  done
  log "registry ready ($((SECONDS - t0)) s)"
  echo "SCHEMA_REGISTRY_URL=http://127.0.0.1:$port/apis/ccompat/v7"
}

cmd_stop() {
  local pid deadline=$((SECONDS + 30))
  if ! pid="$(registry_pid)"; then
    log "nothing running in $dir"
    rm -f "$dir/pid"
    return 0
  fi
  log "stopping the registry in $dir (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  while alive "$pid"; do
    if ((SECONDS >= deadline)); then
      log "still running after 30 s, sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      deadline=$((SECONDS + 5))
      while alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
      break
    fi
    sleep 0.2
  done
  rm -f "$dir/pid"
  log "stopped"
}

cmd_status() {
  local pid port
  if pid="$(registry_pid)"; then
    port="$(recorded_port)" || port="?"
    if answers "$port"; then
      echo "$dir: running (pid $pid), http://127.0.0.1:$port/apis/ccompat/v7 answers"
      return 0
    fi
    echo "$dir: running (pid $pid), port $port not answering"
  else
    echo "$dir: stopped"
  fi
  return 3
}

command="${1:-}"
[[ -n "$command" ]] || { usage >&2; exit 2; }
shift
opt_port="" opt_dir="" timeout="${REGISTRY_START_TIMEOUT:-90}"
while (($#)); do
  case "$1" in
    --port) opt_port="${2:?--port needs a number}"; shift 2 ;;
    --dir) opt_dir="${2:?--dir needs a directory}"; shift 2 ;;
    --timeout) timeout="${2:?--timeout needs seconds}"; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ -z "$opt_port" || "$opt_port" =~ ^[0-9]+$ ]] || die "--port must be a number"
[[ "$timeout" =~ ^[0-9]+$ ]] || die "--timeout must be a number of seconds"
dir="${opt_dir:-$services/run/registry}"
[[ "$dir" == /* ]] || dir="$PWD/$dir"

case "$command" in
  -h | --help | help) usage ;;
  start)
    command -v curl >/dev/null || die "curl not found"
    cmd_start
    ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) die "unknown command '$command' (see --help)" ;;
esac
