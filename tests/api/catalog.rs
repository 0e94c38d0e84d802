//! The tenancy rules, read back from the catalog so that no future module can forget one: every table in a
//! tenant-scoped schema has `tenant_id` leading its primary key and every foreign key, ENABLE + FORCE row
//! level security and a policy on `core.current_tenant_id()`; no runtime role can bypass RLS.

use crate::support::{TestApp, cluster, connect};

/// Schemas whose tables are tenant-scoped: `core`, `events` and every module's.
fn tenant_schemas() -> Vec<String> {
    let mut schemas = vec!["core".to_owned(), "events".to_owned()];
    schemas.extend(crate::support::modules().iter().map(|m| m.name().to_owned()));
    schemas
}

/// Registry tables that are deliberately not tenant-scoped: runtime roles have no rights on them.
const REGISTRIES: &[&str] = &[
    "core.tenants",
    "core.users",
    "core.token_keys",
    "core.sql_sessions",
    "events.cdc_slots",
    "events.cdc_keys",
    "events.subscribers",
    "events.dead_letters",
];

/// Tables of the platform (not of a module) that every module's role uses in its own transactions, under
/// the same tenant policy as a module's tables (checked above): the gateway's idempotency keys.
const PLATFORM_TABLES: &[&str] = &["core.idempotency_keys"];

/// The name of each table's policy for the SQL endpoint's sessions (the reporting role).
const REPORTING_POLICY: &str = "reporting_session";

/// Policies that are not the tenant's own: the dispatcher (tessera_events, which no runtime role can
/// become) feeds every tenant's events to subscribers and prunes the log. Each must apply to that role only.
const SYSTEM_POLICIES: &[&str] =
    &["events.log_chunks dispatcher_reads", "events.log_chunks dispatcher_prunes"];

#[tokio::test]
async fn every_tenant_table_leads_with_tenant_id_and_forces_row_level_security() {
    let app = TestApp::spawn().await;
    let admin = connect(&cluster().superuser, &app.db.name).await;
    let rows = admin
        .query(
            "select n.nspname || '.' || c.relname, c.relrowsecurity, c.relforcerowsecurity,
                    exists (select 1 from pg_attribute a where a.attrelid = c.oid and a.attname = 'tenant_id'
                            and not a.attisdropped and a.attnotnull),
                    (select a.attname from pg_constraint k
                       join pg_attribute a on a.attrelid = k.conrelid and a.attnum = k.conkey[1]
                      where k.conrelid = c.oid and k.contype = 'p')::text,
                    coalesce((select array_agg(pg_get_expr(p.polqual, p.polrelid)) from pg_policy p where p.polrelid = c.oid
                              and n.nspname || '.' || c.relname || ' ' || p.polname <> all($2)
                              and p.polname <> 'reporting_session'),
                             '{}')::text[],
                    coalesce((select array_agg(pg_get_expr(p.polwithcheck, p.polrelid)) from pg_policy p where p.polrelid = c.oid
                              and p.polwithcheck is not null), '{}')::text[]
               from pg_class c join pg_namespace n on n.oid = c.relnamespace
              where n.nspname = any($1) and c.relkind in ('r', 'p')
              order by 1",
            &[&tenant_schemas(), &SYSTEM_POLICIES],
        )
        .await
        .expect("catalog");
    assert!(rows.len() >= 5, "expected the core and crm tables, got {}", rows.len());
    let mut problems = Vec::new();
    for row in &rows {
        let table: String = row.get(0);
        if REGISTRIES.contains(&table.as_str()) {
            continue;
        }
        let (rls, forced, has_tenant): (bool, bool, bool) = (row.get(1), row.get(2), row.get(3));
        let pk_first: Option<String> = row.get(4);
        let using: Vec<String> = row.get(5);
        let checks: Vec<String> = row.get(6);
        if !has_tenant {
            problems.push(format!("{table}: no `tenant_id uuid not null` column"));
        }
        if pk_first.as_deref() != Some("tenant_id") {
            problems.push(format!("{table}: primary key does not lead with tenant_id ({pk_first:?})"));
        }
        if !rls || !forced {
            problems.push(format!("{table}: row level security enabled={rls} forced={forced}"));
        }
        let scoped = |e: &String| e.contains("tenant_id = ( SELECT core.current_tenant_id()");
        if using.is_empty() || !using.iter().all(scoped) {
            problems.push(format!(
                "{table}: policies must compare tenant_id with (select core.current_tenant_id()): {using:?}"
            ));
        }
        if checks.is_empty() || !checks.iter().all(scoped) {
            problems.push(format!("{table}: policies must check written rows the same way: {checks:?}"));
        }
    }

    // The reporting role's policies read only, for that role alone, through the session binding; every table
    // that role can read has one.
    let reporting = admin
        .query(
            "select n.nspname || '.' || c.relname, p.polcmd::text,
                    array(select r.rolname::text from pg_roles r where r.oid = any(p.polroles)),
                    pg_get_expr(p.polqual, p.polrelid), p.polpermissive
               from pg_class c join pg_namespace n on n.oid = c.relnamespace
               left join pg_policy p on p.polrelid = c.oid and p.polname = $2
              where n.nspname = any($1) and c.relkind in ('r', 'p')
                and (p.polname is not null or has_table_privilege('tessera_reporting', c.oid, 'select'))",
            &[&tenant_schemas(), &REPORTING_POLICY],
        )
        .await
        .expect("reporting policies");
    assert!(reporting.len() >= 10, "the module tables have reporting policies ({})", reporting.len());
    for row in &reporting {
        let (table, command, roles, using): (String, Option<String>, Vec<String>, Option<String>) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        if REGISTRIES.contains(&table.as_str()) {
            continue;
        }
        // The binding, as pg_get_expr prints it (whitespace folded).
        let binding = "(tenant_id = ( SELECT s.tenant_id FROM core.sql_sessions s WHERE ((s.pid = pg_backend_pid()) \
                       AND (s.server_started = pg_postmaster_start_time()) AND (s.token_hash = \
                       sha256(convert_to(current_setting('tessera.sql_session'::text, true), 'UTF8'::name))))))";
        let folded = using.as_deref().map(|u| u.split_whitespace().collect::<Vec<_>>().join(" "));
        let right = command.as_deref() == Some("r")
            && roles == ["tessera_reporting"]
            && folded.as_deref() == Some(binding);
        if !right {
            problems.push(format!(
                "{table}: the reporting policy must be `for select to tessera_reporting using {binding}`, \
                 found {command:?} {roles:?} {using:?}"
            ));
        }
    }

    // No other policy applies to the SQL endpoint's login (tessera_sql, through tessera_reporting) on what it
    // reads: the tenant policy is for Tessera's own
    // roles, so a reporting statement is filtered by its binding alone (one index probe by primary key, not
    // two OR'ed into a bitmap).
    let others = admin
        .query(
            "select n.nspname || '.' || c.relname || ' ' || p.polname,
                    array(select case when r = 0 then 'public' else r::regrole::text end from unnest(p.polroles) r)
               from pg_policy p join pg_class c on c.oid = p.polrelid join pg_namespace n on n.oid = c.relnamespace
              where n.nspname = any($1) and p.polname <> $2 and n.nspname || '.' || c.relname <> all($3)
                and has_table_privilege('tessera_sql', c.oid, 'select')
                and exists (select 1 from unnest(p.polroles) r
                             where r = 0 or pg_has_role('tessera_sql', r, 'USAGE'))",
            &[&tenant_schemas(), &REPORTING_POLICY, &REGISTRIES],
        )
        .await
        .expect("policies of the reporting role");
    for row in &others {
        let (policy, roles): (String, Vec<String>) = (row.get(0), row.get(1));
        problems.push(format!("{policy}: applies to the reporting role too ({roles:?})"));
    }

    // The system policies exist and apply to the dispatcher's role alone, for reading and pruning only.
    let system = admin
        .query(
            "select n.nspname || '.' || c.relname || ' ' || p.polname, p.polcmd::text,
                    array(select r.rolname::text from pg_roles r where r.oid = any(p.polroles))
               from pg_policy p join pg_class c on c.oid = p.polrelid join pg_namespace n on n.oid = c.relnamespace
              where n.nspname || '.' || c.relname || ' ' || p.polname = any($1)",
            &[&SYSTEM_POLICIES],
        )
        .await
        .expect("system policies");
    assert_eq!(system.len(), SYSTEM_POLICIES.len(), "every system policy exists");
    for row in &system {
        let (name, command, roles): (String, String, Vec<String>) = (row.get(0), row.get(1), row.get(2));
        if roles != ["tessera_events"] || !["r", "d"].contains(&command.as_str()) {
            problems.push(format!("{name}: applies to {roles:?} for command {command}"));
        }
    }

    // Every foreign key between tenant-scoped tables carries tenant_id first.
    let fks = admin
        .query(
            "select k.conname::text, (select a.attname from pg_attribute a where a.attrelid = k.conrelid
                                       and a.attnum = k.conkey[1])::text,
                    n.nspname || '.' || c.relname,
                    (select a.attname from pg_attribute a where a.attrelid = k.confrelid
                      and a.attnum = k.confkey[1])::text,
                    k.confrelid::regclass::text
               from pg_constraint k join pg_class c on c.oid = k.conrelid join pg_namespace n on n.oid = c.relnamespace
              where k.contype = 'f' and n.nspname = any($1)",
            &[&tenant_schemas()],
        )
        .await
        .expect("foreign keys");
    for fk in &fks {
        let (name, first, table, referenced_first, referenced): (String, String, String, String, String) =
            (fk.get(0), fk.get(1), fk.get(2), fk.get(3), fk.get(4));
        if REGISTRIES.contains(&table.as_str()) && REGISTRIES.contains(&referenced.as_str()) {
            continue; // between registries: no tenant involved
        }
        // A reference into a registry (not tenant-scoped: core.tenants, core.users) is by its id alone.
        let into_registry = REGISTRIES.contains(&referenced.as_str()) && referenced_first == "id";
        if first != "tenant_id" && !into_registry {
            problems.push(format!("{table}: foreign key {name} does not lead with tenant_id"));
        }
        if referenced_first != "tenant_id" && !into_registry {
            problems
                .push(format!("{table}: foreign key {name} points at {referenced} without its tenant_id"));
        }
    }

    // Views must run with the caller's rights (and so its row policies); materialized views cannot have
    // policies at all.
    let views = admin
        .query(
            "select n.nspname || '.' || c.relname, c.relkind::text, coalesce(c.reloptions, '{}')::text[]
               from pg_class c join pg_namespace n on n.oid = c.relnamespace
              where n.nspname = any($1) and c.relkind in ('v', 'm')",
            &[&tenant_schemas()],
        )
        .await
        .expect("views");
    for v in &views {
        let (view, kind, options): (String, String, Vec<String>) = (v.get(0), v.get(1), v.get(2));
        if kind == "m" {
            problems.push(format!("{view}: a materialized view cannot be tenant-scoped"));
        } else if !options.iter().any(|o| o == "security_invoker=true" || o == "security_invoker=on") {
            problems.push(format!("{view}: views in tenant schemas need security_invoker = true"));
        }
    }
    assert!(problems.is_empty(), "tenancy rules broken:\n{}", problems.join("\n"));
}

#[tokio::test]
async fn every_module_table_is_published_to_the_cdc_worker() {
    let app = TestApp::spawn().await;
    let admin = connect(&cluster().superuser, &app.db.name).await;
    let modules: Vec<String> = crate::support::modules().iter().map(|m| m.name().to_owned()).collect();
    let rows = admin
        .query(
            "select n.nspname || '.' || c.relname
               from pg_class c join pg_namespace n on n.oid = c.relnamespace
              where n.nspname = any($1) and c.relkind in ('r', 'p')
                and not exists (select 1 from pg_publication_tables p
                                 where p.pubname = 'tessera_cdc' and p.schemaname = n.nspname
                                   and p.tablename = c.relname)",
            &[&modules],
        )
        .await
        .expect("publication");
    let missing: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert!(missing.is_empty(), "module tables missing from the tessera_cdc publication: {missing:?}");
    let published: i64 = admin
        .query_one("select count(*) from pg_publication_tables where pubname = 'tessera_cdc'", &[])
        .await
        .expect("count")
        .get(0);
    assert!(published >= 3, "the CRM's tables are published");
}

#[tokio::test]
async fn no_runtime_role_can_bypass_row_level_security() {
    let app = TestApp::spawn().await;
    let admin = connect(&cluster().superuser, &app.db.name).await;
    let mut runtime: Vec<String> =
        ["tessera_app", "tessera_runtime", "tessera_reporting", "tessera_event_feed"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    runtime.extend(crate::support::modules().iter().map(|m| format!("tessera_{}", m.name())));
    // Each runtime role, and every role it can become through membership.
    let rows = admin
        .query(
            "with recursive reach(root, role) as (
                 select r.rolname::text, r.oid from pg_roles r where r.rolname = any($1)
                 union
                 select reach.root, m.roleid from reach join pg_auth_members m on m.member = reach.role
             )
             select reach.root, r.rolname::text, r.rolsuper, r.rolbypassrls,
                    exists (select 1 from pg_class c join pg_namespace n on n.oid = c.relnamespace
                             where c.relowner = r.oid and n.nspname = any($2))
               from reach join pg_roles r on r.oid = reach.role",
            &[&runtime, &tenant_schemas()],
        )
        .await
        .expect("roles");
    let roots: std::collections::BTreeSet<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
    assert_eq!(roots.len(), runtime.len(), "every runtime role exists: {roots:?}");
    let mut problems = Vec::new();
    for row in &rows {
        let (root, role, sup, bypass, owns): (String, String, bool, bool, bool) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        if sup || bypass || owns {
            problems.push(format!(
                "{root} can become {role}: superuser={sup} bypassrls={bypass} owns_tables={owns}"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // Nor can any create objects anywhere: trigger functions without a SET search_path rely on it (a role
    // that could create a schema or an operator could put its own ahead of pg_catalog).
    let creators = admin
        .query(
            "select r.rolname::text, n.nspname::text from pg_roles r cross join pg_namespace n
              where r.rolname = any($1) and has_schema_privilege(r.oid, n.oid, 'create')
             union all
             select r.rolname::text, '(database)' from pg_roles r
              where r.rolname = any($1) and has_database_privilege(r.oid, current_database(), 'create')",
            &[&runtime],
        )
        .await
        .expect("create rights");
    let creators: Vec<(String, String)> = creators.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert!(creators.is_empty(), "runtime roles that can create: {creators:?}");

    // And the gateway refuses to start as a privileged role.
    let owner_pool =
        tessera_core::db::Database::new(cluster().endpoint.pg_config("tessera_owner", &app.db.name), 1)
            .expect("pool");
    assert!(owner_pool.ensure_unprivileged().await.is_err(), "serving as the owner must be refused");
    let super_pool =
        tessera_core::db::Database::new(cluster().endpoint.pg_config(&cluster().superuser, &app.db.name), 1)
            .expect("pool");
    assert!(super_pool.ensure_unprivileged().await.is_err(), "serving as a superuser must be refused");
}

#[tokio::test]
async fn module_roles_have_no_rights_outside_their_schema() {
    let app = TestApp::spawn().await;
    let admin = connect(&cluster().superuser, &app.db.name).await;
    let rows = admin
        .query(
            "select n.nspname::text || '.' || c.relname::text, has_table_privilege('tessera_crm', c.oid, 'select, insert, update, delete')
               from pg_class c join pg_namespace n on n.oid = c.relnamespace
              where c.relkind in ('r', 'p') and n.nspname not in ('pg_catalog', 'information_schema', 'crm')
                and n.nspname not like 'pg_toast%'",
            &[],
        )
        .await
        .expect("privileges");
    let leaks: Vec<String> = rows
        .iter()
        .filter(|r| r.get::<_, bool>(1))
        .map(|r| r.get::<_, String>(0))
        .filter(|table| !PLATFORM_TABLES.contains(&table.as_str()))
        .collect();
    assert!(leaks.is_empty(), "tessera_crm reaches tables outside crm: {leaks:?}");
}

/// The key of event ids: only the event system reads it (whoever holds it can recover the WAL position from
/// an event id, and with it how much the other tenants wrote).
#[tokio::test]
async fn only_the_event_system_reads_the_event_id_key() {
    let app = TestApp::spawn().await;
    let admin = connect(&cluster().superuser, &app.db.name).await;
    let rows = admin
        .query(
            "select r.rolname::text from pg_roles r
              where r.rolname like 'tessera\\_%' and r.rolname not in ('tessera_owner', 'tessera_events')
                and (has_table_privilege(r.oid, 'events.cdc_keys', 'select, insert, update, delete')
                     or (pg_has_role(r.oid, 'tessera_events', 'usage')
                         and r.rolname <> 'tessera_replication'))",
            &[],
        )
        .await
        .expect("privileges");
    let readers: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert!(readers.is_empty(), "roles that read events.cdc_keys: {readers:?}");
    let events_reads: bool = admin
        .query_one("select has_table_privilege('tessera_events', 'events.cdc_keys', 'select')", &[])
        .await
        .expect("privilege")
        .get(0);
    assert!(events_reads, "the event system reads its key");
}
