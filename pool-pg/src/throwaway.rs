//! Throwaway PostgreSQL clusters for tests and examples.
//!
//! [`Cluster::start`] creates a brand-new PostgreSQL cluster from the server
//! binaries installed on the machine (`initdb`, `pg_ctl`, `postgres`, `psql`),
//! starts it on a free port on `127.0.0.1` and on a private unix socket
//! directory, and hands back a [`Cluster`] that knows how to reach and control
//! it. The cluster is configured for speed, not durability (`fsync = off`,
//! `synchronous_commit = off`, ...), accepts every local connection without a
//! password (`trust`) and is meant to be thrown away: it is stopped and its
//! files are deleted when the [`Cluster`] is dropped.
//!
//! This module is for tests and examples only. Never point it at data you
//! care about.
//!
//! # Where the files go
//!
//! Every cluster lives in its own directory
//! `std::env::temp_dir()/momopool-pg/<pid>-<counter>-<nanos>/` (or under
//! `/tmp/momopool-pg/` when the temporary directory is unusable, for example
//! because its path is too long for a unix socket), holding `data/` (the data
//! directory), `sock/` (the unix socket directory), `server.log` and
//! `owner.pid` (the id of the process that created the cluster).
//!
//! # Running as root
//!
//! PostgreSQL refuses to run as root. When the current process is root, the
//! cluster directories are handed over to the `postgres` system user and
//! `initdb`, `pg_ctl` and `psql` are run as that user through `runuser`
//! (or `su`, or `setpriv`, whichever works first).
//!
//! # Cleanup
//!
//! Clusters are often kept in a `static` (for example a
//! [`std::sync::OnceLock`]) and are therefore never dropped. To avoid leaking
//! servers, every cluster gets a small detached watchdog shell process that
//! checks once a second whether the process that started the cluster is still
//! alive; when it is gone the watchdog stops the server
//! (`pg_ctl stop -m immediate`) and deletes the cluster directory. In addition,
//! starting a cluster removes leftovers of clusters whose owner process is no
//! longer alive. Directories of live processes are never touched.
//!
//! Dropping a [`Cluster`] stops the server and deletes its directory right
//! away.
//!
//! # `DATABASE_URL`
//!
//! This module never reads `DATABASE_URL` (or any other `PG*` variable; those
//! are removed from the environment of the commands it runs). The usual
//! pattern is for the caller to use an existing server when `DATABASE_URL` is
//! set and to fall back to a throwaway cluster otherwise, as in the example
//! below. [`ClusterError::BinariesNotFound`] tells the user about both
//! options.
//!
//! # Examples
//!
//! ```no_run
//! use std::sync::OnceLock;
//!
//! use momopool_pg::throwaway::{Cluster, StopMode};
//!
//! /// The server the tests talk to: `DATABASE_URL` when it is set, otherwise
//! /// a throwaway cluster shared by every test in this process.
//! fn database_url() -> String {
//!     if let Ok(url) = std::env::var("DATABASE_URL") {
//!         return url;
//!     }
//!     static CLUSTER: OnceLock<Cluster> = OnceLock::new();
//!     CLUSTER
//!         .get_or_init(|| Cluster::start().expect("could not start PostgreSQL"))
//!         .url()
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! println!("shared server: {}", database_url());
//!
//! // A private cluster for a test that restarts the server.
//! let cluster = Cluster::builder()
//!     .setting("work_mem", "8MB")
//!     .password_user("app", "s3cret")
//!     .start()?;
//! assert_eq!(cluster.psql("select 1")?, "1");
//! let app_url = cluster.url_for("app", Some("s3cret"), "postgres");
//! println!("connect as app: {app_url}");
//! cluster.restart(StopMode::Fast)?;
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{OnceLock, mpsc};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The database superuser created by `initdb`.
const SUPERUSER: &str = "postgres";
/// The system user the server runs as when the current process is root.
const SYSTEM_USER: &str = "postgres";
/// The address the server listens on.
const HOST: &str = "127.0.0.1";
/// A role name that `pg_hba.conf` always rejects.
const REJECTED_ROLE: &str = "momopool_rejected";
/// How many times a start is attempted with a fresh port.
const START_ATTEMPTS: u32 = 5;
/// `pg_ctl -t` for starts, stops and restarts, in seconds.
const PG_CTL_WAIT_SECS: u64 = 60;
/// Upper bound for one `pg_ctl` command (its own wait plus slack).
const PG_CTL_TIMEOUT: Duration = Duration::from_secs(PG_CTL_WAIT_SECS + 30);
/// Upper bound for `initdb`.
const INITDB_TIMEOUT: Duration = Duration::from_secs(120);
/// Upper bound for one `psql` invocation.
const PSQL_TIMEOUT: Duration = Duration::from_secs(120);
/// `pg_ctl -t` when tearing a cluster down.
const TEARDOWN_WAIT_SECS: u64 = 10;
/// Upper bound for small helper commands (`kill`, `id`, ...).
const SHORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Distinguishes clusters started by the same process.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// How to shut the server down; maps to `pg_ctl stop -m`.
///
/// See the PostgreSQL documentation of `pg_ctl` for the details.
/// # Examples
///
/// ```no_run
/// # fn main() -> Result<(), momopool_pg::throwaway::ClusterError> {
/// use momopool_pg::throwaway::{Cluster, StopMode};
///
/// let cluster = Cluster::start()?;
/// cluster.stop(StopMode::Fast)?;
/// assert!(!cluster.is_running());
/// cluster.start_again()?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StopMode {
    /// Wait for all clients to disconnect, then shut down.
    Smart,
    /// Terminate the sessions (rolling back their transactions) and shut down
    /// cleanly.
    Fast,
    /// Quit every process at once without a clean shutdown; the next start
    /// runs crash recovery.
    Immediate,
}

impl StopMode {
    fn as_arg(self) -> &'static str {
        match self {
            StopMode::Smart => "smart",
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// Errors from starting or controlling a throwaway [`Cluster`].
/// # Examples
///
/// ```no_run
/// # fn main() -> Result<(), momopool_pg::throwaway::ClusterError> {
/// use momopool_pg::throwaway::{Cluster, ClusterError};
///
/// match Cluster::start() {
///     Ok(cluster) => println!("testing against {}", cluster.url()),
///     Err(ClusterError::BinariesNotFound) => {
///         eprintln!("PostgreSQL is not installed: skipping");
///     }
///     Err(e) => panic!("{e}"),
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum ClusterError {
    /// `initdb` and `pg_ctl` could not be found (see [`find_bindir`]).
    BinariesNotFound,
    /// The process runs as root, but there is no way to run PostgreSQL as an
    /// unprivileged user (the `postgres` user is missing, or none of
    /// `runuser`, `su` and `setpriv` works).
    NoUnprivilegedUser {
        /// What is missing.
        reason: String,
    },
    /// A [`ClusterBuilder`] option was rejected.
    InvalidOption {
        /// The option, for example `setting "work_mem"`.
        option: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A filesystem or process operation failed.
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A command ran but exited unsuccessfully.
    CommandFailed {
        /// The command, for example `pg_ctl stop`.
        command: String,
        /// How it exited.
        status: String,
        /// Its (trimmed) standard error, or standard output when that was
        /// empty.
        output: String,
    },
    /// A command did not finish in time and was killed.
    Timeout {
        /// The command, for example `psql`.
        command: String,
        /// How long it was given.
        timeout: Duration,
    },
    /// The server did not start.
    StartFailed {
        /// How many ports were tried.
        attempts: u32,
        /// What `pg_ctl` reported.
        reason: String,
        /// The end of the server log.
        log_tail: String,
    },
    /// `psql` failed, for example because the SQL had an error.
    Psql {
        /// How `psql` exited.
        status: String,
        /// Its (trimmed) standard error.
        stderr: String,
    },
    /// The operation needs a running postmaster and there is none.
    NotRunning,
}

impl fmt::Display for ClusterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterError::BinariesNotFound => f.write_str(
                "PostgreSQL server binaries (initdb, pg_ctl) not found: install them \
                 (Debian/Ubuntu: apt-get install postgresql) or set DATABASE_URL to an \
                 existing server",
            ),
            ClusterError::NoUnprivilegedUser { reason } => write!(
                f,
                "running as root, but PostgreSQL cannot run as root and no unprivileged \
                 user is usable: {reason}"
            ),
            ClusterError::InvalidOption { option, reason } => {
                write!(f, "invalid {option}: {reason}")
            }
            ClusterError::Io { context, source } => write!(f, "{context}: {source}"),
            ClusterError::CommandFailed {
                command,
                status,
                output,
            } => {
                write!(f, "{command} failed ({status})")?;
                if !output.is_empty() {
                    write!(f, ": {output}")?;
                }
                Ok(())
            }
            ClusterError::Timeout { command, timeout } => write!(
                f,
                "{command} did not finish within {} s and was killed",
                timeout.as_secs()
            ),
            ClusterError::StartFailed {
                attempts,
                reason,
                log_tail,
            } => {
                let plural = if *attempts == 1 { "" } else { "s" };
                write!(f, "could not start PostgreSQL ({attempts} attempt{plural})")?;
                if !reason.is_empty() {
                    write!(f, ": {reason}")?;
                }
                if !log_tail.is_empty() {
                    write!(f, "\nend of the server log:\n{log_tail}")?;
                }
                Ok(())
            }
            ClusterError::Psql { status, stderr } => {
                write!(f, "psql failed ({status})")?;
                if !stderr.is_empty() {
                    write!(f, ": {stderr}")?;
                }
                Ok(())
            }
            ClusterError::NotRunning => f.write_str("the postmaster is not running"),
        }
    }
}

impl std::error::Error for ClusterError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClusterError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn io_error(context: impl Into<String>, source: io::Error) -> ClusterError {
    ClusterError::Io {
        context: context.into(),
        source,
    }
}

/// Finds the directory holding the PostgreSQL server binaries.
///
/// Tried in order: `pg_config --bindir` (only if that directory contains
/// `initdb` and `pg_ctl`), the directory of an `initdb` found on `PATH`, and
/// the highest-versioned `/usr/lib/postgresql/*/bin` (the Debian/Ubuntu
/// layout, which does not put `initdb` on `PATH`).
///
/// # Errors
///
/// [`ClusterError::BinariesNotFound`] when none of these has the binaries.
/// # Examples
///
/// ```no_run
/// # fn main() -> Result<(), momopool_pg::throwaway::ClusterError> {
/// use momopool_pg::throwaway::find_bindir;
///
/// let dir = find_bindir()?;
/// assert!(dir.join("initdb").exists());
/// println!("PostgreSQL binaries in {}", dir.display());
/// # Ok(())
/// # }
/// ```
pub fn find_bindir() -> Result<PathBuf, ClusterError> {
    if let Some(pg_config) = find_program("pg_config") {
        let mut cmd = Command::new(pg_config);
        cmd.arg("--bindir");
        if let Ok(out) = run(cmd, None, SHORT_TIMEOUT, "pg_config") {
            if out.status.success() {
                let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
                if has_server_binaries(&dir) {
                    return Ok(dir);
                }
            }
        }
    }
    if let Some(initdb) = find_on_path("initdb") {
        // Resolve symlinks such as /usr/bin/initdb -> ../lib/postgresql/15/bin/initdb.
        let initdb = fs::canonicalize(&initdb).unwrap_or(initdb);
        if let Some(dir) = initdb.parent() {
            if has_server_binaries(dir) {
                return Ok(dir.to_path_buf());
            }
        }
    }
    let mut best: Option<(Vec<u64>, PathBuf)> = None;
    if let Ok(entries) = fs::read_dir("/usr/lib/postgresql") {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(version) = parse_version(&name.to_string_lossy()) else {
                continue;
            };
            let bin = entry.path().join("bin");
            if !has_server_binaries(&bin) {
                continue;
            }
            if best.as_ref().is_none_or(|(v, _)| version > *v) {
                best = Some((version, bin));
            }
        }
    }
    best.map(|(_, dir)| dir)
        .ok_or(ClusterError::BinariesNotFound)
}

fn parse_version(name: &str) -> Option<Vec<u64>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

fn has_server_binaries(dir: &Path) -> bool {
    is_executable(&dir.join("initdb")) && is_executable(&dir.join("pg_ctl"))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Like [`find_on_path`], but also looks in the standard system directories
/// (root's `PATH` does not always include `/usr/sbin`).
fn find_program(name: &str) -> Option<PathBuf> {
    find_on_path(name).or_else(|| {
        [
            "/usr/local/sbin",
            "/usr/local/bin",
            "/usr/sbin",
            "/usr/bin",
            "/sbin",
            "/bin",
        ]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|candidate| is_executable(candidate))
    })
}

/// Options for a throwaway [`Cluster`]; see [`Cluster::builder`].
/// # Examples
///
/// ```no_run
/// # fn main() -> Result<(), momopool_pg::throwaway::ClusterError> {
/// use momopool_pg::throwaway::ClusterBuilder;
///
/// let cluster = ClusterBuilder::new()
///     .setting("max_connections", "200")
///     .password_user("app", "s3cret")
///     .start()?;
/// assert_eq!(cluster.psql("show max_connections")?, "200");
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Default)]
pub struct ClusterBuilder {
    settings: Vec<(String, String)>,
    password_users: Vec<(String, String)>,
    bindir: Option<PathBuf>,
    ssl: Option<(String, String)>,
}

impl std::fmt::Debug for ClusterBuilder {
    // Role names but not their passwords; whether TLS is set up but not the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let users: Vec<&str> = self
            .password_users
            .iter()
            .map(|(u, _)| u.as_str())
            .collect();
        f.debug_struct("ClusterBuilder")
            .field("settings", &self.settings)
            .field("password_users", &users)
            .field("bindir", &self.bindir)
            .field("ssl", &self.ssl.is_some())
            .finish()
    }
}

impl ClusterBuilder {
    /// Creates a builder with the default options.
    /// # Examples
    ///
    /// ```no_run
    /// # fn main() -> Result<(), momopool_pg::throwaway::ClusterError> {
    /// use momopool_pg::throwaway::ClusterBuilder;
    ///
    /// // The same as `Cluster::start()`.
    /// let cluster = ClusterBuilder::new().start()?;
    /// assert!(cluster.is_running());
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `name = 'value'` to the server configuration.
    ///
    /// The value is quoted for `postgresql.conf`, so pass it as you would to
    /// `SET` (for example `setting("work_mem", "8MB")`). Settings are applied
    /// after the built-in defaults, so they can override them (for example
    /// `max_connections`). A name may be given more than once; the last value
    /// wins. Settings that must not be changed (`port`,
    /// `unix_socket_directories`, `listen_addresses`) are overridden by the
    /// cluster.
    #[must_use]
    /// # Examples
    ///
    /// ```no_run
    /// # fn main() -> Result<(), momopool_pg::throwaway::ClusterError> {
    /// use momopool_pg::throwaway::Cluster;
    ///
    /// let cluster = Cluster::builder()
    ///     .setting("work_mem", "8MB")
    ///     .setting("log_min_duration_statement", "0")
    ///     .start()?;
    /// assert_eq!(cluster.psql("show work_mem")?, "8MB");
    /// # Ok(())
    /// # }
    /// ```
    pub fn setting(mut self, name: &str, value: &str) -> Self {
        self.settings.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Creates a `LOGIN` role `user` with password `password` (stored as
    /// SCRAM-SHA-256) once the server is up.
    ///
    /// `pg_hba.conf` requires `scram-sha-256` authentication for this role,
    /// over TCP and over the unix socket, while every other role is trusted.
    /// The name must not be `postgres` (the superuser the cluster itself
    /// uses).
    /// # Examples
    ///
    /// ```no_run
    /// # fn main() -> Result<(), momopool_pg::throwaway::ClusterError> {
    /// use momopool_pg::throwaway::Cluster;
    ///
    /// let cluster = Cluster::builder().password_user("app", "s3cret").start()?;
    /// let url = cluster.url_for("app", Some("s3cret"), "postgres");
    /// // `app` must give its password (SCRAM); `postgres` is still trusted.
    /// assert!(url.starts_with("postgresql://app:s3cret@127.0.0.1:"));
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn password_user(mut self, user: &str, password: &str) -> Self {
        self.password_users
            .push((user.to_owned(), password.to_owned()));
        self
    }

    /// Turns TLS on with this certificate and private key (PEM). Clients may then connect
    /// with or without TLS (`sslmode=require` or `disable`).
    /// # Examples
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use momopool_pg::throwaway::Cluster;
    ///
    /// // A certificate and its private key, in PEM, made beforehand (with `openssl req
    /// // -x509`, for example).
    /// let cert = std::fs::read_to_string("server.crt")?;
    /// let key = std::fs::read_to_string("server.key")?;
    /// let cluster = Cluster::builder().ssl(&cert, &key).start()?;
    /// assert_eq!(cluster.psql("show ssl")?, "on");
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn ssl(mut self, cert_pem: &str, key_pem: &str) -> Self {
        self.ssl = Some((cert_pem.to_owned(), key_pem.to_owned()));
        self
    }

    /// Uses the PostgreSQL binaries in `dir` instead of looking them up with
    /// [`find_bindir`].
    /// # Examples
    ///
    /// ```no_run
    /// # fn main() -> Result<(), momopool_pg::throwaway::ClusterError> {
    /// use momopool_pg::throwaway::Cluster;
    ///
    /// let cluster = Cluster::builder()
    ///     .bindir("/usr/lib/postgresql/16/bin")
    ///     .start()?;
    /// assert!(cluster.psql("show server_version")?.starts_with("16"));
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn bindir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bindir = Some(dir.into());
        self
    }

    /// Creates, configures and starts the cluster.
    ///
    /// This runs `initdb` (a second or two), removes leftovers of clusters
    /// whose owner process is gone, picks a free port (retrying with another
    /// port up to five times if it gets taken in the meantime), starts the
    /// server with `pg_ctl start -w` and creates the password users.
    ///
    /// # Errors
    ///
    /// [`ClusterError::BinariesNotFound`] when the binaries are missing,
    /// [`ClusterError::StartFailed`] (with the end of the server log) when the
    /// server does not come up, and other variants for invalid options and
    /// failing commands.
    /// # Examples
    ///
    /// ```no_run
    /// # fn main() -> Result<(), momopool_pg::throwaway::ClusterError> {
    /// use momopool_pg::throwaway::Cluster;
    ///
    /// let cluster = Cluster::builder().setting("fsync", "off").start()?;
    /// println!("PostgreSQL is up at {}", cluster.url());
    /// # Ok(())
    /// # }
    /// ```
    pub fn start(self) -> Result<Cluster, ClusterError> {
        self.validate()?;
        let bindir = match &self.bindir {
            Some(dir) if has_server_binaries(dir) => dir.clone(),
            Some(_) => return Err(ClusterError::BinariesNotFound),
            None => find_bindir()?,
        };
        for tool in ["postgres", "psql"] {
            if !is_executable(&bindir.join(tool)) {
                return Err(ClusterError::BinariesNotFound);
            }
        }
        let identity = Identity::detect()?;
        let owner = identity.root;
        let base = base_dir(identity.root.is_some());
        cleanup_stale(&base, &bindir, &identity.runner);

        let dir = create_cluster_dir(&base, &identity)?;
        let mut cluster = Cluster {
            data_dir: dir.join("data"),
            socket_dir: dir.join("sock"),
            log_file: dir.join("server.log"),
            dir,
            port: 0,
            bindir,
            runner: identity.runner,
        };
        // From here on, dropping `cluster` (on error) stops and removes it.
        spawn_watchdog(&cluster);
        cluster.initdb()?;
        cluster.write_hba(&self.password_users)?;
        let mut settings = self.settings.clone();
        if let Some((cert, key)) = &self.ssl {
            for (name, contents) in [("server.crt", cert), ("server.key", key)] {
                let path = cluster.data_dir.join(name);
                fs::write(&path, contents)
                    .map_err(|e| io_error(format!("could not write {}", path.display()), e))?;
                // The server refuses a key readable by others, or owned by someone else.
                fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(|e| {
                    io_error(format!("could not set the mode of {}", path.display()), e)
                })?;
                if let Some((uid, gid)) = owner {
                    std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(|e| {
                        io_error(
                            format!("could not hand {} to {SYSTEM_USER}", path.display()),
                            e,
                        )
                    })?;
                }
            }
            settings.push(("ssl".into(), "on".into()));
            settings.push(("ssl_cert_file".into(), "server.crt".into()));
            settings.push(("ssl_key_file".into(), "server.key".into()));
        }
        cluster.start_on_free_port(&settings)?;
        for (user, password) in &self.password_users {
            let sql = format!(
                "SET password_encryption = 'scram-sha-256';\nCREATE ROLE {} LOGIN PASSWORD {};\n",
                quote_ident(user),
                quote_literal(password)
            );
            cluster.psql(&sql)?;
        }
        Ok(cluster)
    }

    fn validate(&self) -> Result<(), ClusterError> {
        for (name, value) in &self.settings {
            let option = format!("setting {name:?}");
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
            {
                return Err(ClusterError::InvalidOption {
                    option,
                    reason: "a setting name consists of ASCII letters, digits, '_' and '.'".into(),
                });
            }
            if value.contains(['\n', '\r', '\0']) {
                return Err(ClusterError::InvalidOption {
                    option,
                    reason: "the value must not contain line breaks or NUL".into(),
                });
            }
        }
        for (user, password) in &self.password_users {
            let option = format!("password_user {user:?}");
            let reason = if user.is_empty() {
                Some("the name is empty")
            } else if user == SUPERUSER {
                Some("the superuser must keep trust authentication")
            } else if user == REJECTED_ROLE {
                Some("this role is always rejected by pg_hba.conf")
            } else if user.contains(['"', '\n', '\r', '\0', '\t', ' ', ',']) {
                Some("the name must not contain quotes, commas, whitespace or NUL")
            } else if password.contains('\0') {
                Some("the password must not contain NUL")
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(ClusterError::InvalidOption {
                    option,
                    reason: reason.into(),
                });
            }
        }
        Ok(())
    }
}

/// A running throwaway PostgreSQL cluster.
///
/// Created by [`Cluster::start`] or [`ClusterBuilder::start`]. Dropping it
/// stops the server (`pg_ctl stop -m immediate`) and deletes all its files; if
/// it is never dropped, a watchdog does the same once the process that created
/// it has exited. See the [module documentation](self).
///
/// All methods take `&self`, so a cluster can be shared between threads (for
/// example in a `static OnceLock<Cluster>`).
/// # Examples
///
/// ```no_run
/// # fn main() -> Result<(), momopool_pg::throwaway::ClusterError> {
/// use momopool_pg::throwaway::Cluster;
///
/// let cluster = Cluster::start()?;
/// assert!(cluster.is_running());
/// assert_eq!(cluster.psql("select 40 + 2")?, "42");
/// drop(cluster); // stops the server and deletes its files
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_file: PathBuf,
    port: u16,
    bindir: PathBuf,
    runner: Runner,
}

impl Cluster {
    /// Returns a builder for a cluster with non-default options.
    /// # Examples
    ///
    /// ```no_run
    /// # fn main() -> Result<(), momopool_pg::throwaway::ClusterError> {
    /// use momopool_pg::throwaway::Cluster;
    ///
    /// let cluster = Cluster::builder().setting("max_connections", "20").start()?;
    /// assert_eq!(cluster.psql("show max_connections")?, "20");
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::new()
    }

    /// Starts a cluster with the default options.
    ///
    /// Same as `Cluster::builder().start()`; see [`ClusterBuilder::start`].
    ///
    /// # Errors
    ///
    /// See [`ClusterBuilder::start`].
    /// # Examples
    ///
    /// ```no_run
    /// # fn main() -> Result<(), momopool_pg::throwaway::ClusterError> {
    /// use momopool_pg::throwaway::Cluster;
    ///
    /// let cluster = Cluster::start()?;
    /// assert!(cluster.is_running());
    /// # Ok(())
    /// # }
    /// ```
    pub fn start() -> Result<Cluster, ClusterError> {
        ClusterBuilder::new().start()
    }

    /// The TCP port the server listens on (on [`host`](Self::host)).
    /// # Examples
    ///
    /// ```no_run
    /// # fn main() -> Result<(), momopool_pg::throwaway::ClusterError> {
    /// use momopool_pg::throwaway::Cluster;
    ///
    /// let cluster = Cluster::start()?;
    /// let dsn = format!("host={} port={} user=postgres", cluster.host(), cluster.port());
    /// assert!(cluster.url().ends_with(&format!(":{}/postgres", cluster.port())));
    /// # drop(dsn);
    /// # Ok(())
    /// # }
    /// ```
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address the server listens on: `"127.0.0.1"`.
    /// # Examples
    ///
    /// ```no_run
    /// # fn main() -> Result<(), momopool_pg::throwaway::ClusterError> {
    /// use momopool_pg::throwaway::Cluster;
    ///
    /// let cluster = Cluster::start()?;
    /// assert_eq!(cluster.host(), "127.0.0.1");
    /// # Ok(())
    /// # }
    /// ```
    pub fn host(&self) -> &str {
        HOST
    }

    /// The directory holding the server's unix socket
    /// (`.s.PGSQL.<port>`); usable as a libpq `host`.
    /// # Examples
    ///
    /// ```no_run
    /// # fn main() -> Result<(), momopool_pg::throwaway::ClusterError> {
    /// use momopool_pg::throwaway::Cluster;
    ///
    /// let cluster = Cluster::start()?;
    /// // A key=value DSN that connects over the unix socket instead of TCP.
    /// let dsn = format!(
    ///     "host={} port={} user={}",
    ///     cluster.socket_dir().display(),
    ///     cluster.port(),
    ///     cluster.superuser(),
    /// );
    /// let socket = cluster.socket_dir().join(format!(".s.PGSQL.{}", cluster.port()));
    /// assert!(socket.exists());
    /// # drop(dsn);
    /// # Ok(())
    /// # }
    /// ```
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The cluster's data directory.
    /// # Examples
    ///
    /// ```no_run
    /// # fn main() -> Result<(), momopool_pg::throwaway::ClusterError> {
    /// use momopool_pg::throwaway::Cluster;
    ///
    /// let cluster = Cluster::start()?;
    /// assert!(cluster.data_dir().join("postgresql.conf").exists());
    /// # Ok(())
    /// # }
    /// ```
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server log file (`pg_ctl -l`).
    /// # Examples
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use momopool_pg::throwaway::Cluster;
    ///
    /// let cluster = Cluster::start()?;
    /// let log = std::fs::read_to_string(cluster.log_path())?;
    /// println!("server log so far:\n{log}");
    /// # Ok(())
    /// # }
    /// ```
    pub fn log_path(&self) -> &Path {
        &self.log_file
    }

    /// The superuser role: `"postgres"`. It authenticates with `trust`.
    /// # Examples
    ///
    /// ```no_run
    /// # fn main() -> Result<(), momopool_pg::throwaway::ClusterError> {
    /// use momopool_pg::throwaway::Cluster;
    ///
    /// let cluster = Cluster::start()?;
    /// assert_eq!(cluster.superuser(), "postgres");
    /// assert_eq!(cluster.psql("select current_user")?, cluster.superuser());
    /// # Ok(())
    /// # }
    /// ```
    pub fn superuser(&self) -> &str {
        SUPERUSER
    }

    /// A URL for the superuser and the `postgres` database over TCP:
    /// `postgresql://postgres@127.0.0.1:<port>/postgres`.
    /// # Examples
    ///
    /// ```no_run
    /// # fn main() -> Result<(), momopool_pg::throwaway::ClusterError> {
    /// use momopool_pg::throwaway::Cluster;
    ///
    /// let cluster = Cluster::start()?;
    /// let url = cluster.url();
    /// assert_eq!(url, format!("postgresql://postgres@127.0.0.1:{}/postgres", cluster.port()));
    /// # Ok(())
    /// # }
    /// ```
    pub fn url(&self) -> String {
        self.url_for(SUPERUSER, None, "postgres")
    }

    /// A URL for `user` (with `password`, if any) and database `dbname` over
    /// TCP. The user name, password and database name are percent-encoded.
    /// # Examples
    ///
    /// ```no_run
    /// # fn main() -> Result<(), momopool_pg::throwaway::ClusterError> {
    /// use momopool_pg::throwaway::Cluster;
    ///
    /// let cluster = Cluster::builder().password_user("app", "p@ss word").start()?;
    /// let url = cluster.url_for("app", Some("p@ss word"), "postgres");
    /// assert_eq!(
    ///     url,
    ///     format!("postgresql://app:p%40ss%20word@127.0.0.1:{}/postgres", cluster.port()),
    /// );
    /// # Ok(())
    /// # }
    /// ```
    pub fn url_for(&self, user: &str, password: Option<&str>, dbname: &str) -> String {
        let mut url = String::from("postgresql://");
        url.push_str(&percent_encode(user));
        if let Some(password) = password {
            url.push(':');
            url.push_str(&percent_encode(password));
        }
        url.push('@');
        url.push_str(HOST);
        url.push(':');
        url.push_str(&self.port.to_string());
        url.push('/');
        url.push_str(&percent_encode(dbname));
        url
    }

    /// The postmaster's process id, read from the first line of
    /// `postmaster.pid`; `None` when that file is missing (the server is
    /// stopped).
    ///
    /// After [`kill_postmaster`](Self::kill_postmaster) the file remains and
    /// this still returns the dead process's id; use
    /// [`is_running`](Self::is_running) to check liveness.
    /// # Examples
    ///
    /// ```no_run
    /// # fn main() -> Result<(), momopool_pg::throwaway::ClusterError> {
    /// use momopool_pg::throwaway::{Cluster, StopMode};
    ///
    /// let cluster = Cluster::start()?;
    /// let pid = cluster.postmaster_pid().expect("a running server has a postmaster.pid");
    /// println!("postmaster is process {pid}");
    /// cluster.stop(StopMode::Fast)?;
    /// assert_eq!(cluster.postmaster_pid(), None);
    /// # Ok(())
    /// # }
    /// ```
    pub fn postmaster_pid(&self) -> Option<u32> {
        read_postmaster_pid(&self.data_dir)
    }

    /// Whether the postmaster is alive (a zombie counts as dead).
    /// # Examples
    ///
    /// ```no_run
    /// # fn main() -> Result<(), momopool_pg::throwaway::ClusterError> {
    /// use momopool_pg::throwaway::Cluster;
    ///
    /// let cluster = Cluster::start()?;
    /// assert!(cluster.is_running());
    /// cluster.kill_postmaster()?;
    /// assert!(!cluster.is_running());
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_running(&self) -> bool {
        self.postmaster_pid().is_some_and(pid_running)
    }

    /// Stops the server with `pg_ctl stop -m <mode> -w`, waiting up to 60 s.
    ///
    /// A paused postmaster is resumed first. Does nothing when the server is
    /// not running. [`start_again`](Self::start_again) starts it again.
    ///
    /// # Errors
    ///
    /// When `pg_ctl` fails or times out (with [`StopMode::Smart`], for
    /// example, because clients stay connected).
    /// # Examples
    ///
    /// ```no_run
    /// # fn main() -> Result<(), momopool_pg::throwaway::ClusterError> {
    /// use momopool_pg::throwaway::{Cluster, StopMode};
    ///
    /// let cluster = Cluster::start()?;
    /// cluster.stop(StopMode::Fast)?;
    /// assert!(!cluster.is_running());
    /// cluster.stop(StopMode::Fast)?; // already stopped: nothing to do
    /// # Ok(())
    /// # }
    /// ```
    pub fn stop(&self, mode: StopMode) -> Result<(), ClusterError> {
        let Some(pid) = self.postmaster_pid().filter(|&pid| pid_running(pid)) else {
            return Ok(());
        };
        let _ = send_signal(pid, "CONT");
        let wait = PG_CTL_WAIT_SECS.to_string();
        self.pg_ctl(
            "pg_ctl stop",
            &["stop", "-m", mode.as_arg(), "-w", "-t", &wait],
        )
        .map(drop)
    }

    /// Starts the server again after [`stop`](Self::stop) or
    /// [`kill_postmaster`](Self::kill_postmaster), with `pg_ctl start -w` on
    /// the same port and directories, waiting up to 60 s.
    ///
    /// Stale lock files left by a killed postmaster are removed first. Does
    /// nothing when the server is already running.
    ///
    /// # Errors
    ///
    /// [`ClusterError::StartFailed`] (with the end of the server log) when the
    /// server does not come up, for example because another process took the
    /// port in the meantime.
    /// # Examples
    ///
    /// ```no_run
    /// # fn main() -> Result<(), momopool_pg::throwaway::ClusterError> {
    /// use momopool_pg::throwaway::{Cluster, StopMode};
    ///
    /// let cluster = Cluster::start()?;
    /// let port = cluster.port();
    /// cluster.stop(StopMode::Immediate)?;
    /// cluster.start_again()?;
    /// assert!(cluster.is_running());
    /// assert_eq!(cluster.port(), port);
    /// # Ok(())
    /// # }
    /// ```
    pub fn start_again(&self) -> Result<(), ClusterError> {
        if self.is_running() {
            return Ok(());
        }
        self.remove_stale_lock_files();
        self.pg_ctl_start()
            .map_err(|(reason, log_tail)| ClusterError::StartFailed {
                attempts: 1,
                reason,
                log_tail,
            })
    }

    /// Restarts the server with `pg_ctl restart -m <mode> -w`, waiting up to
    /// 60 s; the port and directories stay the same.
    ///
    /// A paused postmaster is resumed first; a stopped or killed one is just
    /// started.
    ///
    /// # Errors
    ///
    /// When `pg_ctl` fails or times out.
    /// # Examples
    ///
    /// ```no_run
    /// # fn main() -> Result<(), momopool_pg::throwaway::ClusterError> {
    /// use momopool_pg::throwaway::{Cluster, StopMode};
    ///
    /// let cluster = Cluster::start()?;
    /// let before = cluster.postmaster_pid();
    /// cluster.restart(StopMode::Fast)?; // existing sessions are terminated
    /// assert!(cluster.is_running());
    /// assert_ne!(cluster.postmaster_pid(), before);
    /// # Ok(())
    /// # }
    /// ```
    pub fn restart(&self, mode: StopMode) -> Result<(), ClusterError> {
        let Some(pid) = self.postmaster_pid().filter(|&pid| pid_running(pid)) else {
            return self.start_again();
        };
        let _ = send_signal(pid, "CONT");
        let wait = PG_CTL_WAIT_SECS.to_string();
        let log = self.log_file.to_string_lossy();
        let result = self.pg_ctl(
            "pg_ctl restart",
            &[
                "restart",
                "-m",
                mode.as_arg(),
                "-w",
                "-t",
                &wait,
                "-l",
                &log,
            ],
        );
        match result {
            Ok(_) => Ok(()),
            Err(ClusterError::CommandFailed { status, output, .. }) => {
                Err(ClusterError::StartFailed {
                    attempts: 1,
                    reason: one_line(&format!("pg_ctl restart failed ({status}): {output}")),
                    log_tail: log_tail(&self.log_file, 0),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Starts `pg_ctl restart -m <mode>` without waiting for it, so that async code can go on
    /// (and a single-threaded runtime keep running) while the server restarts. Poll the child
    /// with [`std::process::Child::try_wait`]; it exits once the server is back (or after
    /// pg_ctl's own timeout).
    ///
    /// # Errors
    ///
    /// [`ClusterError::Io`] when `pg_ctl` cannot be started.
    /// # Examples
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use momopool_pg::throwaway::{Cluster, StopMode};
    ///
    /// use std::time::Duration;
    ///
    /// let cluster = Cluster::start()?;
    /// let mut pg_ctl = cluster.restart_in_background(StopMode::Fast)?;
    /// // Other work (such as an async runtime driving a pool) goes on meanwhile.
    /// while pg_ctl.try_wait()?.is_none() {
    ///     std::thread::sleep(Duration::from_millis(50));
    /// }
    /// assert!(cluster.is_running());
    /// # Ok(())
    /// # }
    /// ```
    pub fn restart_in_background(
        &self,
        mode: StopMode,
    ) -> Result<std::process::Child, ClusterError> {
        if let Some(pid) = self.postmaster_pid() {
            let _ = send_signal(pid, "CONT");
        }
        let wait = PG_CTL_WAIT_SECS.to_string();
        let mut cmd = self.runner.command(&self.bindir.join("pg_ctl"));
        cmd.args(["restart", "-m", mode.as_arg(), "-w", "-t", &wait, "-l"])
            .arg(&self.log_file)
            .arg("-D")
            .arg(&self.data_dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        cmd.spawn()
            .map_err(|e| io_error("could not start pg_ctl restart".to_string(), e))
    }

    /// Kills the postmaster with `SIGKILL` (`kill -9`), simulating a crash,
    /// and waits (up to 10 s) until it and its child processes are gone.
    ///
    /// Afterwards [`is_running`](Self::is_running) is `false`, existing
    /// connections are broken and new ones are refused.
    /// [`start_again`](Self::start_again) or [`restart`](Self::restart)
    /// bring the server back (with crash recovery).
    ///
    /// # Errors
    ///
    /// [`ClusterError::NotRunning`] when there is no live postmaster, or when
    /// the `kill` command fails or the processes do not go away in time.
    /// # Examples
    ///
    /// ```no_run
    /// # fn main() -> Result<(), momopool_pg::throwaway::ClusterError> {
    /// use momopool_pg::throwaway::Cluster;
    ///
    /// let cluster = Cluster::start()?;
    /// cluster.kill_postmaster()?; // a crash: connections break, new ones are refused
    /// assert!(!cluster.is_running());
    /// cluster.start_again()?; // with crash recovery
    /// # Ok(())
    /// # }
    /// ```
    pub fn kill_postmaster(&self) -> Result<(), ClusterError> {
        let pid = self.running_pid()?;
        let children = child_pids(pid);
        self.signal(pid, "KILL")?;
        let gone = wait_until(Duration::from_secs(10), || {
            !pid_running(pid) && children.iter().all(|&c| !pid_running(c))
        });
        if gone {
            Ok(())
        } else {
            Err(ClusterError::Timeout {
                command: format!("waiting for killed postmaster {pid} to exit"),
                timeout: Duration::from_secs(10),
            })
        }
    }

    /// Sends `signal` (a name such as `"STOP"`, `"CONT"`, `"KILL"`, `"TERM"`,
    /// with or without the `SIG` prefix) to process `pid` with `kill -s`.
    ///
    /// Meant for the server's processes, for example a backend found with
    /// `select pg_backend_pid()`.
    ///
    /// # Errors
    ///
    /// [`ClusterError::InvalidOption`] for a malformed signal name and
    /// [`ClusterError::CommandFailed`] when `kill` fails (no such process,
    /// unknown signal, ...).
    /// # Examples
    ///
    /// ```no_run
    /// # fn main() -> Result<(), momopool_pg::throwaway::ClusterError> {
    /// use momopool_pg::throwaway::Cluster;
    ///
    /// let cluster = Cluster::start()?;
    /// cluster.psql("alter system set work_mem = '16MB'")?;
    /// // SIGHUP makes the server reload its configuration.
    /// let pid = cluster.postmaster_pid().expect("the server is running");
    /// cluster.signal(pid, "HUP")?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn signal(&self, pid: u32, signal: &str) -> Result<(), ClusterError> {
        let name = signal.strip_prefix("SIG").unwrap_or(signal);
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(ClusterError::InvalidOption {
                option: format!("signal {signal:?}"),
                reason: "expected a signal name such as \"TERM\"".into(),
            });
        }
        send_signal(pid, name)
    }

    /// Freezes the postmaster with `SIGSTOP` and waits until it is stopped.
    ///
    /// While paused, new connections are accepted by the kernel but never
    /// answered, so connection attempts hang until they time out; existing
    /// sessions keep working. [`resume`](Self::resume) undoes it.
    ///
    /// # Errors
    ///
    /// [`ClusterError::NotRunning`] when there is no live postmaster, or when
    /// the `kill` command fails.
    /// # Examples
    ///
    /// ```no_run
    /// # fn main() -> Result<(), momopool_pg::throwaway::ClusterError> {
    /// use momopool_pg::throwaway::Cluster;
    ///
    /// let cluster = Cluster::start()?;
    /// cluster.pause()?;
    /// // New connections hang here, so a client's connect timeout can be tested.
    /// cluster.resume()?;
    /// assert_eq!(cluster.psql("select 1")?, "1");
    /// # Ok(())
    /// # }
    /// ```
    pub fn pause(&self) -> Result<(), ClusterError> {
        let pid = self.running_pid()?;
        self.signal(pid, "STOP")?;
        wait_until(Duration::from_secs(5), || {
            proc_stat(pid).is_none_or(|stat| stat.state == 'T')
        });
        Ok(())
    }

    /// Resumes a postmaster paused by [`pause`](Self::pause) with `SIGCONT`.
    ///
    /// # Errors
    ///
    /// [`ClusterError::NotRunning`] when there is no live postmaster, or when
    /// the `kill` command fails.
    /// # Examples
    ///
    /// ```no_run
    /// # fn main() -> Result<(), momopool_pg::throwaway::ClusterError> {
    /// use momopool_pg::throwaway::Cluster;
    ///
    /// let cluster = Cluster::start()?;
    /// cluster.pause()?;
    /// cluster.resume()?;
    /// assert!(cluster.is_running());
    /// # Ok(())
    /// # }
    /// ```
    pub fn resume(&self) -> Result<(), ClusterError> {
        let pid = self.running_pid()?;
        self.signal(pid, "CONT")?;
        wait_until(Duration::from_secs(5), || {
            proc_stat(pid).is_none_or(|stat| stat.state != 'T')
        });
        Ok(())
    }

    /// Runs `sql` with `psql` as the superuser over the unix socket and
    /// returns its standard output, trimmed.
    ///
    /// The SQL is fed to `psql -X -q -A -t -v ON_ERROR_STOP=1` as a script, so
    /// it may hold several statements (each in its own transaction unless you
    /// write `BEGIN`/`COMMIT`) and psql meta-commands. Rows are printed
    /// unaligned, one per line, with `|` between columns and no headers.
    /// `psql` gets at most 10 s to connect and 120 s in all.
    ///
    /// # Errors
    ///
    /// [`ClusterError::Psql`] with psql's standard error when a statement
    /// fails or psql cannot connect, [`ClusterError::Timeout`] when it runs
    /// too long.
    /// # Examples
    ///
    /// ```no_run
    /// # fn main() -> Result<(), momopool_pg::throwaway::ClusterError> {
    /// use momopool_pg::throwaway::Cluster;
    ///
    /// let cluster = Cluster::start()?;
    /// cluster.psql("create table t (a int, b text); insert into t values (1, 'x'), (2, 'y');")?;
    /// assert_eq!(cluster.psql("select a, b from t order by a")?, "1|x\n2|y");
    /// # Ok(())
    /// # }
    /// ```
    pub fn psql(&self, sql: &str) -> Result<String, ClusterError> {
        let mut cmd = self.runner.command(&self.bindir.join("psql"));
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.socket_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", SUPERUSER, "-d", "postgres", "-f", "-"])
            .env("PGCONNECT_TIMEOUT", "10");
        let out = run(cmd, Some(sql.as_bytes().to_vec()), PSQL_TIMEOUT, "psql")?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(ClusterError::Psql {
                status: describe_status(out.status),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }

    fn running_pid(&self) -> Result<u32, ClusterError> {
        self.postmaster_pid()
            .filter(|&pid| pid_running(pid))
            .ok_or(ClusterError::NotRunning)
    }

    /// Runs `pg_ctl <args> -D <data_dir>` as the cluster's user.
    fn pg_ctl(&self, what: &str, args: &[&str]) -> Result<Output, ClusterError> {
        let mut cmd = self.runner.command(&self.bindir.join("pg_ctl"));
        cmd.args(args).arg("-D").arg(&self.data_dir);
        let out = run(cmd, None, PG_CTL_TIMEOUT, what)?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(command_failed(what, &out))
        }
    }

    fn initdb(&self) -> Result<(), ClusterError> {
        let mut cmd = self.runner.command(&self.bindir.join("initdb"));
        cmd.arg("-D").arg(&self.data_dir).args([
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--no-sync",
            "--encoding=UTF8",
            "--locale=C",
        ]);
        let out = run(cmd, None, INITDB_TIMEOUT, "initdb")?;
        if !out.status.success() {
            return Err(command_failed("initdb", &out));
        }
        let conf = self.data_dir.join("postgresql.conf");
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .map_err(|e| io_error(format!("could not open {}", conf.display()), e))?;
        file.write_all(b"\n# Added for a momopool throwaway cluster.\ninclude 'momopool.conf'\n")
            .map_err(|e| io_error(format!("could not write {}", conf.display()), e))
    }

    fn write_hba(&self, password_users: &[(String, String)]) -> Result<(), ClusterError> {
        let mut hba = String::from(
            "# pg_hba.conf of a momopool throwaway cluster (for tests only).\n\
             # TYPE  DATABASE  USER  ADDRESS  METHOD\n",
        );
        for (user, _) in password_users {
            hba.push_str(&format!(
                "host all \"{user}\" 127.0.0.1/32 scram-sha-256\n\
                 host all \"{user}\" ::1/128 scram-sha-256\n\
                 local all \"{user}\" scram-sha-256\n"
            ));
        }
        hba.push_str(&format!(
            "host all {REJECTED_ROLE} 127.0.0.1/32 reject\n\
             host all {REJECTED_ROLE} ::1/128 reject\n\
             local all {REJECTED_ROLE} reject\n\
             local all all trust\n\
             host all all 127.0.0.1/32 trust\n\
             host all all ::1/128 trust\n\
             local replication all trust\n\
             host replication all 127.0.0.1/32 trust\n\
             host replication all ::1/128 trust\n"
        ));
        let path = self.data_dir.join("pg_hba.conf");
        fs::write(&path, hba)
            .map_err(|e| io_error(format!("could not write {}", path.display()), e))
    }

    fn write_conf(&self, settings: &[(String, String)]) -> Result<(), ClusterError> {
        let mut conf =
            String::from("# Settings of a momopool throwaway cluster (for tests only).\n");
        let defaults = [
            ("max_connections", "300"),
            ("fsync", "off"),
            ("synchronous_commit", "off"),
            ("full_page_writes", "off"),
            ("shared_buffers", "32MB"),
            ("log_min_messages", "warning"),
            ("logging_collector", "off"),
            ("password_encryption", "scram-sha-256"),
        ];
        for (name, value) in defaults {
            conf.push_str(&format!("{name} = {}\n", quote_literal(value)));
        }
        for (name, value) in settings {
            conf.push_str(&format!("{name} = {}\n", quote_literal(value)));
        }
        // Last, so that they win over the builder's settings.
        conf.push_str(&format!(
            "listen_addresses = '{HOST}'\nport = {}\nunix_socket_directories = {}\n",
            self.port,
            quote_literal(&self.socket_dir.to_string_lossy())
        ));
        let path = self.data_dir.join("momopool.conf");
        fs::write(&path, conf)
            .map_err(|e| io_error(format!("could not write {}", path.display()), e))
    }

    fn start_on_free_port(&mut self, settings: &[(String, String)]) -> Result<(), ClusterError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.port = free_port()?;
            self.write_conf(settings)?;
            let Err((reason, log_tail)) = self.pg_ctl_start() else {
                return Ok(());
            };
            // Make sure nothing half-started keeps running.
            shutdown_postmaster(&self.bindir, &self.runner, &self.data_dir);
            self.remove_stale_lock_files();
            // Another process may have taken the port since `free_port`.
            let port_taken = [
                "could not bind",
                "Address already in use",
                "could not create any TCP/IP sockets",
            ]
            .iter()
            .any(|needle| log_tail.contains(needle));
            if !port_taken || attempt >= START_ATTEMPTS {
                return Err(ClusterError::StartFailed {
                    attempts: attempt,
                    reason,
                    log_tail,
                });
            }
        }
    }

    /// `pg_ctl start -w`; on failure returns pg_ctl's complaint and the part
    /// of the server log written during this attempt.
    fn pg_ctl_start(&self) -> Result<(), (String, String)> {
        let log_start = fs::metadata(&self.log_file).map_or(0, |m| m.len());
        let wait = PG_CTL_WAIT_SECS.to_string();
        let log = self.log_file.to_string_lossy().into_owned();
        match self.pg_ctl("pg_ctl start", &["start", "-w", "-t", &wait, "-l", &log]) {
            Ok(_) => Ok(()),
            Err(e) => Err((
                one_line(&e.to_string()),
                log_tail(&self.log_file, log_start),
            )),
        }
    }

    /// Removes `postmaster.pid` and the socket lock file when the process
    /// they name is dead (a killed postmaster leaves them behind, and a
    /// zombie postmaster would make the next start refuse to run).
    fn remove_stale_lock_files(&self) {
        if let Some(pid) = self.postmaster_pid() {
            if !pid_running(pid) {
                let _ = fs::remove_file(self.data_dir.join("postmaster.pid"));
            }
        }
        if let Ok(entries) = fs::read_dir(&self.socket_dir) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                if !name.to_string_lossy().ends_with(".lock") {
                    continue;
                }
                let path = entry.path();
                let stale = fs::read_to_string(&path)
                    .ok()
                    .and_then(|s| s.lines().next()?.trim().parse::<u32>().ok())
                    .is_none_or(|pid| !pid_running(pid));
                if stale {
                    let _ = fs::remove_file(&path);
                    let socket = path.with_extension("");
                    let _ = fs::remove_file(socket);
                }
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        shutdown_postmaster(&self.bindir, &self.runner, &self.data_dir);
        remove_tree(&self.dir);
    }
}

/// Who runs the PostgreSQL commands.
#[derive(Debug, Clone)]
enum Runner {
    /// The current user (not root).
    Direct,
    /// `runuser -u <user> -- <program> ...`
    Runuser { runuser: PathBuf, user: String },
    /// `su -s /bin/sh -c 'exec "$0" "$@"' <user> -- <program> ...`
    Su { su: PathBuf, user: String },
    /// `setpriv --reuid=<user> --regid=<user> --init-groups -- <program> ...`
    Setpriv { setpriv: PathBuf, user: String },
}

impl Runner {
    /// The words to put in front of a program and its arguments.
    fn prefix(&self) -> Vec<OsString> {
        match self {
            Runner::Direct => Vec::new(),
            Runner::Runuser { runuser, user } => vec![
                runuser.clone().into_os_string(),
                "-u".into(),
                user.into(),
                "--".into(),
            ],
            Runner::Su { su, user } => vec![
                su.clone().into_os_string(),
                "-s".into(),
                "/bin/sh".into(),
                "-c".into(),
                "exec \"$0\" \"$@\"".into(),
                user.into(),
                "--".into(),
            ],
            Runner::Setpriv { setpriv, user } => vec![
                setpriv.clone().into_os_string(),
                format!("--reuid={user}").into(),
                format!("--regid={user}").into(),
                "--init-groups".into(),
                "--".into(),
            ],
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Runner::Direct => "the current user",
            Runner::Runuser { .. } => "runuser",
            Runner::Su { .. } => "su",
            Runner::Setpriv { .. } => "setpriv",
        }
    }

    fn command(&self, program: &Path) -> Command {
        let prefix = self.prefix();
        let mut cmd = match prefix.split_first() {
            None => Command::new(program),
            Some((first, rest)) => {
                let mut cmd = Command::new(first);
                cmd.args(rest).arg(program);
                cmd
            }
        };
        clean_env(&mut cmd);
        cmd
    }
}

/// The current process's privileges and how to drop them.
struct Identity {
    /// `Some((uid, gid))` of the server user when running as root.
    root: Option<(u32, u32)>,
    runner: Runner,
}

impl Identity {
    fn detect() -> Result<Identity, ClusterError> {
        if !is_root() {
            return Ok(Identity {
                root: None,
                runner: Runner::Direct,
            });
        }
        let ids = lookup_user(SYSTEM_USER).ok_or_else(|| ClusterError::NoUnprivilegedUser {
            reason: format!("there is no `{SYSTEM_USER}` user"),
        })?;
        let runner = root_runner()?;
        Ok(Identity {
            root: Some(ids),
            runner,
        })
    }
}

/// How root runs commands as the server user: the first of `runuser`, `su`
/// and `setpriv` that works (probed once per process).
fn root_runner() -> Result<Runner, ClusterError> {
    static RUNNER: OnceLock<Result<Runner, String>> = OnceLock::new();
    RUNNER
        .get_or_init(|| {
            let user = SYSTEM_USER.to_owned();
            let candidates = [
                find_program("runuser").map(|runuser| Runner::Runuser {
                    runuser,
                    user: user.clone(),
                }),
                find_program("su").map(|su| Runner::Su {
                    su,
                    user: user.clone(),
                }),
                find_program("setpriv").map(|setpriv| Runner::Setpriv {
                    setpriv,
                    user: user.clone(),
                }),
            ];
            let mut tried = Vec::new();
            for runner in candidates.into_iter().flatten() {
                let mut cmd = runner.command(Path::new("/bin/sh"));
                cmd.args(["-c", "exit 0"]);
                if run(cmd, None, SHORT_TIMEOUT, "probe").is_ok_and(|out| out.status.success()) {
                    return Ok(runner);
                }
                tried.push(runner.name());
            }
            Err(if tried.is_empty() {
                "none of runuser, su and setpriv was found".to_owned()
            } else {
                format!(
                    "could not run commands as `{user}` with {}",
                    tried.join(", ")
                )
            })
        })
        .clone()
        .map_err(|reason| ClusterError::NoUnprivilegedUser { reason })
}

fn is_root() -> bool {
    if let Ok(status) = fs::read_to_string("/proc/self/status") {
        if let Some(line) = status.lines().find(|l| l.starts_with("Uid:")) {
            // Real, effective, saved, filesystem; the effective one counts.
            if let Some(euid) = line.split_whitespace().nth(2) {
                return euid == "0";
            }
        }
    }
    let mut cmd = Command::new("id");
    cmd.arg("-u");
    run(cmd, None, SHORT_TIMEOUT, "id")
        .is_ok_and(|out| out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// `(uid, gid)` of `user`, from `/etc/passwd` or else from `id`.
fn lookup_user(user: &str) -> Option<(u32, u32)> {
    if let Ok(passwd) = fs::read_to_string("/etc/passwd") {
        for line in passwd.lines() {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() >= 4 && fields[0] == user {
                if let (Ok(uid), Ok(gid)) = (fields[2].parse(), fields[3].parse()) {
                    return Some((uid, gid));
                }
            }
        }
    }
    let id = |flag: &str| -> Option<u32> {
        let mut cmd = Command::new("id");
        cmd.arg(flag).arg(user);
        let out = run(cmd, None, SHORT_TIMEOUT, "id").ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    Some((id("-u")?, id("-g")?))
}

/// Where cluster directories are created.
fn base_dir(root: bool) -> PathBuf {
    let preferred = std::env::temp_dir().join("momopool-pg");
    // `<base>/<name>/sock/.s.PGSQL.NNNNN` must fit in a unix socket address
    // (107 bytes), and when running as root the server user must be able to
    // reach the directory.
    let short_enough = preferred.as_os_str().len() <= 56;
    let reachable = !root
        || preferred
            .ancestors()
            .skip(1)
            .all(|dir| fs::metadata(dir).map_or(true, |m| m.permissions().mode() & 0o001 != 0));
    if short_enough && reachable && preferred.is_absolute() {
        preferred
    } else {
        PathBuf::from("/tmp/momopool-pg")
    }
}

fn create_cluster_dir(base: &Path, identity: &Identity) -> Result<PathBuf, ClusterError> {
    match fs::DirBuilder::new().mode(0o1777).create(base) {
        Ok(()) => {
            // The mode given to mkdir is filtered by the umask.
            let _ = fs::set_permissions(base, fs::Permissions::from_mode(0o1777));
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_error(format!("could not create {}", base.display()), e)),
    }
    let (owner_pid, owner_start) = own_identity();
    let dir = loop {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let counter = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("{owner_pid}-{counter}-{nanos:x}"));
        match fs::DirBuilder::new().mode(0o755).create(&dir) {
            Ok(()) => break dir,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_error(format!("could not create {}", dir.display()), e)),
        }
    };
    let result = (|| {
        let owner_file = dir.join("owner.pid");
        fs::write(&owner_file, format!("{owner_pid} {owner_start}\n"))
            .map_err(|e| io_error(format!("could not write {}", owner_file.display()), e))?;
        for (sub, mode) in [("data", 0o700), ("sock", 0o755)] {
            let path = dir.join(sub);
            fs::DirBuilder::new()
                .mode(mode)
                .create(&path)
                .map_err(|e| io_error(format!("could not create {}", path.display()), e))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(|e| {
                io_error(format!("could not set the mode of {}", path.display()), e)
            })?;
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
            .map_err(|e| io_error(format!("could not set the mode of {}", dir.display()), e))?;
        if let Some((uid, gid)) = identity.root {
            for path in [dir.clone(), dir.join("data"), dir.join("sock")] {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(|e| {
                    io_error(
                        format!("could not hand {} to {SYSTEM_USER}", path.display()),
                        e,
                    )
                })?;
            }
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(dir),
        Err(e) => {
            remove_tree(&dir);
            Err(e)
        }
    }
}

/// Our pid and start time (from `/proc/self/stat`; empty when unknown).
fn own_identity() -> (u32, String) {
    let pid = std::process::id();
    let start = proc_stat(pid).map(|s| s.start_time).unwrap_or_default();
    (pid, start)
}

fn free_port() -> Result<u16, ClusterError> {
    let listener = TcpListener::bind((HOST, 0))
        .map_err(|e| io_error("could not find a free port on 127.0.0.1", e))?;
    let port = listener
        .local_addr()
        .map_err(|e| io_error("could not find a free port on 127.0.0.1", e))?
        .port();
    Ok(port)
}

/// Removes directories of clusters whose owner process is gone.
fn cleanup_stale(base: &Path, bindir: &Path, runner: &Runner) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let recorded = fs::read_to_string(path.join("owner.pid"))
            .ok()
            .and_then(|s| {
                let mut words = s.split_whitespace();
                let pid = words.next()?.parse::<u32>().ok()?;
                Some((pid, words.next().map(str::to_owned)))
            });
        // A directory that is still being set up has no owner.pid yet; its
        // name starts with the owner's pid.
        let owner = recorded.or_else(|| {
            let name = entry.file_name();
            let pid = name
                .to_string_lossy()
                .split('-')
                .next()?
                .parse::<u32>()
                .ok()?;
            Some((pid, None))
        });
        let Some((pid, start)) = owner else {
            continue;
        };
        if owner_alive(pid, start.as_deref()) {
            continue;
        }
        shutdown_postmaster(bindir, runner, &path.join("data"));
        remove_tree(&path);
    }
}

fn owner_alive(pid: u32, start: Option<&str>) -> bool {
    if !pid_running(pid) {
        return false;
    }
    match (start, proc_stat(pid)) {
        (Some(start), Some(stat)) if !start.is_empty() => stat.start_time == start,
        _ => true,
    }
}

fn read_postmaster_pid(data_dir: &Path) -> Option<u32> {
    let text = fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    text.lines()
        .next()?
        .trim()
        .parse()
        .ok()
        .filter(|&pid| pid > 0)
}

/// Stops whatever postmaster runs on `data_dir`: `pg_ctl stop -m immediate`,
/// then `SIGKILL` if it is still there. Best effort, bounded.
fn shutdown_postmaster(bindir: &Path, runner: &Runner, data_dir: &Path) {
    let Some(pid) = read_postmaster_pid(data_dir) else {
        return;
    };
    if !pid_running(pid) {
        return;
    }
    let _ = send_signal(pid, "CONT");
    let mut cmd = runner.command(&bindir.join("pg_ctl"));
    cmd.args(["stop", "-m", "immediate", "-w", "-t"])
        .arg(TEARDOWN_WAIT_SECS.to_string())
        .arg("-D")
        .arg(data_dir);
    let _ = run(
        cmd,
        None,
        Duration::from_secs(TEARDOWN_WAIT_SECS + 10),
        "pg_ctl stop",
    );
    if pid_running(pid) && looks_like_postgres(pid) {
        let _ = send_signal(pid, "KILL");
        wait_until(Duration::from_secs(5), || !pid_running(pid));
    }
}

fn looks_like_postgres(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(comm) => {
            let comm = comm.trim();
            comm.starts_with("postgres") || comm.starts_with("postmaster")
        }
        // Without /proc we cannot tell; trust postmaster.pid.
        Err(_) => !proc_available(),
    }
}

fn remove_tree(dir: &Path) {
    for _ in 0..5 {
        match fs::remove_dir_all(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            // Files may still appear while the last server processes exit.
            Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    }
    let mut cmd = Command::new("rm");
    cmd.arg("-rf").arg(dir);
    let _ = run(cmd, None, SHORT_TIMEOUT, "rm");
}

/// The parts of `/proc/<pid>/stat` this module uses.
struct ProcStat {
    state: char,
    ppid: u32,
    start_time: String,
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    // Field 22 overall: the start time in clock ticks after boot.
    let start_time = fields.nth(17)?.to_owned();
    Some(ProcStat {
        state,
        ppid,
        start_time,
    })
}

fn proc_available() -> bool {
    Path::new("/proc/self/stat").exists()
}

/// Whether `pid` is a live process (zombies count as dead).
fn pid_running(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    if let Some(stat) = proc_stat(pid) {
        return !matches!(stat.state, 'Z' | 'X' | 'x');
    }
    if proc_available() {
        return false;
    }
    // No /proc: ask kill(1). "No such process" means dead; any other
    // failure (such as a permission error) means the process exists.
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "kill -0 \"$1\"", "sh"])
        .arg(pid.to_string());
    match run(cmd, None, SHORT_TIMEOUT, "kill") {
        Ok(out) => {
            out.status.success()
                || !String::from_utf8_lossy(&out.stderr).contains("No such process")
        }
        Err(_) => true,
    }
}

/// Direct children of `pid` (best effort, needs /proc).
fn child_pids(pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| proc_stat(p).is_some_and(|s| s.ppid == pid))
        .collect()
}

fn send_signal(pid: u32, name: &str) -> Result<(), ClusterError> {
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "kill -s \"$1\" \"$2\"", "sh", name])
        .arg(pid.to_string());
    let what = format!("kill -s {name} {pid}");
    let out = run(cmd, None, SHORT_TIMEOUT, &what)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(command_failed(&what, &out))
    }
}

/// Polls `done` until it returns true or `timeout` passes; returns its last
/// answer.
fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Removes the `PG*` variables (they would redirect `psql`, `pg_ctl`, ...)
/// and makes messages predictable.
fn clean_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(&key);
        }
    }
    cmd.env("LC_ALL", "C").current_dir("/");
}

/// Runs `cmd` with a time limit, feeding it `input` and collecting its
/// output. The command runs in its own process group, which is killed as a
/// whole on timeout.
fn run(
    mut cmd: Command,
    input: Option<Vec<u8>>,
    timeout: Duration,
    what: &str,
) -> Result<Output, ClusterError> {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| io_error(format!("could not run {what}"), e))?;
    if let (Some(mut stdin), Some(input)) = (child.stdin.take(), input) {
        thread::spawn(move || {
            // A failure shows up as the command's own error.
            let _ = stdin.write_all(&input);
        });
    }
    let stdout = read_in_background(child.stdout.take());
    let stderr = read_in_background(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) => {}
            Err(e) => {
                kill_process_group(child.id());
                let _ = child.kill();
                let _ = child.wait();
                return Err(io_error(format!("could not wait for {what}"), e));
            }
        }
        if Instant::now() >= deadline {
            kill_process_group(child.id());
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    };
    // A background process that inherited the pipes could keep them open;
    // do not wait for it forever.
    let collect =
        |rx: mpsc::Receiver<Vec<u8>>| rx.recv_timeout(Duration::from_secs(2)).unwrap_or_default();
    let stdout = collect(stdout);
    let stderr = collect(stderr);
    match status {
        Some(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        None => Err(ClusterError::Timeout {
            command: what.to_owned(),
            timeout,
        }),
    }
}

fn read_in_background(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    if let Some(mut pipe) = pipe {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            let _ = tx.send(buf);
        });
    } else {
        let _ = tx.send(Vec::new());
    }
    rx
}

fn kill_process_group(pgid: u32) {
    // Not through `run`, which would recurse on failure.
    let _ = Command::new("/bin/sh")
        .args(["-c", "kill -s KILL -- \"-$1\"", "sh"])
        .arg(pgid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn describe_status(status: ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("exit status {code}"),
        None => {
            use std::os::unix::process::ExitStatusExt;
            match status.signal() {
                Some(signal) => format!("killed by signal {signal}"),
                None => "unknown exit status".to_owned(),
            }
        }
    }
}

fn command_failed(what: &str, out: &Output) -> ClusterError {
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    let output = if stderr.is_empty() {
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    } else {
        stderr
    };
    ClusterError::CommandFailed {
        command: what.to_owned(),
        status: describe_status(out.status),
        output,
    }
}

/// The last lines (at most 30 lines / 8 KiB) of `path` from byte `from` on.
fn log_tail(path: &Path, from: u64) -> String {
    let Ok(bytes) = fs::read(path) else {
        return String::new();
    };
    let from = usize::try_from(from).unwrap_or(0).min(bytes.len());
    let bytes = &bytes[from..];
    let bytes = &bytes[bytes.len().saturating_sub(8192)..];
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Joins the non-empty lines of `text` with spaces.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The watchdog: `$1` owner pid, `$2` owner start time (may be empty), `$3`
/// cluster directory, `$4` data directory, `$5` pg_ctl, then the words that
/// run a command as the server user (may be none).
const WATCHDOG_SCRIPT: &str = r#"
owner=$1; owner_start=$2; dir=$3; data=$4; pgctl=$5
shift 5
stat_field() {
    sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f"$2"
}
running() {
    kill -0 "$1" 2>/dev/null || return 1
    if [ -r "/proc/$1/stat" ]; then
        case "$(stat_field "$1" 1)" in Z|X|x) return 1 ;; esac
    fi
    return 0
}
owner_alive() {
    running "$owner" || return 1
    if [ -n "$owner_start" ] && [ -r "/proc/$owner/stat" ]; then
        now=$(stat_field "$owner" 20)
        [ -z "$now" ] || [ "$now" = "$owner_start" ] || return 1
    fi
    return 0
}
while [ -d "$dir" ] && owner_alive; do
    sleep 1
done
[ -d "$dir" ] || exit 0
pm=
if [ -r "$data/postmaster.pid" ]; then
    pm=$(head -n 1 "$data/postmaster.pid")
    case "$pm" in ''|*[!0-9]*) pm= ;; esac
fi
if [ -n "$pm" ] && running "$pm"; then
    kill -s CONT "$pm" 2>/dev/null
    "$@" "$pgctl" stop -D "$data" -m immediate -w -t 10 >/dev/null 2>&1
    if running "$pm"; then
        kill -s KILL "$pm" 2>/dev/null
        sleep 1
    fi
fi
rm -rf "$dir"
"#;

/// Starts the detached watchdog of `cluster` (best effort: without it the
/// cluster still goes away on drop and through the stale-directory cleanup).
fn spawn_watchdog(cluster: &Cluster) {
    let (owner_pid, owner_start) = own_identity();
    let mut cmd = Command::new("/bin/sh");
    // The launcher puts the watchdog in the background and exits, so the
    // watchdog is not our child and outlives us.
    cmd.args(["-c", "\"$@\" </dev/null >/dev/null 2>&1 &", "sh"]);
    if let Some(setsid) = find_program("setsid") {
        cmd.arg(setsid);
    }
    cmd.arg("/bin/sh")
        .args(["-c", WATCHDOG_SCRIPT, "momopool-pg-watchdog"])
        .arg(owner_pid.to_string())
        .arg(owner_start)
        .arg(&cluster.dir)
        .arg(&cluster.data_dir)
        .arg(cluster.bindir.join("pg_ctl"))
        .args(cluster.runner.prefix());
    clean_env(&mut cmd);
    let _ = run(cmd, None, SHORT_TIMEOUT, "the watchdog launcher");
}
