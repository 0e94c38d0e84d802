-- When each API key was last used: gateways note every key that answered a request successfully and add
-- the latest times here every few seconds, with their usage counts (core.touch_api_keys); the SQL endpoint
-- stamps a key when it binds a session with it. `tessera key list` shows it.
alter table core.api_keys add column last_used_at timestamptz;

create function core.touch_api_keys(p_prefixes text[], p_used_at timestamptz[]) returns void
    language sql volatile security definer
    set search_path = pg_catalog, pg_temp
as $$
    update core.api_keys k
       set last_used_at = greatest(k.last_used_at, x.used_at)
      from unnest(p_prefixes, p_used_at) as x(prefix, used_at)
     where k.prefix = x.prefix
$$;
grant create on schema core to tessera_auth;
alter function core.touch_api_keys(text[], timestamptz[]) owner to tessera_auth;
revoke create on schema core from tessera_auth;
revoke all on function core.touch_api_keys(text[], timestamptz[]) from public;
grant execute on function core.touch_api_keys(text[], timestamptz[]) to tessera_app;
grant update (last_used_at) on core.api_keys to tessera_auth;

-- The SQL endpoint's logins stamp their key too.
create or replace function core.bind_sql_session(p_tenant text, p_prefix text, p_secret_hash bytea, p_pid integer,
                                                 p_server_started timestamptz)
    returns table (tenant_id uuid, token text)
    language plpgsql volatile security definer
    set search_path = pg_catalog, pg_temp
as $$
declare
    found_tenant uuid;
    new_token text := replace(gen_random_uuid()::text, '-', '') || replace(gen_random_uuid()::text, '-', '');
begin
    select t.id into found_tenant
      from core.api_keys k
      join core.tenants t on t.id = k.tenant_id
     where k.prefix = p_prefix and k.secret_hash = p_secret_hash and k.revoked_at is null
       and t.status = 'active'
       and (t.slug = p_tenant or t.id::text = p_tenant)
       and 'reporting:read' = any (k.scopes)
       for share of k, t;
    if not found or p_pid is null or p_pid <= 0 or p_server_started is null then
        return;
    end if;
    insert into core.sql_sessions as s (server_started, pid, token_hash, tenant_id, key_prefix)
    values (p_server_started, p_pid, sha256(convert_to(new_token, 'UTF8')), found_tenant, p_prefix)
    on conflict (server_started, pid) do update
        set token_hash = excluded.token_hash, tenant_id = excluded.tenant_id, key_prefix = excluded.key_prefix,
            bound_at = now();
    update core.api_keys set last_used_at = now() where prefix = p_prefix;
    return query select found_tenant, new_token;
end
$$;
