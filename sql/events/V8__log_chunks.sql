-- The log is stored in chunks: one row per run of consecutive events of one tenant that the CDC worker writes
-- together (up to a thousand), the events' fields in parallel arrays. One row per event cost the worker's
-- writer an insertion into the heap and three indexes per event, and the walsender the decoding of all of it
-- again: about two thirds of the server's work per change (issue 3's throughput benchmark, BENCHMARKS.md).
--
-- `events.log` stays, as a view with the columns it had (one row per event, `seq` included), for ad-hoc
-- reading. The platform's own hot paths (the dispatcher, the feed, the gateway's cache) read the chunks
-- directly, so that they find the events after a position through the chunks' indexes.
--
-- The rewrite runs under an exclusive lock on the old table; apply it with Tessera stopped (`tessera up` and
-- `tessera migrate` before `tessera serve`/`cdc` do).
alter table events.log rename to log_rows;

create table events.log_chunks (
    tenant_id     uuid not null,
    -- The chunk's events are numbered first_seq .. last_seq in log order: `seq` as before (one CDC worker
    -- writes at a time, chunk after chunk, so a later commit never takes a smaller number).
    first_seq     bigint not null,
    last_seq      bigint not null,
    -- The smallest and largest event ids in the chunk: a feed cursor (an event id) is looked for only in
    -- the chunks whose range holds it. Ids begin with their commit's time, so the tenant's chunks' ranges
    -- barely overlap, and the one that holds it is among the last to start before it.
    min_id        uuid not null,
    max_id        uuid not null,
    ids           uuid[] not null,
    commit_lsns   pg_lsn[] not null,
    positions     integer[] not null,
    types         text[] not null,
    commit_times  timestamptz[] not null,
    -- Each event's JSON as the worker wrote it (the view and the readers cast it to json).
    data          text[] not null,
    recorded_at   timestamptz not null default now(),
    primary key (tenant_id, last_seq),
    constraint log_chunks_numbering check (first_seq >= 1 and last_seq >= first_seq),
    constraint log_chunks_shape check (
        cardinality(ids) = last_seq - first_seq + 1
        and cardinality(commit_lsns) = cardinality(ids) and cardinality(positions) = cardinality(ids)
        and cardinality(types) = cardinality(ids) and cardinality(commit_times) = cardinality(ids)
        and cardinality(data) = cardinality(ids))
);
-- The log's order across tenants (the dispatcher, the gateway's cache, retention).
create unique index log_chunks_seq on events.log_chunks (last_seq);
create index log_chunks_cursor on events.log_chunks (tenant_id, min_id, max_id);

-- A chunk's arrays are large and compress well; lz4 where the server has it (faster than pglz, the fallback;
-- the benchmarks ran with lz4).
do $$
begin
    alter table events.log_chunks
        alter column ids set compression lz4, alter column commit_lsns set compression lz4,
        alter column positions set compression lz4, alter column types set compression lz4,
        alter column commit_times set compression lz4, alter column data set compression lz4;
exception when feature_not_supported then
    raise notice 'this server has no lz4: events.log_chunks compresses with pglz';
end $$;

-- The events logged so far, one chunk each, with their numbers. Read as the owner: the old table's row
-- policies would show it nothing.
alter table events.log_rows no force row level security;
insert into events.log_chunks
       (tenant_id, first_seq, last_seq, min_id, max_id, ids, commit_lsns, positions, types, commit_times, data,
        recorded_at)
select tenant_id, seq, seq, id, id, array[id], array[commit_lsn], array[position], array[type], array[commit_time],
       array[data::text], recorded_at
  from events.log_rows;
drop table events.log_rows;

alter table events.log_chunks enable row level security;
alter table events.log_chunks force row level security;
create policy tenant_isolation on events.log_chunks
    using (tenant_id = (select core.current_tenant_id()))
    with check (tenant_id = (select core.current_tenant_id()));
-- The dispatcher (tessera_events, which no runtime role can become) feeds every tenant's events to the
-- subscribers and prunes what retention allows.
create policy dispatcher_reads on events.log_chunks for select to tessera_events using (true);
create policy dispatcher_prunes on events.log_chunks for delete to tessera_events using (true);
grant select, insert, delete on events.log_chunks to tessera_events;
grant select on events.log_chunks to tessera_event_feed;

-- Retention keeps chunks that hold an open dead letter: found by number.
create index dead_letters_open_seq on events.dead_letters (seq) where replayed_at is null;

-- One row per event, as the table was. security_invoker: whoever reads it sees what the chunks' policies
-- show them.
create view events.log with (security_invoker = true) as
select c.tenant_id, e.id, e.commit_lsn, e.position, e.type, e.commit_time, e.data::json as data, c.recorded_at,
       c.first_seq + e.n - 1 as seq
  from events.log_chunks c
 cross join lateral unnest(c.ids, c.commit_lsns, c.positions, c.types, c.commit_times, c.data)
       with ordinality as e(id, commit_lsn, position, type, commit_time, data, n);
grant select on events.log to tessera_events, tessera_event_feed;

-- The number of the log's last event (0 when it is empty).
create function events.log_end() returns bigint
    language sql stable
as $$ select coalesce((select last_seq from events.log_chunks order by last_seq desc limit 1), 0) $$;
revoke all on function events.log_end() from public;
grant execute on function events.log_end() to tessera_events;

-- The event numbered `p_seq`, if the log still holds it.
create function events.log_at(p_seq bigint)
    returns table (seq bigint, id uuid, tenant_id uuid, type text, commit_time timestamptz, data json)
    language sql stable
    set search_path = pg_catalog, pg_temp
as $$
    select p_seq, c.ids[i], c.tenant_id, c.types[i], c.commit_times[i], c.data[i]::json
      from (select * from events.log_chunks where last_seq >= p_seq order by last_seq limit 1) c
     cross join lateral (select p_seq - c.first_seq + 1 as i) at
     where c.first_seq <= p_seq
$$;
revoke all on function events.log_at(bigint) from public;
grant execute on function events.log_at(bigint) to tessera_events;

-- The gateway's cache (V6): the same answers from the chunks. A chunk's change events are reported once per
-- module, numbered with the chunk's last event.
grant select (tenant_id, last_seq, types) on events.log_chunks to tessera_auth;
grant execute on function events.log_end() to tessera_auth;
create or replace function events.log_head() returns bigint
    language sql stable security definer
    set search_path = pg_catalog, pg_temp
as $$ select events.log_end() $$;

create or replace function events.changes_since(p_after bigint, p_limit integer)
    returns table (seq bigint, tenant_id uuid, module text)
    language sql stable security definer
    set search_path = pg_catalog, pg_temp
as $$
    select c.last_seq, c.tenant_id, m.module
      from (select k.last_seq, k.tenant_id, k.types from events.log_chunks k
             where k.last_seq > p_after
               and exists (select 1 from unnest(k.types) t where t ~ '\.(insert|update|delete)$')
             order by k.last_seq
             limit p_limit) c
     cross join lateral (select distinct split_part(t, '.', 1) as module
                           from unnest(c.types) t where t ~ '\.(insert|update|delete)$') m
     order by c.last_seq, m.module
$$;
