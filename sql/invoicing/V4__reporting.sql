-- Invoicing's part of the reporting schema: views for BI tools (security_invoker, so the reader's own row
-- policies apply and one tenant sees only its rows).
create view reporting.invoicing_customers with (security_invoker = true) as
    select tenant_id, id, name, email, crm_company_id, created_at, updated_at from invoicing.customers;

create view reporting.invoicing_invoices with (security_invoker = true) as
    select i.tenant_id, i.id, i.number, i.status, i.customer_id, i.customer_name, i.deal_id, i.currency, i.total,
           i.issue_date, i.due_date, i.issued_at, i.paid_at,
           i.status = 'issued' and i.due_date < current_date as overdue,
           coalesce((select sum(p.amount) from invoicing.payments p
                      where p.tenant_id = i.tenant_id and p.invoice_id = i.id), 0) as paid
      from invoicing.invoices i;

create view reporting.invoicing_invoice_lines with (security_invoker = true) as
    select tenant_id, id, invoice_id, description, quantity, unit_price, amount from invoicing.invoice_lines;

create view reporting.invoicing_payments with (security_invoker = true) as
    select tenant_id, id, invoice_id, amount, paid_at, reference from invoicing.payments;

comment on view reporting.invoicing_customers is
    'Invoicing customers; crm_company_id joins reporting.crm_companies.id.';
comment on view reporting.invoicing_invoices is
    'Invoices with the amount paid so far; deal_id joins reporting.crm_deals.id; overdue is true for issued invoices past their due date.';
comment on view reporting.invoicing_invoice_lines is 'Invoice lines; invoice_id joins reporting.invoicing_invoices.id.';
comment on view reporting.invoicing_payments is 'Payments; invoice_id joins reporting.invoicing_invoices.id.';
grant select on reporting.invoicing_customers, reporting.invoicing_invoices, reporting.invoicing_invoice_lines,
    reporting.invoicing_payments to tessera_reporting;

-- The SQL endpoint's sessions (the reporting role) see the rows of the tenant their binding names (see core's
-- V13 migration); the tenant policy matches nothing for them.
create policy reporting_session on invoicing.customers for select to tessera_reporting
    using (tenant_id = (select s.tenant_id from core.sql_sessions s
                         where s.pid = pg_backend_pid() and s.server_started = pg_postmaster_start_time()
                           and s.token_hash = sha256(convert_to(current_setting('tessera.sql_session', true), 'UTF8'))));
create policy reporting_session on invoicing.invoices for select to tessera_reporting
    using (tenant_id = (select s.tenant_id from core.sql_sessions s
                         where s.pid = pg_backend_pid() and s.server_started = pg_postmaster_start_time()
                           and s.token_hash = sha256(convert_to(current_setting('tessera.sql_session', true), 'UTF8'))));
create policy reporting_session on invoicing.invoice_lines for select to tessera_reporting
    using (tenant_id = (select s.tenant_id from core.sql_sessions s
                         where s.pid = pg_backend_pid() and s.server_started = pg_postmaster_start_time()
                           and s.token_hash = sha256(convert_to(current_setting('tessera.sql_session', true), 'UTF8'))));
create policy reporting_session on invoicing.payments for select to tessera_reporting
    using (tenant_id = (select s.tenant_id from core.sql_sessions s
                         where s.pid = pg_backend_pid() and s.server_started = pg_postmaster_start_time()
                           and s.token_hash = sha256(convert_to(current_setting('tessera.sql_session', true), 'UTF8'))));
create policy reporting_session on invoicing.invoice_counters for select to tessera_reporting
    using (tenant_id = (select s.tenant_id from core.sql_sessions s
                         where s.pid = pg_backend_pid() and s.server_started = pg_postmaster_start_time()
                           and s.token_hash = sha256(convert_to(current_setting('tessera.sql_session', true), 'UTF8'))));
