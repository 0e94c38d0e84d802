-- Users and their memberships: a user (e-mail, password hashed with Argon2id by the gateway) may belong to
-- several tenants, with a role in each (owner, admin, member). A user logs in to one tenant and gets a
-- short-lived token bound to it (gateway/src/auth.rs); every request with the token checks here that the
-- membership still exists, so removing it ends access at once.

-- Not tenant-scoped (a user spans tenants): a registry that no runtime role can read; reached only through
-- the SECURITY DEFINER functions below.
create table core.users (
    id             uuid primary key,
    email          text not null,
    password_hash  text not null,
    created_at     timestamptz not null default now(),
    constraint users_email_format check (length(email) <= 254 and email ~ '^[^@\s]+@[^@\s]+$'),
    constraint users_password_hash_format check (password_hash like '$argon2id$%')
);
create unique index users_email_key on core.users (lower(email));

create table core.memberships (
    tenant_id   uuid not null default core.current_tenant_id() references core.tenants (id) on delete cascade,
    user_id     uuid not null references core.users (id) on delete cascade,
    role        text not null,
    created_at  timestamptz not null default now(),
    primary key (tenant_id, user_id),
    constraint memberships_role_valid check (role in ('owner', 'admin', 'member'))
);
create index memberships_user on core.memberships (user_id);
alter table core.memberships enable row level security;
alter table core.memberships force row level security;
create policy tenant_isolation on core.memberships
    using (tenant_id = (select core.current_tenant_id()))
    with check (tenant_id = (select core.current_tenant_id()));

-- Gateways cache what a credential may do; these changes empty their caches (see V6).
create trigger memberships_auth_change after insert or update or delete on core.memberships
    for each statement execute function core.notify_auth_change();
create trigger users_auth_change after delete or update of password_hash on core.users
    for each statement execute function core.notify_auth_change();

-- The key that signs login tokens (HMAC-SHA256): 32 random bytes, made here once.
create table core.token_keys (
    id      integer primary key default 1,
    secret  bytea not null,
    constraint token_keys_one check (id = 1),
    constraint token_keys_length check (length(secret) = 32)
);
insert into core.token_keys (secret)
    select decode(substr(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 1, 64), 'hex');

grant select on core.users, core.memberships, core.token_keys to tessera_auth;
grant create on schema core to tessera_auth;

-- For a login: the user by e-mail (case-insensitive), its password hash, and its role in the tenant named by
-- slug (null when it is not a member, or the tenant does not exist).
create function core.login_lookup(p_email text, p_tenant_slug text)
    returns table (user_id uuid, password_hash text, tenant_id uuid, role text, tenant_status text)
    language sql stable security definer
    set search_path = pg_catalog, pg_temp
as $$
    select u.id, u.password_hash, t.id, m.role, t.status
      from core.users u
      left join core.tenants t on t.slug = p_tenant_slug
      left join core.memberships m on m.user_id = u.id and m.tenant_id = t.id
     where lower(u.email) = lower(p_email)
$$;

-- For a request with a token: like core.authenticate_api_key, the membership is looked up afresh, and the
-- tenant is bound only if it is active, the user still a member and the module enabled.
create function core.authenticate_member(p_user uuid, p_tenant uuid, p_module text)
    returns table (tenant_id uuid, role text, tenant_status text, module_enabled boolean)
    language plpgsql volatile security definer
    set search_path = pg_catalog, pg_temp
as $$
declare
    found_member record;
begin
    perform set_config('tessera.tenant_id', '', true);
    select m.tenant_id, m.role, t.status,
           p_module in ('events', 'usage')
           or exists (select 1 from core.tenant_modules x where x.tenant_id = m.tenant_id and x.module = p_module)
               as module_enabled
      into found_member
      from core.memberships m
      join core.tenants t on t.id = m.tenant_id
     where m.user_id = p_user and m.tenant_id = p_tenant;
    if not found then
        return;
    end if;
    if found_member.status = 'active' and found_member.module_enabled then
        perform set_config('tessera.tenant_id', found_member.tenant_id::text, true);
    end if;
    return query select found_member.tenant_id, found_member.role, found_member.status, found_member.module_enabled;
end
$$;

create function core.token_signing_key() returns bytea
    language sql stable security definer
    set search_path = pg_catalog, pg_temp
as $$ select secret from core.token_keys where id = 1 $$;

alter function core.login_lookup(text, text) owner to tessera_auth;
alter function core.authenticate_member(uuid, uuid, text) owner to tessera_auth;
alter function core.token_signing_key() owner to tessera_auth;
revoke create on schema core from tessera_auth;
revoke all on function core.login_lookup(text, text), core.authenticate_member(uuid, uuid, text),
    core.token_signing_key() from public;
grant execute on function core.login_lookup(text, text), core.token_signing_key() to tessera_app;
grant execute on function core.authenticate_member(uuid, uuid, text) to tessera_app, tessera_runtime;
