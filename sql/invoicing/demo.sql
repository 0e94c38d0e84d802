-- Sample invoicing data for the demo tenant. Runs with the tenant already bound, so tenant_id takes its
-- default. The customers are linked to the CRM's demo companies (sql/crm/demo.sql), as the crm.companies
-- events would link them.
insert into invoicing.customers (id, name, email, crm_company_id) values
    ('0190a000-0000-7000-8000-000000000101', 'Acme Corporation', 'billing@acme.example', '0190a000-0000-7000-8000-000000000001'),
    ('0190a000-0000-7000-8000-000000000102', 'Globex', 'ap@globex.example', '0190a000-0000-7000-8000-000000000002');

insert into invoicing.invoices (id, customer_id, currency, memo) values
    ('0190a000-0000-7000-8000-000000000111', '0190a000-0000-7000-8000-000000000101', 'USD', 'Rocket skates, first batch'),
    ('0190a000-0000-7000-8000-000000000112', '0190a000-0000-7000-8000-000000000102', 'USD', null);

insert into invoicing.invoice_lines (id, invoice_id, description, quantity, unit_price) values
    ('0190a000-0000-7000-8000-000000000121', '0190a000-0000-7000-8000-000000000111', 'Rocket skates, pair', 10, 300.00),
    ('0190a000-0000-7000-8000-000000000122', '0190a000-0000-7000-8000-000000000111', 'Express delivery', 1, 49.90),
    ('0190a000-0000-7000-8000-000000000123', '0190a000-0000-7000-8000-000000000112', 'Hammock district survey', 1, 2500.00);

-- The second invoice is issued (and so numbered INV-000001); the first stays a draft.
update invoicing.invoices set status = 'issued' where id = '0190a000-0000-7000-8000-000000000112';
