-- Dates stay in the years every client reads (1 to 9999). Postgres stores later ones, but issuing a draft
-- dated late in 9999 made its default due date (issue date + 30 days) fall in year 10000, which the
-- platform's own readers cannot represent. The check refuses such writes from now on (422 on due_date).
-- NOT VALID: rows written before it are not checked, so a database that already holds such an invoice
-- still migrates (issued invoices are immutable; an operator can void and reissue one).
alter table invoicing.invoices
    add constraint invoices_dates_in_range
        check (issue_date <= date '9999-12-31' and due_date <= date '9999-12-31') not valid;
