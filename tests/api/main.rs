//! End-to-end tests of the platform against a real PostgreSQL (see `support`).

mod bad_input;
mod cache;
mod catalog;
mod cdc_decoding;
mod cdc_worker;
mod contract;
mod crud;
mod dashboard;
mod events;
mod flows;
mod hr;
mod idempotency;
mod invoicing;
mod isolation;
mod migrations;
mod overload;
mod ratelimit;
mod restart;
mod sql_endpoint;
mod support;
mod up;
mod usage;
mod users;
