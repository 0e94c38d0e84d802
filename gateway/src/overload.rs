//! Load shedding: at most `max_in_flight` requests under `/v1` run at once; one that finds them all taken
//! waits at most `queue_timeout` for a place, and otherwise answers `503 overloaded` with `Retry-After`
//! straight away, before any other work is spent on it (authentication, the handler, the database).
//!
//! A request's body is read in full before it asks for a place (within `body_timeout`, or `408`), so a
//! client that sends its body slowly holds its own connection and nothing the other tenants share (each
//! connection buffers at most the body limit; the number of connections is not bounded here). The rate
//! limits that need no database run before this layer (a request they refuse never queues here); a key
//! whose owner must be looked up is limited once it holds a place. Work a request leaves running
//! after its client has gone (an idempotent write finishing on its own task, a login's password hash)
//! keeps the place until it ends ([`Place`]).
//!
//! The queue adapts as CoDel does: a burst may wait the whole queue timeout, but once a request has been
//! refused for waiting too long (the queue is standing, not draining), waits are cut to a tenth of it until
//! no request has been refused for [`CALM`]. So past what the machine can serve, the requests it takes keep
//! their latency (a few milliseconds of waiting, then a run with the database pool not oversubscribed), the
//! rest are refused cheaply and at once, and the queue is bounded (at most `max_waiting` requests wait; beyond
//! that they are refused without waiting). Shedding is counted (`tessera_shed_total`) and logged at most
//! once every ten seconds, never once per request.
//! `/healthz`, `/readyz` and `/metrics` are outside it: probes must answer while the gateway sheds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tessera_core::ApiError;
use tokio::sync::Semaphore;

/// How much the gateway takes on at once.
#[derive(Debug, Clone)]
pub struct AdmissionConfig {
    /// Requests running at once.
    pub max_in_flight: usize,
    /// How long a request may wait for a place before it is refused.
    pub queue_timeout: Duration,
    /// Requests waiting at once; more are refused without waiting.
    pub max_waiting: usize,
    /// The largest body read before admission (the gateway's body limit).
    pub body_limit_bytes: usize,
    /// How long a body may take to arrive.
    pub body_timeout: Duration,
}

impl AdmissionConfig {
    /// `max_in_flight` and `queue_timeout` as configured (`tessera up` runs twice its pool size: enough to
    /// keep every connection busy while other requests are parsed and answered, few enough that the pool's
    /// own queue stays short), with room for 1024 waiting.
    pub fn new(max_in_flight: usize, queue_timeout: Duration) -> Self {
        Self {
            max_in_flight,
            queue_timeout,
            max_waiting: 1024,
            body_limit_bytes: 64 * 1024,
            body_timeout: Duration::from_secs(10),
        }
    }
}

/// How long after the last refusal the queue stays short.
const CALM: Duration = Duration::from_millis(100);

/// The admission state, shared by every request.
pub struct Admission {
    places: Arc<Semaphore>,
    /// `max_in_flight`, at least 1: the places there are.
    capacity: usize,
    waiting: AtomicUsize,
    shed: AtomicU64,
    /// Milliseconds since `epoch` of the last refusal after a wait.
    last_refusal: AtomicU64,
    log: tessera_core::problem::LogThrottle,
    epoch: Instant,
    config: AdmissionConfig,
}

impl Admission {
    pub fn new(config: AdmissionConfig) -> Arc<Self> {
        let capacity = config.max_in_flight.max(1);
        Arc::new(Self {
            places: Arc::new(Semaphore::new(capacity)),
            capacity,
            waiting: AtomicUsize::new(0),
            shed: AtomicU64::new(0),
            last_refusal: AtomicU64::new(0),
            log: tessera_core::problem::LogThrottle::new(),
            epoch: Instant::now(),
            config,
        })
    }

    /// Requests running now (for metrics).
    pub fn in_flight(&self) -> usize {
        self.capacity - self.places.available_permits()
    }

    /// Requests refused so far (for metrics).
    pub fn shed_total(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// How long a request may wait now: the whole queue timeout, or a tenth of it while the queue stands.
    fn wait_budget(&self) -> Duration {
        let last = self.last_refusal.load(Ordering::Relaxed);
        let standing = last > 0 && self.now_ms().saturating_sub(last) < CALM.as_millis() as u64;
        if standing { self.config.queue_timeout / 10 } else { self.config.queue_timeout }
    }

    fn overloaded(&self, waited: bool) -> Response {
        let shed = self.shed.fetch_add(1, Ordering::Relaxed) + 1;
        if waited {
            self.last_refusal.store(self.now_ms().max(1), Ordering::Relaxed);
        }
        if self.log.allow(Duration::from_secs(10)) {
            tracing::warn!(
                shed_total = shed,
                in_flight = self.in_flight(),
                "at capacity: shedding load (503)"
            );
        }
        let mut response = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "the gateway is at capacity; retry shortly",
        )
        .into_response();
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        response
    }
}

/// A request's place, in its extensions: work that outlives the request (a task it spawned) holds a clone,
/// and the place is free again when the last holder lets go.
#[derive(Clone)]
pub struct Place(#[allow(dead_code)] Arc<tokio::sync::OwnedSemaphorePermit>);

/// Reads the body of a request that has one, so that waiting for a slow client holds no place.
async fn buffered(request: Request, config: &AdmissionConfig) -> Result<Request, Response> {
    if http_body::Body::is_end_stream(request.body()) {
        return Ok(request);
    }
    let (parts, body) = request.into_parts();
    match tokio::time::timeout(config.body_timeout, axum::body::to_bytes(body, config.body_limit_bytes)).await
    {
        Ok(Ok(bytes)) => Ok(Request::from_parts(parts, axum::body::Body::from(bytes))),
        Ok(Err(e)) if is_too_large(&e) => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "the request body is too large",
        )
        .into_response()),
        Ok(Err(_)) => {
            Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", "the request body could not be read")
                .into_response())
        }
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request body did not arrive in time",
        )
        .into_response()),
    }
}

fn is_too_large(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// Decrements the waiting count however the wait ends (a client that goes away drops the future).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pub async fn layer(State(admission): State<Arc<Admission>>, request: Request, next: Next) -> Response {
    let mut request = match buffered(request, &admission.config).await {
        Ok(request) => request,
        Err(refusal) => return refusal,
    };
    let place = match admission.places.clone().try_acquire_owned() {
        Ok(place) => place,
        Err(_) => {
            if admission.waiting.fetch_add(1, Ordering::Relaxed) >= admission.config.max_waiting {
                admission.waiting.fetch_sub(1, Ordering::Relaxed);
                return admission.overloaded(false);
            }
            let _waiting = Waiting(&admission.waiting);
            match tokio::time::timeout(admission.wait_budget(), admission.places.clone().acquire_owned())
                .await
            {
                Ok(Ok(place)) => place,
                _ => return admission.overloaded(true),
            }
        }
    };
    // Only writes leave work behind them (an idempotent POST's task, a login's hash): reads keep their place
    // here and skip the allocations of sharing it.
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        let response = next.run(request).await;
        drop(place);
        return response;
    }
    let place = Place(Arc::new(place));
    request.extensions_mut().insert(place.clone());
    let response = next.run(request).await;
    drop(place);
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    /// A handler that holds its place until the test adds a permit to `release`.
    fn app(admission: Arc<Admission>, release: Arc<Semaphore>) -> Router {
        Router::new()
            .route(
                "/",
                get(move || {
                    let release = release.clone();
                    async move {
                        release.acquire().await.expect("open").forget();
                        "done"
                    }
                })
                .post(|| async { "posted" }),
            )
            .layer(axum::middleware::from_fn_with_state(admission, layer))
    }

    async fn status(router: Router) -> (StatusCode, Option<HeaderValue>) {
        let response =
            router.oneshot(Request::get("/").body(Body::empty()).expect("request")).await.expect("ok");
        (response.status(), response.headers().get(header::RETRY_AFTER).cloned())
    }

    #[tokio::test]
    async fn past_capacity_requests_wait_briefly_then_are_refused_and_places_come_back() {
        let config = AdmissionConfig { max_waiting: 1, ..AdmissionConfig::new(2, Duration::from_millis(30)) };
        let admission = Admission::new(config);
        let release = Arc::new(Semaphore::new(0));
        let router = app(admission.clone(), release.clone());
        let running: Vec<_> = (0..2).map(|_| tokio::spawn(status(router.clone()))).collect();
        while admission.in_flight() < 2 {
            tokio::task::yield_now().await;
        }
        // The third waits its 30 ms and is refused; while it waits, a fourth finds the queue full.
        let waiter = tokio::spawn(status(router.clone()));
        while admission.waiting.load(Ordering::Relaxed) < 1 {
            tokio::task::yield_now().await;
        }
        let started = std::time::Instant::now();
        assert_eq!(
            status(router.clone()).await,
            (StatusCode::SERVICE_UNAVAILABLE, Some(HeaderValue::from_static("1")))
        );
        assert!(started.elapsed() < Duration::from_millis(30), "a full queue refuses without waiting");
        assert_eq!(waiter.await.expect("task").0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(admission.waiting.load(Ordering::Relaxed), 0);
        assert_eq!(admission.shed_total(), 2);
        // The running two finish normally, and their places are free again.
        release.add_permits(2);
        for r in running {
            assert_eq!(r.await.expect("task").0, StatusCode::OK);
        }
        assert_eq!(admission.in_flight(), 0);
        let next = tokio::spawn(status(router.clone()));
        while admission.in_flight() < 1 {
            tokio::task::yield_now().await;
        }
        release.add_permits(1);
        assert_eq!(next.await.expect("task").0, StatusCode::OK);
    }

    #[tokio::test]
    async fn a_body_that_arrives_slowly_holds_no_place_and_times_out() {
        let config = AdmissionConfig {
            body_timeout: Duration::from_millis(300),
            ..AdmissionConfig::new(1, Duration::from_millis(10))
        };
        let admission = Admission::new(config);
        let release = Arc::new(Semaphore::new(0));
        let router = app(admission.clone(), release.clone());
        let slow = Request::post("/")
            .header(header::CONTENT_LENGTH, "10")
            .body(Body::from_stream(futures_util::stream::pending::<Result<bytes::Bytes, std::io::Error>>()))
            .expect("request");
        let slow = tokio::spawn(router.clone().oneshot(slow));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(admission.in_flight(), 0, "a body still arriving takes no place");
        // So the one place serves someone else meanwhile.
        let other = tokio::spawn(status(router.clone()));
        while admission.in_flight() < 1 {
            tokio::task::yield_now().await;
        }
        release.add_permits(1);
        assert_eq!(other.await.expect("task").0, StatusCode::OK);
        let slow = slow.await.expect("task").expect("infallible");
        assert_eq!(slow.status(), StatusCode::REQUEST_TIMEOUT);
        // A body over the limit is refused before any place is taken, too.
        let config =
            AdmissionConfig { body_limit_bytes: 4, ..AdmissionConfig::new(1, Duration::from_millis(10)) };
        let router = app(Admission::new(config), release);
        let big = Request::post("/")
            .header(header::CONTENT_LENGTH, "8")
            .body(Body::from("12345678"))
            .expect("request");
        assert_eq!(router.oneshot(big).await.expect("infallible").status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn work_a_write_leaves_running_keeps_its_place_after_the_client_goes() {
        let admission = Admission::new(AdmissionConfig::new(1, Duration::from_millis(10)));
        let release = Arc::new(Semaphore::new(0));
        let held = release.clone();
        // As the idempotency layer does: the write finishes on a task of its own, holding the place.
        let router = Router::new()
            .route(
                "/",
                axum::routing::post(move |axum::Extension(place): axum::Extension<Place>| {
                    let held = held.clone();
                    async move {
                        let task = tokio::spawn(async move {
                            let _place = place;
                            held.acquire().await.expect("open").forget();
                        });
                        let _ = task.await;
                        "written"
                    }
                }),
            )
            .layer(axum::middleware::from_fn_with_state(admission.clone(), layer));
        let request = Request::post("/").body(Body::empty()).expect("request");
        let client = tokio::spawn(router.clone().oneshot(request));
        while admission.in_flight() < 1 {
            tokio::task::yield_now().await;
        }
        client.abort();
        let _ = client.await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(admission.in_flight(), 1, "the write still runs, so its place is still taken");
        release.add_permits(1);
        let deadline = Instant::now() + Duration::from_secs(5);
        while admission.in_flight() > 0 {
            assert!(Instant::now() < deadline, "the place came back when the write ended");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn a_standing_queue_cuts_the_wait_until_it_calms() {
        let config = AdmissionConfig::new(1, Duration::from_millis(200));
        let admission = Admission::new(config);
        let release = Arc::new(Semaphore::new(0));
        let router = app(admission.clone(), release.clone());
        assert_eq!(admission.wait_budget(), Duration::from_millis(200), "a burst may wait it all");
        let holder = tokio::spawn(status(router.clone()));
        while admission.in_flight() < 1 {
            tokio::task::yield_now().await;
        }
        let started = Instant::now();
        assert_eq!(status(router.clone()).await.0, StatusCode::SERVICE_UNAVAILABLE);
        assert!(started.elapsed() >= Duration::from_millis(200));
        // Refused after a full wait: the queue stands, so the next waits a tenth.
        assert_eq!(admission.wait_budget(), Duration::from_millis(20));
        let started = Instant::now();
        assert_eq!(status(router.clone()).await.0, StatusCode::SERVICE_UNAVAILABLE);
        assert!(started.elapsed() < Duration::from_millis(150), "{:?}", started.elapsed());
        tokio::time::sleep(CALM + Duration::from_millis(20)).await;
        assert_eq!(admission.wait_budget(), Duration::from_millis(200), "calm again");
        release.add_permits(1);
        assert_eq!(holder.await.expect("task").0, StatusCode::OK);
    }

    #[tokio::test]
    async fn a_request_that_waits_gets_the_place_a_finished_one_frees() {
        let config = AdmissionConfig::new(1, Duration::from_secs(5));
        let admission = Admission::new(config);
        let release = Arc::new(Semaphore::new(0));
        let router = app(admission.clone(), release.clone());
        let first = tokio::spawn(status(router.clone()));
        while admission.in_flight() < 1 {
            tokio::task::yield_now().await;
        }
        let second = tokio::spawn(status(router.clone()));
        while admission.waiting.load(Ordering::Relaxed) < 1 {
            tokio::task::yield_now().await;
        }
        release.add_permits(1);
        assert_eq!(first.await.expect("task").0, StatusCode::OK);
        while admission.waiting.load(Ordering::Relaxed) > 0 {
            tokio::task::yield_now().await;
        }
        release.add_permits(1);
        assert_eq!(second.await.expect("task").0, StatusCode::OK);
    }
}
