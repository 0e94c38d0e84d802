# What every benchmark that sources bench/cdc_common.sh or bench/sql_common.sh uses; sourced, not run.

# The median of the numbers on standard input ("nan" for none).
median() { sort -g | awk '{a[NR] = $1} END {if (NR == 0) print "nan"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

# PostgreSQL's CPU so far, in clock ticks, given its postmaster's pid: the postmaster's own, its reaped
# children's (a backend or walsender that ended) and its live children's (backends, walsenders,
# checkpointer, WAL writer, autovacuum).
pg_cpu_ticks() {
  { awk '{print $14 + $15 + $16 + $17}' "/proc/$1/stat"
    # A backend can end between pgrep and awk.
    for child in $(pgrep -P "$1"); do awk '{print $14 + $15}' "/proc/$child/stat" 2>/dev/null || true; done
  } | awk '{s += $1} END {print s + 0}'
}
