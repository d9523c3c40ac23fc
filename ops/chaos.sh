#!/usr/bin/env bash
# The reliability suite (pipeline/tests/chaos/, docs/reliability.md) at a larger size: the whole
# pipeline under load while every stage is SIGKILLed again and again, the broker and
# PostgreSQL are restarted once each (instances of the test's own), the provider fails in
# waves and hostile events arrive; then every guarantee is checked and the figures table
# is printed (and kept in $ORDERFLOW_STATE_DIR/chaos/figures.txt).
#
#   ops/chaos.sh [--orders N] [--rate R] [--kills K]     (defaults: 20000, 200/s, 3)
#   ops/chaos.sh --cluster [--orders N] [--rate R]       (defaults: 20000, 200/s)
#
# --cluster runs the cluster test instead: three brokers of its own (ops/kafka/cluster.sh),
# topics with three replicas and min.insync.replicas 2, and under load the node leading the
# most partitions of orders.created and orders.state killed with SIGKILL and started again,
# every node restarted in turn, and one node frozen until its replicas fell out of sync;
# its figures (a row per failover with the stall it caused) go to
# $ORDERFLOW_STATE_DIR/chaos/cluster-figures.txt.
#
# Needs what ops/test.sh needs (it starts the shared database if it is not up: the test's
# own PostgreSQL uses its binaries). Non-zero if any guarantee was broken.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/orderflow/target}"
export ORDERFLOW_CHAOS_ORDERS=20000 ORDERFLOW_CHAOS_RATE=200 ORDERFLOW_CHAOS_KILLS=3
test=chaos_under_load_keeps_every_guarantee figures=figures.txt
while [[ $# -gt 0 ]]; do
  case $1 in
    --cluster) test=cluster::cluster_failover_under_load_keeps_every_guarantee figures=cluster-figures.txt; shift ;;
    --orders) ORDERFLOW_CHAOS_ORDERS=$2; shift 2 ;;
    --rate) ORDERFLOW_CHAOS_RATE=$2; shift 2 ;;
    --kills) ORDERFLOW_CHAOS_KILLS=$2; shift 2 ;;
    *) echo "usage: $0 [--cluster] [--orders N] [--rate R] [--kills K]" >&2; exit 2 ;;
  esac
done
bash ops/postgres/db.sh start >/dev/null
figures="${ORDERFLOW_STATE_DIR:-/var/lib/orderflow}/chaos/$figures"
rm -f "$figures"
set +e
cargo test --locked --test chaos -- --exact "$test" --nocapture
status=$?
set -e
[[ -f $figures ]] && { echo; cat "$figures"; }
exit "$status"
