-- Idempotency-Key on POST (see gateway/src/idempotency.rs): per tenant, a key remembers the request it was
-- first used with (a fingerprint of method, path and body) and, once done, the response to replay.
-- `committed` is set inside the request's own transaction, so a key whose response was lost (a crash
-- between the commit and the recording) is known to have taken effect and is never run again.
create table core.idempotency_keys (
    tenant_id             uuid not null default core.current_tenant_id() references core.tenants (id) on delete cascade,
    key                   text not null,
    fingerprint           bytea not null,
    created_at            timestamptz not null default now(),
    -- While a request holds the key; null once its response is recorded.
    locked_until          timestamptz,
    committed             boolean not null default false,
    response_status       integer,
    response_content_type text,
    response_location     text,
    response_body         bytea,
    primary key (tenant_id, key),
    constraint idempotency_keys_key_length check (length(key) between 1 and 255),
    constraint idempotency_keys_fingerprint_length check (length(fingerprint) = 32)
);

alter table core.idempotency_keys enable row level security;
alter table core.idempotency_keys force row level security;
create policy tenant_isolation on core.idempotency_keys
    using (tenant_id = (select core.current_tenant_id()))
    with check (tenant_id = (select core.current_tenant_id()));

-- Every module's role (through tessera_runtime): the key is claimed, marked and completed in the module's
-- own transactions, with the tenant bound.
grant select, insert, update, delete on core.idempotency_keys to tessera_runtime;
