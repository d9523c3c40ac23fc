#!/usr/bin/env bash
# Owns the local PostgreSQL that orderflow develops and tests against: the
# Debian cluster "main" of the newest installed version (installed from Debian
# packages if missing) on 127.0.0.1:$PGPORT, plus the project's role and
# database. Only a cluster this script started is ever stopped by it.
#
#   ops/postgres/db.sh start|stop|status|psql [psql args...]
#
# Env: PGPORT (5432), ORDERFLOW_DB_USER, ORDERFLOW_DB_PASSWORD, ORDERFLOW_DB_NAME
# (all "orderflow"), ORDERFLOW_STATE_DIR (/var/lib/orderflow).
set -euo pipefail

PGPORT="${PGPORT:-5432}"
DB_USER="${ORDERFLOW_DB_USER:-orderflow}" DB_PASSWORD="${ORDERFLOW_DB_PASSWORD:-orderflow}"
DB_NAME="${ORDERFLOW_DB_NAME:-orderflow}"
STATE="${ORDERFLOW_STATE_DIR:-/var/lib/orderflow}/postgres"
MARKER="$STATE/started-by-orderflow"
URL="postgres://$DB_USER:$DB_PASSWORD@127.0.0.1:$PGPORT/$DB_NAME"

say() { echo "postgres: $*"; }
die() { echo "postgres: $*" >&2; exit 1; }
ready() { command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p "$PGPORT"; }
# Field N of the `pg_lsclusters` line for cluster VER/main (4 status, 7 log file).
cluster_field() { pg_lsclusters -h 2>/dev/null | awk -v v="$1" -v f="$2" '$1 == v && $2 == "main" { print $f }'; }

# Daemons started from here must not inherit fd 9, or they hold the lock forever.
install_server() {
  local out
  compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null && return
  say "the server is not installed, installing it from Debian packages."
  out=$({ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; } 2>&1 9>&-) ||
    { echo "$out" | tail -n 20 >&2; die "installing the postgresql package failed, apt's output is above."; }
}

start_cluster() {
  local ver log deadline=$((SECONDS + 30))
  ver=$(find /usr/lib/postgresql -path '*/bin/postgres' | awk -F/ '{ print $5 }' | sort -V | tail -n 1)
  [[ -n $ver ]] || die "no server binaries found under /usr/lib/postgresql."
  # Where services may start, installing the package just started the cluster.
  if ready; then echo "$ver main" >"$MARKER"; return; fi
  if [[ -z $(cluster_field "$ver" 2) ]]; then
    say "creating the Debian cluster $ver/main on port $PGPORT."
    # wal_level=logical: a database of this server can then hold a shop's outbox, read by
    # Debezium through logical decoding (docs/outbox.md). Changing it later needs a restart.
    pg_createcluster -p "$PGPORT" -o wal_level=logical "$ver" main >/dev/null 9>&-
  fi
  [[ $(cluster_field "$ver" 4) == online ]] &&
    die "cluster $ver/main is running but does not answer on 127.0.0.1:$PGPORT; check its port and listen_addresses."
  # The cluster may have been created earlier on another port (e.g. 5433 when
  # 5432 was busy then); the project expects it on PGPORT.
  if [[ $(pg_conftool -s "$ver" main show port 2>/dev/null) != "$PGPORT" ]]; then
    say "setting the port of cluster $ver/main to $PGPORT."
    pg_conftool "$ver" main set port "$PGPORT"
  fi
  log=$(cluster_field "$ver" 7)
  # No systemd here, so pg_ctlcluster runs the server directly.
  if timeout 30 pg_ctlcluster "$ver" main start 9>&-; then
    echo "$ver main" >"$MARKER"
    while ((SECONDS < deadline)); do ready && return; sleep 0.5; done
  fi
  tail -n 30 "$log" >&2 2>/dev/null || true
  die "cluster $ver/main did not come up on 127.0.0.1:$PGPORT (limit 30 s), its log is above."
}

# Idempotent: creates what is missing and resets the role's password and rights.
provision() {
  (cd / && runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -h /var/run/postgresql \
    -p "$PGPORT" -U postgres -d postgres -v u="$DB_USER" -v pw="$DB_PASSWORD" -v db="$DB_NAME") <<'SQL'
SELECT format('CREATE ROLE %I', :'u') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'u') \gexec
ALTER ROLE :"u" WITH LOGIN CREATEDB PASSWORD :'pw';
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'u')
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
ALTER DATABASE :"db" OWNER TO :"u";
SQL
}

project_psql() {
  command -v psql >/dev/null || die "psql is not installed; run '$0 start' first."
  PGPASSWORD="$DB_PASSWORD" psql -X -h 127.0.0.1 -p "$PGPORT" -U "$DB_USER" -d "$DB_NAME" "$@"
}

start() {
  local err
  mkdir -p "$STATE"
  exec 9>"$STATE/.lock" # one start or stop at a time
  flock 9
  if ready; then
    say "already accepting connections on 127.0.0.1:$PGPORT, reusing it."
  else
    install_server
    start_cluster
    say "started and accepting connections on 127.0.0.1:$PGPORT."
  fi
  # A server that is not the local Debian cluster may refuse the postgres
  # superuser over the socket; that is fine if the role already works.
  if ! err=$(provision 2>&1); then
    project_psql -qtAc 'select 1' >/dev/null 2>&1 ||
      { echo "$err" >&2; die "could not create role $DB_USER and database $DB_NAME, psql's error is above."; }
  fi
  project_psql -qtAc 'select 1' >/dev/null ||
    die "role $DB_USER cannot log in with its password over 127.0.0.1:$PGPORT."
  say "role $DB_USER and database $DB_NAME are ready; DATABASE_URL=$URL"
}

stop() {
  local ver cluster
  mkdir -p "$STATE"
  exec 9>"$STATE/.lock"
  flock 9
  if [[ ! -f $MARKER ]]; then
    if ready; then say "leaving the server on 127.0.0.1:$PGPORT running, this script did not start it."
    else say "no server started by this script is running."; fi
    return
  fi
  read -r ver cluster <"$MARKER"
  if [[ $(cluster_field "$ver" 4) == online ]]; then
    pg_ctlcluster "$ver" "$cluster" stop 9>&-
    say "stopped cluster $ver/$cluster."
  else
    say "cluster $ver/$cluster is already stopped."
  fi
  rm -f "$MARKER"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status)
    if ready; then say "accepting connections on 127.0.0.1:$PGPORT."
    else say "not accepting connections on 127.0.0.1:$PGPORT."; exit 1; fi ;;
  psql) shift; project_psql "$@" ;;
  *) echo "usage: $0 start|stop|status|psql [psql args...]" >&2; exit 2 ;;
esac
