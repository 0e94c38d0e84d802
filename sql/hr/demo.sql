-- Sample HR data for the demo tenant. Runs with the tenant already bound, so tenant_id takes its default.
-- Ana and Ben own the demo deals in sql/crm/demo.sql: winning one of theirs books a commission.
insert into hr.employees (id, name, email, title) values
    ('0190a000-0000-7000-8000-000000000101', 'Ana Lima', 'ana@demo.example', 'Account Executive'),
    ('0190a000-0000-7000-8000-000000000102', 'Ben Okafor', 'ben@demo.example', 'Senior Account Executive'),
    ('0190a000-0000-7000-8000-000000000103', 'Cleo Park', 'cleo@demo.example', 'People Partner');

-- Ana's rate went up in 2025; Ben has one plan. Cleo is not in sales and has none.
insert into hr.commission_plans (id, employee_id, rate, effective_from) values
    ('0190a000-0000-7000-8000-000000000111', '0190a000-0000-7000-8000-000000000101', 0.0800, date '2024-01-01'),
    ('0190a000-0000-7000-8000-000000000112', '0190a000-0000-7000-8000-000000000101', 0.1000, date '2025-01-01'),
    ('0190a000-0000-7000-8000-000000000113', '0190a000-0000-7000-8000-000000000102', 0.0750, date '2024-01-01');
