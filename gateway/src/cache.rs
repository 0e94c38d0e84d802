//! The response cache: GET answers of module routes, kept in memory (moka, bounded by bytes) and never
//! served stale.
//!
//! ```text
//! request ─▶ key check (cached per key and module) ─▶ GET and the cache is healthy?
//!              ├─ entry for (tenant, effective access, path, normalised query) with the current generation
//!              │    of (tenant, module) ─▶ served (strong ETag; If-None-Match ─▶ 304)
//!              └─ otherwise: note the generation, run the handler, keep a 200 under that generation
//! other methods ─▶ run the handler, then bump the generation of (tenant, module) before answering
//! ```
//!
//! - **Never across tenants or permissions**: the key is checked (from the key cache or the database)
//!   before any lookup, and the tenant and what the key may do in the module are part of the cache key.
//! - **Never stale after a write**: the gateway's own writes bump their (tenant, module) generation before
//!   they answer. Changes committed any other way (psql, another gateway, an event handler) arrive as change
//!   events in the log: a listener reads them on each notification and bumps the same generations.
//! - **A load racing a change** cannot leave a stale entry: the generation is read before the handler reads
//!   the database, so an entry loaded from data older than a change carries an older generation than the
//!   one the change set, and is never served.
//! - **Bounded, and fail closed**: every `heartbeat` the listener writes a logical message into the WAL; the
//!   CDC worker notifies it back once everything committed before it is in the log, and the listener first
//!   reads the log up to there. The cache serves only while the newest heartbeat that came back was sent
//!   less than `staleness_bound` ago and the listener is connected: a change committed any other way is
//!   invalidated within that bound, and with the worker or the listener down the cache stops serving.
//! - **Keys**: a key check is cached per (key, module); any change to keys, tenants or module entitlements
//!   notifies `tessera_auth` (`sql/core/V6__auth_changes.sql`) and empties the key cache; so does a
//!   reconnect of the listener.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::Body as _;
use sha2::{Digest, Sha256};
use tessera_core::apikey::{self, Access, PresentedKey};
use tessera_core::db::{Database, KeyGrant};
use tokio_postgres::{AsyncMessage, NoTls};
use uuid::Uuid;

use crate::paths;

/// The cache's limits and its freshness bound.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Bytes of response bodies kept, at most.
    pub max_bytes: u64,
    /// Larger responses are not kept.
    pub max_entry_bytes: usize,
    /// The longest a change committed outside this gateway may go unnoticed; beyond it the cache does not
    /// serve.
    pub staleness_bound: Duration,
    /// How often the listener checks the pipeline with a heartbeat.
    pub heartbeat_every: Duration,
    /// How long a key check is kept at most (changes to keys empty the cache at once anyway).
    pub key_ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_bytes: 64 * 1024 * 1024,
            max_entry_bytes: 1024 * 1024,
            staleness_bound: Duration::from_secs(1),
            heartbeat_every: Duration::from_millis(200),
            key_ttl: Duration::from_secs(60),
        }
    }
}

/// The channels and message prefix shared with the CDC worker and the key tables' triggers.
const EVENTS_CHANNEL: &str = "tessera_events";
const HEARTBEAT_CHANNEL: &str = "tessera_heartbeat";
const HEARTBEAT_PREFIX: &str = "tessera.heartbeat";
const AUTH_CHANNEL: &str = "tessera_auth";

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ResponseKey {
    tenant: Uuid,
    /// What the key may do in the module: the part of its permissions that can change the answer.
    access: &'static str,
    path: String,
    query: String,
}

struct Entry {
    generation: (u64, u64, u64),
    body: Bytes,
    content_type: Option<HeaderValue>,
    etag: HeaderValue,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub bypasses: AtomicU64,
    pub not_modified: AtomicU64,
    /// Entries dropped to stay within the size bound.
    pub evictions: Arc<AtomicU64>,
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy)]
pub struct CacheSnapshot {
    pub hits: u64,
    pub misses: u64,
    pub bypasses: u64,
    pub not_modified: u64,
    pub evictions: u64,
}

impl CacheStats {
    pub fn snapshot(&self) -> CacheSnapshot {
        CacheSnapshot {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            bypasses: self.bypasses.load(Ordering::Relaxed),
            not_modified: self.not_modified.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }
}

/// The cache shared by the gateway's requests and its listener.
pub struct ResponseCache {
    config: CacheConfig,
    db: Database,
    responses: moka::sync::Cache<Arc<ResponseKey>, Arc<Entry>>,
    keys: moka::sync::Cache<([u8; 32], &'static str), Arc<Option<KeyGrant>>>,
    /// Bumped when the listener (re)connects: everything before is forgotten.
    epoch: AtomicU64,
    /// Bumped with every change to keys, tenants or entitlements (and every reconnect): a key check that
    /// began before one is not kept.
    key_epoch: AtomicU64,
    generations: Mutex<HashMap<(Uuid, String), u64>>,
    health: Mutex<Health>,
    pub stats: CacheStats,
}

#[derive(Default)]
struct Health {
    listening: bool,
    /// When the newest heartbeat that came back was sent.
    confirmed: Option<Instant>,
}

impl ResponseCache {
    pub fn new(config: CacheConfig, db: Database) -> Arc<Self> {
        let evictions = Arc::new(AtomicU64::new(0));
        let evicted = evictions.clone();
        let responses = moka::sync::Cache::builder()
            // A backstop for changes no event reports (a TRUNCATE by an operator): nothing lives longer.
            .time_to_live(Duration::from_secs(300))
            .eviction_listener(move |_, _, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    evicted.fetch_add(1, Ordering::Relaxed);
                }
            })
            .max_capacity(config.max_bytes)
            .weigher(|key: &Arc<ResponseKey>, entry: &Arc<Entry>| {
                let bytes = entry.body.len() + key.path.len() + key.query.len() + 128;
                u32::try_from(bytes).unwrap_or(u32::MAX)
            })
            .build();
        let keys = moka::sync::Cache::builder().max_capacity(100_000).time_to_live(config.key_ttl).build();
        Arc::new(Self {
            config,
            db,
            responses,
            keys,
            epoch: AtomicU64::new(0),
            key_epoch: AtomicU64::new(0),
            generations: Mutex::new(HashMap::new()),
            health: Mutex::new(Health::default()),
            stats: CacheStats { evictions, ..CacheStats::default() },
        })
    }

    /// Whether a change committed elsewhere would have reached the cache by now (within the bound).
    pub fn healthy(&self) -> bool {
        let health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        health.listening && health.confirmed.is_some_and(|at| at.elapsed() < self.config.staleness_bound)
    }

    fn generation(&self, tenant: Uuid, module: &str) -> (u64, u64, u64) {
        let generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        let n = generations.get(&(tenant, module.to_owned())).copied().unwrap_or(0);
        // Plus the module's own generation, which every tenant's entries of the module share.
        let all = generations.get(&(Uuid::nil(), module.to_owned())).copied().unwrap_or(0);
        (self.epoch.load(Ordering::SeqCst), all, n)
    }

    /// Makes every tenant's entries of the module stale (a write whose tenant could not be told).
    fn invalidate_module(&self, module: &str) {
        self.invalidate(Uuid::nil(), module);
    }

    /// Makes every entry of the tenant's module data stale.
    pub fn invalidate(&self, tenant: Uuid, module: &str) {
        let mut generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        *generations.entry((tenant, module.to_owned())).or_insert(0) += 1;
    }

    /// Forgets everything: entries and key checks.
    fn invalidate_all(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.invalidate_keys();
        self.responses.invalidate_all();
    }

    fn invalidate_keys(&self) {
        self.key_epoch.fetch_add(1, Ordering::SeqCst);
        self.keys.invalidate_all();
    }

    async fn grant(&self, key: &PresentedKey, module: &'static str) -> Option<KeyGrant> {
        let mut hash = [0u8; 32];
        hash.copy_from_slice(key.hash());
        if let Some(grant) = self.keys.get(&(hash, module)) {
            return (*grant).clone();
        }
        let epoch = self.key_epoch.load(Ordering::SeqCst);
        // A failed check (the database down) is not cached: the request goes on to the handler.
        let grant = self.db.key_grant(key, module).await.ok()?;
        // Only while the listener would hear of a change to it, and none came meanwhile.
        if self.healthy() && self.key_epoch.load(Ordering::SeqCst) == epoch {
            self.keys.insert((hash, module), Arc::new(grant.clone()));
        }
        grant
    }
}

/// The query string with its parameters in a stable order (by name; values of one name keep their order),
/// so that `?a=1&b=2` and `?b=2&a=1` share an entry. Parameters are compared as sent, undecoded.
fn normalised_query(query: Option<&str>) -> String {
    let mut pairs: Vec<&str> = query.unwrap_or("").split('&').filter(|p| !p.is_empty()).collect();
    pairs.sort_by_key(|p| p.split('=').next().unwrap_or(""));
    pairs.join("&")
}

fn etag_of(body: &[u8]) -> HeaderValue {
    let digest = Sha256::digest(body);
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    HeaderValue::from_str(&format!("\"{hex}\"")).unwrap_or_else(|_| HeaderValue::from_static("\"\""))
}

/// Whether `If-None-Match` names this ETag (or is `*`).
fn not_modified(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    headers.get_all(header::IF_NONE_MATCH).iter().any(|value| {
        value.to_str().is_ok_and(|v| {
            v.split(',').map(str::trim).any(|tag| tag == "*" || tag.as_bytes() == etag.as_bytes())
        })
    })
}

const X_CACHE: &str = "x-cache";

fn answer(entry: &Entry, request_headers: &HeaderMap, outcome: &'static str, stats: &CacheStats) -> Response {
    let mut response = if not_modified(request_headers, &entry.etag) {
        stats.not_modified.fetch_add(1, Ordering::Relaxed);
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut response = Response::new(Body::from(entry.body.clone()));
        if let Some(content_type) = &entry.content_type {
            response.headers_mut().insert(header::CONTENT_TYPE, content_type.clone());
        }
        response
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, entry.etag.clone());
    headers.insert(X_CACHE, HeaderValue::from_static(outcome));
    response
}

/// Makes entries stale when dropped.
struct Invalidate {
    cache: Arc<ResponseCache>,
    tenant: Option<Uuid>,
    module: &'static str,
}

impl Drop for Invalidate {
    fn drop(&mut self) {
        match self.tenant {
            Some(tenant) => self.cache.invalidate(tenant, self.module),
            None => self.cache.invalidate_module(self.module),
        }
    }
}

/// State of the cache layer.
#[derive(Clone)]
pub struct CacheLayer {
    pub cache: Arc<ResponseCache>,
    pub modules: Arc<[&'static str]>,
}

/// The middleware in front of the module routes.
pub async fn layer(State(layer): State<CacheLayer>, mut request: Request, next: Next) -> Response {
    let cache = &layer.cache;
    // The modules whose answers may be cached.
    let Some(module) = paths::named_api(&request, &layer.modules) else {
        return next.run(request).await;
    };
    let path = paths::original_uri(&request).path().to_owned();
    let method = request.method().clone();
    if method == Method::HEAD || method == Method::OPTIONS {
        return next.run(request).await;
    }
    // Out of step with the log: nothing is served or kept (writes are still noted below: a heartbeat sent
    // before a write may come back after it and make the cache healthy again).
    if method == Method::GET && !cache.healthy() {
        cache.stats.bypasses.fetch_add(1, Ordering::Relaxed);
        let mut response = next.run(request).await;
        response.headers_mut().insert(X_CACHE, HeaderValue::from_static("bypass"));
        return response;
    }
    // Without a usable key the handler answers (401); nothing is cached.
    let Ok(key) = apikey::presented_in(&mut request) else { return next.run(request).await };
    let grant = cache.grant(&key, module).await;
    if method != Method::GET {
        // Bumped when the handler is done, or dropped (a client gone after the commit): either way, and
        // whatever it did. When the key's tenant could not be told, every tenant's entries of the module.
        let _bump = Invalidate { cache: cache.clone(), tenant: grant.map(|g| g.tenant_id), module };
        return next.run(request).await;
    }
    let Some(grant) = grant else { return next.run(request).await };
    let tenant = grant.tenant_id;
    // A key that may not read gets the handler's refusal, never a cached answer.
    if !grant.allows(module, Access::Read) {
        return next.run(request).await;
    }
    let access = if grant.allows(module, Access::Write) { "write" } else { "read" };
    let response_key =
        Arc::new(ResponseKey { tenant, access, path, query: normalised_query(request.uri().query()) });
    // Read before the handler reads the database (see the module's documentation).
    let generation = cache.generation(tenant, module);
    if let Some(entry) = cache.responses.get(&response_key)
        && entry.generation == generation
    {
        cache.stats.hits.fetch_add(1, Ordering::Relaxed);
        return answer(&entry, request.headers(), "hit", &cache.stats);
    }
    cache.stats.misses.fetch_add(1, Ordering::Relaxed);
    let request_headers = request.headers().clone();
    let response = next.run(request).await;
    let small = response.body().size_hint().exact().is_some_and(|n| n <= cache.config.max_entry_bytes as u64);
    if response.status() != StatusCode::OK || !small {
        return response;
    }
    let (parts, body) = response.into_parts();
    let Ok(body) = axum::body::to_bytes(body, cache.config.max_entry_bytes).await else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "the response could not be read").into_response();
    };
    let entry = Arc::new(Entry {
        generation,
        etag: etag_of(&body),
        content_type: parts.headers.get(header::CONTENT_TYPE).cloned(),
        body,
    });
    cache.responses.insert(response_key, entry.clone());
    answer(&entry, &request_headers, "miss", &cache.stats)
}

/// Keeps the cache's view of the log current: listens for change events, key changes and its own
/// heartbeats, reconnecting (and forgetting everything) after a lost connection. Runs until aborted.
pub async fn listen(cache: Arc<ResponseCache>) {
    let mut delay = Duration::from_millis(100);
    loop {
        match listen_once(&cache).await {
            Ok(()) => delay = Duration::from_millis(100),
            Err(e) => {
                tracing::warn!(error = %e, "cache listener failed; the cache is off until it reconnects")
            }
        }
        // A new connection must see a heartbeat of its own before the cache serves again.
        *cache.health.lock().unwrap_or_else(|e| e.into_inner()) = Health::default();
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

async fn listen_once(cache: &ResponseCache) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = cache.db.config().connect(NoTls).await?;
    let (tx, mut notifications) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(Ok((n.channel().to_owned(), n.payload().to_owned()))).is_err() {
                        break;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    let _ = tx.send(Err(e));
                    break;
                }
                None => break,
            }
        }
    });
    let result = async {
        client
            .batch_execute(&format!(
                "listen {EVENTS_CHANNEL}; listen {HEARTBEAT_CHANNEL}; listen {AUTH_CHANNEL}"
            ))
            .await?;
        let changes =
            client.prepare("select seq, tenant_id, module from events.changes_since($1, $2)").await?;
        let emit = client.prepare("select pg_logical_emit_message(true, $1, $2)::text").await?;
        // Listening from here on; whatever happened before is forgotten.
        let mut seen: i64 = client.query_one("select events.log_head()", &[]).await?.get(0);
        cache.invalidate_all();
        cache.health.lock().unwrap_or_else(|e| e.into_inner()).listening = true;
        // Each heartbeat carries a fresh random nonce, known only to this connection until it comes back:
        // a beat of an earlier connection, or one somebody else notifies, confirms nothing.
        let mut sent: HashMap<String, Instant> = HashMap::new();
        let mut ticker = tokio::time::interval(cache.config.heartbeat_every);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    let Ok(nonce) = tessera_core::apikey::random_hex(16) else { continue };
                    sent.insert(nonce.clone(), Instant::now());
                    // Beats that never came back (the worker down) are forgotten after a while.
                    sent.retain(|_, at| at.elapsed() < Duration::from_secs(60));
                    client.query_one(&emit, &[&HEARTBEAT_PREFIX, &nonce]).await?;
                }
                notification = notifications.recv() => {
                    let Some(notification) = notification else { return Ok(()) };
                    let (channel, payload) = notification?;
                    match channel.as_str() {
                        AUTH_CHANNEL => cache.invalidate_keys(),
                        EVENTS_CHANNEL => seen = read_changes(cache, &client, &changes, seen).await?,
                        HEARTBEAT_CHANNEL => {
                            // Everything before the heartbeat is in the log: read it first.
                            seen = read_changes(cache, &client, &changes, seen).await?;
                            if let Some(at) = sent.get(&payload).copied() {
                                sent.retain(|_, sent_at| *sent_at > at);
                                let mut health = cache.health.lock().unwrap_or_else(|e| e.into_inner());
                                health.confirmed = Some(health.confirmed.map_or(at, |c| c.max(at)));
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    .await;
    driver.abort();
    result
}

/// Reads the change events after `seen` and invalidates their tenants' modules; returns the new position.
async fn read_changes(
    cache: &ResponseCache,
    client: &tokio_postgres::Client,
    changes: &tokio_postgres::Statement,
    mut seen: i64,
) -> Result<i64, tokio_postgres::Error> {
    const PAGE: i32 = 10_000;
    loop {
        let rows = client.query(changes, &[&seen, &PAGE]).await?;
        for row in &rows {
            cache.invalidate(row.get(1), row.get::<_, &str>(2));
            seen = row.get(0);
        }
        if rows.len() < PAGE as usize {
            return Ok(seen);
        }
    }
}
