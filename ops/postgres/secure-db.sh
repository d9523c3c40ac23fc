#!/usr/bin/env bash
# Owns the TLS test database: a PostgreSQL cluster of its own (Debian's binaries, the
# newest installed version, as ops/postgres/db.sh) on 127.0.0.1:5442 with `ssl = on`,
# the server certificate of ops/tls/test-certs.sh, and a pg_hba.conf that takes only
# TLS connections over TCP (`hostssl ... scram-sha-256`; plain TCP is rejected). Its data
# lives under $ORDERFLOW_STATE_DIR/postgres-secure, so the shared cluster on :5432 is
# never touched. pipeline/tests/tls.rs starts and stops it.
#
#   ops/postgres/secure-db.sh start|stop|status|url
#
# A start that finds none running makes a new cluster with a new password for the role
# orderflow (CREATEDB) and writes url: the database URL with sslmode=verify-full and
# sslrootcert naming the test CA.
#
# Env: ORDERFLOW_STATE_DIR (/var/lib/orderflow), PGSECURE_PORT (5442).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PORT="${PGSECURE_PORT:-5442}"
STATE="${ORDERFLOW_STATE_DIR:-/var/lib/orderflow}/postgres-secure"
DATA="$STATE/data" URLFILE="$STATE/url" LOG="$STATE/server.log"
DB_USER=orderflow DB_NAME=orderflow

say() { echo "secure-db: $*"; }
die() { echo "secure-db: $*" >&2; exit 1; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

bin() {
  local ver
  ver=$(find /usr/lib/postgresql -path '*/bin/postgres' 2>/dev/null | awk -F/ '{ print $5 }' | sort -V | tail -n 1)
  [[ -n $ver ]] || die "Debian's PostgreSQL is not installed; run ops/postgres/db.sh start (it installs it)."
  echo "/usr/lib/postgresql/$ver/bin"
}

as_postgres() { (cd / && runuser -u postgres -- "$@" 9>&-); }

running() { [[ -f $DATA/postmaster.pid ]] && as_postgres "$(bin)/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

start() {
  local b tls password t0=$SECONDS
  if running; then say "already running on 127.0.0.1:$PORT, reusing it; URL in $URLFILE."; return; fi
  port_open "$PORT" && die "127.0.0.1:$PORT is taken by another process; free it or set PGSECURE_PORT."
  command -v openssl >/dev/null || die "openssl is needed for the test certificates but is not installed."
  b=$(bin)
  tls=$(bash "$HERE/../tls/test-certs.sh" make)
  # A test database: a new cluster and password on every start.
  rm -rf "$DATA" && mkdir -p "$DATA" && chown postgres:postgres "$DATA" && chmod 700 "$DATA"
  as_postgres "$b/initdb" -D "$DATA" -U postgres -A peer --no-sync -E UTF8 >/dev/null ||
    die "initdb failed for $DATA."
  # The server reads its key as the postgres user and refuses one others may read.
  install -o postgres -g postgres -m 600 "$tls/server.key" "$DATA/server.key"
  install -o postgres -g postgres -m 644 "$tls/server.pem" "$DATA/server.crt"
  cat >>"$DATA/postgresql.conf" <<EOF

# ops/postgres/secure-db.sh: TLS only over TCP, the test CA's server certificate.
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$DATA'
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
ssl_min_protocol_version = 'TLSv1.2'
password_encryption = 'scram-sha-256'
fsync = off
EOF
  cat >"$DATA/pg_hba.conf" <<EOF
# ops/postgres/secure-db.sh: the superuser over the socket only; over TCP, TLS and a
# SCRAM password, and anything else is refused.
local     all  postgres                 peer
hostssl   all  all       127.0.0.1/32   scram-sha-256
hostnossl all  all       0.0.0.0/0      reject
EOF
  : >"$LOG" && chown postgres:postgres "$LOG"
  as_postgres "$b/pg_ctl" -D "$DATA" -l "$LOG" -w -t 30 start >/dev/null ||
    { tail -n 20 "$LOG" >&2 || true; die "the server did not start, its log is above."; }
  password=$(openssl rand -hex 16)
  as_postgres "$b/psql" -X -q -v ON_ERROR_STOP=1 -h "$DATA" -p "$PORT" -U postgres -d postgres \
    -v u="$DB_USER" -v pw="$password" -v db="$DB_NAME" <<'SQL' >/dev/null || die "could not create the role and database."
CREATE ROLE :"u" WITH LOGIN CREATEDB PASSWORD :'pw';
CREATE DATABASE :"db" OWNER :"u";
SQL
  (umask 077 && echo "postgres://$DB_USER:$password@127.0.0.1:$PORT/$DB_NAME?sslmode=verify-full&sslrootcert=$tls/ca.pem" >"$URLFILE")
  say "ready on 127.0.0.1:$PORT, TLS only ($((SECONDS - t0)) s); URL in $URLFILE."
}

stop() {
  if ! running; then say "no server started by this script is running."; return; fi
  as_postgres "$(bin)/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null
  say "stopped."
}

lock() { mkdir -p "$STATE"; exec 9>"$STATE/.lock"; flock 9; }

case "${1:-}" in
  start) lock; start ;;
  stop) lock; stop ;;
  status)
    if running; then say "running on 127.0.0.1:$PORT; URL in $URLFILE."
    else say "not running on 127.0.0.1:$PORT."; exit 1; fi ;;
  url) [[ -s $URLFILE ]] && running || die "not running; run '$0 start' first."; cat "$URLFILE" ;;
  *) echo "usage: $0 start|stop|status|url" >&2; exit 2 ;;
esac
