-- CRM: companies, their contacts, and deals moving through a pipeline.
-- Every table is tenant-scoped (see sql/core/V1__tenancy.sql for the rules).

create schema crm;

-- Keeps updated_at current on every update, however the row is changed.
create function crm.touch_updated_at() returns trigger
    language plpgsql
    set search_path = pg_catalog, pg_temp
as $$ begin new.updated_at := now(); return new; end $$;

create table crm.companies (
    tenant_id   uuid not null default core.current_tenant_id() references core.tenants (id) on delete cascade,
    id          uuid not null default gen_random_uuid(),
    name        text not null,
    domain      text,
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now(),
    primary key (tenant_id, id),
    constraint companies_name_length check (length(name) between 1 and 200),
    constraint companies_domain_format check (domain ~ '^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$')
);
create unique index companies_domain_key on crm.companies (tenant_id, domain);
create index companies_created on crm.companies (tenant_id, created_at, id);

create table crm.contacts (
    tenant_id   uuid not null default core.current_tenant_id() references core.tenants (id) on delete cascade,
    id          uuid not null default gen_random_uuid(),
    company_id  uuid,
    first_name  text not null,
    last_name   text,
    email       text,
    phone       text,
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now(),
    primary key (tenant_id, id),
    constraint contacts_company_fk foreign key (tenant_id, company_id)
        references crm.companies (tenant_id, id) on delete set null (company_id),
    constraint contacts_first_name_length check (length(first_name) between 1 and 100),
    constraint contacts_last_name_length check (length(last_name) between 1 and 100),
    constraint contacts_email_format check (length(email) <= 254 and email ~ '^[^@\s]+@[^@\s]+$'),
    constraint contacts_phone_length check (length(phone) between 1 and 50)
);
create unique index contacts_email_key on crm.contacts (tenant_id, lower(email));
create index contacts_company on crm.contacts (tenant_id, company_id);
create index contacts_created on crm.contacts (tenant_id, created_at, id);

create table crm.deals (
    tenant_id            uuid not null default core.current_tenant_id() references core.tenants (id) on delete cascade,
    id                   uuid not null default gen_random_uuid(),
    company_id           uuid,
    contact_id           uuid,
    title                text not null,
    stage                text not null default 'lead',
    amount               numeric(18, 2) not null default 0,
    currency             text not null default 'USD',
    owner_email          text,
    expected_close_date  date,
    created_at           timestamptz not null default now(),
    updated_at           timestamptz not null default now(),
    primary key (tenant_id, id),
    constraint deals_company_fk foreign key (tenant_id, company_id)
        references crm.companies (tenant_id, id) on delete restrict,
    constraint deals_contact_fk foreign key (tenant_id, contact_id)
        references crm.contacts (tenant_id, id) on delete set null (contact_id),
    constraint deals_title_length check (length(title) between 1 and 200),
    constraint deals_stage_valid check (stage in ('lead', 'qualified', 'proposal', 'negotiation', 'won', 'lost')),
    constraint deals_amount_nonnegative check (amount >= 0),
    constraint deals_currency_format check (currency ~ '^[A-Z]{3}$'),
    constraint deals_owner_email_format check (length(owner_email) <= 254 and owner_email ~ '^[^@\s]+@[^@\s]+$')
);
create index deals_created on crm.deals (tenant_id, created_at, id);
create index deals_company on crm.deals (tenant_id, company_id);
create index deals_stage on crm.deals (tenant_id, stage);

-- The CDC worker needs old values to see a stage change (deal.closed.won).
alter table crm.deals replica identity full;

create trigger companies_touch before update on crm.companies
    for each row execute function crm.touch_updated_at();
create trigger contacts_touch before update on crm.contacts
    for each row execute function crm.touch_updated_at();
create trigger deals_touch before update on crm.deals
    for each row execute function crm.touch_updated_at();

alter table crm.companies enable row level security;
alter table crm.companies force row level security;
create policy tenant_isolation on crm.companies
    using (tenant_id = (select core.current_tenant_id()))
    with check (tenant_id = (select core.current_tenant_id()));

alter table crm.contacts enable row level security;
alter table crm.contacts force row level security;
create policy tenant_isolation on crm.contacts
    using (tenant_id = (select core.current_tenant_id()))
    with check (tenant_id = (select core.current_tenant_id()));

alter table crm.deals enable row level security;
alter table crm.deals force row level security;
create policy tenant_isolation on crm.deals
    using (tenant_id = (select core.current_tenant_id()))
    with check (tenant_id = (select core.current_tenant_id()));

grant usage on schema crm to tessera_crm, tessera_reporting;
grant select, insert, update, delete on crm.companies, crm.contacts, crm.deals to tessera_crm;
grant select on crm.companies, crm.contacts, crm.deals to tessera_reporting;
