-- Idempotency keys belong to the module role that used them, not only to the tenant: a module's role sees
-- and blocks only its own keys (and the answers they keep), as it sees only its own schema.
alter table core.idempotency_keys add column owner_role text not null default current_user;
alter table core.idempotency_keys drop constraint idempotency_keys_pkey;
alter table core.idempotency_keys add primary key (tenant_id, owner_role, key);
drop policy tenant_isolation on core.idempotency_keys;
create policy tenant_isolation on core.idempotency_keys
    using (tenant_id = (select core.current_tenant_id()) and owner_role = current_user)
    with check (tenant_id = (select core.current_tenant_id()) and owner_role = current_user);
