-- The CDC worker's write path, made cheaper (issue 3's throughput benchmark; profile in BENCHMARKS.md).
--
-- 1. `data` is stored as `json` instead of `jsonb`. The log is written once per change and read a few times
--    (each subscriber, the feed), whole: parsing every event into jsonb (sorting keys, de-escaping strings)
--    was 40% of the writer's time. `json` keeps the text as the worker wrote it; `->`, `->>` and the
--    readers' decoding work on it unchanged.
--    The change rewrites events.log under an exclusive lock, and sessions that prepared a statement
--    returning `data` fail with "cached plan must not change result type" until they reconnect: apply it
--    with Tessera stopped (`tessera up` and `tessera migrate` before `tessera serve`/`cdc` do).
-- 2. Exactly-once in the log no longer needs `insert … on conflict do nothing` (whose pre-check probed every
--    unique index for every row: 28% of the writer's time). The worker records, in the same transaction as
--    the events, the commit LSN of the last source transaction they cover (`written_lsn`); a source
--    transaction that is sent again (a crash before the acknowledgement, a slot that moved back after a
--    Postgres crash, an older copy of the slot) commits at or below it and is skipped whole. The mark is kept
--    with the server's system_identifier: after a dump and restore into another cluster the old marks are
--    another WAL's and are ignored. For a log written before this version the worker takes the commit LSN
--    of the log's last event instead, once (this migration cannot read it: the log's row policies show its
--    owner nothing).
alter table events.log alter column data type json using data::json;

alter table events.cdc_slots add column written_lsn pg_lsn, add column system_id bigint;
grant update (written_lsn, system_id) on events.cdc_slots to tessera_events;

-- 3. The key of the event ids' hash. Ids are derived from the source commit's LSN and the change's position,
--    so that a replay produces the same ids; keyed, so that a tenant cannot recover the LSN from its ids by
--    trying every LSN, and with it how much everyone else wrote between two of its events. Generated once
--    here (244 random bits) and never changed: event ids are part of the API (feed cursors, the ids
--    subscribers keep), and a change keeps its id.
create table events.cdc_keys (
    one           boolean primary key default true constraint cdc_keys_one_row check (one),
    event_id_key  bytea not null constraint cdc_keys_key_length check (length(event_id_key) = 32)
);
insert into events.cdc_keys (event_id_key)
    values (decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'));
revoke all on events.cdc_keys from public;
grant select on events.cdc_keys to tessera_events;
