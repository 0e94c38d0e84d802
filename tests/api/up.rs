//! `tessera up` as a newcomer runs it: the real binary on a fresh data folder, then again on the reused one.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_tessera");

struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(data_dir: &Path) -> Self {
        let mut child = Command::new(BIN)
            .args(["up", "--listen", "127.0.0.1:0", "--sql-listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("TESSERA_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run tessera up");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines, seen: Vec::new() }
    }

    /// Waits for the line that says the gateway serves, returning it and what came before.
    fn wait_until_up(&mut self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !self.seen.iter().any(|l| l.starts_with("Stop with Ctrl-C")) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("tessera up did not come up; output so far: {:?}", self.seen),
            }
        }
    }

    fn value_after(&self, marker: &str) -> Option<String> {
        self.seen.iter().find_map(|l| l.trim().strip_prefix(marker).map(|v| v.trim().to_owned()))
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        let status =
            Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill");
        assert!(status.success());
        self.child.wait().expect("wait")
    }
}

fn postgres_running(data_dir: &Path) -> bool {
    let pid = std::fs::read_to_string(data_dir.join("pg/postmaster.pid")).ok();
    pid.and_then(|p| p.lines().next().map(str::to_owned))
        .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

#[tokio::test]
async fn tessera_up_serves_the_demo_tenant_then_stops_cleanly_and_reuses_its_cluster() {
    let data_dir =
        std::env::temp_dir().join(format!("tessera-up-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]));
    let http = reqwest::Client::new();

    let mut first = Running::start(&data_dir);
    first.wait_until_up();
    let base = first.value_after("REST gateway").expect("gateway address");
    let key = first.value_after("export TESSERA_API_KEY=").expect("the demo key is printed on first start");
    let deals: serde_json::Value = http
        .get(format!("{base}/v1/crm/deals"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(deals["data"].as_array().expect("sample deals").len(), 3);
    // The API contract and its page, where the startup lines say, as the README shows them, with no credential.
    let docs_line = first.value_after("API docs").expect("the docs line");
    assert!(docs_line.starts_with(&format!("{base}/v1/docs ")), "{docs_line}");
    let doc: serde_json::Value = http
        .get(format!("{base}/v1/openapi.json"))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(
        (doc["openapi"].as_str(), doc["info"]["title"].as_str()),
        (Some("3.1.0"), Some("Tessera API"))
    );
    let page = http.get(format!("{base}/v1/docs")).send().await.expect("request");
    assert_eq!(page.status(), 200);
    assert!(page.text().await.expect("page").contains("<code>/v1/crm/deals</code>"));

    // The SQL endpoint, as the printed line says, with the same demo key.
    let sql_line = first.value_after("SQL endpoint").expect("SQL endpoint line");
    let port: u16 = sql_line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("port="))
        .and_then(|p| p.trim_matches('"').parse().ok())
        .expect("the SQL endpoint's port");
    let mut sql_config = tokio_postgres::Config::new();
    sql_config.host("127.0.0.1").port(port).user("demo").password(&key).dbname("tessera");
    let (reporting, connection) = sql_config.connect(tokio_postgres::NoTls).await.expect("SQL endpoint");
    tokio::spawn(connection);
    let sampled: i64 =
        reporting.query_one("select count(*) from reporting.crm_deals", &[]).await.expect("query").get(0);
    assert_eq!(sampled, 3);
    drop(reporting);

    // The in-process CDC worker turns the committed change into an event.
    let psql = first.value_after("PostgreSQL").expect("psql line");
    let url = psql.trim_start_matches("psql ").trim_matches('"').to_owned();
    let db = tessera_core::bootstrap::connect(&url.parse().expect("url")).await.expect("connect");
    let won = http
        .patch(format!("{base}/v1/crm/deals/0190a000-0000-7000-8000-000000000021"))
        .bearer_auth(&key)
        .json(&serde_json::json!({"stage": "won"}))
        .send()
        .await
        .expect("patch");
    assert_eq!(won.status(), 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let n: i64 = db
            .query_one("select count(*) from events.log where type = 'crm.deals.update'", &[])
            .await
            .expect("count")
            .get(0);
        if n == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no event for the update");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    drop(db);

    // A second `tessera up` on the same folder refuses instead of touching the running cluster.
    let second = Command::new(BIN)
        .args(["up", "--listen", "127.0.0.1:0", "--sql-listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data_dir)
        .output()
        .expect("second up");
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("already running"), "{err}");

    // Operator commands work beside the running platform.
    let minted = Command::new(BIN)
        .args(["key", "create", "--tenant", "demo", "--scopes", "crm:read", "--data-dir"])
        .arg(&data_dir)
        .output()
        .expect("key create");
    assert!(minted.status.success(), "{}", String::from_utf8_lossy(&minted.stderr));
    let reader_key = String::from_utf8_lossy(&minted.stdout).trim().to_owned();
    let status = http
        .get(format!("{base}/v1/crm/companies"))
        .bearer_auth(&reader_key)
        .send()
        .await
        .expect("req")
        .status();
    assert_eq!(status, 200);

    // Modules are enabled and disabled per tenant, effective at the next request.
    let toggle = |action: &str| {
        let out = Command::new(BIN)
            .args(["tenant", action, "--tenant", "demo", "--modules", "hr", "--data-dir"])
            .arg(&data_dir)
            .output()
            .expect("tenant enable/disable");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let employees = async || {
        http.get(format!("{base}/v1/hr/employees")).bearer_auth(&key).send().await.expect("req").status()
    };
    assert_eq!(toggle("disable").trim(), "tenant demo now has modules: crm, invoicing");
    assert_eq!(employees().await, 403);
    toggle("enable");
    assert_eq!(employees().await, 200);

    // The operator's view of the event pipeline, beside the running platform.
    let doctor = Command::new(BIN).args(["doctor", "--data-dir"]).arg(&data_dir).output().expect("doctor");
    let report = String::from_utf8_lossy(&doctor.stdout);
    assert!(doctor.status.success(), "{report}{}", String::from_utf8_lossy(&doctor.stderr));
    assert!(report.contains("ok   wal_level: logical"), "{report}");
    assert!(report.contains("ok   slot: tessera: active"), "{report}");
    assert!(report.contains("subscriber invoicing.deals"), "{report}");
    let letters = Command::new(BIN)
        .args(["events", "dead-letters", "--data-dir"])
        .arg(&data_dir)
        .output()
        .expect("letters");
    assert!(letters.status.success());
    assert!(String::from_utf8_lossy(&letters.stderr).contains("no dead letters"));
    let health = http.get(format!("{base}/healthz")).send().await.expect("healthz");
    assert_eq!(health.status(), 200);
    // Read in the background every 5 s: poll until it shows the worker streaming.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        let text =
            http.get(format!("{base}/metrics")).send().await.expect("metrics").text().await.expect("text");
        if text.contains("tessera_cdc_slot_active{slot=\"tessera\"} 1") {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        metrics.contains("tessera_subscriber_dead_letters{subscriber=\"hr.commissions\"} 0"),
        "{metrics}"
    );
    // The gateway's own: requests by route (ids hidden), latency, the cache, the limiter, the pool.
    for line in [
        "tessera_http_requests_total{route=\"/healthz\",method=\"GET\",status=\"200\"}",
        "tessera_http_request_duration_seconds_bucket{route=\"/healthz\",le=\"+Inf\"}",
        "tessera_cache_lookups_total{outcome=\"hit\"}",
        "tessera_rate_limited_total{limit=\"key\"} 0",
        "tessera_db_pool_connections{state=\"idle\"}",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
    // The demo key reads the tenant's event feed.
    let feed: serde_json::Value = http
        .get(format!("{base}/v1/events?types=deal.closed.won"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("feed")
        .json()
        .await
        .expect("json");
    assert_eq!(feed["data"].as_array().map(Vec::len), Some(1), "{feed}");

    let exit = first.terminate();
    assert!(exit.success(), "SIGTERM is a clean stop: {exit:?}");
    assert!(!postgres_running(&data_dir), "postgres is stopped with tessera");

    // Reused: no new demo tenant, the old key still works.
    let mut again = Running::start(&data_dir);
    again.wait_until_up();
    assert!(again.value_after("export TESSERA_API_KEY=").is_none());
    assert!(again.seen.iter().any(|l| l.contains("exists already")));
    let base = again.value_after("REST gateway").expect("gateway address");
    let status =
        http.get(format!("{base}/v1/crm/deals")).bearer_auth(&key).send().await.expect("req").status();
    assert_eq!(status, 200);
    assert!(again.terminate().success());
    let _ = std::fs::remove_dir_all(&data_dir);
}

#[test]
fn every_command_has_help_and_the_scripts_print() {
    for args in [
        vec!["--help"],
        vec!["up", "--help"],
        vec!["serve", "--help"],
        vec!["migrate", "--help"],
        vec!["roles", "--help"],
        vec!["tenant", "create", "--help"],
        vec!["key", "create", "--help"],
        vec!["key", "revoke", "--help"],
        vec!["cdc", "--help"],
        vec!["tenant", "enable", "--help"],
        vec!["tenant", "disable", "--help"],
        vec!["doctor", "--help"],
        vec!["events", "dead-letters", "--help"],
        vec!["events", "replay", "--help"],
    ] {
        let out = Command::new(BIN).args(&args).output().expect("run");
        assert!(out.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"), "{args:?}");
    }
    let roles = Command::new(BIN).args(["roles", "--print"]).output().expect("roles");
    let script = String::from_utf8_lossy(&roles.stdout);
    assert!(
        script.contains("create role \"tessera_crm\"") && script.contains("nobypassrls noinherit"),
        "{script}"
    );
    let migrations = Command::new(BIN)
        .args(["migrate", "--print", "--data-dir", "/nonexistent-tessera"])
        .env_remove("TESSERA_DATABASE_URL")
        .output()
        .expect("migrate --print");
    let sql = String::from_utf8_lossy(&migrations.stdout);
    assert!(sql.contains("create table crm.deals") && sql.contains("force row level security"), "{sql}");
}

#[test]
fn serve_without_a_database_says_what_it_needs() {
    let out = Command::new(BIN).args(["serve"]).env_remove("TESSERA_DATABASE_URL").output().expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--database-url"));
}

#[tokio::test]
async fn serve_runs_against_an_existing_database_and_refuses_privileged_roles() {
    let mut app = crate::support::TestApp::spawn().await;
    let (_, key) = app.tenant("acme").await;
    let endpoint = &crate::support::cluster().endpoint;

    let owner_url = endpoint.url("tessera_owner", &app.db.name);
    let refused = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", &owner_url])
        .output()
        .expect("serve as owner");
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("refusing to serve"), "{err}");

    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &endpoint.url("tessera_app", &app.db.name),
        ])
        .env("TESSERA_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("serve");
    let stdout = child.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || BufReader::new(stdout).lines().next())
        .await
        .expect("join")
        .expect("a line")
        .expect("utf-8");
    let base = line.strip_prefix("Tessera gateway listening on ").expect("listening line").to_owned();
    let http = reqwest::Client::new();
    let r = http.get(format!("{base}/v1/crm/companies")).bearer_auth(&key).send().await.expect("request");
    assert_eq!(r.status(), 200);
    let ready = http.get(format!("{base}/readyz")).send().await.expect("readyz");
    assert_eq!(ready.status(), 200);
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(child.wait().expect("wait").success());
}

#[test]
fn configuration_files_are_validated_and_the_environment_overrides_them() {
    let dir = std::env::temp_dir()
        .join(format!("tessera-conf-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]));
    std::fs::create_dir_all(&dir).expect("dir");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "listen = \"127.0.0.1:0\"\nbogus = 1\n").expect("write");
    let out = Command::new(BIN).args(["serve", "--config"]).arg(&bad).output().expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not valid"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let zero_pool = dir.join("zero.toml");
    std::fs::write(
        &zero_pool,
        "pool_size = 0\ndatabase_url = \"postgresql://tessera_app@/x?host=/nonexistent\"\n",
    )
    .expect("write");
    let out = Command::new(BIN).args(["serve", "--config"]).arg(&zero_pool).output().expect("run");
    assert!(String::from_utf8_lossy(&out.stderr).contains("pool_size must be 1 to 1000"));
    // The environment wins over the file.
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&zero_pool)
        .env("TESSERA_POOL_SIZE", "2000")
        .output()
        .expect("run");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("got 2000"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
