-- The tenant policy applies to Tessera's own roles (the runtime roles and the owner) and no longer to every
-- role; the SQL endpoint's sessions are bound by their reporting policy alone (see crm's V4 for why).
alter policy tenant_isolation on invoicing.customers to tessera_runtime, tessera_owner;
alter policy tenant_isolation on invoicing.invoices to tessera_runtime, tessera_owner;
alter policy tenant_isolation on invoicing.invoice_lines to tessera_runtime, tessera_owner;
alter policy tenant_isolation on invoicing.payments to tessera_runtime, tessera_owner;
alter policy tenant_isolation on invoicing.invoice_counters to tessera_runtime, tessera_owner;
