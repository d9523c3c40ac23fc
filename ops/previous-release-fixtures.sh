#!/usr/bin/env bash
# Captures what a previous release writes, for the upgrade test (pipeline/tests/upgrade.rs):
# runs that release's binary as a small pipeline (simulator, dispatch, poll with short
# tiers, sink) over a fresh topic prefix and database, publishes a load of orders with
# `orderflow load`, waits until every order is final, and dumps each topic's messages
# (key, headers, value) as JSON lines into pipeline/tests/fixtures/previous-release/.
#
#   ops/previous-release-fixtures.sh [RELEASE_BINARY] [COMMIT]
#
# Default: /var/lib/orderflow/baseline/orderflow-f6ed1f0, commit f6ed1f0 (build another
# one with `git worktree add /tmp/rel COMMIT && cargo build --release` there). The
# simulator's outcome of an order is deterministic (no faults, no cancellations): an
# order for a denomination it does not sell is rejected, every other completes after
# one or three "processing" answers, so a new release given the same events must reach
# the same final states. PINs in orders.state are sealed under a key made for the run
# and thrown away with it; nothing secret is written to the fixture. Its topics and
# database are removed when it ends.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN="${1:-/var/lib/orderflow/baseline/orderflow-f6ed1f0}"
COMMIT="${2:-f6ed1f0}"
OUT=pipeline/tests/fixtures/previous-release
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/orderflow/target}"
STATE=$(mktemp -d /tmp/orderflow-fixtures.XXXXXX)
say() { echo "fixtures: $*"; }
[[ -x $BIN ]] || { echo "no release binary at $BIN" >&2; exit 2; }

bash ops/kafka/broker.sh start
bash ops/postgres/db.sh start
cargo build --locked --quiet --example dump_topics
# shellcheck source=ops/lib/pipeline.sh
source ops/lib/pipeline.sh
trap 'stop_all; rm -rf "$STATE"' EXIT

export ORDERFLOW_FIRST_CHECK=1s ORDERFLOW_CHECK_TIERS=1s,2s
export ORDERFLOW_TOPIC_PREFIX="fixtures-$(date +%s)."
export ORDERFLOW_FIRST_METRICS_PORT=${ORDERFLOW_FIRST_METRICS_PORT:-9564}
fresh_database orderflow_fixtures
"$BIN" topics apply >/dev/null
"$BIN" migrate >/dev/null
start_sim "${ORDERFLOW_FIXTURES_SIM_PORT:-18190}" --latency-ms 5 --fault-rate 0 \
  --checks-until-complete 1 --slow-share 0.3 --slow-checks 2 --cancel-rate 0 \
  --balance-lira 100000000 --seed 7
write_accounts 8 200
ensure_pin_key
start_stage dispatch dispatch
start_stage poll poll
start_stage sink sink
wait_ready
say "release $COMMIT running; publishing the load."
"$BIN" load --account znet-demo --orders "${ORDERS:-40}" --rate 20 --reject-share 0.1 \
  --invalid-share 0 --wait-secs 120 >"$STATE/load.txt"
sleep 3 # the sink trails orders.state by a moment
topics=(orders.created orders.dispatch-retry orders.dispatched orders.status-check.1s
  orders.status-check.2s orders.state orders.dlq)
mkdir -p "$OUT"
"$CARGO_TARGET_DIR/debug/examples/dump_topics" 127.0.0.1:9092 "$ORDERFLOW_TOPIC_PREFIX" \
  "${topics[@]}" >"$OUT/events.jsonl"
bash ops/postgres/db.sh psql -d orderflow_fixtures -At -c \
  "SELECT order_id, state, COALESCE(failure_reason, '') FROM orders ORDER BY order_id" \
  >"$OUT/final-states.txt"
"$BIN" topics delete --topic-prefix "$ORDERFLOW_TOPIC_PREFIX" >/dev/null
stop_all
bash ops/postgres/db.sh psql -qc "DROP DATABASE IF EXISTS orderflow_fixtures WITH (FORCE)" >/dev/null
echo "$COMMIT" >"$OUT/COMMIT"
say "$(wc -l <"$OUT/events.jsonl") messages and $(wc -l <"$OUT/final-states.txt") orders written to $OUT (release $COMMIT)."
cat "$STATE/load.txt"
