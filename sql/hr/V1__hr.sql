-- HR: employees, their commission plans, and the commissions booked for them when a CRM deal is won.
-- Every table is tenant-scoped (see sql/core/V1__tenancy.sql for the rules).
--
-- Commissions are written by the module's event handler (deal.closed.won, see modules/hr/src/commission.rs)
-- and never through the API: a commission records what was true when the deal was won (the deal's amount,
-- the rate then in force), so later edits to the deal or the plan do not rewrite it.

create schema hr;

-- Keeps updated_at current on every update, however the row is changed.
create function hr.touch_updated_at() returns trigger
    language plpgsql
    set search_path = pg_catalog, pg_temp
as $$ begin new.updated_at := now(); return new; end $$;

create table hr.employees (
    tenant_id   uuid not null default core.current_tenant_id() references core.tenants (id) on delete cascade,
    id          uuid not null default gen_random_uuid(),
    name        text not null,
    -- Matched (case-insensitively) against a CRM deal's owner_email to find whom a commission is for.
    email       text not null,
    title       text,
    -- An inactive employee keeps their history but earns no new commissions.
    status      text not null default 'active',
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now(),
    primary key (tenant_id, id),
    constraint employees_name_length check (length(name) between 1 and 200),
    constraint employees_email_format check (length(email) <= 254 and email ~ '^[^@\s]+@[^@\s]+$'),
    constraint employees_title_length check (length(title) between 1 and 200),
    constraint employees_status_valid check (status in ('active', 'inactive'))
);
create unique index employees_email_key on hr.employees (tenant_id, lower(email));
create index employees_created on hr.employees (tenant_id, created_at, id);

-- An employee's commission rate from a date on. The plan in force on a day is the one with the latest
-- effective_from on or before it; a new rate is a new plan, so the history stays readable.
create table hr.commission_plans (
    tenant_id       uuid not null default core.current_tenant_id() references core.tenants (id) on delete cascade,
    id              uuid not null default gen_random_uuid(),
    employee_id     uuid not null,
    rate            numeric(5, 4) not null,
    effective_from  date not null,
    created_at      timestamptz not null default now(),
    primary key (tenant_id, id),
    -- A plan belongs to its employee and goes with them.
    constraint commission_plans_employee_fk foreign key (tenant_id, employee_id)
        references hr.employees (tenant_id, id) on delete cascade,
    constraint commission_plans_rate_range check (rate >= 0 and rate <= 1),
    -- Also the index that finds the plan in force: (tenant, employee, latest effective_from <= day).
    constraint commission_plans_effective_key unique (tenant_id, employee_id, effective_from)
);
create index commission_plans_created on hr.commission_plans (tenant_id, created_at, id);

create table hr.commissions (
    tenant_id        uuid not null default core.current_tenant_id() references core.tenants (id) on delete cascade,
    id               uuid not null default gen_random_uuid(),
    employee_id      uuid not null,
    -- The plan the rate came from; the rate itself is copied below, so deleting the plan loses nothing.
    plan_id          uuid,
    -- The CRM deal, by id only: modules never reference each other's tables.
    deal_id          uuid not null,
    deal_amount      numeric(18, 2) not null,
    currency         text not null,
    rate             numeric(5, 4) not null,
    amount           numeric(18, 2) not null,
    status           text not null default 'booked',
    -- The deal.closed.won event that booked it. The dispatcher already applies an event's effects exactly
    -- once; this key makes a redelivery harmless even if that ever failed.
    source_event_id  uuid not null,
    -- When the deal was won (the event's commit time), not when the handler ran.
    booked_at        timestamptz not null,
    created_at       timestamptz not null default now(),
    updated_at       timestamptz not null default now(),
    primary key (tenant_id, id),
    -- Commissions are financial records: an employee who has them cannot be deleted (make them inactive).
    constraint commissions_employee_fk foreign key (tenant_id, employee_id)
        references hr.employees (tenant_id, id) on delete restrict,
    constraint commissions_plan_fk foreign key (tenant_id, plan_id)
        references hr.commission_plans (tenant_id, id) on delete set null (plan_id),
    constraint commissions_deal_amount_nonnegative check (deal_amount >= 0),
    constraint commissions_currency_format check (currency ~ '^[A-Z]{3}$'),
    constraint commissions_rate_range check (rate >= 0 and rate <= 1),
    -- A plain column rather than a generated one: PG 15 does not publish generated columns, and
    -- commission.booked consumers need the amount.
    constraint commissions_amount_computed check (amount = round(deal_amount * rate, 2)),
    constraint commissions_status_valid check (status in ('booked', 'paid'))
);
create unique index commissions_source_event_key on hr.commissions (tenant_id, source_event_id);
create index commissions_created on hr.commissions (tenant_id, created_at, id);
create index commissions_employee on hr.commissions (tenant_id, employee_id);
create index commissions_deal on hr.commissions (tenant_id, deal_id);
create index commissions_plan on hr.commissions (tenant_id, plan_id);

create trigger employees_touch before update on hr.employees
    for each row execute function hr.touch_updated_at();
create trigger commissions_touch before update on hr.commissions
    for each row execute function hr.touch_updated_at();

alter table hr.employees enable row level security;
alter table hr.employees force row level security;
create policy tenant_isolation on hr.employees
    using (tenant_id = (select core.current_tenant_id()))
    with check (tenant_id = (select core.current_tenant_id()));

alter table hr.commission_plans enable row level security;
alter table hr.commission_plans force row level security;
create policy tenant_isolation on hr.commission_plans
    using (tenant_id = (select core.current_tenant_id()))
    with check (tenant_id = (select core.current_tenant_id()));

alter table hr.commissions enable row level security;
alter table hr.commissions force row level security;
create policy tenant_isolation on hr.commissions
    using (tenant_id = (select core.current_tenant_id()))
    with check (tenant_id = (select core.current_tenant_id()));

grant usage on schema hr to tessera_hr, tessera_reporting;
grant select, insert, update, delete on hr.employees, hr.commission_plans to tessera_hr;
-- Commissions are booked by the event handler and never edited or deleted by the runtime role.
grant select, insert on hr.commissions to tessera_hr;
grant select on hr.employees, hr.commission_plans, hr.commissions to tessera_reporting;

-- Publish HR's tables to the CDC worker (see sql/core/V2__cdc_publication.sql). commission.booked is an
-- insert into hr.commissions and needs no old values, so the default replica identity is enough.
alter publication tessera_cdc add table hr.employees, hr.commission_plans, hr.commissions;
