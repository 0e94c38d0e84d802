//! The database roles Tessera runs with, and the script that creates them.
//!
//! | role | login | what it is for |
//! |---|---|---|
//! | `tessera_owner` | yes | owns every schema and table, runs migrations and operator commands |
//! | `tessera_auth` | no | BYPASSRLS; owns only the SECURITY DEFINER functions that look up API keys |
//! | `tessera_runtime` | no | what every module role shares: the tenant and authentication functions |
//! | `tessera_<module>` | no | one per module: rights on that module's schema only |
//! | `tessera_app` | yes | the gateway's login: NOINHERIT, no rights of its own, may `SET ROLE` to a module role |
//! | `tessera_reporting` | no | read-only access for the SQL endpoint |
//! | `tessera_sql` | yes | the SQL endpoint's upstream login: a member of `tessera_reporting` only, read-only by default, each session bound to a tenant by its row in `core.sql_sessions` (core V13) |
//! | `tessera_event_feed` | no | the gateway's role for `GET /v1/events`: reads the bound tenant's events |
//! | `tessera_events` | no | the event system: writes the log, feeds it to subscribers, keeps their cursors |
//! | `tessera_replication` | yes | REPLICATION; the CDC worker's and dispatcher's login (NOINHERIT): it switches to `tessera_events`, and to a module's role to run that module's event handlers |
//!
//! Roles are cluster-wide and created by a superuser: `tessera up` applies the script itself; against a
//! server a DBA manages, `tessera roles --print` prints it for review.

pub const OWNER: &str = "tessera_owner";
pub const AUTH: &str = "tessera_auth";
pub const RUNTIME: &str = "tessera_runtime";
pub const APP: &str = "tessera_app";
pub const REPORTING: &str = "tessera_reporting";
pub const SQL: &str = "tessera_sql";
pub const REPLICATION: &str = "tessera_replication";
pub const EVENTS: &str = "tessera_events";
pub const EVENT_FEED: &str = "tessera_event_feed";

/// The role a module's requests run as.
pub fn module_role(module: &str) -> String {
    format!("tessera_{module}")
}

/// Quotes an SQL identifier (doubling inner quotes), for the few places an identifier must be spliced in.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes an SQL string literal (doubling inner quotes).
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// The idempotent script that creates and configures every role for the given modules, then grants the
/// current database's rights.
pub fn script(modules: &[&str]) -> String {
    let mut out = String::from(
        "-- Tessera roles. Run as a superuser, connected to the Tessera database. Safe to run again.\n\
         -- Afterwards give the login roles passwords, for example:\n\
         --   alter role tessera_owner password '…'; alter role tessera_app password '…';\n\
         --   alter role tessera_replication password '…';\n\n",
    );
    out.push_str(&cluster_script(modules));
    out.push_str(&database_script());
    out
}

/// The cluster-wide part of [`script`]: roles, their attributes and memberships.
pub fn cluster_script(modules: &[&str]) -> String {
    let module_roles: Vec<String> = modules.iter().map(|m| module_role(m)).collect();
    let mut roles: Vec<(String, &str)> = vec![
        (OWNER.into(), "login nosuperuser nocreatedb nocreaterole noreplication nobypassrls inherit"),
        (AUTH.into(), "nologin nosuperuser nocreatedb nocreaterole noreplication bypassrls"),
        (RUNTIME.into(), "nologin nosuperuser nocreatedb nocreaterole noreplication nobypassrls"),
    ];
    for role in &module_roles {
        roles.push((
            role.clone(),
            "nologin nosuperuser nocreatedb nocreaterole noreplication nobypassrls inherit",
        ));
    }
    roles.push((
        EVENT_FEED.into(),
        "nologin nosuperuser nocreatedb nocreaterole noreplication nobypassrls inherit",
    ));
    roles.push((APP.into(), "login nosuperuser nocreatedb nocreaterole noreplication nobypassrls noinherit"));
    roles.push((REPORTING.into(), "nologin nosuperuser nocreatedb nocreaterole noreplication nobypassrls"));
    roles.push((SQL.into(), "login nosuperuser nocreatedb nocreaterole noreplication nobypassrls inherit"));
    roles.push((
        EVENTS.into(),
        "nologin nosuperuser nocreatedb nocreaterole noreplication nobypassrls inherit",
    ));
    roles.push((
        REPLICATION.into(),
        "login nosuperuser nocreatedb nocreaterole replication nobypassrls noinherit",
    ));

    let mut out = String::new();
    for (role, attributes) in &roles {
        out.push_str(&format!(
            "do $$ begin\n  if not exists (select from pg_roles where rolname = {lit}) then create role {id}; end if;\nend $$;\n\
             alter role {id} {attributes};\n",
            lit = quote_literal(role),
            id = quote_ident(role),
        ));
    }
    out.push_str(&format!("grant {} to {};\n", quote_ident(RUNTIME), quote_ident(EVENTS)));
    out.push_str(&format!("grant {} to {};\n", quote_ident(EVENTS), quote_ident(REPLICATION)));
    out.push_str(&format!("grant {} to {};\n", quote_ident(RUNTIME), quote_ident(EVENT_FEED)));
    out.push_str(&format!("grant {} to {};\n", quote_ident(EVENT_FEED), quote_ident(APP)));
    out.push_str(&format!("grant {} to {};\n", quote_ident(REPORTING), quote_ident(SQL)));
    // Tenants' own SQL runs as tessera_sql: read-only, and bounded even if the SQL endpoint's own
    // limits were bypassed.
    out.push_str(&format!(
        "alter role {sql} set default_transaction_read_only = on;\n\
         alter role {sql} set statement_timeout = '5min';\n\
         alter role {sql} set idle_in_transaction_session_timeout = '1min';\n\
         alter role {sql} set temp_file_limit = '1GB';\n",
        sql = quote_ident(SQL)
    ));
    out.push_str("\n-- The owner hands the key-lookup functions to tessera_auth.\n");
    out.push_str(&format!("grant {} to {};\n", quote_ident(AUTH), quote_ident(OWNER)));
    for role in &module_roles {
        out.push_str(&format!("grant {} to {};\n", quote_ident(RUNTIME), quote_ident(role)));
        out.push_str(&format!("grant {} to {};\n", quote_ident(role), quote_ident(APP)));
        // The dispatcher runs a module's event handlers as that module.
        out.push_str(&format!("grant {} to {};\n", quote_ident(role), quote_ident(REPLICATION)));
    }
    out
}

/// The per-database part of [`script`]: rights on the database it runs in, and the built-in functions and
/// views that everyone may use by default but a tenant's own SQL (the SQL endpoint, as `tessera_sql`) must
/// not: large objects (shared by every session of one role, and writable even in read-only transactions),
/// other sessions' query text (`pg_stat_activity` and the per-backend `pg_stat_get_backend_*` functions),
/// signalling other backends, and advisory locks (the platform's own locks).
pub fn database_script() -> String {
    format!(
        "do $$ begin\n  execute format('grant connect, create, temporary on database %I to {owner}', current_database());\n  \
         execute format('grant connect on database %I to {app}, {replication}, {sql}', current_database());\n  \
         execute format('revoke temporary on database %I from public', current_database());\nend $$;\n\
         do $$\ndeclare f regprocedure;\nbegin\n  \
         for f in select p.oid::regprocedure from pg_catalog.pg_proc p\n            \
         where p.pronamespace = 'pg_catalog'::regnamespace\n              \
         and (p.proname like 'lo\\_%' or p.proname in ('loread', 'lowrite')\n                   \
         or p.proname like 'pg\\_stat\\_get\\_backend\\_%'\n                   \
         or p.proname in ('pg_stat_get_activity', 'pg_cancel_backend', 'pg_terminate_backend'))\n  loop\n    \
         execute format('revoke execute on function %s from public', f);\n  end loop;\n  \
         for f in select p.oid::regprocedure from pg_catalog.pg_proc p\n            \
         where p.pronamespace = 'pg_catalog'::regnamespace and p.proname like 'pg\\_%advisory%'\n  loop\n    \
         execute format('revoke execute on function %s from public', f);\n    \
         execute format('grant execute on function %s to {owner}, {replication}', f);\n  end loop;\nend $$;\n\
         revoke select on pg_catalog.pg_stat_activity from public;\n\
         grant select on pg_catalog.pg_stat_activity to {owner};\n\
         grant execute on function pg_catalog.pg_stat_get_activity(integer) to {owner};\n",
        owner = quote_ident(OWNER),
        app = quote_ident(APP),
        replication = quote_ident(REPLICATION),
        sql = quote_ident(SQL),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(quote_ident("crm"), "\"crm\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn the_script_gives_each_module_a_role_the_app_can_switch_to() {
        let sql = script(&["crm", "hr"]);
        assert!(sql.contains("grant \"tessera_crm\" to \"tessera_app\""));
        assert!(sql.contains("grant \"tessera_runtime\" to \"tessera_hr\""));
        assert!(sql.contains("alter role \"tessera_app\" login nosuperuser nocreatedb nocreaterole noreplication nobypassrls noinherit"));
    }
}
