#!/usr/bin/env bash
# The test command (README: "Tests"): brings up the broker and the database, or reuses
# healthy ones, then runs every unit, property and integration test of the workspace.
#
#   ops/test.sh [extra cargo test arguments]
#
# Env: CARGO_TARGET_DIR (/var/cache/orderflow/target: the build cache lives outside the
# clone), plus those of ops/kafka/broker.sh and ops/postgres/db.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/orderflow/target}"

bash ops/kafka/broker.sh start
bash ops/postgres/db.sh start
# pipeline/tests/cli.rs runs the shop guide's PIN example, which needs Python's cryptography.
python3 -c 'import cryptography' 2>/dev/null ||
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-cryptography; }

# Databases left by tests that failed in earlier runs (each test makes its own).
leftovers=$(bash ops/postgres/db.sh psql -d orderflow -Atc \
  "SELECT datname FROM pg_database WHERE datname LIKE 'orderflow\_test\_%'")
for db in $leftovers; do
  bash ops/postgres/db.sh psql -d orderflow -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
done

# One closing line for the whole run, summed over every test binary.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
