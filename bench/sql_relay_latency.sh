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
. bench/sql_common.sh
need_tools pgbench psql chrt

HOGS=()
cleanup() {
  [ ${#HOGS[@]} -gt 0 ] && kill "${HOGS[@]}" 2>/dev/null
  stop_tessera
}
trap cleanup EXIT
start_tessera
load_deals

# One client, simple protocol, every transaction's latency logged; prints "n avg p50 p99 p99.9" in µs.
run() {
  local logs
  logs=$(mktemp -d)
  (cd "$logs" && PGPASSWORD=$KEY pgbench -n -M simple -c 1 -j 1 -T "$SECONDS_EACH" -l -f "$OLDPWD/$OUT/sql_select.sql" \
    -h 127.0.0.1 -p "$SQL_PORT" -U demo tessera >"$OLDPWD/$OUT/latency_pgbench.txt" 2>&1) || true
  grep -q 'number of failed transactions: 0' "$OUT/latency_pgbench.txt" || { cat "$OUT/latency_pgbench.txt" >&2; exit 1; }
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
      result=$(run)
      read -r n avg p50 p99 p999 <<<"$result"
      printf '%-10s %-8s %5s %8s %8s %8s %8s %8s\n' "$load" "$policy" "$round" "$n" "$avg" "$p50" "$p99" "$p999"
    done
  done
  [ ${#HOGS[@]} -gt 0 ] && kill "${HOGS[@]}" 2>/dev/null
  HOGS=()
done
relay_policy -b
