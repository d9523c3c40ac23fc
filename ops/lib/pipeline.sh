# Sourced by ops/demo.sh and ops/bench.sh: starts the znet simulator and the stages in the
# background on 127.0.0.1, each with its log in $STATE and its /metrics on a port of its
# own (9464 and up), remembers them for the summary, and stops them when the script exits.
#
# The caller sets BIN (the orderflow binary; SIM_BIN, if set, runs the simulator instead),
# STATE (a directory) and CLUSTER (1: three brokers), then calls start_kafka, start_sim,
# write_accounts, ensure_pin_key, start_stage ..., wait_ready.

command -v curl >/dev/null || { echo "curl is required (apt-get install curl)" >&2; exit 2; }

pids=()
stages=()           # "name:pid:metrics port"
metrics_port=${ORDERFLOW_FIRST_METRICS_PORT:-9464}
cluster_started=0

stop_all() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
# The cluster start_kafka started, if it did; last, after anything that still needs it.
stop_cluster() {
  if [[ $cluster_started == 1 ]]; then bash ops/kafka/cluster.sh stop >&2 || true; fi
}
trap 'stop_all; stop_cluster' EXIT

# start_kafka: the single broker (ops/kafka/broker.sh, left running), or with CLUSTER=1
# the three-node cluster (ops/kafka/cluster.sh, stopped again when the script ends), whose
# topics get three replicas and min.insync.replicas 2 (`orderflow topics apply` reads
# ORDERFLOW_TOPIC_REPLICATION and ORDERFLOW_TOPIC_MIN_ISR).
start_kafka() {
  if [[ ${CLUSTER:-0} == 1 ]]; then
    bash ops/kafka/cluster.sh status >/dev/null 2>&1 || cluster_started=1
    bash ops/kafka/cluster.sh start >&2
    ORDERFLOW_KAFKA_BROKERS=$(bash ops/kafka/cluster.sh brokers)
    export ORDERFLOW_KAFKA_BROKERS ORDERFLOW_TOPIC_REPLICATION=3 ORDERFLOW_TOPIC_MIN_ISR=2
  else
    bash ops/kafka/broker.sh start >&2
    export ORDERFLOW_KAFKA_BROKERS=${ORDERFLOW_KAFKA_BROKERS:-127.0.0.1:9092}
  fi
}

# fresh_database NAME: drops and creates database NAME on the project's server (db.sh's
# user and password) and points ORDERFLOW_DATABASE_URL at it.
fresh_database() {
  local user=${ORDERFLOW_DB_USER:-orderflow} password=${ORDERFLOW_DB_PASSWORD:-orderflow} err=
  # An autovacuum worker in the database makes DROP ... WITH (FORCE) fail for a role that
  # is not a superuser ("must be a member of the role whose process is being terminated");
  # the worker is gone once it has vacuumed the tables, which after a benchmark's 100,000
  # orders took longer than 5 s (seen twice in about 60 runs); so up to 60 s.
  for _ in $(seq 30); do
    err=$(bash ops/postgres/db.sh psql -qc "DROP DATABASE IF EXISTS $1 WITH (FORCE)" 2>&1 >/dev/null) && { err=; break; }
    sleep 2
  done
  [[ -z $err ]] || { echo "could not drop database $1: $err" >&2; return 1; }
  bash ops/postgres/db.sh psql -qc "CREATE DATABASE $1 OWNER $user" >/dev/null
  export ORDERFLOW_DATABASE_URL="postgres://$user:$password@127.0.0.1:${PGPORT:-5432}/$1"
}

# start_sim PORT [sim-znet flags...]: the simulated provider, dealer kod/sifre "demo-kod".
start_sim() {
  local port=$1
  shift
  "${SIM_BIN:-$BIN}" sim-znet --listen "127.0.0.1:$port" --kod demo-kod --sifre demo-sifre "$@" \
    >"$STATE/sim.log" 2>&1 &
  pids+=($!)
  SIM_PID=$!
  SIM_PORT=$port
}

# write_accounts MAX_CONCURRENT MAX_PER_SECOND: the accounts file naming the simulator as
# account "znet-demo", readable by this user only (it holds the dealer password).
write_accounts() {
  cat >"$STATE/accounts.toml" <<TOML
[[account]]
id = "znet-demo"
provider = "znet"
base_url = "http://127.0.0.1:$SIM_PORT"
kod = "demo-kod"
sifre = "demo-sifre"
max_concurrent = $1
max_per_second = $2
request_timeout_ms = 2000
# The simulator shows new orders to checks at once: no visibility window to wait out.
visibility_window_ms = 0
TOML
  chmod 600 "$STATE/accounts.toml"
  export ORDERFLOW_PROVIDER_ACCOUNTS="$STATE/accounts.toml"
}

# The key that seals PINs (the shop holds it to read them): made once, kept private.
ensure_pin_key() {
  if [[ ! -s "$STATE/pin-keys" ]]; then
    (umask 077 && "$BIN" pin-key new --id demo >"$STATE/pin-keys")
  fi
  export ORDERFLOW_PIN_KEYS_FILE="$STATE/pin-keys"
}

# start_stage NAME SUBCOMMAND: one stage process with its own metrics port.
start_stage() {
  ORDERFLOW_METRICS_LISTEN="127.0.0.1:$metrics_port" "$BIN" "$2" >"$STATE/$1.log" 2>&1 &
  pids+=($!)
  stages+=("$1:$!:$metrics_port")
  metrics_port=$((metrics_port + 1))
}

# Waits (up to 60 s) until every stage answers /readyz: it owns partitions and reached
# the database. A stage that exits instead is reported with the end of its log.
wait_ready() {
  local stage name pid port
  for stage in "${stages[@]}"; do
    IFS=: read -r name pid port <<<"$stage"
    for _ in $(seq 120); do
      kill -0 "$pid" 2>/dev/null || { echo "$name exited; its log ($STATE/$name.log) ends:" >&2; tail -5 "$STATE/$name.log" >&2; return 1; }
      [[ $(curl -s -m 2 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz") == 200 ]] && continue 2
      sleep 0.5
    done
    echo "$name did not become ready within 60 s (log: $STATE/$name.log)" >&2
    return 1
  done
}

# The --process flags of `orderflow bench` for every stage started, the simulator, and
# the broker and database when their pids are known.
process_flags() {
  local stage name pid port pg
  for stage in "${stages[@]}"; do
    IFS=: read -r name pid port <<<"$stage"
    echo "--process $name=$pid"
  done
  echo "--process sim-znet=$SIM_PID"
  if [[ ${CLUSTER:-0} == 1 ]]; then
    for node in 1 2 3; do
      pid=$(bash ops/kafka/cluster.sh pid "$node" 2>/dev/null) && echo "--process kafka-$node=$pid"
    done
  elif [[ -s "${ORDERFLOW_STATE_DIR:-/var/lib/orderflow}/kafka/broker.pid" ]]; then
    echo "--process kafka=$(cat "${ORDERFLOW_STATE_DIR:-/var/lib/orderflow}/kafka/broker.pid")"
  fi
  # The postmaster of db.sh's cluster: "main" of the newest installed version.
  pg=$(ls -d /var/lib/postgresql/*/main 2>/dev/null | sort -V | tail -1)
  pg=$(head -1 "$pg/postmaster.pid" 2>/dev/null || true)
  [[ -n $pg ]] && echo "--process postgres=$pg+"
}

# The --metrics flags of `orderflow bench throughput`: every stage's /metrics endpoint.
metrics_flags() {
  local stage name pid port
  for stage in "${stages[@]}"; do
    IFS=: read -r name pid port <<<"$stage"
    echo "--metrics $name=http://127.0.0.1:$port/metrics"
  done
}
