-- Whether the bound tenant has a module enabled. The event dispatcher asks before it runs a module's
-- handler for a tenant's event, so a tenant that has not enabled (or has disabled) a module gets none of
-- its effects. Owned by tessera_auth like the key check, so module roles need no rights on core tables.
create function core.module_enabled(p_module text) returns boolean
    language sql stable security definer
    set search_path = pg_catalog, pg_temp
as $$
    select exists (select 1 from core.tenant_modules m
                    where m.tenant_id = nullif(current_setting('tessera.tenant_id', true), '')::uuid
                      and m.module = p_module)
$$;

grant create on schema core to tessera_auth;
alter function core.module_enabled(text) owner to tessera_auth;
revoke create on schema core from tessera_auth;
revoke all on function core.module_enabled(text) from public;
grant execute on function core.module_enabled(text) to tessera_runtime;
