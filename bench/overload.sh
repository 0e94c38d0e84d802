#!/usr/bin/env bash
# Benchmark: the gateway under twice the load it can serve. Measures what the machine serves (wrk, closed
# loop, uncached GET of one deal), then offers twice that rate open-loop (bench/loadgen.rs: requests go out on
# schedule whatever the answers do, latency counted from when each was due) for DURATION seconds, twice in
# one invocation: with load shedding as shipped (--max-in-flight default, 50 ms queue) and, as the baseline,
# with shedding off (--max-in-flight 0: only the database pool's 250 ms wait refuses). Reports the accepted
# requests' p50/p99, what was refused and how, and the gateway's peak resident memory, sampled every 200 ms.
#
#   bench/overload.sh                  # defaults: capacity over 10 s, 20 s of 2x load per side
#   FACTOR=3 DURATION=30 bench/overload.sh
#
# Needs: cargo, PostgreSQL server binaries, wrk, curl (`apt-get install wrk curl postgresql`).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-20}
FACTOR=${FACTOR:-2}
CONNS=${CONNS:-32}
PORT=${PORT:-18490}
NO_LIMITS="--rate-limit-ip 100000000 --rate-limit-key 100000000 --rate-limit-tenant 100000000"
OUT=bench/out
mkdir -p "$OUT"
for tool in wrk curl; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install wrk curl" >&2; exit 2; }
done

cargo build --release --quiet
cargo build --release --quiet --example loadgen
BIN=target/release/tessera
LOADGEN=target/release/examples/loadgen
DATA=$(mktemp -d /tmp/tessera-bench-XXXXXX)
chmod 755 "$DATA"
PID=
SAMPLER=
cleanup() {
  [ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null
  [ -n "$PID" ] && kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  rm -rf "$DATA"
}
trap cleanup EXIT

DEAL=0190a000-0000-7000-8000-000000000021   # a deal of the demo tenant's sample data
URL="http://127.0.0.1:$PORT/v1/crm/deals/$DEAL"
KEY=
# Starts `tessera up` (uncached: every request reaches the database) with extra flags; waits until it serves.
start() {
  TESSERA_LOG=warn "$BIN" up --no-cache $NO_LIMITS "$@" --data-dir "$DATA" --listen "127.0.0.1:$PORT" \
    --sql-listen 127.0.0.1:0 >"$OUT/overload-up.log" 2>&1 &
  PID=$!
  until [ -n "$KEY" ] || KEY=$(grep -o 'tsk_[0-9a-f]*_[0-9a-f]*' "$OUT/overload-up.log" 2>/dev/null | head -1); [ -n "$KEY" ]; do
    kill -0 "$PID" 2>/dev/null || { cat "$OUT/overload-up.log" >&2; exit 1; }
    sleep 0.05
  done
  until curl -sf -o /dev/null "$URL" -H "Authorization: Bearer $KEY"; do
    kill -0 "$PID" 2>/dev/null || { cat "$OUT/overload-up.log" >&2; exit 1; }
    sleep 0.05
  done
}
stop() { kill -TERM "$PID"; wait "$PID" || true; PID=; }

# Peak VmRSS (KiB) of the gateway process while a run lasts.
sample_rss() {
  local peak=0 rss
  while kill -0 "$PID" 2>/dev/null; do
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$PID/status" 2>/dev/null || echo 0)
    [ "${rss:-0}" -gt "$peak" ] && peak=$rss && echo "$peak" >"$OUT/overload-rss"
    sleep 0.2
  done
}

# Resident memory of the gateway now, in MiB.
rss_mib() { echo $(( $(awk '/^VmRSS/ {print $2}' "/proc/$PID/status") / 1024 )); }

# One overloaded run: prints loadgen's line with the RSS before (just after start), the peak and the RSS
# after the run appended.
run() {
  echo 0 >"$OUT/overload-rss"
  sample_rss &
  SAMPLER=$!
  local line
  line=$("$LOADGEN" "127.0.0.1:$PORT" "/v1/crm/deals/$DEAL" "$RATE" "$DURATION" "Authorization: Bearer $KEY")
  kill "$SAMPLER" 2>/dev/null; wait "$SAMPLER" 2>/dev/null || true; SAMPLER=
  local after
  after=$(awk '/^VmRSS/ {print $2}' "/proc/$PID/status")
  # Still serving afterwards: nothing crashed.
  curl -sf -o /dev/null "$URL" -H "Authorization: Bearer $KEY" || { echo "the gateway no longer serves" >&2; exit 1; }
  echo "$line idle_rss_mib=$IDLE_RSS peak_rss_mib=$(( $(cat "$OUT/overload-rss") / 1024 )) rss_after_mib=$(( after / 1024 ))"
}

start
IDLE_RSS=$(rss_mib)
echo "warming up" >&2
wrk -t2 -c"$CONNS" -d3s -H "Authorization: Bearer $KEY" "$URL" >/dev/null
CAPACITY=$(wrk -t2 -c"$CONNS" -d10s -H "Authorization: Bearer $KEY" "$URL" | awk '/Requests\/sec/ {printf "%d", $2}')
RATE=$(( CAPACITY * FACTOR ))
echo "capacity (wrk, $CONNS connections, closed loop): $CAPACITY req/s; offering $RATE req/s open-loop" >&2

echo "shedding on (as shipped)" >&2
SHED=$(run)
echo "$SHED" >&2
stop

start --max-in-flight 0
IDLE_RSS=$(rss_mib)
wrk -t2 -c"$CONNS" -d3s -H "Authorization: Bearer $KEY" "$URL" >/dev/null
echo "baseline: shedding off" >&2
BASE=$(run)
echo "$BASE" >&2
stop

field() { echo "$1" | tr ' ' '\n' | awk -F= -v k="$2" '$1 == k {print $2}'; }
row() {
  local name=$1 line=$2
  echo "| $name | $RATE | $(field "$line" ok_rate) | $(field "$line" unavailable) / $(field "$line" too_many) / $(field "$line" other) / $(field "$line" errors) / $(field "$line" not_sent) | $(field "$line" ok_p50_ms) / $(field "$line" ok_p99_ms) / $(field "$line" ok_max_ms) | $(field "$line" refused_p50_ms) / $(field "$line" refused_p99_ms) | $(field "$line" idle_rss_mib) → $(field "$line" peak_rss_mib) ($(field "$line" rss_after_mib) after) |"
}
P99=$(field "$SHED" ok_p99_ms)
BASE_P99=$(field "$BASE" ok_p99_ms)
echo
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); build $(git rev-parse --short HEAD)"
echo "capacity: $CAPACITY req/s (wrk -c$CONNS); offered: $RATE req/s for ${DURATION} s"
echo
echo "| run | offered req/s | accepted (2xx) req/s | 503 / 429 / other status / errors / not sent | accepted p50 / p99 / max ms | refused p50 / p99 ms | RSS MiB after start → peak |"
echo "|---|---|---|---|---|---|---|"
row "shedding on" "$SHED"
row "shedding off (baseline)" "$BASE"
echo
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
echo "accepted p99 / 100 ms target: $(ratio "$P99" 100)   accepted p99 shedding on / off: $(ratio "$P99" "$BASE_P99")"
echo "accepted rate / capacity: shedding on $(ratio "$(field "$SHED" ok_rate)" "$CAPACITY"), off $(ratio "$(field "$BASE" ok_rate)" "$CAPACITY")"
