#!/usr/bin/env bash
# Benchmark: what the SQL endpoint's relay threads' scheduling policy (SCHED_BATCH, see
# relay_without_wakeup_preemption in gateway/src/sql/mod.rs) costs one client's latency, with the CPUs idle
# and with every CPU busy with other work (one busy loop per CPU). The same endpoint, its relay threads
# switched between SCHED_BATCH and the default policy (chrt) before each run, alternating.
#
#   bench/sql_relay_latency.sh              # 2 rounds of 5 s per policy and load
#   ROUNDS=3 SECONDS_EACH=10 bench/sql_relay_latency.sh
#
# Needs: cargo, PostgreSQL server binaries, pgbench, psql, chrt (util-linux).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-2}
SECONDS_EACH=${SECONDS_EACH:-5}
ROWS=${ROWS:-10000}
HTTP_PORT=${HTTP_PORT:-18590}
SQL_PORT=${SQL_PORT:-18591}
OUT=bench/out
mkdir -p "$OUT"
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
export PATH="$PATH:${PGBIN:-/usr/lib/postgresql/15/bin}"
for tool in pgbench psql chrt; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 2; }
done

cargo build --release --quiet
BIN=target/release/tessera
DATA=$(mktemp -d /tmp/tessera-latency-XXXXXX)
chmod 755 "$DATA"
PID=
HOGS=()
cleanup() {
  [ ${#HOGS[@]} -gt 0 ] && kill "${HOGS[@]}" 2>/dev/null
  [ -n "$PID" ] && kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  rm -rf "$DATA"
}
trap cleanup EXIT

TESSERA_LOG=warn "$BIN" up --data-dir "$DATA" --listen "127.0.0.1:$HTTP_PORT" --sql-listen "127.0.0.1:$SQL_PORT" \
  >"$OUT/latency_up.log" 2>&1 &
PID=$!
until KEY=$(grep -o 'tsk_[0-9a-f]*_[0-9a-f]*' "$OUT/latency_up.log" 2>/dev/null | head -1); [ -n "$KEY" ] && grep -q 'Stop with' "$OUT/latency_up.log"; do
  kill -0 "$PID" 2>/dev/null || { cat "$OUT/latency_up.log" >&2; exit 1; }
  sleep 0.05
done
PG_LINE=$(grep -o 'postgresql://[^"]*' "$OUT/latency_up.log")
SOCK=$(echo "$PG_LINE" | sed -E 's/.*host=([^&]*).*/\1/')
PGPORT=$(echo "$PG_LINE" | sed -E 's/.*port=([0-9]*).*/\1/')
psql -q -h "$SOCK" -p "$PGPORT" -U postgres tessera <<SQL
insert into crm.deals (tenant_id, id, title, stage, amount)
select t.id, md5(n::text)::uuid, 'Deal ' || n, 'lead', n
  from core.tenants t, generate_series(1, $ROWS) n where t.slug = 'demo';
vacuum analyze crm.deals;
SQL
cat >"$OUT/latency_select.sql" <<SQL
\set n random(1, $ROWS)
select title, amount from crm.deals where id = md5(:n::text)::uuid;
SQL

relay_policy() {
  local task
  for task in /proc/"$PID"/task/*; do
    if grep -q '^tessera-sql-' "$task/comm" 2>/dev/null; then chrt "$1" -p 0 "${task##*/}" >/dev/null; fi
  done
}
# One client, simple protocol, every transaction's latency logged; prints "n avg p50 p99 p99.9" in µs.
run() {
  local logs
  logs=$(mktemp -d)
  (cd "$logs" && PGPASSWORD=$KEY pgbench -n -M simple -c 1 -j 1 -T "$SECONDS_EACH" -l -f "$OLDPWD/$OUT/latency_select.sql" \
    -h 127.0.0.1 -p "$SQL_PORT" -U demo tessera >/dev/null 2>&1)
  cat "$logs"/pgbench_log.* | awk '{print $3}' | sort -n |
    awk '{a[NR] = $1; s += $1} END {printf "%d %.0f %d %d %d\n", NR, s / NR, a[int(NR * 0.5)], a[int(NR * 0.99)], a[int(NR * 0.999)]}'
  rm -rf "$logs"
}

printf 'machine: %s, %s cores, %s\n' "$(uname -m)" "$(nproc)" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
printf '%-10s %-8s %5s %8s %8s %8s %8s %8s\n' load policy round tx avg_us p50_us p99_us p99.9_us
for load in idle busy; do
  if [ "$load" = busy ]; then
    for _ in $(seq "$(nproc)"); do (while :; do :; done) & HOGS+=($!); done
  fi
  for round in $(seq "$ROUNDS"); do
    for policy in batch default; do
      if [ "$policy" = batch ]; then relay_policy -b; else relay_policy -o; fi
      read -r n avg p50 p99 p999 < <(run)
      printf '%-10s %-8s %5s %8s %8s %8s %8s %8s\n' "$load" "$policy" "$round" "$n" "$avg" "$p50" "$p99" "$p999"
    done
  done
  [ ${#HOGS[@]} -gt 0 ] && kill "${HOGS[@]}" 2>/dev/null
  HOGS=()
done
relay_policy -b
