-- The log position of the CRM company event a mirrored customer last took its name from. A replayed
-- (dead-lettered, older) event then cannot roll a newer name back.
alter table invoicing.customers add column crm_seq bigint;
