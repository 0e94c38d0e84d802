//! The `tessera` binary: parses the command line, loads configuration, starts logging and hands over to
//! [`commands`], which wires the components together.

mod commands;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// mimalloc instead of glibc's malloc: under load the gateway's threads contended on glibc's arena locks
/// (see BENCHMARKS.md, "REST: GET one deal by id").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tessera: a multi-tenant business platform on one PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "tessera", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file (TOML). Defaults to ./tessera.toml when it exists.
    #[arg(long, global = true, env = "TESSERA_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

/// Where the data lives: the embedded cluster under --data-dir, or an existing server.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// Folder for the embedded PostgreSQL cluster (<data-dir>/pg) [default: .tessera]
    #[arg(long, env = "TESSERA_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// An existing PostgreSQL server instead of the embedded one. For `serve` connect as tessera_app;
    /// for `migrate`, `tenant` and `key` as tessera_owner; for `cdc`, `events` and `doctor` as
    /// tessera_replication.
    #[arg(long, env = "TESSERA_DATABASE_URL", value_name = "URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Folder holding initdb, pg_ctl and postgres (found automatically when unset).
    #[arg(long, env = "TESSERA_PG_BINDIR", value_name = "DIR")]
    pub pg_bindir: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct Serving {
    /// Address the REST gateway listens on [default: 127.0.0.1:8080]
    #[arg(long, env = "TESSERA_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Connections in the gateway's database pool [default: 16]
    #[arg(long, env = "TESSERA_POOL_SIZE", value_name = "N")]
    pub pool_size: Option<usize>,

    /// Serve every GET from the database, without the response cache
    #[arg(long, env = "TESSERA_NO_CACHE")]
    pub no_cache: bool,

    /// Requests per second per client address, before authentication; 0 = no limit [default: 1000]
    #[arg(long, env = "TESSERA_RATE_LIMIT_IP", value_name = "N")]
    pub rate_limit_ip: Option<u32>,

    /// Requests per second per API key; 0 = no limit [default: 200]
    #[arg(long, env = "TESSERA_RATE_LIMIT_KEY", value_name = "N")]
    pub rate_limit_key: Option<u32>,

    /// Requests per second per tenant; 0 = no limit [default: 1000]
    #[arg(long, env = "TESSERA_RATE_LIMIT_TENANT", value_name = "N")]
    pub rate_limit_tenant: Option<u32>,

    /// Requests the gateway runs at once; past them a request waits up to --queue-timeout-ms, then gets
    /// 503 overloaded. 0 = no shedding [default: 2 × pool size]
    #[arg(long, env = "TESSERA_MAX_IN_FLIGHT", value_name = "N")]
    pub max_in_flight: Option<usize>,

    /// How long a request waits for a place before 503 overloaded [default: 50]
    #[arg(long, env = "TESSERA_QUEUE_TIMEOUT_MS", value_name = "MS")]
    pub queue_timeout_ms: Option<u64>,
}

/// The SQL endpoint for reporting tools (also settable in the `[sql]` table of the configuration file).
#[derive(Debug, Clone, Args)]
pub struct SqlServing {
    /// Address the SQL endpoint listens on [default: 127.0.0.1:6543]
    #[arg(long, env = "TESSERA_SQL_LISTEN", value_name = "ADDR")]
    pub sql_listen: Option<SocketAddr>,

    /// Where tenants' SQL runs, as tessera_sql (a hot standby, say) [default: the platform's database]
    #[arg(long, env = "TESSERA_SQL_UPSTREAM_URL", value_name = "URL", hide_env_values = true)]
    pub sql_upstream_url: Option<String>,

    /// PEM certificate chain for TLS on the SQL endpoint
    #[arg(long, env = "TESSERA_SQL_TLS_CERT", value_name = "FILE", requires = "sql_tls_key")]
    pub sql_tls_cert: Option<PathBuf>,

    /// PEM private key for TLS on the SQL endpoint
    #[arg(long, env = "TESSERA_SQL_TLS_KEY", value_name = "FILE", requires = "sql_tls_cert")]
    pub sql_tls_key: Option<PathBuf>,

    /// Refuse SQL clients that do not use TLS
    #[arg(long, env = "TESSERA_SQL_REQUIRE_TLS")]
    pub sql_require_tls: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run everything on an embedded PostgreSQL: create or reuse the cluster, migrate, create a demo
    /// tenant on first start, and serve the REST gateway, the SQL endpoint and the event system until
    /// Ctrl-C or SIGTERM.
    Up {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        serving: Serving,
        #[command(flatten)]
        sql: SqlServing,
    },
    /// Serve the SQL endpoint alone against an existing database (DBA mode): --database-url as tessera_app
    /// (to check logins) and --sql-upstream-url as tessera_sql (where tenants' SQL runs).
    Sql {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        sql: SqlServing,
    },
    /// Serve the REST gateway against an existing, migrated database (DBA mode).
    Serve {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        serving: Serving,
    },
    /// Apply pending migrations (as tessera_owner), or print them for review.
    Migrate {
        #[command(flatten)]
        target: Target,
        /// Print the SQL that would run instead of running it.
        #[arg(long)]
        print: bool,
    },
    /// Print the role and grant script a superuser runs once per cluster and database.
    Roles {
        /// Print the script (the only action: Tessera never needs superuser rights at run time).
        #[arg(long, required = true)]
        print: bool,
    },
    /// Manage tenants.
    Tenant {
        #[command(subcommand)]
        action: TenantAction,
    },
    /// Manage a tenant's API keys.
    Key {
        #[command(subcommand)]
        action: KeyAction,
    },
    /// Create users, who log in (POST /v1/auth/login) to the tenants they are members of.
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// Add users to a tenant with a role, or remove them (their tokens stop working at once).
    Member {
        #[command(subcommand)]
        action: MemberAction,
    },
    /// Run the CDC worker and the event dispatcher alone (without the gateway). With --database-url,
    /// connect as tessera_replication. A second one stands by and takes over when the first stops.
    Cdc {
        #[command(flatten)]
        target: Target,
    },
    /// Inspect and replay events parked by failing subscribers.
    Events {
        #[command(subcommand)]
        action: EventsAction,
    },
    /// Check the event pipeline: wal_level, the replication slot and the WAL it retains, subscriber lag and
    /// dead letters. Exits with 1 when something needs an operator. With --database-url, connect as
    /// tessera_replication.
    Doctor {
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Subcommand)]
pub enum EventsAction {
    /// List dead letters not yet replayed (with --database-url, connect as tessera_replication).
    DeadLetters {
        #[command(flatten)]
        target: Target,
        /// Only this subscriber's (e.g. invoicing.deals).
        #[arg(long)]
        subscriber: Option<String>,
    },
    /// Hand dead letters to their handlers again, oldest first; each one that succeeds is marked replayed
    /// together with its effects.
    Replay {
        #[command(flatten)]
        target: Target,
        /// Only this subscriber's.
        #[arg(long)]
        subscriber: Option<String>,
        /// Only the dead letter at this log position.
        #[arg(long)]
        seq: Option<i64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TenantAction {
    /// Create a tenant with modules enabled.
    Create {
        #[command(flatten)]
        target: Target,
        /// Short unique name: 2-63 of a-z, 0-9 and inner hyphens.
        #[arg(long)]
        slug: String,
        /// Display name [default: the slug]
        #[arg(long)]
        name: Option<String>,
        /// Modules to enable, comma-separated [default: every compiled-in module]
        #[arg(long, value_delimiter = ',')]
        modules: Vec<String>,
    },
    /// List tenants.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Enable modules for a tenant (it may use them at its next request).
    Enable {
        #[command(flatten)]
        target: Target,
        /// The tenant's slug.
        #[arg(long)]
        tenant: String,
        /// Modules, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        modules: Vec<String>,
    },
    /// Disable modules for a tenant: its requests to them answer 403 module_not_enabled at once, and their
    /// event handlers skip its events. Its data stays.
    Disable {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        tenant: String,
        #[arg(long, value_delimiter = ',', required = true)]
        modules: Vec<String>,
    },
    /// Put a tenant on a plan: the rate limits its keys and requests get (rate_limit_plans in the
    /// configuration file); gateways see the change within ten minutes.
    Plan {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        plan: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserAction {
    /// Create a user. The password (12 characters or more) is read from TESSERA_PASSWORD, or else from the
    /// first line of standard input; it is stored only as an Argon2id hash.
    Create {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        email: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum MemberAction {
    /// Make a user a member of a tenant (or change its role).
    Add {
        #[command(flatten)]
        target: Target,
        /// The tenant's slug.
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        email: String,
        /// owner, admin or member: members use every module the tenant has; owners and admins also read
        /// its usage.
        #[arg(long, default_value = "member")]
        role: String,
    },
    /// End a user's membership of a tenant.
    Remove {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        email: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyAction {
    /// Mint an API key. It is printed once and stored only as a hash.
    Create {
        #[command(flatten)]
        target: Target,
        /// The tenant's slug.
        #[arg(long)]
        tenant: String,
        /// Scopes, comma-separated: <module>:read or <module>:write (write includes read).
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        /// A label to recognise the key by.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List a tenant's keys (prefix, scopes, state; never the secret).
    List {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        tenant: String,
    },
    /// Revoke a key by id or prefix; it stops working at the next request.
    Revoke {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        tenant: String,
        /// The key's id or its 12-character prefix.
        #[arg(long)]
        key: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TESSERA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
