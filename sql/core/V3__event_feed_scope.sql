-- The event feed (GET /v1/events) is part of the platform, not a module a tenant buys: a key with the
-- `events:read` scope may read its tenant's events whatever modules are enabled. The key check is unchanged
-- otherwise.
create or replace function core.authenticate_api_key(p_prefix text, p_secret_hash bytea, p_module text)
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
           p_module = 'events'
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
