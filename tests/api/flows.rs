//! Modules reacting to each other through events, end to end on real replication: a CRM deal won (through
//! the API, or by plain SQL in psql) becomes exactly one draft invoice and one commission, and stays exactly
//! one however often the CDC process is killed and even when Postgres crashes mid-stream.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tessera_cdc::dispatch::{self, DispatchSettings, Subscriber};
use tessera_core::tenant::TenantId;
use tessera_core::{Module, bootstrap};
use tokio_postgres::Client;

use crate::cdc_worker::{count, settings, start, wait_for};
use crate::support::{MODULES, TestApp, cluster, connect, modules, private_cluster};

const BIN: &str = env!("CARGO_BIN_EXE_tessera");

fn subscribers() -> Vec<Subscriber> {
    let mods = modules();
    let refs: Vec<&dyn Module> = mods.iter().map(|m| m.as_ref()).collect();
    Subscriber::of_modules(&refs)
}

/// An employee who owns deals, with a 10% commission plan.
async fn salesperson(admin: &Client, tenant: TenantId, email: &str) {
    admin
        .execute(
            "with e as (insert into hr.employees (tenant_id, name, email) values ($1, 'Ana', $2) returning id)
             insert into hr.commission_plans (tenant_id, employee_id, rate, effective_from)
             select $1, e.id, 0.10, date '2000-01-01' from e",
            &[&tenant.as_uuid(), &email],
        )
        .await
        .expect("employee and plan");
}

/// The CDC worker (holding its slot) and the dispatcher with the modules' own subscribers.
async fn pipeline(
    app: &TestApp,
    admin: &Client,
) -> (tokio::task::JoinHandle<Result<(), tessera_cdc::worker::CdcError>>, tokio::task::JoinHandle<()>) {
    let worker = start(&settings(app), admin).await;
    let dispatch = DispatchSettings::new(
        cluster().endpoint.pg_config("tessera_replication", &app.db.name),
        subscribers(),
    );
    (worker, tokio::spawn(dispatch::run(dispatch)))
}

/// Waits until `logged` (a count over the log) reaches `want`, then until every subscriber's cursor has
/// passed the whole log (so nothing more is coming).
async fn wait_until_dispatched(admin: &Client, logged: &str, want: i64) {
    assert!(wait_for(admin, logged, want).await >= want, "in the log: {logged}");
    let subscribers = subscribers().len() as i64;
    let caught_up = wait_for(
        admin,
        "select count(*) from events.subscribers where position >= (select coalesce(max(seq), 0) from events.log)",
        subscribers,
    )
    .await;
    assert_eq!(caught_up, subscribers, "every subscriber caught up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deal_won_through_the_api_yields_one_draft_invoice_and_one_commission() {
    let mut app = TestApp::spawn().await;
    let (tenant, key) = app.tenant("acme").await;
    let (_, other_key) = app.tenant("globex").await;
    let admin = connect(&cluster().superuser, &app.db.name).await;
    salesperson(&admin, tenant, "ana@acme.example").await;
    let (worker, dispatcher) = pipeline(&app, &admin).await;

    let company = app.create("companies", &key, json!({"name": "Globex Corp"})).await;
    let deal = app
        .create(
            "deals",
            &key,
            json!({"title": "Hammocks", "company_id": company, "amount": "12345.67", "currency": "EUR",
                   "owner_email": "ana@acme.example"}),
        )
        .await;
    let won = app.patch(&format!("/v1/crm/deals/{deal}"), &key, json!({"stage": "won"})).await;
    assert_eq!(won.status, 200);
    let invoices = format!("select count(*) from invoicing.invoices where deal_id = '{deal}'");
    let commissions = format!("select count(*) from hr.commissions where deal_id = '{deal}'");
    assert_eq!(wait_for(&admin, &invoices, 1).await, 1);
    assert_eq!(wait_for(&admin, &commissions, 1).await, 1);

    // Editing the won deal is not another win.
    app.patch(&format!("/v1/crm/deals/{deal}"), &key, json!({"title": "Hammocks (signed)"})).await;
    wait_until_dispatched(
        &admin,
        "select count(*) from events.log where data->'new'->>'title' = 'Hammocks (signed)'",
        1,
    )
    .await;
    assert_eq!((count(&admin, &invoices).await, count(&admin, &commissions).await), (1, 1));

    // What the tenant sees through the other modules' APIs.
    let list = app.get("/v1/invoicing/invoices?status=draft", &key).await;
    assert_eq!(list.status, 200, "{}", list.body);
    let invoice = &list.body["data"][0];
    assert_eq!(invoice["deal_id"], deal.as_str());
    assert_eq!(invoice["currency"], "EUR");
    assert_eq!(invoice["total"].as_str().or(invoice["total"].as_f64().map(|_| "")), Some("12345.67"));
    let customer = app
        .get(&format!("/v1/invoicing/customers/{}", invoice["customer_id"].as_str().expect("customer")), &key)
        .await;
    assert_eq!(customer.body["name"], "Globex Corp", "the customer is the deal's company");
    let commissions_seen = app.get("/v1/hr/commissions", &key).await;
    assert_eq!(commissions_seen.body["data"][0]["amount"], "1234.57");
    // And another tenant sees none of it.
    let theirs = app.get("/v1/invoicing/invoices", &other_key).await;
    assert_eq!(theirs.body["data"].as_array().map(Vec::len), Some(0));
    assert_eq!(
        app.get("/v1/hr/commissions", &other_key).await.body["data"].as_array().map(Vec::len),
        Some(0)
    );
    dispatcher.abort();
    worker.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deal_won_by_plain_sql_in_psql_yields_the_same() {
    let mut app = TestApp::spawn().await;
    let (tenant, key) = app.tenant("acme").await;
    let admin = connect(&cluster().superuser, &app.db.name).await;
    salesperson(&admin, tenant, "ana@acme.example").await;
    let (worker, dispatcher) = pipeline(&app, &admin).await;
    let company = app.create("companies", &key, json!({"name": "Initech"})).await;
    let deal = app
        .create(
            "deals",
            &key,
            json!({"title": "Staplers", "company_id": company, "amount": "1000", "owner_email": "ANA@acme.example"}),
        )
        .await;

    let endpoint = &cluster().endpoint;
    let psql = Command::new(cluster().bindir.join("psql"))
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(&endpoint.socket_dir)
        .args(["-p", &endpoint.port.to_string(), "-U", &cluster().superuser, "-d", &app.db.name, "-c"])
        .arg(format!("update crm.deals set stage = 'won' where id = '{deal}'"))
        .output()
        .expect("psql");
    assert!(psql.status.success(), "{}", String::from_utf8_lossy(&psql.stderr));

    let invoices =
        format!("select count(*) from invoicing.invoices where deal_id = '{deal}' and status = 'draft'");
    let commissions =
        format!("select count(*) from hr.commissions where deal_id = '{deal}' and amount = 100.00");
    assert_eq!(wait_for(&admin, &invoices, 1).await, 1);
    assert_eq!(wait_for(&admin, &commissions, 1).await, 1);
    wait_until_dispatched(&admin, "select count(*) from events.log where type = 'deal.closed.won'", 1).await;
    assert_eq!((count(&admin, &invoices).await, count(&admin, &commissions).await), (1, 1));
    dispatcher.abort();
    worker.abort();
}

/// `tessera cdc` as its own process, killed with SIGKILL whenever the test likes.
struct CdcProcess {
    child: Child,
    url: String,
    bin: BinaryCopy,
}

/// A copy of the binary, so that a build during the test cannot swap it between two launches; deleted with
/// its folder when the test is done (each run would otherwise leave tens of megabytes in the temp folder).
struct BinaryCopy {
    dir: std::path::PathBuf,
    path: std::path::PathBuf,
}

impl BinaryCopy {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("tessera-bin-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("tessera");
        std::fs::copy(BIN, &path).expect("copy the binary");
        Self { dir, path }
    }
}

impl Drop for BinaryCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl CdcProcess {
    fn start(url: &str) -> Self {
        let bin = BinaryCopy::new();
        Self { child: Self::spawn(&bin.path, url), url: url.to_owned(), bin }
    }

    fn spawn(bin: &std::path::Path, url: &str) -> Child {
        Command::new(bin)
            .args(["cdc", "--database-url", url])
            .env("TESSERA_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("tessera cdc")
    }

    fn kill_and_restart(&mut self) {
        self.kill();
        self.child = Self::spawn(&self.bin.path, &self.url);
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for CdcProcess {
    fn drop(&mut self) {
        // Before the copy's folder goes (fields drop after this).
        self.kill();
    }
}

/// Runs a batch, reconnecting while the database restarts. The restart happens between batches, so a batch
/// that failed never ran and is safe to send again.
async fn run_with_reconnect(client: &mut Option<Client>, config: &tokio_postgres::Config, sql: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if client.is_none() {
            *client = bootstrap::connect(config).await.ok();
        }
        if let Some(c) = client.as_ref() {
            match c.batch_execute(sql).await {
                Ok(()) => return,
                Err(e) => {
                    let code = e.as_db_error().map(|d| d.code().code().to_owned());
                    let lost = code.as_deref().is_none_or(|c| c.starts_with("57") || c.starts_with("08"));
                    assert!(lost, "the batch itself failed: {e}");
                    *client = None;
                }
            }
        }
        assert!(Instant::now() < deadline, "the database did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_updates_survive_killed_cdc_processes_and_a_crashed_database_exactly_once() {
    // A cluster of its own, durable (fsync and synchronous commit on), since the test crashes it.
    let (cluster, endpoint, _watchdog) = tokio::task::block_in_place(|| private_cluster(true));
    let mods = modules();
    let refs: Vec<&dyn Module> = mods.iter().map(|m| m.as_ref()).collect();
    bootstrap::provision(&endpoint, "postgres", "tessera", &refs).await.expect("provision");
    let mut owner = bootstrap::connect(&endpoint.pg_config("tessera_owner", "tessera")).await.expect("owner");
    let tenant = tessera_core::admin::create_tenant(
        &mut owner,
        &tessera_core::tenant::TenantSlug::parse("acme").expect("slug"),
        "Acme",
        &MODULES,
    )
    .await
    .expect("tenant");
    drop(owner);
    let superuser = endpoint.pg_config("postgres", "tessera");
    let admin = bootstrap::connect(&superuser).await.expect("admin");
    salesperson(&admin, tenant.id, "ana@acme.example").await;
    const DEALS: i64 = 20;
    admin
        .execute(
            "with c as (insert into crm.companies (tenant_id, name) values ($1, 'Umbrella') returning id)
             insert into crm.deals (tenant_id, company_id, title, amount, owner_email)
             select $1, c.id, 'Deal ' || g, 100, 'ana@acme.example' from c, generate_series(1, $2::int) g",
            &[&tenant.id.as_uuid(), &(DEALS as i32)],
        )
        .await
        .expect("deals");

    // The slot must exist before the updates, so create it with a first process that is then killed at will.
    let url = format!(
        "postgresql://tessera_replication@/tessera?host={}&port={}",
        endpoint.socket_dir.display(),
        endpoint.port
    );
    let mut cdc = CdcProcess::start(&url);
    let streaming =
        "select count(*) from pg_replication_slots s join pg_stat_replication r on r.pid = s.active_pid
                      where s.slot_name = 'tessera' and exists (select 1 from events.subscribers)";
    assert_eq!(
        wait_for(&admin, streaming, 1).await,
        1,
        "the first worker streams and the subscribers are registered"
    );

    // 10,000 updates in 2,500 transactions of 4 rows: deal d's k-th update sets stage won (k even) or lost
    // (k odd), so every other update is a win: 5,000 wins, each worth one invoice and one commission.
    const TXS: i64 = 2_500;
    const PER_TX: i64 = 4;
    let mut kills = 0;
    let mut writer = None;
    for t in 0..TXS {
        let mut sql = String::from("begin;");
        for j in 0..PER_TX {
            let n = t * PER_TX + j; // the n-th update overall
            let (deal, k) = (n % DEALS, n / DEALS);
            let stage = if k % 2 == 0 { "won" } else { "lost" };
            sql.push_str(&format!(
                "update crm.deals set stage = '{stage}', amount = {} where title = 'Deal {}';",
                100 + n,
                deal + 1
            ));
        }
        sql.push_str("commit;");
        run_with_reconnect(&mut writer, &superuser, &sql).await;
        // Kill the CDC process at uneven points, mid-stream.
        if t % 331 == 17 {
            cdc.kill_and_restart();
            kills += 1;
        }
        if t == TXS / 2 {
            // `pg_ctl restart -m immediate`: a crash and recovery under the running worker and dispatcher.
            let again = tokio::task::block_in_place(|| cluster.restart(true)).expect("restart");
            assert_eq!(again, endpoint);
        }
    }
    assert!(kills >= 7, "{kills}");

    let admin = bootstrap::connect(&superuser).await.expect("admin after the crash");
    let updates = TXS * PER_TX;
    let wins = updates / 2;
    let deadline = Instant::now() + Duration::from_secs(240);
    let wanted = [
        ("select count(*) from events.log where type = 'crm.deals.update'", updates),
        ("select count(*) from events.log where type = 'deal.closed.won'", wins),
        ("select count(*) from invoicing.invoices", wins),
        ("select count(*) from hr.commissions", wins),
    ];
    for (sql, want) in wanted {
        let mut n = count(&admin, sql).await;
        while n < want && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            n = count(&admin, sql).await;
        }
        assert_eq!(n, want, "{sql}");
    }
    // Exactly once: no event twice, no effect twice, every effect from its own event.
    // One statement: the log keeps growing with the subscribers' own changes while this runs.
    let duplicates =
        count(&admin, "select count(*) - count(distinct (commit_lsn, position, type)) from events.log").await;
    assert_eq!(duplicates, 0, "no event twice");
    assert_eq!(count(&admin, "select count(distinct source_event_id) from invoicing.invoices").await, wins);
    assert_eq!(count(&admin, "select count(distinct source_event_id) from hr.commissions").await, wins);
    assert_eq!(
        count(
            &admin,
            "select count(*) from hr.commissions c join events.log e on e.id = c.source_event_id
              where e.type = 'deal.closed.won' and c.deal_amount = (e.data->'new'->>'amount')::numeric"
        )
        .await,
        wins,
        "each commission from its own win, at that win's amount"
    );
    // In commit order: the amounts of each deal's updates rise with the log.
    let out_of_order = count(
        &admin,
        "select count(*) from (
             select (data->'new'->>'amount')::numeric as amount,
                    lag((data->'new'->>'amount')::numeric) over (partition by data->'new'->>'id' order by seq) as before
               from events.log where type = 'crm.deals.update') s
          where amount <= before",
    )
    .await;
    assert_eq!(out_of_order, 0, "every deal's updates in commit order");
    assert_eq!(count(&admin, "select count(*) from events.dead_letters").await, 0);
    cdc.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_invoicing_fails_hr_keeps_up_and_invoicing_catches_up_in_order() {
    let mut app = TestApp::spawn().await;
    let (tenant, key) = app.tenant("acme").await;
    let admin = connect(&cluster().superuser, &app.db.name).await;
    salesperson(&admin, tenant, "ana@acme.example").await;
    // A failure of invoicing's own: its inserts are refused while the switch is on.
    admin
        .batch_execute(
            "create table invoicing.test_outage (on_ boolean);
             create table invoicing.test_seen (n bigserial primary key, deal_id uuid);
             grant select on invoicing.test_outage to tessera_invoicing;
             grant insert on invoicing.test_seen to tessera_invoicing;
             grant usage on sequence invoicing.test_seen_n_seq to tessera_invoicing;
             create function invoicing.test_refuse() returns trigger language plpgsql as $$
             begin
                 if exists (select 1 from invoicing.test_outage) then
                     raise exception 'invoicing is down for the test';
                 end if;
                 insert into invoicing.test_seen (deal_id) values (new.deal_id);
                 return new;
             end $$;
             create trigger test_refuse before insert on invoicing.invoices
                 for each row execute function invoicing.test_refuse();
             insert into invoicing.test_outage values (true);",
        )
        .await
        .expect("outage switch");
    let worker = start(&settings(&app), &admin).await;
    let mut dispatch = DispatchSettings::new(
        cluster().endpoint.pg_config("tessera_replication", &app.db.name),
        subscribers(),
    );
    dispatch.base_backoff = Duration::from_millis(20);
    dispatch.max_backoff = Duration::from_millis(200);
    dispatch.max_attempts = 10_000;
    dispatch::register(&dispatch.connection, &dispatch.subscribers).await.expect("register");
    let dispatcher = tokio::spawn(dispatch::run(dispatch));

    let mut deals = Vec::new();
    for i in 1..=5 {
        let deal = app
            .create(
                "deals",
                &key,
                json!({"title": format!("Deal {i}"), "amount": i * 100, "owner_email": "ana@acme.example"}),
            )
            .await;
        app.patch(&format!("/v1/crm/deals/{deal}"), &key, json!({"stage": "won"})).await;
        deals.push(deal);
    }
    assert_eq!(wait_for(&admin, "select count(*) from hr.commissions", 5).await, 5, "HR keeps up");
    assert_eq!(count(&admin, "select count(*) from invoicing.invoices").await, 0, "invoicing is down");
    assert_eq!(count(&admin, "select count(*) from events.dead_letters").await, 0, "retried, not parked");

    admin.execute("delete from invoicing.test_outage", &[]).await.expect("recover");
    assert_eq!(wait_for(&admin, "select count(*) from invoicing.invoices", 5).await, 5, "caught up");
    // Handled in commit order (the trigger records the order of the successful inserts), once each.
    let handled: Vec<String> = admin
        .query("select deal_id::text from invoicing.test_seen order by n", &[])
        .await
        .expect("handled")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(handled, deals, "one invoice per win, in the order the wins were committed");
    dispatcher.abort();
    worker.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_without_a_module_gets_none_of_its_effects_until_it_enables_it() {
    let mut app = TestApp::spawn().await;
    let (tenant, key) = app.tenant("acme").await;
    let admin = connect(&cluster().superuser, &app.db.name).await;
    salesperson(&admin, tenant, "ana@acme.example").await;
    tessera_core::admin::set_modules(&mut app.owner, tenant, &["invoicing", "hr"], false)
        .await
        .expect("disable");
    assert!(app.get("/v1/invoicing/invoices", &key).await.status == 403, "disabled at once");
    app.get("/v1/hr/commissions", &key).await.assert_problem(403, "module_not_enabled");
    let (worker, dispatcher) = pipeline(&app, &admin).await;

    let deal = app
        .create("deals", &key, json!({"title": "Unbilled", "amount": 50, "owner_email": "ana@acme.example"}))
        .await;
    app.patch(&format!("/v1/crm/deals/{deal}"), &key, json!({"stage": "won"})).await;
    wait_until_dispatched(&admin, "select count(*) from events.log where type = 'deal.closed.won'", 1).await;
    assert_eq!(count(&admin, "select count(*) from invoicing.invoices").await, 0);
    assert_eq!(count(&admin, "select count(*) from hr.commissions").await, 0);

    let enabled = tessera_core::admin::set_modules(&mut app.owner, tenant, &["invoicing", "hr"], true)
        .await
        .expect("enable");
    assert_eq!(enabled, ["crm", "hr", "invoicing"]);
    app.patch(&format!("/v1/crm/deals/{deal}"), &key, json!({"stage": "lost"})).await;
    app.patch(&format!("/v1/crm/deals/{deal}"), &key, json!({"stage": "won"})).await;
    assert_eq!(wait_for(&admin, "select count(*) from invoicing.invoices", 1).await, 1);
    assert_eq!(wait_for(&admin, "select count(*) from hr.commissions", 1).await, 1);
    assert_eq!(app.get("/v1/invoicing/invoices", &key).await.status, 200);
    dispatcher.abort();
    worker.abort();
}
