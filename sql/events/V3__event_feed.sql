-- GET /v1/events: tenants read their own events (the tenant_isolation policy; nothing else) as
-- tessera_event_feed, the gateway's role for the feed.
grant usage on schema events to tessera_event_feed;
grant select on events.log to tessera_event_feed;
