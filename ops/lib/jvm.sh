# shellcheck shell=bash
# Sourced by ops/kafka/broker.sh, ops/kafka/secure-broker.sh and ops/connect/connect.sh:
# what their JVM services share. The jars fetched with Maven; the process started in the
# background and waited for until it serves; told apart from a recycled pid; stopped
# (SIGTERM, SIGKILL after 30 s); one start or stop at a time; its log shown.
#
# The caller sets JVM_TAG (its messages' prefix, e.g. "broker"), JVM_WHAT (what they call
# the process: "broker", "worker"), JVM_MAIN (its main class), STATE (its directory, which
# holds the lock), PROPS (the properties file it is started with), LOG, PIDFILE, TIMEOUT
# (seconds it may take to serve) and the array JAVA (java and its options), and defines
# jvm_serving (true once the process serves).

say() { echo "$JVM_TAG: $*"; }
die() { echo "$JVM_TAG: $*" >&2; exit 1; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The pid file alone could point at a recycled pid, so also check the cmdline.
our_pid() {
  local pid
  pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null |
    grep -q "$JVM_MAIN $PROPS" && echo "$pid"
}

# maven_fetch POM DIR WHAT: the runtime dependencies of POM copied into DIR, once per pom
# content; WHAT names them in messages.
maven_fetch() {
  local pom=$1 dir=$2 what=$3 hash out
  hash=$(sha256sum "$pom" | cut -d' ' -f1)
  [[ -f $dir/.pom.sha256 && $(cat "$dir/.pom.sha256") == "$hash" ]] && return
  command -v mvn >/dev/null || die "Maven (mvn) is needed to fetch $what but is not installed."
  say "fetching $what with Maven into $dir."
  # Copy into a fresh directory so jars of an older pom never linger.
  rm -rf "$dir.tmp"
  out=$(mvn -B -q -f "$pom" dependency:copy-dependencies \
    -DoutputDirectory="$dir.tmp" -DincludeScope=runtime 2>&1) ||
    { echo "$out" >&2; die "Maven could not fetch $what, its output is above."; }
  echo "$hash" >"$dir.tmp/.pom.sha256"
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
}

# stop_jvm: SIGTERM to the process this script started, SIGKILL if it is still there after
# 30 s; returns once it is gone. False if none of ours runs.
stop_jvm() {
  local pid i
  if ! pid=$(our_pid); then rm -f "$PIDFILE"; return 1; fi
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 60; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then
    say "pid $pid ignored SIGTERM for 30 s, killing it."
    kill -KILL "$pid" 2>/dev/null || true
  fi
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  rm -f "$PIDFILE"
}

# wait_ready PID: returns once jvm_serving holds. A process that exits first, or does not
# serve within TIMEOUT s (it is stopped then), ends the script with its log's last lines.
wait_ready() {
  local pid=$1 deadline=$((SECONDS + TIMEOUT))
  while ((SECONDS < deadline)); do
    kill -0 "$pid" 2>/dev/null ||
      { tail -n 40 "$LOG" >&2 || true; rm -f "$PIDFILE"; die "the $JVM_WHAT exited during startup, its log is above."; }
    jvm_serving && return
    sleep 0.5
  done
  tail -n 40 "$LOG" >&2 || true
  stop_jvm || true
  die "the $JVM_WHAT was not ready within $TIMEOUT s, so it was stopped; its log is above."
}

# launch: JAVA runs JVM_MAIN on PROPS, logging to LOG (the last one kept as LOG.1); its pid
# goes to PIDFILE and JVM_PID; returns once it serves (wait_ready).
launch() {
  if [[ -f $LOG ]]; then mv -f "$LOG" "$LOG.1"; fi
  # setsid+nohup: the process must outlive this script and its terminal; 9>&- keeps it
  # from inheriting (and forever holding) the start/stop lock.
  setsid nohup "${JAVA[@]}" "$JVM_MAIN" "$PROPS" >"$LOG" 2>&1 </dev/null 9>&- &
  JVM_PID=$!
  echo "$JVM_PID" >"$PIDFILE"
  wait_ready "$JVM_PID"
}

# One start or stop at a time, e.g. when several test runs start together.
lock() { mkdir -p "$STATE"; exec 9>"$STATE/.lock"; flock 9; }

# show_log: the log's last lines, followed only on a terminal, so scripts and CI can
# capture the tail.
show_log() {
  [[ -f $LOG ]] || die "no log yet at $LOG."
  if [[ -t 1 ]]; then exec tail -n 100 -F "$LOG"; else exec tail -n 100 "$LOG"; fi
}
