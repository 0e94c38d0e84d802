-- What a gateway's response cache needs from the log: which tenant's data changed, in which module, and
-- nothing else (no row data). The log's row policies show a role only its bound tenant's events, so these
-- two functions are SECURITY DEFINER, owned by tessera_auth (BYPASSRLS), which may read only the three
-- columns below; the gateway's login may call them.
grant select (seq, tenant_id, type) on events.log to tessera_auth;
grant usage on schema events to tessera_auth;

-- The log's current end.
create function events.log_head() returns bigint
    language sql stable security definer
    set search_path = pg_catalog, pg_temp
as $$ select coalesce(max(seq), 0) from events.log $$;

-- The change events after `p_after` (at most `p_limit`, in log order): change events are named
-- `<schema>.<table>.<op>`, and a module's schema is its name.
create function events.changes_since(p_after bigint, p_limit integer)
    returns table (seq bigint, tenant_id uuid, module text)
    language sql stable security definer
    set search_path = pg_catalog, pg_temp
as $$
    select l.seq, l.tenant_id, split_part(l.type, '.', 1)
      from events.log l
     where l.seq > p_after and l.type ~ '\.(insert|update|delete)$'
     order by l.seq
     limit p_limit
$$;

grant create on schema events to tessera_auth;
alter function events.log_head() owner to tessera_auth;
alter function events.changes_since(bigint, integer) owner to tessera_auth;
revoke create on schema events from tessera_auth;
revoke all on function events.log_head(), events.changes_since(bigint, integer) from public;
grant usage on schema events to tessera_app;
grant execute on function events.log_head(), events.changes_since(bigint, integer) to tessera_app;
