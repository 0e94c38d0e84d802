//! tessera-cdc: turning committed rows into module events.
//!
//! - [`pgoutput`]: the decoder of PostgreSQL's `pgoutput` logical replication protocol, and [`value`]: its
//!   text-format column values as JSON.
//! - [`worker`]: the CDC worker, from the replication slot into the durable `events.log`.
//! - [`dispatch`]: the dispatcher, from `events.log` to the modules' subscribers, exactly once.
//! - [`doctor`]: the health of all of it, for operators.

pub mod dispatch;
pub mod doctor;
pub mod pgoutput;
pub mod value;
pub mod worker;
