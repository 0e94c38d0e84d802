-- Invoicing: customers, invoices with their lines, and payments.
-- Every table is tenant-scoped (see sql/core/V1__tenancy.sql for the rules).
--
-- The invoice lifecycle lives here, in the database, so that the API, direct SQL and imports obey the same
-- rules:
--
--   draft ──issue──▶ issued ──payments reach the total──▶ paid
--     │                 │
--     └──void──▶ void ◀─┘ (only while nothing has been paid)
--
-- * Invoices are created as drafts. A draft is freely editable; its lines may be added, changed, removed.
-- * Issuing takes the tenant's next number from invoicing.invoice_counters (gapless: the counter row is
--   updated inside the issuing transaction, so concurrent issues queue on its row lock and a rolled-back
--   issue gives its number back), fills in issue_date, due_date and the customer's name as billed, and
--   freezes the invoice: from then on only its status moves, along the arrows above.
-- * total is derived: always the sum of the lines' amounts, recomputed in the same transaction.
-- * Payments are recorded only against an issued invoice, never above its balance, and are append-only; the
--   payment that completes the total moves the invoice to paid in the same transaction.
--
-- Refusals raise SQLSTATE 55000 (object_not_in_prerequisite_state) or 23514 (check_violation) and name a
-- constraint, which the service maps to a stable problem code (modules/invoicing/src/routes.rs):
--   invoice_not_draft, invoice_invalid_transition, invoice_empty, invoice_has_payments, invoice_not_issued,
--   payments_within_balance, invoice_lines_amount_range, invoices_total_range.

create schema invoicing;

-- Keeps updated_at current on every update, however the row is changed.
create function invoicing.touch_updated_at() returns trigger
    language plpgsql
    set search_path = pg_catalog, pg_temp
as $$ begin new.updated_at := now(); return new; end $$;

-- Customers. crm_company_id links a customer to a CRM company: the invoicing module's own copy of it, kept
-- up to date from crm.companies events (modules never read each other's tables).
create table invoicing.customers (
    tenant_id       uuid not null default core.current_tenant_id() references core.tenants (id) on delete cascade,
    id              uuid not null default gen_random_uuid(),
    name            text not null,
    email           text,
    crm_company_id  uuid,
    created_at      timestamptz not null default now(),
    updated_at      timestamptz not null default now(),
    primary key (tenant_id, id),
    constraint customers_name_length check (length(name) between 1 and 200),
    constraint customers_email_format check (length(email) <= 254 and email ~ '^[^@\s]+@[^@\s]+$')
);
create unique index customers_crm_company_key on invoicing.customers (tenant_id, crm_company_id);
create index customers_created on invoicing.customers (tenant_id, created_at, id);

create table invoicing.invoices (
    tenant_id        uuid not null default core.current_tenant_id() references core.tenants (id) on delete cascade,
    id               uuid not null default gen_random_uuid(),
    customer_id      uuid not null,
    status           text not null default 'draft',
    currency         text not null default 'USD',
    -- Assigned when issued (INV-000001, INV-000002, … per tenant, without gaps).
    number           text,
    -- The customer's name as billed, copied when issued: renaming the customer later does not rewrite it.
    customer_name    text,
    issue_date       date,
    due_date         date,
    -- The sum of the lines' amounts; maintained by the triggers below, never written by hand.
    total            numeric(18, 2) not null default 0,
    memo             text,
    -- The CRM deal this invoice bills, if any (no foreign key: the CRM's tables are not ours).
    deal_id          uuid,
    -- The event an invoice was created from: makes creating it from an event idempotent.
    source_event_id  uuid,
    issued_at        timestamptz,
    paid_at          timestamptz,
    voided_at        timestamptz,
    created_at       timestamptz not null default now(),
    updated_at       timestamptz not null default now(),
    primary key (tenant_id, id),
    constraint invoices_customer_fk foreign key (tenant_id, customer_id)
        references invoicing.customers (tenant_id, id) on delete restrict,
    constraint invoices_status_valid check (status in ('draft', 'issued', 'paid', 'void')),
    constraint invoices_currency_format check (currency ~ '^[A-Z]{3}$'),
    constraint invoices_number_format check (number ~ '^INV-[0-9]{6,}$'),
    -- A draft has no number, an issued or paid invoice has one; a voided invoice keeps what it had.
    constraint invoices_number_when_issued check (
        case status when 'draft' then number is null when 'void' then true else number is not null end),
    constraint invoices_due_after_issue check (due_date >= issue_date),
    constraint invoices_total_nonnegative check (total >= 0),
    constraint invoices_memo_length check (length(memo) between 1 and 2000)
);
create unique index invoices_number_key on invoicing.invoices (tenant_id, number);
create unique index invoices_source_event_key on invoicing.invoices (tenant_id, source_event_id);
create index invoices_created on invoicing.invoices (tenant_id, created_at, id);
create index invoices_customer on invoicing.invoices (tenant_id, customer_id);
create index invoices_status on invoicing.invoices (tenant_id, status);
create index invoices_deal on invoicing.invoices (tenant_id, deal_id);

-- The domain events invoice.issued and invoice.paid compare old and new status.
alter table invoicing.invoices replica identity full;

create table invoicing.invoice_lines (
    tenant_id    uuid not null default core.current_tenant_id() references core.tenants (id) on delete cascade,
    id           uuid not null default gen_random_uuid(),
    invoice_id   uuid not null,
    description  text not null,
    quantity     numeric(12, 3) not null default 1,
    unit_price   numeric(18, 2) not null,
    amount       numeric(18, 2) generated always as (round(quantity * unit_price, 2)) stored,
    created_at   timestamptz not null default now(),
    primary key (tenant_id, id),
    constraint invoice_lines_invoice_fk foreign key (tenant_id, invoice_id)
        references invoicing.invoices (tenant_id, id) on delete cascade,
    constraint invoice_lines_description_length check (length(description) between 1 and 500),
    constraint invoice_lines_quantity_positive check (quantity > 0),
    constraint invoice_lines_unit_price_nonnegative check (unit_price >= 0)
);
create index invoice_lines_invoice on invoicing.invoice_lines (tenant_id, invoice_id, created_at, id);

create table invoicing.payments (
    tenant_id   uuid not null default core.current_tenant_id() references core.tenants (id) on delete cascade,
    id          uuid not null default gen_random_uuid(),
    invoice_id  uuid not null,
    amount      numeric(18, 2) not null,
    paid_at     timestamptz not null default now(),
    reference   text,
    created_at  timestamptz not null default now(),
    primary key (tenant_id, id),
    -- An invoice with payments is never deleted (only drafts are, and drafts have no payments).
    constraint payments_invoice_fk foreign key (tenant_id, invoice_id)
        references invoicing.invoices (tenant_id, id) on delete restrict,
    constraint payments_amount_positive check (amount > 0),
    constraint payments_reference_length check (length(reference) between 1 and 200)
);
create index payments_invoice on invoicing.payments (tenant_id, invoice_id, created_at, id);

-- Each tenant's next invoice number. Written only by invoicing.number_invoice() (SECURITY DEFINER): the
-- module's role has no rights on it, so nobody can skip or reuse a number by hand.
create table invoicing.invoice_counters (
    tenant_id    uuid not null default core.current_tenant_id() references core.tenants (id) on delete cascade,
    next_number  bigint not null default 1,
    primary key (tenant_id),
    constraint invoice_counters_next_positive check (next_number > 0)
);

-- The invoice lifecycle (see the top of this file). Runs before every insert, update and delete of an
-- invoice, before invoicing.number_invoice() (triggers fire in name order: invoices_guard, invoices_number).
create function invoicing.guard_invoice() returns trigger
    language plpgsql
    set search_path = pg_catalog, pg_temp
as $$
declare
    -- What may differ between the old and new row of an issued, paid or void invoice.
    movable constant text[] := array['status', 'paid_at', 'voided_at', 'updated_at'];
    lines_total numeric;
    lines_count bigint;
    paid numeric;
begin
    if tg_op = 'INSERT' then
        if new.status <> 'draft' then
            raise exception 'invoices are created as drafts, then issued'
                using errcode = 'object_not_in_prerequisite_state', constraint = 'invoice_invalid_transition';
        end if;
        -- Derived columns: a new invoice has no lines, no number and no history yet.
        new.total := 0;
        new.customer_name := null;
        new.issued_at := null;
        new.paid_at := null;
        new.voided_at := null;
        return new;
    end if;

    if tg_op = 'DELETE' then
        -- pg_trigger_depth() > 1 is a cascade: a deleted tenant takes all its invoices along.
        if old.status <> 'draft' and pg_trigger_depth() = 1 then
            raise exception 'invoice % is %; only drafts can be deleted', old.number, old.status
                using errcode = 'object_not_in_prerequisite_state', constraint = 'invoice_not_draft';
        end if;
        return old;
    end if;

    if old.status = 'draft' then
        select coalesce(sum(amount), 0), count(*) into lines_total, lines_count
          from invoicing.invoice_lines where tenant_id = new.tenant_id and invoice_id = new.id;
        if lines_total >= 1e16 then
            raise exception 'the invoice total would exceed the largest amount'
                using errcode = 'check_violation', constraint = 'invoices_total_range';
        end if;
        new.total := lines_total;
        new.customer_name := null;
        new.issued_at := null;
        new.paid_at := null;
        new.voided_at := null;
        if new.status = 'issued' then
            if lines_count = 0 or lines_total = 0 then
                raise exception 'an invoice needs lines and a total above zero to be issued'
                    using errcode = 'object_not_in_prerequisite_state', constraint = 'invoice_empty';
            end if;
            new.issue_date := coalesce(new.issue_date, current_date);
            new.due_date := coalesce(new.due_date, new.issue_date + 30);
            select name into new.customer_name
              from invoicing.customers where tenant_id = new.tenant_id and id = new.customer_id;
            new.issued_at := now();
            -- The number comes from invoicing.number_invoice(), which fires next.
        elsif new.status = 'void' then
            new.voided_at := now();
        elsif new.status <> 'draft' then
            raise exception 'a draft can be issued or voided, not marked %', new.status
                using errcode = 'object_not_in_prerequisite_state', constraint = 'invoice_invalid_transition';
        end if;
        new.updated_at := now();
        return new;
    end if;

    -- Issued, paid or void: frozen. Compared as JSON so that a column added later is frozen too.
    if (to_jsonb(new) - movable) is distinct from (to_jsonb(old) - movable) then
        raise exception 'invoice % is % and can no longer be changed', old.number, old.status
            using errcode = 'object_not_in_prerequisite_state', constraint = 'invoice_not_draft';
    end if;
    new.paid_at := old.paid_at;
    new.voided_at := old.voided_at;
    if new.status = old.status then
        new.updated_at := old.updated_at;
        return new;
    end if;
    select coalesce(sum(amount), 0) into paid
      from invoicing.payments where tenant_id = new.tenant_id and invoice_id = new.id;
    if old.status = 'issued' and new.status = 'paid' then
        if paid < old.total then
            raise exception 'invoice % is not paid in full', old.number
                using errcode = 'object_not_in_prerequisite_state', constraint = 'invoice_invalid_transition';
        end if;
        new.paid_at := now();
    elsif old.status = 'issued' and new.status = 'void' then
        if paid > 0 then
            raise exception 'invoice % has payments and cannot be voided', old.number
                using errcode = 'object_not_in_prerequisite_state', constraint = 'invoice_has_payments';
        end if;
        new.voided_at := now();
    else
        raise exception 'an invoice cannot go from % to %', old.status, new.status
            using errcode = 'object_not_in_prerequisite_state', constraint = 'invoice_invalid_transition';
    end if;
    new.updated_at := now();
    return new;
end
$$;

-- Takes the tenant's next number for an invoice being issued. The upsert locks the tenant's counter row
-- until the issuing transaction ends: concurrent issues of one tenant queue here, and a rollback returns the
-- number, so numbers have no gaps and no duplicates. SECURITY DEFINER (as the schema owner, still under the
-- forced row policies) because the module's role may not touch the counters; a trigger function cannot be
-- called directly, so this is the only way to take a number.
create function invoicing.number_invoice() returns trigger
    language plpgsql security definer
    set search_path = pg_catalog, pg_temp
as $$
declare
    n bigint;
begin
    insert into invoicing.invoice_counters as c (tenant_id, next_number) values (new.tenant_id, 2)
        on conflict (tenant_id) do update set next_number = c.next_number + 1
        returning c.next_number - 1 into n;
    new.number := 'INV-' || lpad(n::text, greatest(6, length(n::text)), '0');
    return new;
end
$$;

create trigger invoices_guard before insert or update or delete on invoicing.invoices
    for each row execute function invoicing.guard_invoice();
create trigger invoices_number before update on invoicing.invoices
    for each row when (old.status = 'draft' and new.status = 'issued')
    execute function invoicing.number_invoice();

-- Lines change only while their invoice is a draft. The invoice row is locked first, so a line cannot slip
-- in while the invoice is being issued: whichever comes second sees the other's outcome.
create function invoicing.guard_invoice_line() returns trigger
    language plpgsql
    set search_path = pg_catalog, pg_temp
as $$
declare
    invoice_status text;
begin
    -- A cascade (a deleted draft or tenant) takes the lines along.
    if tg_op = 'DELETE' and pg_trigger_depth() > 1 then
        return old;
    end if;
    if tg_op in ('UPDATE', 'DELETE') then
        select status into invoice_status from invoicing.invoices
         where tenant_id = old.tenant_id and id = old.invoice_id for no key update;
        if invoice_status <> 'draft' then
            raise exception 'the invoice is % and its lines can no longer be changed', invoice_status
                using errcode = 'object_not_in_prerequisite_state', constraint = 'invoice_not_draft';
        end if;
    end if;
    if tg_op = 'DELETE' then
        return old;
    end if;
    -- (A missing invoice is left to the foreign key to report.)
    select status into invoice_status from invoicing.invoices
     where tenant_id = new.tenant_id and id = new.invoice_id for no key update;
    if invoice_status <> 'draft' then
        raise exception 'the invoice is % and its lines can no longer be changed', invoice_status
            using errcode = 'object_not_in_prerequisite_state', constraint = 'invoice_not_draft';
    end if;
    -- Checked here, before the generated amount is computed, so that it fails with a name, not an overflow.
    if round(new.quantity * new.unit_price, 2) >= 1e16 then
        raise exception 'quantity times unit_price exceeds the largest amount'
            using errcode = 'check_violation', constraint = 'invoice_lines_amount_range';
    end if;
    return new;
end
$$;

-- After a line changes, touching its invoice makes invoicing.guard_invoice() recompute the total.
create function invoicing.total_invoice() returns trigger
    language plpgsql
    set search_path = pg_catalog, pg_temp
as $$
begin
    if tg_op in ('UPDATE', 'DELETE') then
        update invoicing.invoices set updated_at = now()
         where tenant_id = old.tenant_id and id = old.invoice_id and status = 'draft';
    end if;
    if tg_op in ('INSERT', 'UPDATE') then
        update invoicing.invoices set updated_at = now()
         where tenant_id = new.tenant_id and id = new.invoice_id and status = 'draft';
    end if;
    return null;
end
$$;

create trigger invoice_lines_guard before insert or update or delete on invoicing.invoice_lines
    for each row execute function invoicing.guard_invoice_line();
create trigger invoice_lines_total after insert or update or delete on invoicing.invoice_lines
    for each row execute function invoicing.total_invoice();

-- A payment goes only to an issued invoice and never above its balance (the invoice row is locked, so two
-- concurrent payments cannot both fit into the same balance).
create function invoicing.guard_payment() returns trigger
    language plpgsql
    set search_path = pg_catalog, pg_temp
as $$
declare
    invoice record;
    paid numeric;
begin
    select status, total into invoice from invoicing.invoices
     where tenant_id = new.tenant_id and id = new.invoice_id for no key update;
    if not found then
        return new; -- the foreign key reports it
    end if;
    if invoice.status <> 'issued' then
        raise exception 'payments are recorded against issued invoices; this one is %', invoice.status
            using errcode = 'object_not_in_prerequisite_state', constraint = 'invoice_not_issued';
    end if;
    select coalesce(sum(amount), 0) into paid
      from invoicing.payments where tenant_id = new.tenant_id and invoice_id = new.invoice_id;
    if paid + new.amount > invoice.total then
        raise exception 'the payment exceeds the invoice''s balance of %', invoice.total - paid
            using errcode = 'check_violation', constraint = 'payments_within_balance';
    end if;
    return new;
end
$$;

-- The payment that completes the total settles the invoice, in the same transaction.
create function invoicing.settle_invoice() returns trigger
    language plpgsql
    set search_path = pg_catalog, pg_temp
as $$
begin
    update invoicing.invoices i set status = 'paid'
     where i.tenant_id = new.tenant_id and i.id = new.invoice_id and i.status = 'issued'
       and (select sum(p.amount) from invoicing.payments p
             where p.tenant_id = i.tenant_id and p.invoice_id = i.id) >= i.total;
    return null;
end
$$;

create trigger payments_guard before insert on invoicing.payments
    for each row execute function invoicing.guard_payment();
create trigger payments_settle after insert on invoicing.payments
    for each row execute function invoicing.settle_invoice();

create trigger customers_touch before update on invoicing.customers
    for each row execute function invoicing.touch_updated_at();

alter table invoicing.customers enable row level security;
alter table invoicing.customers force row level security;
create policy tenant_isolation on invoicing.customers
    using (tenant_id = (select core.current_tenant_id()))
    with check (tenant_id = (select core.current_tenant_id()));

alter table invoicing.invoices enable row level security;
alter table invoicing.invoices force row level security;
create policy tenant_isolation on invoicing.invoices
    using (tenant_id = (select core.current_tenant_id()))
    with check (tenant_id = (select core.current_tenant_id()));

alter table invoicing.invoice_lines enable row level security;
alter table invoicing.invoice_lines force row level security;
create policy tenant_isolation on invoicing.invoice_lines
    using (tenant_id = (select core.current_tenant_id()))
    with check (tenant_id = (select core.current_tenant_id()));

alter table invoicing.payments enable row level security;
alter table invoicing.payments force row level security;
create policy tenant_isolation on invoicing.payments
    using (tenant_id = (select core.current_tenant_id()))
    with check (tenant_id = (select core.current_tenant_id()));

alter table invoicing.invoice_counters enable row level security;
alter table invoicing.invoice_counters force row level security;
create policy tenant_isolation on invoicing.invoice_counters
    using (tenant_id = (select core.current_tenant_id()))
    with check (tenant_id = (select core.current_tenant_id()));

grant usage on schema invoicing to tessera_invoicing, tessera_reporting;
grant select, insert, update, delete on invoicing.customers, invoicing.invoices, invoicing.invoice_lines
    to tessera_invoicing;
-- Payments are append-only records of money received.
grant select, insert on invoicing.payments to tessera_invoicing;
grant select on invoicing.customers, invoicing.invoices, invoicing.invoice_lines, invoicing.payments,
    invoicing.invoice_counters to tessera_reporting;

-- Publish the module's tables to the CDC worker (see sql/core/V2__cdc_publication.sql). invoicing.invoices
-- has REPLICA IDENTITY FULL, so an update carries the old status (invoice.issued, invoice.paid need it).
alter publication tessera_cdc add table invoicing.customers, invoicing.invoices, invoicing.invoice_lines,
    invoicing.payments, invoicing.invoice_counters;
