#!/usr/bin/env bash
# Benchmark: commit-to-subscriber-effect latency (issue 3). pgbench commits RATE single-row transactions per
# second, each inserting a crm.deals row already in stage 'won' (a new deal each time, of a demo company and
# owned by a demo sales rep). Each one yields deal.closed.won; the dispatcher then creates a draft invoice
# (invoicing.deals) and books a commission (hr.commissions).
#
#   bench/cdc_latency.sh                           # defaults: 1000 tx/s, 3 alternating rounds of 10 s per side
#   RATE=1000 SECONDS_EACH=10 ROUNDS=3 CLIENTS=4 WARMUP=10 bench/cdc_latency.sh
#
# Warm-up: a freshly provisioned database has near-empty tables, and the plans its sessions cache for them
# (every index leads with tenant_id, so on a one-page table any of them looks as good as the primary key)
# stay until autovacuum analyzes the grown tables, about a minute later. Measured in the first seconds of a
# fresh cluster, that transient dominates (invoice lookups scanning the tenant's every invoice). So, like
# pgbench's own vacuum before a run, the script first runs the load for WARMUP seconds with tessera cdc,
# then `vacuum analyze`s, and measures the steady state. WARMUP=0 measures the fresh-cluster transient.
#
# Tessera side: `tessera cdc` runs; latency of a win = commit timestamp of the transaction that created its
# invoice (pg_xact_commit_timestamp(xmin), track_commit_timestamp = on) minus the deal's commit time
# (events.log.commit_time of the deal.closed.won event, which is the source commit's timestamp from the
# WAL); the same for the commission, and for the event itself becoming durable in events.log.
# Baseline: bare logical decoding delivery at the same load: pg_recvlogical on a test_decoding slot
# (include-timestamp=1) piped into bench/cdc_latency_stamp.py, which stamps each COMMIT line on arrival:
# arrival time minus commit time, for the transactions that inserted a deal.
# Rounds alternate which side goes first; only one consumer runs at a time (the other's slot is moved past
# the round's WAL afterwards). Percentiles are nearest-rank.
#
# Needs (as root): cargo, PostgreSQL 15 server and client (pg_ctl, psql, pg_recvlogical, pgbench), python3,
# bc.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-1000}
SECONDS_EACH=${SECONDS_EACH:-10}
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-4}
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-120}
WARMUP=${WARMUP:-10}
. bench/cdc_common.sh
need_tools cargo psql pg_recvlogical pgbench pg_ctl python3 bc
OUT=$OUT/cdc_latency
mkdir -p "$OUT"

make_work
build_tessera
echo "provisioning a cluster in $WORK (track_commit_timestamp = on)" >&2
provision "alter system set track_commit_timestamp = on"
[ "$(q "show track_commit_timestamp")" = on ] || { echo "track_commit_timestamp is not on" >&2; exit 1; }
start_poller

# The demo companies (invoicing mirrors them as customers) and sales reps (HR has their commission plans).
cat >"$OUT/deal_won.sql" <<'SQL'
\set n random(1, 2000000000)
\set c random(1, 3)
insert into crm.deals (tenant_id, company_id, title, stage, amount, currency, owner_email, expected_close_date)
values (:tenant::uuid,
        (array['0190a000-0000-7000-8000-000000000001', '0190a000-0000-7000-8000-000000000002',
               '0190a000-0000-7000-8000-000000000003']::uuid[])[:c::int],
        'latency deal ' || :n::text, 'won', 1000 + :n::int % 90000, 'USD',
        case when :n::int % 2 = 0 then 'ana@demo.example' else 'ben@demo.example' end, date '2027-01-01');
SQL

# Runs the load; sets TPS (what pgbench achieved).
load() {
  pgbench -n -M prepared -c "$CLIENTS" -j 2 -R "$RATE" -T "$SECONDS_EACH" -D "tenant=$TENANT" \
    -f "$OUT/deal_won.sql" -d "$SUPER" >"$OUT/pgbench.txt" 2>&1 \
    || { cat "$OUT/pgbench.txt" >&2; exit 1; }
  TPS=$(awk '/^tps/ {printf "%.0f", $3}' "$OUT/pgbench.txt")
}

# Waits until slot `tessera` is acknowledged past `lsn` and both subscribers are through the log.
wait_drained() {
  local lsn=$1 t0
  t0=$(date +%s)
  while :; do
    poll "select (select confirmed_flush_lsn >= '$lsn' from pg_replication_slots where slot_name = 'tessera')
            and (select count(*) from events.subscribers where position >= (select events.log_end())) >= 2;"
    [ "$REPLY" = t ] && return 0
    kill -0 "$CDC_PID" 2>/dev/null || { echo "tessera cdc exited:" >&2; cat "$OUT/cdc.log" >&2; exit 1; }
    [ $(( $(date +%s) - t0 )) -lt "$DRAIN_TIMEOUT" ] || { echo "not drained after ${DRAIN_TIMEOUT}s" >&2; return 1; }
    nap 0.05
  done
}

pct() { # pct <expression in ms> <from-clause>: count p50 p99 max
  q "select count(*), round(percentile_disc(0.5) within group (order by $1)::numeric, 2),
            round(percentile_disc(0.99) within group (order by $1)::numeric, 2), round(max($1)::numeric, 2) $2" | tr '|' ' '
}

run_tessera() {
  local lsn start wins log
  advance_slot tessera
  start_cdc "$OUT/cdc.log"
  # Started and caught up (nothing pending) before the load begins.
  sleep 0.5
  wait_drained "$(q "select pg_current_wal_insert_lsn()")"
  start=$(q "select now()")
  load
  wait_drained "$(q "select pg_current_wal_insert_lsn()")" || true
  stop_cdc
  # The log's rows are chunks: an event's durable time is its chunk's commit (k.xmin).
  log="events.log_chunks k cross join lateral unnest(k.ids, k.types, k.commit_times) as l(id, type, commit_time)"
  wins="from $log where l.type = 'deal.closed.won' and l.commit_time >= '$start'"
  read -r WINS _ < <(q "select count(*) $wins")
  DEALS=$(q "select count(*) from crm.deals where title like 'latency deal %' and created_at >= '$start'")
  read -r LOG_N LOG_P50 LOG_P99 LOG_MAX < <(pct "extract(epoch from pg_xact_commit_timestamp(k.xmin) - l.commit_time) * 1000" "$wins")
  read -r INV_N INV_P50 INV_P99 INV_MAX < <(pct "extract(epoch from pg_xact_commit_timestamp(i.xmin) - l.commit_time) * 1000" \
    "from $log join invoicing.invoices i on i.tenant_id = k.tenant_id and i.source_event_id = l.id
      where l.type = 'deal.closed.won' and l.commit_time >= '$start'")
  read -r COM_N COM_P50 COM_P99 COM_MAX < <(pct "extract(epoch from pg_xact_commit_timestamp(c.xmin) - l.commit_time) * 1000" \
    "from $log join hr.commissions c on c.tenant_id = k.tenant_id and c.source_event_id = l.id
      where l.type = 'deal.closed.won' and l.commit_time >= '$start'")
  [ "$WINS" = "$DEALS" ] && [ "$INV_N" = "$WINS" ] && [ "$COM_N" = "$WINS" ] \
    || echo "warning: $DEALS deals, $WINS deal.closed.won events, $INV_N invoices, $COM_N commissions" >&2
}

run_baseline() {
  local rl py start end
  q "select pg_create_logical_replication_slot('latency_baseline', 'test_decoding')" >/dev/null
  pg_recvlogical -d "$SUPER" --slot latency_baseline --start --no-loop -s 1 \
    -o include-timestamp=1 -o skip-empty-xacts=1 -f - 2>"$OUT/recvlogical.err" \
    | python3 bench/cdc_latency_stamp.py crm.deals "$OUT/baseline.samples" >"$OUT/baseline.txt" &
  py=$!
  PIDS+=("$py")
  for _ in $(seq 200); do
    [ "$(q "select active from pg_replication_slots where slot_name = 'latency_baseline'")" = t ] && break
    nap 0.05
  done
  start=$(q "select now()")
  load
  end=$(q "select pg_current_wal_insert_lsn()")
  for _ in $(seq 200); do
    [ "$(q "select confirmed_flush_lsn >= '$end' from pg_replication_slots where slot_name = 'latency_baseline'")" = t ] && break
    sleep 0.1
  done
  rl=$(q "select active_pid from pg_replication_slots where slot_name = 'latency_baseline'")
  # Ending the walsender ends pg_recvlogical (--no-loop), which ends the python script's input.
  q "select pg_terminate_backend($rl)" >/dev/null
  wait "$py" || true
  PIDS=("${PIDS[@]/$py}")
  q "select pg_drop_replication_slot('latency_baseline')" >/dev/null
  DEALS=$(q "select count(*) from crm.deals where title like 'latency deal %' and created_at >= '$start'")
  read -r B_N B_P50 B_P99 B_MAX _ <"$OUT/baseline.txt"
  [ "$B_N" = "$DEALS" ] || echo "warning: $DEALS deals, the baseline saw $B_N" >&2
}

if [ "$WARMUP" -gt 0 ]; then
  echo "warm-up: pgbench -R $RATE for ${WARMUP}s with tessera cdc, then vacuum analyze" >&2
  advance_slot tessera
  start_cdc "$OUT/cdc.log"
  SECONDS_EACH_SAVED=$SECONDS_EACH
  SECONDS_EACH=$WARMUP
  load
  SECONDS_EACH=$SECONDS_EACH_SAVED
  wait_drained "$(q "select pg_current_wal_insert_lsn()")" || true
  stop_cdc
  q "vacuum analyze" >/dev/null
fi

: >"$OUT/rounds.txt"
for round in $(seq 1 "$ROUNDS"); do
  if [ $((round % 2)) = 1 ]; then order="tessera baseline"; else order="baseline tessera"; fi
  for side in $order; do
    echo "round $round/$ROUNDS: $side, pgbench -R $RATE for ${SECONDS_EACH}s" >&2
    q "checkpoint" >/dev/null
    if [ "$side" = tessera ]; then run_tessera; T_TPS=$TPS; else run_baseline; B_TPS=$TPS; fi
  done
  echo "$round $WINS $T_TPS $LOG_P50 $LOG_P99 $INV_P50 $INV_P99 $INV_MAX $COM_P50 $COM_P99 $B_N $B_TPS $B_P50 $B_P99 $B_MAX ${order%% *}" >>"$OUT/rounds.txt"
done

machine_line
printf 'commit-to-effect latency in ms at %s single-row tx/s (pgbench -c %s), %s rounds of %s s per side, alternating\n' \
  "$RATE" "$CLIENTS" "$ROUNDS" "$SECONDS_EACH"
printf '%5s %6s %5s | %8s %8s | %8s %8s %8s | %8s %8s || %6s %5s %8s %8s %8s | %s\n' round wins tps log_p50 log_p99 \
  inv_p50 inv_p99 inv_max com_p50 com_p99 base_n tps base_p50 base_p99 base_max first
while read -r r w tt lp5 lp9 ip5 ip9 imax cp5 cp9 bn bt bp5 bp9 bmax first; do
  printf '%5s %6s %5s | %8s %8s | %8s %8s %8s | %8s %8s || %6s %5s %8s %8s %8s | %s\n' "$r" "$w" "$tt" "$lp5" "$lp9" \
    "$ip5" "$ip9" "$imax" "$cp5" "$cp9" "$bn" "$bt" "$bp5" "$bp9" "$bmax" "$first"
done <"$OUT/rounds.txt"
col() { awk -v c="$1" '{print $c}' "$OUT/rounds.txt" | median; }
echo "medians of rounds (ms):"
printf '  tessera: event durable in events.log  p50 %s  p99 %s\n' "$(col 4)" "$(col 5)"
printf '  tessera: draft invoice committed      p50 %s  p99 %s   (target p50 < 20, p99 < 100)\n' "$(col 6)" "$(col 7)"
printf '  tessera: commission committed         p50 %s  p99 %s\n' "$(col 9)" "$(col 10)"
printf '  baseline: pg_recvlogical test_decoding delivery  p50 %s  p99 %s\n' "$(col 13)" "$(col 14)"
printf '  ratio invoice/baseline  p50 %.1f  p99 %.1f\n' "$(echo "$(col 6) / $(col 13)" | bc -l)" "$(echo "$(col 7) / $(col 14)" | bc -l)"
