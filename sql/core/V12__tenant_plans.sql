-- A tenant's plan names the rate limits it gets (the gateway's configuration maps plans to limits).
alter table core.tenants add column plan text not null default 'standard';
alter table core.tenants add constraint tenants_plan_format check (plan ~ '^[a-z0-9_-]{1,40}$');

grant create on schema core to tessera_auth;
create function core.tenant_plan(p_tenant uuid) returns text
    language sql stable security definer
    set search_path = pg_catalog, pg_temp
as $$ select plan from core.tenants where id = p_tenant $$;
alter function core.tenant_plan(uuid) owner to tessera_auth;
revoke create on schema core from tessera_auth;
revoke all on function core.tenant_plan(uuid) from public;
grant execute on function core.tenant_plan(uuid) to tessera_app;
