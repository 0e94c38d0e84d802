-- The tenant policy applies to Tessera's own roles (the runtime roles and the owner) and no longer to every
-- role; the SQL endpoint's sessions are bound by their reporting policy alone (see crm's V4 for why).
alter policy tenant_isolation on hr.employees to tessera_runtime, tessera_owner;
alter policy tenant_isolation on hr.commission_plans to tessera_runtime, tessera_owner;
alter policy tenant_isolation on hr.commissions to tessera_runtime, tessera_owner;
