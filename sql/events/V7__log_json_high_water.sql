-- The CDC worker's write path, made cheaper (issue 3's throughput benchmark; profile in BENCHMARKS.md).
--
-- 1. `data` is stored as `json` instead of `jsonb`. The log is written once per change and read a few times
--    (each subscriber, the feed), whole: parsing every event into jsonb (sorting keys, de-escaping strings)
--    was 40% of the writer's time. `json` keeps the text as the worker wrote it; `->`, `->>` and the
--    readers' decoding work on it unchanged, and member order stays as written (table, op, new, old).
-- 2. Exactly-once in the log no longer needs `insert … on conflict do nothing` (whose pre-check probed every
--    unique index for every row: 28% of the writer's time). The worker records, in the same transaction as
--    the events, the commit LSN of the last source transaction they cover; a source transaction that is
--    sent again (a crash before the acknowledgement, a slot that moved back after a Postgres crash) commits
--    at or below it and is skipped whole. Event ids stay deterministic, and the primary key still refuses a
--    duplicate loudly should that ever fail.
alter table events.log alter column data type json using data::json;

alter table events.cdc_slots add column written_lsn pg_lsn;
-- A log written before this version: what it holds is covered.
update events.cdc_slots set written_lsn = (select max(commit_lsn) from events.log);
grant update (written_lsn) on events.cdc_slots to tessera_events;
