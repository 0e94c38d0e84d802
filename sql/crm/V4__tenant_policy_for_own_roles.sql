-- The tenant policy applies to Tessera's own roles (the runtime roles and the owner) and no longer to every
-- role. The SQL endpoint's sessions (tessera_reporting) are bound by their reporting policy alone (V3): for
-- them the tenant policy matched no row anyway (core.current_tenant_id() is null outside Tessera's own
-- logins), but Postgres still OR'ed it into every statement, so a read by primary key became two index probes
-- and a BitmapOr. A role that no policy names sees no rows, as before.
alter policy tenant_isolation on crm.companies to tessera_runtime, tessera_owner;
alter policy tenant_isolation on crm.contacts to tessera_runtime, tessera_owner;
alter policy tenant_isolation on crm.deals to tessera_runtime, tessera_owner;
