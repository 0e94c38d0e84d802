-- API usage per tenant, module and day (UTC), for billing: gateways count the requests they answer
-- successfully and add them here every few seconds through core.record_usage(); a tenant reads its own rows
-- (GET /v1/usage, scope usage:read) under the tenant policy.
create table core.usage (
    tenant_id  uuid not null default core.current_tenant_id() references core.tenants (id) on delete cascade,
    module     text not null,
    day        date not null,
    requests   bigint not null default 0,
    primary key (tenant_id, module, day),
    constraint usage_module_format check (module ~ '^[a-z_]{1,63}$'),
    constraint usage_requests_positive check (requests >= 0)
);
alter table core.usage enable row level security;
alter table core.usage force row level security;
create policy tenant_isolation on core.usage
    using (tenant_id = (select core.current_tenant_id()))
    with check (tenant_id = (select core.current_tenant_id()));
-- The event feed's role reads what the platform itself keeps about the bound tenant.
grant select on core.usage to tessera_event_feed;

-- Adds counts for many tenants at once. SECURITY DEFINER as tessera_auth (BYPASSRLS), the gateway's login
-- may call it and nothing else touches the table.
grant select, insert, update on core.usage to tessera_auth;
create function core.record_usage(p_tenants uuid[], p_modules text[], p_days date[], p_counts bigint[])
    returns void
    language sql volatile security definer
    set search_path = pg_catalog, pg_temp
as $$
    insert into core.usage as u (tenant_id, module, day, requests)
    select t, m, d, c from unnest(p_tenants, p_modules, p_days, p_counts) as x(t, m, d, c)
     where exists (select 1 from core.tenants where id = x.t)
    on conflict (tenant_id, module, day) do update set requests = u.requests + excluded.requests
$$;
grant create on schema core to tessera_auth;
alter function core.record_usage(uuid[], text[], date[], bigint[]) owner to tessera_auth;
revoke create on schema core from tessera_auth;
revoke all on function core.record_usage(uuid[], text[], date[], bigint[]) from public;
grant execute on function core.record_usage(uuid[], text[], date[], bigint[]) to tessera_app;

-- The key check treats `usage` like `events`: a platform API every tenant has, whatever modules it bought
-- (the key still needs the usage:read scope).
create or replace function core.authenticate_api_key(p_prefix text, p_secret_hash bytea, p_module text)
    returns table (tenant_id uuid, scopes text[], tenant_status text, module_enabled boolean)
    language plpgsql volatile security definer
    set search_path = pg_catalog, pg_temp
as $$
declare
    found_key record;
begin
    perform set_config('tessera.tenant_id', '', true);
    select k.tenant_id, k.scopes, t.status,
           p_module in ('events', 'usage')
           or exists (select 1 from core.tenant_modules m where m.tenant_id = k.tenant_id and m.module = p_module)
               as module_enabled
      into found_key
      from core.api_keys k
      join core.tenants t on t.id = k.tenant_id
     where k.prefix = p_prefix and k.secret_hash = p_secret_hash and k.revoked_at is null;
    if not found then
        return;
    end if;
    if found_key.status = 'active' and found_key.module_enabled then
        perform set_config('tessera.tenant_id', found_key.tenant_id::text, true);
    end if;
    return query select found_key.tenant_id, found_key.scopes, found_key.status, found_key.module_enabled;
end
$$;
