//! Rate limits through the gateway's router: 500 concurrent requests against a limit of 100, per key and
//! per tenant, per address before authentication (forwarded-for believed only from trusted proxies), and a
//! wrong secret spending nobody's quota.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use tessera_gateway::ratelimit::{Rate, RateLimitConfig, RateLimits};

use crate::support::{BODY_LIMIT, TestApp, TestResponse, modules};

fn limited(app: &mut TestApp, config: RateLimitConfig) {
    let owners = Arc::new(tessera_gateway::owners::KeyOwners::new(app.pool.clone(), 1000));
    let limits = RateLimits::new(config, owners);
    let layers = tessera_gateway::Layers { rate_limits: Some(limits), ..Default::default() };
    app.router = tessera_gateway::router_with_layers(app.pool.clone(), &modules(), BODY_LIMIT, layers);
}

fn off() -> RateLimitConfig {
    RateLimitConfig { per_ip: None, per_key: None, per_tenant: None, ..RateLimitConfig::default() }
}

/// A slow refill, so that the burst is what a test sees.
fn burst(n: u32) -> Option<Rate> {
    Some(Rate { per_second: 0.01, burst: n })
}

fn request(path: &str, key: Option<&str>, peer: &str, forwarded: Option<&str>) -> Request<Body> {
    let mut builder = Request::builder().uri(path);
    if let Some(key) = key {
        builder = builder.header("authorization", format!("Bearer {key}"));
    }
    if let Some(forwarded) = forwarded {
        builder = builder.header("x-forwarded-for", forwarded);
    }
    let mut request = builder.body(Body::empty()).expect("request");
    let peer: SocketAddr = format!("{peer}:40000").parse().expect("address");
    request.extensions_mut().insert(ConnectInfo(peer));
    request
}

fn header(r: &TestResponse, name: &str) -> Option<u64> {
    r.headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_requests_against_a_limit_of_a_hundred() {
    let mut app = TestApp::spawn_with_pool(8).await;
    let (_, key) = app.tenant("acme").await;
    limited(&mut app, RateLimitConfig { per_key: burst(100), ..off() });
    let app = Arc::new(app);
    let tasks: Vec<_> = (0..500)
        .map(|_| {
            let (app, key) = (app.clone(), key.clone());
            tokio::spawn(
                async move { app.send(request("/v1/crm/deals", Some(&key), "10.0.0.1", None)).await },
            )
        })
        .collect();
    let mut passed = 0;
    let mut refused = 0;
    for task in tasks {
        let r = task.await.expect("request");
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            refused += 1;
            r.assert_problem(429, "rate_limited");
            assert!(header(&r, "retry-after").is_some_and(|s| s >= 1), "{:?}", r.headers);
            assert_eq!(header(&r, "ratelimit-limit"), Some(100));
            assert_eq!(header(&r, "ratelimit-remaining"), Some(0));
        } else {
            passed += 1;
            // Past the limiter, a request on a machine loaded by the rest of the suite may still find the
            // pool of 8 busy for longer than its wait (503 service_unavailable): it was let through all the
            // same, which is what this test counts.
            if r.status == StatusCode::SERVICE_UNAVAILABLE {
                r.assert_problem(503, "service_unavailable");
            } else {
                assert_eq!(r.status, StatusCode::OK, "{}", r.body);
            }
            assert_eq!(header(&r, "ratelimit-limit"), Some(100));
            assert!(header(&r, "ratelimit-remaining").is_some_and(|n| n < 100));
            assert!(header(&r, "ratelimit-reset").is_some());
        }
    }
    assert_eq!(passed, 100, "exactly the burst passes ({refused} refused)");
    assert_eq!(refused, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_a_tenant_share_its_limit_and_other_tenants_are_untouched() {
    let mut app = TestApp::spawn().await;
    let (acme, key) = app.tenant("acme").await;
    let second = app.key(acme, &["crm:read"]).await;
    let (_, other) = app.tenant("globex").await;
    limited(&mut app, RateLimitConfig { per_tenant: burst(3), per_key: burst(2), ..off() });
    let get = async |key: &str| app.send(request("/v1/crm/deals", Some(key), "10.0.0.1", None)).await.status;
    assert_eq!(get(&key).await, StatusCode::OK);
    assert_eq!(get(&key).await, StatusCode::OK);
    assert_eq!(get(&key).await, StatusCode::TOO_MANY_REQUESTS, "the key's own limit");
    assert_eq!(get(&second).await, StatusCode::OK, "another key of the tenant has its own");
    assert_eq!(get(&second).await, StatusCode::TOO_MANY_REQUESTS, "but the tenant's three are spent");
    assert_eq!(get(&other).await, StatusCode::OK, "another tenant is untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_spends_only_its_address_quota() {
    let mut app = TestApp::spawn().await;
    let (_, key) = app.tenant("acme").await;
    limited(&mut app, RateLimitConfig { per_tenant: burst(2), per_key: burst(2), ..off() });
    // The victim's prefix with another secret: refused as an unknown key, and not counted against it.
    let prefix = key.split('_').nth(1).expect("prefix");
    let forged = format!("tsk_{prefix}_{}", "0".repeat(48));
    for _ in 0..5 {
        let r = app.send(request("/v1/crm/deals", Some(&forged), "10.0.0.66", None)).await;
        r.assert_problem(401, "invalid_api_key");
    }
    for _ in 0..2 {
        assert_eq!(
            app.send(request("/v1/crm/deals", Some(&key), "10.0.0.1", None)).await.status,
            StatusCode::OK
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_address_limit_applies_before_authentication_and_trusts_only_configured_proxies() {
    let mut app = TestApp::spawn().await;
    let proxy: IpAddr = "10.0.0.9".parse().expect("ip");
    limited(&mut app, RateLimitConfig { per_ip: burst(2), trusted_proxies: vec![proxy], ..off() });
    let send = async |peer: &str, forwarded: Option<&str>| {
        app.send(request("/v1/crm/deals", None, peer, forwarded)).await.status
    };
    // Unauthenticated requests count against their address.
    assert_eq!(send("10.0.0.1", None).await, StatusCode::UNAUTHORIZED);
    // A client naming another address itself is not believed: still 10.0.0.1's bucket.
    assert_eq!(send("10.0.0.1", Some("192.0.2.77")).await, StatusCode::UNAUTHORIZED);
    assert_eq!(send("10.0.0.1", Some("192.0.2.78")).await, StatusCode::TOO_MANY_REQUESTS);
    // Behind the trusted proxy, each forwarded client has its own bucket (the right-most untrusted one).
    for client in ["192.0.2.1", "192.0.2.2"] {
        assert_eq!(send("10.0.0.9", Some(client)).await, StatusCode::UNAUTHORIZED);
        assert_eq!(send("10.0.0.9", Some(&format!("203.0.113.5, {client}"))).await, StatusCode::UNAUTHORIZED);
        assert_eq!(send("10.0.0.9", Some(client)).await, StatusCode::TOO_MANY_REQUESTS);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_plan_sets_its_limits() {
    let mut app = TestApp::spawn().await;
    let (_, gold_key) = app.tenant("acme").await;
    let (_, standard_key) = app.tenant("globex").await;
    tessera_core::admin::set_plan(&mut app.owner, "acme", "gold").await.expect("plan");
    assert!(tessera_core::admin::set_plan(&mut app.owner, "acme", "Gold!").await.is_err());
    let mut plans = std::collections::HashMap::new();
    plans.insert(
        "gold".to_owned(),
        tessera_gateway::ratelimit::PlanRates { per_key: burst(5), per_tenant: None },
    );
    limited(&mut app, RateLimitConfig { per_key: burst(2), plans, ..off() });
    let passed = async |key: &str| {
        let mut n = 0;
        for _ in 0..8 {
            if app.send(request("/v1/crm/deals", Some(key), "10.0.0.1", None)).await.status == StatusCode::OK
            {
                n += 1;
            }
        }
        n
    };
    assert_eq!(passed(&gold_key).await, 5, "gold: its plan's burst");
    assert_eq!(passed(&standard_key).await, 2, "no configured plan: the default limits");
}

#[tokio::test]
async fn the_limits_read_the_credential_as_the_handlers_do() {
    let mut app = TestApp::spawn().await;
    let (_, key) = app.tenant("acme").await;
    limited(&mut app, RateLimitConfig { per_key: burst(1), ..off() });
    // The scheme in another case and spaces around the key: the handler accepts it, so the limit counts it.
    let send = async || {
        let mut request = request("/v1/crm/deals", None, "10.0.0.1", None);
        let value = format!("bearer   {key} ").parse().expect("header");
        request.headers_mut().insert("authorization", value);
        app.send(request).await.status
    };
    assert_eq!(send().await, StatusCode::OK);
    assert_eq!(send().await, StatusCode::TOO_MANY_REQUESTS);
}
