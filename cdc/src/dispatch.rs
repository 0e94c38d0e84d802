//! The dispatcher: feeds `events.log` to the modules' subscribers, each in log (commit) order, with
//! exactly-once effects.
//!
//! ```text
//! events.log ──▶ subscriber task (one per subscription, its own connection) ──▶ one transaction per batch:
//!                  lock the cursor row, read the next events of its types, switch to the module's role,
//!                  and for each event bind its tenant and run the handler; then move the cursor past
//!                  what was handled ──▶ commit: effects and cursor together
//! ```
//!
//! - Exactly once: a handler's writes and the cursor commit in the same transaction, so a crash anywhere
//!   either keeps both or neither; the cursor row is locked for the batch, so two dispatchers (two
//!   processes) never hand the same event to a handler twice.
//! - Order: `seq` follows commit order (see `sql/events/V2__subscribers.sql`); every subscriber reads in it.
//! - Wake-ups: the CDC worker notifies `tessera_events` in each transaction it commits; a listener wakes every
//!   subscriber. A long fallback timer covers a notification lost while the listener reconnects.
//! - Failures: a batch whose handler fails is rolled back and run again with each handler in a savepoint
//!   (subtransactions cost too much to use always), so what came before the failing event commits; the
//!   event is retried with exponential backoff. After `max_attempts` it is parked in `events.dead_letters` with its
//!   error and the subscriber moves on; `tessera events replay` hands it to the handler again. Subscribers
//!   are independent tasks with their own connections: one that fails or stops holds up no other.
//! - Entitlements: a handler runs only for tenants that have its module enabled; other tenants' events pass
//!   it by.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tessera_core::module::StatementCache;
use tessera_core::roles::{EVENTS, module_role, quote_ident, quote_literal};
use tessera_core::{EffectTx, Event, HandlerError, Subscription, bootstrap};
use tokio::sync::watch;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use crate::worker::{BIND_TENANT, CHANNEL};

/// A module's subscription, with the module whose role its handler runs as.
#[derive(Debug, Clone, Copy)]
pub struct Subscriber {
    pub module: &'static str,
    pub subscription: Subscription,
}

impl Subscriber {
    /// Every subscription of the given modules.
    pub fn of_modules(modules: &[&dyn tessera_core::Module]) -> Vec<Subscriber> {
        modules
            .iter()
            .flat_map(|m| {
                m.subscriptions().into_iter().map(|s| Subscriber { module: m.name(), subscription: s })
            })
            .collect()
    }

    fn name(&self) -> &'static str {
        self.subscription.name
    }
}

/// How the dispatcher connects and retries.
#[derive(Debug, Clone)]
pub struct DispatchSettings {
    /// The event system's login (`tessera_replication`), which may become `tessera_events` and module roles.
    pub connection: tokio_postgres::Config,
    pub subscribers: Vec<Subscriber>,
    /// Events handled per transaction (at most 50 while a failing handler is retried, each in a savepoint).
    pub batch: i64,
    /// Attempts before an event whose handler fails definitely is parked as a dead letter (transient
    /// failures are retried for as long as they last).
    pub max_attempts: u32,
    /// The first retry's delay; it doubles up to `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// How long a subscriber waits for a notification before it looks at the log anyway.
    pub idle_recheck: Duration,
    /// How long events stay in the log once every subscriber is past them; `None` keeps them.
    pub retention: Option<Duration>,
}

impl DispatchSettings {
    pub fn new(connection: tokio_postgres::Config, subscribers: Vec<Subscriber>) -> Self {
        Self {
            connection,
            subscribers,
            batch: 200,
            max_attempts: 5,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            idle_recheck: Duration::from_secs(30),
            retention: None,
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(20));
        self.base_backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

/// How a transaction as `tessera_events` begins: writable, or read-only.
#[derive(Clone, Copy)]
enum Access {
    Write,
    Read,
}

/// Runs `body` in a transaction as `tessera_events`, after `extra` (more `set local …` or `lock …` statements,
/// or nothing): commits when it succeeds, rolls back when it fails.
async fn as_events<T>(
    client: &Client,
    access: Access,
    extra: &str,
    body: impl AsyncFnOnce() -> Result<T, tokio_postgres::Error>,
) -> Result<T, tokio_postgres::Error> {
    client.batch_execute(&begin_as_events(access, extra)).await?;
    match body().await {
        Ok(value) => {
            client.batch_execute("commit").await?;
            Ok(value)
        }
        Err(e) => {
            let _ = client.batch_execute("rollback").await;
            Err(e)
        }
    }
}

/// The statements that open a transaction as `tessera_events`, then `extra`.
fn begin_as_events(access: Access, extra: &str) -> String {
    let begin = match access {
        Access::Write => "begin",
        Access::Read => "begin read only",
    };
    format!("{begin}; set local role {}; {extra}", quote_ident(EVENTS))
}

/// Registers every subscriber that is new, at the current end of the log: a subscriber added to a running
/// platform receives what happens from then on, not the whole history (which would, say, draft an invoice for
/// every deal ever won). Known subscribers keep their cursors.
pub async fn register(
    config: &tokio_postgres::Config,
    subscribers: &[Subscriber],
) -> Result<(), tokio_postgres::Error> {
    let client = bootstrap::connect(config).await?;
    let names: Vec<&str> = subscribers.iter().map(Subscriber::name).collect();
    as_events(&client, Access::Write, "lock table events.subscribers in exclusive mode", async || {
        client
            .execute(
                "insert into events.subscribers (name, position)
                 select n, events.log_end() from unnest($1::text[]) n
                 on conflict do nothing",
                &[&names],
            )
            .await?;
        Ok(())
    })
    .await
}

/// Runs the listener and one task per subscriber until the returned future is dropped (or aborted). New
/// subscribers are registered first (see [`register`]); a subscriber task that ends, even by a panic, is
/// started again.
pub async fn run(settings: DispatchSettings) {
    let mut delay = Duration::from_millis(100);
    while let Err(e) = register(&settings.connection, &settings.subscribers).await {
        tracing::warn!(error = %e, "registering subscribers failed; retrying");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
    let settings = Arc::new(settings);
    let (wake, _) = watch::channel(0u64);
    let wake = Arc::new(wake);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(listen(settings.connection.clone(), wake.clone()));
    let mut by_task = HashMap::new();
    for subscriber in settings.subscribers.clone() {
        let handle = tasks.spawn(supervise_subscriber(settings.clone(), subscriber, wake.subscribe()));
        by_task.insert(handle.id(), subscriber);
    }
    if let Some(retention) = settings.retention {
        tasks.spawn(prune_periodically(settings.connection.clone(), retention));
    }
    // The tasks loop forever; when this future is dropped, the JoinSet aborts them.
    while let Some(ended) = tasks.join_next_with_id().await {
        let id = match &ended {
            Ok((id, ())) => *id,
            Err(e) => e.id(),
        };
        if let Some(subscriber) = by_task.remove(&id) {
            tracing::error!(subscriber = subscriber.name(), "subscriber task ended; starting it again");
            tokio::time::sleep(Duration::from_secs(1)).await;
            let handle = tasks.spawn(supervise_subscriber(settings.clone(), subscriber, wake.subscribe()));
            by_task.insert(handle.id(), subscriber);
        }
    }
}

/// Listens for the worker's notifications and wakes every subscriber; reconnects when the connection drops
/// (and wakes them then too, since a notification may have been missed meanwhile).
async fn listen(config: tokio_postgres::Config, wake: Arc<watch::Sender<u64>>) {
    let mut delay = Duration::from_millis(100);
    loop {
        match listen_once(&config, &wake).await {
            Ok(()) => delay = Duration::from_millis(100),
            Err(e) => tracing::warn!(error = %e, "event listener failed; reconnecting"),
        }
        wake.send_modify(|n| *n += 1);
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

async fn listen_once(
    config: &tokio_postgres::Config,
    wake: &watch::Sender<u64>,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let (closed_tx, closed) = tokio::sync::oneshot::channel();
    let notify = wake.clone();
    let driver = tokio::spawn(async move {
        let result = loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(_))) => notify.send_modify(|n| *n += 1),
                Some(Ok(_)) => {}
                Some(Err(e)) => break Err(e),
                None => break Ok(()),
            }
        };
        let _ = closed_tx.send(result);
    });
    client.batch_execute(&format!("listen {CHANNEL}")).await?;
    // Anything committed before LISTEN took effect is picked up by this wake-up.
    wake.send_modify(|n| *n += 1);
    let result = closed.await.unwrap_or(Ok(()));
    driver.abort();
    drop(client);
    result
}

/// Keeps one subscriber running: reconnects after a lost connection, with a delay that grows until the
/// subscriber makes progress again. What is failing survives reconnects, so an event that breaks the
/// connection every time is still parked after `max_attempts`.
async fn supervise_subscriber(
    settings: Arc<DispatchSettings>,
    subscriber: Subscriber,
    wake: watch::Receiver<u64>,
) {
    let mut state = SubscriberState { subscriber, failing: None, in_flight: None, progressed: false };
    let mut wake = wake;
    let mut delay = Duration::from_millis(100);
    loop {
        match bootstrap::connect(&settings.connection).await {
            Ok(client) => {
                if let Err(e) = state.serve(&client, &settings, &mut wake).await {
                    tracing::warn!(subscriber = subscriber.name(), error = %e, "subscriber failed; reconnecting");
                    // The connection broke while a handler ran: that counts against the event.
                    if let Some(seq) = state.in_flight.take() {
                        state.failed(seq, HandlerError::from(e));
                    }
                }
            }
            Err(e) => {
                tracing::warn!(subscriber = subscriber.name(), error = %e, "subscriber cannot connect; retrying")
            }
        }
        if std::mem::take(&mut state.progressed) {
            delay = Duration::from_millis(100);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

struct SubscriberState {
    subscriber: Subscriber,
    /// The event that failed last, how many times in a row, and the last error.
    failing: Option<(i64, u32, HandlerError)>,
    /// The event whose handler is running, while it runs.
    in_flight: Option<i64>,
    /// Whether a batch committed since the last reconnect.
    progressed: bool,
}

/// What one batch did.
enum Round {
    /// Handled everything there was; wait for news.
    CaughtUp,
    /// A full batch; there may be more at once.
    More,
    /// The handler failed on this event.
    Failed { seq: i64, error: HandlerError },
}

impl SubscriberState {
    /// Records a failure of the event at `seq` and returns how many in a row it has had.
    fn failed(&mut self, seq: i64, error: HandlerError) -> u32 {
        let attempts = match &self.failing {
            Some((s, n, _)) if *s == seq => n + 1,
            _ => 1,
        };
        self.failing = Some((seq, attempts, error));
        attempts
    }

    async fn serve(
        &mut self,
        client: &Client,
        settings: &DispatchSettings,
        wake: &mut watch::Receiver<u64>,
    ) -> Result<(), tokio_postgres::Error> {
        // Statements are prepared once per connection (plans that depend on the role or on the row policies
        // are checked by Postgres at each execution).
        let statements = StatementCache::default();
        loop {
            // A definite failure that has used up its attempts (perhaps over several connections) is parked.
            if let Some((seq, attempts, error)) = self.failing.clone()
                && !error.transient
                && attempts >= settings.max_attempts
            {
                park(client, &self.subscriber, seq, attempts, &error).await?;
                tracing::error!(subscriber = self.subscriber.name(), seq, error = %error, "event parked as a dead letter");
                self.failing = None;
            }
            // Seen before the log is read: a notification arriving meanwhile triggers another round.
            wake.borrow_and_update();
            let failing = self.failing.as_ref().map(|(seq, _, _)| *seq);
            let round = deliver_batch(
                client,
                &statements,
                &self.subscriber,
                settings.batch,
                failing,
                &mut self.in_flight,
            )
            .await?;
            self.progressed = true;
            match round {
                Round::More => self.failing = None,
                Round::CaughtUp => {
                    self.failing = None;
                    // A notification, or the fallback timer for one that was missed.
                    if let Ok(Err(_)) = tokio::time::timeout(settings.idle_recheck, wake.changed()).await {
                        return Ok(());
                    }
                }
                Round::Failed { seq, error } => {
                    let transient = error.transient;
                    let attempts = self.failed(seq, error.clone());
                    tracing::warn!(subscriber = self.subscriber.name(), seq, attempts, transient, error = %error, "event handler failed");
                    if transient || attempts < settings.max_attempts {
                        tokio::time::sleep(settings.backoff(attempts)).await;
                    }
                }
            }
        }
    }
}

const EVENT_COLUMNS: &str = "seq, id, tenant_id, type, commit_time, data";

fn event_from_row(row: &tokio_postgres::Row) -> Event {
    Event {
        seq: row.get(0),
        id: row.get(1),
        tenant_id: row.get(2),
        kind: row.get(3),
        commit_time: row.get(4),
        data: row.get(5),
    }
}

/// How a batch runs its handlers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Every handler in the batch's transaction, without savepoints (subtransactions are expensive: beyond
    /// 64 in one transaction every visibility check consults `pg_subtrans`). When a handler fails, the whole
    /// batch is rolled back and run again carefully.
    Fast,
    /// Each handler in a savepoint, up to and including the event at `through`: what comes before a failing
    /// handler commits, and its failure is recorded.
    Careful { through: i64 },
}

/// Savepoints per careful transaction: Postgres caches 64 subtransactions per transaction.
const CAREFUL_BATCH: i64 = 50;

/// What one transaction did.
enum Attempt {
    Committed(Round),
    /// A fast batch's handler failed at this event; the whole batch was rolled back.
    RolledBack {
        seq: i64,
    },
}

/// Delivers the next events after the subscriber's cursor and moves it past what was handled: in one fast
/// transaction, or, when a handler fails (now, or in an earlier round: `failing`), in careful ones through
/// that event.
async fn deliver_batch(
    client: &Client,
    statements: &StatementCache,
    subscriber: &Subscriber,
    batch: i64,
    failing: Option<i64>,
    in_flight: &mut Option<i64>,
) -> Result<Round, tokio_postgres::Error> {
    let mut mode = match failing {
        None => Mode::Fast,
        Some(through) => Mode::Careful { through },
    };
    loop {
        let attempt = deliver_in_tx(client, statements, subscriber, batch, mode, in_flight).await?;
        *in_flight = None;
        match (mode, attempt) {
            (_, Attempt::RolledBack { seq }) => mode = Mode::Careful { through: seq },
            (Mode::Fast, Attempt::Committed(round)) => return Ok(round),
            (Mode::Careful { .. }, Attempt::Committed(round)) => match round {
                // Through the failing event (a failure that has passed): back to fast batches.
                Round::CaughtUp => return Ok(Round::More),
                // A full careful batch short of it: on towards it.
                Round::More => {}
                Round::Failed { .. } => return Ok(round),
            },
        }
    }
}

/// One transaction as `tessera_events`: lock the subscriber's cursor, read the next events of its types,
/// hand them to the handler, move the cursor past what was handled, commit.
async fn deliver_in_tx(
    client: &Client,
    statements: &StatementCache,
    subscriber: &Subscriber,
    batch: i64,
    mode: Mode,
    in_flight: &mut Option<i64>,
) -> Result<Attempt, tokio_postgres::Error> {
    match handle_batch(client, statements, subscriber, batch, mode, in_flight).await {
        Ok(attempt @ Attempt::Committed(_)) => Ok(attempt),
        Ok(rolled_back) => {
            client.batch_execute("rollback").await?;
            Ok(rolled_back)
        }
        Err(e) => {
            let _ = client.batch_execute("rollback").await;
            Err(e)
        }
    }
}

/// The subscriber's cursor (locked for the transaction), the horizon, whether the horizon cuts the log short
/// of its end (or of `$2`), and the next events of its types between cursor and horizon: one row per event,
/// or one row of nulls when there is none; no row when the subscriber is not registered.
///
/// The horizon is the end of the log, or the careful batch's last event (`$2`), or WINDOW (1,000) numbers
/// past the start of the first chunk after the cursor that holds one of the types, whichever comes first.
/// So a batch unpacks at most the chunks that hold those numbers, however far behind the subscriber is,
/// and chunks without its types are passed over without being unpacked. The chunks of the window: those
/// that end within it, and the first one that ends after it.
const READ_BATCH: &str = "with cursor as (
         select position from events.subscribers where name = $1 for update
     ), bounds as materialized (
         select c.position, least(events.log_end(), $2) as stop,
                (select k.first_seq from events.log_chunks k
                  where k.last_seq > c.position and k.types && $3
                  order by k.last_seq limit 1) as next_first
           from cursor c
     ), horizon as materialized (
         select case when b.next_first is null then b.stop
                     else least(b.stop, greatest(b.position, b.next_first - 1) + 1000) end as horizon,
                b.next_first is not null and greatest(b.position, b.next_first - 1) + 1000 < b.stop as cut
           from bounds b
     )
     select c.position, h.horizon, h.cut, e.seq, e.id, e.tenant_id, e.type, e.commit_time, e.data
       from cursor c cross join horizon h
       left join lateral (
           select k.first_seq + x.n - 1 as seq, x.id, k.tenant_id, x.type, x.commit_time, x.data::json as data
             from (select first_seq, last_seq, tenant_id, ids, types, commit_times, data from events.log_chunks
                    where last_seq > c.position and last_seq <= h.horizon
                   union all
                   (select first_seq, last_seq, tenant_id, ids, types, commit_times, data from events.log_chunks
                     where last_seq > h.horizon order by last_seq limit 1)) k
            cross join lateral unnest(k.ids, k.types, k.commit_times, k.data)
                  with ordinality as x(id, type, commit_time, data, n)
            where k.types && $3 and x.type = any($3)
              and k.first_seq + x.n - 1 > c.position and k.first_seq + x.n - 1 <= h.horizon
            order by k.last_seq, x.n limit $4
       ) e on true
      order by e.seq";

/// Begins the transaction, reads and handles a batch, moves the cursor and commits; or, when a fast batch's
/// handler fails, leaves the transaction for the caller to roll back. Round trips: one to begin and read,
/// one per tenant's run of events (with the handler's), one to move the cursor and commit.
async fn handle_batch(
    client: &Client,
    statements: &StatementCache,
    subscriber: &Subscriber,
    batch: i64,
    mode: Mode,
    in_flight: &mut Option<i64>,
) -> Result<Attempt, tokio_postgres::Error> {
    let name = subscriber.name();
    let cached = EffectTx::with_cache(client, statements);
    let bind = cached.prepare(BIND_TENANT).await?;
    let (batch, through) = match mode {
        Mode::Fast => (batch, i64::MAX),
        Mode::Careful { through } => (batch.min(CAREFUL_BATCH), through),
    };
    let types: Vec<&str> = subscriber.subscription.types.to_vec();
    // A handler stuck on a lock or a slow statement fails (transiently) instead of stalling the subscriber.
    // The commit is durable before anyone sees it (an effect seen and then lost in a crash would come back
    // as another row), whatever the server's default.
    let begin_sql = begin_as_events(
        Access::Write,
        "set local lock_timeout = '10s'; set local statement_timeout = '60s'; set local synchronous_commit = on",
    );
    let begin = client.batch_execute(&begin_sql);
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] = [&name, &through, &types, &batch];
    let prepared = statements.lock().ok().and_then(|c| c.get(READ_BATCH).cloned());
    let rows = match prepared {
        // Sent together with the begin.
        Some(read) => {
            let (begun, rows) = futures_util::future::join(begin, client.query(&read, &params)).await;
            begun?;
            rows?
        }
        // The first time: prepared as tessera_events (the login may not even look into the schema).
        None => {
            begin.await?;
            client.query(&cached.prepare(READ_BATCH).await?, &params).await?
        }
    };
    let Some(head) = rows.first() else {
        // Registered at start; recreated (from now) if an operator removed it meanwhile.
        client
            .execute(
                "insert into events.subscribers (name, position)
                 select $1, events.log_end() on conflict do nothing",
                &[&name],
            )
            .await?;
        client.batch_execute("commit").await?;
        return Ok(Attempt::Committed(Round::More));
    };
    let (position, horizon, cut): (i64, i64, bool) = (head.get(0), head.get(1), head.get(2));
    let events: Vec<Event> = rows
        .iter()
        .filter(|r| r.get::<_, Option<i64>>(3).is_some())
        .map(|r| Event {
            seq: r.get(3),
            id: r.get(4),
            tenant_id: r.get(5),
            kind: r.get(6),
            commit_time: r.get(7),
            data: r.get(8),
        })
        .collect();
    // Everything up to the horizon is committed (seq follows commit order), so the cursor may jump to it
    // when no event of this subscriber's types lies in between.
    let full = events.len() as i64 == batch;
    let mut context = HandlerContext::new(statements);
    let mut handled_to = if full { position } else { horizon.max(position) };
    // A window short of the log's end (or of the careful batch's last event) is followed by the next.
    let mut outcome = if full || cut { Round::More } else { Round::CaughtUp };
    let events_role = quote_ident(EVENTS);
    match mode {
        Mode::Fast => {
            let mut role = Some(format!("set local role {}", quote_ident(&module_role(subscriber.module))));
            // The last event of the group before: a handler that swallowed a database error is noticed when
            // the next group's tenant cannot be bound.
            let mut previous = None;
            for group in events.chunk_by(|a, b| a.tenant_id == b.tenant_id) {
                let (first, last) = (group[0].seq, group[group.len() - 1].seq);
                *in_flight = Some(first);
                // The module's role (before the first group) and the tenant go in the same round trip as the
                // handler's first statement: a connection runs requests in the order they are sent, and
                // `join3` polls (sends) them in order.
                let tenant = group[0].tenant_id.to_string();
                let (switched, bound, outcome) = futures_util::future::join3(
                    async {
                        match role.take() {
                            Some(role) => client.batch_execute(&role).await,
                            None => Ok(()),
                        }
                    },
                    client.execute(&bind, &[&tenant]),
                    run_handlers(client, subscriber, group, &mut context),
                )
                .await;
                switched?;
                match bound {
                    Ok(_) => {}
                    Err(e) if e.as_db_error().is_some() && previous.is_some() => {
                        return Ok(Attempt::RolledBack { seq: previous.unwrap_or(first) });
                    }
                    Err(e) => return Err(e),
                }
                if !matches!(outcome?, Ok(())) {
                    return Ok(Attempt::RolledBack { seq: last });
                }
                if full {
                    handled_to = last;
                }
                previous = Some(last);
            }
        }
        Mode::Careful { .. } => {
            for event in &events {
                *in_flight = Some(event.seq);
                match handle_in_savepoint(client, subscriber, event, &events_role, &mut context).await? {
                    Ok(()) => {
                        if full {
                            handled_to = event.seq;
                        }
                    }
                    Err(error) => {
                        handled_to = event.seq - 1;
                        outcome = Round::Failed { seq: event.seq, error };
                        break;
                    }
                }
            }
        }
    }
    // Back to the event system's role, the cursor moved, committed: one round trip (the subscriber's name is
    // a literal from the code, quoted; the position a number). If the last handler swallowed a database
    // error, the transaction is aborted and the first of these statements says so.
    let move_cursor = if handled_to > position {
        format!(
            "update events.subscribers set position = {handled_to}, updated_at = now() where name = {};",
            quote_literal(name)
        )
    } else {
        String::new()
    };
    match client
        .batch_execute(&format!(
            "set local role {events_role}; select set_config('tessera.tenant_id', '', true); {move_cursor} commit"
        ))
        .await
    {
        Ok(()) => Ok(Attempt::Committed(outcome)),
        Err(e) if e.code() == Some(&SqlState::IN_FAILED_SQL_TRANSACTION) && mode == Mode::Fast => {
            Ok(Attempt::RolledBack { seq: events.last().map_or(position, |e| e.seq) })
        }
        Err(e) => Err(e),
    }
}

/// Runs the handler in a savepoint as the module's role with the event's tenant bound. The outer error is
/// the connection's; the inner one the handler's (its effects rolled back).
async fn handle_in_savepoint(
    client: &Client,
    subscriber: &Subscriber,
    event: &Event,
    events_role: &str,
    context: &mut HandlerContext<'_>,
) -> Result<Result<(), HandlerError>, tokio_postgres::Error> {
    // One round trip: the tenant is a UUID (hex and dashes) and the role a quoted identifier.
    client
        .batch_execute(&format!(
            "savepoint handler; set local role {}; select set_config('tessera.tenant_id', '{}', true)",
            quote_ident(&module_role(subscriber.module)),
            event.tenant_id
        ))
        .await?;
    let outcome = run_handlers(client, subscriber, std::slice::from_ref(event), context).await?;
    let outcome = match outcome {
        // A handler that swallowed a database error leaves the transaction aborted: then releasing fails.
        Ok(()) => match client
            .batch_execute(&format!(
                "release savepoint handler; set local role {events_role}; \
                 select set_config('tessera.tenant_id', '', true)"
            ))
            .await
        {
            Ok(()) => return Ok(Ok(())),
            Err(e) if e.as_db_error().is_some() => Err(HandlerError::definite(format!(
                "the handler returned success, but its transaction had failed: {}",
                HandlerError::from(e)
            ))),
            Err(e) => return Err(e),
        },
        Err(error) => Err(error),
    };
    // Undoes the handler's writes, its role and its tenant.
    client.batch_execute("rollback to savepoint handler; release savepoint handler").await?;
    Ok(outcome)
}

/// Runs the handler for consecutive events of one tenant, which is bound, if the tenant has the module:
/// all at once when the subscription can, else one by one until one fails. The outer error is the
/// connection's; the inner one the handler's.
async fn run_handlers(
    client: &Client,
    subscriber: &Subscriber,
    events: &[Event],
    context: &mut HandlerContext<'_>,
) -> Result<Result<(), HandlerError>, tokio_postgres::Error> {
    let Some(event) = events.first() else { return Ok(Ok(())) };
    // A tenant without the module (never enabled, or disabled since) gets none of its effects. Asked once
    // per tenant and batch.
    let enabled = match context.enabled.get(&event.tenant_id) {
        Some(enabled) => *enabled,
        None => {
            let enabled: bool =
                client.query_one("select core.module_enabled($1)", &[&subscriber.module]).await?.get(0);
            context.enabled.insert(event.tenant_id, enabled);
            enabled
        }
    };
    if !enabled {
        return Ok(Ok(()));
    }
    let tx = EffectTx::with_cache(client, context.statements);
    let subscription = &subscriber.subscription;
    // A panicking handler is a failing handler, not a dead subscriber.
    let handled = std::panic::AssertUnwindSafe(async {
        match subscription.handle_many {
            Some(handle_many) if events.len() > 1 => handle_many(&tx, events).await,
            _ => {
                for event in events {
                    (subscription.handle)(&tx, event).await?;
                }
                Ok(())
            }
        }
    })
    .catch_unwind()
    .await;
    Ok(handled.unwrap_or_else(|_| Err(HandlerError::definite("the handler panicked"))))
}

/// What the handlers of one batch share: the connection's prepared statements and which tenants have the
/// module.
struct HandlerContext<'c> {
    statements: &'c StatementCache,
    enabled: HashMap<uuid::Uuid, bool>,
}

impl<'c> HandlerContext<'c> {
    fn new(statements: &'c StatementCache) -> Self {
        Self { statements, enabled: HashMap::new() }
    }
}

/// Parks an event that kept failing, and moves the subscriber past it, in one transaction.
async fn park(
    client: &Client,
    subscriber: &Subscriber,
    seq: i64,
    attempts: u32,
    error: &HandlerError,
) -> Result<(), tokio_postgres::Error> {
    let name = subscriber.name();
    as_events(client, Access::Write, "", async || {
        let position: i64 = client
            .query_one("select position from events.subscribers where name = $1 for update", &[&name])
            .await?
            .get(0);
        if position >= seq {
            // Someone else (another dispatcher) got past it meanwhile.
            return Ok(());
        }
        let attempts = i32::try_from(attempts).unwrap_or(i32::MAX);
        client
            .execute(
                "insert into events.dead_letters (subscriber, seq, tenant_id, event_id, type, error, attempts)
                 select $1, seq, tenant_id, id, type, $3, $4 from events.log_at($2)
                 on conflict (subscriber, seq) do update
                    set error = excluded.error, attempts = excluded.attempts, failed_at = now(), replayed_at = null",
                &[&name, &seq, &error.message, &attempts],
            )
            .await?;
        client
            .execute(
                "update events.subscribers set position = $2, updated_at = now() where name = $1",
                &[&name, &seq],
            )
            .await?;
        Ok(())
    })
    .await
}

/// A parked event, as `tessera events dead-letters` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetter {
    pub subscriber: String,
    pub seq: i64,
    pub tenant_id: uuid::Uuid,
    pub event_id: uuid::Uuid,
    #[serde(rename = "type")]
    pub kind: String,
    pub error: String,
    pub attempts: i32,
    #[serde(with = "time::serde::rfc3339")]
    pub failed_at: time::OffsetDateTime,
}

/// The dead letters not yet replayed, oldest first; all of them or one subscriber's.
pub async fn dead_letters(
    client: &Client,
    subscriber: Option<&str>,
) -> Result<Vec<DeadLetter>, tokio_postgres::Error> {
    let rows = as_events(client, Access::Read, "", async || {
        client
            .query(
                "select subscriber, seq, tenant_id, event_id, type, error, attempts, failed_at
                   from events.dead_letters
                  where replayed_at is null and ($1::text is null or subscriber = $1)
                  order by subscriber, seq",
                &[&subscriber],
            )
            .await
    })
    .await?;
    Ok(rows
        .iter()
        .map(|r| DeadLetter {
            subscriber: r.get(0),
            seq: r.get(1),
            tenant_id: r.get(2),
            event_id: r.get(3),
            kind: r.get(4),
            error: r.get(5),
            attempts: r.get(6),
            failed_at: r.get(7),
        })
        .collect())
}

/// What a replay did with each dead letter.
#[derive(Debug, Default)]
pub struct ReplayReport {
    pub replayed: Vec<(String, i64)>,
    pub failed: Vec<(String, i64, HandlerError)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("database error")]
    Db(#[from] tokio_postgres::Error),
    #[error("no subscriber named {0:?} is compiled in")]
    UnknownSubscriber(String),
}

/// Hands open dead letters to their handlers again, oldest first: each in its own transaction, marked
/// replayed together with the handler's effects. A failure is recorded on the dead letter, which stays open.
pub async fn replay(
    client: &Client,
    subscribers: &[Subscriber],
    only: Option<&str>,
    seq: Option<i64>,
) -> Result<ReplayReport, ReplayError> {
    let by_name: HashMap<&str, &Subscriber> = subscribers.iter().map(|s| (s.name(), s)).collect();
    if let Some(name) = only
        && !by_name.contains_key(name)
    {
        return Err(ReplayError::UnknownSubscriber(name.to_owned()));
    }
    let open = dead_letters(client, only).await?;
    let mut report = ReplayReport::default();
    let events_role = quote_ident(EVENTS);
    for letter in open.into_iter().filter(|l| seq.is_none_or(|s| s == l.seq)) {
        let Some(subscriber) = by_name.get(letter.subscriber.as_str()) else {
            return Err(ReplayError::UnknownSubscriber(letter.subscriber));
        };
        client.batch_execute(&format!("begin; set local role {events_role}")).await?;
        let outcome = replay_one(client, subscriber, &letter, &events_role).await;
        match outcome {
            Ok(Some(Ok(()))) => {
                client.batch_execute("commit").await?;
                report.replayed.push((letter.subscriber, letter.seq));
            }
            Ok(Some(Err(error))) => {
                client
                    .execute(
                        "update events.dead_letters set error = $3, attempts = attempts + 1, failed_at = now()
                          where subscriber = $1 and seq = $2",
                        &[&letter.subscriber, &letter.seq, &error.message],
                    )
                    .await?;
                client.batch_execute("commit").await?;
                report.failed.push((letter.subscriber, letter.seq, error));
            }
            // Replayed by someone else meanwhile.
            Ok(None) => client.batch_execute("commit").await?,
            Err(e) => {
                let _ = client.batch_execute("rollback").await;
                return Err(e.into());
            }
        }
    }
    Ok(report)
}

async fn replay_one(
    client: &Client,
    subscriber: &Subscriber,
    letter: &DeadLetter,
    events_role: &str,
) -> Result<Option<Result<(), HandlerError>>, tokio_postgres::Error> {
    let still_open = client
        .query_opt(
            "select 1 from events.dead_letters where subscriber = $1 and seq = $2 and replayed_at is null
             for update",
            &[&letter.subscriber, &letter.seq],
        )
        .await?
        .is_some();
    if !still_open {
        return Ok(None);
    }
    let Some(row) =
        client.query_opt(&format!("select {EVENT_COLUMNS} from events.log_at($1)"), &[&letter.seq]).await?
    else {
        return Ok(Some(Err(HandlerError::definite("the event is no longer in the log (retention)"))));
    };
    let event = event_from_row(&row);
    let statements = StatementCache::default();
    let outcome =
        handle_in_savepoint(client, subscriber, &event, events_role, &mut HandlerContext::new(&statements))
            .await?;
    if outcome.is_ok() {
        client
            .execute(
                "update events.dead_letters set replayed_at = now() where subscriber = $1 and seq = $2",
                &[&letter.subscriber, &letter.seq],
            )
            .await?;
    }
    Ok(Some(outcome))
}

/// A subscriber's progress: its cursor, how many events of its types wait, and its open dead letters.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SubscriberLag {
    pub subscriber: String,
    pub position: i64,
    pub pending: i64,
    pub dead_letters: i64,
}

/// Subscribers registered in the database that no compiled-in module has (a module removed, a subscription
/// renamed): their cursors still hold retention back.
pub async fn unknown_subscribers(
    client: &Client,
    subscribers: &[Subscriber],
) -> Result<Vec<String>, tokio_postgres::Error> {
    let known: Vec<&str> = subscribers.iter().map(Subscriber::name).collect();
    let rows = as_events(client, Access::Read, "", async || {
        client
            .query("select name from events.subscribers where name <> all($1) order by name", &[&known])
            .await
    })
    .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Every compiled-in subscriber's lag (a subscriber that never ran counts from the start of the log).
pub async fn lag(
    client: &Client,
    subscribers: &[Subscriber],
) -> Result<Vec<SubscriberLag>, tokio_postgres::Error> {
    as_events(client, Access::Read, "", async || {
        let mut out = Vec::new();
        for s in subscribers {
            let types: Vec<&str> = s.subscription.types.to_vec();
            let row = client
                .query_one(
                    "with cursor as (select coalesce((select position from events.subscribers where name = $1), 0) as p)
                     select cursor.p,
                            (select count(*) from events.log_chunks k
                               cross join lateral unnest(k.types) with ordinality as t(type, n)
                              where k.last_seq > cursor.p and k.first_seq + t.n - 1 > cursor.p
                                and t.type = any($2)),
                            (select count(*) from events.dead_letters where subscriber = $1 and replayed_at is null)
                       from cursor",
                    &[&s.name(), &types],
                )
                .await?;
            out.push(SubscriberLag {
                subscriber: s.name().to_owned(),
                position: row.get(0),
                pending: row.get(1),
                dead_letters: row.get(2),
            });
        }
        Ok(out)
    })
    .await
}

/// Deletes events recorded longer than `retention` ago that every subscriber has finished with, whole log
/// chunks at a time and a bounded number of chunks per transaction; returns how many events.
pub async fn prune(client: &Client, retention: Duration) -> Result<u64, tokio_postgres::Error> {
    const CHUNKS: i64 = 1000;
    let seconds = retention.as_secs_f64();
    let mut total = 0;
    loop {
        let row = as_events(client, Access::Write, "", async || {
            client
                .query_one(
                    "with gone as (
                         delete from events.log_chunks where last_seq in (
                         select k.last_seq from events.log_chunks k
                          where k.recorded_at < now() - make_interval(secs => $1)
                            and k.last_seq <= (select coalesce(min(position), 0) from events.subscribers)
                            -- a parked event stays replayable
                            and not exists (select 1 from events.dead_letters d
                                             where d.replayed_at is null and d.seq between k.first_seq and k.last_seq)
                          order by k.last_seq limit $2)
                         returning cardinality(ids) as events
                     )
                     select count(*), coalesce(sum(events), 0)::int8 from gone",
                    &[&seconds, &CHUNKS],
                )
                .await
        })
        .await?;
        let (chunks, events): (i64, i64) = (row.get(0), row.get(1));
        total += events.cast_unsigned();
        if chunks < CHUNKS {
            return Ok(total);
        }
    }
}

async fn prune_periodically(config: tokio_postgres::Config, retention: Duration) {
    loop {
        match bootstrap::connect(&config).await {
            Ok(client) => match prune(&client, retention).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(events = n, "pruned events past their retention"),
                Err(e) => tracing::warn!(error = %e, "pruning the event log failed"),
            },
            Err(e) => tracing::warn!(error = %e, "pruning the event log: cannot connect"),
        }
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}
