-- The SQL endpoint's tenant binding: one the session cannot forge.
--
-- Tenants run their own SQL on the SQL endpoint, upstream as the login tessera_sql (a member of
-- tessera_reporting). Anyone who can run SQL can change a custom setting (SET, set_config, DO, RESET,
-- startup options, COMMIT in a multi-statement query), so for such sessions the plain setting
-- tessera.tenant_id binds nothing. They are bound by a row instead:
--
--   core.sql_sessions (server_started, pid, token_hash, tenant_id, key_prefix): written by
--   core.bind_sql_session when a tenant logs in (run by the gateway's login, for the upstream server
--   session the endpoint hands the client), and the session's setting tessera.sql_session = the token,
--   whose SHA-256 the row keeps.
--
-- Every table the reporting role can read has, besides its tenant policy, a policy for that role alone:
-- tenant_id = the tenant of the row of the session's own server and backend pid whose token hash matches,
-- written out as a sub-select in the policy:
--
--     tenant_id = (select s.tenant_id from core.sql_sessions s
--                   where s.pid = pg_backend_pid() and s.server_started = pg_postmaster_start_time()
--                     and s.token_hash = sha256(convert_to(current_setting('tessera.sql_session', true), 'UTF8')))
--
-- one index lookup inside the statement (a function holding it could not be inlined, and a function call
-- costs a plan per statement), and only in the reporting role's statements. core.current_tenant_id() trusts
-- the plain setting only for Tessera's own logins, so for these sessions the tenant policy matches nothing.
-- A session cannot write core.sql_sessions and sees only its own backend's row, which holds a hash, not the
-- token: a row left behind (a crash) binds nothing, even for a later session with the same pid, and the next
-- login there replaces it. Revoking or re-scoping the key, suspending or deleting the tenant deletes its rows
-- (a login racing with that waits for it: the key and tenant rows are locked while binding): open sessions
-- are unbound at their next statement. The endpoint deletes the row at logout.

create table core.sql_sessions (
    server_started  timestamptz not null,
    pid             integer not null,
    token_hash      bytea not null,
    tenant_id       uuid not null references core.tenants (id) on delete cascade,
    key_prefix      text not null,
    bound_at        timestamptz not null default now(),
    primary key (server_started, pid),
    constraint sql_sessions_token_hash_length check (length(token_hash) = 32)
);
create index sql_sessions_key on core.sql_sessions (key_prefix);
create unique index sql_sessions_token on core.sql_sessions (token_hash);
-- Each session sees only the row of its own backend.
alter table core.sql_sessions enable row level security;
alter table core.sql_sessions force row level security;
create policy own_backend on core.sql_sessions
    using (pid operator(pg_catalog.=) pg_catalog.pg_backend_pid());
revoke all on core.sql_sessions from public;
grant select on core.sql_sessions to tessera_reporting;
grant select, insert, update, delete on core.sql_sessions to tessera_auth;
-- To lock the key and tenant rows while binding (FOR SHARE needs an UPDATE right; tessera_auth updates
-- nothing: it owns only the SECURITY DEFINER functions).
grant update (revoked_at) on core.api_keys to tessera_auth;
grant update (status) on core.tenants to tessera_auth;

-- Binds the server session with backend pid p_pid of the server started at p_server_started to a reporting
-- login: the tenant (slug or id) the client named and an API key's prefix and hash. When the key is live,
-- belongs to that active tenant and has the reporting:read scope, returns the tenant and a fresh token for
-- the session's tessera.sql_session; nothing otherwise, whichever part was wrong.
create function core.bind_sql_session(p_tenant text, p_prefix text, p_secret_hash bytea, p_pid integer,
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
    return query select found_tenant, new_token;
end
$$;

-- Ends a binding (at logout); only with its token, so a stale call cannot end a newer binding.
create function core.unbind_sql_session(p_token text) returns void
    language sql volatile security definer
    set search_path = pg_catalog, pg_temp
as $$
    delete from core.sql_sessions where token_hash = sha256(convert_to(p_token, 'UTF8'))
$$;

-- Revoking a key (or changing its scopes), suspending or deleting a tenant ends its sessions' bindings.
create function core.unbind_revoked_sql_sessions() returns trigger
    language plpgsql security definer
    set search_path = pg_catalog, pg_temp
as $$
begin
    if tg_table_name = 'api_keys' then
        delete from core.sql_sessions s
         where s.key_prefix = old.prefix
           and (tg_op = 'DELETE' or new.revoked_at is not null or not ('reporting:read' = any (new.scopes))
                or new.secret_hash is distinct from old.secret_hash);
    elsif tg_op = 'DELETE' or new.status <> 'active' then
        delete from core.sql_sessions s where s.tenant_id = old.id;
    end if;
    return null;
end
$$;

grant create on schema core to tessera_auth;
alter function core.bind_sql_session(text, text, bytea, integer, timestamptz) owner to tessera_auth;
alter function core.unbind_sql_session(text) owner to tessera_auth;
alter function core.unbind_revoked_sql_sessions() owner to tessera_auth;
revoke create on schema core from tessera_auth;
revoke all on function core.bind_sql_session(text, text, bytea, integer, timestamptz), core.unbind_sql_session(text),
    core.unbind_revoked_sql_sessions() from public;
grant execute on function core.bind_sql_session(text, text, bytea, integer, timestamptz), core.unbind_sql_session(text)
    to tessera_app;

create trigger api_keys_unbind_sql after update of revoked_at, scopes, secret_hash or delete on core.api_keys
    for each row execute function core.unbind_revoked_sql_sessions();
create trigger tenants_unbind_sql after update of status or delete on core.tenants
    for each row execute function core.unbind_revoked_sql_sessions();

-- The plain setting binds only sessions of Tessera's own logins (the gateway, the event system: members of
-- tessera_runtime) and of the owner. Every other session, the SQL endpoint's above all, is bound by its
-- row in core.sql_sessions alone, through the reporting policies. Still inlinable (no SET clause; every
-- name qualified).
create or replace function core.current_tenant_id() returns uuid
    language sql stable parallel safe
as $$
    select case
        when pg_catalog.pg_has_role(session_user, 'tessera_runtime', 'MEMBER')
          or pg_catalog.pg_has_role(session_user, 'tessera_owner', 'MEMBER')
        then case when pg_catalog.current_setting('tessera.tenant_id', true) operator(pg_catalog.=) ''
                  then null
                  else pg_catalog.current_setting('tessera.tenant_id', true)::pg_catalog.uuid
             end
        else null
    end
$$;

-- A trigger function, never called directly; nobody needs EXECUTE on it.
revoke all on function core.notify_auth_change() from public;

-- Functions the owner creates from now on are not executable by everyone unless a migration grants it.
alter default privileges for role tessera_owner revoke execute on functions from public;

-- The stable surface for BI tools: each module adds security_invoker views here (the caller's row
-- policies apply, never the owner's rights).
create schema reporting;
grant usage on schema reporting to tessera_reporting;
comment on schema reporting is
    'Views for reporting tools over every module''s tables, one tenant''s rows at a time (security_invoker).';
