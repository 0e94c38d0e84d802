-- GET /v1/events reads one tenant's events in log order: an index for exactly that, so a quiet tenant's
-- page costs the same however busy the others are.
create index log_tenant_seq on events.log (tenant_id, seq);
