#!/usr/bin/env bash
# Benchmark: a pgbench -S-style select-only workload over a tenant table (one deal by a random id out of
# 10,000), at 10 clients, with the simple and the extended protocol, against three targets in one
# invocation, alternating:
#   direct     pgbench → PostgreSQL (TCP) as the gateway's login in the CRM role, the tenant bound by the
#              plain setting tessera.tenant_id in the startup options
#   pgbouncer  pgbench → PgBouncer (transaction pooling, TCP) → PostgreSQL (unix socket), the same role and
#              setting by connect_query on every server connection
#   endpoint   pgbench → Tessera's SQL endpoint (TCP) → PostgreSQL (unix socket), logged in with the demo
#              tenant's API key as tessera_sql: bound by its signed claim, which nothing the client sends
#              changes, checked by the row policies in every statement
# The same SQL, rows and row policies everywhere. The baselines bind the tenant the cheap way (the plain
# setting, which any client could overwrite); the endpoint also verifies its claim in every statement (a
# SECURITY DEFINER call: the claim's MAC, the server session, the key still live), checks every statement
# and counts rows and bytes.
#
#   bench/sql_endpoint.sh                   # defaults: 10 clients, 3 rounds of 8 s per target and protocol
#   CLIENTS=10 ROUNDS=5 SECONDS_EACH=10 bench/sql_endpoint.sh
#
# Needs: cargo, PostgreSQL server binaries, pgbench, psql, pgbouncer (`apt-get install postgresql pgbouncer`).
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${CLIENTS:-10}
THREADS=${THREADS:-2}
SECONDS_EACH=${SECONDS_EACH:-8}
ROUNDS=${ROUNDS:-3}
ROWS=${ROWS:-10000}
HTTP_PORT=${HTTP_PORT:-18580}
SQL_PORT=${SQL_PORT:-18581}
BOUNCER_PORT=${BOUNCER_PORT:-18582}
OUT=bench/out
mkdir -p "$OUT"
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
export PATH="$PATH:${PGBIN:-/usr/lib/postgresql/15/bin}"
BOUNCER=$(command -v pgbouncer || echo /usr/sbin/pgbouncer)
for tool in pgbench psql "$BOUNCER"; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install postgresql pgbouncer" >&2; exit 2; }
done

cargo build --release --quiet
BIN=target/release/tessera
DATA=$(mktemp -d /tmp/tessera-bench-XXXXXX)
chmod 755 "$DATA"
PID=
BPID=
cleanup() {
  [ -n "$BPID" ] && kill "$BPID" 2>/dev/null
  [ -n "$PID" ] && kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  rm -rf "$DATA"
}
trap cleanup EXIT

TESSERA_LOG=warn TOKIO_WORKER_THREADS=${TOKIO_WORKER_THREADS:-2} "$BIN" up --data-dir "$DATA" \
  --listen "127.0.0.1:$HTTP_PORT" --sql-listen "127.0.0.1:$SQL_PORT" >"$OUT/up.log" 2>&1 &
PID=$!
until KEY=$(grep -o 'tsk_[0-9a-f]*_[0-9a-f]*' "$OUT/up.log" 2>/dev/null | head -1); [ -n "$KEY" ] && grep -q 'Stop with' "$OUT/up.log"; do
  kill -0 "$PID" 2>/dev/null || { cat "$OUT/up.log" >&2; exit 1; }
  sleep 0.05
done
PG_LINE=$(grep -o 'postgresql://[^"]*' "$OUT/up.log")
SOCK=$(echo "$PG_LINE" | sed -E 's/.*host=([^&]*).*/\1/')
PGPORT=$(echo "$PG_LINE" | sed -E 's/.*port=([0-9]*).*/\1/')

# Data: ROWS deals of the demo tenant with ids the script can compute. tessera_app gets a password for the
# direct TCP connection (local sockets are trusted).
psql -q -h "$SOCK" -p "$PGPORT" -U postgres tessera <<SQL
alter role tessera_app password 'bench';
insert into crm.deals (tenant_id, id, title, stage, amount)
select t.id, ('00000000-0000-4000-8000-' || lpad(n::text, 12, '0'))::uuid, 'Deal ' || n, 'lead', n
  from core.tenants t, generate_series(1, $ROWS) n where t.slug = 'demo';
vacuum analyze crm.deals;
SQL
export PGCONNECT_TIMEOUT=10
TENANT=$(psql -Atq -h "$SOCK" -p "$PGPORT" -U postgres tessera -c "select id from core.tenants where slug = 'demo'")

cat >"$OUT/sql_select.sql" <<SQL
\set n random(1, $ROWS)
select title, amount from crm.deals where id = ('00000000-0000-4000-8000-' || lpad(:n::text, 12, '0'))::uuid;
SQL

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
sees() { psql -Atq "$@" -c "select count(*) from crm.deals where id = '00000000-0000-4000-8000-000000000001'"; }
[ "$(PGPASSWORD=bench PGOPTIONS="-c role=tessera_crm -c tessera.tenant_id=$TENANT" sees -h 127.0.0.1 -p "$PGPORT" -U tessera_app tessera)" = 1 ] \
  || { echo "direct: the tenant's rows are not visible" >&2; exit 1; }
[ "$(sees -h 127.0.0.1 -p "$BOUNCER_PORT" -U tessera_app tessera)" = 1 ] \
  || { echo "pgbouncer: the tenant's rows are not visible" >&2; exit 1; }
[ "$(PGPASSWORD=$KEY sees -h 127.0.0.1 -p "$SQL_PORT" -U demo tessera)" = 1 ] \
  || { echo "endpoint: the tenant's rows are not visible" >&2; exit 1; }

# One run: target, protocol, seconds → tps.
run() {
  local target=$1 mode=$2 secs=$3 out
  out="$OUT/sql.$target.$mode.txt"
  case $target in
    direct) PGPASSWORD=bench PGOPTIONS="-c role=tessera_crm -c tessera.tenant_id=$TENANT" pgbench -n -M "$mode" \
      -c "$CLIENTS" -j "$THREADS" -T "$secs" -f "$OUT/sql_select.sql" -h 127.0.0.1 -p "$PGPORT" -U tessera_app \
      tessera >"$out" 2>&1 ;;
    pgbouncer) pgbench -n -M "$mode" -c "$CLIENTS" -j "$THREADS" -T "$secs" -f "$OUT/sql_select.sql" \
      -h 127.0.0.1 -p "$BOUNCER_PORT" -U tessera_app tessera >"$out" 2>&1 ;;
    endpoint) PGPASSWORD=$KEY pgbench -n -M "$mode" -c "$CLIENTS" -j "$THREADS" -T "$secs" \
      -f "$OUT/sql_select.sql" -h 127.0.0.1 -p "$SQL_PORT" -U demo tessera >"$out" 2>&1 ;;
  esac
  grep -q 'number of failed transactions: 0' "$out" || { echo "$target $mode failed:" >&2; cat "$out" >&2; exit 1; }
  grep -E '^tps' "$out" | awk '{print $3}'
}

TARGETS="direct pgbouncer endpoint"
MODES="simple extended"
echo "warming up" >&2
for t in $TARGETS; do for m in $MODES; do run "$t" "$m" 2 >/dev/null; done; done
: >"$OUT/sql_rounds.txt"
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS" >&2
  for m in $MODES; do
    for t in $TARGETS; do
      echo "$m $t $(run "$t" "$m" "$SECONDS_EACH")" >>"$OUT/sql_rounds.txt"
    done
  done
done
median() { sort -n | sed -n "$(( (ROUNDS + 1) / 2 ))p"; }

printf 'machine: %s, %s cores, %s\n' "$(uname -m)" "$(nproc)" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
printf 'select one deal by random id of %s, %s clients, %s rounds of %s s per target and protocol, alternating:\n' \
  "$ROWS" "$CLIENTS" "$ROUNDS" "$SECONDS_EACH"
for m in $MODES; do
  D=$(awk -v m="$m" '$1 == m && $2 == "direct" {print $3}' "$OUT/sql_rounds.txt" | median)
  B=$(awk -v m="$m" '$1 == m && $2 == "pgbouncer" {print $3}' "$OUT/sql_rounds.txt" | median)
  E=$(awk -v m="$m" '$1 == m && $2 == "endpoint" {print $3}' "$OUT/sql_rounds.txt" | median)
  printf '  %-8s direct %7.0f tps   pgbouncer %7.0f tps   endpoint %7.0f tps   endpoint/direct %.2f   endpoint/pgbouncer %.2f\n' \
    "$m" "$D" "$B" "$E" "$(echo "$E / $D" | bc -l)" "$(echo "$E / $B" | bc -l)"
done
