-- CRM's part of the reporting schema: views for BI tools (security_invoker, so the reader's own row
-- policies apply and one tenant sees only its rows).
create view reporting.crm_companies with (security_invoker = true) as
    select tenant_id, id, name, domain, created_at, updated_at from crm.companies;

create view reporting.crm_contacts with (security_invoker = true) as
    select tenant_id, id, company_id, first_name, last_name, email, phone, created_at, updated_at
      from crm.contacts;

create view reporting.crm_deals with (security_invoker = true) as
    select d.tenant_id, d.id, d.company_id, c.name as company_name, d.contact_id, d.title, d.stage,
           d.stage in ('won', 'lost') as closed, d.amount, d.currency, d.owner_email, d.expected_close_date,
           d.created_at, d.updated_at
      from crm.deals d
      left join crm.companies c on c.tenant_id = d.tenant_id and c.id = d.company_id;

comment on view reporting.crm_companies is 'CRM companies.';
comment on view reporting.crm_contacts is 'CRM contacts; company_id joins reporting.crm_companies.id.';
comment on view reporting.crm_deals is
    'CRM deals with their company''s name; closed is true for the won and lost stages.';
grant select on reporting.crm_companies, reporting.crm_contacts, reporting.crm_deals to tessera_reporting;

-- The SQL endpoint's sessions (the reporting role) see the rows of the tenant their binding names (see core's
-- V13 migration); the tenant policy matches nothing for them.
create policy reporting_session on crm.companies for select to tessera_reporting
    using (tenant_id = (select s.tenant_id from core.sql_sessions s
                         where s.pid = pg_backend_pid() and s.server_started = pg_postmaster_start_time()
                           and s.token_hash = sha256(convert_to(current_setting('tessera.sql_session', true), 'UTF8'))));
create policy reporting_session on crm.contacts for select to tessera_reporting
    using (tenant_id = (select s.tenant_id from core.sql_sessions s
                         where s.pid = pg_backend_pid() and s.server_started = pg_postmaster_start_time()
                           and s.token_hash = sha256(convert_to(current_setting('tessera.sql_session', true), 'UTF8'))));
create policy reporting_session on crm.deals for select to tessera_reporting
    using (tenant_id = (select s.tenant_id from core.sql_sessions s
                         where s.pid = pg_backend_pid() and s.server_started = pg_postmaster_start_time()
                           and s.token_hash = sha256(convert_to(current_setting('tessera.sql_session', true), 'UTF8'))));
