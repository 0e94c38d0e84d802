-- Idempotency keys: a claim token, so that only the request holding the key can mark it committed or
-- record its answer (one whose claim was taken over after 60 s fails instead of running twice); an index
-- for pruning; and pruning itself, run by gateways.
alter table core.idempotency_keys add column claim uuid;
create index idempotency_keys_created on core.idempotency_keys (created_at);

grant select, delete on core.idempotency_keys to tessera_auth;
grant create on schema core to tessera_auth;
-- Deletes every tenant's keys older than a day; returns how many.
create function core.prune_idempotency_keys() returns bigint
    language sql volatile security definer
    set search_path = pg_catalog, pg_temp
as $$
    with gone as (delete from core.idempotency_keys where created_at < now() - interval '24 hours' returning 1)
    select count(*) from gone
$$;
alter function core.prune_idempotency_keys() owner to tessera_auth;
revoke create on schema core from tessera_auth;
revoke all on function core.prune_idempotency_keys() from public;
grant execute on function core.prune_idempotency_keys() to tessera_app;

-- What key caches depend on changes with a truncate or a row moved between tenants too.
create trigger api_keys_auth_truncate after truncate on core.api_keys
    for each statement execute function core.notify_auth_change();
create trigger tenant_modules_auth_truncate after truncate on core.tenant_modules
    for each statement execute function core.notify_auth_change();
create trigger memberships_auth_truncate after truncate on core.memberships
    for each statement execute function core.notify_auth_change();
create trigger api_keys_auth_tenant after update of tenant_id on core.api_keys
    for each statement execute function core.notify_auth_change();
