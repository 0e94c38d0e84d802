//! The CDC worker: tails the `tessera_cdc` publication through a logical replication slot and writes every
//! committed change into the event log, then acknowledges the slot.
//!
//! ```text
//! slot (pgoutput) ──▶ decode ──▶ change events ──▶ one DB transaction per group of source transactions
//!                                                   (chunks of CHUNK events, so memory stays bounded)  │
//!             ◀──────── acknowledge the group's last end LSN only after that transaction commits ◀─┘
//! ```
//!
//! Every source transaction's events commit together (atomically), with those of the source transactions that
//! arrived right behind it (group commit: one fsync for many small transactions). Exactly-once in the log
//! follows from two facts: nothing is acknowledged before it is durable in the log, so a crash at any point
//! makes Postgres send it again; and each log transaction records the commit LSN of the last source
//! transaction it covers (`events.cdc_slots.written_lsn`), so a source transaction sent again is recognised
//! by its commit LSN and skipped whole. Event ids are derived from the source commit's LSN and the change's
//! position in it, so they are the same whenever a change is decoded. While no transaction is open,
//! keepalive positions are acknowledged too, so an idle publication does not pin WAL.
//!
//! The log is stored in chunks (`events.log_chunks`): each run of one tenant's consecutive events in a chunk
//! is one row, the events' fields in arrays, numbered by the worker from the log's last number on (it is the
//! only writer). One row per event cost the server more than twice the CPU (`events.log` is that view).
//!
//! A slot that disappears is never recreated silently (that would skip every change in between): the
//! worker records the slot it created in `events.cdc_slots` and refuses to start when it is gone.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::FutureExt;
use pgwire_replication::{ReplicationClient, ReplicationConfig, ReplicationEvent};
use tessera_core::roles::{EVENTS, quote_ident};
use tessera_core::{ChangeView, EventRule, RowText, bootstrap};
use tokio_postgres::Client;
use uuid::Uuid;

use crate::pgoutput::{self, Datum, Message, OldTuple, Relation, Tuple};
use crate::value::{is_json_string, push_json_str, write_json};

/// Rows written per statement while a large source transaction streams in.
const CHUNK: usize = 1000;

/// The session advisory lock a worker holds on its writer connection for as long as it runs: one worker at a
/// time, others wait as standbys. It also makes the log's `seq` follow commit order: a standby writes nothing
/// until the previous writer's session, and with it any transaction it had open, is gone.
pub const WORKER_LOCK: i64 = 0x7465_7373_6572_6132;

/// The channel the worker notifies, inside each transaction it commits to the log, to wake the dispatcher.
pub const CHANNEL: &str = "tessera_events";

/// The prefix of the transactional logical messages (`pg_logical_emit_message(true, …)`) a gateway sends
/// to check that the pipeline is caught up; see [`HEARTBEAT_CHANNEL`].
pub const HEARTBEAT_PREFIX: &str = "tessera.heartbeat";
/// The channel the worker notifies, in the log transaction that covers a heartbeat's source transaction,
/// with the heartbeat's content: when it arrives, every change committed before the heartbeat is in the
/// log.
pub const HEARTBEAT_CHANNEL: &str = "tessera_heartbeat";

/// Where and how the worker connects.
#[derive(Debug, Clone)]
pub struct CdcSettings {
    /// A socket folder (starting with `/`) or a host name.
    pub host: String,
    pub port: u16,
    pub database: String,
    /// A role with REPLICATION (`tessera_replication`).
    pub replication_user: String,
    pub replication_password: String,
    /// The writer's connection: the replication login role, which switches to `tessera_events` (the gateway's
    /// login role cannot).
    pub writer: tokio_postgres::Config,
    pub slot: String,
    pub publication: String,
    /// The modules' domain-event rules, applied to every change.
    pub rules: Vec<EventRule>,
}

#[derive(Debug, thiserror::Error)]
pub enum CdcError {
    #[error("database error")]
    Db(#[from] tokio_postgres::Error),
    #[error("replication stream error")]
    Replication(#[from] pgwire_replication::PgWireError),
    #[error(
        "replication slot {slot:?} was created by this worker but no longer exists: changes since it was lost \
         cannot be recovered from it. Investigate, then run `select pg_create_logical_replication_slot('{slot}', \
         'pgoutput')` as a replication role to start over from now"
    )]
    SlotLost { slot: String },
    #[error("pgoutput message could not be decoded")]
    Decode(#[from] pgoutput::DecodeError),
    #[error(
        "event rule {rule} reads old values of {table}, which lacks REPLICA IDENTITY FULL; run \
         `alter table {table} replica identity full` in that module's migrations"
    )]
    RuleNeedsOldValues { rule: &'static str, table: &'static str },
    #[error("writing to the event log failed: {0}")]
    Writer(String),
    #[error("two event rules are named {0}: an event type must have one rule")]
    DuplicateRule(&'static str),
    #[error(
        "the event log's high-water mark for this server ({written}) is ahead of its WAL ({now}), which no \
         worker can have written: investigate events.cdc_slots and events.log before changing either"
    )]
    MarkAhead { written: String, now: String },
    #[error("events.cdc_keys holds no key for event ids; the events migrations create it")]
    NoIdKey,
}

/// Makes sure the slot exists before anything is served, so that no committed change predates it.
pub async fn prepare(settings: &CdcSettings) -> Result<(), CdcError> {
    let writer = bootstrap::connect(&settings.writer).await?;
    check_rules(settings, &writer).await?;
    ensure_slot(settings, &writer).await
}

/// Refuses a rule that needs old values on a table that would not send them.
async fn check_rules(settings: &CdcSettings, writer: &Client) -> Result<(), CdcError> {
    // An event's id derives from its rule's name, so two rules of one name would write one event.
    for (i, rule) in settings.rules.iter().enumerate() {
        if settings.rules[..i].iter().any(|r| r.name == rule.name) {
            return Err(CdcError::DuplicateRule(rule.name));
        }
    }
    for rule in settings.rules.iter().filter(|r| r.needs_old) {
        let full: Option<bool> = writer
            .query_opt(
                // By name through the catalog: the writer's role has no rights on module schemas.
                "select c.relreplident = 'f' from pg_class c join pg_namespace n on n.oid = c.relnamespace
                  where n.nspname = split_part($1, '.', 1) and c.relname = split_part($1, '.', 2)",
                &[&rule.table],
            )
            .await?
            .map(|r| r.get(0));
        if full != Some(true) {
            return Err(CdcError::RuleNeedsOldValues { rule: rule.name, table: rule.table });
        }
    }
    Ok(())
}

/// Makes sure the slot exists: creates it on first start, refuses to recreate one that was lost.
async fn ensure_slot(settings: &CdcSettings, writer: &Client) -> Result<(), CdcError> {
    let exists = writer
        .query_opt("select 1 from pg_replication_slots where slot_name = $1", &[&settings.slot])
        .await?
        .is_some();
    writer.batch_execute(&format!("begin; set local role {}", quote_ident(EVENTS))).await?;
    let recorded = writer
        .query_opt("select 1 from events.cdc_slots where slot_name = $1", &[&settings.slot])
        .await?
        .is_some();
    if !exists {
        if recorded {
            writer.batch_execute("rollback").await?;
            return Err(CdcError::SlotLost { slot: settings.slot.clone() });
        }
        let mut config = tokio_postgres::Config::new();
        config
            .host(&settings.host)
            .port(settings.port)
            .user(&settings.replication_user)
            .password(&settings.replication_password)
            .dbname(&settings.database);
        let replication = bootstrap::connect(&config).await?;
        replication
            .query_one("select pg_create_logical_replication_slot($1, 'pgoutput')", &[&settings.slot])
            .await?;
        tracing::info!(slot = %settings.slot, "replication slot created");
    }
    if !recorded {
        writer.execute("insert into events.cdc_slots (slot_name) values ($1)", &[&settings.slot]).await?;
    }
    writer.batch_execute("commit").await?;
    Ok(())
}

/// What the worker reads from the log before it writes: its high-water mark and the key of event ids.
struct LogState {
    /// The commit LSN of the last source transaction of this server's WAL whose events are in the log (0
    /// when none are).
    written: u64,
    /// This server's `system_identifier`, recorded with every mark.
    system: i64,
    id_key: Vec<u8>,
    /// The number of the log's last event (0 when the log is empty): the worker numbers events on from it.
    last_seq: i64,
}

/// Reads the log's high-water mark for this server, as tessera_events.
///
/// Marks are kept with the server's `system_identifier` (the same on a physical standby, new after a dump
/// and restore or `pg_upgrade`): commit LSNs of another server's WAL say nothing about this one's, and
/// trusting them would skip this server's changes until its WAL got past them. A log written before marks
/// were kept (no row names a server) is covered up to its last event when that is in this server's WAL's
/// past, and not at all when it is not (restored from another server); the decision is recorded in the
/// slot's row at once, so it is made only the first time.
async fn log_state(writer: &Client, slot: &str) -> Result<LogState, CdcError> {
    writer.batch_execute(&format!("begin; set local role {}", quote_ident(EVENTS))).await?;
    let state = read_log_state(writer, slot).await;
    match state {
        Ok(_) => writer.batch_execute("commit").await?,
        Err(_) => writer.batch_execute("rollback").await?,
    }
    state
}

async fn read_log_state(writer: &Client, slot: &str) -> Result<LogState, CdcError> {
    let row = writer
        .query_one(
            "select (select system_identifier from pg_control_system()),
                    (pg_current_wal_insert_lsn() - '0/0')::int8,
                    exists (select 1 from events.cdc_slots where system_id is not null),
                    (select event_id_key from events.cdc_keys),
                    -- Numbers are never given twice: retention may have deleted the newest chunks, but never
                    -- past a subscriber's position.
                    greatest(events.log_end(), (select coalesce(max(position), 0) from events.subscribers))",
            &[],
        )
        .await?;
    let (system, now, marks_kept): (i64, i64, bool) = (row.get(0), row.get(1), row.get(2));
    let last_seq: i64 = row.get(4);
    let id_key: Vec<u8> = row.get::<_, Option<Vec<u8>>>(3).ok_or(CdcError::NoIdKey)?;
    let written: i64 = if marks_kept {
        // Over every slot the log was written from on this server: a copy of an older slot sends again what
        // the log holds.
        writer
            .query_one(
                "select (coalesce(max(written_lsn), '0/0') - '0/0')::int8 from events.cdc_slots
                  where system_id = $1",
                &[&system],
            )
            .await?
            .get(0)
    } else {
        // `seq` follows commit order: the log's last event has its highest commit LSN.
        let last: i64 = writer
            .query_one(
                "select (coalesce((select commit_lsns[cardinality(commit_lsns)] from events.log_chunks
                                    order by last_seq desc limit 1), '0/0')
                         - '0/0')::int8",
                &[],
            )
            .await?
            .get(0);
        // Ahead of this server's WAL: written from another server's.
        let written = if last <= now { last } else { 0 };
        let lsn = format_lsn(written.cast_unsigned());
        writer.execute(RECORD_HIGH_WATER, &[&slot, &lsn, &system]).await?;
        written
    };
    if written > now {
        // Recorded for this server, yet ahead of its WAL: no worker can have written that.
        return Err(CdcError::MarkAhead {
            written: format_lsn(written.cast_unsigned()),
            now: format_lsn(now.cast_unsigned()),
        });
    }
    Ok(LogState { written: written.cast_unsigned(), system, id_key, last_seq })
}

/// Runs the worker until the stream ends or fails. Transient failures are the caller's to retry.
pub async fn run(settings: &CdcSettings) -> Result<(), CdcError> {
    let writer = bootstrap::connect(&settings.writer).await?;
    check_rules(settings, &writer).await?;
    let held: bool = writer.query_one("select pg_try_advisory_lock($1)", &[&WORKER_LOCK]).await?.get(0);
    if !held {
        tracing::info!(slot = %settings.slot, "another CDC worker is running; standing by");
        // Returns when the other worker's session ends, however it ends.
        writer.execute("select pg_advisory_lock($1)", &[&WORKER_LOCK]).await?;
        tracing::info!(slot = %settings.slot, "taking over as the CDC worker");
    }
    ensure_slot(settings, &writer).await?;
    let LogState { written, system, id_key, last_seq } = log_state(&writer, &settings.slot).await?;
    let ids = EventIds::new(&id_key);
    let config = ReplicationConfig::new(
        settings.host.clone(),
        settings.replication_user.clone(),
        settings.replication_password.clone(),
        settings.database.clone(),
        settings.slot.clone(),
        settings.publication.clone(),
    )
    .with_port(settings.port)
    // How long a durable position may wait before it is acknowledged (the slot's confirmed position trails
    // the log by at most this): a status message per interval while changes flow, none when idle.
    .with_status_interval(Duration::from_millis(50));
    let mut stream = connect_with_retry(config).await?;
    let mut state = Stream {
        writer: Arc::new(writer),
        relations: HashMap::new(),
        tx: None,
        rules: settings.rules.clone(),
        writing: false,
        pending: Vec::new(),
        in_flight: None,
        tx_start: 0,
        statements: None,
        heartbeats: Vec::new(),
        slot: settings.slot.clone(),
        written,
        ids,
        system,
        group_high: None,
        log_holds_events: false,
        last_seq,
    };
    // Source transactions that arrive close together share one log transaction (a group): one commit, one
    // fsync and one acknowledgement for all of them, so many small transactions cost little more than one
    // large one. A group takes no new source transaction once it holds GROUP_TRANSACTIONS or is GROUP_AGE
    // old, and commits before the worker waits for the stream, or as soon as a large transaction behind it
    // fills a chunk.
    let mut group: Option<Group> = None;
    let mut next: Option<ReplicationEvent> = None;
    let mut ended = false;
    loop {
        let event = match next.take() {
            Some(event) => event,
            None => {
                // Before waiting, commit the group, unless a source transaction is half received (the rest
                // of it is on its way; the group closes after its commit).
                if state.tx.is_some() {
                } else if let Some(g) = group.take() {
                    state.commit_group().await?;
                    stream.update_applied_lsn(g.end_lsn);
                    tracing::debug!(transactions = g.transactions, age = ?g.started.elapsed(), "group committed");
                }
                if ended {
                    break;
                }
                match stream.recv().await? {
                    Some(event) => event,
                    None => break,
                }
            }
        };
        match event {
            ReplicationEvent::Begin { final_lsn, commit_time_micros, .. } => {
                let commit_lsn = final_lsn.as_u64();
                let mut tx = SourceTx::new(commit_lsn, commit_time_micros);
                // Sent again (a crash before its acknowledgement, a slot that moved back): already in the log.
                tx.skip = commit_lsn <= state.written;
                state.tx = Some(tx);
                state.tx_start = state.pending.len();
            }
            ReplicationEvent::XLogData { data, .. } => {
                state.apply(pgoutput::decode(&data)?).await?;
                if state.pending.len() >= CHUNK {
                    // A large transaction: the group before it commits now rather than after all of it.
                    if let Some(g) = group.take() {
                        let before = state.tx_start;
                        state.flush_through(before).await?;
                        state.commit_written().await?;
                        stream.update_applied_lsn(g.end_lsn);
                    }
                    state.flush().await?;
                }
            }
            ReplicationEvent::Commit { end_lsn, .. } => {
                state.end_source_tx().await?;
                let g =
                    group.get_or_insert_with(|| Group { started: Instant::now(), transactions: 0, end_lsn });
                g.end_lsn = end_lsn;
                g.transactions += 1;
                // Keep the group open for what arrives while it is young. Keepalives in between say nothing
                // the group's acknowledgement will not (the walsender sends one whenever our confirmed
                // position lags what it has sent, that is, all the time while a group is open).
                // Only what has already arrived joins: waiting for more would delay every event in the group
                // (under a backlog the stream always has the next message ready, so groups still grow).
                while g.transactions < GROUP_TRANSACTIONS && g.started.elapsed() < GROUP_AGE {
                    tokio::task::yield_now().await;
                    match stream.recv().now_or_never() {
                        Some(Ok(Some(ReplicationEvent::KeepAlive { .. }))) => continue,
                        Some(Ok(Some(event))) => next = Some(event),
                        Some(Ok(None)) => ended = true,
                        Some(Err(e)) => {
                            // Whatever is in the group is still written; it is acknowledged on redelivery.
                            state.commit_group().await?;
                            return Err(e.into());
                        }
                        None => {}
                    }
                    break;
                }
            }
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                // Everything before wal_end has been sent and, outside a transaction and a group, written.
                if state.tx.is_none() && group.is_none() {
                    stream.update_applied_lsn(wal_end);
                }
            }
            // The replication client decodes logical messages itself.
            ReplicationEvent::Message { transactional: true, prefix, content, .. }
                if prefix == HEARTBEAT_PREFIX =>
            {
                // Short, and passed on only as a notification payload.
                let content = String::from_utf8_lossy(&content);
                // Bounded: under a backlog the oldest are dropped (their gateways send more).
                if state.heartbeats.len() >= 64 {
                    state.heartbeats.remove(0);
                }
                state.heartbeats.push(content.chars().take(200).collect());
            }
            ReplicationEvent::Message { .. } => {}
            ReplicationEvent::StoppedAt { .. } => ended = true,
        }
    }
    // A source transaction cut off by the end of the stream is not committed: its events would be in the
    // log without the rest of it. The group before it goes with it (the writer's transaction rolls back);
    // all of it is sent again, whole, next time.
    if group.is_some() && state.tx.is_none() {
        state.commit_group().await?;
    }
    Ok(())
}

/// Source transactions written in one log transaction, acknowledged together after its commit.
struct Group {
    started: Instant,
    transactions: usize,
    /// The end LSN of the last source transaction in the group.
    end_lsn: pgwire_replication::Lsn,
}

/// Source transactions per group, at most.
const GROUP_TRANSACTIONS: usize = 1000;
/// How long a group stays open for more source transactions that have already arrived.
const GROUP_AGE: Duration = Duration::from_millis(5);

/// [`supervise`] on a thread of its own, with a single-threaded runtime: the replication stream's reader,
/// the decode loop and the log writer's connection hand each message on without waking another thread
/// (with the process's multi-threaded runtime, those wake-ups cost about a third of the worker's CPU;
/// BENCHMARKS.md, "CDC (issue 3)"). Dropping the returned future stops the worker (its thread drops `supervise` at its next
/// wake-up and ends); a panic on the thread is resumed here.
pub async fn supervise_on_own_thread(settings: CdcSettings) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (done, finished) = tokio::sync::oneshot::channel::<()>();
    let on_thread = settings.clone();
    let spawned = tokio::runtime::Builder::new_current_thread().enable_all().build().and_then(|runtime| {
        std::thread::Builder::new().name("tessera-cdc".into()).spawn(move || {
            runtime.block_on(async move {
                tokio::select! {
                    () = supervise(on_thread) => {},
                    _ = stopped => {},
                }
            });
            let _ = done.send(());
        })
    });
    match spawned {
        Ok(thread) => {
            // Held until this future ends or is dropped; either way the thread's worker stops.
            let _stop = stop;
            if finished.await.is_err() {
                // The thread ended without saying so: the worker panicked. As on the process's runtime, the
                // panic goes on up (a supervisor restarts the process; a standby takes over meanwhile).
                if let Err(panic) = thread.join() {
                    std::panic::resume_unwind(panic);
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "no thread for the cdc worker; it shares the process's runtime");
            supervise(settings).await;
        }
    }
}

/// Runs the worker for as long as the process lives: a transient failure (a lost connection, a restarted
/// database) is retried with backoff; a definite one (the slot is lost) is logged for an operator and ends it.
pub async fn supervise(settings: CdcSettings) {
    let mut delay = Duration::from_millis(100);
    loop {
        match run(&settings).await {
            Ok(()) => tracing::info!(slot = %settings.slot, "replication stream ended"),
            Err(
                e @ (CdcError::SlotLost { .. }
                | CdcError::RuleNeedsOldValues { .. }
                | CdcError::DuplicateRule(_)
                | CdcError::MarkAhead { .. }
                | CdcError::NoIdKey),
            ) => {
                tracing::error!(error = %e, "cdc worker stopped; an operator must act");
                return;
            }
            Err(e) => tracing::warn!(error = format!("{e:#}"), "cdc worker failed; retrying"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// A stale walsender may still hold the slot for a moment after a previous worker died (55006).
async fn connect_with_retry(config: ReplicationConfig) -> Result<ReplicationClient, CdcError> {
    let mut delay = Duration::from_millis(50);
    let mut attempts = 0;
    loop {
        match ReplicationClient::connect(config.clone()).await {
            Ok(mut client) => match client.wait_started().await {
                Ok(()) => return Ok(client),
                Err(e) if attempts < 40 => tracing::warn!(error = %e, "replication slot busy, retrying"),
                Err(e) => return Err(e.into()),
            },
            Err(e) if attempts < 40 => tracing::warn!(error = %e, "replication connection failed, retrying"),
            Err(e) => return Err(e.into()),
        }
        attempts += 1;
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

struct SourceTx {
    commit_lsn: u64,
    commit_micros: i64,
    position: i32,
    /// Its events are in the log already (it commits at or below the log's high-water mark).
    skip: bool,
}

impl SourceTx {
    fn new(commit_lsn: u64, commit_micros: i64) -> Self {
        Self { commit_lsn, commit_micros, position: 0, skip: false }
    }
}

struct ChangeEvent {
    tenant: Uuid,
    id: Uuid,
    commit_lsn: u64,
    commit_micros: i64,
    position: i32,
    kind: String,
    /// The event's JSON.
    data: String,
}

struct Stream {
    writer: Arc<Client>,
    relations: HashMap<u32, Relation>,
    tx: Option<SourceTx>,
    rules: Vec<EventRule>,
    /// Whether a writer transaction (a group's) is open.
    writing: bool,
    /// Events decoded but not yet sent to the log (fewer than CHUNK).
    pending: Vec<ChangeEvent>,
    /// The chunk being written while the next one is decoded.
    in_flight: Option<tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>>,
    /// Where the current source transaction's events start in `pending`.
    tx_start: usize,
    statements: Option<Statements>,
    /// Heartbeats received and not yet passed on (see [`HEARTBEAT_CHANNEL`]); several gateways send them.
    heartbeats: Vec<String>,
    slot: String,
    /// The log's high-water mark when the worker started: source transactions committing at or below it are
    /// in the log.
    written: u64,
    ids: EventIds,
    /// This server's `system_identifier`, recorded with the mark.
    system: i64,
    /// The commit LSN of the last complete source transaction sent to the open log transaction: recorded
    /// with it as the new high-water mark.
    group_high: Option<u64>,
    /// Whether the open log transaction holds events (one that only passes heartbeats on records nothing).
    log_holds_events: bool,
    /// The number given to the last event sent to the log. This session is the only writer (it holds the
    /// worker lock), and a log transaction that fails ends the session: the next one reads it again.
    last_seq: i64,
}

impl Drop for Stream {
    /// A write still in flight holds the writer's session (and the worker lock); a stream that is gone
    /// stops it, so the transaction rolls back and the lock is free for the retry.
    fn drop(&mut self) {
        if let Some(write) = self.in_flight.take() {
            write.abort();
        }
    }
}

impl Stream {
    async fn apply(&mut self, message: Message) -> Result<(), CdcError> {
        if let Message::Relation(r) = message {
            self.relations.insert(r.id, r);
            return Ok(());
        }
        if self.tx.as_ref().is_some_and(|tx| tx.skip) {
            return Ok(());
        }
        let (relation_id, op, old, new) = match message {
            Message::Insert { relation_id, new } => (relation_id, "insert", None, Some(new)),
            Message::Update { relation_id, old, new } => (relation_id, "update", old, Some(new)),
            Message::Delete { relation_id, old } => (relation_id, "delete", Some(old), None),
            Message::Truncate { relation_ids, .. } => {
                // No runtime role may truncate; only an operator can, and the change has no tenant.
                if let Some(tx) = self.tx.as_mut() {
                    tx.position += 1;
                }
                tracing::error!(relations = ?relation_ids, "truncate of published tables is not recorded as events");
                return Ok(());
            }
            _ => return Ok(()),
        };
        // Every change message takes a position, recorded or not, so that ids stay stable across versions.
        let Some(tx) = self.tx.as_mut() else {
            tracing::error!("change outside a transaction; skipped");
            return Ok(());
        };
        let position = tx.position;
        tx.position += 1;
        let Some(relation) = self.relations.get(&relation_id) else {
            tracing::error!(relation_id, "change for a relation never described; skipped");
            return Ok(());
        };
        let table = format!("{}.{}", relation.namespace, relation.name);
        let (old_tuple, old_key_only) = match &old {
            Some(OldTuple::Full(t)) => (Some(t), false),
            // A key-only old row carries the key columns; the others come as 'n' and are not null.
            Some(OldTuple::Key(t)) => (Some(t), true),
            None => (None, false),
        };
        let full_old = old_tuple.filter(|_| !old_key_only);
        let new_view = new.as_ref().map(|t| TupleRow { relation, tuple: t, key_only: false, old: full_old });
        let old_view = old_tuple.map(|t| TupleRow { relation, tuple: t, key_only: old_key_only, old: None });
        let (new_tenant, old_tenant) = (
            new_view.as_ref().and_then(|r| r.text("tenant_id")),
            old_view.as_ref().and_then(|r| r.text("tenant_id")),
        );
        if let (Some(n), Some(o)) = (new_tenant, old_tenant)
            && n != o
        {
            tracing::error!(table = %table, "a row moved between tenants; not recorded");
            return Ok(());
        }
        let Some(tenant) = new_tenant.or(old_tenant).and_then(|s| Uuid::parse_str(s).ok()) else {
            tracing::error!(table = %table, "change without tenant_id; skipped");
            return Ok(());
        };
        let view = ChangeView {
            table: &table,
            op,
            new: new_view.as_ref().map(|r| r as &dyn RowText),
            old: old_view.as_ref().map(|r| r as &dyn RowText),
        };
        let derived: Vec<&'static str> =
            self.rules.iter().filter(|r| r.table == table && (r.matches)(&view)).map(|r| r.name).collect();
        // The event's JSON, written straight from the tuples: {"table", "op", "new", "old"[, "unchanged_toast"]}.
        let mut data = String::with_capacity(256);
        data.push_str("{\"table\":");
        push_json_str(&mut data, &table);
        data.push_str(",\"op\":\"");
        data.push_str(op);
        data.push_str("\",\"new\":");
        let mut unchanged = Vec::new();
        match &new_view {
            Some(r) => r.write_json(&mut data, &mut unchanged),
            None => data.push_str("null"),
        }
        data.push_str(",\"old\":");
        match &old_view {
            // A full old row is sent whole (Postgres flattens it for REPLICA IDENTITY FULL).
            Some(r) => r.write_json(&mut data, &mut Vec::new()),
            None => data.push_str("null"),
        }
        if !unchanged.is_empty() {
            data.push_str(",\"unchanged_toast\":[");
            for (i, name) in unchanged.iter().enumerate() {
                if i > 0 {
                    data.push(',');
                }
                push_json_str(&mut data, name);
            }
            data.push(']');
        }
        data.push('}');
        let Some(tx) = self.tx.as_mut() else { return Ok(()) };
        let change_id = self.ids.id(tx.commit_lsn, position, "", tx.commit_micros);
        // Domain events follow their change in the log and carry its row and id.
        let domain: Vec<ChangeEvent> = derived
            .into_iter()
            .map(|name| {
                let mut d = String::with_capacity(data.len() + 60);
                d.push_str(&data[..data.len() - 1]);
                d.push_str(",\"change_id\":\"");
                d.push_str(&change_id.to_string());
                d.push_str("\"}");
                ChangeEvent {
                    tenant,
                    id: self.ids.id(tx.commit_lsn, position, name, tx.commit_micros),
                    commit_lsn: tx.commit_lsn,
                    commit_micros: tx.commit_micros,
                    position,
                    kind: name.to_owned(),
                    data: d,
                }
            })
            .collect();
        self.pending.push(ChangeEvent {
            tenant,
            id: change_id,
            commit_lsn: tx.commit_lsn,
            commit_micros: tx.commit_micros,
            position,
            kind: format!("{table}.{op}"),
            data,
        });
        self.pending.extend(domain);
        Ok(())
    }

    /// Sends what is pending to the group's log transaction (opening it first), and returns while it is
    /// written: the next chunk is decoded meanwhile. Statements on the connection run in the order sent, and
    /// each chunk waits for the one before it.
    async fn flush(&mut self) -> Result<(), CdcError> {
        self.flush_through(self.pending.len()).await
    }

    /// The same for the first `n` pending events only.
    async fn flush_through(&mut self, n: usize) -> Result<(), CdcError> {
        if n == 0 {
            return Ok(());
        }
        self.wait_for_writes().await?;
        self.open_log_tx(true).await?;
        let events: Vec<ChangeEvent> = self.pending.drain(..n).collect();
        self.tx_start = self.tx_start.saturating_sub(n);
        let statements = match &self.statements {
            Some(prepared) => prepared.clone(),
            None => {
                // Prepared once per connection, inside the transaction (as tessera_events).
                let prepared = Statements {
                    bind: self.writer.prepare(BIND_TENANT).await?,
                    insert: self.writer.prepare(INSERT_EVENTS).await?,
                    high_water: self.writer.prepare(RECORD_HIGH_WATER).await?,
                };
                self.statements = Some(prepared.clone());
                prepared
            }
        };
        let writer = self.writer.clone();
        let first_seq = self.last_seq + 1;
        self.last_seq += i64::try_from(events.len()).unwrap_or(i64::MAX);
        self.in_flight =
            Some(tokio::spawn(async move { write_chunk(&writer, &statements, first_seq, &events).await }));
        Ok(())
    }

    /// Opens the group's log transaction unless it is open.
    /// `with_events`: the transaction will hold events, and wakes the dispatcher when it commits (a
    /// transaction that only passes a heartbeat on does not).
    async fn open_log_tx(&mut self, with_events: bool) -> Result<(), CdcError> {
        if !self.writing {
            // Durable before the slot is acknowledged, whatever the server's default; the notification
            // goes out with the commit.
            // A heartbeat alone need not survive a crash: it is sent again.
            let rest = if with_events {
                format!("set local synchronous_commit = on; notify {CHANNEL}")
            } else {
                "set local synchronous_commit = off".to_owned()
            };
            self.writer
                .batch_execute(&format!("begin; set local role {}; {rest}", quote_ident(EVENTS)))
                .await?;
            self.writing = true;
        }
        self.log_holds_events |= with_events;
        Ok(())
    }

    async fn wait_for_writes(&mut self) -> Result<(), CdcError> {
        if let Some(write) = self.in_flight.take() {
            write.await.map_err(|e| CdcError::Writer(e.to_string()))??;
        }
        Ok(())
    }

    /// The source transaction is complete; its events go out with the group's.
    async fn end_source_tx(&mut self) -> Result<(), CdcError> {
        if let Some(tx) = self.tx.take()
            && !tx.skip
        {
            self.group_high = Some(tx.commit_lsn);
        }
        Ok(())
    }

    /// Makes the group's events durable; only then may the caller acknowledge it. Only between source
    /// transactions: everything pending is complete.
    async fn commit_group(&mut self) -> Result<(), CdcError> {
        self.flush().await?;
        if !self.heartbeats.is_empty() {
            let heartbeats = std::mem::take(&mut self.heartbeats);
            // After flush(): a transaction open by now holds events (and notifies); if none is, this one
            // only passes the heartbeats on.
            self.open_log_tx(false).await?;
            self.writer
                .execute(
                    "select pg_notify($1, h) from unnest($2::text[]) h",
                    &[&HEARTBEAT_CHANNEL, &heartbeats],
                )
                .await?;
        }
        self.commit_written().await
    }

    /// Commits what has been sent (not what is pending), with the new high-water mark: the last complete
    /// source transaction before what is pending.
    async fn commit_written(&mut self) -> Result<(), CdcError> {
        self.wait_for_writes().await?;
        let high = self.group_high.take();
        if !std::mem::take(&mut self.writing) {
            return Ok(());
        }
        let holds_events = std::mem::take(&mut self.log_holds_events);
        match (holds_events, high, &self.statements) {
            (true, Some(high), Some(statements)) => {
                let high = format_lsn(high);
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
                    [&self.slot, &high, &self.system];
                let (recorded, committed) = tokio::join!(
                    biased;
                    self.writer.execute(&statements.high_water, &params),
                    self.writer.batch_execute("commit")
                );
                recorded?;
                committed?;
            }
            _ => self.writer.batch_execute("commit").await?,
        }
        Ok(())
    }
}

/// Inserts a chunk of events numbered from `first_seq`: consecutive events of one tenant go into one row of
/// the log (a log chunk), with that tenant bound (the log's row policy checks every row against it).
async fn write_chunk(
    writer: &Client,
    statements: &Statements,
    first_seq: i64,
    events: &[ChangeEvent],
) -> Result<(), tokio_postgres::Error> {
    use tokio_postgres::types::{PgLsn, ToSql};
    let mut start = 0;
    while start < events.len() {
        let tenant = events[start].tenant;
        let end = events[start..].iter().position(|e| e.tenant != tenant).map_or(events.len(), |n| start + n);
        let group = &events[start..end];
        let first = first_seq + i64::try_from(start).unwrap_or(i64::MAX);
        let last = first_seq + i64::try_from(end).unwrap_or(i64::MAX) - 1;
        let ids: Vec<Uuid> = group.iter().map(|e| e.id).collect();
        let min_id = ids.iter().min().copied().unwrap_or_default();
        let max_id = ids.iter().max().copied().unwrap_or_default();
        let lsns: Vec<PgLsn> = group.iter().map(|e| PgLsn::from(e.commit_lsn)).collect();
        let positions: Vec<i32> = group.iter().map(|e| e.position).collect();
        let kinds: Vec<&str> = group.iter().map(|e| e.kind.as_str()).collect();
        let times: Vec<SystemTime> = group.iter().map(|e| commit_time(e.commit_micros)).collect();
        let data: Vec<&str> = group.iter().map(|e| e.data.as_str()).collect();
        let tenant_text = tenant.to_string();
        let bind_params: [&(dyn ToSql + Sync); 1] = [&tenant_text];
        let insert_params: [&(dyn ToSql + Sync); 11] =
            [&tenant, &first, &last, &min_id, &max_id, &ids, &lsns, &positions, &kinds, &times, &data];
        // Prepared statements go out on their first poll: `biased` sends the binding, then the insert, and
        // both are answered in one round trip.
        let (bound, inserted) = tokio::join!(
            biased;
            writer.execute(&statements.bind, &bind_params),
            writer.execute(&statements.insert, &insert_params)
        );
        bound?;
        inserted?;
        start = end;
    }
    Ok(())
}

/// Microseconds from the Unix epoch to Postgres's (2000-01-01).
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// A commit time in Postgres's microseconds since 2000 as a point in time.
fn commit_time(commit_micros: i64) -> SystemTime {
    let unix = commit_micros.saturating_add(PG_EPOCH_UNIX_MICROS);
    let magnitude = Duration::from_micros(unix.unsigned_abs());
    if unix >= 0 { SystemTime::UNIX_EPOCH + magnitude } else { SystemTime::UNIX_EPOCH - magnitude }
}

/// The writer's statements, prepared once per connection.
#[derive(Clone)]
struct Statements {
    bind: tokio_postgres::Statement,
    insert: tokio_postgres::Statement,
    high_water: tokio_postgres::Statement,
}

/// Binds a tenant for the rest of the transaction (the writer here, the dispatcher too).
pub(crate) const BIND_TENANT: &str = "select set_config('tessera.tenant_id', $1, true)";

const INSERT_EVENTS: &str = "insert into events.log_chunks
            (tenant_id, first_seq, last_seq, min_id, max_id, ids, commit_lsns, positions, types, commit_times,
             data)
     values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";

/// Records the log's high-water mark, and the server whose WAL it is in, in the transaction that writes the
/// events it covers (the slot's row again, should an operator have deleted it).
const RECORD_HIGH_WATER: &str =
    "insert into events.cdc_slots (slot_name, written_lsn, system_id) values ($1, $2::text::pg_lsn, $3)
     on conflict (slot_name) do update set written_lsn = excluded.written_lsn, system_id = excluded.system_id";

/// A decoded row: what event rules read, and what the event's JSON is written from.
struct TupleRow<'a> {
    relation: &'a Relation,
    tuple: &'a Tuple,
    /// A key-only old row: only its key columns were sent (the others come as 'n' and are not null).
    key_only: bool,
    /// The full old row, where an unchanged TOASTed value of this (new) row comes from.
    old: Option<&'a Tuple>,
}

impl TupleRow<'_> {
    /// The column's value: an unchanged TOASTed one from the old row when there is one; `None` when it is
    /// not here (a non-key column of a key-only row, an unchanged TOASTed value without a full old row).
    fn datum(&self, i: usize) -> Option<&Datum> {
        let column = self.relation.columns.get(i)?;
        if self.key_only && !column.is_key {
            return None;
        }
        match self.tuple.0.get(i)? {
            Datum::UnchangedToast => self.old?.0.get(i).filter(|d| !matches!(d, Datum::UnchangedToast)),
            d => Some(d),
        }
    }

    /// The row as a JSON object. An unchanged TOASTed value without a full old row is left out and named in
    /// `unchanged`: never turned into null. A key-only row has its key columns only.
    fn write_json(&self, out: &mut String, unchanged: &mut Vec<String>) {
        out.push('{');
        let mut first = true;
        for (i, column) in self.relation.columns.iter().enumerate() {
            let Some(datum) = self.datum(i) else {
                if !self.key_only && matches!(self.tuple.0.get(i), Some(Datum::UnchangedToast)) {
                    unchanged.push(column.name.clone());
                }
                continue;
            };
            if self.key_only && matches!(datum, Datum::Null) {
                continue;
            }
            if !std::mem::take(&mut first) {
                out.push(',');
            }
            push_json_str(out, &column.name);
            out.push(':');
            match datum {
                Datum::Null | Datum::UnchangedToast => out.push_str("null"),
                Datum::Text(bytes) => write_json(out, column.type_oid, &String::from_utf8_lossy(bytes)),
                Datum::Binary(bytes) => {
                    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                    push_json_str(out, &hex);
                }
            }
        }
        out.push('}');
    }
}

impl RowText for TupleRow<'_> {
    fn text(&self, column: &str) -> Option<&str> {
        let i = self.relation.columns.iter().position(|c| c.name == column)?;
        if !is_json_string(self.relation.columns[i].type_oid) {
            return None;
        }
        match self.datum(i)? {
            Datum::Text(bytes) => std::str::from_utf8(bytes).ok(),
            _ => None,
        }
    }
}

/// Event ids, under the installation's key (`events.cdc_keys`).
pub struct EventIds(hmac::Hmac<sha2::Sha256>);

impl EventIds {
    pub fn new(key: &[u8]) -> Self {
        use hmac::Mac;
        // HMAC takes a key of any length; the error exists for other MACs.
        Self(hmac::Hmac::new_from_slice(key).expect("HMAC takes a key of any length"))
    }

    /// The id of the event that the change at `position` of the transaction committing at `lsn` (at
    /// `commit_micros`, Postgres's microseconds since 2000) yields: the change event itself (`rule` empty) or
    /// the domain event the named rule derives from it.
    ///
    /// A UUIDv7: the commit's Unix milliseconds, then 74 bits of an HMAC-SHA-256, under the key, of the LSN,
    /// position and rule. All of it comes from the WAL and the key, so a replay, or a new version with its
    /// rules in another order, produces the same ids. It says nothing a tenant does not already see (the
    /// event's `commit_time`): without the key the LSN cannot be recovered by trying every one, so an id does
    /// not tell how much the other tenants wrote. And a tenant's ids grow with time, so the log's
    /// `(tenant_id, id)` key is appended to, not written at random places (a random key cost the CDC writer a
    /// third of its time).
    pub fn id(&self, lsn: u64, position: i32, rule: &str, commit_micros: i64) -> Uuid {
        use hmac::Mac;
        // The keyed state is computed once; each id costs the message's blocks only.
        let mut mac = self.0.clone();
        mac.update(b"tessera.event\0");
        mac.update(&lsn.to_be_bytes());
        mac.update(&position.to_be_bytes());
        mac.update(rule.as_bytes());
        let digest = mac.finalize().into_bytes();
        let millis = (commit_micros.saturating_add(PG_EPOCH_UNIX_MICROS).max(0) / 1000).cast_unsigned();
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
        bytes[6..].copy_from_slice(&digest[..10]);
        bytes[6] = 0x70 | (bytes[6] & 0x0f);
        bytes[8] = 0x80 | (bytes[8] & 0x3f);
        Uuid::from_bytes(bytes)
    }
}

fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_deterministic_and_distinct() {
        let ids = EventIds::new(&[7u8; 32]);
        let id = |lsn, position, rule, at| ids.id(lsn, position, rule, at);
        let at = 849_139_200_123_456; // 2026-11-28 00:00:00.123456 UTC, in Postgres's microseconds
        assert_eq!(id(0x16B3748, 3, "", at), id(0x16B3748, 3, "", at));
        assert_eq!(id(0x16B3748, 3, "deal.closed.won", at), id(0x16B3748, 3, "deal.closed.won", at));
        let mut seen = std::collections::HashSet::new();
        for lsn in [0u64, 1, 0x100, 0x1_0000_0000, u64::MAX, 0x00FF_0000_0000_0000, 0x0000_0000_0000_FF00] {
            for position in [0, 1, 255, i32::MAX] {
                for rule in ["", "deal.closed.won", "invoice.paid"] {
                    assert!(seen.insert(id(lsn, position, rule, at)), "{lsn:#x} {position} {rule}");
                }
            }
        }
        // Keyed: another installation's key gives other ids for the same change.
        assert_ne!(EventIds::new(&[8u8; 32]).id(0x16B3748, 3, "", at), id(0x16B3748, 3, "", at));
        // A UUIDv7 carrying the commit's Unix milliseconds: later commits sort after earlier ones.
        let first = id(1, 0, "", at);
        assert_eq!(first.get_version_num(), 7);
        assert_eq!(first.get_variant(), uuid::Variant::RFC4122);
        let (secs, nanos) = first.get_timestamp().expect("v7 has a timestamp").to_unix();
        assert_eq!((secs, nanos), (1_795_824_000, 123_000_000));
        assert!(id(u64::MAX, 9, "x", at) < id(0, 0, "", at + 1000));
        assert_eq!(id(1, 0, "", -946_684_800_000_001).get_timestamp().map(|t| t.to_unix().0), Some(0));
        assert_eq!(format_lsn(0x1_0000_00AB), "1/AB");
    }

    #[test]
    fn unchanged_toast_comes_from_the_old_row_or_is_named_never_null() {
        let relation = Relation {
            id: 1,
            namespace: "crm".into(),
            name: "notes".into(),
            replica_identity: b'f',
            columns: vec![
                crate::pgoutput::Column { is_key: true, name: "id".into(), type_oid: 23, type_modifier: -1 },
                crate::pgoutput::Column {
                    is_key: false,
                    name: "body".into(),
                    type_oid: 25,
                    type_modifier: -1,
                },
            ],
        };
        let new = Tuple(vec![Datum::Text(b"1".to_vec()), Datum::UnchangedToast]);
        let json = |row: &TupleRow<'_>| {
            let (mut out, mut unchanged) = (String::new(), Vec::new());
            row.write_json(&mut out, &mut unchanged);
            (serde_json::from_str::<serde_json::Value>(&out).expect("valid JSON"), unchanged)
        };
        let alone = TupleRow { relation: &relation, tuple: &new, key_only: false, old: None };
        let (r, unchanged) = json(&alone);
        assert_eq!(unchanged, ["body"]);
        assert_eq!(r, serde_json::json!({"id": 1}));
        assert_eq!(alone.text("body"), None);
        let old = Tuple(vec![Datum::Text(b"1".to_vec()), Datum::Text(b"long \"text\"".to_vec())]);
        let with_old = TupleRow { old: Some(&old), ..alone };
        let (r, unchanged) = json(&with_old);
        assert!(unchanged.is_empty());
        assert_eq!(r, serde_json::json!({"id": 1, "body": "long \"text\""}));
        assert_eq!(with_old.text("body"), Some("long \"text\""));
        // Numbers are not text to a rule; a key-only row has its key only.
        assert_eq!(with_old.text("id"), None);
        let key = Tuple(vec![Datum::Text(b"1".to_vec()), Datum::Null]);
        let key_only = TupleRow { relation: &relation, tuple: &key, key_only: true, old: None };
        assert_eq!(json(&key_only), (serde_json::json!({"id": 1}), Vec::<String>::new()));
    }
}
