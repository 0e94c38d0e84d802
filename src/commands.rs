//! Each command's wiring: which database, which components, in which order.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use tessera_cdc::dispatch::{self, DispatchSettings, Subscriber};
use tessera_cdc::worker::CdcSettings;
use tessera_core::admin::{self, DEMO_SLUG};
use tessera_core::apikey::Scope;
use tessera_core::bootstrap::{self, DATABASE};
use tessera_core::config::{
    DEFAULT_BODY_LIMIT, DEFAULT_EVENT_RETENTION_DAYS, DEFAULT_LISTEN, DEFAULT_POOL_SIZE,
    DEFAULT_QUEUE_TIMEOUT_MS, DEFAULT_SQL_LISTEN, FileConfig, Secret, Settings, SqlSettings,
};
use tessera_core::db::Database;
use tessera_core::embedded::{Cluster, ClusterOptions, Endpoint, PgBinaries};
use tessera_core::roles::{APP, OWNER, REPLICATION, SQL};
use tessera_core::tenant::TenantSlug;
use tessera_core::{Module, migrate};
use tessera_gateway::sql::{SqlConfig, SqlEndpoint, UpstreamConfig};
use tessera_gateway::{Application, GatewayConfig, MetricsSource};
use tokio_postgres::Client;

use crate::{
    Cli, Command, EventsAction, KeyAction, MemberAction, Serving, SqlServing, Target, TenantAction,
    UserAction,
};

/// The modules compiled into this binary.
fn modules() -> Vec<Arc<dyn Module>> {
    vec![Arc::new(tessera_crm::Crm), Arc::new(tessera_invoicing::Invoicing), Arc::new(tessera_hr::Hr)]
}

fn module_refs(modules: &[Arc<dyn Module>]) -> Vec<&dyn Module> {
    modules.iter().map(|m| m.as_ref()).collect()
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let file = FileConfig::load(cli.config.as_deref())?;
    let modules = modules();
    match cli.command {
        Command::Up { target, serving, sql } => {
            up(settings(&file, &target, Some(&serving))?, sql_settings(&file, &sql)?, &modules).await
        }
        Command::Sql { target, sql } => {
            sql_cmd(settings(&file, &target, None)?, sql_settings(&file, &sql)?).await
        }
        Command::Serve { target, serving } => {
            serve(settings(&file, &target, Some(&serving))?, &modules).await
        }
        Command::Migrate { target, print } => {
            migrate_cmd(settings(&file, &target, None)?, &modules, print).await
        }
        Command::Roles { print: _ } => {
            let names: Vec<&str> = modules.iter().map(|m| m.name()).collect();
            print!("{}", tessera_core::roles::script(&names));
            Ok(())
        }
        Command::Tenant { action } => tenant_cmd(&file, action, &modules).await,
        Command::Key { action } => key_cmd(&file, action, &modules).await,
        Command::User { action } => user_cmd(&file, action, &modules).await,
        Command::Member { action } => member_cmd(&file, action, &modules).await,
        Command::Cdc { target } => cdc_cmd(settings(&file, &target, None)?, &modules).await,
        Command::Events { action } => events_cmd(&file, action, &modules).await,
        Command::Doctor { target } => doctor_cmd(settings(&file, &target, None)?, &modules).await,
    }
}

/// The replication slot and publication the CDC worker uses.
const SLOT: &str = "tessera";
const PUBLICATION: &str = "tessera_cdc";

/// The CDC worker's settings for a connection as the event system's login (tessera_replication).
fn cdc_settings(config: &tokio_postgres::Config, modules: &[Arc<dyn Module>]) -> anyhow::Result<CdcSettings> {
    use tokio_postgres::config::Host;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(name)) => name.clone(),
        Some(Host::Unix(path)) => path.display().to_string(),
        None => "localhost".into(),
    };
    let password = config.get_password().map(|p| String::from_utf8_lossy(p).into_owned()).unwrap_or_default();
    Ok(CdcSettings {
        host,
        port: config.get_ports().first().copied().unwrap_or(5432),
        database: config.get_dbname().unwrap_or(DATABASE).to_owned(),
        replication_user: config
            .get_user()
            .context("the event system's connection needs a user name")?
            .to_owned(),
        replication_password: password,
        writer: config.clone(),
        slot: SLOT.into(),
        publication: PUBLICATION.into(),
        rules: modules.iter().flat_map(|m| m.event_rules()).collect(),
    })
}

fn subscribers(modules: &[Arc<dyn Module>]) -> Vec<Subscriber> {
    Subscriber::of_modules(&module_refs(modules))
}

fn dispatch_settings(
    settings: &Settings,
    config: &tokio_postgres::Config,
    modules: &[Arc<dyn Module>],
) -> DispatchSettings {
    let mut dispatch = DispatchSettings::new(config.clone(), subscribers(modules));
    dispatch.retention =
        settings.event_retention_days.map(|days| std::time::Duration::from_secs(u64::from(days) * 86_400));
    dispatch
}

/// The CDC worker (retried after transient failures, standing by while another one runs) and the dispatcher.
async fn run_event_system(cdc: CdcSettings, dispatch: DispatchSettings) {
    tokio::join!(tessera_cdc::worker::supervise_on_own_thread(cdc), tessera_cdc::dispatch::run(dispatch));
}

/// The event pipeline's state as Prometheus metrics: read every few seconds by one background task over one
/// connection, and served from memory, so scrapes cost the database nothing however many arrive.
fn event_metrics(config: tokio_postgres::Config, modules: &[Arc<dyn Module>]) -> MetricsSource {
    let subscribers = subscribers(modules);
    let latest: Arc<std::sync::RwLock<Result<String, String>>> =
        Arc::new(std::sync::RwLock::new(Err("not read yet".into())));
    let writer = Arc::downgrade(&latest);
    tokio::spawn(async move {
        let mut client = None;
        // Ends when the gateway (and with it the last reader) is gone.
        while let Some(latest) = writer.upgrade() {
            if client.is_none() {
                client = bootstrap::connect(&config).await.ok();
            }
            let read = match &client {
                Some(c) => tessera_cdc::doctor::status(c, SLOT, &subscribers)
                    .await
                    .map(|s| s.prometheus())
                    .map_err(|e| e.to_string()),
                None => Err("cannot connect".into()),
            };
            if read.is_err() {
                client = None;
            }
            if let Ok(mut slot) = latest.write() {
                *slot = read;
            }
            drop(latest);
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        }
    });
    MetricsSource(Arc::new(move || {
        let value = latest.read().map(|v| v.clone()).unwrap_or_else(|_| Err("poisoned".into()));
        Box::pin(std::future::ready(value))
    }))
}

/// The event system's connection: `--database-url` (as tessera_replication), or the embedded cluster's.
struct EventSession {
    config: tokio_postgres::Config,
    embedded: Option<Embedded>,
}

impl EventSession {
    async fn open(settings: &Settings, modules: &[Arc<dyn Module>]) -> anyhow::Result<Self> {
        if let Some(url) = &settings.database_url {
            return Ok(Self { config: url.expose().parse()?, embedded: None });
        }
        let embedded = open_embedded(settings, modules, false).await?;
        Ok(Self { config: embedded.endpoint.pg_config(REPLICATION, DATABASE), embedded: Some(embedded) })
    }

    /// Opens a session, runs `body` on a connection as the event system's role, and closes the session
    /// whatever `body` returned.
    async fn run<T>(
        settings: &Settings,
        modules: &[Arc<dyn Module>],
        body: impl AsyncFnOnce(&Client) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let session = Self::open(settings, modules).await?;
        let result = async {
            let client = bootstrap::connect(&session.config)
                .await
                .context("could not connect as the event system's role")?;
            body(&client).await
        }
        .await;
        session.close()?;
        result
    }

    fn close(self) -> anyhow::Result<()> {
        match self.embedded {
            Some(e) => e.close(),
            None => Ok(()),
        }
    }
}

async fn cdc_cmd(settings: Settings, modules: &[Arc<dyn Module>]) -> anyhow::Result<()> {
    let session = EventSession::open(&settings, modules).await?;
    let cdc = cdc_settings(&session.config, modules)?;
    let dispatch = dispatch_settings(&settings, &session.config, modules);
    let prepared = async {
        tessera_cdc::worker::prepare(&cdc).await?;
        dispatch::register(&dispatch.connection, &dispatch.subscribers).await?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if let Err(e) = prepared {
        session.close()?;
        return Err(e);
    }
    println!("CDC worker and event dispatcher running (slot {SLOT}); stop with Ctrl-C.");
    tokio::select! {
        () = run_event_system(cdc, dispatch) => {},
        () = shutdown_signal() => {},
    }
    session.close()
}

async fn events_cmd(
    file: &FileConfig,
    action: EventsAction,
    modules: &[Arc<dyn Module>],
) -> anyhow::Result<()> {
    match action {
        EventsAction::DeadLetters { target, subscriber } => {
            let letters = EventSession::run(&settings(file, &target, None)?, modules, async |client| {
                Ok(dispatch::dead_letters(client, subscriber.as_deref()).await?)
            })
            .await?;
            if letters.is_empty() {
                eprintln!("no dead letters");
            }
            for l in letters {
                println!("{}", serde_json::to_string(&l)?);
            }
        }
        EventsAction::Replay { target, subscriber, seq } => {
            let report = EventSession::run(&settings(file, &target, None)?, modules, async |client| {
                Ok(dispatch::replay(client, &subscribers(modules), subscriber.as_deref(), seq).await?)
            })
            .await?;
            for (s, seq) in &report.replayed {
                println!("replayed {s} seq {seq}");
            }
            for (s, seq, error) in &report.failed {
                println!("failed {s} seq {seq}: {error}");
            }
            println!("{} replayed, {} still failing", report.replayed.len(), report.failed.len());
            if !report.failed.is_empty() {
                bail!("{} dead letters still fail", report.failed.len());
            }
        }
    }
    Ok(())
}

async fn doctor_cmd(settings: Settings, modules: &[Arc<dyn Module>]) -> anyhow::Result<()> {
    let status = EventSession::run(&settings, modules, async |client| {
        Ok(tessera_cdc::doctor::status(client, SLOT, &subscribers(modules)).await?)
    })
    .await?;
    let checks = status.checks();
    for check in &checks {
        println!("{} {}: {}", if check.ok { "ok  " } else { "FAIL" }, check.name, check.detail);
    }
    if !checks.iter().all(|c| c.ok) {
        bail!("the event pipeline needs an operator (see FAIL above)");
    }
    println!("all good");
    Ok(())
}

/// Flags over environment (clap merges those two) over the file over defaults; then validated.
fn settings(file: &FileConfig, target: &Target, serving: Option<&Serving>) -> anyhow::Result<Settings> {
    let pool_size = serving.and_then(|s| s.pool_size).or(file.pool_size).unwrap_or(DEFAULT_POOL_SIZE);
    let settings = Settings {
        data_dir: target
            .data_dir
            .clone()
            .or_else(|| file.data_dir.clone())
            .unwrap_or_else(|| PathBuf::from(".tessera")),
        listen: match serving.and_then(|s| s.listen).or(file.listen) {
            Some(addr) => addr,
            None => DEFAULT_LISTEN.parse()?,
        },
        database_url: target.database_url.clone().map(Secret::new).or_else(|| file.database_url.clone()),
        pg_bindir: target.pg_bindir.clone().or_else(|| file.pg_bindir.clone()),
        pool_size,
        body_limit_bytes: file.body_limit_bytes.unwrap_or(DEFAULT_BODY_LIMIT),
        response_cache: !serving.is_some_and(|s| s.no_cache) && file.response_cache.unwrap_or(true),
        rate_limit_ip: serving.and_then(|s| s.rate_limit_ip).or(file.rate_limit_ip).unwrap_or(1000),
        rate_limit_key: serving.and_then(|s| s.rate_limit_key).or(file.rate_limit_key).unwrap_or(200),
        rate_limit_tenant: serving
            .and_then(|s| s.rate_limit_tenant)
            .or(file.rate_limit_tenant)
            .unwrap_or(1000),
        max_in_flight: serving.and_then(|s| s.max_in_flight).or(file.max_in_flight).unwrap_or(2 * pool_size),
        queue_timeout_ms: serving
            .and_then(|s| s.queue_timeout_ms)
            .or(file.queue_timeout_ms)
            .unwrap_or(DEFAULT_QUEUE_TIMEOUT_MS),
        trusted_proxies: file.trusted_proxies.clone().unwrap_or_default(),
        rate_limit_plans: file.rate_limit_plans.clone().unwrap_or_default(),
        event_retention_days: match file.event_retention_days.unwrap_or(DEFAULT_EVENT_RETENTION_DAYS) {
            0 => None,
            days => Some(days),
        },
    };
    settings.validate()?;
    Ok(settings)
}

/// The SQL endpoint's settings: flags over environment over the file's `[sql]` table over defaults.
fn sql_settings(file: &FileConfig, flags: &SqlServing) -> anyhow::Result<SqlSettings> {
    let table = file.sql.clone().unwrap_or_default();
    let listen: std::net::SocketAddr = match flags.sql_listen.or(table.listen) {
        Some(addr) => addr,
        None => DEFAULT_SQL_LISTEN.parse()?,
    };
    let tls = flags.sql_tls_cert.is_some() || table.tls_cert.is_some();
    let settings = SqlSettings {
        listen,
        upstream_url: flags.sql_upstream_url.clone().map(Secret::new).or(table.upstream_url),
        tls_cert: flags.sql_tls_cert.clone().or(table.tls_cert),
        tls_key: flags.sql_tls_key.clone().or(table.tls_key),
        // Beyond this machine, TLS is required whenever it is configured.
        require_tls: flags.sql_require_tls
            || table.require_tls.unwrap_or(false)
            || (tls && !listen.ip().is_loopback()),
        statement_timeout_ms: table.statement_timeout_ms.unwrap_or(60_000),
        max_rows: table.max_rows.unwrap_or(1_000_000),
        max_bytes: table.max_bytes.unwrap_or(256 * 1024 * 1024),
        pool_size: table.pool_size.unwrap_or(20),
        max_sessions_per_tenant: table.max_sessions_per_tenant.unwrap_or(10),
        idle_timeout_ms: table.idle_timeout_ms.unwrap_or(15 * 60 * 1000),
        threads: table.threads,
    };
    settings.validate()?;
    Ok(settings)
}

/// Binds the SQL endpoint: logins checked through `auth`, tenants' SQL run on `upstream` (as tessera_sql).
async fn bind_sql(
    settings: &SqlSettings,
    auth: Database,
    upstream: &tokio_postgres::Config,
) -> anyhow::Result<SqlEndpoint> {
    let tls = match (&settings.tls_cert, &settings.tls_key) {
        (Some(cert), Some(key)) => Some(tessera_gateway::sql::tls_from_pem(cert, key)?),
        _ => None,
    };
    let mut config = SqlConfig::new(settings.listen);
    config.require_tls = settings.require_tls;
    config.statement_timeout = std::time::Duration::from_millis(settings.statement_timeout_ms);
    config.max_rows = settings.max_rows;
    config.max_bytes = settings.max_bytes;
    config.pool_size = settings.pool_size;
    config.max_sessions_per_tenant = settings.max_sessions_per_tenant;
    config.idle_timeout = std::time::Duration::from_millis(settings.idle_timeout_ms);
    if let Some(threads) = settings.threads {
        config.threads = threads;
    }
    let upstream = UpstreamConfig::from_pg_config(upstream)?;
    SqlEndpoint::bind(config, auth, upstream, tls)
        .await
        .with_context(|| format!("could not start the SQL endpoint on {}", settings.listen))
}

async fn sql_cmd(settings: Settings, sql: SqlSettings) -> anyhow::Result<()> {
    let (Some(url), Some(upstream)) = (&settings.database_url, &sql.upstream_url) else {
        bail!(
            "`tessera sql` needs --database-url (as tessera_app, to check logins) and --sql-upstream-url (as \
             tessera_sql, where tenants' SQL runs); `tessera up` runs everything locally"
        );
    };
    let auth = Database::new(url.expose().parse()?, 4)?;
    auth.ensure_unprivileged().await?;
    let endpoint = bind_sql(&sql, auth, &upstream.expose().parse()?).await?;
    println!("Tessera SQL endpoint listening on {}", endpoint.local_addr()?);
    endpoint.run_until_stopped(shutdown_signal()).await;
    Ok(())
}

/// The embedded cluster of a data folder, and the lock that says who manages it.
struct Embedded {
    cluster: Cluster,
    endpoint: Endpoint,
    /// Held while this process manages the cluster (`tessera up`, or a one-off command when none runs).
    lock: Option<File>,
    /// The migrations this process applied while provisioning.
    applied: Vec<migrate::Applied>,
}

fn lock_path(data_dir: &Path) -> PathBuf {
    data_dir.join("tessera.lock")
}

/// Takes the data folder's lock without waiting. `Ok(None)` when another process holds it.
fn try_lock(data_dir: &Path) -> anyhow::Result<Option<File>> {
    std::fs::create_dir_all(data_dir).with_context(|| format!("could not create {}", data_dir.display()))?;
    let path = lock_path(data_dir);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("could not open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {
            file.set_len(0)?;
            file.rewind()?;
            write!(file, "{}", std::process::id())?;
            file.flush()?;
            Ok(Some(file))
        }
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("could not lock {}", path.display()))
        }
    }
}

fn lock_holder(data_dir: &Path) -> String {
    let mut text = String::new();
    let _ = File::open(lock_path(data_dir)).and_then(|mut f| f.read_to_string(&mut text));
    text.trim().to_owned()
}

fn cluster_for(settings: &Settings) -> anyhow::Result<Cluster> {
    let bin = PgBinaries::locate(settings.pg_bindir.as_deref())?;
    let options = ClusterOptions {
        data_dir: settings.data_dir.join("pg"),
        superuser: "postgres".into(),
        durable: true,
    };
    Ok(Cluster::new(bin, options)?)
}

/// Starts (or adopts) the embedded cluster and provisions it. With `exclusive`, fails when another process
/// manages it; otherwise connects to the one that process runs.
async fn open_embedded(
    settings: &Settings,
    modules: &[Arc<dyn Module>],
    exclusive: bool,
) -> anyhow::Result<Embedded> {
    let lock = try_lock(&settings.data_dir)?;
    let cluster = cluster_for(settings)?;
    let Some(lock) = lock else {
        let holder = lock_holder(&settings.data_dir);
        if exclusive {
            bail!(
                "tessera is already running for {} (pid {holder}); stop it first or use another --data-dir",
                settings.data_dir.display()
            );
        }
        let endpoint = cluster.running().with_context(|| {
            format!(
                "tessera (pid {holder}) holds {} but its database is not running",
                settings.data_dir.display()
            )
        })?;
        return Ok(Embedded { cluster, endpoint, lock: None, applied: Vec::new() });
    };
    if !cluster.is_initialized() {
        let password = tessera_core::apikey::random_hex(24)?;
        tessera_core::embedded::write_private(
            &settings.data_dir.join("postgres.password"),
            password.as_bytes(),
        )?;
        eprintln!("creating a PostgreSQL cluster in {}", cluster.data_dir().display());
        cluster.init(&password)?;
    }
    let endpoint = cluster.start()?;
    let applied =
        bootstrap::provision(&endpoint, cluster.superuser(), DATABASE, &module_refs(modules)).await?;
    Ok(Embedded { cluster, endpoint, lock: Some(lock), applied })
}

impl Embedded {
    /// Stops the cluster when this process manages it.
    fn close(self) -> anyhow::Result<()> {
        if self.lock.is_some() {
            self.cluster.stop(false)?;
        }
        Ok(())
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}

async fn up(settings: Settings, sql: SqlSettings, modules: &[Arc<dyn Module>]) -> anyhow::Result<()> {
    if settings.database_url.is_some() {
        bail!(
            "`tessera up` runs on the embedded PostgreSQL; use `tessera serve --database-url …` for an existing server"
        );
    }
    let embedded = open_embedded(&settings, modules, true).await?;
    let endpoint = embedded.endpoint.clone();
    let result = up_serving(&settings, &sql, modules, &endpoint).await;
    let closed = embedded.close();
    result?;
    closed
}

async fn up_serving(
    settings: &Settings,
    sql: &SqlSettings,
    modules: &[Arc<dyn Module>],
    endpoint: &Endpoint,
) -> anyhow::Result<()> {
    // The CDC worker turns committed rows into events.log entries, in process. Its slot exists before the
    // demo data and the gateway, so no change predates it.
    let cdc = cdc_settings(&endpoint.pg_config(REPLICATION, DATABASE), modules)?;
    tessera_cdc::worker::prepare(&cdc).await?;
    // Subscribers new to this database start at the current end of the log: registered before anything is
    // served, so they miss nothing from the first request on.
    let dispatch = dispatch_settings(settings, &endpoint.pg_config(REPLICATION, DATABASE), modules);
    dispatch::register(&dispatch.connection, &dispatch.subscribers).await?;

    let mut owner = bootstrap::connect(&endpoint.pg_config(OWNER, DATABASE)).await?;
    let demo_key = admin::seed_demo(&mut owner, &module_refs(modules)).await?;
    drop(owner);

    let db = Database::new(endpoint.pg_config(APP, DATABASE), settings.pool_size)?;
    db.ensure_unprivileged().await?;
    let config = GatewayConfig {
        listen: settings.listen,
        body_limit_bytes: settings.body_limit_bytes,
        metrics: Some(event_metrics(endpoint.pg_config(REPLICATION, DATABASE), modules)),
        cache: settings.response_cache.then(tessera_gateway::cache::CacheConfig::default),
        rate_limits: Some(rate_limits(settings)),
        admission: admission(settings),
    };
    let upstream = match &sql.upstream_url {
        Some(url) => url.expose().parse()?,
        None => endpoint.pg_config(SQL, DATABASE),
    };
    // Logins are checked on a small pool of their own: a flood of them cannot starve the REST gateway's.
    let sql_auth = Database::new(endpoint.pg_config(APP, DATABASE), 2)?;
    let sql_endpoint = bind_sql(sql, sql_auth, &upstream).await?;
    let sql_addr = sql_endpoint.local_addr()?;
    let app = Application::build(&config, db, modules)
        .await
        .with_context(|| format!("could not listen on {}", settings.listen))?;
    let addr = app.local_addr()?;
    let mut scopes: Vec<String> = modules.iter().map(|m| format!("{}:write", m.name())).collect();
    scopes.push("reporting:read".into());

    println!("Tessera is up.");
    println!("  REST gateway  http://{addr}");
    println!("  API docs      http://{addr}/v1/docs  (OpenAPI 3.1: http://{addr}/v1/openapi.json)");
    println!(
        "  SQL endpoint  psql \"host={} port={} user={DEMO_SLUG}\"  (password: an API key with reporting:read)",
        sql_addr.ip(),
        sql_addr.port()
    );
    println!("  PostgreSQL    psql \"{}\"", endpoint.url("postgres", DATABASE));
    match &demo_key {
        Some(token) => {
            println!(
                "Created the demo tenant \"{DEMO_SLUG}\" with sample CRM data. Its API key, shown only now:"
            );
            println!("  export TESSERA_API_KEY={token}");
        }
        None => {
            println!("The demo tenant \"{DEMO_SLUG}\" exists already. Mint a new key for it with:");
            let data_dir = match settings.data_dir.to_str() {
                Some(".tessera") => String::new(),
                _ => format!(" --data-dir {}", settings.data_dir.display()),
            };
            println!("  tessera key create --tenant {DEMO_SLUG} --scopes {}{data_dir}", scopes.join(","));
        }
    }
    println!("Try:");
    println!("  curl -s http://{addr}/v1/crm/deals -H \"Authorization: Bearer $TESSERA_API_KEY\"");
    println!("Stop with Ctrl-C.");
    let events = tokio::spawn(run_event_system(
        cdc,
        dispatch_settings(settings, &endpoint.pg_config(REPLICATION, DATABASE), modules),
    ));
    let (stop_sql, sql_stopped) = tokio::sync::oneshot::channel::<()>();
    let sql_task = tokio::spawn(sql_endpoint.run_until_stopped(async {
        let _ = sql_stopped.await;
    }));
    let served = app.run_until_stopped(shutdown_signal()).await;
    let _ = stop_sql.send(());
    let _ = sql_task.await;
    events.abort();
    served?;
    Ok(())
}

async fn serve(settings: Settings, modules: &[Arc<dyn Module>]) -> anyhow::Result<()> {
    let Some(url) = &settings.database_url else {
        bail!(
            "`tessera serve` needs --database-url (or TESSERA_DATABASE_URL) of the tessera_app role; `tessera up` runs everything locally"
        );
    };
    let config: tokio_postgres::Config = url.expose().parse()?;
    let db = Database::new(config, settings.pool_size)?;
    db.ensure_unprivileged().await?;
    let gateway = GatewayConfig {
        listen: settings.listen,
        body_limit_bytes: settings.body_limit_bytes,
        metrics: None,
        // Serves only while a CDC worker (`tessera cdc`) keeps the log current; off otherwise.
        cache: settings.response_cache.then(tessera_gateway::cache::CacheConfig::default),
        rate_limits: Some(rate_limits(&settings)),
        admission: admission(&settings),
    };
    let app = Application::build(&gateway, db, modules)
        .await
        .with_context(|| format!("could not listen on {}", settings.listen))?;
    println!("Tessera gateway listening on http://{}", app.local_addr()?);
    app.run_until_stopped(shutdown_signal()).await?;
    Ok(())
}

/// An owner connection for operator commands: `--database-url`, or the embedded cluster (started for the
/// duration of the command when no `tessera up` runs).
struct OwnerSession {
    client: Client,
    embedded: Option<Embedded>,
}

impl OwnerSession {
    async fn open(settings: &Settings, modules: &[Arc<dyn Module>]) -> anyhow::Result<Self> {
        if let Some(url) = &settings.database_url {
            let config: tokio_postgres::Config = url.expose().parse()?;
            let client = bootstrap::connect(&config).await.context("could not connect to --database-url")?;
            return Ok(Self { client, embedded: None });
        }
        let embedded = open_embedded(settings, modules, false).await?;
        let client = bootstrap::connect(&embedded.endpoint.pg_config(OWNER, DATABASE)).await?;
        Ok(Self { client, embedded: Some(embedded) })
    }

    fn close(self) -> anyhow::Result<()> {
        drop(self.client);
        match self.embedded {
            Some(e) => e.close(),
            None => Ok(()),
        }
    }
}

async fn migrate_cmd(settings: Settings, modules: &[Arc<dyn Module>], print: bool) -> anyhow::Result<()> {
    let refs = module_refs(modules);
    if print {
        if let Some(url) = &settings.database_url {
            let config: tokio_postgres::Config = url.expose().parse()?;
            let client = bootstrap::connect(&config).await.context("could not connect to --database-url")?;
            let sql = migrate::pending_sql(&client, &refs).await?;
            if sql.is_empty() {
                eprintln!("nothing to migrate");
            }
            print!("{sql}");
        } else {
            println!(
                "-- Every migration, as `tessera migrate --database-url …` would apply them to an empty database.\n"
            );
            print!("{}", migrate::all_sql(&refs));
        }
        return Ok(());
    }
    match &settings.database_url {
        Some(url) => {
            let config: tokio_postgres::Config = url.expose().parse()?;
            let mut client =
                bootstrap::connect(&config).await.context("could not connect to --database-url")?;
            report(&migrate::run(&mut client, &refs).await?);
        }
        None => {
            // Opening the embedded cluster provisions it, which applies what is pending.
            let session = OwnerSession::open(&settings, modules).await?;
            let mut client = session.client;
            let mut applied = session.embedded.as_ref().map(|e| e.applied.clone()).unwrap_or_default();
            applied.extend(migrate::run(&mut client, &refs).await?);
            report(&applied);
            drop(client);
            if let Some(e) = session.embedded {
                e.close()?;
            }
        }
    }
    Ok(())
}

fn report(applied: &[migrate::Applied]) {
    if applied.is_empty() {
        println!("the database is up to date");
    }
    for m in applied {
        println!("applied {} V{}__{}", m.schema, m.version, m.name);
    }
}

async fn tenant_cmd(
    file: &FileConfig,
    action: TenantAction,
    modules: &[Arc<dyn Module>],
) -> anyhow::Result<()> {
    match action {
        TenantAction::Create { target, slug, name, modules: wanted } => {
            let settings = settings(file, &target, None)?;
            let slug = TenantSlug::parse(&slug)?;
            let all: Vec<&str> = modules.iter().map(|m| m.name()).collect();
            let wanted: Vec<&str> =
                if wanted.is_empty() { all } else { wanted.iter().map(String::as_str).collect() };
            let enabled = admin::known_modules(&module_refs(modules), &wanted)?;
            let name = name.unwrap_or_else(|| slug.to_string());
            let mut session = OwnerSession::open(&settings, modules).await?;
            let result = admin::create_tenant(&mut session.client, &slug, &name, &enabled).await;
            session.close()?;
            let tenant = result?;
            println!("created tenant {} ({}) with modules: {}", tenant.slug, tenant.id, enabled.join(", "));
        }
        TenantAction::Enable { target, tenant, modules: wanted } => {
            change_modules(settings(file, &target, None)?, &tenant, &wanted, modules, true).await?;
        }
        TenantAction::Disable { target, tenant, modules: wanted } => {
            change_modules(settings(file, &target, None)?, &tenant, &wanted, modules, false).await?;
        }
        TenantAction::Plan { target, tenant, plan } => {
            let settings = settings(file, &target, None)?;
            let mut session = OwnerSession::open(&settings, modules).await?;
            let result = admin::set_plan(&mut session.client, &tenant, &plan).await;
            session.close()?;
            result?;
            eprintln!("tenant {tenant} is on plan {plan}");
        }
        TenantAction::List { target } => {
            let settings = settings(file, &target, None)?;
            let session = OwnerSession::open(&settings, modules).await?;
            let result = admin::list_tenants(&session.client).await;
            session.close()?;
            for t in result? {
                println!("{}\t{}\t{}\t{}", t.slug, t.id, t.status, t.name);
            }
        }
    }
    Ok(())
}

async fn change_modules(
    settings: Settings,
    tenant: &str,
    wanted: &[String],
    modules: &[Arc<dyn Module>],
    enable: bool,
) -> anyhow::Result<()> {
    let wanted: Vec<&str> = wanted.iter().map(String::as_str).collect();
    let wanted = admin::known_modules(&module_refs(modules), &wanted)?;
    let mut session = OwnerSession::open(&settings, modules).await?;
    let result = async {
        let t = admin::find_tenant(&session.client, tenant).await?;
        admin::set_modules(&mut session.client, t.id, &wanted, enable).await
    }
    .await;
    session.close()?;
    println!("tenant {tenant} now has modules: {}", result?.join(", "));
    Ok(())
}

async fn key_cmd(file: &FileConfig, action: KeyAction, modules: &[Arc<dyn Module>]) -> anyhow::Result<()> {
    match action {
        KeyAction::Create { target, tenant, scopes, name } => {
            let settings = settings(file, &target, None)?;
            let scopes = scopes.iter().map(|s| Scope::parse(s)).collect::<Result<Vec<_>, _>>()?;
            let named: Vec<&str> = scopes
                .iter()
                .map(|s| s.module.as_str())
                // The platform's own APIs and the SQL endpoint, which every tenant has.
                .filter(|m| !tessera_core::module::is_platform_scope(m))
                .collect();
            admin::known_modules(&module_refs(modules), &named)?;
            let mut session = OwnerSession::open(&settings, modules).await?;
            let result = async {
                let t = admin::find_tenant(&session.client, &tenant).await?;
                admin::create_api_key(&mut session.client, t.id, &name, &scopes).await
            }
            .await;
            session.close()?;
            let (id, token) = result?;
            eprintln!("created API key {id} for tenant {tenant}; it is shown only now:");
            println!("{token}");
        }
        KeyAction::List { target, tenant } => {
            let settings = settings(file, &target, None)?;
            let mut session = OwnerSession::open(&settings, modules).await?;
            let result = async {
                let t = admin::find_tenant(&session.client, &tenant).await?;
                admin::list_api_keys(&mut session.client, t.id).await
            }
            .await;
            session.close()?;
            for k in result? {
                let state = if k.revoked_at.is_some() { "revoked" } else { "active" };
                let last_used = match k.last_used_at {
                    Some(at) => at.format(&time::format_description::well_known::Rfc3339)?,
                    None => "never used".to_owned(),
                };
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    k.id,
                    k.prefix,
                    state,
                    k.scopes.join(","),
                    last_used,
                    k.name
                );
            }
        }
        KeyAction::Revoke { target, tenant, key } => {
            let settings = settings(file, &target, None)?;
            let mut session = OwnerSession::open(&settings, modules).await?;
            let result = async {
                let t = admin::find_tenant(&session.client, &tenant).await?;
                admin::revoke_api_key(&mut session.client, t.id, &key).await
            }
            .await;
            session.close()?;
            result?;
            println!("revoked key {key} of tenant {tenant}");
        }
    }
    Ok(())
}

/// The gateway's load shedding from the settings (`max_in_flight = 0` switches it off).
fn admission(settings: &Settings) -> Option<tessera_gateway::overload::AdmissionConfig> {
    (settings.max_in_flight > 0).then(|| {
        tessera_gateway::overload::AdmissionConfig::new(
            settings.max_in_flight,
            std::time::Duration::from_millis(settings.queue_timeout_ms),
        )
    })
}

/// The gateway's rate limits from the settings (0 switches one off).
fn rate_limits(settings: &Settings) -> tessera_gateway::ratelimit::RateLimitConfig {
    use tessera_gateway::ratelimit::{PlanRates, Rate, RateLimitConfig};
    let rate = |n: u32| (n > 0).then(|| Rate::per_second(n));
    RateLimitConfig {
        per_ip: rate(settings.rate_limit_ip),
        per_key: rate(settings.rate_limit_key),
        per_tenant: rate(settings.rate_limit_tenant),
        trusted_proxies: settings.trusted_proxies.clone(),
        plans: settings
            .rate_limit_plans
            .iter()
            .map(|(name, p)| {
                let rates =
                    PlanRates { per_key: rate(p.key.unwrap_or(0)), per_tenant: rate(p.tenant.unwrap_or(0)) };
                (name.clone(), rates)
            })
            .collect(),
        ..RateLimitConfig::default()
    }
}

async fn user_cmd(file: &FileConfig, action: UserAction, modules: &[Arc<dyn Module>]) -> anyhow::Result<()> {
    match action {
        UserAction::Create { target, email } => {
            let password = match std::env::var("TESSERA_PASSWORD") {
                Ok(p) => p,
                Err(_) => {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line)?;
                    line.trim_end_matches(['\r', '\n']).to_owned()
                }
            };
            let settings = settings(file, &target, None)?;
            let mut session = OwnerSession::open(&settings, modules).await?;
            let result = admin::create_user(&mut session.client, &email, &password).await;
            session.close()?;
            let id = result?;
            eprintln!("created user {email}");
            println!("{id}");
        }
    }
    Ok(())
}

async fn member_cmd(
    file: &FileConfig,
    action: MemberAction,
    modules: &[Arc<dyn Module>],
) -> anyhow::Result<()> {
    let (target, tenant, email, role) = match &action {
        MemberAction::Add { target, tenant, email, role } => (target, tenant, email, Some(role.as_str())),
        MemberAction::Remove { target, tenant, email } => (target, tenant, email, None),
    };
    let settings = settings(file, target, None)?;
    let mut session = OwnerSession::open(&settings, modules).await?;
    let result = async {
        let t = admin::find_tenant(&session.client, tenant).await?;
        match role {
            Some(role) => admin::add_member(&mut session.client, t.id, email, role).await,
            None => admin::remove_member(&mut session.client, t.id, email).await,
        }
    }
    .await;
    session.close()?;
    result?;
    match role {
        Some(role) => eprintln!("{email} is a member of {tenant} as {role}"),
        None => eprintln!("{email} is no longer a member of {tenant}"),
    }
    Ok(())
}
