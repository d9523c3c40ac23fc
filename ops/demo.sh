#!/usr/bin/env bash
# The main job, locally: broker, database, topics, migrations, the znet simulator (with
# faults), two dispatch processes in one consumer group, two poll processes in another,
# the reconciler, the sink into PostgreSQL, and a realistic load followed to final states
# with a live progress line (created, dispatched, completed, failed, waiting per tier) and
# a summary: from the topics, from PostgreSQL, and per process.
#
#   ops/demo.sh [--cluster] [--orders N] [--rate R|max]   (other `orderflow load` flags pass through)
#
# --cluster: on three brokers (ops/kafka/cluster.sh, started and stopped by the demo) with
# every topic replicated three times, min.insync.replicas 2.
#
# Default: 10,000 orders at 100/s. The simulator answers in 40 ms; 2 % of calls fail
# (5xx, timeouts, HTML, empty bodies, garbage, answers lost after acceptance), 3 % of
# orders are for a denomination it does not sell (rejected), 2 % are cancelled, 5 % are
# slow (three more "processing" answers), and 2 % of events are broken (dead-lettered).
# The schedule is scaled down so the demo ends in minutes: first check 10 s after
# dispatch, then tiers of 5 s, 10 s, 20 s, 40 s (production: 60 s, then 30 s to 10 m), and
# the order deadline is 4 min (production: 24 h).
#
# Env: ORDERFLOW_DEMO_PROFILE (release; `debug` reuses the test build), and those of
# ops/kafka/broker.sh and ops/postgres/db.sh. Each run starts afresh: its own topics
# (prefix demo-<time>.; the previous run's are deleted) and an empty database
# orderflow_demo, which stays until the next run for `orderflow order show`. Everything
# the demo starts is stopped when it ends; the broker and the database server stay up.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/orderflow/target}"
STATE="${ORDERFLOW_STATE_DIR:-/var/lib/orderflow}/demo"
PROFILE="${ORDERFLOW_DEMO_PROFILE:-release}"
mkdir -p "$STATE"
say() { echo "demo: $*"; }
CLUSTER=0
if [[ ${1:-} == --cluster ]]; then CLUSTER=1; shift; fi

BIN="$CARGO_TARGET_DIR/$PROFILE/orderflow"
# shellcheck source=ops/lib/pipeline.sh
source ops/lib/pipeline.sh
start_kafka
bash ops/postgres/db.sh start
say "building orderflow ($PROFILE build; the first build takes a few minutes)."
if [[ $PROFILE == release ]]; then cargo build --locked --quiet --release; else cargo build --locked --quiet; fi

export ORDERFLOW_FIRST_CHECK=10s ORDERFLOW_CHECK_TIERS=5s,10s,20s,40s
"$BIN" topics delete --topic-prefix demo- >/dev/null
export ORDERFLOW_TOPIC_PREFIX="demo-$(date +%s)."
psql_demo() { bash ops/postgres/db.sh psql -d orderflow_demo "$@"; }
fresh_database orderflow_demo
"$BIN" topics apply >/dev/null
"$BIN" migrate >/dev/null

start_sim "${ORDERFLOW_DEMO_SIM_PORT:-18090}" --latency-ms 40 --fault-rate 0.02 \
  --lost-answer-delay-ms 3000 --checks-until-complete 1 --slow-share 0.05 --slow-checks 3 \
  --cancel-rate 0.02 --balance-lira 100000000
# The caps are the account's, shared by all four dispatch and poll processes: 32 calls at once
# for each of them (the simulator's 40 ms answers and the faults' 2 s timeouts hold slots).
write_accounts 128 1000
ensure_pin_key
export ORDERFLOW_DISPATCH_RETRY_MIN_MS=250 ORDERFLOW_DISPATCH_RETRY_MAX_MS=4000
# The order deadline scaled down with the schedule (production: 24 h). An order whose first
# placement call went unanswered (a fault) and whose placement again is then refused is not
# failed as a rejection (the unclear call may have bought it: G9); it keeps being checked
# and ends at its deadline, which the demo must see within its run.
export ORDERFLOW_ORDER_DEADLINE_SECS=240
start_stage dispatch-1 dispatch
start_stage dispatch-2 dispatch
start_stage poll-1 poll
start_stage poll-2 poll
start_stage sink sink
ORDERFLOW_RECONCILE_EVERY=30s ORDERFLOW_RECONCILE_GRACE=30s start_stage reconcile reconcile
wait_ready
say "simulator, two dispatch, two poll processes, the reconciler and the sink are ready on $ORDERFLOW_KAFKA_BROKERS; logs in $STATE."

[[ $# -gt 0 ]] || set -- --orders 10000 --rate 100
set +e
"$BIN" load --account znet-demo "$@" | tee "$STATE/summary.txt"
status=${PIPESTATUS[0]}
set -e

# What the shop sees: the orders table the sink keeps. The sink may trail the topic for a
# moment, so wait (up to 60 s) until no order is left unfinished.
for _ in $(seq 60); do
  left=$(psql_demo -At -c "SELECT count(*) FROM orders WHERE state NOT IN ('completed', 'failed')")
  [[ $left == 0 ]] && break
  sleep 1
done
echo
say "the orders in PostgreSQL (database orderflow_demo), by the shop's columns:"
psql_demo -c "SELECT status, external_status, state, failure_reason, count(*) FROM orders
               GROUP BY 1, 2, 3, 4 ORDER BY 5 DESC"
one=$(psql_demo -At -c "SELECT order_id FROM orders WHERE state = 'completed' AND attempts > 1
                         ORDER BY updated_at DESC LIMIT 1")
if [[ -n $one ]]; then
  say "one slow order's journey (ORDERFLOW_DATABASE_URL=$ORDERFLOW_DATABASE_URL orderflow order show $one; --reveal shows the PIN):"
  "$BIN" order show "$one"
fi
echo
say "the provider account as the stages last wrote it (orderflow accounts list; docs/operations.md#accounts):"
"$BIN" accounts list || true

echo
printf 'demo: %-12s %8s %12s %10s   %s\n' process pid "peak memory" "CPU time" "metrics"
for stage in "${stages[@]}"; do
  IFS=: read -r name pid mport <<<"$stage"
  peak=$(awk '/VmHWM/ { printf "%.1f MB", $2 / 1024 }' "/proc/$pid/status" 2>/dev/null || echo "?")
  cpu=$(awk '{ printf "%.1f s", ($14 + $15) / 100 }' "/proc/$pid/stat" 2>/dev/null || echo "?")
  printf 'demo: %-12s %8s %12s %10s   http://127.0.0.1:%s/metrics\n' "$name" "$pid" "$peak" "$cpu" "$mport"
done
say "Prometheus scrapes these ports with ops/prometheus/prometheus.yml (alerts: ops/prometheus/alerts.yml);"
say "Grafana's dashboard and provisioning are in ops/grafana/. ops/observability/check.sh runs both against this demo."
say "the summary above is also in $STATE/summary.txt."
exit "$status"
