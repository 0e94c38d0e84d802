-- When each API key was last used: gateways note every key that answered a request successfully and add
-- the latest times here every few seconds, with their usage counts (core.touch_api_keys); the SQL endpoint
-- stamps a key when a session logs in with it. `tessera key list` shows it.
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
