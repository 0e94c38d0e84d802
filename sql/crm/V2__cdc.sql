-- Publish the CRM's tables to the CDC worker (see sql/core/V2__cdc_publication.sql). crm.deals already has
-- REPLICA IDENTITY FULL, so an update carries the old stage (deal.closed.won needs it).
alter publication tessera_cdc add table crm.companies, crm.contacts, crm.deals;
