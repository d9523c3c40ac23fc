#!/usr/bin/env bash
# Benchmarks the pipeline on this machine, everything co-located (broker, database,
# simulator, stages), release build, fresh topics and database for each run.
#
#   ops/bench.sh throughput [--cluster] [--orders N] [--rate R|max] [--latency-ms MS]
#                           [--dispatch N] [--poll N] [--in-flight N]
#   ops/bench.sh memory [--cluster] [--waiting N]
#
# --cluster: on three brokers (ops/kafka/cluster.sh, started and stopped by the run) with
#   every topic replicated three times, min.insync.replicas 2; the three nodes are measured.
#
# throughput (default: 200,000 orders at `max`, provider latency 20 ms, one process per
#   stage): the orders through dispatch, two status checks each (first after 1 s, the
#   next on a 1 s tier; the simulator completes an order at its second check) and the
#   sink, each followed until its row in PostgreSQL is final; then the raw Kafka ceiling
#   (order events produced with the stages' settings and consumed back, sustained over
#   the run's steady span, at most 60 s). Prints sustained and steady orders/s, latencies
#   from each order's intended send time, CPU seconds, CPU ms per order and peak RSS per
#   process (stages, simulator, the bench itself, broker, PostgreSQL with its backends),
#   and the stages' fetched-versus-handled messages per topic.
# memory (default: 1,000,000 checks): the stages run while the tier topics fill with
#   status checks due in two hours; prints each stage's RSS before, at peak, and after.
#
# Results (a table, JSON, an SVG chart over time): $ORDERFLOW_STATE_DIR/bench/<mode>.*,
# and each run's JSON kept as <mode>-<tag>-<unix time>.json (tag: the commit measured).
# The topics (prefix bench-<time>.) and the database orderflow_bench of a run are removed
# at its end. Env: ORDERFLOW_BENCH_BIN (measure this binary's stages instead of this
# checkout's; the measuring `orderflow bench` and the simulator still come from this
# checkout, so that every binary is measured the same way), ORDERFLOW_BENCH_TAG (names
# that binary in the results; default bin-<start of its sha256>), ORDERFLOW_BENCH_TOOL
# (a prebuilt `orderflow` of this checkout to measure with, skipping the build), and
# those of ops/kafka/broker.sh and ops/postgres/db.sh. Take /tmp/orderflow-bench.lock
# (flock) when others may run benchmarks on the machine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/orderflow/target}"
STATE="${ORDERFLOW_STATE_DIR:-/var/lib/orderflow}/bench"
die() { echo "bench: $*" >&2; exit 2; }
say() { echo "bench: $*" >&2; }

mode=${1:-throughput}
[[ $# -gt 0 ]] && shift
orders=200000 rate=max latency=20 dispatchers=1 pollers=1 in_flight=256 waiting=1000000
CLUSTER=0
while [[ $# -gt 0 ]]; do
  if [[ $1 == --cluster ]]; then CLUSTER=1; shift; continue; fi
  [[ $# -ge 2 ]] || die "option $1 needs a value"
  case $1 in
    --orders) orders=$2 ;;
    --rate) rate=$2 ;;
    --latency-ms) latency=$2 ;;
    --dispatch) dispatchers=$2 ;;
    --poll) pollers=$2 ;;
    --in-flight) in_flight=$2 ;;
    --waiting) waiting=$2 ;;
    *) die "unknown option $1 (see the top of ops/bench.sh)" ;;
  esac
  shift 2
done
[[ $mode == throughput || $mode == memory ]] || die "the mode is throughput or memory, not $mode"

SIM_BIN=""
# shellcheck source=ops/lib/pipeline.sh
source ops/lib/pipeline.sh
start_kafka
bash ops/postgres/db.sh start >&2
# TOOL measures (orderflow bench) and simulates the provider: always this checkout's.
# BIN is measured: its stages, topics, migrations and PIN key.
if [[ -n ${ORDERFLOW_BENCH_TOOL:-} ]]; then
  TOOL=$ORDERFLOW_BENCH_TOOL
else
  say "building orderflow (release)."
  cargo build --locked --quiet --release -p orderflow
  TOOL="$CARGO_TARGET_DIR/release/orderflow"
fi
tool_commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -z $(git status --porcelain --untracked-files=no 2>/dev/null) ]] || tool_commit+="-dirty"
if [[ -n ${ORDERFLOW_BENCH_BIN:-} ]]; then
  BIN=$ORDERFLOW_BENCH_BIN # a binary built elsewhere (another commit, other features)
  [[ -x $BIN ]] || die "ORDERFLOW_BENCH_BIN=$BIN is not an executable"
  tag=${ORDERFLOW_BENCH_TAG:-bin-$(sha256sum "$BIN" | cut -c1-12)}
else
  BIN=$TOOL
  tag=${ORDERFLOW_BENCH_TAG:-$tool_commit}
fi
SIM_BIN=$TOOL
mkdir -p "$STATE"

# A fresh world: topics under a new prefix (earlier runs' are deleted), an empty database.
"$BIN" topics delete --topic-prefix bench- >&2
run="bench-$(date +%s)"
export ORDERFLOW_TOPIC_PREFIX="$run."
export ORDERFLOW_DISPATCH_GROUP="$run.dispatch" ORDERFLOW_POLL_GROUP="$run.poll" ORDERFLOW_SINK_GROUP="$run.sink"
export ORDERFLOW_FIRST_CHECK=1s ORDERFLOW_CHECK_TIERS=1s,2s
export ORDERFLOW_DISPATCH_MAX_IN_FLIGHT=$in_flight ORDERFLOW_POLL_MAX_IN_FLIGHT=$in_flight
fresh_database orderflow_bench
finish() {
  stop_all
  "$BIN" topics delete --topic-prefix "$run." >&2 || true
  bash ops/postgres/db.sh psql -qc "DROP DATABASE IF EXISTS orderflow_bench WITH (FORCE)" >/dev/null || true
  stop_cluster
}
trap finish EXIT
"$BIN" topics apply >/dev/null
"$BIN" migrate >/dev/null

start_sim "${ORDERFLOW_BENCH_SIM_PORT:-18091}" --latency-ms "$latency" --checks-until-complete 1 \
  --balance-lira 1000000000
# The caps are the account's across every process: as many calls at once as all of them
# may have in flight.
write_accounts "$((in_flight * (dispatchers + pollers)))" 1000000
ensure_pin_key
for i in $(seq "$dispatchers"); do start_stage "dispatch-$i" dispatch; done
for i in $(seq "$pollers"); do start_stage "poll-$i" poll; done
start_stage sink sink
wait_ready
say "ready: $dispatchers dispatch, $pollers poll, 1 sink; provider latency $latency ms."

# How long the broker has been up (the youngest, with --cluster) goes in the run's label: a
# freshly started broker's JVM compiles its hot paths for minutes, which a run's first
# seconds show (README, the 1,000/s target).
broker_uptime() {
  local pid up youngest=
  for pid in $(process_flags | sed -n 's/^--process kafka[-0-9]*=//p'); do
    up=$(ps -o etimes= -p "$pid" 2>/dev/null | tr -d ' ' || true)
    if [[ -n $up ]] && [[ -z $youngest || $up -lt $youngest ]]; then youngest=$up; fi
  done
  if [[ -n $youngest ]]; then echo ", up $((youngest / 60)) min"; fi
}
kafka_label="one broker$(broker_uptime)"
[[ $CLUSTER == 1 ]] && kafka_label="three brokers, replication 3, min ISR 2$(broker_uptime)"
# shellcheck disable=SC2046 # one flag per word
case $mode in
  throughput)
    "$TOOL" bench throughput --orders "$orders" --rate "$rate" --account znet-demo \
      --reject-share 0 --invalid-share 0 --wait-secs 900 $(process_flags) $(metrics_flags) \
      --out "$STATE" --tag "$tag" \
      --label "provider latency $latency ms, $dispatchers dispatch, $pollers poll, in flight $in_flight, $kafka_label, release build, bench tool $tool_commit" ;;
  memory)
    "$TOOL" bench memory --waiting "$waiting" --account znet-demo $(process_flags) --out "$STATE" \
      --tag "$tag" --label "$dispatchers dispatch, $pollers poll, $kafka_label, release build, bench tool $tool_commit" ;;
esac
