-- The invoicing trigger functions that are not SECURITY DEFINER lose their `set search_path` clause: a
-- function with a SET clause saves and restores the setting on every call, which cost about a fifth of an
-- invoice line's insert (the line's guard, the invoice's total, the invoice's guard: three calls per line).
-- They stay safe without it: every table they touch is schema-qualified, and the built-in functions and
-- operators they use resolve in pg_catalog, which the search path cannot push aside for a role that can
-- create nothing anywhere (no runtime role can: tests/api/catalog.rs checks it). They run with the
-- caller's rights, so a caller could only ever mislead its own statement. invoicing.number_invoice() is
-- SECURITY DEFINER and keeps its clause.
alter function invoicing.guard_invoice() reset search_path;
alter function invoicing.guard_invoice_line() reset search_path;
alter function invoicing.total_invoice() reset search_path;
