#!/usr/bin/env bash
# Checks the dashboard and the alert rules against a real Prometheus scraping a running
# pipeline under load:
#   1. promtool checks ops/prometheus/prometheus.yml and alerts.yml;
#   2. Debian's Prometheus starts with that config (its own storage, 127.0.0.1:$PROM_PORT);
#   3. the demo runs (ops/demo.sh, which gives its processes the ports the config scrapes);
#   4. while it runs, every query of ops/grafana/dashboards/orderflow.json must return data
#      and every alert expression must evaluate without error.
# Prints one line per query and a summary; non-zero if any query failed.
#
#   ops/observability/check.sh [demo flags, default --orders 300 --rate 20]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PROM_PORT="${PROM_PORT:-9090}"
STATE="${ORDERFLOW_STATE_DIR:-/var/lib/orderflow}/prometheus-check"

command -v prometheus >/dev/null && command -v promtool >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
}
promtool check config ops/prometheus/prometheus.yml
promtool check rules ops/prometheus/alerts.yml

rm -rf "$STATE" && mkdir -p "$STATE"
prometheus --config.file=ops/prometheus/prometheus.yml --storage.tsdb.path="$STATE/data" \
  --web.listen-address="127.0.0.1:$PROM_PORT" >"$STATE/prometheus.log" 2>&1 &
prom=$!
demo=""
cleanup() {
  if [[ -n $demo ]]; then kill -TERM "$demo" 2>/dev/null || true; wait "$demo" 2>/dev/null || true; fi
  kill -TERM "$prom" 2>/dev/null || true
  wait "$prom" 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 30); do
  curl -fs "http://127.0.0.1:$PROM_PORT/-/ready" >/dev/null 2>&1 && break
  sleep 1
done

[[ $# -gt 0 ]] || set -- --orders 300 --rate 20
ORDERFLOW_DEMO_PROFILE="${ORDERFLOW_DEMO_PROFILE:-debug}" bash ops/demo.sh "$@" >"$STATE/demo.log" 2>&1 &
demo=$!
echo "check: Prometheus on 127.0.0.1:$PROM_PORT, demo running (log: $STATE/demo.log); querying in 60 s."
sleep 60

set +e
python3 - "$PROM_PORT" <<'PY'
import json, sys, time, urllib.parse, urllib.request, yaml

port = sys.argv[1]

def query(expr):
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)

dashboard = json.load(open("ops/grafana/dashboards/orderflow.json"))
panels = [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]
rules = yaml.safe_load(open("ops/prometheus/alerts.yml"))
alerts = [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]

# The demo creates its topics (24 partitions each) and starts every stage before the load
# begins: wait until the stages' counters are scraped before judging any query.
started = time.time()
while not query("orderflow_messages_handled_total")["data"]["result"]:
    if time.time() - started > 300:
        print("check: no stage was scraped within 300 s of the first query")
        break
    time.sleep(5)

failed = 0
for title, expr in panels:
    # Rates need two scrapes of a moving counter: give each query up to 60 s more.
    deadline = time.time() + 60
    while True:
        answer = query(expr)
        series = answer["data"]["result"] if answer["status"] == "success" else []
        if series or time.time() > deadline:
            break
        time.sleep(5)
    ok = answer["status"] == "success" and len(series) > 0
    failed += not ok
    print(f"check: {'ok  ' if ok else 'FAIL'} dashboard {title!r}: {len(series)} series")
for name, expr in alerts:
    answer = query(expr)
    ok = answer["status"] == "success"
    failed += not ok
    firing = len(answer["data"]["result"]) if ok else "-"
    print(f"check: {'ok  ' if ok else 'FAIL'} alert {name}: evaluates ({firing} series match now)")
print(f"check: {len(panels)} dashboard queries and {len(alerts)} alert expressions, {failed} failed")
sys.exit(1 if failed else 0)
PY
status=$?
set -e
echo "check: waiting for the demo to finish."
wait "$demo" || true
demo=""
tail -n 12 "$STATE/demo.log"
exit "$status"
