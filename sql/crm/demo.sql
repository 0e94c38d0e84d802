-- Sample CRM data for the demo tenant. Runs with the tenant already bound, so tenant_id takes its default.
insert into crm.companies (id, name, domain) values
    ('0190a000-0000-7000-8000-000000000001', 'Acme Corporation', 'acme.example'),
    ('0190a000-0000-7000-8000-000000000002', 'Globex', 'globex.example'),
    ('0190a000-0000-7000-8000-000000000003', 'Initech', 'initech.example');

insert into crm.contacts (id, company_id, first_name, last_name, email) values
    ('0190a000-0000-7000-8000-000000000011', '0190a000-0000-7000-8000-000000000001', 'Wile', 'Coyote', 'wile@acme.example'),
    ('0190a000-0000-7000-8000-000000000012', '0190a000-0000-7000-8000-000000000002', 'Hank', 'Scorpio', 'hank@globex.example'),
    ('0190a000-0000-7000-8000-000000000013', '0190a000-0000-7000-8000-000000000003', 'Bill', 'Lumbergh', 'bill@initech.example');

insert into crm.deals (id, company_id, contact_id, title, stage, amount, currency, owner_email, expected_close_date) values
    ('0190a000-0000-7000-8000-000000000021', '0190a000-0000-7000-8000-000000000001', '0190a000-0000-7000-8000-000000000011',
     'Rocket skates, 40 pairs', 'proposal', 12000.00, 'USD', 'ana@demo.example', current_date + 30),
    ('0190a000-0000-7000-8000-000000000022', '0190a000-0000-7000-8000-000000000002', '0190a000-0000-7000-8000-000000000012',
     'Hammock district fit-out', 'negotiation', 87500.00, 'USD', 'ben@demo.example', current_date + 14),
    ('0190a000-0000-7000-8000-000000000023', '0190a000-0000-7000-8000-000000000003', '0190a000-0000-7000-8000-000000000013',
     'TPS report automation', 'lead', 4999.99, 'USD', 'ana@demo.example', null);
