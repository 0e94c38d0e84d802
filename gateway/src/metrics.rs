//! The gateway's own Prometheus metrics: requests by route, method and status, latency histograms by
//! route, response cache and rate limiter counters, and the database pool.
//!
//! Routes are paths with their ids replaced (`/v1/crm/deals/{id}`); at most [`MAX_ROUTES`] distinct ones
//! are tracked, the rest count as `other`, so requests to made-up paths cannot grow the metrics.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use tessera_core::db::Database;

use crate::cache::ResponseCache;
use crate::overload::Admission;
use crate::ratelimit::RateLimits;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 11] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
const MAX_ROUTES: usize = 200;

#[derive(Default)]
struct Latency {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
struct Recorded {
    requests: HashMap<(Arc<str>, String, u16), u64>,
    latency: HashMap<Arc<str>, Latency>,
}

/// What the metrics read from, and what they have counted.
pub struct GatewayMetrics {
    recorded: Mutex<Recorded>,
    db: Database,
    cache: Option<Arc<ResponseCache>>,
    limits: Option<Arc<RateLimits>>,
    admission: Option<Arc<Admission>>,
}

impl GatewayMetrics {
    pub fn new(
        db: Database,
        cache: Option<Arc<ResponseCache>>,
        limits: Option<Arc<RateLimits>>,
        admission: Option<Arc<Admission>>,
    ) -> Arc<Self> {
        Arc::new(Self { recorded: Mutex::new(Recorded::default()), db, cache, limits, admission })
    }

    fn record(&self, path: &str, method: &str, status: u16, seconds: f64) {
        let route = route_of(path);
        let mut recorded = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
        let known = recorded.latency.contains_key(route.as_str());
        let route: Arc<str> =
            if known || recorded.latency.len() < MAX_ROUTES { route.into() } else { "other".into() };
        *recorded.requests.entry((route.clone(), method.to_owned(), status)).or_insert(0) += 1;
        let latency = recorded.latency.entry(route).or_default();
        latency.count += 1;
        latency.sum += seconds;
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                latency.buckets[i] += 1;
            }
        }
    }

    /// The Prometheus text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        {
            let recorded = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
            out.push_str(
                "# HELP tessera_http_requests_total HTTP requests answered, by route, method and status.\n",
            );
            out.push_str("# TYPE tessera_http_requests_total counter\n");
            let mut requests: Vec<_> = recorded.requests.iter().collect();
            requests.sort();
            for ((route, method, status), n) in requests {
                let _ = writeln!(
                    out,
                    "tessera_http_requests_total{{route=\"{}\",method=\"{}\",status=\"{status}\"}} {n}",
                    escape(route),
                    escape(method)
                );
            }
            out.push_str("# HELP tessera_http_request_duration_seconds Time to answer, by route.\n");
            out.push_str("# TYPE tessera_http_request_duration_seconds histogram\n");
            let mut latency: Vec<_> = recorded.latency.iter().collect();
            latency.sort_by(|a, b| a.0.cmp(b.0));
            for (route, l) in latency {
                let route = escape(route);
                for (i, bound) in BUCKETS.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "tessera_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {}",
                        l.buckets[i]
                    );
                }
                let _ = writeln!(
                    out,
                    "tessera_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                    l.count
                );
                let _ =
                    writeln!(out, "tessera_http_request_duration_seconds_sum{{route=\"{route}\"}} {}", l.sum);
                let _ = writeln!(
                    out,
                    "tessera_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                    l.count
                );
            }
        }
        if let Some(cache) = &self.cache {
            let s = cache.stats.snapshot();
            out.push_str("# HELP tessera_cache_lookups_total Response cache lookups by outcome.\n");
            out.push_str("# TYPE tessera_cache_lookups_total counter\n");
            for (outcome, n) in [
                ("hit", s.hits),
                ("miss", s.misses),
                ("bypass", s.bypasses),
                ("not_modified", s.not_modified),
            ] {
                let _ = writeln!(out, "tessera_cache_lookups_total{{outcome=\"{outcome}\"}} {n}");
            }
            out.push_str(
                "# HELP tessera_cache_evictions_total Entries the response cache dropped for room.\n",
            );
            out.push_str("# TYPE tessera_cache_evictions_total counter\n");
            let _ = writeln!(out, "tessera_cache_evictions_total {}", s.evictions);
            out.push_str(
                "# HELP tessera_cache_healthy Whether the response cache serves (1) or is bypassed (0).\n",
            );
            out.push_str("# TYPE tessera_cache_healthy gauge\n");
            let _ = writeln!(out, "tessera_cache_healthy {}", u8::from(cache.healthy()));
        }
        if let Some(limits) = &self.limits {
            out.push_str("# HELP tessera_rate_limited_total Requests refused by a rate limit, by limit.\n");
            out.push_str("# TYPE tessera_rate_limited_total counter\n");
            for (limit, n) in limits.refusals() {
                let _ = writeln!(out, "tessera_rate_limited_total{{limit=\"{limit}\"}} {n}");
            }
        }
        if let Some(admission) = &self.admission {
            out.push_str("# HELP tessera_requests_in_flight Requests under /v1 running now.\n");
            out.push_str("# TYPE tessera_requests_in_flight gauge\n");
            let _ = writeln!(out, "tessera_requests_in_flight {}", admission.in_flight());
            out.push_str("# HELP tessera_shed_total Requests refused with 503 overloaded.\n");
            out.push_str("# TYPE tessera_shed_total counter\n");
            let _ = writeln!(out, "tessera_shed_total {}", admission.shed_total());
        }
        let (size, idle, waiting) = self.db.pool_status();
        out.push_str("# HELP tessera_db_pool_connections The gateway's database connections, by state.\n");
        out.push_str("# TYPE tessera_db_pool_connections gauge\n");
        let _ = writeln!(out, "tessera_db_pool_connections{{state=\"idle\"}} {idle}");
        let _ =
            writeln!(out, "tessera_db_pool_connections{{state=\"in_use\"}} {}", size.saturating_sub(idle));
        out.push_str("# HELP tessera_db_pool_waiting Requests waiting for a database connection.\n");
        out.push_str("# TYPE tessera_db_pool_waiting gauge\n");
        let _ = writeln!(out, "tessera_db_pool_waiting {waiting}");
        out
    }
}

/// A path with its UUID segments replaced by `{id}`.
fn route_of(path: &str) -> String {
    path.split('/')
        .map(|segment| if uuid::Uuid::parse_str(segment).is_ok() { "{id}" } else { segment })
        .collect::<Vec<_>>()
        .join("/")
}

fn escape(label: &str) -> String {
    label.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The middleware that counts every request.
pub async fn layer(State(metrics): State<Arc<GatewayMetrics>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let path = request.uri().path().to_owned();
    // The standard methods by name; anything else (any token is a valid method) as "other".
    let method = match *request.method() {
        Method::GET
        | Method::POST
        | Method::PUT
        | Method::PATCH
        | Method::DELETE
        | Method::HEAD
        | Method::OPTIONS => request.method().as_str().to_owned(),
        _ => "other".to_owned(),
    };
    let response = next.run(request).await;
    metrics.record(&path, &method, response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_hide_ids() {
        assert_eq!(route_of("/v1/crm/deals/0190a000-0000-7000-8000-000000000021"), "/v1/crm/deals/{id}");
        assert_eq!(route_of("/v1/crm/deals"), "/v1/crm/deals");
        assert_eq!(escape("a\"b"), "a\\\"b");
    }
}
