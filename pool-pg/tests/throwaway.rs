//! Tests of `momopool_pg::throwaway` against the PostgreSQL binaries
//! installed on the machine.

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use momopool_pg::throwaway::{Cluster, ClusterError, StopMode, find_bindir};

const APP_USER: &str = "momopool_app";
/// Needs quoting in SQL and percent-encoding in URLs.
const APP_PASSWORD: &str = "s3cr:t/p@ss w'rd\"%";

/// One cluster shared by the tests that do not stop or pause the server. It
/// lives in a static and is never dropped; the watchdog removes it after the
/// test process exits.
fn shared() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        Cluster::builder()
            .setting("work_mem", "8MB")
            .setting("momopool.test_setting", "it's")
            .password_user(APP_USER, APP_PASSWORD)
            .start()
            .unwrap_or_else(|e| panic!("could not start the shared cluster: {e}"))
    })
}

/// Runs the `psql` client (as the current user) against a connection URL.
fn client_psql(url: &str, password: Option<&str>, sql: &str) -> Output {
    let bindir = find_bindir().expect("PostgreSQL binaries");
    let mut cmd = Command::new(bindir.join("psql"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(&key);
        }
    }
    cmd.args([
        "-X",
        "-w",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        sql,
        "-d",
        url,
    ])
    .env("PGCONNECT_TIMEOUT", "5")
    .env("PGPASSFILE", "/dev/null")
    .env("LC_ALL", "C")
    .stdin(Stdio::null());
    if let Some(password) = password {
        cmd.env("PGPASSWORD", password);
    }
    cmd.output().expect("could not run psql")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_owned()
}

/// The state letter of `/proc/<pid>/stat` (`None` when the process is gone).
fn proc_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// Alive and not a zombie.
fn process_alive(pid: u32) -> bool {
    proc_state(pid).is_some_and(|s| s != 'Z' && s != 'X')
}

fn wait_for(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    done()
}

/// The directory holding one cluster's `data`, `sock`, `owner.pid`, ...
fn cluster_dir(cluster: &Cluster) -> PathBuf {
    cluster
        .data_dir()
        .parent()
        .expect("cluster dir")
        .to_path_buf()
}

/// The pid of a process that has exited (and been reaped).
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().expect("spawn true");
    let pid = child.id();
    child.wait().expect("wait for true");
    pid
}

#[test]
fn shared_cluster_answers_queries() {
    let cluster = shared();
    assert_eq!(cluster.psql("select 1").unwrap(), "1");
    assert!(cluster.is_running());
    let pid = cluster.postmaster_pid().expect("postmaster.pid");
    assert!(process_alive(pid), "postmaster {pid} is not alive");

    assert_eq!(cluster.host(), "127.0.0.1");
    assert_eq!(cluster.superuser(), "postgres");
    assert_ne!(cluster.port(), 0);
    assert!(cluster.socket_dir().is_dir());
    assert!(
        cluster
            .socket_dir()
            .join(format!(".s.PGSQL.{}", cluster.port()))
            .exists()
    );
    assert!(cluster.data_dir().join("PG_VERSION").is_file());
    assert!(cluster.log_path().is_file());
    TcpStream::connect((cluster.host(), cluster.port())).expect("TCP connect");

    // Scripts with several statements print every result.
    let out = cluster
        .psql("create temporary table t (a int, b text);\ninsert into t values (1, 'x'), (2, 'y');\nselect a, b from t order by a;")
        .unwrap();
    assert_eq!(out, "1|x\n2|y");
}

#[test]
fn psql_errors_carry_stderr() {
    let err = shared().psql("select 1/0").unwrap_err();
    match &err {
        ClusterError::Psql { stderr, .. } => {
            assert!(stderr.contains("division by zero"), "{stderr}")
        }
        other => panic!("expected ClusterError::Psql, got {other:?}"),
    }
    assert!(err.to_string().starts_with("psql failed"), "{err}");
}

#[test]
fn settings_are_applied() {
    let cluster = shared();
    assert_eq!(cluster.psql("show work_mem").unwrap(), "8MB");
    assert_eq!(cluster.psql("show momopool.test_setting").unwrap(), "it's");
    assert_eq!(cluster.psql("show max_connections").unwrap(), "300");
    assert_eq!(cluster.psql("show fsync").unwrap(), "off");
    assert_eq!(cluster.psql("show listen_addresses").unwrap(), "127.0.0.1");
    assert_eq!(
        cluster.psql("show unix_socket_directories").unwrap(),
        cluster.socket_dir().to_string_lossy()
    );
    assert_eq!(cluster.psql("show server_encoding").unwrap(), "UTF8");
}

#[test]
fn urls() {
    let cluster = shared();
    let port = cluster.port();
    assert_eq!(
        cluster.url(),
        format!("postgresql://postgres@127.0.0.1:{port}/postgres")
    );
    assert_eq!(
        cluster.url_for("a b", Some("p@ss:w/rd%"), "my db"),
        format!("postgresql://a%20b:p%40ss%3Aw%2Frd%25@127.0.0.1:{port}/my%20db")
    );
    assert_eq!(
        cluster.url_for("app", None, "postgres"),
        format!("postgresql://app@127.0.0.1:{port}/postgres")
    );

    let out = client_psql(&cluster.url(), None, "select current_user");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "postgres");
}

#[test]
fn password_user_needs_its_password() {
    let cluster = shared();

    let wrong = client_psql(
        &cluster.url_for(APP_USER, Some("wrong"), "postgres"),
        None,
        "select 1",
    );
    assert!(!wrong.status.success());
    assert!(
        stderr(&wrong).contains("password authentication failed"),
        "{}",
        stderr(&wrong)
    );

    let missing = client_psql(
        &cluster.url_for(APP_USER, None, "postgres"),
        None,
        "select 1",
    );
    assert!(!missing.status.success(), "connected without a password");

    let env = client_psql(
        &cluster.url_for(APP_USER, None, "postgres"),
        Some(APP_PASSWORD),
        "select current_user",
    );
    assert!(env.status.success(), "{}", stderr(&env));
    assert_eq!(stdout(&env), APP_USER);

    let inline = client_psql(
        &cluster.url_for(APP_USER, Some(APP_PASSWORD), "postgres"),
        None,
        "select current_user",
    );
    assert!(inline.status.success(), "{}", stderr(&inline));
    assert_eq!(stdout(&inline), APP_USER);

    let stored = cluster
        .psql(&format!(
            "select left(rolpassword, 14) from pg_authid where rolname = '{APP_USER}'"
        ))
        .unwrap();
    assert_eq!(stored, "SCRAM-SHA-256$");
}

#[test]
fn rejected_role_is_rejected_by_pg_hba() {
    let cluster = shared();
    let out = client_psql(
        &cluster.url_for("momopool_rejected", None, "postgres"),
        None,
        "select 1",
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("pg_hba.conf rejects connection"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn missing_binaries_are_reported() {
    let err = Cluster::builder()
        .bindir("/nonexistent/momopool/bin")
        .start()
        .unwrap_err();
    assert!(matches!(err, ClusterError::BinariesNotFound), "{err:?}");
    assert_eq!(
        err.to_string(),
        "PostgreSQL server binaries (initdb, pg_ctl) not found: install them \
         (Debian/Ubuntu: apt-get install postgresql) or set DATABASE_URL to an existing server"
    );
}

#[test]
fn find_bindir_finds_the_server_binaries() {
    let dir = find_bindir().unwrap();
    for tool in ["initdb", "pg_ctl", "postgres", "psql"] {
        assert!(dir.join(tool).is_file(), "{} has no {tool}", dir.display());
    }
}

#[test]
fn invalid_options_are_rejected() {
    let err = Cluster::builder()
        .setting("work_mem", "1MB\nfsync = on")
        .start()
        .unwrap_err();
    assert!(matches!(err, ClusterError::InvalidOption { .. }), "{err:?}");
    let err = Cluster::builder()
        .setting("bad name", "1")
        .start()
        .unwrap_err();
    assert!(matches!(err, ClusterError::InvalidOption { .. }), "{err:?}");
    let err = Cluster::builder()
        .password_user("postgres", "x")
        .start()
        .unwrap_err();
    assert!(matches!(err, ClusterError::InvalidOption { .. }), "{err:?}");
}

/// Sends an SSLRequest and returns the one-byte answer, if one arrives within
/// `timeout`.
fn ssl_request(stream: &mut TcpStream, timeout: Duration) -> Option<u8> {
    stream.set_read_timeout(Some(timeout)).unwrap();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(1) => Some(byte[0]),
        Ok(_) => None,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
        Err(e) => panic!("read failed: {e}"),
    }
}

#[test]
fn lifecycle_restart_stop_pause_kill() {
    let cluster = Cluster::start().unwrap();
    let dir = cluster_dir(&cluster);
    let port = cluster.port();
    assert_eq!(cluster.psql("select 1").unwrap(), "1");
    cluster
        .psql("create table survivor (x int); insert into survivor values (42)")
        .unwrap();

    // Restarts keep the port and the data.
    for mode in [StopMode::Fast, StopMode::Immediate, StopMode::Smart] {
        let before = cluster.postmaster_pid().unwrap();
        cluster
            .restart(mode)
            .unwrap_or_else(|e| panic!("restart {mode:?}: {e}"));
        let after = cluster.postmaster_pid().unwrap();
        assert_ne!(before, after, "restart {mode:?} kept the postmaster");
        assert_eq!(cluster.port(), port);
        assert_eq!(
            cluster.psql("select x from survivor").unwrap(),
            "42",
            "after {mode:?}"
        );
    }

    // Stop and start again.
    let pid = cluster.postmaster_pid().unwrap();
    cluster.stop(StopMode::Fast).unwrap();
    assert!(!cluster.is_running());
    assert_eq!(cluster.postmaster_pid(), None);
    assert!(!process_alive(pid));
    assert!(cluster.psql("select 1").is_err());
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port still open"
    );
    cluster.stop(StopMode::Fast).unwrap(); // already stopped: no-op
    cluster.start_again().unwrap();
    assert!(cluster.is_running());
    assert_eq!(cluster.psql("select x from survivor").unwrap(), "42");

    // Pause: the kernel still accepts TCP connections, but nobody answers.
    let pid = cluster.postmaster_pid().unwrap();
    cluster.pause().unwrap();
    assert_eq!(proc_state(pid), Some('T'));
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect while paused");
    stream
        .write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .unwrap();
    assert_eq!(
        ssl_request(&mut stream, Duration::from_millis(300)),
        None,
        "answered while paused"
    );
    cluster.resume().unwrap();
    assert_ne!(proc_state(pid), Some('T'));
    let answer = ssl_request(&mut stream, Duration::from_secs(10));
    assert!(
        matches!(answer, Some(b'N' | b'S')),
        "no answer after resume: {answer:?}"
    );
    drop(stream);
    assert_eq!(cluster.psql("select 1").unwrap(), "1");

    // Signals to a backend: terminate a sleeping session.
    let url = cluster.url();
    let sleeper = thread::spawn(move || client_psql(&url, None, "select pg_sleep(30)"));
    let mut backend = None;
    wait_for(Duration::from_secs(10), || {
        backend = cluster
            .psql("select pid from pg_stat_activity where query = 'select pg_sleep(30)'")
            .ok()
            .and_then(|s| s.parse::<u32>().ok());
        backend.is_some()
    });
    let backend = backend.expect("the sleeping backend did not show up");
    cluster.signal(backend, "TERM").unwrap();
    let out = sleeper.join().unwrap();
    assert!(!out.status.success(), "the terminated session succeeded");
    assert!(
        stderr(&out).contains("terminating connection"),
        "{}",
        stderr(&out)
    );
    assert!(cluster.signal(backend, "NOT A SIGNAL").is_err());

    // Crash the postmaster, then bring it back.
    let pid = cluster.postmaster_pid().unwrap();
    cluster.kill_postmaster().unwrap();
    assert!(!cluster.is_running());
    assert!(!process_alive(pid));
    assert!(matches!(cluster.pause(), Err(ClusterError::NotRunning)));
    assert!(matches!(
        cluster.kill_postmaster(),
        Err(ClusterError::NotRunning)
    ));
    cluster.start_again().unwrap();
    assert_eq!(cluster.psql("select x from survivor").unwrap(), "42");

    // Crash it again and let Drop clean up after a dead postmaster.
    cluster.kill_postmaster().unwrap();
    assert!(!cluster.is_running());
    drop(cluster);
    assert!(!dir.exists(), "{} survived the drop", dir.display());
}

#[test]
fn stale_dirs_are_removed_and_drop_cleans_up() {
    // The shared cluster tells where the cluster directories live.
    let base = cluster_dir(shared()).parent().unwrap().to_path_buf();
    let me = std::process::id();

    let make = |name: &str, owner: &str| -> PathBuf {
        let dir = base.join(name);
        fs::create_dir_all(dir.join("data")).unwrap();
        fs::write(dir.join("data").join("PG_VERSION"), "15\n").unwrap();
        fs::write(dir.join("owner.pid"), owner).unwrap();
        dir
    };
    let dead = dead_pid();
    let stale = make(&format!("{dead}-0-stale"), &format!("{dead}\n"));
    // Our pid, but another start time: a previous process with the same pid.
    let reused = make(&format!("{me}-0-reused"), &format!("{me} 1\n"));
    // Our pid without a start time: alive, must stay.
    let alive = make(&format!("{me}-0-alive"), &format!("{me}\n"));

    let cluster = Cluster::start().unwrap();
    assert!(!stale.exists(), "stale dir of dead pid {dead} survived");
    assert!(!reused.exists(), "stale dir of a reused pid survived");
    assert!(alive.exists(), "dir of a live owner was removed");
    fs::remove_dir_all(&alive).unwrap();

    // A plain drop stops the server and removes everything.
    let dir = cluster_dir(&cluster);
    let pid = cluster.postmaster_pid().unwrap();
    let owner = fs::read_to_string(dir.join("owner.pid")).unwrap();
    assert_eq!(
        owner.split_whitespace().next(),
        Some(me.to_string().as_str())
    );
    drop(cluster);
    assert!(!dir.exists(), "{} survived the drop", dir.display());
    assert!(!process_alive(pid), "postmaster {pid} survived the drop");
}

const CHILD_ENV: &str = "MOMOPOOL_THROWAWAY_WATCHDOG_CHILD";

/// Run by `watchdog_cleans_up_after_the_process_exits` in a child process:
/// starts a cluster and exits without dropping it.
#[test]
#[ignore = "helper run in a child process by watchdog_cleans_up_after_the_process_exits"]
fn watchdog_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let cluster = Cluster::start().unwrap();
    println!("CLUSTER_DIR={}", cluster_dir(&cluster).display());
    println!("POSTMASTER_PID={}", cluster.postmaster_pid().unwrap());
    std::io::stdout().flush().unwrap();
    std::process::exit(0);
}

#[test]
fn watchdog_cleans_up_after_the_process_exits() {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "watchdog_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut finished = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            finished = true;
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    if !finished {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    assert!(finished, "child did not finish");
    let text = String::from_utf8_lossy(&out.stdout);
    let value = |key: &str| -> String {
        text.lines()
            .find_map(|l| l.find(key).map(|i| &l[i + key.len()..]))
            .unwrap_or_else(|| panic!("child printed no {key}: {text}\n{}", stderr(&out)))
            .to_owned()
    };
    let dir = PathBuf::from(value("CLUSTER_DIR="));
    let pid: u32 = value("POSTMASTER_PID=").parse().unwrap();
    assert!(out.status.success(), "child failed: {}", stderr(&out));

    let gone = wait_for(Duration::from_secs(15), || {
        !dir.exists() && !process_alive(pid)
    });
    assert!(
        gone,
        "watchdog did not clean up: dir exists {}, postmaster alive {}",
        Path::new(&dir).exists(),
        process_alive(pid)
    );
}

#[test]
fn builder_debug_leaves_secrets_out() {
    let builder = Cluster::builder()
        .password_user("app", "s3cret-password")
        .ssl("CERT PEM", "PRIVATE KEY PEM");
    let shown = format!("{builder:?}");
    assert!(shown.contains("app"), "{shown}");
    assert!(!shown.contains("s3cret-password"), "{shown}");
    assert!(!shown.contains("PRIVATE KEY PEM"), "{shown}");
}
