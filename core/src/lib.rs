//! tessera-core: what more than one Tessera crate truly needs.
//!
//! - [`tenant`]: the `TenantId` newtype and slug validation.
//! - [`module`]: the contract a business module fulfils (schema, migrations, routes, demo data).
//! - [`db`]: the connection pool and the per-request transaction that authenticates the caller's API key
//!   and binds its tenant inside Postgres, so row-level security does the filtering.
//! - [`problem`]: RFC 9457 problem+json errors with stable codes, and the mapping of Postgres conditions.
//! - [`input`]: strict JSON body and query parsing that names the offending field.
//! - [`openapi`]: the shared parts of the API contract (OpenAPI 3.1), and the router that documents routes.
//! - [`apikey`]: API key format, generation and hashing.
//! - [`admin`]: operator actions (tenants, keys) run by the CLI as the migration owner.
//! - [`migrate`] and [`roles`]: schema migrations with one history per schema, and the role script.
//! - [`embedded`]: the launcher for a private PostgreSQL cluster (`tessera up` and the test harness).
//! - [`config`]: typed, layered configuration.

pub mod admin;
pub mod apikey;
pub mod bootstrap;
pub mod config;
pub mod db;
pub mod embedded;
pub mod input;
pub mod migrate;
pub mod module;
pub mod openapi;
pub mod problem;
pub mod roles;
pub mod tenant;
pub mod token;

pub use module::{
    ChangeView, Effect, EffectTx, Event, EventRule, HandlerError, Module, RowText, Subscription,
};
pub use problem::ApiError;
pub use tenant::TenantId;
