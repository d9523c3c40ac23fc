#!/usr/bin/env bash
# Owns a three-node Kafka cluster on 127.0.0.1 for the tests, the demo and the benchmark
# that need more than the single broker (ops/kafka/broker.sh stays the default): three
# KRaft nodes, each a broker and one voter of a static controller quorum, from the same
# Maven artifacts (ops/kafka/pom.xml), each run by broker.sh in a directory of its own
# under $KAFKA_CLUSTER_DIR. Internal topics get three replicas and min ISR 2; topics
# created without a replication factor too (`orderflow topics apply` sets its own).
#
#   ops/kafka/cluster.sh start|stop|status|brokers
#   ops/kafka/cluster.sh start-node|stop-node|kill-node|pid N     (N = 1, 2 or 3)
#
# `brokers` prints the bootstrap list. `kill-node` is kill -9 (the node's data stays;
# `start-node` brings it back). Env: ORDERFLOW_STATE_DIR (/var/lib/orderflow),
# KAFKA_CLUSTER_DIR ($ORDERFLOW_STATE_DIR/kafka-cluster), KAFKA_CLUSTER_PORTS
# (19092,19093,19094: the brokers' ports), KAFKA_CLUSTER_CONTROLLER_PORTS
# (19192,19193,19194), KAFKA_CLUSTER_HEAP (384m per node), KAFKA_CLUSTER_JVM_OPTS
# (-XX:TieredStopAtLevel=1, below; empty for the JVM's defaults), KAFKA_EXTRA_PROPERTIES
# (appended to every node's server.properties), KAFKA_START_TIMEOUT (120), KAFKA_FRESH
# (1: nodes this script starts begin with empty storage).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE_DIR="${ORDERFLOW_STATE_DIR:-/var/lib/orderflow}"
DIR="${KAFKA_CLUSTER_DIR:-$STATE_DIR/kafka-cluster}"
IFS=, read -r -a PORTS <<<"${KAFKA_CLUSTER_PORTS:-19092,19093,19094}"
IFS=, read -r -a CPORTS <<<"${KAFKA_CLUSTER_CONTROLLER_PORTS:-19192,19193,19194}"

say() { echo "cluster: $*"; }
die() { echo "cluster: $*" >&2; exit 1; }

((${#PORTS[@]} == 3 && ${#CPORTS[@]} == 3)) ||
  die "KAFKA_CLUSTER_PORTS and KAFKA_CLUSTER_CONTROLLER_PORTS must each name three ports."

VOTERS="1@127.0.0.1:${CPORTS[0]},2@127.0.0.1:${CPORTS[1]},3@127.0.0.1:${CPORTS[2]}"
# What a cluster needs beyond the single broker's settings: fewer partitions of the
# group offsets topic (three replicas each, and the broker's open files are limited), a
# follower that stops fetching for 10 s leaves the ISR (30 s by default), and topics
# created without a spec are replicated like the spec's.
CLUSTER_PROPERTIES="offsets.topic.num.partitions=12
default.replication.factor=3
min.insync.replicas=2
replica.lag.time.max.ms=10000"

# The nodes' JIT: C1 only (KAFKA_CLUSTER_JVM_OPTS replaces this; empty: the JVM's default,
# C1 then C2). Every demo, benchmark and chaos run starts this cluster cold, and the chaos
# run restarts each node under load; C2 compiling the broker's hot paths anew in every
# fresh JVM took 41-47 % of the three nodes' CPU over a 20,000-order benchmark (C2's
# compiler threads 17-24 CPU s against 6-10 s of request handling, on the two cores the
# pipeline shares; per thread, 2026-12-03). C1 code handles requests with about twice
# C2's CPU but compiled for 0.7 s, so the cold cluster carried 815 orders/s instead of
# 334-670 and its nodes spent 0.99 ms of CPU per order instead of 1.69-2.77 (README,
# benchmarks). A cluster kept running is better off with the default (C2 warm: 0.75 ms).
JVM_OPTS="-XX:TieredStopAtLevel=1"

brokers() {
  local list=() p
  for p in "${PORTS[@]}"; do list+=("127.0.0.1:$p"); done
  (IFS=,; echo "${list[*]}")
}

# node N ARGS...: broker.sh for node N, in its own directory and on its own ports.
node() {
  local n=$1
  shift
  ORDERFLOW_STATE_DIR="$DIR/node-$n" KAFKA_LIB="$DIR/lib" KAFKA_NODE_ID="$n" \
    KAFKA_PORT="${PORTS[n - 1]}" KAFKA_CONTROLLER_PORT="${CPORTS[n - 1]}" \
    KAFKA_QUORUM_VOTERS="$VOTERS" KAFKA_CLUSTER_ID="$(cat "$DIR/cluster.id")" \
    KAFKA_HEAP="${KAFKA_CLUSTER_HEAP:-384m}" KAFKA_JVM_OPTS="${KAFKA_CLUSTER_JVM_OPTS-$JVM_OPTS}" \
    KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-120}" \
    KAFKA_EXTRA_PROPERTIES="$CLUSTER_PROPERTIES${KAFKA_EXTRA_PROPERTIES:+
$KAFKA_EXTRA_PROPERTIES}" \
    bash "$HERE/broker.sh" "$@"
}

# How many brokers node N's metadata lists (registered and not fenced): a Metadata v1
# request naming no topics (api key 3, correlation id 0x4f46); the answer starts with the
# correlation id and the broker array's length.
brokers_seen() {
  local hex
  # shellcheck disable=SC2016 # $1 is expanded by the inner bash
  hex=$(timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf "\x00\x00\x00\x0e\x00\x03\x00\x01\x00\x00\x4f\x46\xff\xff\x00\x00\x00\x00" >&3
    head -c 12 <&3 | od -An -tx1' _ "${PORTS[$1 - 1]}" 2>/dev/null | tr -d ' \n') || return 1
  [[ ${hex:8:8} == 00004f46 ]] && echo $((16#${hex:16:8}))
}

# A node answers (broker.sh's readiness) before the others' registrations reach its
# metadata: `topics apply` right after the start once counted two brokers and refused
# three replicas. Waits until every node lists all three.
wait_all_registered() {
  local n deadline=$((SECONDS + ${KAFKA_START_TIMEOUT:-120}))
  for n in 1 2 3; do
    until [[ $(brokers_seen "$n") == 3 ]]; do
      ((SECONDS < deadline)) || return 1
      sleep 0.2
    done
  done
}

check_node() {
  [[ ${1:-} =~ ^[123]$ ]] || die "name a node: 1, 2 or 3."
}

# The jars once for the three nodes: the shared broker's when they are of this pom,
# Maven otherwise; and the cluster id every node is formatted with, made once.
prepare() {
  local shared="$STATE_DIR/kafka/lib"
  mkdir -p "$DIR"
  if [[ ! -d $DIR/lib && -f $shared/.pom.sha256 ]]; then cp -a "$shared" "$DIR/lib"; fi
  if [[ ! -s $DIR/cluster.id ]]; then
    # A Kafka cluster id: 16 random bytes in URL-safe base64 without padding, drawn again
    # while it starts with '-' (as Kafka's own random-uuid does): `kafka-storage format -t`
    # would read such an id as an option, and every node fails to format (1 start in 64).
    local id=-
    while [[ $id == -* ]]; do
      id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
    done
    echo "$id" >"$DIR/cluster.id"
  fi
  ORDERFLOW_STATE_DIR="$DIR/node-1" KAFKA_LIB="$DIR/lib" bash "$HERE/broker.sh" jars
}

# Runs `node N ACTION` for the three nodes at once: a node of a static quorum only
# finishes starting once a majority of the voters is up, so they cannot start in turn.
all() {
  local action=$1 n pids=() failed=0
  for n in 1 2 3; do
    { node "$n" "$action" 2>&1 | sed -u "s/^/node $n: /"; } &
    pids+=($!)
  done
  for n in "${!pids[@]}"; do wait "${pids[n]}" || failed=1; done
  return "$failed"
}

start() {
  local t0=$SECONDS
  prepare
  if [[ ${KAFKA_FRESH:-0} == 1 ]]; then
    say "KAFKA_FRESH=1: discarding the nodes' data."
    rm -rf "$DIR"/node-*/kafka/data "$DIR"/node-*/kafka/cluster.id
  fi
  all start || { all stop >/dev/null 2>&1 || true; die "the cluster did not start; the nodes' output is above."; }
  wait_all_registered || { all stop >/dev/null 2>&1 || true; die "the nodes answer, but not every one lists all three brokers within ${KAFKA_START_TIMEOUT:-120} s; stopped them (logs: $DIR/node-N/kafka/broker.log)."; }
  say "ready on $(brokers) ($((SECONDS - t0)) s); logs: $DIR/node-N/kafka/broker.log."
}

case "${1:-}" in
  start) start ;;
  stop) all stop; say "stopped." ;;
  status)
    failed=0
    for n in 1 2 3; do node "$n" status | sed "s/^/node $n: /" || failed=1; done
    exit "$failed" ;;
  brokers) brokers ;;
  start-node) check_node "${2:-}"; prepare >/dev/null; node "$2" start ;;
  stop-node) check_node "${2:-}"; node "$2" stop ;;
  pid)
    check_node "${2:-}"
    cat "$DIR/node-$2/kafka/broker.pid" 2>/dev/null || die "node $2 is not running." ;;
  kill-node)
    check_node "${2:-}"
    pid=$(cat "$DIR/node-$2/kafka/broker.pid" 2>/dev/null) || die "node $2 is not running."
    kill -KILL "$pid" 2>/dev/null || die "node $2 (pid $pid) is not running."
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    rm -f "$DIR/node-$2/kafka/broker.pid"
    say "node $2 (pid $pid) killed with SIGKILL." ;;
  *) echo "usage: $0 start|stop|status|brokers, or start-node|stop-node|kill-node|pid 1|2|3" >&2; exit 2 ;;
esac
