#!/usr/bin/env bash
# Benchmark: a pgbench -S-style select-only workload over a tenant table (one deal by a random id out of
# 10,000, the id computed from a number, as pgbench -S's own statement has no string constant), at 10
# clients, with the simple and the extended protocol, against three targets in one invocation, alternating:
#   direct     pgbench → PostgreSQL (TCP) as the gateway's login in the CRM role, the tenant bound by the
#              plain setting tessera.tenant_id in the startup options
#   pgbouncer  pgbench → PgBouncer (transaction pooling, TCP) → PostgreSQL (unix socket), the same role and
#              setting by connect_query on every server connection
#   endpoint   pgbench → Tessera's SQL endpoint (TCP) → PostgreSQL (unix socket), logged in with the demo
#              tenant's API key as tessera_sql: bound by its session's row in core.sql_sessions, which
#              nothing the client sends changes, read by the reporting role's row policy in every statement
# The same SQL and rows everywhere. The baselines bind the tenant the cheap way (the plain setting, which any
# client could overwrite); the endpoint also looks its binding up in every statement (the server session
# and the hash of its token), checks every statement, and counts rows and bytes. In the extended protocol
# it prepares a text without string constants that the client parses again and again once upstream (see
# gateway/src/sql/statements.rs),
# which neither baseline does: pgbench sends every statement as a Parse of the unnamed statement.
#
#   bench/sql_endpoint.sh                   # defaults: 10 clients, 9 rounds of 5 s per target and protocol
#   CLIENTS=10 ROUNDS=5 SECONDS_EACH=10 bench/sql_endpoint.sh
#   TARGETS="pgbouncer endpoint" MODES=simple ROUNDS=20 SECONDS_EACH=3 bench/sql_endpoint.sh   # a subset
#   TARGETS="pgbouncer endpoint endpoint-default" MODES=simple bench/sql_endpoint.sh
#       endpoint-default: the same endpoint with its relay threads in the default scheduling policy during
#       its runs (chrt), as before they ran under SCHED_BATCH
#
# Needs: cargo, PostgreSQL server binaries, pgbench, psql, pgbouncer (`apt-get install postgresql pgbouncer`).
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${CLIENTS:-10}
THREADS=${THREADS:-2}
SECONDS_EACH=${SECONDS_EACH:-5}
ROUNDS=${ROUNDS:-9}
ROWS=${ROWS:-10000}
HTTP_PORT=${HTTP_PORT:-18580}
SQL_PORT=${SQL_PORT:-18581}
BOUNCER_PORT=${BOUNCER_PORT:-18582}
OUT=bench/out
mkdir -p "$OUT"
. bench/sql_common.sh
BOUNCER=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
need_tools pgbench psql "$BOUNCER"
case " ${TARGETS:-} " in *" endpoint-default "*) need_tools chrt ;; esac

BPID=
cleanup() {
  # As root BPID is runuser's; PgBouncer's own pid is in its pid file.
  if [ -n "$BPID" ]; then
    kill "$(cat "$DATA/pgbouncer.pid" 2>/dev/null || echo "$BPID")" 2>/dev/null || true
    wait "$BPID" 2>/dev/null || true
  fi
  stop_tessera
}
trap cleanup EXIT
start_tessera
# tessera_app gets a password for the direct TCP connection (local sockets are trusted).
load_deals "alter role tessera_app password 'bench';"
export PGCONNECT_TIMEOUT=10
TENANT=$(psql -Atq -h "$SOCK" -p "$PGPORT" -U postgres tessera -c "select id from core.tenants where slug = 'demo'")

cat >"$OUT/pgbouncer.ini" <<INI
[databases]
tessera = host=$SOCK port=$PGPORT dbname=tessera user=tessera_app connect_query='set role tessera_crm; select set_config(''tessera.tenant_id'', ''$TENANT'', false)'
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
auth_type = any
pool_mode = transaction
default_pool_size = $CLIENTS
max_client_conn = 200
logfile = $DATA/pgbouncer.log
pidfile = $DATA/pgbouncer.pid
unix_socket_dir =
INI
if [ "$(id -u)" = 0 ]; then
  chown postgres "$OUT/pgbouncer.ini" "$DATA" 2>/dev/null || true
  runuser -u postgres -- "$BOUNCER" "$OUT/pgbouncer.ini" >"$OUT/pgbouncer.out" 2>&1 &
else
  "$BOUNCER" "$OUT/pgbouncer.ini" >"$OUT/pgbouncer.out" 2>&1 &
fi
BPID=$!
sleep 1
kill -0 "$BPID" 2>/dev/null || { cat "$OUT/pgbouncer.out" "$DATA/pgbouncer.log" >&2; exit 1; }

# Every target sees the tenant's rows, and only them (a binding that failed would make the work cheaper).
sees() { psql -Atq "$@" -c "select count(*) from crm.deals where id = md5(1::text)::uuid"; }
[ "$(PGPASSWORD=bench PGOPTIONS="-c role=tessera_crm -c tessera.tenant_id=$TENANT" sees -h 127.0.0.1 -p "$PGPORT" -U tessera_app tessera)" = 1 ] \
  || { echo "direct: the tenant's rows are not visible" >&2; exit 1; }
[ "$(sees -h 127.0.0.1 -p "$BOUNCER_PORT" -U tessera_app tessera)" = 1 ] \
  || { echo "pgbouncer: the tenant's rows are not visible" >&2; exit 1; }
[ "$(PGPASSWORD=$KEY sees -h 127.0.0.1 -p "$SQL_PORT" -U demo tessera)" = 1 ] \
  || { echo "endpoint: the tenant's rows are not visible" >&2; exit 1; }

# CPU time in clock ticks: PostgreSQL's (the postmaster with the backends it reaped, and the live ones) and
# the proxy's (PgBouncer's or Tessera's whole process).
TICK_US=$(( 1000000 / $(getconf CLK_TCK) ))
POSTMASTER=$(head -1 "$DATA/pg/postmaster.pid")
pg_ticks() { pg_cpu_ticks "$POSTMASTER"; }
ticks() { awk '{print $14 + $15}' "$1" 2>/dev/null || echo 0; }
# Context switches (voluntary + involuntary) of every thread of the given processes.
switches() {
  for p in "$@"; do cat /proc/"$p"/task/*/status 2>/dev/null || true; done |
    awk '/^(non)?voluntary_ctxt_switches/ {s += $2} END {print s + 0}'
}
pg_switches() { switches $(pgrep -P "$POSTMASTER" || true); }
proxy_pid() {
  case $1 in
    pgbouncer) cat "$DATA/pgbouncer.pid" ;;
    endpoint | endpoint-default) echo "$PID" ;;
  esac
}
proxy_ticks() {
  case $1 in
    direct) echo 0 ;;
    *) ticks "/proc/$(proxy_pid "$1")/stat" ;;
  esac
}
# One run: target, protocol, seconds → "tps, PostgreSQL's and the proxy's CPU µs per transaction, and
# PostgreSQL's backends' and the proxy's context switches per 100 transactions".
run() {
  local target=$1 mode=$2 secs=$3 out pg0 px0 pg1 px1 n ps0 xs0 ps1 xs1
  out="$OUT/sql.$target.$mode.txt"
  pg0=$(pg_ticks); px0=$(proxy_ticks "$target")
  xs0=$(switches $(proxy_pid "$target")); ps0=$(pg_switches)
  if [ "$target" = endpoint-default ]; then relay_policy -o; fi
  case $target in
    direct) PGPASSWORD=bench PGOPTIONS="-c role=tessera_crm -c tessera.tenant_id=$TENANT" pgbench -n -M "$mode" \
      -c "$CLIENTS" -j "$THREADS" -T "$secs" -f "$OUT/sql_select.sql" -h 127.0.0.1 -p "$PGPORT" -U tessera_app \
      tessera >"$out" 2>&1 ;;
    pgbouncer) pgbench -n -M "$mode" -c "$CLIENTS" -j "$THREADS" -T "$secs" -f "$OUT/sql_select.sql" \
      -h 127.0.0.1 -p "$BOUNCER_PORT" -U tessera_app tessera >"$out" 2>&1 ;;
    endpoint | endpoint-default) PGPASSWORD=$KEY pgbench -n -M "$mode" -c "$CLIENTS" -j "$THREADS" -T "$secs" \
      -f "$OUT/sql_select.sql" -h 127.0.0.1 -p "$SQL_PORT" -U demo tessera >"$out" 2>&1 ;;
  esac
  if [ "$target" = endpoint-default ]; then relay_policy -b; fi
  pg1=$(pg_ticks); px1=$(proxy_ticks "$target")
  xs1=$(switches $(proxy_pid "$target")); ps1=$(pg_switches)
  grep -q 'number of failed transactions: 0' "$out" || { echo "$target $mode failed:" >&2; cat "$out" >&2; exit 1; }
  n=$(grep -E '^number of transactions actually processed' "$out" | awk '{print $6}' | cut -d/ -f1)
  echo "$(grep -E '^tps' "$out" | awk '{print $3}') $(( (pg1 - pg0) * TICK_US / n )) $(( (px1 - px0) * TICK_US / n )) $(( (ps1 - ps0) * 100 / n )) $(( (xs1 - xs0) * 100 / n ))"
}

TARGETS=${TARGETS:-direct pgbouncer endpoint}
MODES=${MODES:-simple extended}
echo "warming up" >&2
for t in $TARGETS; do for m in $MODES; do run "$t" "$m" 2 >/dev/null; done; done
: >"$OUT/sql_rounds.txt"
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS" >&2
  for m in $MODES; do
    for t in $TARGETS; do
      # Assigned first: a run that fails (in its subshell) stops the script instead of recording nothing.
      result=$(run "$t" "$m" "$SECONDS_EACH")
      echo "$m $t $result" >>"$OUT/sql_rounds.txt"
    done
  done
done

printf 'machine: %s, %s cores, %s\n' "$(uname -m)" "$(nproc)" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
printf 'select one deal by random id of %s, %s clients, %s rounds of %s s per target and protocol, alternating:\n' \
  "$ROWS" "$CLIENTS" "$ROUNDS" "$SECONDS_EACH"
# Per protocol: each target's median tps, CPU and context switches; the endpoint's ratio to each baseline as
# the ratio of the medians and as the median of the rounds' ratios (the targets run back to back in a round,
# so a round's ratio compares them under the same conditions on a shared machine).
col() { awk -v m="$1" -v t="$2" -v c="$3" '$1 == m && $2 == t {print $c}' "$OUT/sql_rounds.txt"; }
for m in $MODES; do
  for t in $TARGETS; do
    line=$(printf '  %-8s %-16s %7.0f tps; per transaction (medians): CPU PostgreSQL %4.0f µs, proxy %3.0f µs' \
      "$m" "$t" "$(col "$m" "$t" 3 | median)" "$(col "$m" "$t" 4 | median)" "$(col "$m" "$t" 5 | median)")
    # Direct's backends live only while pgbench runs, so their context switches are not counted.
    [ "$t" != direct ] && line="$line$(printf '; context switches PostgreSQL %.2f, proxy %.2f' \
      "$(col "$m" "$t" 6 | median | awk '{print $1 / 100}')" "$(col "$m" "$t" 7 | median | awk '{print $1 / 100}')")"
    echo "$line"
  done
  for target in endpoint endpoint-default; do
    case " $TARGETS " in *" $target "*) ;; *) continue ;; esac
    for base in direct pgbouncer; do
      case " $TARGETS " in *" $base "*) ;; *) continue ;; esac
      ratios=$(paste -d' ' <(col "$m" "$target" 3) <(col "$m" "$base" 3) | awk '{printf "%.2f\n", $1 / $2}')
      printf "  %-8s %s/%-9s %.2f (ratio of the medians), %.2f (median of the rounds' ratios); by round: %s\n" \
        "$m" "$target" "$base" "$(echo "$(col "$m" "$target" 3 | median) / $(col "$m" "$base" 3 | median)" | bc -l)" \
        "$(echo "$ratios" | median)" "$(echo $ratios)"
    done
  done
done
