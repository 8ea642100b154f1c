//! The PostgreSQL servers the tests run against.
//!
//! [`shared`] is one throwaway cluster per test binary (or the server `DATABASE_URL` names):
//! tests on it must not disturb each other, so each uses its own tables and its own
//! `application_name`. [`destructive`] is a second throwaway cluster, always started by the
//! tests themselves (a server we did not start is never restarted or killed), handed to one
//! test at a time.
//!
//! Without PostgreSQL server binaries and without `DATABASE_URL`, the tests fail with a
//! message saying what to install or set: they never skip silently.

use momopool_pg::PgConfig;
use momopool_pg::throwaway::Cluster;
use std::sync::{Mutex, MutexGuard, OnceLock};

/// A PostgreSQL server for tests.
pub struct Server {
    url: String,
    cluster: Option<Cluster>,
}

impl std::fmt::Debug for Server {
    // The URL may come from `DATABASE_URL` with a password in it: show the parsed
    // configuration, whose `Debug` leaves the password out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("config", &PgConfig::from_dsn(&self.url).ok())
            .field("cluster", &self.cluster)
            .finish()
    }
}

/// The role with a password on throwaway clusters (scram-sha-256 over TCP).
pub const PASSWORD_USER: &str = "momopool_pw";
/// Its password.
pub const PASSWORD: &str = "correct horse";

impl Server {
    fn start() -> Result<Server, String> {
        let cluster = Cluster::builder()
            .password_user(PASSWORD_USER, PASSWORD)
            .start()
            .map_err(|e| format!("cannot start a throwaway PostgreSQL cluster: {e}"))?;
        Ok(Server {
            url: cluster.url(),
            cluster: Some(cluster),
        })
    }

    /// The server's URL (superuser, `postgres` database).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A configuration for this server, with `application_name` set to `app` so the test can
    /// find its own backends in `pg_stat_activity`.
    pub fn config(&self, app: &str) -> PgConfig {
        PgConfig::from_dsn(&self.url)
            .expect("the test server's URL parses")
            .application_name(app)
    }

    /// The throwaway cluster, when the tests started this server.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.as_ref()
    }
}

/// The server shared by the non-destructive tests of this binary.
///
/// # Panics
///
/// When `DATABASE_URL` is unset and no cluster can be started, with the reason.
pub fn shared() -> &'static Server {
    static SHARED: OnceLock<Result<Server, String>> = OnceLock::new();
    let server = SHARED.get_or_init(|| match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => Ok(Server { url, cluster: None }),
        _ => Server::start(),
    });
    match server {
        Ok(server) => server,
        Err(why) => panic!("{why}"),
    }
}

/// A cluster of the tests' own, for tests that restart, stop, pause or kill the server. One
/// test at a time holds it.
///
/// # Panics
///
/// When no cluster can be started (a server named by `DATABASE_URL` is never used here).
pub fn destructive() -> MutexGuard<'static, Server> {
    static DESTRUCTIVE: OnceLock<Result<Mutex<Server>, String>> = OnceLock::new();
    match DESTRUCTIVE.get_or_init(|| Server::start().map(Mutex::new)) {
        Ok(server) => {
            let guard = server.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(cluster) = guard.cluster() {
                // A previous test may have left it stopped or paused.
                let _ = cluster.resume();
                if !cluster.is_running() {
                    cluster
                        .start_again()
                        .expect("restart the destructive cluster");
                }
            }
            guard
        }
        Err(why) => panic!("{why}"),
    }
}

/// A cluster of the tests' own that answers as a read-only server (every session starts with
/// `default_transaction_read_only = on`), for `target_session_attrs` tests. Shared, never
/// modified.
///
/// # Panics
///
/// When no cluster can be started.
pub fn read_only() -> &'static Server {
    static READ_ONLY: OnceLock<Result<Server, String>> = OnceLock::new();
    started(&READ_ONLY, "read-only", || {
        Cluster::builder().setting("default_transaction_read_only", "on")
    })
}

/// A cluster of the tests' own that offers TLS with a self-signed certificate for
/// `localhost` and `127.0.0.1`; [`tls_certificate_pem`] is what clients must trust.
///
/// # Panics
///
/// When no cluster can be started or the certificate cannot be made.
pub fn tls() -> &'static Server {
    static TLS: OnceLock<Result<Server, String>> = OnceLock::new();
    started(&TLS, "TLS", || {
        Cluster::builder().ssl(&tls_material().0, &tls_material().1)
    })
}

/// The server in `slot`, started once from `builder`.
fn started(
    slot: &'static OnceLock<Result<Server, String>>,
    what: &str,
    builder: impl FnOnce() -> momopool_pg::throwaway::ClusterBuilder,
) -> &'static Server {
    let server = slot.get_or_init(|| {
        let cluster = builder()
            .start()
            .map_err(|e| format!("cannot start a {what} throwaway cluster: {e}"))?;
        Ok(Server {
            url: cluster.url(),
            cluster: Some(cluster),
        })
    });
    match server {
        Ok(server) => server,
        Err(why) => panic!("{why}"),
    }
}

/// The certificate (PEM) of the [`tls`] cluster.
pub fn tls_certificate_pem() -> &'static str {
    &tls_material().0
}

fn tls_material() -> &'static (String, String) {
    static MATERIAL: OnceLock<(String, String)> = OnceLock::new();
    MATERIAL.get_or_init(|| {
        let certified =
            rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
                .expect("a self-signed certificate");
        (certified.cert.pem(), certified.key_pair.serialize_pem())
    })
}

/// Creates `table` with `columns` through `pool`, dropping first what an earlier run may have
/// left under that name.
///
/// # Panics
///
/// If the server refuses either statement.
pub async fn fresh_table(pool: &momopool_pg::PgPool, table: &str, columns: &str) {
    pool.batch_execute(&format!(
        "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} ({columns})"
    ))
    .await
    .unwrap_or_else(|e| panic!("creating {table}: {e}"));
}

/// How many rows `table` holds, read through `pool`.
///
/// # Panics
///
/// If the server refuses the count.
pub async fn count_rows(pool: &momopool_pg::PgPool, table: &str) -> i64 {
    pool.query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap_or_else(|e| panic!("counting {table}: {e}"))
        .get(0)
}

/// Drops `table` through `pool`, at the end of a test.
///
/// # Panics
///
/// If the server refuses.
pub async fn drop_table(pool: &momopool_pg::PgPool, table: &str) {
    pool.batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap_or_else(|e| panic!("dropping {table}: {e}"));
}

/// Ends the backend `pid` through `pool` and waits (up to 5 s) until it has exited.
///
/// # Panics
///
/// If the server refuses, or no backend `pid` was running.
pub async fn terminate(pool: &momopool_pg::PgPool, pid: i32) {
    let ended: bool = pool
        .query_one("SELECT pg_terminate_backend($1, 5000)", &[&pid])
        .await
        .unwrap_or_else(|e| panic!("terminating backend {pid}: {e}"))
        .get(0);
    assert!(ended, "backend {pid} was running");
}
