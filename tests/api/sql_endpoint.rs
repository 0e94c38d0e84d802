//! The SQL endpoint: tenants' own SQL over the PostgreSQL protocol, each tenant seeing only its rows.
//!
//! Every test runs a real endpoint on a loopback port in front of the test database, and talks to it over
//! TCP with tokio-postgres, raw protocol bytes, psql, pgbench and psycopg.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use tessera_gateway::sql::{SqlConfig, SqlEndpoint, UpstreamConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::support::{TestApp, cluster};

/// Starts an endpoint for the app's database; `configure` adjusts the defaults.
async fn endpoint(app: &TestApp, configure: impl FnOnce(&mut SqlConfig)) -> SocketAddr {
    endpoint_with_tls(app, configure, None).await
}

async fn endpoint_with_tls(
    app: &TestApp,
    configure: impl FnOnce(&mut SqlConfig),
    tls: Option<tessera_gateway::sql::TlsAcceptor>,
) -> SocketAddr {
    let mut config = SqlConfig::new("127.0.0.1:0".parse().expect("addr"));
    configure(&mut config);
    let upstream = UpstreamConfig::from_pg_config(&cluster().endpoint.pg_config("tessera_sql", &app.db.name))
        .expect("upstream");
    let endpoint = SqlEndpoint::bind(config, app.pool.clone(), upstream, tls).await.expect("bind");
    let addr = endpoint.local_addr().expect("addr");
    tokio::spawn(endpoint.run_until_stopped(std::future::pending()));
    addr
}

async fn try_connect(addr: SocketAddr, user: &str, password: &str) -> Result<Client, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config.host("127.0.0.1").port(addr.port()).user(user).password(password).dbname("tessera");
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

async fn connect(addr: SocketAddr, user: &str, password: &str) -> Client {
    try_connect(addr, user, password).await.expect("connect to the SQL endpoint")
}

async fn count(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
}

fn code(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_owned()).unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

/// A session straight to Postgres as tessera_sql, bound the way the endpoint binds its own: with a binding
/// minted for this server session.
async fn direct_session(app: &TestApp, tenant: &str, key: &str) -> (Client, String) {
    let direct = app.db.connect_as("tessera_sql").await;
    let pid: i32 = direct.query_one("select pg_backend_pid()", &[]).await.expect("pid").get(0);
    let key = tessera_core::apikey::parse(key).expect("key");
    let started: String = direct
        .query_one(
            "select to_char(pg_postmaster_start_time() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
            &[],
        )
        .await
        .expect("server start")
        .get(0);
    let (_, token) =
        app.pool.bind_sql_session(tenant, &key, pid, &started).await.expect("check").expect("a binding");
    direct.execute("select set_config('tessera.sql_session', $1, false)", &[&token]).await.expect("bind");
    (direct, token)
}

/// Two tenants with CRM data, each with a reporting key.
struct World {
    app: TestApp,
    addr: SocketAddr,
    report_a: String,
    report_b: String,
    key_a: String,
}

async fn world_with(configure: impl FnOnce(&mut SqlConfig)) -> World {
    let mut app = TestApp::spawn().await;
    let (tenant_a, key_a) = app.tenant("acme").await;
    let (tenant_b, key_b) = app.tenant("globex").await;
    for (key, n) in [(&key_a, 2), (&key_b, 3)] {
        let company = app.create("companies", key, json!({"name": format!("Company {n}")})).await;
        for i in 0..n {
            app.create(
                "deals",
                key,
                json!({"title": format!("Deal {i}"), "company_id": company, "amount": "100.50"}),
            )
            .await;
        }
    }
    let report_a = app.key(tenant_a, &["reporting:read"]).await;
    let report_b = app.key(tenant_b, &["reporting:read"]).await;
    let addr = endpoint(&app, configure).await;
    World { app, addr, report_a, report_b, key_a }
}

async fn world() -> World {
    world_with(|_| {}).await
}

/// Revokes acme's reporting key.
async fn revoke_report_a(w: &mut World) {
    let tenant: uuid::Uuid = {
        let a = connect(w.addr, "acme", &w.report_a).await;
        a.query_one("select tenant_id from crm.deals limit 1", &[]).await.expect("id").get(0)
    };
    tessera_core::admin::revoke_api_key(
        &mut w.app.owner,
        tessera_core::tenant::TenantId::from_uuid(tenant),
        &w.report_a[4..16],
    )
    .await
    .expect("revoke");
}

#[tokio::test]
async fn each_tenant_sees_only_its_own_rows_through_tables_and_reporting_views() {
    let mut w = world().await;
    let a = connect(w.addr, "acme", &w.report_a).await;
    let b = connect(w.addr, "globex", &w.report_b).await;
    assert_eq!(count(&a, "select count(*) from crm.deals").await, 2);
    assert_eq!(count(&b, "select count(*) from crm.deals").await, 3);
    assert_eq!(count(&a, "select count(*) from reporting.crm_deals").await, 2);
    assert_eq!(count(&b, "select count(*) from reporting.crm_companies").await, 1);
    assert_eq!(w.app.count_all("crm.deals").await, 5, "both tenants' rows exist");
    // A join across modules (CRM deals and HR commissions through the reporting views).
    let joined = count(
        &a,
        "select count(*) from reporting.crm_deals d left join reporting.hr_commissions c on c.deal_id = d.id \
         left join reporting.invoicing_invoices i on i.deal_id = d.id",
    )
    .await;
    assert_eq!(joined, 2);
    // The login stamped the key's last use.
    let keys = tessera_core::admin::list_api_keys(
        &mut w.app.owner,
        tessera_core::tenant::TenantId::from_uuid(
            a.query_one("select tenant_id from crm.deals limit 1", &[]).await.expect("id").get(0),
        ),
    )
    .await
    .expect("keys");
    assert!(keys.iter().any(|k| k.prefix == w.report_a[4..16] && k.last_used_at.is_some()));
    // The tenant id may also name the tenant.
    let tenant_a: String =
        a.query_one("select tenant_id::text from crm.deals limit 1", &[]).await.expect("id").get(0);
    let by_id = connect(w.addr, &tenant_a, &w.report_a).await;
    assert_eq!(count(&by_id, "select count(*) from crm.deals").await, 2);
}

#[tokio::test]
async fn wrong_credentials_are_refused_alike() {
    let mut w = world().await;
    let tenant_a: uuid::Uuid = {
        let a = connect(w.addr, "acme", &w.report_a).await;
        a.query_one("select tenant_id from crm.deals limit 1", &[]).await.expect("id").get(0)
    };
    let revoked = w.app.key(tessera_core::tenant::TenantId::from_uuid(tenant_a), &["reporting:read"]).await;
    tessera_core::admin::revoke_api_key(
        &mut w.app.owner,
        tessera_core::tenant::TenantId::from_uuid(tenant_a),
        &revoked[4..16],
    )
    .await
    .expect("revoke");
    let cases = [
        ("wrong key", "acme", "tsk_000000000000_000000000000000000000000000000000000000000000000".to_owned()),
        ("not a key", "acme", "hunter2".to_owned()),
        ("another tenant's key", "acme", w.report_b.clone()),
        ("revoked key", "acme", revoked),
        ("key without reporting:read", "acme", w.key_a.clone()),
    ];
    let mut messages = Vec::new();
    for (what, user, password) in &cases {
        let e =
            try_connect(w.addr, user, password).await.err().unwrap_or_else(|| panic!("{what} was let in"));
        assert_eq!(code(&e), "28P01", "{what}: {e}");
        messages.push(e.as_db_error().map(|d| d.message().to_owned()).unwrap_or_default());
    }
    assert!(messages.iter().all(|m| m == &messages[0]), "no hint of which part was wrong: {messages:?}");
    let unknown = try_connect(w.addr, "nosuch", &w.report_a).await.expect_err("unknown tenant refused");
    assert_eq!(code(&unknown), "28P01");
    assert_eq!(
        unknown.as_db_error().map(|d| d.message().to_owned()),
        Some("password authentication failed for user \"nosuch\"".to_owned())
    );
}

/// Every way a session could try to change the tenant it is bound to, through the endpoint: each is refused
/// with an error, and afterwards the other tenant's rows are still out of reach.
#[tokio::test]
async fn the_escape_list_through_the_endpoint() {
    let w = world().await;
    let a = connect(w.addr, "acme", &w.report_a).await;
    let b = connect(w.addr, "globex", &w.report_b).await;
    let token_b: String =
        b.query_one("select current_setting('tessera.sql_session')", &[]).await.expect("token").get(0);
    let tenant_b: String =
        b.query_one("select tenant_id::text from crm.deals limit 1", &[]).await.expect("tenant").get(0);
    let attempts = [
        format!("set tessera.sql_session = '{token_b}'"),
        format!("set tessera.tenant_id = '{tenant_b}'"),
        format!("select set_config('tessera.sql_session', '{token_b}', false)"),
        format!("select pg_catalog.set_config('tessera.tenant_id', '{tenant_b}', false)"),
        format!("do $$ begin perform set_config('tessera.sql_session', '{token_b}', false); end $$"),
        "reset tessera.sql_session".to_owned(),
        "reset all".to_owned(),
        format!("select 1; commit; set tessera.sql_session = '{token_b}'"),
        "begin".to_owned(),
        "set role tessera_app".to_owned(),
        "set session authorization tessera_owner".to_owned(),
        "set default_transaction_read_only = off".to_owned(),
        "explain analyze select * from crm.deals".to_owned(),
        "explain select * from crm.deals where title = 'Deal 0'".to_owned(),
        "select pg_stat_get_backend_activity(b) from pg_stat_get_backend_idset() b".to_owned(),
        "copy crm.deals from stdin".to_owned(),
        "select lo_from_bytea(0, 'x')".to_owned(),
        "select pg_advisory_lock(1)".to_owned(),
        "select query, usename from pg_stat_activity".to_owned(),
        "select query_to_xml('select 1', true, true, '')".to_owned(),
        "prepare p as select 1".to_owned(),
        "declare c cursor with hold for select 1".to_owned(),
        "create temp table t (a int)".to_owned(),
        "insert into crm.deals (title) values ('x')".to_owned(),
    ];
    for sql in &attempts {
        let e = a.batch_execute(sql).await.err().unwrap_or_else(|| panic!("{sql} was allowed"));
        assert!(["42501", "0A000"].contains(&code(&e).as_str()), "{sql}: {e}");
        // The session survives a refusal and is still bound to its own tenant.
        assert_eq!(count(&a, "select count(*) from crm.deals").await, 2, "after {sql}");
        assert_eq!(
            count(&a, &format!("select count(*) from crm.deals where tenant_id = '{tenant_b}'")).await,
            0
        );
    }
    // The extended protocol is checked the same way.
    let e = a.prepare("select set_config('tessera.sql_session', $1, false)").await.expect_err("refused");
    assert_eq!(code(&e), "42501");
    assert_eq!(count(&a, "select count(*) from crm.deals").await, 2);
    // And a refused Parse in the middle of a pipeline answers in order.
    let (ok, refused, after) = tokio::join!(
        a.query_one("select 1::int4", &[]),
        a.prepare("set tessera.sql_session = 'x'"),
        a.query_one("select 2::int4", &[])
    );
    assert_eq!(ok.expect("first").get::<_, i32>(0), 1);
    assert_eq!(code(&refused.expect_err("refused")), "42501");
    assert_eq!(after.expect("after").get::<_, i32>(0), 2);
    // Startup options are refused outright.
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(w.addr.port())
        .user("acme")
        .password(&w.report_a)
        .options(format!("-c tessera.sql_session={token_b}"));
    let e = config.connect(NoTls).await.err().expect("options refused");
    assert_eq!(code(&e), "42501");
}

/// The layers under the statement check hold on their own: a session of the endpoint's role, bound to
/// tenant A's binding, connected straight to Postgres (no endpoint, no statement check), tries every escape.
#[tokio::test]
async fn the_escape_list_against_the_database_itself() {
    let w = world().await;
    // Tenant B's token as its endpoint session holds it (what an eavesdropper could at best have read).
    let b = connect(w.addr, "globex", &w.report_b).await;
    let token_b: String =
        b.query_one("select current_setting('tessera.sql_session')", &[]).await.expect("token b").get(0);
    let tenant_b: String =
        b.query_one("select tenant_id::text from crm.deals limit 1", &[]).await.expect("tenant b").get(0);
    let (direct, token_a) = direct_session(&w.app, "acme", &w.report_a).await;
    assert_eq!(count(&direct, "select count(*) from crm.deals").await, 2);
    // B's genuine token, made for another server session, and made-up ones.
    let forged = "0".repeat(32);
    for token in [&token_b, &forged, &"x".to_owned()] {
        direct.execute("select set_config('tessera.sql_session', $1, false)", &[token]).await.expect("set");
        assert_eq!(count(&direct, "select count(*) from crm.deals").await, 0, "{token} binds nothing");
    }
    direct.execute("select set_config('tessera.sql_session', $1, false)", &[&token_a]).await.expect("rebind");
    // The session cannot write the bindings, and sees no other session's.
    for sql in [
        format!("update core.sql_sessions set tenant_id = '{tenant_b}'"),
        "delete from core.sql_sessions".to_owned(),
        format!(
            "begin read write; insert into core.sql_sessions (pid, token, tenant_id, key_prefix) values (pg_backend_pid(), '{forged}', '{tenant_b}', 'x')"
        ),
    ] {
        assert!(direct.batch_execute(&sql).await.is_err(), "{sql} succeeded");
        let _ = direct.batch_execute("rollback").await;
    }
    assert_eq!(count(&direct, "select count(*) from core.sql_sessions").await, 1, "only its own row");
    // Which holds the token's hash, not the token.
    let hash: String = direct
        .query_one("select encode(token_hash, 'hex') from core.sql_sessions", &[])
        .await
        .expect("hash")
        .get(0);
    direct.execute("select set_config('tessera.sql_session', $1, false)", &[&hash]).await.expect("set");
    assert_eq!(count(&direct, "select count(*) from crm.deals").await, 0, "the hash binds nothing");
    direct.execute("select set_config('tessera.sql_session', $1, false)", &[&token_a]).await.expect("rebind");
    assert_eq!(count(&direct, "select count(*) from crm.deals").await, 2);
    let escapes = [
        format!("set tessera.tenant_id = '{tenant_b}'"),
        format!("select set_config('tessera.tenant_id', '{tenant_b}', false)"),
        format!("set tessera.sql_session = '{token_b}'"),
        format!("do $$ begin perform set_config('tessera.tenant_id', '{tenant_b}', false); end $$"),
        format!("select 1; commit; set tessera.tenant_id = '{tenant_b}'"),
        "set role tessera_reporting".to_owned(),
        "reset all".to_owned(),
    ];
    for sql in &escapes {
        let _ = direct.batch_execute(sql).await;
        assert_eq!(
            count(&direct, &format!("select count(*) from crm.deals where tenant_id = '{tenant_b}'")).await,
            0,
            "{sql} reached the other tenant"
        );
        let _ = direct.batch_execute("reset role").await;
        direct
            .execute("select set_config('tessera.sql_session', $1, false)", &[&token_a])
            .await
            .expect("rebind");
    }
    // A bind parameter does not help either.
    direct.execute("select set_config('tessera.tenant_id', $1, false)", &[&tenant_b]).await.expect("set");
    assert_eq!(
        count(&direct, &format!("select count(*) from crm.deals where tenant_id = '{tenant_b}'")).await,
        0
    );
    // Startup options.
    let mut config = cluster().endpoint.pg_config("tessera_sql", &w.app.db.name);
    config.options(format!("-c tessera.tenant_id={tenant_b} -c tessera.sql_session={token_b}"));
    let with_options = tessera_core::bootstrap::connect(&config).await.expect("connect with options");
    assert_eq!(count(&with_options, "select count(*) from crm.deals").await, 0);
    // Read-only, no writes, no temporary tables, no large objects, no other sessions' query text, no
    // advisory locks, no statistics of other tenants' values.
    for (sql, expected) in [
        ("insert into crm.companies (name) values ('x')", "25006"),
        ("begin read write; insert into crm.companies (name) values ('x')", "42501"),
        ("create temp table t (a int)", "25006"),
        ("begin read write; create temp table t (a int)", "42501"),
        ("select lo_from_bytea(0, 'secret')", "42501"),
        ("select lo_create(0)", "42501"),
        ("select query from pg_stat_activity", "42501"),
        ("select pg_stat_get_backend_activity(b) from pg_stat_get_backend_idset() b", "42501"),
        ("select pg_advisory_lock(1)", "42501"),
        ("select pg_terminate_backend(pg_backend_pid())", "42501"),
    ] {
        let e = direct.batch_execute(sql).await.err().unwrap_or_else(|| panic!("{sql} succeeded"));
        assert_eq!(code(&e), expected, "{sql}: {e}");
        let _ = direct.batch_execute("rollback").await;
    }
    assert_eq!(
        count(&direct, "select count(*) from pg_stats where schemaname in ('crm', 'invoicing', 'hr')").await,
        0
    );
    // EXPLAIN ANALYZE (refused by the endpoint) would only show the rows the binding lets through here.
    assert_eq!(count(&direct, "select count(*) from crm.deals").await, 2);
}

#[tokio::test]
async fn the_reporting_role_can_read_only_protected_relations() {
    let app = TestApp::spawn().await;
    let admin = crate::support::connect(&cluster().superuser, &app.db.name).await;
    // Every relation tessera_sql can select from is a table with forced RLS and a policy, or a
    // security_invoker view; no partition child escapes its parent's policy.
    let leaks: Vec<String> = admin
        .query(
            "select c.oid::regclass::text || ' (' || c.relkind::text || ')' from pg_class c
              join pg_namespace n on n.oid = c.relnamespace
             where n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg_toast%'
               and c.relkind in ('r', 'p', 'v', 'm', 'f')
               and has_table_privilege('tessera_sql', c.oid, 'select')
               and not (c.relkind in ('r', 'p') and c.relrowsecurity and c.relforcerowsecurity
                        and exists (select 1 from pg_policy p where p.polrelid = c.oid))
               and not (c.relkind = 'v' and coalesce(c.reloptions, '{}') @> array['security_invoker=true'])",
            &[],
        )
        .await
        .expect("catalog")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(leaks.is_empty(), "relations tessera_sql can read without row policies: {leaks:?}");
    let views: i64 = admin
        .query_one("select count(*) from pg_views where schemaname = 'reporting'", &[])
        .await
        .expect("views")
        .get(0);
    assert!(views >= 9, "the reporting schema has its views ({views})");
    // The only functions of Tessera's own schemas it may call are the tenant functions.
    let callable: Vec<String> = admin
        .query(
            "select p.oid::regprocedure::text from pg_proc p join pg_namespace n on n.oid = p.pronamespace
              where n.nspname in ('core', 'events', 'crm', 'invoicing', 'hr', 'reporting')
                and has_function_privilege('tessera_sql', p.oid, 'execute') order by 1",
            &[],
        )
        .await
        .expect("functions")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(callable, vec!["core.current_tenant_id()"]);
    let attributes: (bool, bool, bool, bool) = {
        let r = admin
            .query_one(
                "select rolsuper, rolbypassrls, has_database_privilege('tessera_sql', current_database(), 'create'),
                        has_database_privilege('tessera_sql', current_database(), 'temporary')
                   from pg_roles where rolname = 'tessera_sql'",
                &[],
            )
            .await
            .expect("role");
        (r.get(0), r.get(1), r.get(2), r.get(3))
    };
    assert_eq!(attributes, (false, false, false, false));
}

/// Raw bytes of any type, to compare binary results byte for byte.
#[derive(Debug, PartialEq)]
struct Raw(Option<Vec<u8>>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(Some(raw.to_vec())))
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(None))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

fn texts(messages: &[SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => {
                Some((0..row.len()).map(|i| row.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn text_and_binary_results_match_a_direct_connection() {
    let w = world().await;
    w.app.owner.batch_execute("create type public.mood as enum ('sad', 'ok', 'happy')").await.expect("enum");
    let via = connect(w.addr, "acme", &w.report_a).await;
    let (direct, _) = direct_session(&w.app, "acme", &w.report_a).await;
    let sql = "select 1234567890123456789012345678901234567890.1234567890::numeric as n40, 'NaN'::numeric, \
               'Infinity'::float8, '-Infinity'::float8, 'infinity'::timestamptz, 0.1::float4, \
               interval '1 year 2 mons 3 days 04:05:06.789', array[1, null, 3]::int[], \
               array[['a', 'b'], ['c', null]]::text[], 'happy'::public.mood, array['ok', 'sad']::public.mood[], \
               timestamptz '2026-11-28 12:34:56.123456+05:30', date '2026-02-28', time '23:59:59.999999', \
               '{\"a\": [1, 2.50, {\"b\": null}]}'::jsonb, '\\xdeadbeef'::bytea, uuid '6a3c58c6-2d3f-4a4e-9d8e-1f2a3b4c5d6e', \
               true, null::text, 'a''b\"c'::text, (select sum(amount) from crm.deals)";
    // Text (the simple protocol).
    let via_text = texts(&via.simple_query(sql).await.expect("text via"));
    let direct_text = texts(&direct.simple_query(sql).await.expect("text direct"));
    assert_eq!(via_text, direct_text);
    assert_eq!(via_text[0][0].as_deref(), Some("1234567890123456789012345678901234567890.1234567890"));
    assert_eq!(via_text[0][20].as_deref(), Some("201.00"), "the tenant's own sum");
    // Binary (the extended protocol).
    let via_row = via.query_one(sql, &[]).await.expect("binary via");
    let direct_row = direct.query_one(sql, &[]).await.expect("binary direct");
    assert_eq!(via_row.len(), direct_row.len());
    for i in 0..via_row.len() {
        assert_eq!(via_row.get::<_, Raw>(i), direct_row.get::<_, Raw>(i), "column {i}");
        assert_eq!(via_row.columns()[i].type_(), direct_row.columns()[i].type_(), "column {i}'s type");
    }
    // Parameters and named statements: a statement prepared once and run many times.
    let statement =
        via.prepare("select count(*) from crm.deals where amount::float8 > $1").await.expect("prepare");
    for _ in 0..10 {
        let n: i64 = via.query_one(&statement, &[&50.0f64]).await.expect("run").get(0);
        assert_eq!(n, 2);
    }
    // Errors in the client's own SQL come back with the server's SQLSTATE.
    let e = via.simple_query("select 1/0").await.expect_err("division by zero");
    assert_eq!(code(&e), "22012");
    let e = via.simple_query("select * from crm.nosuch").await.expect_err("no table");
    assert_eq!(code(&e), "42P01");
    let e = via.simple_query("select 1 +").await.expect_err("syntax");
    assert_eq!(code(&e), "42601");
}

#[tokio::test]
async fn statement_timeout_and_row_limits_are_enforced_and_cancel_the_query() {
    let w = world_with(|c| {
        c.statement_timeout = Duration::from_millis(500);
        c.max_rows = 1000;
        c.max_bytes = 1 << 20;
    })
    .await;
    let a = connect(w.addr, "acme", &w.report_a).await;
    let started = std::time::Instant::now();
    let e = a.simple_query("select pg_sleep(30)").await.expect_err("timed out");
    assert_eq!(code(&e), "57014", "{e}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // The session goes on, and the upstream query really stopped (nothing still runs as tessera_sql).
    assert_eq!(count(&a, "select count(*) from crm.deals").await, 2);
    let admin = crate::support::connect(&cluster().superuser, &w.app.db.name).await;
    let running: i64 = admin
        .query_one(
            "select count(*) from pg_stat_activity where usename = 'tessera_sql' and query like '%pg_sleep(30)%' and state = 'active'",
            &[],
        )
        .await
        .expect("activity")
        .get(0);
    assert_eq!(running, 0);

    let e = a.simple_query("select generate_series(1, 100000)").await.expect_err("too many rows");
    assert_eq!(code(&e), "54000", "{e}");
    let e = a.query("select generate_series(1, 100000)", &[]).await.expect_err("too many rows, extended");
    assert_eq!(code(&e), "54000", "{e}");
    let e =
        a.simple_query("select repeat('x', 100000) from generate_series(1, 100)").await.expect_err("too big");
    assert_eq!(code(&e), "54000", "{e}");
    assert_eq!(a.query("select generate_series(1, 1000)", &[]).await.expect("at the limit").len(), 1000);
    assert_eq!(count(&a, "select count(*) from crm.deals").await, 2);
}

#[tokio::test]
async fn cancel_requests_reach_the_query_and_stale_keys_reach_nothing() {
    // One upstream connection: whoever connects next gets the same server session.
    let w = world_with(|c| c.pool_size = 1).await;
    let a = connect(w.addr, "acme", &w.report_a).await;
    let token = a.cancel_token();
    let sleeping = tokio::spawn(async move {
        let r = a.simple_query("select pg_sleep(30)").await;
        (a, r)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel_query(NoTls).await.expect("cancel");
    let (a, result) =
        tokio::time::timeout(Duration::from_secs(10), sleeping).await.expect("in time").expect("task");
    assert_eq!(code(&result.expect_err("cancelled")), "57014");
    drop(a);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Tenant A's old key, sent while tenant B's query runs on the same upstream session, does nothing.
    let b = connect(w.addr, "globex", &w.report_b).await;
    let running = tokio::spawn(async move {
        let r = b.simple_query("select pg_sleep(1.5)").await;
        (b, r)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = token.cancel_query(NoTls).await;
    let (_b, result) = running.await.expect("task");
    assert!(result.is_ok(), "a stale cancel key hit another tenant's query: {result:?}");
}

#[tokio::test]
async fn pooled_connections_carry_nothing_to_the_next_tenant() {
    let w = world_with(|c| c.pool_size = 1).await;
    let a = connect(w.addr, "acme", &w.report_a).await;
    let pid_a: i32 = a.query_one("select pg_backend_pid()", &[]).await.expect("pid").get(0);
    let _statement = a.prepare("select count(*) /* acme-secret */ from crm.deals").await.expect("prepare");
    a.batch_execute("set application_name = 'acme-report'; set search_path = crm").await.expect("set");
    // Counted with a simple query, which is not a prepared statement itself.
    let leftovers = async |client: &Client| -> String {
        let messages = client
            .simple_query("select count(*) from pg_prepared_statements where statement like '%acme-secret%'")
            .await
            .expect("prepared statements");
        texts(&messages)[0][0].clone().expect("count")
    };
    assert_eq!(leftovers(&a).await, "1", "A has a prepared statement");
    drop(a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let b = connect(w.addr, "globex", &w.report_b).await;
    let pid_b: i32 = b.query_one("select pg_backend_pid()", &[]).await.expect("pid").get(0);
    assert_eq!(pid_a, pid_b, "the same upstream session serves B");
    assert_eq!(leftovers(&b).await, "0");
    let cursors =
        texts(&b.simple_query("select count(*) from pg_cursors where name <> ''").await.expect("cursors"));
    assert_eq!(cursors[0][0].as_deref(), Some("0"));
    let settings: (String, String) = {
        let r = b
            .query_one("select current_setting('application_name'), current_setting('search_path')", &[])
            .await
            .expect("settings");
        (r.get(0), r.get(1))
    };
    assert_ne!(settings.0, "acme-report");
    assert_ne!(settings.1, "crm");
    assert_eq!(count(&b, "select count(*) from crm.deals").await, 3);
}

/// Reads everything the server sends until it closes the connection (or 5 s pass).
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        all.extend_from_slice(&buf[..n]);
    }
    all
}

fn startup_bytes(user: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&196_608i32.to_be_bytes());
    for (k, v) in [("user", user), ("database", "tessera")] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Logs in over a raw socket and returns it ready for queries.
async fn raw_login(addr: SocketAddr, user: &str, key: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(&startup_bytes(user)).await.expect("startup");
    let mut buf = [0u8; 9];
    stream.read_exact(&mut buf).await.expect("auth request");
    assert_eq!(buf[0], b'R');
    stream.write_all(&message(b'p', format!("{key}\0").as_bytes())).await.expect("password");
    // Read up to and including ReadyForQuery.
    loop {
        let mut header = [0u8; 5];
        stream.read_exact(&mut header).await.expect("header");
        let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize - 4;
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body).await.expect("body");
        assert_ne!(header[0], b'E', "login failed: {}", String::from_utf8_lossy(&body));
        if header[0] == b'Z' {
            return stream;
        }
    }
}

/// Whether the bytes hold an ErrorResponse with this SQLSTATE (its fields: `…\0C<sqlstate>\0…`).
fn has_error(bytes: &[u8], sqlstate: &str) -> bool {
    let field = format!("\0C{sqlstate}\0");
    bytes.contains(&b'E') && bytes.windows(field.len()).any(|w| w == field.as_bytes())
}

#[tokio::test]
async fn bad_bytes_close_that_connection_and_the_endpoint_keeps_serving() {
    let w = world().await;
    let healthy = connect(w.addr, "globex", &w.report_b).await;

    // Garbage after startup: an unknown message type.
    let mut s = raw_login(w.addr, "acme", &w.report_a).await;
    s.write_all(&message(b'!', b"garbage")).await.expect("write");
    let answer = read_until_closed(&mut s).await;
    assert!(has_error(&answer, "08P01"), "{:?}", String::from_utf8_lossy(&answer));

    // An absurd length.
    let mut s = raw_login(w.addr, "acme", &w.report_a).await;
    s.write_all(&[b'Q', 0x7f, 0xff, 0xff, 0xff, b's']).await.expect("write");
    let answer = read_until_closed(&mut s).await;
    assert!(has_error(&answer, "08P01"), "{:?}", String::from_utf8_lossy(&answer));

    // A Query that is not NUL-terminated.
    let mut s = raw_login(w.addr, "acme", &w.report_a).await;
    s.write_all(&message(b'Q', b"select 1")).await.expect("write");
    let answer = read_until_closed(&mut s).await;
    assert!(has_error(&answer, "08P01"), "{:?}", String::from_utf8_lossy(&answer));

    // A truncated message, then the client goes away.
    let mut s = raw_login(w.addr, "acme", &w.report_a).await;
    s.write_all(&[b'Q', 0, 0, 0, 100, b's', b'e']).await.expect("write");
    drop(s);

    // A startup packet of absurd length, and random bytes instead of a startup packet.
    let mut s = TcpStream::connect(w.addr).await.expect("connect");
    s.write_all(&[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0]).await.expect("write");
    assert!(has_error(&read_until_closed(&mut s).await, "08P01"));
    let mut s = TcpStream::connect(w.addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let _ = read_until_closed(&mut s).await;

    assert_eq!(count(&healthy, "select count(*) from crm.deals").await, 3, "others are still served");
    let again = connect(w.addr, "acme", &w.report_a).await;
    assert_eq!(count(&again, "select count(*) from crm.deals").await, 2);
}

/// A self-signed certificate for localhost, made with the openssl command.
fn self_signed() -> (tempdir::Dir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempdir::Dir::new();
    let cert = dir.path.join("cert.pem");
    let key = dir.path.join("key.pem");
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl (Debian's openssl package)");
    assert!(status.success(), "openssl could not make a certificate");
    (dir, cert, key)
}

mod tempdir {
    /// A temporary folder, deleted on drop.
    pub struct Dir {
        pub path: std::path::PathBuf,
    }

    impl Dir {
        pub fn new() -> Self {
            let path = std::env::temp_dir().join(format!("tessera-sql-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&path).expect("temp dir");
            Self { path }
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

#[tokio::test]
async fn tls_is_negotiated_required_and_plaintext_after_ssl_request_is_refused() {
    let (_dir, cert, key) = self_signed();
    let mut app = TestApp::spawn().await;
    let (tenant, _) = app.tenant("acme").await;
    let report = app.key(tenant, &["reporting:read"]).await;
    let tls = tessera_gateway::sql::tls_from_pem(&cert, &key).expect("tls");
    let addr = endpoint_with_tls(&app, |c| c.require_tls = true, Some(tls)).await;

    // CVE-2021-23214: a startup packet sent right behind the SSLRequest, before any handshake.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut both = vec![0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    both.extend_from_slice(&startup_bytes("acme"));
    s.write_all(&both).await.expect("write");
    let answer = read_until_closed(&mut s).await;
    assert!(has_error(&answer, "08P01"), "{:?}", String::from_utf8_lossy(&answer));
    assert!(!answer.starts_with(b"S"), "the server must not start TLS after injected bytes");

    // Plaintext when TLS is required.
    let e = try_connect(addr, "acme", &report).await.expect_err("plaintext refused");
    assert_eq!(code(&e), "28000");

    // psql over TLS (the client's hop; psql reports it).
    let psql = cluster().bindir.join("psql");
    let conninfo = format!("host=127.0.0.1 port={} user=acme dbname=tessera sslmode=require", addr.port());
    let info = tokio::task::spawn_blocking(move || run(&psql, &[&conninfo, "-c", "\\conninfo"], &report))
        .await
        .expect("psql");
    assert!(info.contains("SSL connection"), "{info}");
}

fn run(program: &std::path::Path, args: &[&str], password: &str) -> String {
    let output = std::process::Command::new(program)
        .args(args)
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{} {args:?} failed: {}\n{stdout}",
        program.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test]
async fn psql_pgbench_and_psycopg_work_against_the_endpoint() {
    let w = world().await;
    let conn = format!("host=127.0.0.1 port={} user=acme dbname=tessera sslmode=disable", w.addr.port());
    let psql = cluster().bindir.join("psql");
    let password = w.report_a.clone();
    let (psql2, conn2) = (psql.clone(), conn.clone());
    let out = tokio::task::spawn_blocking(move || {
        let describe = run(&psql2, &[&conn2, "-c", "\\d crm.deals"], &password);
        let tables = run(&psql2, &[&conn2, "-c", "\\dt crm.*"], &password);
        let databases = run(&psql2, &[&conn2, "-c", "\\l"], &password);
        let views = run(&psql2, &[&conn2, "-c", "\\dv reporting.*"], &password);
        let copy = run(
            &psql2,
            &[&conn2, "-c", "\\copy (select title from crm.deals order by title) to stdout with csv"],
            &password,
        );
        let join = run(
            &psql2,
            &[&conn2, "-Atc", "select count(*) from reporting.crm_deals d join reporting.crm_companies c on c.id = d.company_id left join reporting.invoicing_invoices i on i.deal_id = d.id"],
            &password,
        );
        (describe, tables, databases, views, copy, join)
    })
    .await
    .expect("psql");
    assert!(
        out.0.contains("Table \"crm.deals\"") && out.0.contains("Policies (forced row security enabled)"),
        "{}",
        out.0
    );
    assert!(out.1.contains("deals") && out.1.contains("companies"), "{}", out.1);
    assert!(out.2.contains("tessera") || out.2.contains("List of databases"), "{}", out.2);
    assert!(out.3.contains("crm_deals"), "{}", out.3);
    assert_eq!(out.4, "Deal 0\nDeal 1\n");
    assert_eq!(out.5.trim(), "2");

    // pgbench, simple, extended and prepared, with a select by id over a tenant table.
    let id: String = connect(w.addr, "acme", &w.report_a)
        .await
        .query_one("select id::text from crm.deals limit 1", &[])
        .await
        .expect("id")
        .get(0);
    let script = std::env::temp_dir().join(format!("tessera-pgbench-{}.sql", uuid::Uuid::new_v4().simple()));
    std::fs::write(&script, format!("select title, amount from crm.deals where id = '{id}';\n"))
        .expect("script");
    let pgbench = cluster().bindir.join("pgbench");
    let port = w.addr.port().to_string();
    let password = w.report_a.clone();
    let script2 = script.clone();
    let outputs = tokio::task::spawn_blocking(move || {
        ["simple", "extended", "prepared"].map(|mode| {
            run(
                &pgbench,
                &[
                    "-n",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-U",
                    "acme",
                    "-c",
                    "4",
                    "-t",
                    "50",
                    "-M",
                    mode,
                    "-f",
                    script2.to_str().expect("path"),
                    "tessera",
                ],
                &password,
            )
        })
    })
    .await
    .expect("pgbench");
    let _ = std::fs::remove_file(&script);
    for output in outputs {
        assert!(output.contains("number of transactions actually processed: 200/200"), "{output}");
        assert!(output.contains("number of failed transactions: 0"), "{output}");
    }

    // psycopg (a second driver, with its own protocol use: extended protocol, binary parameters).
    let python = r#"
import os, sys, psycopg
with psycopg.connect(host="127.0.0.1", port=int(sys.argv[1]), user="acme", password=os.environ["PGPASSWORD"],
                     dbname="tessera", sslmode="disable", autocommit=True) as conn:
    rows = conn.execute("select title from crm.deals where amount > %s order by title", (50,)).fetchall()
    n = conn.execute("select count(*) from reporting.crm_deals").fetchone()[0]
    try:
        conn.execute("set tessera.sql_session = 'x'")
        refused = "no"
    except psycopg.errors.InsufficientPrivilege:
        refused = "yes"
    with conn.cursor(binary=True) as cur:
        cur.execute("select sum(amount) from crm.deals")
        total = cur.fetchone()[0]
    print(rows, n, refused, total)
"#;
    let port = w.addr.port().to_string();
    let password = w.report_a.clone();
    let out = tokio::task::spawn_blocking(move || {
        run(std::path::Path::new("python3"), &["-c", python, &port], &password)
    })
    .await
    .expect("python");
    assert_eq!(out.trim(), "[('Deal 0',), ('Deal 1',)] 2 yes 201.00");
}

/// Reads messages until ReadyForQuery (included), the connection's end or `wait` passes.
async fn read_messages(stream: &mut TcpStream, wait: Duration) -> Vec<(u8, Vec<u8>)> {
    let mut messages = Vec::new();
    let read = async {
        loop {
            let mut header = [0u8; 5];
            if stream.read_exact(&mut header).await.is_err() {
                return;
            }
            let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize - 4;
            let mut body = vec![0u8; len];
            if stream.read_exact(&mut body).await.is_err() {
                return;
            }
            let done = header[0] == b'Z';
            messages.push((header[0], body));
            if done {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(wait, read).await;
    messages
}

fn parse_message(name: &str, sql: &str) -> Vec<u8> {
    message(b'P', format!("{name}\0{sql}\0\0\0").as_bytes())
}

fn bind_message(portal: &str, statement: &str) -> Vec<u8> {
    message(b'B', format!("{portal}\0{statement}\0\0\0\0\0\0\0").as_bytes())
}

fn execute_message(portal: &str, max_rows: i32) -> Vec<u8> {
    let mut body = format!("{portal}\0").into_bytes();
    body.extend_from_slice(&max_rows.to_be_bytes());
    message(b'E', &body)
}

fn error_code(body: &[u8]) -> String {
    body.split(|b| *b == 0)
        .find_map(|field| field.strip_prefix(b"C"))
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_refused_parse_answers_at_once_and_the_batch_fails_as_the_server_would() {
    let w = world().await;
    let mut s = raw_login(w.addr, "acme", &w.report_a).await;
    // A good statement, a refused one, then Flush: the refusal comes back without waiting for Sync.
    let mut batch = parse_message("ok", "select 1");
    batch.extend(parse_message("bad", "set tessera.sql_session = 'x'"));
    batch.extend(message(b'H', b""));
    s.write_all(&batch).await.expect("write");
    let answer = read_messages(&mut s, Duration::from_secs(2)).await;
    let tags: Vec<u8> = answer.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, vec![b'1', b'E'], "ParseComplete, then the refusal, before any Sync");
    assert_eq!(error_code(&answer[1].1), "42501");
    assert!(String::from_utf8_lossy(&answer[1].1).contains("SET tessera.sql_session"));
    // The rest of the batch is skipped up to Sync, as after any error; the session goes on.
    let mut rest = bind_message("", "ok");
    rest.extend(execute_message("", 0));
    rest.extend(message(b'S', b""));
    s.write_all(&rest).await.expect("write");
    let answer = read_messages(&mut s, Duration::from_secs(2)).await;
    assert_eq!(answer.iter().map(|(t, _)| *t).collect::<Vec<_>>(), vec![b'Z']);
    s.write_all(&message(b'Q', b"select count(*) from crm.deals\0")).await.expect("write");
    let answer = read_messages(&mut s, Duration::from_secs(2)).await;
    assert_eq!(answer.iter().map(|(t, _)| *t).collect::<Vec<_>>(), vec![b'T', b'D', b'C', b'Z']);
}

#[tokio::test]
async fn row_limits_hold_across_portal_suspensions() {
    let w = world_with(|c| c.max_rows = 1000).await;
    let mut s = raw_login(w.addr, "acme", &w.report_a).await;
    let mut batch = parse_message("", "select generate_series(1, 5000)");
    batch.extend(bind_message("p", ""));
    batch.extend(execute_message("p", 600));
    batch.extend(execute_message("p", 600));
    batch.extend(message(b'S', b""));
    s.write_all(&batch).await.expect("write");
    let answer = read_messages(&mut s, Duration::from_secs(5)).await;
    let rows = answer.iter().filter(|(t, _)| *t == b'D').count();
    assert!(rows <= 1000, "{rows} rows passed a limit of 1000");
    let error = answer.iter().find(|(t, _)| *t == b'E').expect("an error");
    assert_eq!(error_code(&error.1), "54000");
    assert_eq!(answer.last().map(|(t, _)| *t), Some(b'Z'));
}

#[tokio::test]
async fn a_batch_left_without_sync_is_ended_at_the_statement_timeout() {
    let w = world_with(|c| {
        c.statement_timeout = Duration::from_millis(500);
        c.pool_size = 1;
    })
    .await;
    let mut s = raw_login(w.addr, "acme", &w.report_a).await;
    // Parse, Bind, Execute one row of many, Flush, then nothing: the server holds a transaction open.
    let mut batch = parse_message("", "select * from crm.deals");
    batch.extend(bind_message("", ""));
    batch.extend(execute_message("", 1));
    batch.extend(message(b'H', b""));
    s.write_all(&batch).await.expect("write");
    let started = std::time::Instant::now();
    let answer = read_until_closed(&mut s).await;
    assert!(has_error(&answer, "57014"), "{:?}", String::from_utf8_lossy(&answer));
    assert!(started.elapsed() < Duration::from_secs(4));
    // Nothing of it stays open upstream, and the endpoint serves the next client.
    let admin = crate::support::connect(&cluster().superuser, &w.app.db.name).await;
    let open: i64 = admin
        .query_one(
            "select count(*) from pg_stat_activity where usename = 'tessera_sql' and xact_start is not null",
            &[],
        )
        .await
        .expect("activity")
        .get(0);
    assert_eq!(open, 0, "no transaction left open");
    let b = connect(w.addr, "globex", &w.report_b).await;
    assert_eq!(count(&b, "select count(*) from crm.deals").await, 3);
}

#[tokio::test]
async fn idle_sessions_and_silent_clients_are_closed() {
    let w = world_with(|c| {
        c.idle_timeout = Duration::from_millis(300);
        c.auth_timeout = Duration::from_millis(300);
    })
    .await;
    let mut s = raw_login(w.addr, "acme", &w.report_a).await;
    let answer = read_until_closed(&mut s).await;
    assert!(has_error(&answer, "57P05"), "{:?}", String::from_utf8_lossy(&answer));
    // A client that connects and says nothing is closed after the login timeout.
    let mut silent = TcpStream::connect(w.addr).await.expect("connect");
    let started = std::time::Instant::now();
    let _ = read_until_closed(&mut silent).await;
    assert!(started.elapsed() < Duration::from_secs(4), "closed after the login timeout");
}

#[tokio::test]
async fn one_tenant_cannot_take_every_connection() {
    let w = world_with(|c| {
        c.pool_size = 4;
        c.max_sessions_per_tenant = 2;
    })
    .await;
    let _a1 = connect(w.addr, "acme", &w.report_a).await;
    let _a2 = connect(w.addr, "acme", &w.report_a).await;
    let e = try_connect(w.addr, "acme", &w.report_a).await.expect_err("a third session refused");
    assert_eq!(code(&e), "53300");
    let b = connect(w.addr, "globex", &w.report_b).await;
    assert_eq!(count(&b, "select count(*) from crm.deals").await, 3);
    drop(_a1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let again = connect(w.addr, "acme", &w.report_a).await;
    assert_eq!(count(&again, "select count(*) from crm.deals").await, 2);
}

/// The scheduling policy of a thread: field 41 of its /proc stat file; `None` once the thread has ended.
#[cfg(target_os = "linux")]
fn policy(stat_file: &std::path::Path) -> Option<u32> {
    let stat = std::fs::read_to_string(stat_file).ok()?;
    // The name is in parentheses and may hold spaces: the fields after it start with the third.
    let after_name = &stat[stat.rfind(')').expect("stat has the name in parentheses") + 1..];
    Some(
        after_name.split_whitespace().nth(41 - 3).expect("policy field").parse().expect("policy is a number"),
    )
}

/// The scheduling policies of this process's threads named `prefix…`.
#[cfg(target_os = "linux")]
fn thread_policies(prefix: &str) -> Vec<u32> {
    let mut policies = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let path = task.expect("task").path();
        if std::fs::read_to_string(path.join("comm")).unwrap_or_default().starts_with(prefix) {
            policies.extend(policy(&path.join("stat")));
        }
    }
    policies
}

/// The relay threads do not preempt the PostgreSQL backends they wait for (SCHED_BATCH; see
/// relay_without_wakeup_preemption).
#[cfg(target_os = "linux")]
#[tokio::test]
async fn relay_threads_run_without_wakeup_preemption() {
    const SCHED_BATCH: u32 = 3;
    // One relay thread, so the session below is served by it: it has passed its first line by then. (Under
    // a plain `cargo test` other tests' relay threads are in this process too: one just started may not
    // have, hence the second look.)
    let own_thread = std::path::Path::new("/proc/thread-self/stat");
    let own_policy = policy(own_thread);
    let w = world_with(|c| c.threads = 1).await;
    let client = connect(w.addr, "acme", &w.report_a).await;
    assert_eq!(count(&client, "select count(*) from crm.deals").await, 2);
    let mut policies = thread_policies("tessera-sql-");
    if policies.iter().any(|&p| p != SCHED_BATCH) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        policies = thread_policies("tessera-sql-");
    }
    assert!(!policies.is_empty(), "no relay thread found");
    assert!(policies.iter().all(|&p| p == SCHED_BATCH), "relay threads' policies: {policies:?}");
    // The test's own thread keeps its policy: the change stays on the relay's threads.
    assert_eq!(policy(own_thread), own_policy);
}

#[tokio::test]
async fn a_revoked_key_stops_its_open_sessions() {
    let mut w = world().await;
    let a = connect(w.addr, "acme", &w.report_a).await;
    assert_eq!(count(&a, "select count(*) from crm.deals").await, 2);
    revoke_report_a(&mut w).await;
    assert_eq!(count(&a, "select count(*) from crm.deals").await, 0, "the open session sees nothing");
    assert_eq!(code(&try_connect(w.addr, "acme", &w.report_a).await.expect_err("refused")), "28P01");
}

#[tokio::test]
async fn the_upstream_login_must_be_one_row_security_holds() {
    let app = TestApp::spawn().await;
    for user in ["tessera_owner", "tessera_app", &cluster().superuser] {
        let upstream = UpstreamConfig::from_pg_config(&cluster().endpoint.pg_config(user, &app.db.name))
            .expect("upstream");
        let config = SqlConfig::new("127.0.0.1:0".parse().expect("addr"));
        let refused = SqlEndpoint::bind(config, app.pool.clone(), upstream, None).await;
        assert!(refused.is_err(), "{user} accepted as the upstream login");
    }
}

/// Waits up to ten seconds for the count of `sql` to reach `expected`, as a reader through the endpoint.
async fn eventually(client: &Client, sql: &str, expected: i64) {
    let mut last = -1;
    for _ in 0..100 {
        last = count(client, sql).await;
        if last == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{sql}: {last}, expected {expected}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_serves_tenants_from_a_hot_standby() {
    use tessera_core::embedded::{Cluster, ClusterOptions, PgBinaries};
    use tessera_core::{Module, admin, apikey::Scope, bootstrap, tenant::TenantSlug};

    let (primary, endpoint, _watchdog) =
        tokio::task::block_in_place(|| crate::support::private_cluster(false));
    let mods = crate::support::modules();
    let refs: Vec<&dyn Module> = mods.iter().map(|m| m.as_ref()).collect();
    bootstrap::provision(&endpoint, "postgres", "tessera", &refs).await.expect("provision");
    let mut owner = bootstrap::connect(&endpoint.pg_config("tessera_owner", "tessera")).await.expect("owner");
    let mut keys = Vec::new();
    for slug in ["acme", "globex"] {
        let tenant = admin::create_tenant(
            &mut owner,
            &TenantSlug::parse(slug).expect("slug"),
            slug,
            &crate::support::MODULES,
        )
        .await
        .expect("tenant");
        let scopes = [Scope::parse("reporting:read").expect("scope")];
        keys.push((
            tenant.id,
            admin::create_api_key(&mut owner, tenant.id, "bi", &scopes).await.expect("key").1,
        ));
    }
    let primary_admin = bootstrap::connect(&endpoint.pg_config("postgres", "tessera")).await.expect("admin");
    let add_deals = async |tenant: tessera_core::tenant::TenantId, n: i32| {
        primary_admin
            .execute(
                "insert into crm.deals (tenant_id, title) select $1, 'Deal ' || g from generate_series(1, $2::int) g",
                &[&tenant.as_uuid(), &n],
            )
            .await
            .expect("deals");
    };
    add_deals(keys[0].0, 3).await;
    add_deals(keys[1].0, 5).await;

    // A hot standby of the primary, in the same test folder.
    let root = primary.data_dir().parent().expect("the test folder").to_path_buf();
    let bindir = std::env::var_os("TESSERA_PG_BINDIR").map(std::path::PathBuf::from);
    let bin = PgBinaries::locate(bindir.as_deref()).expect("binaries");
    let standby = Cluster::new(
        bin,
        ClusterOptions { data_dir: root.join("standby"), superuser: "postgres".into(), durable: false },
    )
    .expect("standby");
    tokio::task::block_in_place(|| standby.init_standby(&endpoint)).expect("base backup");
    let standby_endpoint = tokio::task::block_in_place(|| standby.start()).expect("start the standby");
    let _standby_watchdog = standby.stop_when_process_exits(None).expect("watchdog");
    let replica =
        bootstrap::connect(&standby_endpoint.pg_config("postgres", "tessera")).await.expect("replica");
    let in_recovery: bool =
        replica.query_one("select pg_is_in_recovery()", &[]).await.expect("recovery").get(0);
    assert!(in_recovery, "the upstream is a standby");

    // Logins are checked (and bound) on the primary; tenants' SQL runs on the standby.
    let auth =
        tessera_core::db::Database::new(endpoint.pg_config("tessera_app", "tessera"), 2).expect("auth pool");
    let upstream = UpstreamConfig::from_pg_config(&standby_endpoint.pg_config("tessera_sql", "tessera"))
        .expect("upstream");
    let sql = SqlEndpoint::bind(SqlConfig::new("127.0.0.1:0".parse().expect("addr")), auth, upstream, None)
        .await
        .expect("bind to the standby");
    let addr = sql.local_addr().expect("addr");
    tokio::spawn(sql.run_until_stopped(std::future::pending()));

    let acme = connect(addr, "acme", &keys[0].1).await;
    let backend: bool = acme.query_one("select pg_is_in_recovery()", &[]).await.expect("where").get(0);
    assert!(backend, "the session runs on the standby");
    eventually(&acme, "select count(*) from crm.deals", 3).await;
    let globex = connect(addr, "globex", &keys[1].1).await;
    eventually(&globex, "select count(*) from crm.deals", 5).await;
    // A change on the primary reaches the readers of the standby, each tenant's only.
    add_deals(keys[0].0, 2).await;
    eventually(&acme, "select count(*) from crm.deals", 5).await;
    assert_eq!(count(&globex, "select count(*) from crm.deals").await, 5);
}

/// One extended-protocol round: Parse of the unnamed statement, Bind, Describe of the portal, Execute, Sync.
fn unnamed_round(sql: &str) -> Vec<u8> {
    let mut batch = parse_message("", sql);
    batch.extend(bind_message("", ""));
    batch.extend(message(b'D', b"P\0"));
    batch.extend(execute_message("", 0));
    batch.extend(message(b'S', b""));
    batch
}

/// The text of each DataRow's first column, and the tags, of one answer.
fn first_values(answer: &[(u8, Vec<u8>)]) -> Vec<String> {
    answer
        .iter()
        .filter(|(tag, _)| *tag == b'D')
        .map(|(_, body)| {
            let len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]) as usize;
            String::from_utf8_lossy(&body[6..6 + len]).into_owned()
        })
        .collect()
}

async fn round(s: &mut TcpStream, batch: &[u8]) -> Vec<(u8, Vec<u8>)> {
    s.write_all(batch).await.expect("write");
    read_messages(s, Duration::from_secs(5)).await
}

fn tags(answer: &[(u8, Vec<u8>)]) -> Vec<u8> {
    answer.iter().map(|(t, _)| *t).collect()
}

#[tokio::test]
async fn unnamed_statements_are_prepared_once_and_answer_as_the_server_would() {
    let w = world().await;
    let mut s = raw_login(w.addr, "acme", &w.report_a).await;
    let deals = "select count(*) from crm.deals";
    let companies = "select count(*) + 1000 from crm.companies";
    for _ in 0..3 {
        let answer = round(&mut s, &unnamed_round(deals)).await;
        assert_eq!(tags(&answer), b"12TDCZ", "ParseComplete, BindComplete, RowDescription, the row, done");
        assert_eq!(first_values(&answer), ["2"], "the tenant's own rows");
    }
    let answer = round(&mut s, &unnamed_round(companies)).await;
    assert_eq!(first_values(&answer), ["1001"]);
    // Back to the first text: the unnamed statement is that text again, for Bind and Describe.
    let mut batch = parse_message("", deals);
    batch.extend(message(b'D', b"S\0"));
    batch.extend(bind_message("", ""));
    batch.extend(execute_message("", 0));
    batch.extend(message(b'S', b""));
    let answer = round(&mut s, &batch).await;
    assert_eq!(tags(&answer), b"1tT2DCZ");
    assert_eq!(first_values(&answer), ["2"]);
    // Each text was prepared upstream once, however often it was sent.
    let answer = round(
        &mut s,
        &message(b'Q', b"select count(*) from pg_prepared_statements where name like 'tessera_unnamed_%'\0"),
    )
    .await;
    assert_eq!(first_values(&answer), ["2"]);
    // A text with a string constant is parsed each time: the server fixes a constant's value (a date by the
    // session's TimeZone, 'today' by the clock) when it analyses the text.
    for _ in 0..3 {
        let answer =
            round(&mut s, &unnamed_round("select count(*) from crm.deals where created_at > '2000-01-01'"))
                .await;
        assert_eq!(first_values(&answer), ["2"]);
    }
    let answer = round(
        &mut s,
        &message(b'Q', b"select count(*) from pg_prepared_statements where name like 'tessera_unnamed_%'\0"),
    )
    .await;
    assert_eq!(first_values(&answer), ["2"], "still the two texts without constants");
    // A simple query drops the unnamed statement, as the server does: Bind to it fails.
    let mut batch = bind_message("", "");
    batch.extend(execute_message("", 0));
    batch.extend(message(b'S', b""));
    let answer = round(&mut s, &batch).await;
    let error = answer.iter().find(|(t, _)| *t == b'E').expect("an error");
    assert_eq!(error_code(&error.1), "26000", "{}", String::from_utf8_lossy(&error.1));
    // So does closing it.
    round(&mut s, &unnamed_round(deals)).await;
    let mut batch = message(b'C', b"S\0");
    batch.extend(bind_message("", ""));
    batch.extend(message(b'S', b""));
    let answer = round(&mut s, &batch).await;
    assert_eq!(tags(&answer)[0], b'3', "CloseComplete");
    let error = answer.iter().find(|(t, _)| *t == b'E').expect("an error");
    assert_eq!(error_code(&error.1), "26000");
    // A text that fails to parse is not remembered, and the next one works.
    let answer = round(&mut s, &unnamed_round("select count(*) frm crm.deals")).await;
    let error = answer.iter().find(|(t, _)| *t == b'E').expect("an error");
    assert_eq!(error_code(&error.1), "42601");
    assert_eq!(first_values(&round(&mut s, &unnamed_round(deals)).await), ["2"]);
    // A refused text is refused, and never prepared.
    let answer = round(&mut s, &unnamed_round("select set_config('tessera.sql_session', 'x', false)")).await;
    let error = answer.iter().find(|(t, _)| *t == b'E').expect("an error");
    assert_eq!(error_code(&error.1), "42501");
    // The relay's statement names are its own.
    let mut batch = parse_message("tessera_unnamed_0", "select 1");
    batch.extend(message(b'S', b""));
    let answer = round(&mut s, &batch).await;
    let error = answer.iter().find(|(t, _)| *t == b'E').expect("an error");
    assert_eq!(error_code(&error.1), "42501");
    assert!(String::from_utf8_lossy(&error.1).contains("reserved"));
    // So are its statements: a Bind of one fails as for any missing statement, a Close of one does nothing.
    assert_eq!(first_values(&round(&mut s, &unnamed_round(deals)).await), ["2"]);
    let mut batch = bind_message("", "tessera_unnamed_0");
    batch.extend(message(b'S', b""));
    let answer = round(&mut s, &batch).await;
    let error = answer.iter().find(|(t, _)| *t == b'E').expect("an error");
    assert_eq!(error_code(&error.1), "26000");
    let mut batch = message(b'C', b"Stessera_unnamed_0\0");
    batch.extend(message(b'S', b""));
    assert_eq!(tags(&round(&mut s, &batch).await), b"3Z");
    assert_eq!(first_values(&round(&mut s, &unnamed_round(deals)).await), ["2"], "still prepared");
    // A setting changed: the kept texts were planned under the old one, so they are prepared afresh.
    let kept = async |s: &mut TcpStream| -> i64 {
        let answer = round(
            s,
            &message(
                b'Q',
                b"select count(*) from pg_prepared_statements where name like 'tessera_unnamed_%'\0",
            ),
        )
        .await;
        first_values(&answer)[0].parse().expect("a count")
    };
    round(&mut s, &unnamed_round(deals)).await;
    let before = kept(&mut s).await;
    round(&mut s, &unnamed_round(deals)).await;
    assert_eq!(kept(&mut s).await, before, "kept");
    round(&mut s, &message(b'Q', b"set extra_float_digits = 0\0")).await;
    assert_eq!(first_values(&round(&mut s, &unnamed_round(deals)).await), ["2"]);
    assert_eq!(kept(&mut s).await, before + 1, "the text prepared once more after the SET");
    // A Query inside an unsynced batch ends the session: after an error in the batch the server would skip
    // it and its ReadyForQuery.
    let mut batch = parse_message("", deals);
    batch.extend(message(b'Q', b"select 1\0"));
    let answer = round(&mut s, &batch).await;
    let error = answer.iter().find(|(t, _)| *t == b'E').expect("an error");
    assert_eq!(error_code(&error.1), "08P01");
}

#[tokio::test]
async fn a_prepared_text_whose_result_changed_shape_fails_once_and_is_prepared_again() {
    let w = world().await;
    let mut s = raw_login(w.addr, "acme", &w.report_a).await;
    let companies = "select * from crm.companies";
    for _ in 0..3 {
        let answer = round(&mut s, &unnamed_round(companies)).await;
        assert_eq!(tags(&answer), b"12TDCZ");
    }
    let admin = crate::support::connect(&cluster().superuser, &w.app.db.name).await;
    admin.batch_execute("alter table crm.companies add column note text").await.expect("alter");
    // The server refuses to run the kept statement with its new shape, once (as it does for a driver's own
    // prepared statements); the relay then prepares the text afresh.
    let answer = round(&mut s, &unnamed_round(companies)).await;
    let error = answer.iter().find(|(t, _)| *t == b'E').expect("an error");
    assert_eq!(error_code(&error.1), "0A000", "{}", String::from_utf8_lossy(&error.1));
    let answer = round(&mut s, &unnamed_round(companies)).await;
    assert_eq!(tags(&answer), b"12TDCZ", "prepared again with the new column");
}

#[tokio::test]
async fn prepared_unnamed_statements_never_serve_the_next_tenant() {
    let w = world_with(|c| c.pool_size = 1).await;
    let deals = "select count(*) from crm.deals";
    let mut a = raw_login(w.addr, "acme", &w.report_a).await;
    for _ in 0..3 {
        assert_eq!(first_values(&round(&mut a, &unnamed_round(deals)).await), ["2"]);
    }
    let pid = |answer: Vec<(u8, Vec<u8>)>| first_values(&answer)[0].clone();
    let pid_a = pid(round(&mut a, &message(b'Q', b"select pg_backend_pid()\0")).await);
    a.write_all(&message(b'X', b"")).await.expect("terminate");
    drop(a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut b = raw_login(w.addr, "globex", &w.report_b).await;
    let pid_b = pid(round(&mut b, &message(b'Q', b"select pg_backend_pid()\0")).await);
    assert_eq!(pid_a, pid_b, "the same upstream session serves B");
    for _ in 0..3 {
        let answer = round(&mut b, &unnamed_round(deals)).await;
        assert_eq!(tags(&answer), b"12TDCZ");
        assert_eq!(first_values(&answer), ["3"], "B's own rows, never A's statement");
    }
}

#[tokio::test]
async fn a_revoked_key_stops_its_prepared_unnamed_statements_too() {
    let mut w = world().await;
    let mut s = raw_login(w.addr, "acme", &w.report_a).await;
    // A statement with a parameter, run past the server's five custom plans so its plan is cached generic.
    let with_amount = |amount: &str| {
        let mut batch = message(b'P', b"\0select count(*) from crm.deals where amount > $1\0\0\0");
        let mut bind = b"\0\0\0\0\0\x01".to_vec();
        bind.extend_from_slice(&(amount.len() as i32).to_be_bytes());
        bind.extend_from_slice(amount.as_bytes());
        bind.extend_from_slice(b"\0\0");
        batch.extend(message(b'B', &bind));
        batch.extend(execute_message("", 0));
        batch.extend(message(b'S', b""));
        batch
    };
    for _ in 0..8 {
        assert_eq!(first_values(&round(&mut s, &with_amount("1")).await), ["2"]);
    }
    let answer = round(
        &mut s,
        &message(
            b'Q',
            b"select count(*) from pg_prepared_statements where name like 'tessera_unnamed_%' and generic_plans > 0\0",
        ),
    )
    .await;
    assert_eq!(first_values(&answer), ["1"], "the statement runs on a cached generic plan");
    revoke_report_a(&mut w).await;
    let answer = round(&mut s, &with_amount("1")).await;
    assert_eq!(tags(&answer), b"12DCZ");
    assert_eq!(first_values(&answer), ["0"], "the cached plan checks the binding when it runs");
}
