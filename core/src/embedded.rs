//! The embedded PostgreSQL launcher, used by `tessera up` and by the test harness.
//!
//! It finds the server binaries (an explicit folder, `pg_config --bindir`, `PATH`, or Debian's per-version
//! folders under `/usr/lib/postgresql`), creates a private cluster in a data folder with `wal_level=logical`,
//! and starts it on a unix socket inside that folder plus a free loopback port. A cluster that is already
//! initialised is reused; one that is already running (for example left by a killed `tessera up`) is adopted.
//!
//! PostgreSQL refuses to run as root, so when this process is root every server command runs through
//! `runuser -u <user>` as an unprivileged OS user (`postgres`, or `TESSERA_PG_OS_USER`), who then owns the
//! data folder. Every file inside the data folder is written as that user too: root never opens a path that
//! user controls, so a planted symlink cannot turn a write into a root write. Port and socket folder are
//! written to `tessera.runtime.conf`, included from `postgresql.conf`, so that no path goes through a shell.

use std::fs;
use std::io::{self, Write};
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const MIN_MAJOR: u32 = 15;
const RUNTIME_CONF: &str = "tessera.runtime.conf";
const MAX_DATA_DIR_LEN: usize = 107 - "/.s.PGSQL.65535".len();

#[derive(Debug, thiserror::Error)]
pub enum LauncherError {
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found (looked in: {searched}). \
         Install PostgreSQL {MIN_MAJOR} or newer, for example `apt-get install postgresql-15` on Debian/Ubuntu \
         or `brew install postgresql@15` on macOS, or point TESSERA_PG_BINDIR at the folder holding them"
    )]
    NotFound { searched: String },
    #[error("PostgreSQL {found} is too old: Tessera needs PostgreSQL {MIN_MAJOR} or newer")]
    TooOld { found: String },
    #[error(
        "running as root, but no unprivileged OS user to run PostgreSQL as (tried {tried}); set TESSERA_PG_OS_USER"
    )]
    NoOsUser { tried: String },
    #[error(
        "the OS user {user:?} that runs PostgreSQL cannot reach the data folder {dir}; \
         choose a data folder that user can reach (for example with --data-dir under /tmp or /var/lib)"
    )]
    Unreachable { user: String, dir: PathBuf },
    #[error(
        "the data folder path {0} is too long for a unix socket (at most 100 bytes); choose a shorter --data-dir"
    )]
    PathTooLong(PathBuf),
    #[error("could not {action}")]
    Io {
        action: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed: {output}")]
    CommandFailed { command: String, output: String },
}

fn io_err(action: impl Into<String>) -> impl FnOnce(io::Error) -> LauncherError {
    let action = action.into();
    move |source| LauncherError::Io { action, source }
}

/// A located set of PostgreSQL server binaries.
#[derive(Debug, Clone)]
pub struct PgBinaries {
    pub bindir: PathBuf,
    pub version: String,
}

impl PgBinaries {
    /// Finds the server binaries: `explicit` first, then `pg_config --bindir`, `PATH`, and Debian's
    /// `/usr/lib/postgresql/<major>/bin` (highest major first), like Debian's own pg_wrapper.
    pub fn locate(explicit: Option<&Path>) -> Result<Self, LauncherError> {
        let mut candidates: Vec<PathBuf> = Vec::new();
        if let Some(dir) = explicit {
            candidates.push(dir.to_path_buf());
        } else {
            if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
                && out.status.success()
            {
                candidates.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
            }
            if let Some(path) = std::env::var_os("PATH") {
                candidates.extend(std::env::split_paths(&path));
            }
            candidates.extend(debian_bindirs(Path::new("/usr/lib/postgresql")));
        }
        let mut too_old = None;
        for dir in &candidates {
            if !["initdb", "pg_ctl", "postgres"].iter().all(|b| is_executable(&dir.join(b))) {
                continue;
            }
            let version = server_version(dir)?;
            if major_of(&version).is_some_and(|m| m >= MIN_MAJOR) {
                return Ok(Self { bindir: dir.clone(), version });
            }
            too_old.get_or_insert(version);
        }
        if let Some(found) = too_old {
            return Err(LauncherError::TooOld { found });
        }
        let searched = candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
        Err(LauncherError::NotFound { searched })
    }

    pub fn path(&self, program: &str) -> PathBuf {
        self.bindir.join(program)
    }
}

fn debian_bindirs(root: &Path) -> Vec<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((major, e.path().join("bin")))
        })
        .collect();
    found.sort_by_key(|(major, _)| std::cmp::Reverse(*major));
    found.into_iter().map(|(_, p)| p).collect()
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn server_version(bindir: &Path) -> Result<String, LauncherError> {
    let out = Command::new(bindir.join("postgres"))
        .arg("--version")
        .output()
        .map_err(io_err(format!("run {}/postgres --version", bindir.display())))?;
    // "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.split_whitespace().nth(2).unwrap_or("unknown").to_owned())
}

fn major_of(version: &str) -> Option<u32> {
    version.split(['.', 'b', 'r']).next()?.parse().ok()
}

/// The unprivileged OS user that runs the server when this process is root.
#[derive(Debug, Clone)]
struct OsUser {
    name: String,
    uid: u32,
    gid: u32,
}

impl OsUser {
    fn lookup(name: &str) -> Option<Self> {
        let out = Command::new("getent").args(["passwd", name]).output().ok()?;
        let line = String::from_utf8_lossy(&out.stdout);
        let mut fields = line.trim().split(':');
        let name = fields.next()?.to_owned();
        let uid = fields.nth(1)?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some(Self { name, uid, gid })
    }
}

fn running_as_root() -> bool {
    // /proc/self belongs to the effective uid of this process; `id -u` elsewhere.
    match fs::metadata("/proc/self") {
        Ok(m) => m.uid() == 0,
        Err(_) => Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0"),
    }
}

/// Where a running cluster accepts connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub socket_dir: PathBuf,
    pub port: u16,
}

impl Endpoint {
    /// A connection config over the unix socket (local connections are trusted; the socket folder is
    /// reachable only by the server's OS user and root).
    pub fn pg_config(&self, user: &str, dbname: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.socket_dir)
            .port(self.port)
            .user(user)
            .dbname(dbname)
            .application_name("tessera");
        config
    }

    /// The same as a libpq connection URL, for psql and the README.
    pub fn url(&self, user: &str, dbname: &str) -> String {
        format!("postgresql://{user}@/{dbname}?host={}&port={}", self.socket_dir.display(), self.port)
    }
}

/// How a cluster is set up.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub data_dir: PathBuf,
    /// The bootstrap superuser's name.
    pub superuser: String,
    /// Durable (fsync on) for real use; tests turn it off for speed.
    pub durable: bool,
}

/// A private PostgreSQL cluster in a data folder.
#[derive(Debug, Clone)]
pub struct Cluster {
    bin: PgBinaries,
    options: ClusterOptions,
    runas: Option<OsUser>,
}

impl Cluster {
    pub fn new(bin: PgBinaries, mut options: ClusterOptions) -> Result<Self, LauncherError> {
        options.data_dir = std::path::absolute(&options.data_dir)
            .map_err(io_err(format!("resolve {}", options.data_dir.display())))?;
        // The socket path, <data_dir>/.s.PGSQL.<port>, must fit Postgres's 107 bytes.
        if options.data_dir.as_os_str().len() > MAX_DATA_DIR_LEN {
            return Err(LauncherError::PathTooLong(options.data_dir));
        }
        let runas = if running_as_root() {
            let wanted = std::env::var("TESSERA_PG_OS_USER").ok();
            let tried: Vec<String> = match wanted {
                Some(name) => vec![name],
                None => vec!["postgres".into()],
            };
            let user = tried.iter().find_map(|n| OsUser::lookup(n));
            Some(user.ok_or_else(|| LauncherError::NoOsUser { tried: tried.join(", ") })?)
        } else {
            None
        };
        Ok(Self { bin, options, runas })
    }

    pub fn data_dir(&self) -> &Path {
        &self.options.data_dir
    }

    pub fn superuser(&self) -> &str {
        &self.options.superuser
    }

    pub fn binaries(&self) -> &PgBinaries {
        &self.bin
    }

    pub fn is_initialized(&self) -> bool {
        self.options.data_dir.join("PG_VERSION").is_file()
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = match &self.runas {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", &user.name, "--"]).arg(self.bin.path(program));
                c
            }
            None => Command::new(self.bin.path(program)),
        };
        cmd.current_dir("/").env("LC_ALL", "C").stdin(Stdio::null());
        cmd
    }

    fn run(&self, mut cmd: Command) -> Result<Output, LauncherError> {
        let rendered = format!("{cmd:?}");
        let out = cmd.output().map_err(io_err(format!("run {rendered}")))?;
        if out.status.success() {
            Ok(out)
        } else {
            let mut text = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            if text.is_empty() {
                text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            }
            Err(LauncherError::CommandFailed { command: rendered, output: text })
        }
    }

    fn give_to_server_user(&self, path: &Path) -> Result<(), LauncherError> {
        if let Some(user) = &self.runas {
            std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)).map_err(io_err(format!(
                "hand {} to OS user {}",
                path.display(),
                user.name
            )))?;
        }
        Ok(())
    }

    /// Creates the (empty) data folder, private to the server's OS user, and returns its parent.
    fn make_data_dir(&self) -> Result<&Path, LauncherError> {
        let data = &self.options.data_dir;
        let parent = data.parent().unwrap_or(Path::new("/"));
        fs::create_dir_all(parent).map_err(io_err(format!("create {}", parent.display())))?;
        fs::create_dir_all(data).map_err(io_err(format!("create {}", data.display())))?;
        fs::set_permissions(data, fs::Permissions::from_mode(0o700))
            .map_err(io_err(format!("restrict {}", data.display())))?;
        self.give_to_server_user(data)?;
        Ok(parent)
    }

    /// Creates the cluster as a hot standby of the running `primary` (a base backup through the primary's
    /// local socket as its superuser, streaming from it once started): a read replica, for instance for the
    /// SQL endpoint. Does nothing when the data folder holds a cluster already.
    pub fn init_standby(&self, primary: &Endpoint) -> Result<(), LauncherError> {
        if self.is_initialized() {
            return Ok(());
        }
        let data = &self.options.data_dir;
        self.make_data_dir()?;
        let mut cmd = self.command("pg_basebackup");
        cmd.arg("-D")
            .arg(data)
            .arg("-h")
            .arg(&primary.socket_dir)
            .args(["-p", &primary.port.to_string(), "-U", &self.options.superuser])
            // Writes standby.signal and primary_conninfo: the copy starts as a hot standby.
            .args(["--write-recovery-conf", "--wal-method=stream", "--checkpoint=fast", "--no-password"]);
        self.run(cmd)?;
        // The primary's own runtime settings (its port and socket) came along; start() writes this one's.
        let _ = fs::remove_file(data.join("postmaster.opts"));
        Ok(())
    }

    /// Creates the cluster when the data folder holds none. `password` becomes the superuser's password
    /// for TCP connections (local socket connections are trusted).
    pub fn init(&self, password: &str) -> Result<(), LauncherError> {
        if self.is_initialized() {
            return Ok(());
        }
        let data = &self.options.data_dir;
        let parent = self.make_data_dir()?;
        if let Some(user) = &self.runas {
            // Checked as that user: every folder above the data folder must let it through.
            let reachable = Command::new("runuser")
                .args(["-u", &user.name, "--", "test", "-w"])
                .arg(data)
                .current_dir("/")
                .status()
                .is_ok_and(|s| s.success());
            if !reachable {
                return Err(LauncherError::Unreachable { user: user.name.clone(), dir: data.clone() });
            }
        }

        // The password file sits beside the data folder, readable only by the server's OS user.
        let pwfile =
            parent.join(format!(".{}.pw", data.file_name().and_then(|n| n.to_str()).unwrap_or("pg")));
        write_private(&pwfile, password.as_bytes())?;
        self.give_to_server_user(&pwfile)?;
        let mut cmd = self.command("initdb");
        cmd.arg("-D")
            .arg(data)
            .args(["-U", &self.options.superuser, "-E", "UTF8", "--no-locale"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256", "--no-instructions"])
            .arg(format!("--pwfile={}", pwfile.display()));
        if !self.options.durable {
            cmd.arg("--no-sync");
        }
        let result = self.run(cmd);
        let _ = fs::remove_file(&pwfile);
        result?;

        let durable = if self.options.durable {
            ""
        } else {
            "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
        };
        let settings = format!(
            "\n# Added by tessera.\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_permissions = 0700\n\
             wal_level = logical\n\
             max_replication_slots = 16\n\
             max_wal_senders = 16\n\
             max_connections = 200\n\
             {durable}\
             include_if_exists = '{RUNTIME_CONF}'\n"
        );
        self.write_as_server_user(&data.join("postgresql.conf"), &settings, true)?;
        Ok(())
    }

    /// The endpoint of the server running on this data folder, if one is.
    pub fn running(&self) -> Option<Endpoint> {
        let mut status = self.command("pg_ctl");
        status.arg("status").arg("-D").arg(&self.options.data_dir);
        if !status.output().is_ok_and(|o| o.status.success()) {
            return None;
        }
        // postmaster.pid: pid, data dir, start time, port, first socket folder, listen address, …
        let pid_file = fs::read_to_string(self.options.data_dir.join("postmaster.pid")).ok()?;
        let lines: Vec<&str> = pid_file.lines().collect();
        let port = lines.get(3)?.trim().parse().ok()?;
        let socket_dir = PathBuf::from(lines.get(4)?.trim());
        Some(Endpoint { socket_dir, port })
    }

    /// The postmaster's process id, if it is running.
    pub fn postmaster_pid(&self) -> Option<u32> {
        let pid_file = fs::read_to_string(self.options.data_dir.join("postmaster.pid")).ok()?;
        pid_file.lines().next()?.trim().parse().ok()
    }

    /// Starts the server (or adopts the one already running) and waits until it accepts connections.
    pub fn start(&self) -> Result<Endpoint, LauncherError> {
        if let Some(endpoint) = self.running() {
            tracing::info!(data_dir = %self.options.data_dir.display(), port = endpoint.port, "postgres already running, adopting it");
            return Ok(endpoint);
        }
        let mut last_error = None;
        // A free port can be taken between choosing and binding it: try a few.
        // The previous port first, so that clients (and psql lines printed earlier) keep working.
        let mut previous = self.previous_port().filter(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok());
        for _ in 0..3 {
            let port = match previous.take() {
                Some(p) => p,
                None => free_port()?,
            };
            let socket_dir = self.options.data_dir.clone();
            self.write_runtime_conf(port, &socket_dir)?;
            let mut cmd = self.command("pg_ctl");
            cmd.arg("start")
                .arg("-D")
                .arg(&self.options.data_dir)
                .args(["-w", "-t", "60", "-l"])
                .arg(self.options.data_dir.join("postgres.log"));
            match self.run(cmd) {
                Ok(_) => {
                    tracing::info!(data_dir = %self.options.data_dir.display(), port, "postgres started");
                    return Ok(Endpoint { socket_dir, port });
                }
                Err(e) => last_error = Some(e),
            }
        }
        let tail = self.log_tail();
        Err(match last_error {
            Some(LauncherError::CommandFailed { command, output }) => {
                LauncherError::CommandFailed { command, output: format!("{output}\n{tail}") }
            }
            Some(other) => other,
            None => LauncherError::CommandFailed { command: "pg_ctl start".into(), output: tail },
        })
    }

    fn previous_port(&self) -> Option<u16> {
        let conf = fs::read_to_string(self.options.data_dir.join(RUNTIME_CONF)).ok()?;
        conf.lines().find_map(|l| l.strip_prefix("port = ")?.trim().parse().ok())
    }

    fn write_runtime_conf(&self, port: u16, socket_dir: &Path) -> Result<(), LauncherError> {
        let quoted = socket_dir.display().to_string().replace('\'', "''");
        let path = self.options.data_dir.join(RUNTIME_CONF);
        let text = format!(
            "# Written by tessera at every start.\nport = {port}\nunix_socket_directories = '{quoted}'\n"
        );
        self.write_as_server_user(&path, &text, false)
    }

    /// Writes (or appends to) a file inside the data folder as the server's OS user, never as root.
    fn write_as_server_user(&self, path: &Path, text: &str, append: bool) -> Result<(), LauncherError> {
        let Some(user) = &self.runas else {
            let mut options = fs::OpenOptions::new();
            options.create(true);
            if append {
                options.append(true)
            } else {
                options.write(true).truncate(true)
            };
            return options
                .open(path)
                .and_then(|mut f| f.write_all(text.as_bytes()))
                .map_err(io_err(format!("write {}", path.display())));
        };
        let script = if append { r#"cat >> "$1""# } else { r#"cat > "$1""# };
        let mut child = Command::new("runuser")
            .args(["-u", &user.name, "--", "sh", "-c", script, "sh"])
            .arg(path)
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io_err(format!("write {} as {}", path.display(), user.name)))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(text.as_bytes()).map_err(io_err(format!("write {}", path.display())))?;
        }
        let out = child.wait_with_output().map_err(io_err(format!("write {}", path.display())))?;
        if !out.status.success() {
            return Err(LauncherError::CommandFailed {
                command: format!("write {} as {}", path.display(), user.name),
                output: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.options.data_dir.join("postgres.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Restarts the running server on the same port and socket; `immediate` crashes it first (no
    /// shutdown checkpoint), as a power cut would, so it recovers from WAL.
    pub fn restart(&self, immediate: bool) -> Result<Endpoint, LauncherError> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("restart")
            .arg("-D")
            .arg(&self.options.data_dir)
            .args(["-w", "-t", "60", "-m", if immediate { "immediate" } else { "fast" }, "-l"])
            .arg(self.options.data_dir.join("postgres.log"));
        self.run(cmd)?;
        self.running().ok_or_else(|| LauncherError::CommandFailed {
            command: "pg_ctl restart".into(),
            output: self.log_tail(),
        })
    }

    /// Stops the server: `fast` lets it finish cleanly (rolls back open transactions), `immediate` kills it.
    pub fn stop(&self, immediate: bool) -> Result<(), LauncherError> {
        if self.running().is_none() {
            return Ok(());
        }
        let mut cmd = self.command("pg_ctl");
        cmd.arg("stop").arg("-D").arg(&self.options.data_dir).args([
            "-w",
            "-t",
            "60",
            "-m",
            if immediate { "immediate" } else { "fast" },
        ]);
        self.run(cmd)?;
        tracing::info!(data_dir = %self.options.data_dir.display(), "postgres stopped");
        Ok(())
    }

    /// Makes sure the server is stopped, and `remove` deleted, when this process exits however it exits
    /// (even when killed): a watchdog shell waits for this process's end of a pipe to close. The returned
    /// handle must be kept alive for as long as the cluster is wanted.
    pub fn stop_when_process_exits(&self, remove: Option<&Path>) -> Result<WatchdogGuard, LauncherError> {
        let pid = self.postmaster_pid().ok_or_else(|| LauncherError::CommandFailed {
            command: "read postmaster.pid".into(),
            output: "the cluster is not running".into(),
        })?;
        let remove = remove.map(|p| p.display().to_string()).unwrap_or_default();
        let script = r#"cat >/dev/null
kill -QUIT "$1" 2>/dev/null
i=0; while kill -0 "$1" 2>/dev/null && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
[ -n "$2" ] && rm -rf -- "$2""#;
        let child = Command::new("sh")
            .args(["-c", script, "tessera-watchdog", &pid.to_string(), &remove])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io_err("start the cluster watchdog"))?;
        Ok(WatchdogGuard { _child: child })
    }
}

/// Holds the write end of the watchdog's pipe; the watchdog stops the cluster when it is closed.
#[derive(Debug)]
pub struct WatchdogGuard {
    _child: std::process::Child,
}

fn free_port() -> Result<u16, LauncherError> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).map_err(io_err("find a free loopback port"))?;
    let port = listener.local_addr().map_err(io_err("read the free port"))?.port();
    Ok(port)
}

/// Writes a file only its owner can read.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), LauncherError> {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = fs::remove_file(path);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(contents))
        .map_err(io_err(format!("write {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn major_versions_are_parsed() {
        assert_eq!(major_of("15.18"), Some(15));
        assert_eq!(major_of("16beta2"), Some(16));
        assert_eq!(major_of("17rc1"), Some(17));
        assert_eq!(major_of("unknown"), None);
    }

    #[test]
    fn debian_folders_are_ordered_newest_first() {
        let root = std::env::temp_dir().join(format!("tessera-bindirs-{}", std::process::id()));
        for v in ["13", "15", "9", "notaversion"] {
            fs::create_dir_all(root.join(v).join("bin")).expect("mkdir");
        }
        let found = debian_bindirs(&root);
        let _ = fs::remove_dir_all(&root);
        assert_eq!(found, vec![root.join("15/bin"), root.join("13/bin"), root.join("9/bin")]);
    }

    #[test]
    fn a_missing_bindir_is_a_clear_error_not_a_panic() {
        let err = PgBinaries::locate(Some(Path::new("/nonexistent/pg/bin"))).expect_err("must fail");
        let text = err.to_string();
        assert!(text.contains("apt-get install postgresql"), "{text}");
        assert!(text.contains("/nonexistent/pg/bin"), "{text}");
    }
}
