//! [`PgConfig`]: where to connect and how to treat each connection.

use crate::Error;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;
use tokio_postgres::config::{Host, SslMode, TargetSessionAttrs};

/// How long a standalone connect may take in all when no per-host connect timeout is set.
const STANDALONE_CONNECT_LIMIT: Duration = Duration::from_secs(10);

/// The per-host connect timeout, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnectTimeout {
    /// Not set here: tokio-postgres's own `connect_timeout` (a DSN's `connect_timeout=`) if it
    /// has one, else no per-host limit.
    Unset,
    /// Each host may take this long.
    PerHost(Duration),
    /// Explicitly no limit: not per host, not for a standalone connect.
    Never,
}

/// How a connection is made ready for its next user when the pool checks it.
///
/// A connection given back inside a transaction has a `ROLLBACK` queued at once (its locks go
/// then) and is checked before its next use, whatever the method; one whose raw client was
/// handed out ([`Connection::client`](crate::Connection::client)) is closed instead. With
/// `Clean`, a connection that ran any statement is checked (and so reset) before its next
/// use, however soon that comes: a statement can change the session in ways its text does not
/// show, such as a function that takes an advisory lock. The other methods run when the pool
/// checks a connection (see [`Validation`](momopool::Validation)).
///
/// Statements the server dropped (a `Custom("DISCARD ALL")`, a `DEALLOCATE ALL` on a held
/// connection) are forgotten by the connection's statement cache too: when the SQL says so,
/// at once, else when a dropped statement is next used, which is then prepared again and
/// run (outside a transaction; inside one the caller gets
/// [`Error::PlanInvalidated`](crate::Error::PlanInvalidated)).
///
/// # Examples
///
/// ```
/// use momopool_pg::Recycling;
/// assert_eq!(Recycling::default(), Recycling::Verified);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Recycling {
    /// Only look at whether the connection is closed: no round trip.
    Fast,
    /// An empty query round trip proves the server still answers.
    #[default]
    Verified,
    /// Reset the session: the session authorization and role, close cursors, reset settings
    /// (then re-run the session statements), unlisten, release advisory locks, discard
    /// temporary objects and sequence state. Prepared statements are kept, so the statement
    /// cache stays valid.
    Clean,
    /// Run this SQL (one or more statements, simple protocol).
    Custom(String),
}

/// Connection settings: the server and credentials (parsed by tokio-postgres from a URL or a
/// `key=value` string), plus what momopool does with each connection.
///
/// Its `Debug` output never shows the password.
///
/// # Examples
///
/// ```
/// use momopool_pg::PgConfig;
///
/// let config = PgConfig::from_dsn("postgresql://app:secret@127.0.0.1:5432/shop")
///     .unwrap()
///     .session(["SET search_path TO shop, public", "SET TIME ZONE 'UTC'"]);
/// assert!(!format!("{config:?}").contains("secret"));
/// ```
#[derive(Clone)]
pub struct PgConfig {
    pub(crate) pg: tokio_postgres::Config,
    pub(crate) session: Vec<String>,
    pub(crate) recycling: Recycling,
    pub(crate) statement_cache: usize,
    pub(crate) unnamed_statements: bool,
    pub(crate) statement_timeout: Option<Duration>,
    pub(crate) connect_timeout: ConnectTimeout,
    #[cfg(feature = "tls-rustls")]
    pub(crate) tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // tokio-postgres's own Debug already replaces the password with `_`.
        f.debug_struct("PgConfig")
            .field("pg", &self.pg)
            .field("session", &self.session)
            .field("recycling", &self.recycling)
            .field("statement_cache", &self.statement_cache)
            .field("unnamed_statements", &self.unnamed_statements)
            .field("statement_timeout", &self.statement_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("tls", &self.tls_configured())
            .finish()
    }
}

impl Default for PgConfig {
    /// `localhost:5432`, the `USER` environment variable (or `postgres`) as the user.
    fn default() -> Self {
        let mut config = PgConfig::from_pg(tokio_postgres::Config::new());
        config.fill_defaults();
        config
    }
}

impl FromStr for PgConfig {
    type Err = Error;

    fn from_str(dsn: &str) -> Result<Self, Error> {
        PgConfig::from_dsn(dsn)
    }
}

impl PgConfig {
    fn from_pg(pg: tokio_postgres::Config) -> Self {
        PgConfig {
            pg,
            session: Vec::new(),
            recycling: Recycling::default(),
            statement_cache: 256,
            unnamed_statements: false,
            statement_timeout: None,
            connect_timeout: ConnectTimeout::Unset,
            #[cfg(feature = "tls-rustls")]
            tls: None,
        }
    }

    /// Whether TLS is configured.
    pub(crate) fn tls_configured(&self) -> bool {
        #[cfg(feature = "tls-rustls")]
        return self.tls.is_some();
        #[cfg(not(feature = "tls-rustls"))]
        false
    }

    /// Parses a DSN: a URL (`postgresql://user:password@host:port/dbname?option=value`) or
    /// `key=value` pairs (`host=localhost user=app dbname=shop`). Several hosts may be
    /// given (`host=a,b`); they are tried in order, each within `connect_timeout=` seconds
    /// when it is set (see [`connect_timeout`](PgConfig::connect_timeout)). Without a user,
    /// the `USER` environment variable (or `postgres`) is used.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] describing what is wrong, without echoing the DSN (it may hold a
    /// password).
    ///
    /// # Examples
    ///
    /// ```
    /// use momopool_pg::PgConfig;
    ///
    /// assert!(PgConfig::from_dsn("host=/var/run/postgresql dbname=shop").is_ok());
    /// assert!(PgConfig::from_dsn("postgresql://u:pw@host:notaport/db").is_err());
    /// ```
    pub fn from_dsn(dsn: &str) -> Result<Self, Error> {
        let pg = tokio_postgres::Config::from_str(dsn)
            .map_err(|e| Error::Config(format!("invalid connection string: {e}")))?;
        let mut config = PgConfig::from_pg(pg);
        config.fill_defaults();
        Ok(config)
    }

    /// Reads the configuration from the environment: `DATABASE_URL` when set, otherwise the
    /// libpq variables `PGHOST`, `PGHOSTADDR`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`,
    /// `PGAPPNAME`, `PGOPTIONS`, `PGCONNECT_TIMEOUT`, `PGSSLMODE` and `PGTARGETSESSIONATTRS`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when a variable holds an invalid value, including a `PGSSLMODE`
    /// other than `disable`, `prefer` or `require` (the modes tokio-postgres knows), and a
    /// `PGHOSTADDR` whose count of addresses differs from `PGHOST`'s count of hosts.
    ///
    /// # Examples
    ///
    /// ```
    /// let config = momopool_pg::PgConfig::from_env();
    /// # drop(config);
    /// ```
    pub fn from_env() -> Result<Self, Error> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Like [`from_env`](PgConfig::from_env), reading variables through `lookup`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when a variable holds an invalid value.
    ///
    /// # Examples
    ///
    /// ```
    /// use momopool_pg::PgConfig;
    ///
    /// let vars = [("PGHOST", "db.internal"), ("PGPORT", "6432"), ("PGUSER", "app")];
    /// let config = PgConfig::from_vars(|name| {
    ///     vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    /// })
    /// .unwrap();
    /// assert_eq!(config.ports(), &[6432]);
    ///
    /// // An sslmode that cannot be honoured is an error, not a silent downgrade.
    /// let err = PgConfig::from_vars(|name| (name == "PGSSLMODE").then(|| "verify-full".into()));
    /// assert!(matches!(err, Err(momopool_pg::Error::Config(_))));
    /// ```
    pub fn from_vars(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        if let Some(url) = lookup("DATABASE_URL").filter(|u| !u.is_empty()) {
            return Self::from_dsn(&url);
        }
        let mut pg = tokio_postgres::Config::new();
        if let Some(hosts) = lookup("PGHOST") {
            for host in hosts.split(',').filter(|h| !h.is_empty()) {
                pg.host(host);
            }
        }
        if let Some(addrs) = lookup("PGHOSTADDR") {
            for addr in addrs.split(',').filter(|a| !a.is_empty()) {
                let ip = addr.trim().parse::<std::net::IpAddr>().map_err(|_| {
                    Error::Config(format!("PGHOSTADDR: `{addr}` is not an IP address"))
                })?;
                pg.hostaddr(ip);
            }
        }
        let (hosts, addrs) = (pg.get_hosts().len(), pg.get_hostaddrs().len());
        if hosts > 0 && addrs > 0 && hosts != addrs {
            return Err(Error::Config(format!(
                "PGHOST names {hosts} hosts but PGHOSTADDR {addrs} addresses"
            )));
        }
        if let Some(ports) = lookup("PGPORT") {
            for port in ports.split(',').filter(|p| !p.is_empty()) {
                let port = port
                    .trim()
                    .parse::<u16>()
                    .map_err(|_| Error::Config(format!("PGPORT: `{port}` is not a port")))?;
                pg.port(port);
            }
        }
        if let Some(user) = lookup("PGUSER") {
            pg.user(&user);
        }
        if let Some(password) = lookup("PGPASSWORD") {
            pg.password(password);
        }
        if let Some(dbname) = lookup("PGDATABASE") {
            pg.dbname(&dbname);
        }
        if let Some(name) = lookup("PGAPPNAME") {
            pg.application_name(&name);
        }
        if let Some(options) = lookup("PGOPTIONS") {
            pg.options(&options);
        }
        let mut config = PgConfig::from_pg(pg);
        if let Some(secs) = lookup("PGCONNECT_TIMEOUT") {
            let secs = secs.trim().parse::<u64>().map_err(|_| {
                Error::Config(format!(
                    "PGCONNECT_TIMEOUT: `{secs}` is not a number of seconds"
                ))
            })?;
            config.connect_timeout = match secs {
                0 => ConnectTimeout::Never,
                secs => ConnectTimeout::PerHost(Duration::from_secs(secs)),
            };
        }
        if let Some(mode) = lookup("PGSSLMODE") {
            let mode = match mode.trim() {
                "disable" => SslMode::Disable,
                "prefer" => SslMode::Prefer,
                "require" => SslMode::Require,
                other => {
                    return Err(Error::Config(format!(
                        "PGSSLMODE: `{other}` is not supported (disable, prefer, require)"
                    )));
                }
            };
            config.pg.ssl_mode(mode);
        }
        if let Some(attrs) = lookup("PGTARGETSESSIONATTRS") {
            let attrs = match attrs.trim() {
                "any" => TargetSessionAttrs::Any,
                "read-write" => TargetSessionAttrs::ReadWrite,
                other => {
                    return Err(Error::Config(format!(
                        "PGTARGETSESSIONATTRS: `{other}` is not supported (any, read-write)"
                    )));
                }
            };
            config.pg.target_session_attrs(attrs);
        }
        config.fill_defaults();
        Ok(config)
    }

    fn fill_defaults(&mut self) {
        if self.pg.get_user().is_none() {
            let user = std::env::var("USER").unwrap_or_else(|_| "postgres".to_string());
            self.pg.user(&user);
        }
        if self.pg.get_hosts().is_empty() && self.pg.get_hostaddrs().is_empty() {
            self.pg.host("localhost");
        }
    }

    /// Statements run on every new connection before it is first used (Momoko's
    /// `setsession`): `SET search_path ...`, `SET TIME ZONE ...` and the like.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), momopool_pg::Error> {
    /// use momopool_pg::{PgConfig, PgPool};
    ///
    /// let config = PgConfig::from_dsn("postgresql://app@127.0.0.1/shop")?
    ///     .session(["SET TIME ZONE 'UTC'", "SET search_path TO shop, public"]);
    /// let pool = PgPool::builder(config).build_eager().await?;
    /// let zone: String = pool.query_one("SHOW TIME ZONE", &[]).await?.get(0);
    /// assert_eq!(zone, "UTC");
    /// # Ok(()) }
    /// ```
    pub fn session<I, S>(mut self, statements: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.session = statements.into_iter().map(Into::into).collect();
        self
    }

    /// How connections are recycled when the pool checks them.
    ///
    /// # Examples
    ///
    /// ```
    /// use momopool_pg::{PgConfig, Recycling};
    /// let config = PgConfig::default().recycling(Recycling::Clean);
    /// # drop(config);
    /// ```
    pub fn recycling(mut self, recycling: Recycling) -> Self {
        self.recycling = recycling;
        self
    }

    /// How many prepared statements each connection keeps (least recently used ones are
    /// closed first); 0 prepares every statement afresh.
    ///
    /// # Examples
    ///
    /// ```
    /// let config = momopool_pg::PgConfig::default().statement_cache(1024);
    /// # drop(config);
    /// ```
    pub fn statement_cache(mut self, capacity: usize) -> Self {
        self.statement_cache = capacity;
        self
    }

    /// Never create a named prepared statement: every statement goes to the server as an
    /// unnamed one, parsed, bound and run in a single round trip, as PgBouncer's transaction
    /// pooling requires. The statement cache is not used. Parameter types are inferred from
    /// the Rust values (integers, floats, booleans, text, `bytea`, JSON(B), arrays of those,
    /// and the date, time, UUID and network types tokio-postgres knows); a parameter of
    /// another type is an [`Error::InvalidInput`]. Three exceptions, named statements that
    /// tokio-postgres prepares itself: `COPY` through
    /// [`Connection::copy_in`](crate::Connection::copy_in) and
    /// [`copy_out`](crate::Connection::copy_out), and the portal of a
    /// [`Connection::cursor`](crate::Connection::cursor); both run inside a transaction
    /// there, or should, which keeps them on one server connection behind PgBouncer. And
    /// the first time a connection meets a result column of a type that is not built in (an
    /// enum, a composite, a domain, `hstore`), tokio-postgres looks the type up with a query
    /// it prepares by name and keeps for the connection's life; behind PgBouncer's
    /// transaction pooling that statement may later be missing on another server
    /// connection, so cast such columns to a built-in type (`::text`) there.
    ///
    /// # Examples
    ///
    /// ```
    /// let config = momopool_pg::PgConfig::default().unnamed_statements(true);
    /// # drop(config);
    /// ```
    pub fn unnamed_statements(mut self, unnamed: bool) -> Self {
        self.unnamed_statements = unnamed;
        self
    }

    /// A deadline for every statement run through the pool's calls; at the deadline a cancel
    /// request is sent and the caller gets [`Error::StatementTimeout`] (for a transaction
    /// whose `COMMIT` had not been sent yet, nor a statement of its own that may end it,
    /// [`Error::TransactionTimeout`]: nothing was committed). `None` (the default) waits as long as the statement runs.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let config = momopool_pg::PgConfig::default().statement_timeout(Duration::from_secs(5));
    /// # drop(config);
    /// ```
    pub fn statement_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.statement_timeout = timeout.into();
        self
    }

    /// How long each host may take to accept a connection, as libpq's `connect_timeout`:
    /// TCP, TLS, startup, authentication and the session statements. A host that does not
    /// make it in time fails with [`Error::ConnectTimeout`] (inside [`Error::Connect`]) and
    /// the next host is tried. It overrides a DSN's `connect_timeout=` and `PGCONNECT_TIMEOUT`.
    ///
    /// Without one (the default), a pool gives each host but the last an equal share of what
    /// is left of its create timeout, and a standalone
    /// [`Connection::connect`](crate::Connection::connect) does the same within 10 s in all.
    /// With one, a pool still gives each host but the last at most that share, so a silent
    /// host cannot use a create timeout shorter than this one up. `None` sets no limit per
    /// host, and none for a standalone connect; a pool's create timeout still applies, and is
    /// still shared between the hosts.
    ///
    /// A DSN's `connect_timeout=0` reads as no setting (tokio-postgres drops it), while
    /// `PGCONNECT_TIMEOUT=0` and `connect_timeout(None)` mean no limit.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let config = momopool_pg::PgConfig::from_dsn("host=primary,standby user=app")
    ///     .unwrap()
    ///     .connect_timeout(Duration::from_secs(3)); // each host gets 3 s
    /// # drop(config);
    /// ```
    pub fn connect_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.connect_timeout = match timeout.into() {
            Some(limit) => ConnectTimeout::PerHost(limit),
            None => ConnectTimeout::Never,
        };
        self
    }

    /// The limit each host gets, if one is configured.
    pub(crate) fn per_host_timeout(&self) -> Option<Duration> {
        match self.connect_timeout {
            ConnectTimeout::Unset => self.pg.get_connect_timeout().copied(),
            ConnectTimeout::PerHost(limit) => Some(limit),
            ConnectTimeout::Never => None,
        }
    }

    /// How long a standalone connect may take in all, over every host.
    pub(crate) fn standalone_limit(&self) -> Option<Duration> {
        match self.connect_timeout {
            ConnectTimeout::Unset if self.per_host_timeout().is_none() => {
                Some(STANDALONE_CONNECT_LIMIT)
            }
            _ => None,
        }
    }

    /// Uses TLS, trusting the certificates in `pem` (one or more PEM `CERTIFICATE` blocks) as
    /// roots. Whether TLS is required follows the DSN's `sslmode`: `prefer` (the default) uses
    /// it when the server offers it, `require` fails without it, `disable` never uses it.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `pem` holds no usable certificate.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let pem = std::fs::read("ca.pem").unwrap();
    /// let config = momopool_pg::PgConfig::from_dsn("host=db.internal user=app sslmode=require")
    ///     .unwrap()
    ///     .tls_roots_pem(&pem)
    ///     .unwrap();
    /// # drop(config);
    /// ```
    #[cfg(feature = "tls-rustls")]
    pub fn tls_roots_pem(self, pem: &[u8]) -> Result<Self, Error> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| Error::Config(format!("invalid PEM certificate: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| Error::Config(format!("unusable root certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(Error::Config("no certificate found in the PEM data".into()));
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(format!("TLS setup: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(self.tls_config(tls))
    }

    /// Uses TLS with a rustls configuration of your own (client certificates, custom
    /// verification). `sslmode` applies as for [`tls_roots_pem`](PgConfig::tls_roots_pem).
    ///
    /// rustls's type appears here on purpose: a TLS configuration is rustls's to describe.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn f(tls: rustls::ClientConfig) {
    /// let config = momopool_pg::PgConfig::default().tls_config(tls);
    /// # }
    /// ```
    #[cfg(feature = "tls-rustls")]
    pub fn tls_config(mut self, config: rustls::ClientConfig) -> Self {
        self.tls = Some(std::sync::Arc::new(config));
        self
    }

    /// Sets the `application_name` reported to the server (visible in `pg_stat_activity`).
    ///
    /// # Examples
    ///
    /// ```
    /// let config = momopool_pg::PgConfig::default().application_name("billing");
    /// assert_eq!(config.get_application_name(), Some("billing"));
    /// ```
    pub fn application_name(mut self, name: &str) -> Self {
        self.pg.application_name(name);
        self
    }

    /// The `application_name`, if set.
    ///
    /// # Examples
    ///
    /// ```
    /// use momopool_pg::PgConfig;
    ///
    /// let config = PgConfig::from_dsn("host=localhost application_name=reports").unwrap();
    /// assert_eq!(config.get_application_name(), Some("reports"));
    /// assert_eq!(PgConfig::from_dsn("host=localhost").unwrap().get_application_name(), None);
    /// ```
    pub fn get_application_name(&self) -> Option<&str> {
        self.pg.get_application_name()
    }

    /// Sets the password.
    ///
    /// # Examples
    ///
    /// ```
    /// let config = momopool_pg::PgConfig::default().password("s3cret");
    /// assert!(!format!("{config:?}").contains("s3cret"));
    /// ```
    pub fn password(mut self, password: impl AsRef<[u8]>) -> Self {
        self.pg.password(password);
        self
    }

    /// The configured ports.
    ///
    /// # Examples
    ///
    /// ```
    /// use momopool_pg::PgConfig;
    ///
    /// let config = PgConfig::from_dsn("host=primary,standby port=5432,5433").unwrap();
    /// assert_eq!(config.ports(), &[5432, 5433]);
    /// ```
    pub fn ports(&self) -> &[u16] {
        self.pg.get_ports()
    }

    /// The user name.
    ///
    /// # Examples
    ///
    /// ```
    /// let config = momopool_pg::PgConfig::from_dsn("user=app host=localhost").unwrap();
    /// assert_eq!(config.user(), Some("app"));
    /// ```
    pub fn user(&self) -> Option<&str> {
        self.pg.get_user()
    }

    /// The tokio-postgres configuration underneath, for settings not mirrored here. Its TCP
    /// settings (`keepalives`, `keepalives_idle`, `keepalives_interval`, `keepalives_retries`,
    /// and `tcp_user_timeout` on Linux) are applied to the TCP sockets the runtime opens, as
    /// tokio-postgres's own connect would; its `connect_timeout` is the per-host
    /// [`connect_timeout`](PgConfig::connect_timeout) unless that is set here.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let mut config = momopool_pg::PgConfig::default();
    /// // Probe an idle connection after a minute of silence rather than tokio-postgres's 2 hours.
    /// config.pg_mut().keepalives_idle(Duration::from_secs(60));
    /// ```
    pub fn pg_mut(&mut self) -> &mut tokio_postgres::Config {
        &mut self.pg
    }

    /// The places to try, in order, as `(host, port)`.
    pub(crate) fn targets(&self) -> Vec<(Target, u16)> {
        let ports = self.pg.get_ports();
        let port_for = |i: usize| {
            ports
                .get(i)
                .or_else(|| {
                    if ports.len() == 1 {
                        ports.first()
                    } else {
                        None
                    }
                })
                .copied()
                .unwrap_or(5432)
        };
        let hostaddrs = self.pg.get_hostaddrs();
        let hosts = self.pg.get_hosts();
        let count = hosts.len().max(hostaddrs.len());
        (0..count)
            .map(|i| {
                let target = match (hostaddrs.get(i), hosts.get(i)) {
                    // The host name, if any, is still the name TLS checks the certificate for.
                    (Some(addr), host) => Target::Addr(
                        *addr,
                        match host {
                            Some(Host::Tcp(name)) => Some(name.clone()),
                            _ => None,
                        },
                    ),
                    (None, Some(Host::Tcp(name))) => Target::Name(name.clone()),
                    #[cfg(unix)]
                    (None, Some(Host::Unix(dir))) => Target::Unix(dir.clone()),
                    (None, None) => Target::Name("localhost".into()),
                };
                (target, port_for(i))
            })
            .collect()
    }
}

/// One place a connection can be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// An address (`hostaddr`), with the host name given beside it, which TLS verifies.
    Addr(std::net::IpAddr, Option<String>),
    Name(String),
    Unix(std::path::PathBuf),
}

impl Target {
    pub(crate) fn describe(&self, port: u16) -> String {
        match self {
            Target::Addr(addr, _) => format!("{addr}:{port}"),
            Target::Name(name) => format!("{name}:{port}"),
            Target::Unix(dir) => format!("{}/.s.PGSQL.{port}", dir.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsn_errors_do_not_echo_the_password() {
        let err = PgConfig::from_dsn("postgresql://app:hunter2@host:notaport/db").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = PgConfig::from_dsn("host=x password=hunter2 nonsense").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn env_prefers_database_url() {
        let config = PgConfig::from_vars(|name| match name {
            "DATABASE_URL" => Some("postgresql://u@h:7777/d".into()),
            "PGPORT" => Some("1".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(config.ports(), &[7777]);
    }

    #[test]
    fn env_rejects_bad_values() {
        let err = PgConfig::from_vars(|name| (name == "PGPORT").then(|| "x".into())).unwrap_err();
        assert!(err.to_string().contains("PGPORT"));
    }

    #[test]
    fn dsn_connect_timeout_is_per_host() {
        let secs = Duration::from_secs;
        let config = PgConfig::from_dsn("host=a,b user=u connect_timeout=7").unwrap();
        assert_eq!(config.per_host_timeout(), Some(secs(7)));
        assert_eq!(
            config.standalone_limit(),
            None,
            "libpq: no limit over all hosts"
        );
        let config = PgConfig::from_dsn("postgresql://u@a,b/db?connect_timeout=2").unwrap();
        assert_eq!(config.per_host_timeout(), Some(secs(2)));

        // The builder overrides the DSN, either way.
        let config = PgConfig::from_dsn("host=a connect_timeout=7")
            .unwrap()
            .connect_timeout(secs(1));
        assert_eq!(config.per_host_timeout(), Some(secs(1)));
        let config = PgConfig::from_dsn("host=a connect_timeout=7")
            .unwrap()
            .connect_timeout(None);
        assert_eq!(config.per_host_timeout(), None);
        assert_eq!(config.standalone_limit(), None);

        // None at all (0 is none, as in libpq): no per-host limit, 10 s for a standalone
        // connect.
        for dsn in ["host=a", "host=a connect_timeout=0"] {
            let config = PgConfig::from_dsn(dsn).unwrap();
            assert_eq!(config.per_host_timeout(), None, "{dsn}");
            assert_eq!(config.standalone_limit(), Some(secs(10)), "{dsn}");
        }
        assert!(PgConfig::from_dsn("host=a connect_timeout=soon").is_err());
    }

    #[test]
    fn env_connect_timeout_is_per_host() {
        let with = |value: &'static str| {
            PgConfig::from_vars(move |name| (name == "PGCONNECT_TIMEOUT").then(|| value.into()))
        };
        let config = with("5").unwrap();
        assert_eq!(config.per_host_timeout(), Some(Duration::from_secs(5)));
        assert_eq!(config.standalone_limit(), None);
        let config = with("0").unwrap();
        assert_eq!(config.per_host_timeout(), None);
        assert_eq!(
            config.standalone_limit(),
            None,
            "0 waits as long as it takes"
        );
        assert!(with("soon").is_err());
        let config = PgConfig::from_vars(|name| {
            (name == "DATABASE_URL").then(|| "postgresql://u@h/d?connect_timeout=3".into())
        })
        .unwrap();
        assert_eq!(config.per_host_timeout(), Some(Duration::from_secs(3)));
    }

    /// A lookup over fixed variables.
    fn vars(pairs: &[(&str, &str)]) -> Result<PgConfig, Error> {
        PgConfig::from_vars(|name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn env_sslmode() {
        assert_eq!(vars(&[]).unwrap().pg.get_ssl_mode(), SslMode::Prefer);
        for (value, mode) in [
            ("disable", SslMode::Disable),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
        ] {
            let config = vars(&[("PGSSLMODE", value)]).unwrap();
            assert_eq!(config.pg.get_ssl_mode(), mode, "{value}");
        }
        // Modes tokio-postgres cannot honour are refused rather than weakened.
        for value in ["allow", "verify-ca", "verify-full", "REQUIRE", ""] {
            let err = vars(&[("PGSSLMODE", value)]).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{value}: {err:?}");
            assert!(err.to_string().contains("PGSSLMODE"), "{err}");
        }
        // DATABASE_URL wins whole, as for every other variable.
        let config = vars(&[
            ("DATABASE_URL", "postgresql://u@h/d?sslmode=disable"),
            ("PGSSLMODE", "require"),
        ])
        .unwrap();
        assert_eq!(config.pg.get_ssl_mode(), SslMode::Disable);
    }

    #[test]
    fn env_hostaddr() {
        let config = vars(&[("PGHOSTADDR", "127.0.0.1,::1"), ("PGPORT", "6432")]).unwrap();
        assert_eq!(
            config.targets(),
            [
                (Target::Addr("127.0.0.1".parse().unwrap(), None), 6432),
                (Target::Addr("::1".parse().unwrap(), None), 6432),
            ]
        );
        // With PGHOST too, the address is what is connected to.
        let config = vars(&[("PGHOST", "db.internal"), ("PGHOSTADDR", "10.1.2.3")]).unwrap();
        assert_eq!(
            config.targets(),
            [(
                Target::Addr("10.1.2.3".parse().unwrap(), Some("db.internal".into())),
                5432
            )]
        );
        assert_eq!(config.pg.get_hosts().len(), 1);

        let err = vars(&[("PGHOSTADDR", "db.internal")]).unwrap_err();
        assert!(err.to_string().contains("PGHOSTADDR"), "{err}");
        let err = vars(&[("PGHOST", "a,b"), ("PGHOSTADDR", "10.1.2.3")]).unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err:?}");
    }

    #[test]
    fn targets_pair_hosts_with_ports() {
        let config = PgConfig::from_dsn("host=a,b port=1,2 user=u").unwrap();
        let targets = config.targets();
        assert_eq!(targets[0], (Target::Name("a".into()), 1));
        assert_eq!(targets[1], (Target::Name("b".into()), 2));
        let config = PgConfig::from_dsn("host=/tmp user=u").unwrap();
        assert_eq!(config.targets()[0], (Target::Unix("/tmp".into()), 5432));
    }
}
