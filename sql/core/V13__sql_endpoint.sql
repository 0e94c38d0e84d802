-- The SQL endpoint's tenant binding: a claim the session cannot forge.
--
-- Tenants run their own SQL on the SQL endpoint, upstream as the login tessera_sql (a member of
-- tessera_reporting). Anyone who can run SQL can change a custom setting (SET, set_config, DO, RESET,
-- startup options, COMMIT in a multi-statement query), so for such sessions the plain setting
-- tessera.tenant_id binds nothing. They are bound by tessera.sql_claim instead:
--
--     <tenant id>:<API key prefix>:<backend pid>:<hex sha256(secret || "<tenant id>:<prefix>:<pid>")>
--
-- minted by core.authenticate_sql (run by the gateway's login when a tenant logs in, for the upstream
-- session the endpoint hands it) and checked by core.sql_claim_tenant in every statement. The secret sits
-- in core.sql_claim_keys, which only tessera_auth can read, so a session can present its own tenant's claim
-- and no other. A claim holds only in the server session it was made for (a claim read off another session
-- is worthless), and only while its key is live, has reporting:read and its tenant is active: revoking the
-- key unbinds sessions already open at their next statement.
--
-- The message has a fixed shape (the checks below pin every part), so sha256 over secret || message cannot
-- be extended into another valid claim.

-- One row: the secret that signs claims. Made from two gen_random_uuid() values (244 random bits) so
-- that no extension is needed.
create table core.sql_claim_keys (
    id      integer primary key default 1,
    secret  bytea not null,
    constraint sql_claim_keys_one_row check (id = 1),
    constraint sql_claim_keys_secret_length check (length(secret) = 32)
);
insert into core.sql_claim_keys (secret)
values (decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'));
revoke all on core.sql_claim_keys from public;
grant select on core.sql_claim_keys to tessera_auth;

-- The tenant of the session's claim, or null when there is none or it does not hold. Called once per
-- statement (the policies' initplan). PL/pgSQL, one query: its plan is made once per session, where a SQL
-- function's body would be planned again in every statement (about 0.3 ms here). No SET clause (that would
-- cost a search_path switch per call): every name is qualified instead, operators too. Parallel
-- restricted: pg_backend_pid() means the leader.
create function core.sql_claim_tenant() returns uuid
    language plpgsql stable parallel restricted security definer
as $$
begin
    return (
        select t.id
          from (select pg_catalog.current_setting('tessera.sql_claim', true) as claim) c
         cross join core.sql_claim_keys s
          join core.api_keys k on k.prefix operator(pg_catalog.=) pg_catalog.split_part(c.claim, ':', 2)
          join core.tenants t on t.id operator(pg_catalog.=) k.tenant_id
         where c.claim operator(pg_catalog.~)
                   '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}:[0-9a-f]{12}:[0-9]{1,10}:[0-9a-f]{64}$'
           and pg_catalog.split_part(c.claim, ':', 3)
                   operator(pg_catalog.=) pg_catalog.pg_backend_pid()::pg_catalog.text
           and pg_catalog.encode(pg_catalog.sha256(s.secret operator(pg_catalog.||) pg_catalog.convert_to(
                   pg_catalog.split_part(c.claim, ':', 1) operator(pg_catalog.||) ':'
                   operator(pg_catalog.||) pg_catalog.split_part(c.claim, ':', 2) operator(pg_catalog.||) ':'
                   operator(pg_catalog.||) pg_catalog.split_part(c.claim, ':', 3), 'UTF8')), 'hex')
               operator(pg_catalog.=) pg_catalog.split_part(c.claim, ':', 4)
           and t.id::pg_catalog.text operator(pg_catalog.=) pg_catalog.split_part(c.claim, ':', 1)
           and k.revoked_at is null
           and t.status operator(pg_catalog.=) 'active'
           and 'reporting:read' operator(pg_catalog.=) any (k.scopes)
    );
end
$$;

-- Checks a reporting login: the tenant (slug or id) the client named, and an API key's prefix and hash.
-- Returns the claim for the server session with backend pid p_pid when the key is live, belongs to that
-- active tenant and has the reporting:read scope; null otherwise, whichever part was wrong.
create function core.authenticate_sql(p_tenant text, p_prefix text, p_secret_hash bytea, p_pid integer)
    returns text
    language sql stable security definer
    set search_path = pg_catalog, pg_temp
as $$
    select m.message || ':' || encode(sha256(s.secret || convert_to(m.message, 'UTF8')), 'hex')
      from core.api_keys k
      join core.tenants t on t.id = k.tenant_id
     cross join core.sql_claim_keys s
     cross join lateral (select t.id::text || ':' || k.prefix || ':' || p_pid::text as message) m
     where k.prefix = p_prefix and k.secret_hash = p_secret_hash and k.revoked_at is null
       and t.status = 'active'
       and (t.slug = p_tenant or t.id::text = p_tenant)
       and 'reporting:read' = any (k.scopes)
       and p_pid > 0
$$;

grant create on schema core to tessera_auth;
alter function core.sql_claim_tenant() owner to tessera_auth;
alter function core.authenticate_sql(text, text, bytea, integer) owner to tessera_auth;
revoke create on schema core from tessera_auth;
revoke all on function core.sql_claim_tenant() from public;
revoke all on function core.authenticate_sql(text, text, bytea, integer) from public;
grant execute on function core.authenticate_sql(text, text, bytea, integer) to tessera_app;
-- Harmless to anyone: it only checks the caller's own claim. Every caller of core.current_tenant_id needs it.
grant execute on function core.sql_claim_tenant() to public;

-- The plain setting binds only sessions of Tessera's own logins (the gateway, the event system: members of
-- tessera_runtime) and of the owner. Every other session, the SQL endpoint's above all, is bound by its
-- claim alone. Still inlinable (no SET clause; every name qualified).
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
        else core.sql_claim_tenant()
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
