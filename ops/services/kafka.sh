#!/usr/bin/env bash
# Run a real Apache Kafka 4.x cluster for tests on 127.0.0.1, without Docker: 1 or 3 nodes in
# KRaft combined mode (each node is broker and controller), static controller quorum, jars from
# Maven Central (fetched by ./fetch.sh kafka into target/services/kafka-<version>/libs).
#
# Usage:
#   kafka.sh start [--nodes 1|3] [--dir DIR] [--port P] [--timeout SECS] [--fresh]
#   kafka.sh stop [--nodes 1|3] [--dir DIR]
#   kafka.sh kill-node N [--nodes 3] [--dir DIR]           SIGKILL node N (failover tests)
#   kafka.sh start-node N [--nodes 3] [--dir DIR] [--timeout SECS]
#   kafka.sh status [--nodes 1|3] [--dir DIR]             exit 0 only if every node answers
#   kafka.sh --help
#
# `start` formats the storage the first time only, starts the nodes and returns once every node
# answers a metadata request and (3 nodes) every broker is registered. It then prints four lines
# on stdout, `KAFKA_BOOTSTRAP=127.0.0.1:P1,...`, `KAFKA_SSL_BOOTSTRAP=...`, `KAFKA_TLS_DIR=...` and
# `KAFKA_LOG_DIRS=DIR/node-1/data,...` (each node's log.dirs: the topics' partition directories,
# for tests that look at what is on the brokers' disks); progress goes to stderr. Starting a
# cluster that is already running just waits for it to be ready and prints the same lines.
# --fresh deletes the cluster in DIR (topics, offsets) before starting; it must be stopped.
# `start-node` returns once node N answers and lists every running node: it is a registered,
# unfenced broker again, though its replicas may still be catching up (wait for the ISR in the
# test if it matters).
# Node i serves clients on P+i-1 (PLAINTEXT), on P+200+i-1 over TLS (listener SSL, mutual TLS:
# a client certificate of the test CA is required) and its controller on P+100+i-1 (P: 9092 for
# 1 node, 19092 for 3). `start` also prints `KAFKA_SSL_BOOTSTRAP=127.0.0.1:P+200,...` and
# `KAFKA_TLS_DIR=DIR/tls`, which holds ca.pem (the CA to trust), client.pem and client.key (a
# client certificate it issued), made with openssl the first time.
# Files: DIR/cluster.env (nodes, port, cluster id), DIR/tls/, DIR/node-N/{server.properties,
# log4j2.properties, server.log, stdout.log, pid, data/}.
# Default DIR: <repo>/target/services/run/kafka-<nodes>. Without --dir/--nodes, stop and status act
# on both default clusters; kill-node and start-node act on the 3-node one.
# Environment: ESG_SERVICES_DIR (default <repo>/target/services), KAFKA_VERSION (default 4.3.1),
# KAFKA_HEAP_OPTS (default -Xms128m -Xmx512m), KAFKA_START_TIMEOUT (seconds, default 90).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
services="${ESG_SERVICES_DIR:-$root/target/services}"
kafka_version="${KAFKA_VERSION:-4.3.1}"
libs="$services/kafka-$kafka_version/libs"
heap_opts="${KAFKA_HEAP_OPTS:--Xms128m -Xmx512m}"
controller_offset=100
ssl_offset=200
launched=() # pids of the nodes started by this invocation, stopped again if start-up fails

# True while process $1 exists and is not a zombie (an unreaped zombie counts as stopped).
alive() {
  local state
  kill -0 "$1" 2>/dev/null || return 1
  state="$(sed -n "s/^[0-9]* (.*) \\([A-Z]\\).*/\\1/p" "/proc/$1/stat" 2>/dev/null)"
  [[ "$state" != Z ]]
}

usage() { sed -n '2,/^set -euo pipefail/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"; }
log() { echo "kafka.sh: $*" >&2; }
die() {
  log "error: $*"
  stop_launched
  exit 1
}
stop_launched() {
  if ((${#launched[@]})); then
    log "stopping the node(s) this command started (pids ${launched[*]})"
    stop_pids "${launched[@]}"
  fi
}

# ---- configuration recorded per cluster directory -------------------------------------------

default_dir() { echo "$services/run/kafka-$1"; }

# Reads DIR/cluster.env into rec_nodes, rec_port, rec_cluster_id (empty when absent).
read_record() {
  rec_nodes="" rec_port="" rec_cluster_id=""
  local file="$1/cluster.env" key value
  [[ -f "$file" ]] || return 0
  while IFS='=' read -r key value; do
    case "$key" in
      NODES) rec_nodes="$value" ;;
      PORT) rec_port="$value" ;;
      CLUSTER_ID) rec_cluster_id="$value" ;;
    esac
  done <"$file"
}

client_port() { echo $((port + $1 - 1)); }
controller_port() { echo $((port + controller_offset + $1 - 1)); }
ssl_port() { echo $((port + ssl_offset + $1 - 1)); }

ssl_bootstrap() {
  local i out=""
  for ((i = 1; i <= nodes; i++)); do out+="${out:+,}127.0.0.1:$(ssl_port "$i")"; done
  echo "$out"
}

# A test CA, the brokers' certificate (127.0.0.1, localhost) as a PEM key store, and a client
# certificate, in DIR/tls; made once (P-256 keys, 10 years).
make_tls() {
  local tls="$dir/tls"
  [[ -s "$tls/broker-keystore.pem" && -s "$tls/client.key" ]] && return 0
  log "making the test CA and certificates in $tls"
  mkdir -p "$tls"
  chmod 0700 "$tls"
  (
    cd "$tls"
    umask 077
    ec() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }
    ec ca.key
    openssl req -x509 -new -key ca.key -subj "/CN=esg test Kafka CA" -days 3650 \
      -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.pem
    issue() { # name, subject, extensions
      ec "$1.key"
      openssl req -new -key "$1.key" -subj "$2" -out "$1.csr"
      printf '%s\n' "$3" >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
        -extfile "$1.ext" -out "$1.pem"
      rm -f "$1.csr" "$1.ext"
    }
    issue broker "/CN=localhost" "subjectAltName=IP:127.0.0.1,DNS:localhost
extendedKeyUsage=serverAuth,clientAuth"
    issue client "/CN=esg" "extendedKeyUsage=clientAuth"
    # Kafka's PEM key store: the unencrypted PKCS#8 key, then the certificate chain.
    cat broker.key broker.pem ca.pem >broker-keystore.pem
    chmod 0644 ca.pem client.pem
  ) >>"$dir/tls.log" 2>&1 || { tail -n 20 "$dir/tls.log" >&2; die "making the test certificates failed"; }
}

bootstrap() {
  local i out=""
  for ((i = 1; i <= nodes; i++)); do out+="${out:+,}127.0.0.1:$(client_port "$i")"; done
  echo "$out"
}

# Every node's log.dirs, comma separated.
log_dirs() {
  local i out=""
  for ((i = 1; i <= nodes; i++)); do out+="${out:+,}$dir/node-$i/data"; done
  echo "$out"
}

write_node_config() {
  local i="$1" node_dir="$dir/node-$1" voters="" j rf isr
  for ((j = 1; j <= nodes; j++)); do voters+="${voters:+,}$j@127.0.0.1:$(controller_port "$j")"; done
  if ((nodes == 1)); then rf=1 isr=1; else rf=3 isr=2; fi
  mkdir -p "$node_dir/data"
  cat >"$node_dir/server.properties" <<EOF
# Generated by ops/services/kafka.sh; rewritten on every start.
process.roles=broker,controller
node.id=$i
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$(client_port "$i"),CONTROLLER://127.0.0.1:$(controller_port "$i"),SSL://127.0.0.1:$(ssl_port "$i")
advertised.listeners=PLAINTEXT://127.0.0.1:$(client_port "$i"),SSL://127.0.0.1:$(ssl_port "$i")
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SSL:SSL

# The SSL listener: PEM key and trust stores, a client certificate of the test CA required.
listener.name.ssl.ssl.keystore.type=PEM
listener.name.ssl.ssl.keystore.location=$dir/tls/broker-keystore.pem
listener.name.ssl.ssl.truststore.type=PEM
listener.name.ssl.ssl.truststore.location=$dir/tls/ca.pem
listener.name.ssl.ssl.client.auth=required
listener.name.ssl.ssl.enabled.protocols=TLSv1.3,TLSv1.2
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
log.dirs=$node_dir/data

num.partitions=1
default.replication.factor=$rf
min.insync.replicas=$isr
auto.create.topics.enable=false
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=5
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
transaction.state.log.num.partitions=5
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
share.coordinator.state.topic.num.partitions=5

# Fast tests: no initial rebalance delay, short group session timeouts allowed.
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000

# Compaction on, checked every second; a small dedupe buffer fits the 512 MB heap. Segments that
# compaction (or retention) replaced are deleted from disk 1 s later rather than 60 s, so that the
# erasure test sees an erased record leave the disk soon (topic setting file.delete.delay.ms).
log.cleaner.enable=true
log.cleaner.backoff.ms=1000
log.cleaner.dedupe.buffer.size=16777216
log.segment.delete.delay.ms=1000

# Fast failure detection for failover tests (defaults: 2000 / 9000 / 30000 ms).
broker.heartbeat.interval.ms=1000
broker.session.timeout.ms=6000
replica.lag.time.max.ms=10000

num.network.threads=2
num.io.threads=4
EOF
  cat >"$node_dir/log4j2.properties" <<EOF
# Generated by ops/services/kafka.sh: everything at INFO into server.log.
status = warn
shutdownHook = disable
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $node_dir/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.request.name = kafka.request.logger
logger.request.level = WARN
EOF
}

# ---- processes --------------------------------------------------------------------------------

# Prints the pid of node N when it is running (a java process on this node's config), else fails.
node_pid() {
  local node_dir="$dir/node-$1" pid
  [[ -f "$node_dir/pid" ]] || return 1
  pid="$(<"$node_dir/pid")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  alive "$pid" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "kafka.Kafka $node_dir/server.properties" || return 1
  echo "$pid"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

ensure_libs() {
  if ! compgen -G "$libs/kafka_2.13-*.jar" >/dev/null; then
    log "Kafka $kafka_version jars missing in $libs; running fetch.sh kafka"
    "$here/fetch.sh" kafka
  fi
}

launch_node() {
  local i="$1" node_dir="$dir/node-$1" p
  for p in "$(client_port "$i")" "$(controller_port "$i")" "$(ssl_port "$i")"; do
    port_in_use "$p" && die "port $p (node $i) is already in use by another process"
  done
  make_tls
  write_node_config "$i"
  if [[ ! -f "$node_dir/data/meta.properties" ]]; then
    log "formatting node $i storage (cluster id $cluster_id)"
    java -cp "$libs/*" -Dlog4j2.configurationFile="$node_dir/log4j2.properties" \
      kafka.tools.StorageTool format --ignore-formatted -t "$cluster_id" \
      -c "$node_dir/server.properties" >>"$node_dir/stdout.log" 2>&1 ||
      { tail -n 20 "$node_dir/stdout.log" >&2; die "formatting node $i failed"; }
  fi
  # stdin/stdout/stderr detached so that callers capturing our stdout do not wait for the JVM.
  # shellcheck disable=SC2086 # heap_opts is a list of JVM options
  nohup java $heap_opts -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$node_dir/log4j2.properties" \
    -cp "$libs/*" kafka.Kafka "$node_dir/server.properties" \
    </dev/null >>"$node_dir/stdout.log" 2>&1 &
  echo $! >"$node_dir/pid"
  launched+=("$!")
  log "started node $i (pid $!, clients on 127.0.0.1:$(client_port "$i"))"
}

# Broker ids listed by node N's metadata answer, space separated; fails if N does not answer.
metadata_brokers() {
  local out
  out="$(kcat -L -b "127.0.0.1:$(client_port "$1")" -t __kafka_sh_probe -m 2 2>/dev/null)" || return 1
  grep -q ' brokers:' <<<"$out" || return 1
  sed -n 's/^ *broker \([0-9]*\) at .*/\1/p' <<<"$out" | sort -n | tr '\n' ' '
}

fail_with_log() {
  local i="$1"
  shift
  log "error: $*"
  log "last lines of $dir/node-$i/server.log:"
  tail -n 30 "$dir/node-$i/server.log" >&2 2>/dev/null || true
  tail -n 10 "$dir/node-$i/stdout.log" >&2 2>/dev/null || true
  stop_launched
  exit 1
}

# Waits until every node in "$@" answers metadata and lists every node that is running.
wait_ready() {
  local deadline=$((SECONDS + timeout)) i j pending brokers want
  while :; do
    pending=""
    want=""
    for ((j = 1; j <= nodes; j++)); do node_pid "$j" >/dev/null && want+="$j "; done
    for i in "$@"; do
      node_pid "$i" >/dev/null || fail_with_log "$i" "node $i exited during start-up"
      brokers="$(metadata_brokers "$i")" || { pending="$i"; break; }
      for j in $want; do
        [[ " $brokers" == *" $j "* ]] || { pending="$i"; break 2; }
      done
    done
    [[ -z "$pending" ]] && return 0
    ((SECONDS < deadline)) ||
      fail_with_log "$pending" "node $pending not ready after ${timeout}s (brokers it lists: ${brokers:-none}; running: $want)"
    sleep 0.5
  done
}

stop_pids() {
  local pids=("$@") pid deadline=$((SECONDS + 30)) running
  ((${#pids[@]})) || return 0
  kill -TERM "${pids[@]}" 2>/dev/null || true
  while :; do
    running=()
    for pid in "${pids[@]}"; do alive "$pid" && running+=("$pid"); done
    ((${#running[@]})) || return 0
    if ((SECONDS >= deadline)); then
      log "still running after 30 s, sending SIGKILL to ${running[*]}"
      kill -KILL "${running[@]}" 2>/dev/null || true
      deadline=$((SECONDS + 5))
      while ((SECONDS < deadline)); do
        running=()
        for pid in "${pids[@]}"; do alive "$pid" && running+=("$pid"); done
        ((${#running[@]})) || return 0
        sleep 0.1
      done
      return 0
    fi
    sleep 0.2
  done
}

# ---- subcommands ------------------------------------------------------------------------------

cmd_start() {
  read_record "$dir"
  if [[ -n "$fresh" && -f "$dir/cluster.env" ]]; then
    local i
    for ((i = 1; i <= ${rec_nodes:-3}; i++)); do
      node_pid "$i" >/dev/null && die "--fresh: a node is running in $dir; stop it first"
    done
    log "--fresh: removing the cluster in $dir"
    rm -rf "$dir"/node-* "$dir/cluster.env" "$dir/tls" "$dir/tls.log"
    read_record "$dir"
  fi
  if [[ -n "$rec_nodes" ]]; then
    [[ -z "$opt_nodes" || "$opt_nodes" == "$rec_nodes" ]] ||
      die "$dir holds a $rec_nodes-node cluster; use --nodes $rec_nodes, another --dir, or --fresh"
    [[ -z "$opt_port" || "$opt_port" == "$rec_port" ]] ||
      die "$dir was set up with port $rec_port; use --port $rec_port, another --dir, or --fresh"
    nodes="$rec_nodes" port="$rec_port" cluster_id="$rec_cluster_id"
  else
    ensure_libs
    nodes="${opt_nodes:-1}"
    port="${opt_port:-$([[ "$nodes" == 1 ]] && echo 9092 || echo 19092)}"
    cluster_id="$(java -cp "$libs/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)"
    [[ "$cluster_id" =~ ^[A-Za-z0-9_-]{22}$ ]] || die "could not generate a cluster id (got '$cluster_id')"
    mkdir -p "$dir"
    printf 'NODES=%s\nPORT=%s\nCLUSTER_ID=%s\n' "$nodes" "$port" "$cluster_id" >"$dir/cluster.env"
  fi
  ensure_libs
  local i all=() started=0 t0=$SECONDS
  for ((i = 1; i <= nodes; i++)); do
    all+=("$i")
    if node_pid "$i" >/dev/null; then
      log "node $i already running"
    else
      launch_node "$i"
      started=1
    fi
  done
  wait_ready "${all[@]}"
  if ((started)); then
    log "cluster ready in $dir ($nodes node(s), $((SECONDS - t0)) s)"
  else
    log "cluster already running in $dir"
  fi
  echo "KAFKA_BOOTSTRAP=$(bootstrap)"
  echo "KAFKA_SSL_BOOTSTRAP=$(ssl_bootstrap)"
  echo "KAFKA_TLS_DIR=$dir/tls"
  echo "KAFKA_LOG_DIRS=$(log_dirs)"
}

cmd_stop() {
  local i pid pids=()
  for ((i = 1; i <= nodes; i++)); do
    if pid="$(node_pid "$i")"; then pids+=("$pid"); fi
  done
  if ((${#pids[@]} == 0)); then
    log "nothing running in $dir"
    return 0
  fi
  log "stopping ${#pids[@]} node(s) in $dir (pids ${pids[*]})"
  stop_pids "${pids[@]}"
  for ((i = 1; i <= nodes; i++)); do rm -f "$dir/node-$i/pid"; done
  log "stopped"
}

cmd_kill_node() {
  local n="$1" pid
  pid="$(node_pid "$n")" || die "node $n is not running in $dir"
  kill -KILL "$pid"
  local deadline=$((SECONDS + 10))
  while alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
  log "killed node $n (pid $pid)"
}

cmd_start_node() {
  local n="$1"
  ensure_libs
  if node_pid "$n" >/dev/null; then
    log "node $n already running"
  else
    launch_node "$n"
  fi
  local t0=$SECONDS
  wait_ready "$n"
  log "node $n ready ($((SECONDS - t0)) s)"
}

cmd_status() {
  local i pid brokers down=0
  echo "$dir: $nodes node(s), bootstrap $(bootstrap)"
  for ((i = 1; i <= nodes; i++)); do
    if pid="$(node_pid "$i")"; then
      if brokers="$(metadata_brokers "$i")"; then
        echo "  node $i: running (pid $pid), port $(client_port "$i") answers, brokers: $brokers"
      else
        echo "  node $i: running (pid $pid), port $(client_port "$i") not answering"
        down=1
      fi
    else
      echo "  node $i: stopped"
      down=1
    fi
  done
  return "$down"
}

# ---- argument parsing -------------------------------------------------------------------------

command="${1:-}"
[[ -n "$command" ]] || { usage >&2; exit 2; }
shift
case "$command" in
  -h | --help | help) usage; exit 0 ;;
esac
case "$command" in
  start | stop | status | kill-node | start-node) ;;
  *) die "unknown command '$command' (see --help)" ;;
esac
node_arg=""
if [[ "$command" == kill-node || "$command" == start-node ]]; then
  [[ "${1:-}" =~ ^[1-9][0-9]*$ ]] || die "$command needs a node number (see --help)"
  node_arg="$1"
  shift
fi
opt_nodes="" opt_dir="" opt_port="" fresh="" timeout="${KAFKA_START_TIMEOUT:-90}"
while (($#)); do
  case "$1" in
    --nodes) opt_nodes="${2:?--nodes needs 1 or 3}"; shift 2 ;;
    --dir) opt_dir="${2:?--dir needs a directory}"; shift 2 ;;
    --port) opt_port="${2:?--port needs a number}"; shift 2 ;;
    --timeout) timeout="${2:?--timeout needs seconds}"; shift 2 ;;
    --fresh) fresh=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ -z "$opt_nodes" || "$opt_nodes" == 1 || "$opt_nodes" == 3 ]] || die "--nodes must be 1 or 3"
[[ -z "$opt_port" || "$opt_port" =~ ^[0-9]+$ ]] || die "--port must be a number"
[[ "$timeout" =~ ^[0-9]+$ ]] || die "--timeout must be a number of seconds"
command -v java >/dev/null || die "java not found"
command -v kcat >/dev/null || die "kcat not found (Debian package kcat)"

# Directories a command acts on: --dir, else the default for --nodes, else a per-command default.
dirs=()
if [[ -n "$opt_dir" ]]; then
  case "$opt_dir" in /*) dirs=("$opt_dir") ;; *) dirs=("$PWD/$opt_dir") ;; esac
elif [[ -n "$opt_nodes" ]]; then
  dirs=("$(default_dir "$opt_nodes")")
else
  case "$command" in
    start) dirs=("$(default_dir 1)") ;;
    kill-node | start-node) dirs=("$(default_dir 3)") ;;
    *) dirs=("$(default_dir 1)" "$(default_dir 3)") ;;
  esac
fi

rc=0 found=0
for dir in "${dirs[@]}"; do
  if [[ "$command" == start ]]; then
    cmd_start
    continue
  fi
  read_record "$dir"
  if [[ -z "$rec_nodes" ]]; then
    if ((${#dirs[@]} == 1)); then
      [[ "$command" == stop ]] && { log "nothing set up in $dir"; continue; }
      [[ "$command" == status ]] && { echo "$dir: not set up"; rc=3; continue; }
      die "no cluster set up in $dir (run kafka.sh start first)"
    fi
    continue
  fi
  found=1
  nodes="$rec_nodes" port="$rec_port" cluster_id="$rec_cluster_id"
  if [[ -n "$node_arg" ]] && ((node_arg > nodes)); then
    die "node $node_arg does not exist: $dir holds $nodes node(s)"
  fi
  case "$command" in
    stop) cmd_stop ;;
    status) cmd_status || rc=3 ;;
    kill-node) cmd_kill_node "$node_arg" ;;
    start-node) cmd_start_node "$node_arg" ;;
    *) die "unknown command '$command' (see --help)" ;;
  esac
done
if ((!found)) && [[ "$command" != start ]] && ((${#dirs[@]} > 1)); then
  [[ "$command" == status ]] && { echo "no Kafka cluster set up in ${dirs[*]}"; exit 3; }
  log "no Kafka cluster set up in ${dirs[*]}"
fi
exit "$rc"
