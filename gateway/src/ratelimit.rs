//! Rate limits: per client IP before authentication, then per API key and per tenant, each a GCRA (the
//! generic cell rate algorithm, a token bucket kept as one timestamp per client).
//!
//! - **Headers**: every limited response carries `RateLimit-Limit`, `RateLimit-Remaining` and
//!   `RateLimit-Reset` (seconds until the bucket is full again) of the tightest limit that applied; a
//!   refusal is `429` problem+json (`rate_limited`, naming the limit) with `Retry-After`.
//! - **Bounded memory**: each limiter keeps its buckets in a moka cache of bounded size whose entries expire
//!   once their bucket would be full again, so spraying keys or addresses cannot grow it.
//! - **Client address**: the peer's address, unless the peer is a configured proxy: then the right-most
//!   address in `X-Forwarded-For` that is not one of the proxies. A client cannot pick its address by
//!   sending the header itself.
//! - **Who a key belongs to** is looked up once per key secret (a wrong secret counts only against the
//!   address, so knowing another tenant's key prefix does not let anyone spend its quota).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tessera_core::ApiError;
use tessera_core::apikey;
use uuid::Uuid;

use crate::owners::{KeyOwners, Owner};

/// A sustained rate and the burst allowed above it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

impl Rate {
    /// `n` requests per second with a burst of `n` (one second's worth).
    pub fn per_second(n: u32) -> Self {
        Self { per_second: f64::from(n), burst: n.max(1) }
    }

    fn interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.per_second.max(1e-9))
    }
}

/// A plan's limits per key and per tenant; `None` switches one off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanRates {
    pub per_key: Option<Rate>,
    pub per_tenant: Option<Rate>,
}

/// The limits; `None` switches one off.
#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    pub per_ip: Option<Rate>,
    pub per_key: Option<Rate>,
    pub per_tenant: Option<Rate>,
    /// Per plan (`core.tenants.plan`), limits that replace `per_key` and `per_tenant` for its tenants.
    pub plans: std::collections::HashMap<String, PlanRates>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpAddr>,
    /// Clients tracked per limiter, at most.
    pub max_clients: u64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            per_ip: Some(Rate::per_second(1000)),
            per_key: Some(Rate::per_second(200)),
            per_tenant: Some(Rate::per_second(1000)),
            plans: std::collections::HashMap::new(),
            trusted_proxies: Vec::new(),
            max_clients: 100_000,
        }
    }
}

/// One limiter: a bucket per client, as its theoretical arrival time (TAT).
struct Gcra<K> {
    rate: Rate,
    buckets: moka::sync::Cache<K, Arc<Mutex<Instant>>>,
}

/// What a limiter said about one request.
#[derive(Debug, Clone, Copy)]
struct Verdict {
    allowed: bool,
    limit: u32,
    remaining: u32,
    /// Until the bucket is full again.
    reset: Duration,
    /// Until a refused request would be allowed.
    retry_after: Duration,
}

impl<K: std::hash::Hash + Eq + Send + Sync + 'static> Gcra<K> {
    fn new(rate: Rate, max_clients: u64) -> Self {
        let full = rate.interval().saturating_mul(rate.burst);
        let buckets = moka::sync::Cache::builder()
            .max_capacity(max_clients)
            // A bucket untouched this long is full again: forgetting it changes nothing.
            .time_to_idle(full + Duration::from_secs(1))
            .build();
        Self { rate, buckets }
    }

    fn check(&self, client: K, now: Instant) -> Verdict {
        let interval = self.rate.interval();
        let burst = self.rate.burst;
        let tolerance = interval.saturating_mul(burst.saturating_sub(1));
        let bucket = self.buckets.get_with(client, || Arc::new(Mutex::new(now)));
        let mut tat = bucket.lock().unwrap_or_else(|e| e.into_inner());
        let current = (*tat).max(now);
        let ahead = current - now;
        if ahead > tolerance {
            return Verdict {
                allowed: false,
                limit: burst,
                remaining: 0,
                reset: ahead,
                retry_after: ahead - tolerance,
            };
        }
        *tat = current + interval;
        let used = (*tat - now).as_secs_f64() / interval.as_secs_f64();
        let remaining = (f64::from(burst) - used).floor().max(0.0) as u32;
        Verdict { allowed: true, limit: burst, remaining, reset: *tat - now, retry_after: Duration::ZERO }
    }

    /// Gives back what an allowed request took, when a later limit refused it.
    fn refund(&self, client: &K) {
        if let Some(bucket) = self.buckets.get(client) {
            let mut tat = bucket.lock().unwrap_or_else(|e| e.into_inner());
            *tat = tat.checked_sub(self.rate.interval()).unwrap_or(*tat);
        }
    }
}

/// The bucket an address counts in: IPv6 clients by their /64 (one host usually has a whole /64 to rotate
/// through), IPv4 clients by address.
fn bucket_of(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[8..].fill(0);
            IpAddr::V6(std::net::Ipv6Addr::from(octets))
        }
        v4 => v4,
    }
}

struct PlanLimiters {
    per_key: Option<Gcra<[u8; 32]>>,
    per_tenant: Option<Gcra<Uuid>>,
}

impl PlanLimiters {
    fn new(rates: PlanRates, max_clients: u64) -> Self {
        Self {
            per_key: rates.per_key.map(|r| Gcra::new(r, max_clients)),
            per_tenant: rates.per_tenant.map(|r| Gcra::new(r, max_clients)),
        }
    }
}

/// The gateway's limiters.
pub struct RateLimits {
    config: RateLimitConfig,
    per_ip: Option<Gcra<IpAddr>>,
    /// The default plan's limiters, and each configured plan's.
    default_plan: PlanLimiters,
    plans: std::collections::HashMap<String, PlanLimiters>,
    /// Whether any plan limits keys or tenants (else a key's owner is never looked up).
    key_limits: bool,
    owners: Arc<KeyOwners>,
    /// Refusals by limit: address, key, tenant.
    refused: [std::sync::atomic::AtomicU64; 3],
}

impl RateLimits {
    pub fn new(config: RateLimitConfig, owners: Arc<KeyOwners>) -> Arc<Self> {
        let n = config.max_clients;
        let key_limits =
            std::iter::once(&PlanRates { per_key: config.per_key, per_tenant: config.per_tenant })
                .chain(config.plans.values())
                .any(|p| p.per_key.is_some() || p.per_tenant.is_some());
        Arc::new(Self {
            key_limits,
            per_ip: config.per_ip.map(|r| Gcra::new(r, n)),
            default_plan: PlanLimiters::new(
                PlanRates { per_key: config.per_key, per_tenant: config.per_tenant },
                n,
            ),
            plans: config
                .plans
                .iter()
                .map(|(name, rates)| (name.clone(), PlanLimiters::new(*rates, n)))
                .collect(),
            owners,
            config,
            refused: Default::default(),
        })
    }

    /// Refusals so far, by limit.
    pub fn refusals(&self) -> [(&'static str, u64); 3] {
        let n = |i: usize| self.refused[i].load(std::sync::atomic::Ordering::Relaxed);
        [("address", n(0)), ("key", n(1)), ("tenant", n(2))]
    }

    /// The client's address: the peer's, or, from a trusted proxy, the right-most untrusted address the
    /// proxies recorded.
    fn client_ip(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer?.to_canonical();
        if !self.config.trusted_proxies.contains(&peer) {
            return Some(bucket_of(peer));
        }
        // From the right: the entries our proxies appended, then the first one they got from outside. An
        // entry that is not a plain address ends the walk (what lies left of it came from the client).
        let entries: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        for entry in entries.iter().rev() {
            match entry.parse::<IpAddr>() {
                Ok(address) if self.config.trusted_proxies.contains(&address.to_canonical()) => continue,
                Ok(address) => return Some(bucket_of(address.to_canonical())),
                Err(_) => break,
            }
        }
        Some(bucket_of(peer))
    }

    fn limiters(&self, plan: &str) -> &PlanLimiters {
        self.plans.get(plan).unwrap_or(&self.default_plan)
    }
}

fn refused(which: &str, verdict: Verdict) -> Response {
    let mut response = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("too many requests for this {which}; retry after the time in Retry-After"),
    )
    .into_response();
    let retry = verdict.retry_after.as_secs_f64().ceil().max(1.0) as u64;
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry));
    set_headers(response.headers_mut(), verdict);
    response
}

fn set_headers(headers: &mut HeaderMap, verdict: Verdict) {
    let reset = verdict.reset.as_secs_f64().ceil() as u64;
    headers.insert("ratelimit-limit", HeaderValue::from(verdict.limit));
    headers.insert("ratelimit-remaining", HeaderValue::from(verdict.remaining));
    headers.insert("ratelimit-reset", HeaderValue::from(reset));
}

/// The key and tenant limits' verdict for a request whose key owner had to be looked up, passed from
/// [`after_admission`] to [`layer`] on the response so the headers show the tightest limit of all.
#[derive(Clone, Copy)]
struct KeyVerdict(Verdict);

/// The request's key had no owner in the cache: its key and tenant limits are checked by
/// [`after_admission`], once the request holds a place under load shedding, because finding the owner asks
/// the database.
#[derive(Clone, Copy)]
struct OwnerUnknown;

/// The middleware in front of `/v1`, outside load shedding: the per-address limit, and the key and tenant
/// limits of a key whose owner is already known. Nothing here waits on the database.
pub async fn layer(State(limits): State<Arc<RateLimits>>, mut request: Request, next: Next) -> Response {
    let now = Instant::now();
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let mut tightest: Option<Verdict> = None;
    // Before anything is looked up for the request.
    if let (Some(limiter), Some(ip)) = (&limits.per_ip, limits.client_ip(peer, request.headers()))
        && let Some(response) = limits.consider("address", limiter.check(ip, now), &mut tightest)
    {
        return response;
    }
    if limits.key_limits
        && let Ok(key) = apikey::presented_in(&mut request)
    {
        match limits.owners.cached(&key) {
            Some(Some(owner)) => {
                if let Some(response) = limits.check_key(&key, &owner, now, &mut tightest) {
                    return response;
                }
            }
            // A key known to have no owner: only its address counts.
            Some(None) => {}
            None => {
                request.extensions_mut().insert(OwnerUnknown);
            }
        }
    }
    let mut response = next.run(request).await;
    if let Some(KeyVerdict(verdict)) = response.extensions_mut().remove::<KeyVerdict>()
        && tightest.is_none_or(|t| verdict.remaining < t.remaining)
    {
        tightest = Some(verdict);
    }
    if let Some(verdict) = tightest {
        set_headers(response.headers_mut(), verdict);
    }
    response
}

/// The middleware inside load shedding: the key and tenant limits of a key whose owner [`layer`] did not
/// know (one database lookup, then cached).
pub async fn after_admission(
    State(limits): State<Arc<RateLimits>>,
    mut request: Request,
    next: Next,
) -> Response {
    if request.extensions_mut().remove::<OwnerUnknown>().is_none() {
        return next.run(request).await;
    }
    let now = Instant::now();
    let mut tightest: Option<Verdict> = None;
    let key = apikey::presented_in(&mut request).ok();
    let owner = match &key {
        Some(key) => limits.owners.owner_and_plan(key).await,
        None => None,
    };
    let refusal = key.zip(owner).and_then(|(key, owner)| limits.check_key(&key, &owner, now, &mut tightest));
    let mut response = match refusal {
        Some(refusal) => refusal,
        None => next.run(request).await,
    };
    if let Some(verdict) = tightest {
        response.extensions_mut().insert(KeyVerdict(verdict));
    }
    response
}

impl RateLimits {
    /// Counts a verdict: the refusal if it is one, else it may become the tightest so far.
    fn consider(
        &self,
        which: &'static str,
        verdict: Verdict,
        tightest: &mut Option<Verdict>,
    ) -> Option<Response> {
        if !verdict.allowed {
            let i = match which {
                "address" => 0,
                "API key" => 1,
                _ => 2,
            };
            self.refused[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            *tightest = Some(verdict);
            return Some(refused(which, verdict));
        }
        if tightest.is_none_or(|t| verdict.remaining < t.remaining) {
            *tightest = Some(verdict);
        }
        None
    }

    /// The key's limit, then its tenant's; a request the tenant's limit refuses gives the key its token back,
    /// so that neither limit is spent by requests the other refused.
    fn check_key(
        &self,
        key: &apikey::PresentedKey,
        owner: &Owner,
        now: Instant,
        tightest: &mut Option<Verdict>,
    ) -> Option<Response> {
        let plan = self.limiters(&owner.plan);
        let mut hash = [0u8; 32];
        hash.copy_from_slice(key.hash());
        if let Some(limiter) = &plan.per_key
            && let Some(response) = self.consider("API key", limiter.check(hash, now), tightest)
        {
            return Some(response);
        }
        if let Some(limiter) = &plan.per_tenant
            && let Some(response) = self.consider("tenant", limiter.check(owner.tenant, now), tightest)
        {
            if let Some(per_key) = &plan.per_key {
                per_key.refund(&hash);
            }
            return Some(response);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_lets_its_burst_through_then_one_per_interval() {
        let limiter = Gcra::new(Rate { per_second: 10.0, burst: 5 }, 10);
        let t0 = Instant::now();
        let verdicts: Vec<Verdict> = (0..7).map(|_| limiter.check(1u8, t0)).collect();
        assert_eq!(verdicts.iter().filter(|v| v.allowed).count(), 5);
        assert_eq!(verdicts.iter().map(|v| v.remaining).take(5).collect::<Vec<_>>(), [4, 3, 2, 1, 0]);
        let refused = verdicts[5];
        assert!(!refused.allowed);
        assert!(refused.retry_after > Duration::ZERO && refused.retry_after <= Duration::from_millis(100));
        // One interval later, one more.
        let later = t0 + Duration::from_millis(100);
        assert!(limiter.check(1, later).allowed);
        assert!(!limiter.check(1, later).allowed);
        // Another client has its own bucket.
        assert!(limiter.check(2, later).allowed);
        // A full second later the bucket is full again.
        let much_later = t0 + Duration::from_secs(2);
        assert_eq!(limiter.check(1, much_later).remaining, 4);
    }

    #[test]
    fn sprayed_clients_do_not_grow_the_limiter_beyond_its_bound() {
        let limiter = Gcra::new(Rate::per_second(10), 1_000);
        let now = Instant::now();
        for client in 0..50_000u32 {
            assert!(limiter.check(client, now).allowed);
        }
        limiter.buckets.run_pending_tasks();
        assert!(limiter.buckets.entry_count() <= 1_000, "{}", limiter.buckets.entry_count());
    }

    #[test]
    fn ipv6_clients_share_their_64_and_mapped_ipv4_is_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(bucket_of(a), bucket_of(b));
        assert_ne!(bucket_of(a), bucket_of(c));
        let mapped: IpAddr = "::ffff:10.0.0.9".parse().expect("ip");
        assert_eq!(mapped.to_canonical(), "10.0.0.9".parse::<IpAddr>().expect("ip"));
    }

    #[test]
    fn a_refund_gives_one_request_back() {
        let limiter = Gcra::new(Rate { per_second: 0.01, burst: 2 }, 10);
        let now = Instant::now();
        assert!(limiter.check(7u8, now).allowed);
        assert!(limiter.check(7u8, now).allowed);
        assert!(!limiter.check(7u8, now).allowed);
        limiter.refund(&7);
        assert!(limiter.check(7u8, now).allowed);
    }
}
