-- Gateways cache what an API key may do (tenant, scopes, module entitlement) so that a cached response
-- needs no database round trip. Whatever changes that answer notifies them on channel tessera_auth when it
-- commits: a key created, revoked, re-scoped or deleted, a tenant suspended or deleted, a module enabled or
-- disabled. A gateway drops its whole key cache on the notification (these changes are rare), and trusts
-- the cache only while its listening connection is up.
create function core.notify_auth_change() returns trigger
    language plpgsql
    set search_path = pg_catalog, pg_temp
as $$
begin
    perform pg_notify('tessera_auth', tg_table_name);
    return null;
end
$$;

create trigger api_keys_auth_change after insert or delete or update of revoked_at, scopes, secret_hash, prefix
    on core.api_keys for each statement execute function core.notify_auth_change();
create trigger tenants_auth_change after delete or update of status on core.tenants
    for each statement execute function core.notify_auth_change();
create trigger tenant_modules_auth_change after insert or update or delete on core.tenant_modules
    for each statement execute function core.notify_auth_change();
