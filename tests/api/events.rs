//! The dispatcher against a real log: subscribers get every event once, in commit order, with effects and
//! cursor committed together; a failing subscriber holds up no other and catches up in order; a poison event
//! is parked as a dead letter and replayed on request.
//!
//! These tests subscribe handlers of their own (writing to a test table in the test database) so that what
//! the dispatcher did can be counted exactly; the modules' own subscribers are tested end to end in
//! `flows.rs`.

use std::time::Duration;

use serde_json::json;
use tessera_cdc::dispatch::{self, DispatchSettings, Subscriber};
use tessera_core::{Effect, EffectTx, Event, HandlerError, Subscription};
use tokio_postgres::Client;

use crate::cdc_worker::{count, settings, start, wait_for};
use crate::support::{TestApp, cluster, connect};

/// A table the test handlers write to (as tessera_crm), and a switch that makes them fail.
async fn effects_table(admin: &Client) {
    admin
        .batch_execute(
            "create table crm.test_effects (
                 n bigserial primary key, subscriber text not null, seq bigint not null, event_id uuid not null,
                 tenant_id uuid not null, amount text, unique (subscriber, event_id));
             create table crm.test_faults (subscriber text primary key, amount text);
             grant select, insert on crm.test_effects, crm.test_faults to tessera_crm;
             grant usage on sequence crm.test_effects_n_seq to tessera_crm;",
        )
        .await
        .expect("test tables");
}

fn amount(event: &Event) -> Option<String> {
    event.new_value("amount").map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
}

/// Records the event unless a fault is switched on for this subscriber (for every amount, or one).
async fn record(tx: &EffectTx<'_>, subscriber: &str, event: &Event) -> Result<(), HandlerError> {
    let amount = amount(event);
    let fault = tx
        .query_opt(
            "select 1 from crm.test_faults where subscriber = $1 and (amount is null or amount = $2)",
            &[&subscriber, &amount],
        )
        .await?;
    if fault.is_some() {
        return Err(HandlerError::definite(format!("fault injected for {subscriber} at {amount:?}")));
    }
    tx.execute(
        "insert into crm.test_effects (subscriber, seq, event_id, tenant_id, amount) values ($1, $2, $3, $4, $5)",
        &[&subscriber, &event.seq, &event.id, &event.tenant_id, &amount],
    )
    .await?;
    Ok(())
}

fn steady<'a>(tx: &'a EffectTx<'a>, event: &'a Event) -> Effect<'a> {
    Box::pin(record(tx, "steady", event))
}

fn flaky<'a>(tx: &'a EffectTx<'a>, event: &'a Event) -> Effect<'a> {
    Box::pin(record(tx, "flaky", event))
}

fn late<'a>(tx: &'a EffectTx<'a>, event: &'a Event) -> Effect<'a> {
    Box::pin(record(tx, "late", event))
}

/// Swallows the database error of a broken statement at amount 7.00 and claims success: the transaction is
/// aborted all the same, and the dispatcher must notice.
fn swallowing<'a>(tx: &'a EffectTx<'a>, event: &'a Event) -> Effect<'a> {
    Box::pin(async move {
        if amount(event).as_deref() == Some("7.00") {
            let _ = tx.execute("select 1 / 0", &[]).await;
            return Ok(());
        }
        record(tx, "swallowing", event).await
    })
}

fn subscriber(
    name: &'static str,
    handle: for<'a> fn(&'a EffectTx<'a>, &'a Event) -> Effect<'a>,
) -> Subscriber {
    Subscriber { module: "crm", subscription: Subscription::new(name, &["crm.deals.update"], handle) }
}

/// Settings for the test's dispatcher, its subscribers registered (at the current end of the log).
async fn dispatch_settings(app: &TestApp, subscribers: Vec<Subscriber>) -> DispatchSettings {
    let mut s =
        DispatchSettings::new(cluster().endpoint.pg_config("tessera_replication", &app.db.name), subscribers);
    dispatch::register(&s.connection, &s.subscribers).await.expect("register");
    s.base_backoff = Duration::from_millis(20);
    s.max_backoff = Duration::from_millis(200);
    s.max_attempts = 1000;
    s.batch = 50;
    s
}

/// The effects of one subscriber, in the order they were written, as (seq, amount).
async fn effects(admin: &Client, subscriber: &str) -> Vec<(i64, Option<String>)> {
    admin
        .query("select seq, amount from crm.test_effects where subscriber = $1 order by n", &[&subscriber])
        .await
        .expect("effects")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn wait_effects(admin: &Client, subscriber: &str, want: i64) -> i64 {
    wait_for(admin, &format!("select count(*) from crm.test_effects where subscriber = '{subscriber}'"), want)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_transactions_reach_subscribers_once_in_commit_order_despite_kills() {
    let mut app = TestApp::spawn().await;
    let (_, key) = app.tenant("acme").await;
    let admin = connect(&cluster().superuser, &app.db.name).await;
    effects_table(&admin).await;
    let cdc = settings(&app);
    let worker = start(&cdc, &admin).await;
    let deals = [
        app.create("deals", &key, json!({"title": "One"})).await,
        app.create("deals", &key, json!({"title": "Two"})).await,
    ];
    let settings = dispatch_settings(&app, vec![subscriber("test.steady", steady)]).await;
    let mut dispatcher = tokio::spawn(dispatch::run(settings.clone()));

    // Two sessions whose transactions interleave: each updates its own deal, and their commits alternate
    // in an order the test controls (the second begins before the first commits).
    const ROUNDS: i64 = 150;
    let (a, b) = (
        connect(&cluster().superuser, &app.db.name).await,
        connect(&cluster().superuser, &app.db.name).await,
    );
    let update = "update crm.deals set amount = $1::text::numeric where id = $2::text::uuid";
    for i in 0..ROUNDS {
        a.batch_execute("begin").await.expect("begin");
        a.execute(update, &[&format!("{}", 2 * i), &deals[0]]).await.expect("update a");
        b.batch_execute("begin").await.expect("begin");
        b.execute(update, &[&format!("{}", 2 * i + 1), &deals[1]]).await.expect("update b");
        // Odd rounds commit the later-begun transaction first.
        let (first, second) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        first.batch_execute("commit").await.expect("commit");
        second.batch_execute("commit").await.expect("commit");
        if i % 41 == 7 {
            dispatcher.abort();
            let _ = dispatcher.await;
            dispatcher = tokio::spawn(dispatch::run(settings.clone()));
        }
    }
    let n = wait_effects(&admin, "steady", 2 * ROUNDS).await;
    dispatcher.abort();
    worker.abort();
    assert_eq!(n, 2 * ROUNDS, "every update handled once");
    let got = effects(&admin, "steady").await;
    let seqs: Vec<i64> = got.iter().map(|(s, _)| *s).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "handled in log order");
    let amounts: Vec<String> = got.iter().map(|(_, a)| a.clone().expect("amount")).collect();
    let expected: Vec<String> = (0..ROUNDS)
        .flat_map(|i| if i % 2 == 0 { [2 * i, 2 * i + 1] } else { [2 * i + 1, 2 * i] })
        .map(|v| format!("{v}.00"))
        .collect();
    assert_eq!(amounts, expected, "in commit order, not begin order");
    let cursor = count(&admin, "select position from events.subscribers where name = 'test.steady'").await;
    assert!(cursor >= *seqs.last().expect("some"), "the cursor moved with the effects");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_subscriber_holds_up_nobody_and_catches_up_in_order() {
    let mut app = TestApp::spawn().await;
    let (_, key) = app.tenant("acme").await;
    let admin = connect(&cluster().superuser, &app.db.name).await;
    effects_table(&admin).await;
    let worker = start(&settings(&app), &admin).await;
    let deal = app.create("deals", &key, json!({"title": "Flaky"})).await;
    let dispatcher = tokio::spawn(dispatch::run(
        dispatch_settings(&app, vec![subscriber("test.steady", steady), subscriber("test.flaky", flaky)])
            .await,
    ));

    admin.execute("insert into crm.test_faults (subscriber) values ('flaky')", &[]).await.expect("fault");
    for i in 1..=20 {
        let r = app.patch(&format!("/v1/crm/deals/{deal}"), &key, json!({"amount": i})).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(wait_effects(&admin, "steady", 20).await, 20, "the healthy subscriber keeps up");
    assert_eq!(effects(&admin, "flaky").await.len(), 0, "the failing one has done nothing");
    assert_eq!(count(&admin, "select count(*) from events.dead_letters").await, 0, "retrying, not parked");

    admin.execute("delete from crm.test_faults", &[]).await.expect("recover");
    assert_eq!(wait_effects(&admin, "flaky", 20).await, 20, "it catches up after recovering");
    let amounts: Vec<String> =
        effects(&admin, "flaky").await.into_iter().map(|(_, a)| a.expect("amount")).collect();
    let expected: Vec<String> = (1..=20).map(|i| format!("{i}.00")).collect();
    assert_eq!(amounts, expected, "in order");
    dispatcher.abort();
    worker.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_parked_then_replayed_once() {
    let mut app = TestApp::spawn().await;
    let (tenant, key) = app.tenant("acme").await;
    let admin = connect(&cluster().superuser, &app.db.name).await;
    effects_table(&admin).await;
    let worker = start(&settings(&app), &admin).await;
    let deal = app.create("deals", &key, json!({"title": "Poison"})).await;
    let mut settings = dispatch_settings(&app, vec![subscriber("test.flaky", flaky)]).await;
    settings.max_attempts = 3;
    let dispatcher = tokio::spawn(dispatch::run(settings.clone()));

    admin
        .execute("insert into crm.test_faults (subscriber, amount) values ('flaky', '13.00')", &[])
        .await
        .expect("fault");
    for amount in [12, 13, 14] {
        let r = app.patch(&format!("/v1/crm/deals/{deal}"), &key, json!({"amount": amount})).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(wait_effects(&admin, "flaky", 2).await, 2, "the events around the poison one are handled");
    assert_eq!(
        effects(&admin, "flaky").await.into_iter().map(|(_, a)| a.expect("amount")).collect::<Vec<_>>(),
        ["12.00", "14.00"]
    );

    let events = connect("tessera_replication", &app.db.name).await;
    let letters = dispatch::dead_letters(&events, None).await.expect("dead letters");
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!((letter.subscriber.as_str(), letter.kind.as_str()), ("test.flaky", "crm.deals.update"));
    assert_eq!(letter.tenant_id, tenant.as_uuid());
    assert_eq!(letter.attempts, 3);
    assert!(letter.error.contains("fault injected"), "{}", letter.error);

    // Still failing: the replay records it and leaves it open.
    let subscribers = settings.subscribers.clone();
    let report = dispatch::replay(&events, &subscribers, None, None).await.expect("replay");
    assert_eq!((report.replayed.len(), report.failed.len()), (0, 1));
    assert_eq!(dispatch::dead_letters(&events, None).await.expect("open")[0].attempts, 4);

    admin.execute("delete from crm.test_faults", &[]).await.expect("fix");
    let report = dispatch::replay(&events, &subscribers, Some("test.flaky"), None).await.expect("replay");
    assert_eq!(report.replayed, [("test.flaky".to_owned(), letter.seq)]);
    assert!(dispatch::dead_letters(&events, None).await.expect("open").is_empty());
    let report = dispatch::replay(&events, &subscribers, None, None).await.expect("again");
    assert!(report.replayed.is_empty(), "replayed once only");
    let mut amounts: Vec<String> =
        effects(&admin, "flaky").await.into_iter().map(|(_, a)| a.expect("amount")).collect();
    amounts.sort();
    assert_eq!(amounts, ["12.00", "13.00", "14.00"], "the parked event's effect exactly once");
    assert!(matches!(
        dispatch::replay(&events, &subscribers, Some("nobody.here"), None).await,
        Err(dispatch::ReplayError::UnknownSubscriber(_))
    ));
    dispatcher.abort();
    worker.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_with_failing_handlers_commits_everything_else_once() {
    let mut app = TestApp::spawn().await;
    let (_, key) = app.tenant("acme").await;
    let admin = connect(&cluster().superuser, &app.db.name).await;
    effects_table(&admin).await;
    let worker = start(&settings(&app), &admin).await;
    let deal = app.create("deals", &key, json!({"title": "Backlog"})).await;
    let mut settings = dispatch_settings(
        &app,
        vec![subscriber("test.flaky", flaky), subscriber("test.swallowing", swallowing)],
    )
    .await;
    settings.max_attempts = 2;
    settings.batch = 200;
    admin
        .execute("insert into crm.test_faults (subscriber, amount) values ('flaky', '17.00')", &[])
        .await
        .expect("fault");
    // The whole backlog is in the log before the dispatcher starts, so that it comes as one batch.
    const UPDATES: i64 = 30;
    for i in 1..=UPDATES {
        let r = app.patch(&format!("/v1/crm/deals/{deal}"), &key, json!({"amount": i})).await;
        assert_eq!(r.status, 200);
    }
    let logged = "select count(*) from events.log where type = 'crm.deals.update'";
    assert_eq!(wait_for(&admin, logged, UPDATES).await, UPDATES);
    let dispatcher = tokio::spawn(dispatch::run(settings));

    for (subscriber, broken) in [("flaky", "17.00"), ("swallowing", "7.00")] {
        assert_eq!(wait_effects(&admin, subscriber, UPDATES - 1).await, UPDATES - 1, "{subscriber}");
        let amounts: Vec<String> =
            effects(&admin, subscriber).await.into_iter().map(|(_, a)| a.expect("amount")).collect();
        let expected: Vec<String> =
            (1..=UPDATES).map(|i| format!("{i}.00")).filter(|a| a != broken).collect();
        assert_eq!(amounts, expected, "{subscriber}: every other event once, in order");
    }
    let parked = "select count(*) from events.dead_letters";
    assert_eq!(wait_for(&admin, parked, 2).await, 2);
    let swallowed: String = admin
        .query_one("select error from events.dead_letters where subscriber = 'test.swallowing'", &[])
        .await
        .expect("letter")
        .get(0);
    assert!(swallowed.contains("transaction had failed"), "{swallowed}");
    dispatcher.abort();
    worker.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_only_what_every_subscriber_is_past() {
    let mut app = TestApp::spawn().await;
    let (_, key) = app.tenant("acme").await;
    let admin = connect(&cluster().superuser, &app.db.name).await;
    effects_table(&admin).await;
    let worker = start(&settings(&app), &admin).await;
    // Retention deletes whole log chunks; each change is logged before the next one is made, so that each
    // has its own.
    let deal = app.create("deals", &key, json!({"title": "Old"})).await;
    assert_eq!(wait_for(&admin, "select count(*) from events.log", 1).await, 1);
    for amount in [1_i64, 2, 3] {
        app.patch(&format!("/v1/crm/deals/{deal}"), &key, json!({"amount": amount})).await;
        let logged = amount + 1;
        assert_eq!(wait_for(&admin, "select count(*) from events.log", logged).await, logged);
    }
    assert_eq!(count(&admin, "select count(*) from events.log_chunks").await, 4);
    worker.abort();
    let events = connect("tessera_replication", &app.db.name).await;
    // A subscriber that has handled nothing yet pins everything.
    events
        .batch_execute(
            "set role tessera_events; insert into events.subscribers (name) values ('test.behind')",
        )
        .await
        .expect("subscriber");
    assert_eq!(dispatch::prune(&events, Duration::ZERO).await.expect("prune"), 0);
    // The doctor names a registered subscriber that no module of this build has: it pins retention.
    let status = tessera_cdc::doctor::status(&events, &settings(&app).slot, &[]).await.expect("status");
    assert_eq!(status.unknown_subscribers, ["test.behind"]);
    assert!(!status.healthy());
    let second: i64 = events
        .query_one("select seq from events.log order by seq offset 1 limit 1", &[])
        .await
        .expect("seq")
        .get(0);
    events.execute("update events.subscribers set position = $1", &[&second]).await.expect("advance");
    assert_eq!(dispatch::prune(&events, Duration::from_secs(3600)).await.expect("prune"), 0, "too young");
    // A parked event stays, to be replayed.
    events
        .execute(
            "insert into events.dead_letters (subscriber, seq, tenant_id, event_id, type, error, attempts)
             select 'test.behind', seq, tenant_id, id, type, 'parked', 1 from events.log order by seq limit 1",
            &[],
        )
        .await
        .expect("dead letter");
    assert_eq!(dispatch::prune(&events, Duration::ZERO).await.expect("prune"), 1, "up to the slowest cursor");
    assert_eq!(count(&admin, "select count(*) from events.log").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_feed_shows_a_tenant_its_own_events_a_page_at_a_time() {
    let mut app = TestApp::spawn().await;
    let (acme, acme_writer) = app.tenant("acme").await;
    let (globex, globex_writer) = app.tenant("globex").await;
    let admin = connect(&cluster().superuser, &app.db.name).await;
    let worker = start(&settings(&app), &admin).await;
    let deal = app.create("deals", &acme_writer, json!({"title": "Ours"})).await;
    for amount in 1..=4 {
        app.patch(&format!("/v1/crm/deals/{deal}"), &acme_writer, json!({"amount": amount})).await;
    }
    app.patch(&format!("/v1/crm/deals/{deal}"), &acme_writer, json!({"stage": "won"})).await;
    let theirs = app.create("deals", &globex_writer, json!({"title": "Theirs"})).await;
    app.patch(&format!("/v1/crm/deals/{theirs}"), &globex_writer, json!({"stage": "won"})).await;
    assert_eq!(wait_for(&admin, "select count(*) from events.log", 10).await, 10);
    worker.abort();

    let reader = app.key(acme, &["events:read", "crm:read"]).await;
    let first = app.get("/v1/events?limit=4", &reader).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let items = first.body["data"].as_array().expect("data").clone();
    assert_eq!(items.len(), 4);
    assert_eq!(first.body["has_more"], true);
    let after = first.body["next_cursor"].as_str().expect("cursor").to_owned();
    assert_eq!(after, items[3]["id"].as_str().expect("id"), "the cursor is the last event's opaque id");
    let rest = app.get(&format!("/v1/events?limit=100&after={after}"), &reader).await;
    let rest_items = rest.body["data"].as_array().expect("data").clone();
    assert_eq!(rest.body["has_more"], false);
    let all: Vec<&serde_json::Value> = items.iter().chain(rest_items.iter()).collect();
    assert_eq!(all.len(), 7, "the insert, four updates, the win's update and deal.closed.won — ours only");
    assert!(all.iter().all(|e| e["data"]["new"]["title"] == "Ours"), "never another tenant's");
    let amounts: Vec<&str> =
        all[1..5].iter().map(|e| e["data"]["new"]["amount"].as_str().expect("amount")).collect();
    assert_eq!(amounts, ["1.00", "2.00", "3.00", "4.00"], "in log order");
    assert!(all.iter().all(|e| e.get("commit_lsn").is_none() && e.get("cursor").is_none()), "nothing global");

    // The feed is no way around a module scope: without crm:read no CRM event shows.
    let feed_only = app.key(acme, &["events:read", "hr:read"]).await;
    let none = app.get("/v1/events", &feed_only).await;
    assert_eq!(none.body["data"].as_array().map(Vec::len), Some(0), "{}", none.body);
    // Another tenant's event id is not a cursor here.
    let globex_reader = app.key(globex, &["events:read", "crm:read"]).await;
    let theirs = app.get("/v1/events?limit=1", &globex_reader).await;
    let their_id = theirs.body["data"][0]["id"].as_str().expect("their event").to_owned();
    app.get(&format!("/v1/events?after={their_id}"), &reader).await.assert_problem(400, "invalid_parameter");

    let won = app.get("/v1/events?types=deal.closed.won", &reader).await;
    let won = won.body["data"].as_array().expect("data").clone();
    assert_eq!(won.len(), 1);
    assert_eq!(won[0]["type"], "deal.closed.won");

    // The writer key has no events scope; bad parameters are named.
    app.get("/v1/events", &acme_writer).await.assert_problem(403, "insufficient_scope");
    app.get("/v1/events?after=abc", &reader).await.assert_problem(400, "invalid_parameter");
    app.get("/v1/events?types=DROP%20TABLE", &reader).await.assert_problem(400, "invalid_parameter");
    app.get("/v1/events?since=1", &reader).await.assert_problem(400, "unknown_parameter");
    app.call(axum::http::Method::GET, "/v1/events", None, None).await.assert_problem(401, "missing_api_key");
}

/// The log stores one tenant's consecutive events together (a log chunk). One source transaction of many
/// changes, two tenants' interleaved, is read back event by event the same through every door: the view, the
/// dispatcher (in batches that end inside chunks), the event at a number (dead letters, replay) and the
/// feed's pages (cursors inside chunks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_log_chunks_read_back_event_by_event() {
    let mut app = TestApp::spawn().await;
    let (acme, acme_writer) = app.tenant("acme").await;
    let (_, globex_writer) = app.tenant("globex").await;
    let admin = connect(&cluster().superuser, &app.db.name).await;
    effects_table(&admin).await;
    let worker = start(&settings(&app), &admin).await;
    let ours = app.create("deals", &acme_writer, json!({"title": "Ours"})).await;
    assert_eq!(wait_for(&admin, "select count(*) from events.log", 1).await, 1);
    // A subscriber registered now (at number 1) and started only when everything is logged, with batches
    // larger than the dispatcher's window (1,000 numbers from its first chunk of the types): its first
    // window (numbers 2 to 1,001) ends inside a chunk (709 to 1,003).
    let mut late_settings = dispatch_settings(&app, vec![subscriber("test.late", late)]).await;
    late_settings.batch = 5000;
    app.patch(&format!("/v1/crm/deals/{ours}"), &acme_writer, json!({"amount": 0})).await;
    assert_eq!(wait_for(&admin, "select count(*) from events.log", 2).await, 2);
    let theirs = app.create("deals", &globex_writer, json!({"title": "Theirs"})).await;
    assert_eq!(wait_for(&admin, "select count(*) from events.log", 3).await, 3);
    let dispatcher =
        tokio::spawn(dispatch::run(dispatch_settings(&app, vec![subscriber("test.steady", steady)]).await));

    admin
        .batch_execute(&format!(
            "do $$ begin
               for i in 1..700 loop update crm.deals set amount = i where id = '{ours}'; end loop;
               for i in 1..5 loop update crm.deals set amount = 10000 + i where id = '{theirs}'; end loop;
               for i in 701..1400 loop update crm.deals set amount = i where id = '{ours}'; end loop;
             end $$"
        ))
        .await
        .expect("one transaction");
    assert_eq!(wait_for(&admin, "select count(*) from events.log", 1408).await, 1408);
    let largest = count(&admin, "select max(cardinality(ids))::int8 from events.log_chunks").await;
    assert_eq!(largest, 700, "a tenant's run of the transaction is one chunk (of at most 1,000 events)");

    // The dispatcher, 50 at a time: every update once, in log order.
    assert_eq!(wait_effects(&admin, "steady", 1405).await, 1405);
    let seqs: Vec<i64> = effects(&admin, "steady").await.into_iter().map(|(seq, _)| seq).collect();
    let logged: Vec<i64> = admin
        .query("select seq from events.log where type = 'crm.deals.update' and seq > 3 order by seq", &[])
        .await
        .expect("log")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(seqs, logged, "from where it was registered");
    let amounts: Vec<String> = effects(&admin, "steady").await.into_iter().filter_map(|(_, a)| a).collect();
    let expected: Vec<String> =
        (1..=700).chain(10001..=10005).chain(701..=1400).map(|i| format!("{i}.00")).collect();
    assert_eq!(amounts, expected);

    // The event at a number is the view's row with that number; past the end there is none.
    let events = connect("tessera_replication", &app.db.name).await;
    events.batch_execute("set role tessera_events").await.expect("role");
    let differ = count(
        &events,
        "select count(*) from events.log l
          where not exists (select 1 from events.log_at(l.seq) a
                             where a.seq = l.seq and a.id = l.id and a.tenant_id = l.tenant_id and a.type = l.type
                               and a.commit_time = l.commit_time and a.data::text = l.data::text)",
    )
    .await;
    assert_eq!(differ, 0);
    assert_eq!(count(&events, "select count(*) from events.log_at(events.log_end() + 1)").await, 0);

    // Ten more changes of ours, each its own chunk, then a win: the feed finds it behind them (a page reads
    // eight chunks at a time).
    for amount in 1..=10_i64 {
        app.patch(&format!("/v1/crm/deals/{ours}"), &acme_writer, json!({"amount": amount})).await;
        let logged = 1408 + amount;
        assert_eq!(wait_for(&admin, "select count(*) from events.log", logged).await, logged);
    }
    app.patch(&format!("/v1/crm/deals/{ours}"), &acme_writer, json!({"stage": "won"})).await;
    assert_eq!(wait_for(&admin, "select count(*) from events.log", 1420).await, 1420);
    let chunk =
        count(&admin, "select count(*) from events.log_chunks where first_seq = 709 and last_seq = 1003")
            .await;
    assert_eq!(chunk, 1, "the late subscriber's first window ends inside a chunk");
    let late_dispatcher = tokio::spawn(dispatch::run(late_settings));
    assert_eq!(wait_effects(&admin, "late", 1417).await, 1417);
    let late_seqs: Vec<i64> = effects(&admin, "late").await.into_iter().map(|(seq, _)| seq).collect();
    let all_updates: Vec<i64> = admin
        .query("select seq from events.log where type = 'crm.deals.update' order by seq", &[])
        .await
        .expect("log")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(late_seqs, all_updates, "every update once, in log order, across windows");
    late_dispatcher.abort();

    let reader = app.key(acme, &["events:read", "crm:read"]).await;
    let won = app.get("/v1/events?types=deal.closed.won", &reader).await;
    assert_eq!(won.status, 200, "{}", won.body);
    assert_eq!(won.body["data"].as_array().map(Vec::len), Some(1), "{}", won.body);
    assert_eq!(won.body["has_more"], false);

    // The feed, 7 at a time: our events, in log order, each once.
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let page = app.get(&format!("/v1/events?limit=7{after}"), &reader).await;
        assert_eq!(page.status, 200, "{}", page.body);
        for event in page.body["data"].as_array().expect("data") {
            seen.push(event["id"].as_str().expect("id").to_owned());
        }
        match page.body["next_cursor"].as_str() {
            Some(cursor) => after = format!("&after={cursor}"),
            None => break,
        }
    }
    let ours_logged: Vec<String> = admin
        .query("select id::text from events.log where tenant_id = $1 order by seq", &[&acme.as_uuid()])
        .await
        .expect("ours")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ours_logged.len(), 1414);
    assert_eq!(seen, ours_logged);
    dispatcher.abort();
    worker.abort();
}

/// A time-ordered id of the given Unix millisecond (the worker's ids begin the same way).
fn id_at(millis: u64, tail: u16) -> uuid::Uuid {
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    bytes[6] = 0x70;
    bytes[8] = 0x80;
    bytes[14..].copy_from_slice(&tail.to_be_bytes());
    uuid::Uuid::from_bytes(bytes)
}

/// A cursor is found even when many later chunks start before it (many chunks in one millisecond, or a
/// clock set back): past the first candidates the feed looks among all the tenant's chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_behind_many_chunks_of_the_same_moment_is_found() {
    let mut app = TestApp::spawn().await;
    let (acme, _) = app.tenant("acme").await;
    let admin = connect(&cluster().superuser, &app.db.name).await;
    let t0 = 1_900_000_000_000;
    // The cursor's chunk holds an event of t0 and the cursor, of t0 + 10 ms; then 70 chunks of t0 + 5 ms.
    let cursor = id_at(t0 + 10, 1);
    let mut chunks = vec![(1_i64, vec![id_at(t0, 1), cursor])];
    chunks.extend((0..70).map(|i| (3 + i, vec![id_at(t0 + 5, u16::try_from(i).expect("small"))])));
    for (first, ids) in &chunks {
        let n = i64::try_from(ids.len()).expect("small");
        let (min, max) = (ids.iter().min().expect("one"), ids.iter().max().expect("one"));
        admin
            .execute(
                "insert into events.log_chunks (tenant_id, first_seq, last_seq, min_id, max_id, ids, commit_lsns,
                                                positions, types, commit_times, data)
                 select $1, $2::int8, $2::int8 + $3::int8 - 1, $4, $5, $6,
                        array_fill('0/1'::pg_lsn, array[$3::int]), array_fill(0, array[$3::int]),
                        array_fill('crm.deals.update'::text, array[$3::int]), array_fill(now(), array[$3::int]),
                        array_fill('{\"table\":\"crm.deals\"}'::text, array[$3::int])",
                &[&acme.as_uuid(), first, &n, min, max, ids],
            )
            .await
            .expect("chunk");
    }
    let reader = app.key(acme, &["events:read", "crm:read"]).await;
    let page = app.get(&format!("/v1/events?limit=100&after={cursor}"), &reader).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(page.body["data"].as_array().map(Vec::len), Some(70), "{}", page.body);
    // An id that is no event of the tenant's is refused, however many chunks start before it.
    app.get(&format!("/v1/events?after={}", id_at(t0 + 10, 2)), &reader)
        .await
        .assert_problem(400, "invalid_parameter");
}

/// Retention may delete every chunk of the log (all subscribers past them, all old enough): the numbers it
/// held are never given again, or subscribers past them would never see the new events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_are_not_given_again_after_retention_empties_the_log() {
    let mut app = TestApp::spawn().await;
    let (_, key) = app.tenant("acme").await;
    let admin = connect(&cluster().superuser, &app.db.name).await;
    let worker = start(&settings(&app), &admin).await;
    let deal = app.create("deals", &key, json!({"title": "Old"})).await;
    app.patch(&format!("/v1/crm/deals/{deal}"), &key, json!({"amount": 1})).await;
    assert_eq!(wait_for(&admin, "select count(*) from events.log", 2).await, 2);
    worker.abort();
    let _ = worker.await;
    let events = connect("tessera_replication", &app.db.name).await;
    events
        .batch_execute(
            "set role tessera_events;
             insert into events.subscribers (name, position) values ('test.done', events.log_end())",
        )
        .await
        .expect("a subscriber past everything");
    let past: i64 = events.query_one("select events.log_end()", &[]).await.expect("end").get(0);
    assert_eq!(dispatch::prune(&events, Duration::ZERO).await.expect("prune"), 2);
    assert_eq!(count(&admin, "select count(*) from events.log_chunks").await, 0, "the log is empty");

    let worker = start(&settings(&app), &admin).await;
    app.patch(&format!("/v1/crm/deals/{deal}"), &key, json!({"amount": 2})).await;
    assert_eq!(wait_for(&admin, "select count(*) from events.log", 1).await, 1);
    let first: i64 =
        admin.query_one("select min(first_seq) from events.log_chunks", &[]).await.expect("seq").get(0);
    assert!(first > past, "the new event is numbered {first}, after the {past} numbers given before");
    worker.abort();
}
