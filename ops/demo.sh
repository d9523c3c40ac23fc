#!/usr/bin/env bash
# The main job, locally: broker, database, topics, migrations, the znet simulator (with
# faults), two dispatch processes in one consumer group, two poll processes in another,
# the reconciler, the sink into PostgreSQL, and a realistic load followed to final states
# with a live progress line and a summary (from the topics, then from the database).
#
#   ops/demo.sh [--orders N] [--rate R]      (other `orderflow load` flags pass through)
#
# The first status check comes 10 s after dispatch instead of 60 s (ORDERFLOW_FIRST_CHECK),
# so most orders end within a minute; the retry tiers are the production ones (30 s,
# 1 m, ...). The simulator answers "processing" once, then completes (2 % cancel). Orders
# end "completed", "failed" (rejected or cancelled) or "dead-lettered". Everything the
# demo starts is stopped when it ends; the broker and database stay up. Each process
# serves /metrics on 127.0.0.1:9464 and up.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/orderflow/target}"
STATE="${ORDERFLOW_STATE_DIR:-/var/lib/orderflow}/demo"
SIM_PORT="${ORDERFLOW_DEMO_SIM_PORT:-18090}"
mkdir -p "$STATE"

say() { echo "demo: $*"; }

bash ops/kafka/broker.sh start
bash ops/postgres/db.sh start
say "building orderflow."
cargo build --locked --quiet
BIN="$CARGO_TARGET_DIR/debug/orderflow"

"$BIN" topics apply
"$BIN" migrate

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

# The simulated provider: 40 ms per answer, 5 % of calls faulty (5xx, timeouts, HTML,
# empty bodies, garbage, accepted-but-answer-lost), lost answers hang 3 s.
"$BIN" sim-znet --listen "127.0.0.1:$SIM_PORT" --kod demo-kod --sifre demo-sifre \
  --latency-ms 40 --fault-rate 0.05 --lost-answer-delay-ms 3000 \
  --checks-until-complete 1 --cancel-rate 0.02 >"$STATE/sim.log" 2>&1 &
pids+=($!)

cat >"$STATE/accounts.toml" <<TOML
[[account]]
id = "znet-demo"
provider = "znet"
base_url = "http://127.0.0.1:$SIM_PORT"
kod = "demo-kod"
sifre = "demo-sifre"
max_concurrent = 8
max_per_second = 100
request_timeout_ms = 2000
TOML
chmod 600 "$STATE/accounts.toml"

# The key that seals PINs (the shop holds it to read them); made once, kept private.
if [[ ! -s "$STATE/pin-keys" ]]; then
  (umask 077 && "$BIN" pin-key new --id demo >"$STATE/pin-keys")
fi

export ORDERFLOW_PROVIDER_ACCOUNTS="$STATE/accounts.toml"
export ORDERFLOW_PIN_KEYS_FILE="$STATE/pin-keys"
export ORDERFLOW_DISPATCH_RETRY_MIN_MS=250 ORDERFLOW_DISPATCH_RETRY_MAX_MS=4000
export ORDERFLOW_FIRST_CHECK=10s
port=9464
stages=()
start_stage() { # name, command
  ORDERFLOW_METRICS_LISTEN="127.0.0.1:$port" "$BIN" "$2" >"$STATE/$1.log" 2>&1 &
  pids+=($!)
  stages+=("$1:$!:$port")
  port=$((port + 1))
}
start_stage dispatch-1 dispatch
start_stage dispatch-2 dispatch
start_stage poll-1 poll
start_stage poll-2 poll
start_stage sink sink
export ORDERFLOW_RECONCILE_EVERY=30s ORDERFLOW_RECONCILE_GRACE=30s
start_stage reconcile reconcile
say "simulator, two dispatch, two poll processes, the reconciler and the sink started; logs in $STATE."

started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
set +e
[[ $# -gt 0 ]] || set -- --orders 600 --rate 60
"$BIN" load --account znet-demo "$@"
status=$?
set -e

# What the shop sees: the orders table the sink keeps. This run's orders are those
# dispatched since it started (deadline = dispatch + 24 h); the sink may trail the topic
# for a moment, so wait (up to 60 s) until none of them is left unfinished.
this_run="deadline >= timestamptz '$started' + interval '24 hours'"
for _ in $(seq 60); do
  left=$(bash ops/postgres/db.sh psql -At -c \
    "SELECT count(*) FROM orders WHERE $this_run AND state NOT IN ('completed', 'failed')")
  [[ $left == 0 ]] && break
  sleep 1
done
say "this run's orders in PostgreSQL, by the shop's columns:"
bash ops/postgres/db.sh psql -c \
  "SELECT status, external_status, state, failure_reason, count(*) FROM orders
    WHERE $this_run GROUP BY 1, 2, 3, 4 ORDER BY 5 DESC"
one=$(bash ops/postgres/db.sh psql -At -c \
  "SELECT order_id FROM orders WHERE $this_run AND state = 'completed' ORDER BY updated_at DESC LIMIT 1")
if [[ -n $one ]]; then
  say "one completed order's journey (orderflow order show $one; add --reveal for the PIN):"
  "$BIN" order show "$one"
fi

for stage in "${stages[@]}"; do
  IFS=: read -r name pid mport <<<"$stage"
  peak=$(awk '/VmHWM/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo "?")
  say "$name (pid $pid, metrics on 127.0.0.1:$mport) peak memory ${peak} kB."
done
exit "$status"
