-- Tessera core: tenants, the modules each tenant has enabled, and API keys.
--
-- Tenancy rules for every tenant-scoped table in Tessera:
--   * a tenant_id column that leads the primary key and every foreign key;
--   * ENABLE and FORCE row-level security, with a policy comparing tenant_id with
--     (select core.current_tenant_id()), evaluated once per statement;
--   * no tenant bound means no rows visible and every write refused.
-- The tenant is bound per transaction with set_config('tessera.tenant_id', …, true).

create schema core;

-- The tenant bound to the current transaction, or null. Wrap it in a sub-select in policies.
create function core.current_tenant_id() returns uuid
    language sql stable parallel safe
    set search_path = pg_catalog, pg_temp
as $$ select nullif(current_setting('tessera.tenant_id', true), '')::uuid $$;

-- The registry of tenants. Not tenant-scoped itself: runtime roles have no access to it and reach it only
-- through core.authenticate_api_key.
create table core.tenants (
    id          uuid primary key,
    slug        text not null,
    name        text not null,
    status      text not null default 'active',
    branding    jsonb not null default '{}',
    created_at  timestamptz not null default now(),
    constraint tenants_slug_key unique (slug),
    constraint tenants_slug_format check (slug ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])$'),
    constraint tenants_name_length check (length(name) between 1 and 200),
    constraint tenants_status_valid check (status in ('active', 'suspended')),
    constraint tenants_branding_object check (jsonb_typeof(branding) = 'object')
);

create table core.tenant_modules (
    tenant_id   uuid not null default core.current_tenant_id() references core.tenants (id) on delete cascade,
    module      text not null,
    enabled_at  timestamptz not null default now(),
    primary key (tenant_id, module),
    constraint tenant_modules_module_format check (module ~ '^[a-z_]{1,63}$')
);

create table core.api_keys (
    tenant_id    uuid not null default core.current_tenant_id() references core.tenants (id) on delete cascade,
    id           uuid not null default gen_random_uuid(),
    name         text not null default '',
    prefix       text not null,
    secret_hash  bytea not null,
    scopes       text[] not null,
    created_at   timestamptz not null default now(),
    revoked_at   timestamptz,
    primary key (tenant_id, id),
    constraint api_keys_prefix_key unique (prefix),
    constraint api_keys_prefix_format check (prefix ~ '^[0-9a-f]{12}$'),
    constraint api_keys_hash_length check (length(secret_hash) = 32),
    constraint api_keys_name_length check (length(name) <= 200)
);

alter table core.tenant_modules enable row level security;
alter table core.tenant_modules force row level security;
create policy tenant_isolation on core.tenant_modules
    using (tenant_id = (select core.current_tenant_id()))
    with check (tenant_id = (select core.current_tenant_id()));

alter table core.api_keys enable row level security;
alter table core.api_keys force row level security;
create policy tenant_isolation on core.api_keys
    using (tenant_id = (select core.current_tenant_id()))
    with check (tenant_id = (select core.current_tenant_id()));

-- Checks a presented API key (looked up by prefix, compared by SHA-256 hash). For an active tenant that has
-- the module enabled it binds the key's tenant to the current transaction. It returns no row for an unknown
-- or revoked key. Owned by tessera_auth (BYPASSRLS), the only way runtime roles reach keys and tenants.
create function core.authenticate_api_key(p_prefix text, p_secret_hash bytea, p_module text)
    returns table (tenant_id uuid, scopes text[], tenant_status text, module_enabled boolean)
    language plpgsql volatile security definer
    set search_path = pg_catalog, pg_temp
as $$
declare
    found_key record;
begin
    -- Whatever was bound before is dropped first: only a valid key for an active tenant with the module
    -- enabled leaves a tenant bound.
    perform set_config('tessera.tenant_id', '', true);
    select k.tenant_id, k.scopes, t.status,
           exists (select 1 from core.tenant_modules m where m.tenant_id = k.tenant_id and m.module = p_module)
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

grant usage, create on schema core to tessera_auth;
grant select on core.tenants, core.tenant_modules, core.api_keys to tessera_auth;
alter function core.authenticate_api_key(text, bytea, text) owner to tessera_auth;
-- CREATE was needed only to take ownership.
revoke create on schema core from tessera_auth;

revoke all on function core.authenticate_api_key(text, bytea, text) from public;
revoke all on function core.current_tenant_id() from public;
grant usage on schema core to tessera_runtime, tessera_reporting;
grant execute on function core.current_tenant_id() to tessera_runtime, tessera_reporting;
grant execute on function core.authenticate_api_key(text, bytea, text) to tessera_runtime;
-- The gateway's login role prepares the key check before it switches to a module's role (so the check can
-- be pipelined with BEGIN); it has no other rights.
grant usage on schema core to tessera_app;
grant execute on function core.authenticate_api_key(text, bytea, text) to tessera_app;
