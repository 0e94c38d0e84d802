-- The durable event log: every committed change on a published module table becomes one row here, written by
-- the CDC worker in one transaction per source transaction, before the replication slot is acknowledged.
create schema events;

create table events.log (
    -- No foreign key to core.tenants: the log records history, and a deleted tenant's last changes (the
    -- cascade of its deletion) must still be writable, or the worker would stall for every tenant.
    tenant_id    uuid not null,
    -- Deterministic: derived from the source commit's LSN and the change's position in it, so a replay
    -- writes the same ids and inserts nothing twice.
    id           uuid not null,
    commit_lsn   pg_lsn not null,
    position     integer not null,
    type         text not null,
    commit_time  timestamptz not null,
    data         jsonb not null,
    recorded_at  timestamptz not null default now(),
    primary key (tenant_id, id)
);
create index log_order on events.log (tenant_id, commit_lsn, position);

alter table events.log enable row level security;
alter table events.log force row level security;
create policy tenant_isolation on events.log
    using (tenant_id = (select core.current_tenant_id()))
    with check (tenant_id = (select core.current_tenant_id()));

-- The worker's own bookkeeping (not tenant data): which slot it created, so that a slot that disappears is
-- noticed instead of silently recreated (which would skip everything in between).
create table events.cdc_slots (
    slot_name   text primary key,
    created_at  timestamptz not null default now()
);

grant usage on schema events to tessera_events;
grant insert on events.log to tessera_events;
grant select, insert on events.cdc_slots to tessera_events;
