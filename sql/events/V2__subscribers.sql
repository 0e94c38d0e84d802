-- Subscribers: each module's handlers receive the log's events in commit order. A subscriber's cursor moves
-- in the same transaction as its handler's effects, so every effect happens exactly once.

-- The log's total order. One CDC worker writes at a time (it holds an advisory lock for its whole session),
-- one source transaction after another, so the order of `seq` is the order of commits, with no later commit
-- ever taking a smaller number.
alter table events.log add column seq bigint generated always as identity;
create unique index log_seq on events.log (seq);

-- The dispatcher (role tessera_events) feeds every tenant's events to the subscribers and prunes what
-- retention allows; these are the only policies on the log that are not the tenant's own, and no runtime role
-- can become tessera_events. Each handler then runs as its module's role with the event's tenant bound.
create policy dispatcher_reads on events.log for select to tessera_events using (true);
create policy dispatcher_prunes on events.log for delete to tessera_events using (true);
grant select, delete on events.log to tessera_events;

-- One row per subscriber: the last log position it has finished with (handled, or parked as dead letter).
create table events.subscribers (
    name        text primary key,
    position    bigint not null default 0,
    updated_at  timestamptz not null default now(),
    constraint subscribers_name_format check (name ~ '^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$')
);

-- Events whose handler kept failing: parked with the error so that the subscriber can move on, listed by
-- `tessera events dead-letters` and handed to the handler again by `tessera events replay`.
create table events.dead_letters (
    subscriber   text not null references events.subscribers (name),
    seq          bigint not null,
    tenant_id    uuid not null,
    event_id     uuid not null,
    type         text not null,
    error        text not null,
    attempts     integer not null,
    failed_at    timestamptz not null default now(),
    replayed_at  timestamptz,
    primary key (subscriber, seq)
);
create index dead_letters_open on events.dead_letters (subscriber, seq) where replayed_at is null;

grant select, insert, update on events.subscribers, events.dead_letters to tessera_events;
