-- HR's part of the reporting schema: views for BI tools (security_invoker, so the reader's own row policies
-- apply and one tenant sees only its rows).
create view reporting.hr_employees with (security_invoker = true) as
    select tenant_id, id, name, email, title, status, created_at, updated_at from hr.employees;

create view reporting.hr_commissions with (security_invoker = true) as
    select c.tenant_id, c.id, c.employee_id, e.name as employee_name, c.deal_id, c.deal_amount, c.currency,
           c.rate, c.amount, c.status, c.booked_at
      from hr.commissions c
      join hr.employees e on e.tenant_id = c.tenant_id and e.id = c.employee_id;

comment on view reporting.hr_employees is 'Employees.';
comment on view reporting.hr_commissions is
    'Commissions booked on won deals; deal_id joins reporting.crm_deals.id.';
grant select on reporting.hr_employees, reporting.hr_commissions to tessera_reporting;

-- The SQL endpoint's sessions (the reporting role) see the rows of the tenant their binding names (see core's
-- V13 migration); the tenant policy matches nothing for them.
create policy reporting_session on hr.employees for select to tessera_reporting
    using (tenant_id = (select s.tenant_id from core.sql_sessions s
                         where s.pid = pg_backend_pid() and s.server_started = pg_postmaster_start_time()
                           and s.token_hash = sha256(convert_to(current_setting('tessera.sql_session', true), 'UTF8'))));
create policy reporting_session on hr.commission_plans for select to tessera_reporting
    using (tenant_id = (select s.tenant_id from core.sql_sessions s
                         where s.pid = pg_backend_pid() and s.server_started = pg_postmaster_start_time()
                           and s.token_hash = sha256(convert_to(current_setting('tessera.sql_session', true), 'UTF8'))));
create policy reporting_session on hr.commissions for select to tessera_reporting
    using (tenant_id = (select s.tenant_id from core.sql_sessions s
                         where s.pid = pg_backend_pid() and s.server_started = pg_postmaster_start_time()
                           and s.token_hash = sha256(convert_to(current_setting('tessera.sql_session', true), 'UTF8'))));
