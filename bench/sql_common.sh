# What bench/sql_endpoint.sh and bench/sql_relay_latency.sh share: a fresh `tessera up` with the SQL endpoint
# and ROWS deals of the demo tenant, and the relay threads' scheduling policy. Sourced from the repository's
# root, after `set -euo pipefail`; the caller sets OUT, ROWS, HTTP_PORT and SQL_PORT.

. bench/common.sh
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
export PATH="$PATH:${PGBIN:-/usr/lib/postgresql/15/bin}"

# Exits with a hint unless every named tool is there.
need_tools() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install postgresql pgbouncer util-linux" >&2; exit 2; }
  done
}

# Builds the release binary and starts `tessera up` on a fresh data folder (DATA). Sets PID, KEY (the demo
# tenant's key), SOCK and PGPORT (the embedded PostgreSQL's socket folder and port). The caller's EXIT trap
# calls stop_tessera.
start_tessera() {
  cargo build --release --quiet
  DATA=$(mktemp -d /tmp/tessera-bench-XXXXXX)
  chmod 755 "$DATA"
  TESSERA_LOG=warn TOKIO_WORKER_THREADS=${TOKIO_WORKER_THREADS:-2} target/release/tessera up --data-dir "$DATA" \
    --listen "127.0.0.1:$HTTP_PORT" --sql-listen "127.0.0.1:$SQL_PORT" >"$OUT/up.log" 2>&1 &
  PID=$!
  local waited=0
  until KEY=$(grep -o 'tsk_[0-9a-f]*_[0-9a-f]*' "$OUT/up.log" 2>/dev/null | head -1); [ -n "$KEY" ] && grep -q 'Stop with' "$OUT/up.log"; do
    kill -0 "$PID" 2>/dev/null || { cat "$OUT/up.log" >&2; exit 1; }
    waited=$((waited + 1))
    [ "$waited" -lt 1200 ] || { echo "tessera up did not come up within 60 s" >&2; cat "$OUT/up.log" >&2; exit 1; }
    sleep 0.05
  done
  local pg_line
  pg_line=$(grep -o 'postgresql://[^"]*' "$OUT/up.log")
  SOCK=$(echo "$pg_line" | sed -E 's/.*host=([^&]*).*/\1/')
  PGPORT=$(echo "$pg_line" | sed -E 's/.*port=([0-9]*).*/\1/')
}
stop_tessera() {
  [ -n "${PID:-}" ] && kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  [ -n "${DATA:-}" ] && rm -rf "$DATA"
  return 0
}

# ROWS deals of the demo tenant with ids a script can compute (md5 of 1..ROWS), and the statement that reads
# one of them by a random id, in $OUT/sql_select.sql. Extra SQL, run first, as the first argument.
load_deals() {
  psql -q -h "$SOCK" -p "$PGPORT" -U postgres tessera <<SQL
${1:-}
insert into crm.deals (tenant_id, id, title, stage, amount)
select t.id, md5(n::text)::uuid, 'Deal ' || n, 'lead', n
  from core.tenants t, generate_series(1, $ROWS) n where t.slug = 'demo';
vacuum analyze crm.deals;
SQL
  cat >"$OUT/sql_select.sql" <<SQL
\set n random(1, $ROWS)
select title, amount from crm.deals where id = md5(:n::text)::uuid;
SQL
}

# The endpoint's relay threads' scheduling policy: `relay_policy -b` SCHED_BATCH with reset-on-fork (as they
# start), `relay_policy -o` the default.
relay_policy() {
  local task flags=$1
  [ "$flags" = -b ] && flags="-b -R"
  for task in /proc/"$PID"/task/*; do
    if grep -q '^tessera-sql-' "$task/comm" 2>/dev/null; then
      # shellcheck disable=SC2086
      chrt $flags -p 0 "${task##*/}" >/dev/null
    fi
  done
}
