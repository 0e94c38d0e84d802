-- core.current_tenant_id() without a SET clause, so that Postgres inlines it into the statement that calls
-- it. With `set search_path` it could not be inlined: every call parsed and planned the function body
-- afresh (about 0.2 ms, and every row policy and every defaulted tenant_id calls it). Without the clause
-- the body must not depend on the caller's search_path: every name in it is qualified, the comparison too.
create or replace function core.current_tenant_id() returns uuid
    language sql stable parallel safe
as $$
    select case when pg_catalog.current_setting('tessera.tenant_id', true) operator(pg_catalog.=) ''
                then null
                else pg_catalog.current_setting('tessera.tenant_id', true)::pg_catalog.uuid
           end
$$;
