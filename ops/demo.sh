#!/usr/bin/env bash
# The main job, locally: broker, database, topics, migrations, the znet simulator (with
# faults), two dispatch processes in one consumer group, and a realistic load followed to
# its answers with a live progress line and a summary.
#
#   ops/demo.sh [--orders N] [--rate R]      (other `orderflow load` flags pass through)
#
# Stages not built yet (poll, sink, reconciler) are not started; orders end the demo as
# "dispatched" (placed, awaiting status checks), "failed" (rejected) or "dead-lettered".
# Everything the demo starts is stopped when it ends; the broker and database stay up.
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
  --latency-ms 40 --fault-rate 0.05 --lost-answer-delay-ms 3000 >"$STATE/sim.log" 2>&1 &
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

export ORDERFLOW_PROVIDER_ACCOUNTS="$STATE/accounts.toml"
export ORDERFLOW_DISPATCH_RETRY_MIN_MS=250 ORDERFLOW_DISPATCH_RETRY_MAX_MS=4000
for n in 1 2; do
  "$BIN" dispatch >"$STATE/dispatch-$n.log" 2>&1 &
  pids+=($!)
done
dispatchers=("${pids[@]:1}")
say "simulator and two dispatch processes started; logs in $STATE."

set +e
[[ $# -gt 0 ]] || set -- --orders 600 --rate 60
"$BIN" load --account znet-demo "$@"
status=$?
set -e

for pid in "${dispatchers[@]}"; do
  peak=$(awk '/VmHWM/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo "?")
  say "dispatch pid $pid peak memory ${peak} kB."
done
exit "$status"
