# Shared by the CDC benchmarks (bench/cdc_throughput.sh, bench/cdc_memory.sh, bench/cdc_latency.sh); sourced,
# not run. It builds tessera, provisions a private cluster with `tessera up` (roles, migrations, the `tessera`
# slot, the demo tenant), stops it, and restarts PostgreSQL alone with pg_ctl, so that no consumer reads the
# slot until a benchmark starts one. Everything lives in a temporary folder that is removed on exit.
#
# Environment: TESSERA_BIN=<path> benchmarks that binary instead of building one (for comparing builds).

. bench/common.sh
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PG_OS_USER=${TESSERA_PG_OS_USER:-postgres}
OUT=${OUT:-bench/out}
mkdir -p "$OUT"

# Tools: say what to install instead of failing halfway.
need_tools() {
  local missing=() t
  for t in "$@"; do
    case $t in
      pg_ctl) [ -x "$PG_BIN/pg_ctl" ] || missing+=("pg_ctl ($PG_BIN)") ;;
      *) command -v "$t" >/dev/null || missing+=("$t") ;;
    esac
  done
  [ "$(id -u)" = 0 ] || { echo "run as root: PostgreSQL runs as OS user $PG_OS_USER through runuser" >&2; exit 2; }
  if [ ${#missing[@]} -gt 0 ]; then
    echo "missing: ${missing[*]}" >&2
    echo "install: apt-get install postgresql-15 postgresql-client-15 time bc python3 (pg_recvlogical and pgbench come with postgresql-client-15)" >&2
    exit 2
  fi
}

now() { date +%s.%N; }

# Builds (or takes TESSERA_BIN) and copies the binary into the work folder, so that builds by others in the
# same tree during the run cannot change what is measured.
build_tessera() {
  if [ -n "${TESSERA_BIN:-}" ]; then
    cp "$TESSERA_BIN" "$WORK/tessera"
  else
    cargo build --release --quiet
    cp target/release/tessera "$WORK/tessera"
  fi
  BIN=$WORK/tessera
}

# The work folder: short (the socket path must fit 107 bytes), reachable by the postgres OS user.
WORK=
PIDS=()
PQ_PID=
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  [ -n "$PQ_PID" ] && kill "$PQ_PID" 2>/dev/null
  if [ -n "$WORK" ] && [ -f "$WORK/data/pg/postmaster.pid" ]; then
    runuser -u "$PG_OS_USER" -- "$PG_BIN/pg_ctl" -D "$WORK/data/pg" -m immediate -w stop >/dev/null 2>&1 || true
  fi
  [ -n "$WORK" ] && rm -rf "$WORK"
  return 0
}
make_work() {
  WORK=$(mktemp -d /tmp/tcdc-XXXX)
  chmod 755 "$WORK"
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  # A FIFO nobody writes to: `nap 0.01` waits without forking a sleep process per poll.
  mkfifo "$WORK/nap.fifo"
  exec {NAP_FD}<>"$WORK/nap.fifo"
}
nap() { read -r -t "$1" -u "$NAP_FD" _ || true; }

# Runs `tessera up` on a fresh data folder until the demo data's events are through the dispatcher, applies
# `extra_sql` (e.g. ALTER SYSTEM) as superuser, stops it, and starts PostgreSQL alone. Sets SOCK, PGPORT,
# SUPER (conninfo as postgres), REPL_URL (the CDC worker's URL), TENANT (the demo tenant's id).
provision() {
  local extra_sql=${1:-} pid line i
  TESSERA_LOG=warn "$BIN" up --data-dir "$WORK/data" --listen 127.0.0.1:0 >"$OUT/up.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  line=
  for i in $(seq 600); do
    line=$(grep -o 'postgresql://[^"]*' "$OUT/up.log" || true)
    [ -n "$line" ] && break
    kill -0 "$pid" 2>/dev/null || { cat "$OUT/up.log" >&2; exit 1; }
    sleep 0.1
  done
  [ -n "$line" ] || { echo "tessera up did not come up" >&2; cat "$OUT/up.log" >&2; exit 1; }
  SOCK=$(echo "$line" | sed -E 's/.*host=([^&]*).*/\1/')
  PGPORT=$(echo "$line" | sed -E 's/.*port=([0-9]*).*/\1/')
  SUPER="host=$SOCK port=$PGPORT dbname=tessera user=postgres"
  REPL_URL="postgresql://tessera_replication@/tessera?host=$SOCK&port=$PGPORT"
  # The demo data went through the worker and both subscribers (invoicing mirrors the demo companies).
  for i in $(seq 300); do
    [ "$(q "select (select confirmed_flush_lsn >= pg_current_wal_lsn() from pg_replication_slots where slot_name = 'tessera')
                 and (select count(*) from events.subscribers where position >= (select events.log_end())) >= 2")" = t ] && break
    sleep 0.1
  done
  TENANT=$(q "select id from core.tenants where slug = 'demo'")
  [ -n "$extra_sql" ] && q "$extra_sql" >/dev/null
  kill -TERM "$pid"
  wait "$pid" || { echo "tessera up failed:" >&2; cat "$OUT/up.log" >&2; exit 1; }
  PIDS=()
  pg_start
}

pg_start() {
  runuser -u "$PG_OS_USER" -- "$PG_BIN/pg_ctl" -D "$WORK/data/pg" -w -t 60 -l "$WORK/data/pg/postgres.log" start >/dev/null
}

# One-off query as superuser.
q() { psql -X -At -q -v ON_ERROR_STOP=1 -d "$SUPER" -c "$1"; }

# A persistent psql session for polling (a new psql per poll costs more CPU than the thing measured). Use
# `poll "<sql>;"` and read $REPLY; never from a subshell or $(…), which do not inherit the coprocess.
start_poller() {
  coproc PQ { exec psql -X -At -q -d "$SUPER" 2>"$OUT/poller.err"; }
  PQ_W=${PQ[1]}
  PQ_R=${PQ[0]}
}
poll() {
  echo "$1" >&"$PQ_W"
  read -r -t 30 REPLY <&"$PQ_R" || { echo "poller: no answer to $1" >&2; cat "$OUT/poller.err" >&2; exit 1; }
}

# Makes the slot skip everything written so far (the workload's cleanup, a previous round).
advance_slot() {
  q "select pg_replication_slot_advance('$1', pg_current_wal_lsn())" >/dev/null
}

# A fresh copy of slot `tessera` named $1: it will see exactly the changes `tessera` sees.
copy_slot() {
  q "select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = '$1'" >/dev/null
  q "select pg_copy_logical_replication_slot('tessera', '$1')" >/dev/null
}

# Starts `tessera cdc` (CDC worker and dispatcher) in the background, optionally under /usr/bin/time -v
# (TIME_FILE set); sets CDC_PID to the tessera process itself.
start_cdc() {
  local log=$1 outer
  if [ -n "${TIME_FILE:-}" ]; then
    TESSERA_LOG=${TESSERA_LOG:-warn} /usr/bin/time -v -o "$TIME_FILE" "$BIN" cdc --database-url "$REPL_URL" >"$log" 2>&1 &
    outer=$!
    PIDS+=("$outer")
    CDC_PID=
    for _ in $(seq 100); do
      CDC_PID=$(pgrep -P "$outer" || true)
      [ -n "$CDC_PID" ] && break
      sleep 0.01
    done
    CDC_OUTER=$outer
  else
    TESSERA_LOG=${TESSERA_LOG:-warn} "$BIN" cdc --database-url "$REPL_URL" >"$log" 2>&1 &
    CDC_PID=$!
    CDC_OUTER=$CDC_PID
    PIDS+=("$CDC_PID")
  fi
}
stop_cdc() {
  kill -TERM "$CDC_PID" 2>/dev/null || true
  wait "$CDC_OUTER" 2>/dev/null || true
  local keep=() p
  for p in "${PIDS[@]}"; do [ "$p" != "$CDC_OUTER" ] && keep+=("$p"); done
  PIDS=("${keep[@]}")
}

# PostgreSQL's CPU seconds so far (see pg_cpu_ticks).
pg_cpu_seconds() {
  pg_cpu_ticks "$(head -1 "$WORK/data/pg/postmaster.pid")" | awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", $1 / hz}'
}
# Waits (at most 10 s) until the given processes have ended and been reaped.
wait_gone() {
  local pid i
  for pid in "$@"; do
    for i in $(seq 1000); do kill -0 "$pid" 2>/dev/null || continue 2; nap 0.01; done
    echo "process $pid did not end" >&2
    exit 1
  done
}
# CPU seconds (user + system) a running process has used so far.
cpu_seconds() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat" 2>/dev/null || echo nan; }


machine_line() {
  printf 'machine: %s, %s vCPU (%s), %s GiB RAM, %s, PostgreSQL %s\n' "$(uname -m)" "$(nproc)" \
    "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" \
    "$(awk '/MemTotal/ {printf "%.0f", $2/1048576}' /proc/meminfo)" \
    "$(. /etc/os-release && echo "$PRETTY_NAME")" "$("$PG_BIN/postgres" --version | awk '{print $3}')"
  # The machine is shared: other work running meanwhile shows here.
  printf 'load average (1/5/15 min) at the end: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
}
