#!/usr/bin/env bash
# Benchmark: CDC memory on one huge transaction (issue 3). One transaction of ROWS changes to crm.deals is
# processed by `tessera cdc` (until all its events are durable in events.log and the slot is acknowledged)
# and by pg_recvlogical on a copy of the slot (into a file), each under /usr/bin/time -v; reports both peak
# RSS values (and, for scale, the time each took).
#
#   bench/cdc_memory.sh                        # defaults: 1,000,000 rows; an insert, then an update of them
#   ROWS=1000000 WORKLOADS="insert update" ROUNDS=1 bench/cdc_memory.sh
#
# Workloads: insert  one `insert … select from generate_series(1, ROWS)` transaction;
#            update  one `update crm.deals set amount = amount + 1` over those rows (crm.deals has REPLICA
#                    IDENTITY FULL, so every change carries the old and the new row: twice the data).
# The two sides alternate which goes first (tessera first for the first workload of odd rounds).
#
# Needs (as root): cargo, PostgreSQL 15 server and client (pg_ctl, psql, pg_recvlogical), GNU time
# (`apt-get install time`), bc.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-1000000}
WORKLOADS=${WORKLOADS:-insert update}
ROUNDS=${ROUNDS:-1}
LIMIT_MB=${LIMIT_MB:-300}
. bench/cdc_common.sh
need_tools cargo psql pg_recvlogical pg_ctl bc /usr/bin/time
OUT=$OUT/cdc_memory
mkdir -p "$OUT"

make_work
build_tessera
echo "provisioning a cluster in $WORK" >&2
provision
start_poller

# Writes the workload's one transaction while no consumer reads; sets END and EXPECTED (deal events).
generate() {
  local workload=$1
  q "truncate events.log_chunks" >/dev/null
  if [ "$workload" = insert ]; then q "truncate crm.deals" >/dev/null; fi
  advance_slot tessera
  copy_slot baseline
  case $workload in
    insert)
      q "insert into crm.deals (tenant_id, title, stage, amount, currency, owner_email, expected_close_date)
         select '$TENANT', 'bench deal ' || g, 'lead', (g::bigint * 7919 % 100000) + 0.5, 'USD', 'ana@demo.example', date '2027-01-01' + g % 90
           from generate_series(1, $ROWS) g" >/dev/null ;;
    update)
      [ "$(q "select count(*) from crm.deals where title like 'bench deal %'")" = "$ROWS" ] \
        || { echo "the update workload needs the insert workload's rows first" >&2; exit 1; }
      q "update crm.deals set amount = amount + 1 where title like 'bench deal %'" >/dev/null ;;
  esac
  EXPECTED=$ROWS
  END=$(q "select pg_current_wal_insert_lsn()")
}

maxrss_mb() { awk -F: '/Maximum resident set size/ {printf "%.1f", $2 / 1024}' "$1"; }

run_tessera() {
  local t0 t1 recorded workload=$1
  q "checkpoint" >/dev/null
  t0=$(now)
  TIME_FILE=$OUT/time.tessera.txt start_cdc "$OUT/cdc.log"
  while :; do
    poll "select confirmed_flush_lsn >= '$END' from pg_replication_slots where slot_name = 'tessera';"
    [ "$REPLY" = t ] && break
    kill -0 "$CDC_PID" 2>/dev/null || { echo "tessera cdc exited:" >&2; cat "$OUT/cdc.log" >&2; exit 1; }
    nap 0.05
  done
  t1=$(now)
  HWM=$(awk '/VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$CDC_PID/status")
  stop_cdc
  ELAPSED=$(echo "$t1 - $t0" | bc -l)
  RSS=$(maxrss_mb "$OUT/time.tessera.txt")
  recorded=$(q "select count(*) from events.log where type = 'crm.deals.$workload'")
  [ "$recorded" = "$EXPECTED" ] || { echo "events.log holds $recorded deal ${workload}s, expected $EXPECTED" >&2; exit 1; }
}

run_recvlogical() {
  local t0 t1
  q "checkpoint" >/dev/null
  rm -f "$OUT/recvlogical.out"
  t0=$(now)
  /usr/bin/time -v -o "$OUT/time.recvlogical.txt" pg_recvlogical -d "$SUPER" --slot baseline --start --no-loop \
    --endpos "$END" -o proto_version=1 -o publication_names=tessera_cdc -f "$OUT/recvlogical.out"
  t1=$(now)
  ELAPSED=$(echo "$t1 - $t0" | bc -l)
  RSS=$(maxrss_mb "$OUT/time.recvlogical.txt")
  [ -s "$OUT/recvlogical.out" ] || { echo "pg_recvlogical wrote nothing" >&2; exit 1; }
  rm -f "$OUT/recvlogical.out"
}

: >"$OUT/rounds.txt"
i=0
for round in $(seq 1 "$ROUNDS"); do
  for workload in $WORKLOADS; do
    i=$((i + 1))
    echo "round $round/$ROUNDS, $workload of $ROWS rows in one transaction: generating" >&2
    generate "$workload"
    if [ $((i % 2)) = 1 ]; then order="tessera recvlogical"; else order="recvlogical tessera"; fi
    for side in $order; do
      echo "round $round/$ROUNDS, $workload: $side" >&2
      if [ "$side" = tessera ]; then
        run_tessera "$workload"; T_RSS=$RSS; T_HWM=$HWM; T_S=$ELAPSED
      else
        run_recvlogical; R_RSS=$RSS; R_S=$ELAPSED
      fi
    done
    echo "$workload $round $EXPECTED $T_RSS $T_HWM $T_S $R_RSS $R_S ${order%% *}" >>"$OUT/rounds.txt"
  done
done

machine_line
printf 'one transaction of %s changes: tessera cdc vs pg_recvlogical on the same slot data (peak RSS from /usr/bin/time -v)\n' "$ROWS"
printf '%-7s %5s %8s %16s %12s %10s %18s %10s %s\n' workload round changes tessera_peak_MB '(VmHWM MB)' tessera_s recvlog_peak_MB recvlog_s first
while read -r w r n trss thwm ts rrss rs first; do
  printf '%-7s %5s %8s %16s %12s %10.1f %18s %10.1f %s\n' "$w" "$r" "$n" "$trss" "$thwm" "$ts" "$rrss" "$rs" "$first"
done <"$OUT/rounds.txt"
worst=$(awk '{print $4}' "$OUT/rounds.txt" | sort -g | tail -1)
printf 'largest tessera peak RSS: %s MB (limit %s MB): %s\n' "$worst" "$LIMIT_MB" \
  "$(awk -v w="$worst" -v l="$LIMIT_MB" 'BEGIN {print (w < l) ? "under the limit" : "OVER THE LIMIT"}')"
