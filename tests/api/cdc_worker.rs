//! The CDC worker against a real slot: committed rows become events in `events.log` exactly once, however
//! often the worker is killed; an idle publication still advances the slot; a lost slot is refused.

use std::time::{Duration, Instant};

use serde_json::json;
use tessera_cdc::worker::{self, CdcError, CdcSettings};
use tokio_postgres::Client;

use crate::support::{TestApp, cluster, connect};

pub fn settings(app: &TestApp) -> CdcSettings {
    let endpoint = &cluster().endpoint;
    CdcSettings {
        host: endpoint.socket_dir.display().to_string(),
        port: endpoint.port,
        database: app.db.name.clone(),
        replication_user: "tessera_replication".into(),
        replication_password: String::new(),
        writer: endpoint.pg_config("tessera_replication", &app.db.name),
        slot: format!("cdc_{}", &app.db.name[2..14]),
        publication: "tessera_cdc".into(),
        rules: crate::support::modules().iter().flat_map(|m| m.event_rules()).collect(),
    }
}

pub fn spawn(settings: &CdcSettings) -> tokio::task::JoinHandle<Result<(), CdcError>> {
    let settings = settings.clone();
    tokio::spawn(async move { worker::run(&settings).await })
}

pub async fn count(admin: &Client, sql: &str) -> i64 {
    admin.query_one(sql, &[]).await.expect("count").get(0)
}

/// Starts a worker and waits until it holds its slot: changes committed before the slot exists are not its.
pub async fn start(settings: &CdcSettings, admin: &Client) -> tokio::task::JoinHandle<Result<(), CdcError>> {
    let handle = spawn(settings);
    // Streaming: a walsender holds the slot (not the backend still creating it) and the slot is recorded.
    let streaming = format!(
        "select count(*) from pg_replication_slots s join pg_stat_replication r on r.pid = s.active_pid
          where s.slot_name = '{0}' and exists (select 1 from events.cdc_slots c where c.slot_name = '{0}')",
        settings.slot
    );
    assert_eq!(wait_for(admin, &streaming, 1).await, 1, "the worker holds its slot");
    handle
}

/// Waits, with a deadline, until `sql` counts at least `want`.
pub async fn wait_for(admin: &Client, sql: &str, want: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = count(admin, sql).await;
        if n >= want || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_changes_become_events_in_commit_order() {
    let mut app = TestApp::spawn().await;
    let (tenant, key) = app.tenant("acme").await;
    let admin = connect(&cluster().superuser, &app.db.name).await;
    let cdc = settings(&app);
    let handle = start(&cdc, &admin).await;

    let company = app.create("companies", &key, json!({"name": "Globex"})).await;
    let deal = app.create("deals", &key, json!({"title": "Hammocks", "company_id": company})).await;
    assert_eq!(app.patch(&format!("/v1/crm/deals/{deal}"), &key, json!({"stage": "won"})).await.status, 200);

    let n = wait_for(&admin, "select count(*) from events.log", 4).await;
    assert_eq!(n, 4, "three changes and the win they include");
    let rows =
        admin.query("select tenant_id, type, data from events.log order by seq", &[]).await.expect("log");
    let types: Vec<String> = rows.iter().map(|r| r.get(1)).collect();
    assert_eq!(types, ["crm.companies.insert", "crm.deals.insert", "crm.deals.update", "deal.closed.won"]);
    assert!(rows.iter().all(|r| r.get::<_, uuid::Uuid>(0) == tenant.as_uuid()));
    let update: serde_json::Value = rows[2].get(2);
    assert_eq!(
        (update["old"]["stage"].as_str(), update["new"]["stage"].as_str()),
        (Some("lead"), Some("won"))
    );

    // Acknowledged once durable: the slot's confirmed position reaches the last commit.
    let confirmed_ok = wait_for(
        &admin,
        &format!(
            "select count(*) from pg_replication_slots where slot_name = '{}'
               and confirmed_flush_lsn >= (select max(commit_lsn) from events.log)",
            cdc.slot
        ),
        1,
    )
    .await;
    assert_eq!(confirmed_ok, 1);
    handle.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_worker_at_any_moment_loses_and_duplicates_nothing() {
    let mut app = TestApp::spawn().await;
    let (_, key) = app.tenant("acme").await;
    let admin = connect(&cluster().superuser, &app.db.name).await;
    let cdc = settings(&app);
    let mut handle = start(&cdc, &admin).await;
    let deal = app.create("deals", &key, json!({"title": "Churn"})).await;

    const UPDATES: i64 = 400;
    for i in 0..UPDATES {
        admin
            .execute(
                "update crm.deals set amount = $1::text::numeric where id = $2::text::uuid",
                &[&i.to_string(), &deal],
            )
            .await
            .expect("update");
        // Kill it at uneven points, mid-stream, and start another.
        if i % 37 == 11 || i % 53 == 0 {
            handle.abort();
            let _ = handle.await;
            handle = spawn(&cdc);
        }
    }
    let updates =
        wait_for(&admin, "select count(*) from events.log where type = 'crm.deals.update'", UPDATES).await;
    assert_eq!(updates, UPDATES, "every update once");
    let total = count(&admin, "select count(*) from events.log").await;
    let distinct = count(&admin, "select count(distinct (commit_lsn, position)) from events.log").await;
    assert_eq!(total, UPDATES + 1, "the insert and every update, nothing twice");
    assert_eq!(total, distinct);
    let amounts: Vec<String> = admin
        .query(
            "select data->'new'->>'amount' from events.log where type = 'crm.deals.update' order by seq",
            &[],
        )
        .await
        .expect("amounts")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let expected: Vec<String> = (0..UPDATES).map(|i| format!("{i}.00")).collect();
    assert_eq!(amounts, expected, "in commit order");
    handle.abort();
}

/// What a slot sends again (its position moved back after a Postgres crash, or an operator points the
/// worker at an older copy of it) is recognised by its commit LSN and skipped whole: nothing is written
/// twice, the worker does not stop on the log's primary key, and what is new after it is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_sent_again_are_skipped_not_written_twice() {
    sent_again_is_skipped(true).await;
}

/// The same for a log written before the high-water mark was kept (an upgrade): the log's last event is
/// the mark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_without_a_high_water_mark_is_not_written_twice_either() {
    sent_again_is_skipped(false).await;
}

async fn sent_again_is_skipped(mark_kept: bool) {
    let mut app = TestApp::spawn().await;
    let (tenant, key) = app.tenant("acme").await;
    let admin = connect(&cluster().superuser, &app.db.name).await;
    let cdc = settings(&app);
    worker::prepare(&cdc).await.expect("slot");
    // A copy of the slot from before anything happened: it will send everything below again.
    let again = CdcSettings { slot: format!("{}_again", cdc.slot), ..cdc.clone() };
    admin
        .execute("select pg_copy_logical_replication_slot($1, $2)", &[&cdc.slot, &again.slot])
        .await
        .expect("copy the slot");
    let first = start(&cdc, &admin).await;
    let company = app.create("companies", &key, json!({"name": "Globex"})).await;
    let deal = app.create("deals", &key, json!({"title": "Hammocks", "company_id": company})).await;
    let r = app.patch(&format!("/v1/crm/deals/{deal}"), &key, json!({"stage": "won"})).await;
    assert_eq!(r.status, 200);
    // And one source transaction larger than the worker's chunks.
    admin
        .execute(
            "insert into crm.companies (tenant_id, name) select $1, 'Bulk ' || g from generate_series(1, 1500) g",
            &[&tenant.as_uuid()],
        )
        .await
        .expect("bulk insert");
    // Two inserts, an update and the deal.closed.won it yields, and the bulk insert.
    let logged = 4 + 1500;
    assert_eq!(wait_for(&admin, "select count(*) from events.log", logged).await, logged);
    first.abort();
    let _ = first.await;
    let written: String = admin
        .query_one("select max(commit_lsn)::text from events.log", &[])
        .await
        .expect("the log's last commit")
        .get(0);
    let marked: Option<String> = admin
        .query_one("select max(written_lsn)::text from events.cdc_slots", &[])
        .await
        .expect("high-water mark")
        .get(0);
    assert_eq!(marked.as_deref(), Some(written.as_str()), "the mark is the last source commit in the log");
    if !mark_kept {
        admin
            .execute("update events.cdc_slots set written_lsn = null, system_id = null", &[])
            .await
            .expect("forget the mark");
    }

    let second = start(&again, &admin).await;
    // The copy has sent everything up to the log's last commit again once it has acknowledged past it.
    let past = format!(
        "select count(*) from pg_replication_slots where slot_name = '{}' and confirmed_flush_lsn >= '{written}'",
        again.slot
    );
    assert_eq!(wait_for(&admin, &past, 1).await, 1, "the copy caught up");
    assert_eq!(count(&admin, "select count(*) from events.log").await, logged, "nothing written twice");
    assert!(!second.is_finished(), "the worker skipped what it had, without failing");
    let r = app.patch(&format!("/v1/crm/deals/{deal}"), &key, json!({"amount": 7})).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        wait_for(&admin, "select count(*) from events.log", logged + 1).await,
        logged + 1,
        "new changes still flow"
    );
    assert_eq!(count(&admin, "select count(*) - count(distinct id) from events.log").await, 0);
    second.abort();
    let _ = second.await;
}

/// Marks of another server's WAL (a database restored from a dump into another cluster) say nothing about
/// this one's: trusting them would skip this server's changes until its WAL got past them. They are
/// ignored, and so is a log from before marks were kept whose last event is ahead of this server's WAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marks_of_another_server_skip_nothing() {
    for foreign in [
        "update events.cdc_slots set written_lsn = 'FFFF/0', system_id = 42",
        "with e as (select gen_random_uuid() as id, events.log_end() + 1 as seq)
         insert into events.log_chunks (tenant_id, first_seq, last_seq, min_id, max_id, ids, commit_lsns, positions,
                                        types, commit_times, data)
         select gen_random_uuid(), seq, seq, id, id, array[id], array['FFFF/0'::pg_lsn], array[0],
                array['restored.event'], array[now()], array['{}'] from e",
    ] {
        let mut app = TestApp::spawn().await;
        let (_, key) = app.tenant("acme").await;
        let admin = connect(&cluster().superuser, &app.db.name).await;
        let cdc = settings(&app);
        worker::prepare(&cdc).await.expect("slot");
        admin.execute(foreign, &[]).await.expect("another server's mark");
        let before = count(&admin, "select count(*) from events.log").await;
        let handle = start(&cdc, &admin).await;
        app.create("companies", &key, json!({"name": "Globex"})).await;
        assert_eq!(
            wait_for(&admin, "select count(*) from events.log", before + 1).await,
            before + 1,
            "a new change is written ({foreign})"
        );
        assert!(!handle.is_finished());
        handle.abort();
        let _ = handle.await;
    }
}

/// A mark of this server ahead of its WAL cannot have been written by a worker: it refuses to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mark_ahead_of_the_servers_wal_is_refused() {
    let app = TestApp::spawn().await;
    let admin = connect(&cluster().superuser, &app.db.name).await;
    let cdc = settings(&app);
    worker::prepare(&cdc).await.expect("slot");
    admin
        .execute(
            "update events.cdc_slots
                set written_lsn = 'FFFF/0', system_id = (select system_identifier from pg_control_system())",
            &[],
        )
        .await
        .expect("an impossible mark");
    let run =
        tokio::time::timeout(Duration::from_secs(30), worker::run(&cdc)).await.expect("refused at once");
    let err = run.expect_err("refused");
    assert!(matches!(err, CdcError::MarkAhead { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_publication_still_advances_the_slot() {
    let app = TestApp::spawn().await;
    let admin = connect(&cluster().superuser, &app.db.name).await;
    let cdc = settings(&app);
    let handle = start(&cdc, &admin).await;
    admin.batch_execute("create table public.noise (n int)").await.expect("noise table");
    for i in 0..50 {
        admin.execute("insert into public.noise values ($1)", &[&i]).await.expect("noise");
    }
    let target: String = admin.query_one("select pg_current_wal_lsn()::text", &[]).await.expect("lsn").get(0);
    let advanced = wait_for(
        &admin,
        &format!(
            "select count(*) from pg_replication_slots where slot_name = '{}' and confirmed_flush_lsn >= '{target}'",
            cdc.slot
        ),
        1,
    )
    .await;
    assert_eq!(advanced, 1, "keepalive positions are acknowledged while idle");
    assert_eq!(count(&admin, "select count(*) from events.log").await, 0);
    handle.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_slot_is_refused_not_recreated() {
    let app = TestApp::spawn().await;
    let admin = connect(&cluster().superuser, &app.db.name).await;
    let cdc = settings(&app);
    let handle = start(&cdc, &admin).await;
    handle.abort();
    let _ = handle.await;
    // Wait for the walsender to let go, then lose the slot.
    wait_for(
        &admin,
        &format!("select count(*) from pg_replication_slots where slot_name = '{}' and not active", cdc.slot),
        1,
    )
    .await;
    admin.query_one("select pg_drop_replication_slot($1)", &[&cdc.slot]).await.expect("drop");
    let err = worker::run(&cdc).await.expect_err("must refuse");
    assert!(matches!(err, CdcError::SlotLost { .. }), "{err}");
    let slots =
        count(&admin, &format!("select count(*) from pg_replication_slots where slot_name = '{}'", cdc.slot))
            .await;
    assert_eq!(slots, 0, "no slot was recreated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_carry_keys_not_false_nulls_and_a_deleted_tenant_stalls_nobody() {
    let mut app = TestApp::spawn().await;
    let (tenant_a, key_a) = app.tenant("tenant-a").await;
    let (tenant_b, key_b) = app.tenant("tenant-b").await;
    let admin = connect(&cluster().superuser, &app.db.name).await;
    let cdc = settings(&app);
    let handle = start(&cdc, &admin).await;

    let company_a = app.create("companies", &key_a, json!({"name": "A Corp", "domain": "a.example"})).await;
    app.create("companies", &key_b, json!({"name": "B Corp"})).await;
    assert_eq!(app.delete(&format!("/v1/crm/companies/{company_a}"), &key_a).await.status, 204);
    // Deleting tenant B cascades into its rows; their delete events must not block anyone.
    app.owner
        .execute("delete from core.tenants where id = $1", &[&tenant_b.as_uuid()])
        .await
        .expect("delete tenant");
    app.create("companies", &key_a, json!({"name": "A Again"})).await;

    let n = wait_for(&admin, "select count(*) from events.log", 5).await;
    assert_eq!(n, 5, "two inserts, A's delete, B's cascaded delete, A's last insert");
    let delete: serde_json::Value = admin
        .query_one(
            "select data from events.log where type = 'crm.companies.delete' and tenant_id = $1",
            &[&tenant_a.as_uuid()],
        )
        .await
        .expect("delete event")
        .get(0);
    let old = delete["old"].as_object().expect("old key");
    let mut keys: Vec<&str> = old.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["id", "tenant_id"], "a key-only old row has the key and no invented nulls: {delete}");

    // Row-level security on the log: bound to A, the owner sees A's events only.
    let owner = app.db.connect_as("tessera_owner").await;
    owner.batch_execute("begin").await.expect("begin");
    owner
        .execute("select set_config('tessera.tenant_id', $1, true)", &[&tenant_a.to_string()])
        .await
        .expect("bind");
    let tenants: Vec<uuid::Uuid> = owner
        .query("select distinct tenant_id from events.log", &[])
        .await
        .expect("log")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(tenants, [tenant_a.as_uuid()]);
    owner.batch_execute("rollback").await.expect("rollback");
    handle.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_transaction_across_tenants_is_written_in_chunks_each_row_under_its_tenant() {
    let mut app = TestApp::spawn().await;
    let (tenant_a, _) = app.tenant("tenant-a").await;
    let (tenant_b, _) = app.tenant("tenant-b").await;
    let admin = connect(&cluster().superuser, &app.db.name).await;
    let cdc = settings(&app);
    let handle = start(&cdc, &admin).await;

    // One source transaction of 2,500 rows, tenants interleaved, spanning three of the worker's chunks.
    admin
        .execute(
            "insert into crm.companies (tenant_id, name)
             select case when g % 3 = 0 then $1::uuid else $2::uuid end, 'Company ' || g
               from generate_series(1, 2500) g",
            &[&tenant_a.as_uuid(), &tenant_b.as_uuid()],
        )
        .await
        .expect("bulk insert");
    let n = wait_for(&admin, "select count(*) from events.log", 2500).await;
    assert_eq!(n, 2500);
    let misfiled =
        count(&admin, "select count(*) from events.log where tenant_id::text <> data->'new'->>'tenant_id'")
            .await;
    assert_eq!(misfiled, 0, "every event under the tenant of its row");
    let a =
        count(&admin, &format!("select count(*) from events.log where tenant_id = '{}'", tenant_a.as_uuid()))
            .await;
    assert_eq!(a, 833);
    let positions = count(&admin, "select count(distinct position) from events.log").await;
    assert_eq!(positions, 2500, "one source transaction, every change its own position");
    let commits = count(&admin, "select count(distinct commit_lsn) from events.log").await;
    assert_eq!(commits, 1);
    handle.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deal_closed_won_fires_once_per_transition_however_the_row_changes() {
    let mut app = TestApp::spawn().await;
    let (_, key) = app.tenant("acme").await;
    let admin = connect(&cluster().superuser, &app.db.name).await;
    let cdc = settings(&app);
    let handle = start(&cdc, &admin).await;

    let deal = app.create("deals", &key, json!({"title": "Anvils"})).await;
    let path = format!("/v1/crm/deals/{deal}");
    for body in [
        json!({"stage": "won"}),         // a win
        json!({"title": "Anvils, 200"}), // editing a won deal: no new win
        json!({"stage": "lost"}),
        json!({"stage": "won"}), // won again: a second win
    ] {
        assert_eq!(app.patch(&path, &key, body).await.status, 200);
    }
    // Plain SQL, not the API: inserted as won is a win too.
    admin
        .execute(
            "insert into crm.deals (tenant_id, title, stage) select tenant_id, 'Direct', 'won' from crm.deals where id = $1::text::uuid",
            &[&deal],
        )
        .await
        .expect("insert as won");
    let changes = wait_for(&admin, "select count(*) from events.log where type like 'crm.deals.%'", 6).await;
    assert_eq!(changes, 6);
    let wins = wait_for(&admin, "select count(*) from events.log where type = 'deal.closed.won'", 3).await;
    assert_eq!(wins, 3, "two transitions of one deal, one deal inserted as won");
    let distinct = count(&admin, "select count(distinct id) from events.log").await;
    assert_eq!(distinct, count(&admin, "select count(*) from events.log").await);
    handle.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_needing_old_values_on_a_table_without_full_identity_is_refused_at_start() {
    let app = TestApp::spawn().await;
    let admin = connect(&cluster().superuser, &app.db.name).await;
    admin.batch_execute("alter table crm.deals replica identity default").await.expect("identity");
    let err = worker::run(&settings(&app)).await.expect_err("must refuse");
    assert!(matches!(err, CdcError::RuleNeedsOldValues { rule: "deal.closed.won", .. }), "{err}");
    assert!(err.to_string().contains("replica identity full"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_worker_stands_by_and_takes_over_when_the_first_dies() {
    let mut app = TestApp::spawn().await;
    let (_, key) = app.tenant("acme").await;
    let admin = connect(&cluster().superuser, &app.db.name).await;
    let cdc = settings(&app);
    let first = start(&cdc, &admin).await;
    let second = spawn(&cdc);
    // The standby waits on the worker lock and has not touched the slot.
    let waiting = wait_for(
        &admin,
        &format!(
            "select count(*) from pg_locks where locktype = 'advisory' and not granted
               and objid = {} and database = (select oid from pg_database where datname = current_database())",
            worker::WORKER_LOCK & 0xffff_ffff
        ),
        1,
    )
    .await;
    assert_eq!(waiting, 1, "the second worker stands by");
    let deal = app.create("deals", &key, json!({"title": "Handover"})).await;
    assert_eq!(wait_for(&admin, "select count(*) from events.log", 1).await, 1);

    first.abort();
    let _ = first.await;
    let started = Instant::now();
    let active =
        format!("select count(*) from pg_replication_slots where slot_name = '{}' and active", cdc.slot);
    let mut taken = false;
    while started.elapsed() < Duration::from_secs(10) {
        // The first one's walsender may linger a moment; then the standby holds the slot.
        if count(&admin, &active).await == 1 && !second.is_finished() {
            taken = true;
            let r = app.patch(&format!("/v1/crm/deals/{deal}"), &key, json!({"amount": 5})).await;
            assert_eq!(r.status, 200);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(taken, "the standby took over within seconds");
    assert_eq!(wait_for(&admin, "select count(*) from events.log", 2).await, 2, "events flow again");
    assert!(!second.is_finished());
    second.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_toasted_value_is_never_turned_into_null() {
    let mut app = TestApp::spawn().await;
    let (tenant, _) = app.tenant("acme").await;
    let admin = connect(&cluster().superuser, &app.db.name).await;
    // A module-like table with a value large and random enough to be stored out of line (TOAST).
    admin
        .batch_execute(
            "create table crm.test_notes (tenant_id uuid not null, id int not null, body text, n int,
                                          primary key (tenant_id, id));
             create table crm.test_notes_full (like crm.test_notes including all);
             alter table crm.test_notes_full replica identity full;
             alter publication tessera_cdc add table crm.test_notes, crm.test_notes_full;",
        )
        .await
        .expect("table");
    let cdc = settings(&app);
    let handle = start(&cdc, &admin).await;
    let body: String = admin
        .query_one("select string_agg(md5(random()::text), '') from generate_series(1, 4000)", &[])
        .await
        .expect("random text")
        .get(0);
    let tenant = tenant.as_uuid();
    for table in ["crm.test_notes", "crm.test_notes_full"] {
        admin
            .execute(&format!("insert into {table} values ($1, 1, $2, 0)"), &[&tenant, &body])
            .await
            .expect("insert");
        admin.execute(&format!("update {table} set n = 1 where id = 1"), &[]).await.expect("update");
    }
    let toasted: i64 = count(
        &admin,
        "select count(*) from pg_class where oid = 'crm.test_notes'::regclass and reltoastrelid <> 0
           and pg_relation_size(reltoastrelid) > 0",
    )
    .await;
    assert_eq!(toasted, 1, "the body is stored out of line");
    assert_eq!(wait_for(&admin, "select count(*) from events.log", 4).await, 4);

    let update = |table: &'static str| {
        let admin = &admin;
        async move {
            let row = admin
                .query_one("select data from events.log where type = $1", &[&format!("{table}.update")])
                .await
                .expect("update event");
            row.get::<_, serde_json::Value>(0)
        }
    };
    // Default identity: the unchanged value is not sent; the event says so and carries no null for it.
    let plain = update("crm.test_notes").await;
    assert_eq!(plain["new"]["n"], 1);
    assert!(plain["new"].get("body").is_none(), "no false null: {}", &plain["new"]);
    assert_eq!(plain["unchanged_toast"], json!(["body"]));
    // Full identity: the old row carries it, so the new row is complete.
    let full = update("crm.test_notes_full").await;
    assert_eq!(full["new"]["body"].as_str(), Some(body.as_str()));
    assert!(full.get("unchanged_toast").is_none());
    handle.abort();
}
