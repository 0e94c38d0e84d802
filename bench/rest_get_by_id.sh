#!/usr/bin/env bash
# Benchmark: GET one deal by id through the gateway (wrk) against pgbench running the same SQL with the same
# tenant binding on the same database at the same concurrency, in one invocation. Also times `tessera up` to
# its first successful request, on a fresh data folder and on the reused one.
#
#   bench/rest_get_by_id.sh            # defaults: 10 connections, 7 rounds of 8 s per side
#   CONNS=32 ROUNDS=3 SECONDS_EACH=30 bench/rest_get_by_id.sh
#
# Needs: cargo, PostgreSQL server binaries, pgbench, wrk, curl (`apt-get install wrk curl postgresql`).
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${CONNS:-10}
SECONDS_EACH=${SECONDS_EACH:-8}
ROUNDS=${ROUNDS:-7}
THREADS=${THREADS:-2}
PORT=${PORT:-18480}
NO_LIMITS="--rate-limit-ip 100000000 --rate-limit-key 100000000 --rate-limit-tenant 100000000"
OUT=bench/out
mkdir -p "$OUT"
for tool in wrk pgbench curl; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install wrk postgresql-client curl" >&2; exit 2; }
done

cargo build --release --quiet
BIN=target/release/tessera
DATA=$(mktemp -d /tmp/tessera-bench-XXXXXX)
chmod 755 "$DATA"
PID=
cleanup() { [ -n "$PID" ] && kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null; rm -rf "$DATA"; }
trap cleanup EXIT

now() { date +%s.%N; }
# Starts `tessera up`; sets ELAPSED to the seconds until the first successful authenticated request.
start_and_time() {
  local t0 t1
  t0=$(now)
  # --no-cache: this measures the database path (the cache has its own benchmark, rest_cached_get.sh). The
  # rate limits stay in the path, set far above what the machine can serve.
  TESSERA_LOG=warn TOKIO_WORKER_THREADS=${TOKIO_WORKER_THREADS:-2} "$BIN" up --no-cache $NO_LIMITS --data-dir "$DATA" --listen "127.0.0.1:$PORT" >"$OUT/up.log" 2>&1 &
  PID=$!
  until [ -n "${KEY:-}" ] || KEY=$(grep -o 'tsk_[0-9a-f]*_[0-9a-f]*' "$OUT/up.log" 2>/dev/null | head -1); [ -n "$KEY" ]; do
    kill -0 "$PID" 2>/dev/null || { cat "$OUT/up.log" >&2; exit 1; }
    sleep 0.01
  done
  until curl -sf -o /dev/null "http://127.0.0.1:$PORT/v1/crm/deals/$DEAL" -H "Authorization: Bearer $KEY"; do
    kill -0 "$PID" 2>/dev/null || { cat "$OUT/up.log" >&2; exit 1; }
    sleep 0.01
  done
  t1=$(now)
  ELAPSED=$(echo "$t1 - $t0" | bc -l)
}
stop() { kill -TERM "$PID"; wait "$PID" || true; PID=; }

DEAL=0190a000-0000-7000-8000-000000000021   # a deal of the demo tenant's sample data
KEY=
start_and_time; FRESH=$ELAPSED
stop
start_and_time; REUSED=$ELAPSED

PG_LINE=$(grep -o 'postgresql://[^"]*' "$OUT/up.log")
SOCK=$(echo "$PG_LINE" | sed -E 's/.*host=([^&]*).*/\1/')
PGPORT=$(echo "$PG_LINE" | sed -E 's/.*port=([0-9]*).*/\1/')
PREFIX=$(echo "$KEY" | cut -d_ -f2)
HASH=$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)

# Exactly what the gateway sends for this request (see core/src/db.rs and modules/crm/src/store.rs).
cat >"$OUT/get_deal.sql" <<SQL
begin read only;
set local role tessera_crm;
select tenant_id, scopes, tenant_status, module_enabled from core.authenticate_api_key('$PREFIX', '\\x$HASH'::bytea, 'crm');
select id, company_id, contact_id, title, stage, amount::text, currency, owner_email, expected_close_date, created_at, updated_at from crm.deals where id = '$DEAL';
commit;
SQL

echo "warming up" >&2
wrk -t"$THREADS" -c"$CONNS" -d3s -H "Authorization: Bearer $KEY" "http://127.0.0.1:$PORT/v1/crm/deals/$DEAL" >/dev/null
pgbench -n -M prepared -c "$CONNS" -j "$THREADS" -T 3 -f "$OUT/get_deal.sql" -h "$SOCK" -p "$PGPORT" -U tessera_app tessera >/dev/null

# Alternate the two sides for ROUNDS rounds so that drift on a shared machine hits both alike; report the
# median rate of each side and their ratio.
: >"$OUT/rounds.txt"
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round/$ROUNDS: gateway (wrk -c$CONNS ${SECONDS_EACH}s), then pgbench (-c$CONNS ${SECONDS_EACH}s)" >&2
  wrk -t"$THREADS" -c"$CONNS" -d"${SECONDS_EACH}s" --latency -H "Authorization: Bearer $KEY" \
    "http://127.0.0.1:$PORT/v1/crm/deals/$DEAL" >"$OUT/wrk.$round.txt"
  pgbench -n -M prepared -c "$CONNS" -j "$THREADS" -T "$SECONDS_EACH" -f "$OUT/get_deal.sql" \
    -h "$SOCK" -p "$PGPORT" -U tessera_app tessera >"$OUT/pgbench.$round.txt"
  non2xx=$(grep -o 'Non-2xx or 3xx responses: [0-9]*' "$OUT/wrk.$round.txt" | grep -o '[0-9]*$' || true)
  [ -z "$non2xx" ] || { echo "the gateway answered $non2xx errors in round $round" >&2; exit 1; }
  gw=$(grep 'Requests/sec' "$OUT/wrk.$round.txt" | awk '{print $2}')
  p99=$(grep -E '^\s+99%' "$OUT/wrk.$round.txt" | awk '{print $2}')
  pg=$(grep -E '^tps' "$OUT/pgbench.$round.txt" | awk '{print $3}')
  echo "$(echo "$gw / $pg" | bc -l) $gw $pg $p99" >>"$OUT/rounds.txt"
done
median() { sort -n | sed -n "$(( (ROUNDS + 1) / 2 ))p"; }
GW=$(awk '{print $2}' "$OUT/rounds.txt" | median)
PG=$(awk '{print $3}' "$OUT/rounds.txt" | median)
RATIO=$(echo "$GW / $PG" | bc -l)

printf 'machine: %s, %s cores, %s\n' "$(uname -m)" "$(nproc)" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
printf 'tessera up to first request: fresh %.2f s, reused %.2f s\n' "$FRESH" "$REUSED"
printf 'GET /v1/crm/deals/{id}, %s connections, %s rounds of %s s per side, alternating:\n' "$CONNS" "$ROUNDS" "$SECONDS_EACH"
while read -r r g p l; do printf '  round: gateway %6.0f req/s (p99 %s), pgbench %6.0f tx/s, ratio %.2f\n' "$g" "$l" "$p" "$r"; done <"$OUT/rounds.txt"
printf 'medians:\n'
printf '  gateway (wrk)        %10.0f req/s\n' "$GW"
printf '  pgbench (same SQL)   %10.0f tx/s\n' "$PG"
printf '  ratio gateway/pgbench  %.2f\n' "$RATIO"
