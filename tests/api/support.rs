//! The test harness: one private PostgreSQL cluster per test process (started by the same launcher as
//! `tessera up`, stopped and deleted by a watchdog when the process ends however it ends), a migrated
//! template database, and one fresh database per test created from it and dropped afterwards.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use serde_json::Value;
use tessera_core::admin;
use tessera_core::apikey::Scope;
use tessera_core::bootstrap;
use tessera_core::db::Database;
use tessera_core::embedded::{Cluster, ClusterOptions, Endpoint, PgBinaries, WatchdogGuard};
use tessera_core::roles::{APP, OWNER};
use tessera_core::tenant::{TenantId, TenantSlug};
use tessera_core::{Module, roles};
use tokio_postgres::Client;
use tower::ServiceExt;

const TEMPLATE: &str = "tessera_template";
pub const BODY_LIMIT: usize = 64 * 1024;

/// The names of the compiled-in modules, all enabled for test tenants.
pub const MODULES: [&str; 3] = ["crm", "invoicing", "hr"];

pub fn modules() -> Vec<Arc<dyn Module>> {
    vec![Arc::new(tessera_crm::Crm), Arc::new(tessera_invoicing::Invoicing), Arc::new(tessera_hr::Hr)]
}

pub struct TestCluster {
    pub endpoint: Endpoint,
    pub superuser: String,
    pub bindir: PathBuf,
    _watchdog: WatchdogGuard,
}

static CLUSTER: OnceLock<TestCluster> = OnceLock::new();

/// The process's cluster, started on first use.
pub fn cluster() -> &'static TestCluster {
    CLUSTER.get_or_init(|| {
        // Started on a thread of its own: the caller may be inside an async runtime.
        std::thread::spawn(start_cluster).join().expect("the test cluster could not start")
    })
}

/// A private cluster in a fresh temporary folder, started; the watchdog stops it and deletes the folder when
/// the process ends. Tests that crash their database use one of their own.
pub fn private_cluster(durable: bool) -> (Cluster, Endpoint, WatchdogGuard) {
    let unique = format!("tessera-test-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
    let root = std::env::temp_dir().join(&unique[..32]);
    std::fs::create_dir_all(&root).expect("create the test folder");
    let bindir = std::env::var_os("TESSERA_PG_BINDIR").map(PathBuf::from);
    let bin = PgBinaries::locate(bindir.as_deref()).expect("PostgreSQL server binaries");
    let cluster = Cluster::new(
        bin,
        ClusterOptions { data_dir: root.join("pg"), superuser: "postgres".into(), durable },
    )
    .expect("cluster");
    cluster.init("test-only-password").expect("initdb");
    let endpoint = cluster.start().expect("start postgres");
    let watchdog = cluster.stop_when_process_exits(Some(&root)).expect("watchdog");
    (cluster, endpoint, watchdog)
}

fn start_cluster() -> TestCluster {
    let (cluster, endpoint, watchdog) = private_cluster(false);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let modules = modules();
    let refs: Vec<&dyn Module> = modules.iter().map(|m| m.as_ref()).collect();
    runtime
        .block_on(bootstrap::provision(&endpoint, "postgres", TEMPLATE, &refs))
        .expect("provision the template database");
    let bindir = cluster.binaries().bindir.clone();
    TestCluster { endpoint, superuser: "postgres".into(), bindir, _watchdog: watchdog }
}

/// A fresh database for one test, dropped when the test ends.
pub struct TestDb {
    pub name: String,
}

impl TestDb {
    pub async fn create() -> Self {
        let cluster = cluster();
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let admin = connect(&cluster.superuser, "postgres").await;
        admin
            .batch_execute(&format!("create database {name} template {TEMPLATE} owner {OWNER}"))
            .await
            .expect("create the test database");
        let admin = connect(&cluster.superuser, &name).await;
        admin.batch_execute(&roles::database_script()).await.expect("database grants");
        Self { name }
    }

    pub async fn connect_as(&self, user: &str) -> Client {
        connect(user, &self.name).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let cluster = cluster();
        let _ = std::process::Command::new(cluster.bindir.join("dropdb"))
            .arg("--force")
            .arg("--host")
            .arg(&cluster.endpoint.socket_dir)
            .arg("--port")
            .arg(cluster.endpoint.port.to_string())
            .arg("--username")
            .arg(&cluster.superuser)
            .arg(&self.name)
            .output();
    }
}

pub async fn connect(user: &str, dbname: &str) -> Client {
    bootstrap::connect(&cluster().endpoint.pg_config(user, dbname))
        .await
        .expect("connect to the test cluster")
}

/// The gateway's router over a fresh database, called in-process.
pub struct TestApp {
    pub db: TestDb,
    pub router: Router,
    pub owner: Client,
    /// The gateway's pool (as tessera_app).
    pub pool: Database,
}

/// A response, its body parsed as JSON when it is JSON.
#[derive(Debug)]
pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl TestResponse {
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }

    pub fn field(&self) -> &str {
        self.body["field"].as_str().unwrap_or("")
    }

    /// Asserts a problem+json error with this status and code.
    #[track_caller]
    pub fn assert_problem(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "unexpected status; body: {}", self.body);
        assert_eq!(self.code(), code, "unexpected code; body: {}", self.body);
        let ct = self.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
        assert_eq!(ct, "application/problem+json");
    }
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with_pool(4).await
    }

    /// With a pool of one connection every request reuses the same session.
    pub async fn spawn_with_pool(size: usize) -> Self {
        let db = TestDb::create().await;
        let pool = Database::new(cluster().endpoint.pg_config(APP, &db.name), size).expect("pool");
        pool.ensure_unprivileged().await.expect("the app role must be unprivileged");
        let router = tessera_gateway::router(pool.clone(), &modules(), BODY_LIMIT);
        let owner = db.connect_as(OWNER).await;
        Self { db, router, owner, pool }
    }

    /// Creates a tenant with every module enabled and returns it with a read-write key.
    pub async fn tenant(&mut self, slug: &str) -> (TenantId, String) {
        let tenant =
            admin::create_tenant(&mut self.owner, &TenantSlug::parse(slug).expect("slug"), slug, &MODULES)
                .await
                .expect("create tenant");
        let key = self.key(tenant.id, &["crm:write", "invoicing:write", "hr:write"]).await;
        (tenant.id, key)
    }

    pub async fn key(&mut self, tenant: TenantId, scopes: &[&str]) -> String {
        let scopes: Vec<Scope> = scopes.iter().map(|s| Scope::parse(s).expect("scope")).collect();
        admin::create_api_key(&mut self.owner, tenant, "test", &scopes).await.expect("create key").1
    }

    pub async fn send(&self, request: Request<Body>) -> TestResponse {
        let response = self.router.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), 16 * 1024 * 1024).await.expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        TestResponse { status, headers, body }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> TestResponse {
        let mut builder = Request::builder().method(method).uri(path);
        if let Some(key) = key {
            builder = builder.header("authorization", format!("Bearer {key}"));
        }
        let request = match body {
            Some(json) => builder
                .header("content-type", "application/json")
                .body(Body::from(json.to_string()))
                .expect("request"),
            None => builder.body(Body::empty()).expect("request"),
        };
        self.send(request).await
    }

    pub async fn get(&self, path: &str, key: &str) -> TestResponse {
        self.call(Method::GET, path, Some(key), None).await
    }

    pub async fn post(&self, path: &str, key: &str, body: Value) -> TestResponse {
        self.call(Method::POST, path, Some(key), Some(body)).await
    }

    pub async fn patch(&self, path: &str, key: &str, body: Value) -> TestResponse {
        self.call(Method::PATCH, path, Some(key), Some(body)).await
    }

    pub async fn delete(&self, path: &str, key: &str) -> TestResponse {
        self.call(Method::DELETE, path, Some(key), None).await
    }

    /// Creates a record and returns its id, asserting 201.
    pub async fn create(&self, collection: &str, key: &str, body: Value) -> String {
        let r = self.post(&format!("/v1/crm/{collection}"), key, body).await;
        assert_eq!(r.status, StatusCode::CREATED, "create {collection}: {}", r.body);
        r.body["id"].as_str().expect("id").to_owned()
    }

    /// Counts the rows of a table across all tenants, as the cluster superuser.
    pub async fn count_all(&self, table: &str) -> i64 {
        let admin = connect(&cluster().superuser, &self.db.name).await;
        admin.query_one(&format!("select count(*) from {table}"), &[]).await.expect("count").get(0)
    }
}
