#!/usr/bin/env bash
# Benchmark (issue 4): a cached GET against a trivial axum handler in the same binary, under the same load
# generator, in one invocation. `tessera up` (response cache on) serves both:
#   - cached: GET /v1/crm/deals/{id} with the demo tenant's key, answered from the cache after the first
#     request (every response is checked to carry `x-cache: hit`, except the warm-up's first);
#   - trivial: GET /healthz, a handler that returns a constant JSON object, through the same middleware
#     stack (request ids, tracing, panic catching).
# Rounds alternate the two sides; medians are reported, and their ratio cached/trivial. The rate limits stay
# in the cached side's path (/healthz is not under /v1), set far above what the machine can serve.
#
#   bench/rest_cached_get.sh                 # 10 connections, 5 rounds of 8 s per side
#   CONNS=10 ROUNDS=5 SECONDS_EACH=8 bench/rest_cached_get.sh
#
# Needs: cargo, wrk, curl, and PostgreSQL 15 server binaries (for `tessera up`).
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${CONNS:-10}
SECONDS_EACH=${SECONDS_EACH:-8}
ROUNDS=${ROUNDS:-5}
THREADS=${THREADS:-2}
PORT=${PORT:-18481}
OUT=bench/out/rest_cached
mkdir -p "$OUT"
for tool in wrk curl; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install wrk curl" >&2; exit 2; }
done
cargo build --release --quiet
DATA=$(mktemp -d /tmp/tessera-cached-XXXXXX)
chmod 755 "$DATA"
PID=
cleanup() { [ -n "$PID" ] && kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null; rm -rf "$DATA"; }
trap cleanup EXIT

TESSERA_LOG=warn TOKIO_WORKER_THREADS=${TOKIO_WORKER_THREADS:-2} target/release/tessera up --data-dir "$DATA" \
  --rate-limit-ip 100000000 --rate-limit-key 100000000 --rate-limit-tenant 100000000 \
  --listen "127.0.0.1:$PORT" >"$OUT/up.log" 2>&1 &
PID=$!
DEAL=0190a000-0000-7000-8000-000000000021   # a deal of the demo tenant's sample data
URL="http://127.0.0.1:$PORT/v1/crm/deals/$DEAL"
KEY=
until [ -n "$KEY" ]; do
  kill -0 "$PID" 2>/dev/null || { cat "$OUT/up.log" >&2; exit 1; }
  KEY=$(grep -o 'tsk_[0-9a-f]*_[0-9a-f]*' "$OUT/up.log" 2>/dev/null | head -1 || true)
  sleep 0.05
done
# Until the cache serves (its first heartbeat has come back through the CDC worker).
for _ in $(seq 600); do
  [ "$(curl -s -o /dev/null -D - "$URL" -H "Authorization: Bearer $KEY" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-cache" {print $2}')" = hit ] && break
  sleep 0.05
done
hdr=$(curl -s -o /dev/null -D - "$URL" -H "Authorization: Bearer $KEY" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-cache" {print $2}')
[ "$hdr" = hit ] || { echo "the cache does not serve (x-cache: $hdr)" >&2; exit 1; }

# wrk counts responses without x-cache: hit as errors through this script.
cat >"$OUT/hits.lua" <<'LUA'
misses = 0
response = function(status, headers, body)
  if status ~= 200 or headers["x-cache"] ~= "hit" then misses = misses + 1 end
end
done = function(summary, latency, requests) io.write(string.format("not-hit: %d\n", misses)) end
LUA

wrk -t"$THREADS" -c"$CONNS" -d3s -H "Authorization: Bearer $KEY" "$URL" >/dev/null
wrk -t"$THREADS" -c"$CONNS" -d3s "http://127.0.0.1:$PORT/healthz" >/dev/null
: >"$OUT/rounds.txt"
for round in $(seq 1 "$ROUNDS"); do
  order="cached trivial"; [ $((round % 2)) = 0 ] && order="trivial cached"
  for side in $order; do
    echo "round $round/$ROUNDS: $side" >&2
    if [ "$side" = cached ]; then
      wrk -t"$THREADS" -c"$CONNS" -d"${SECONDS_EACH}s" --latency -s "$OUT/hits.lua" -H "Authorization: Bearer $KEY" "$URL" >"$OUT/cached.$round.txt"
      # wrk's Lua state is per thread: each thread prints its own count.
      not_hit=$(awk '/^not-hit:/ {n += $2} END {print n + 0}' "$OUT/cached.$round.txt")
      [ "$not_hit" = 0 ] || { echo "round $round: $not_hit cached-side responses were not cache hits" >&2; exit 1; }
      C=$(awk '/Requests\/sec/ {print $2}' "$OUT/cached.$round.txt")
    else
      wrk -t"$THREADS" -c"$CONNS" -d"${SECONDS_EACH}s" --latency "http://127.0.0.1:$PORT/healthz" >"$OUT/trivial.$round.txt"
      T=$(awk '/Requests\/sec/ {print $2}' "$OUT/trivial.$round.txt")
    fi
  done
  echo "$C $T $(echo "$C / $T" | bc -l)" >>"$OUT/rounds.txt"
done
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
printf 'machine: %s, %s cores, %s\n' "$(uname -m)" "$(nproc)" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
printf 'load average at the end: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
printf 'cached GET /v1/crm/deals/{id} vs GET /healthz, wrk -t%s -c%s, %s rounds of %s s per side, alternating:\n' \
  "$THREADS" "$CONNS" "$ROUNDS" "$SECONDS_EACH"
while read -r c t r; do printf '  round: cached %7.0f req/s, trivial %7.0f req/s, ratio %.2f\n' "$c" "$t" "$r"; done <"$OUT/rounds.txt"
printf 'medians: cached %.0f req/s, trivial %.0f req/s, ratio (median of rounds) %.2f\n' \
  "$(awk '{print $1}' "$OUT/rounds.txt" | median)" "$(awk '{print $2}' "$OUT/rounds.txt" | median)" \
  "$(awk '{print $3}' "$OUT/rounds.txt" | median)"
