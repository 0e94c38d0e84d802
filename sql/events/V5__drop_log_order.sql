-- The log's order is `seq` (V2); the older (tenant_id, commit_lsn, position) index serves no query and
-- costs the CDC worker an index insertion per event.
drop index events.log_order;
