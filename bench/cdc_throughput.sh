#!/usr/bin/env bash
# Benchmark: CDC throughput (issue 3). On the same WAL, the time `tessera cdc` takes from its start until every
# change is durable in events.log and acknowledged to the slot, against pg_recvlogical reading the same slot
# data (a copy of the slot) into a file, in one invocation.
#
#   bench/cdc_throughput.sh                      # defaults: 3 alternating rounds of both workloads
#   ROUNDS=5 BATCHED_CHANGES=200000 SINGLE_TXS=20000 bench/cdc_throughput.sh
#   WORKLOADS=batched bench/cdc_throughput.sh    # only one of the two workloads
#   BREAKDOWN=1 ...                              # also PostgreSQL's CPU per process after each tessera run
#   SETUP_SQL="alter role tessera_replication set synchronous_commit = off" ...   # an experiment
#
# Workloads (inserts into crm.deals of the demo tenant, generated while no consumer reads the slot):
#   batched  BATCHED_CHANGES rows in transactions of BATCH rows (default 200,000 in 1,000-row transactions)
#   single   SINGLE_TXS single-row transactions (default 20,000)
# Per round and workload: clean up, move both slots past the cleanup, generate the WAL, then run the two
# consumers one after the other (tessera first in odd rounds, pg_recvlogical first in even rounds), each
# after a checkpoint. The ratio is rate_tessera / rate_pg_recvlogical = time_pg_recvlogical / time_tessera.
#
# Needs (as root): cargo, PostgreSQL 15 server and client (pg_ctl, psql, pg_recvlogical), bc.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
BATCHED_CHANGES=${BATCHED_CHANGES:-200000}
BATCH=${BATCH:-1000}
SINGLE_TXS=${SINGLE_TXS:-20000}
WORKLOADS=${WORKLOADS:-batched single}
. bench/cdc_common.sh
need_tools cargo psql pg_recvlogical pg_ctl bc
OUT=$OUT/cdc_throughput
mkdir -p "$OUT"

make_work
build_tessera
echo "provisioning a cluster in $WORK" >&2
provision
start_poller
# For experiments: SQL run as superuser once the cluster is provisioned (say, a setting or an index dropped).
[ -n "${SETUP_SQL:-}" ] && q "$SETUP_SQL" >/dev/null

# Cleans up the previous round, moves both slots past the cleanup and writes the workload's WAL. Sets END (the
# WAL position after the workload's last commit) and EXPECTED (events the worker must record).
generate() {
  local workload=$1
  q "truncate crm.deals; truncate events.log_chunks" >/dev/null
  advance_slot tessera
  copy_slot baseline
  case $workload in
    batched)
      EXPECTED=$(( BATCHED_CHANGES / BATCH * BATCH ))
      PGOPTIONS='-c synchronous_commit=off' q "do \$\$ begin
        for t in 1..$(( BATCHED_CHANGES / BATCH )) loop
          insert into crm.deals (tenant_id, title, stage, amount, currency, owner_email, expected_close_date)
          select '$TENANT', 'bench deal ' || t || '-' || g, 'lead', (g::bigint * 7919 % 100000) + 0.5, 'USD', 'ana@demo.example', date '2027-01-01' + g % 90
            from generate_series(1, $BATCH) g;
          commit;
        end loop; end \$\$" ;;
    single)
      EXPECTED=$SINGLE_TXS
      PGOPTIONS='-c synchronous_commit=off' q "do \$\$ begin
        for t in 1..$SINGLE_TXS loop
          insert into crm.deals (tenant_id, title, stage, amount, currency, owner_email, expected_close_date)
          values ('$TENANT', 'bench deal ' || t, 'lead', (t * 7919 % 100000) + 0.5, 'USD', 'ana@demo.example', date '2027-01-01' + t % 90);
          commit;
        end loop; end \$\$" ;;
  esac
  END=$(q "select pg_current_wal_insert_lsn()")
}

# `tessera cdc` from process start until the slot is acknowledged past END (the worker acknowledges a
# source commit only after its events are committed to the log, and keepalive positions only between
# transactions). Sets ELAPSED, CPU (the tessera process's CPU seconds) and PGCPU (PostgreSQL's, until the
# walsender has ended).
run_tessera() {
  local t0 t1 recorded pg0 backends
  q "checkpoint" >/dev/null
  pg0=$(pg_cpu_seconds)
  t0=$(now)
  start_cdc "$OUT/cdc.log"
  while :; do
    poll "select confirmed_flush_lsn >= '$END' from pg_replication_slots where slot_name = 'tessera';"
    [ "$REPLY" = t ] && break
    kill -0 "$CDC_PID" 2>/dev/null || { echo "tessera cdc exited:" >&2; cat "$OUT/cdc.log" >&2; exit 1; }
    nap 0.01
  done
  t1=$(now)
  CPU=$(cpu_seconds "$CDC_PID")
  if [ -n "${BREAKDOWN:-}" ]; then
    # PostgreSQL's processes by CPU ticks since they started (the writer's and the walsender's are this run's).
    echo "PostgreSQL processes, CPU ticks (1/$(getconf CLK_TCK) s):" >&2
    for c in $(pgrep -P "$(head -1 "$WORK/data/pg/postmaster.pid")"); do
      echo "  $(awk '{print $14 + $15}' "/proc/$c/stat") $(tr '\0' ' ' <"/proc/$c/cmdline")"
    done | sort -rn | head -6 >&2
  fi
  # The worker's server processes (walsender, writer, dispatcher): once they are gone and reaped (kill -0
  # fails), their CPU is in the postmaster's reaped children's.
  backends=$(q "select string_agg(pid::text, ' ') from pg_stat_activity where usename = 'tessera_replication'")
  stop_cdc
  wait_gone $backends
  PGCPU=$(echo "$(pg_cpu_seconds) - $pg0" | bc -l)
  ELAPSED=$(echo "$t1 - $t0" | bc -l)
  recorded=$(q "select count(*) from events.log where type = 'crm.deals.insert'")
  [ "$recorded" = "$EXPECTED" ] || { echo "events.log holds $recorded deal inserts, expected $EXPECTED" >&2; exit 1; }
}

# pg_recvlogical with pgoutput (proto_version 1, the same as tessera's client) on the copied slot into a
# file, until END. Sets ELAPSED and PGCPU.
run_recvlogical() {
  local t0 t1 pg0
  q "checkpoint" >/dev/null
  rm -f "$OUT/recvlogical.out"
  pg0=$(pg_cpu_seconds)
  t0=$(now)
  pg_recvlogical -d "$SUPER" --slot baseline --start --no-loop --endpos "$END" \
    -o proto_version=1 -o publication_names=tessera_cdc -f "$OUT/recvlogical.out"
  t1=$(now)
  wait_gone $(q "select active_pid from pg_replication_slots where slot_name = 'baseline' and active_pid is not null")
  PGCPU=$(echo "$(pg_cpu_seconds) - $pg0" | bc -l)
  ELAPSED=$(echo "$t1 - $t0" | bc -l)
  [ -s "$OUT/recvlogical.out" ] || { echo "pg_recvlogical wrote nothing" >&2; exit 1; }
}

: >"$OUT/rounds.txt"
for round in $(seq 1 "$ROUNDS"); do
  for workload in $WORKLOADS; do
    echo "round $round/$ROUNDS, $workload: generating" >&2
    generate "$workload"
    if [ $((round % 2)) = 1 ]; then order="tessera recvlogical"; else order="recvlogical tessera"; fi
    for side in $order; do
      echo "round $round/$ROUNDS, $workload: $side" >&2
      if [ "$side" = tessera ]; then run_tessera; TT=$ELAPSED; TCPU=$CPU; TPG=$PGCPU; else run_recvlogical; TR=$ELAPSED; RPG=$PGCPU; fi
    done
    echo "$workload $round $EXPECTED $TT $TR $TCPU ${order%% *} $TPG $RPG" >>"$OUT/rounds.txt"
  done
done

machine_line
printf 'tessera cdc vs pg_recvlogical (pgoutput, proto_version 1) on the same slot data; %s rounds, alternating\n' "$ROUNDS"
# cpu_s: the tessera process's CPU seconds; pg_cpu_s: PostgreSQL's during each side's run (tessera / pg_recvlogical).
printf '%-8s %5s %8s %10s %10s %12s %12s %7s %8s %-11s %s\n' workload round changes tessera_s recvlog_s tessera_ch/s recvlog_ch/s ratio cpu_s pg_cpu_s first
while read -r w r n tt tr cpu first tpg rpg; do
  printf '%-8s %5s %8s %10.2f %10.2f %12.0f %12.0f %7.2f %8s %-11s %s\n' "$w" "$r" "$n" "$tt" "$tr" \
    "$(echo "$n / $tt" | bc -l)" "$(echo "$n / $tr" | bc -l)" "$(echo "$tr / $tt" | bc -l)" "$cpu" \
    "$(printf '%.2f/%.2f' "$tpg" "$rpg")" "$first"
done <"$OUT/rounds.txt"
echo "medians:"
for w in $WORKLOADS; do
  n=$(awk -v w="$w" '$1 == w {print $3; exit}' "$OUT/rounds.txt")
  tt=$(awk -v w="$w" '$1 == w {print $4}' "$OUT/rounds.txt" | median)
  tr=$(awk -v w="$w" '$1 == w {print $5}' "$OUT/rounds.txt" | median)
  ratio=$(awk -v w="$w" '$1 == w {print $5 / $4}' "$OUT/rounds.txt" | median)
  printf '  %-8s %8s changes: tessera %.2f s (%.0f ch/s), pg_recvlogical %.2f s (%.0f ch/s), ratio (median of rounds) %.2f\n' \
    "$w" "$n" "$tt" "$(echo "$n / $tt" | bc -l)" "$tr" "$(echo "$n / $tr" | bc -l)" "$ratio"
done
