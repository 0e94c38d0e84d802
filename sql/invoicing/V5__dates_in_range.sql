-- Dates stay in the years every client reads (1 to 9999). Postgres stores later ones, but issuing a draft
-- dated late in 9999 made its default due date (issue date + 30 days) fall in year 10000, which the
-- platform's own readers cannot represent. The check refuses the write instead (422 on due_date).
alter table invoicing.invoices
    add constraint invoices_dates_in_range
        check (issue_date <= date '9999-12-31' and due_date <= date '9999-12-31');
