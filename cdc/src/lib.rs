//! tessera-cdc: turning committed rows into module events.
//!
//! So far this crate holds the decoder of PostgreSQL's `pgoutput` logical replication protocol
//! ([`pgoutput`]) and the conversion of its text-format column values to JSON ([`value`]). The replication
//! client, the event rules, the durable event log and the dispatcher (issue 3) build on them.

pub mod pgoutput;
pub mod value;
pub mod worker;
