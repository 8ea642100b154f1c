//! pgbench, PostgreSQL's own load generator (C and libpq), as the server's ceiling on this
//! machine: the built-in select-only script, a script of one `SELECT 1`, and the same
//! statement pipelined.

use crate::cpu::{Sample, Usage};
use crate::harness::Outcome;
use crate::stats::Series;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How deep the pipelined script pipelines: T / P at T = 256, P = 8.
pub(crate) const PIPELINE_DEPTH: usize = 32;

/// What each pgbench client runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Script {
    /// `-S`: the built-in select-only script (one primary-key lookup in `pgbench_accounts`).
    SelectOnly,
    /// A file holding `SELECT 1;`.
    Select1,
    /// A file holding `\startpipeline`, [`PIPELINE_DEPTH`] × `SELECT 1;`, `\endpipeline`.
    Pipelined,
}

impl Script {
    /// A short name for tables.
    pub(crate) fn label(self) -> String {
        match self {
            Script::SelectOnly => "`-S` (built-in select-only)".to_owned(),
            Script::Select1 => "`SELECT 1;`".to_owned(),
            Script::Pipelined => format!("`SELECT 1;` × {PIPELINE_DEPTH}, pipelined"),
        }
    }

    /// Statements per pgbench transaction.
    pub(crate) fn statements(self) -> usize {
        match self {
            Script::Pipelined => PIPELINE_DEPTH,
            _ => 1,
        }
    }
}

/// One pgbench run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PgbenchRun {
    /// Statements per second (`tps` times the statements per transaction).
    pub(crate) qps: f64,
    /// pgbench's "latency average", ms (per transaction).
    pub(crate) latency_ms: f64,
    /// CPU time during the run (pgbench is the client).
    pub(crate) cpu: Usage,
    /// Statements run.
    pub(crate) statements: f64,
}

/// pgbench pointed at the cluster.
#[derive(Debug)]
pub(crate) struct Pgbench {
    /// The pgbench binary.
    bin: PathBuf,
    /// `-h`: 127.0.0.1, or the socket directory.
    host: String,
    /// `-p`.
    port: u16,
    /// Where the script files and pgbench's output go.
    dir: PathBuf,
    /// The postmaster, for CPU accounting.
    postmaster: Option<u32>,
}

impl Pgbench {
    /// pgbench from `bindir`, for the server at `host`:`port`; writes its scripts to `dir`.
    pub(crate) fn new(
        bindir: &Path,
        host: String,
        port: u16,
        dir: PathBuf,
        postmaster: Option<u32>,
    ) -> Result<Self, String> {
        let bin = bindir.join("pgbench");
        if !bin.is_file() {
            return Err(format!("no pgbench in {}", bindir.display()));
        }
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        std::fs::write(dir.join("select1.sql"), "SELECT 1;\n")
            .map_err(|e| format!("cannot write a pgbench script: {e}"))?;
        let mut pipelined = String::from("\\startpipeline\n");
        for _ in 0..PIPELINE_DEPTH {
            pipelined.push_str("SELECT 1;\n");
        }
        pipelined.push_str("\\endpipeline\n");
        std::fs::write(dir.join("pipelined.sql"), pipelined)
            .map_err(|e| format!("cannot write a pgbench script: {e}"))?;
        Ok(Pgbench {
            bin,
            host,
            port,
            dir,
            postmaster,
        })
    }

    /// The command with the connection options (as the `postgres` role; pgbench is a client,
    /// so it may run as root).
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        for var in [
            "PGHOST",
            "PGPORT",
            "PGUSER",
            "PGDATABASE",
            "PGPASSWORD",
            "PGOPTIONS",
            "PGSERVICE",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("PGCONNECT_TIMEOUT", "10")
            .arg("-h")
            .arg(&self.host)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres"]);
        cmd
    }

    /// `pgbench -i -s 1`: the tables of the select-only script (100 000 accounts).
    pub(crate) fn init(&self) -> Result<(), String> {
        let mut cmd = self.command();
        cmd.args(["-i", "-q", "-s", "1", "postgres"]);
        match self.run_command(cmd, Duration::from_secs(120))? {
            Ran::Finished(true, _) => Ok(()),
            Ran::Finished(false, out) => Err(format!("pgbench -i failed: {}", tail(&out))),
            Ran::Hung => Err("pgbench -i did not end within 120 s".to_owned()),
        }
    }

    /// One run: `clients` connections, 2 threads, prepared statements, `secs` seconds.
    pub(crate) fn run(&self, script: Script, clients: usize, secs: u64) -> Outcome<PgbenchRun> {
        let mut cmd = self.command();
        cmd.args(["-n", "-M", "prepared", "-j", "2", "-c"])
            .arg(clients.to_string())
            .arg("-T")
            .arg(secs.to_string());
        match script {
            Script::SelectOnly => {
                cmd.arg("-S");
            }
            Script::Select1 => {
                cmd.arg("-f").arg(self.dir.join("select1.sql"));
            }
            Script::Pipelined => {
                cmd.arg("-f").arg(self.dir.join("pipelined.sql"));
            }
        }
        cmd.arg("postgres");
        let before = Sample::now(self.postmaster);
        let result = self.run_command(cmd, Duration::from_secs(secs + 60));
        let after = Sample::now(self.postmaster);
        let (ok, out) = match result {
            Ok(Ran::Finished(ok, out)) => (ok, out),
            Ok(Ran::Hung) => return Outcome::Hung,
            Err(e) => return Outcome::Failed(e),
        };
        let tps = find_number(&out, "tps = ");
        let latency = find_number(&out, "latency average = ");
        let count = find_number(&out, "number of transactions actually processed: ");
        let failed = find_number(&out, "number of failed transactions: ").unwrap_or(0.0);
        match (ok, tps) {
            (true, Some(tps)) if failed == 0.0 => {
                let per = script.statements() as f64;
                Outcome::Done(PgbenchRun {
                    qps: tps * per,
                    latency_ms: latency.unwrap_or(f64::NAN),
                    cpu: match (before, after) {
                        (Some(b), Some(a)) => b.until(a),
                        _ => Usage::default(),
                    },
                    statements: count.unwrap_or(f64::NAN) * per,
                })
            }
            _ => Outcome::Failed(format!("pgbench: {}", tail(&out))),
        }
    }

    /// Runs `cmd` with its output in a file, killing it after `limit`.
    fn run_command(&self, mut cmd: Command, limit: Duration) -> Result<Ran, String> {
        let out_path = self.dir.join("pgbench.out");
        let err_path = self.dir.join("pgbench.err");
        let out = File::create(&out_path).map_err(|e| e.to_string())?;
        let err = File::create(&err_path).map_err(|e| e.to_string())?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let mut child: Child = cmd
            .spawn()
            .map_err(|e| format!("cannot start pgbench: {e}"))?;
        let started = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if started.elapsed() > limit => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Ok(Ran::Hung);
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(format!("waiting for pgbench: {e}")),
            }
        };
        let mut text = std::fs::read_to_string(&out_path).unwrap_or_default();
        text.push_str(&std::fs::read_to_string(&err_path).unwrap_or_default());
        Ok(Ran::Finished(status.success(), text))
    }
}

/// How a pgbench command ended.
#[derive(Debug)]
enum Ran {
    /// It exited: whether successfully, and its output (stdout, then stderr).
    Finished(bool, String),
    /// It was killed at its time limit.
    Hung,
}

/// The number following `key` in pgbench's output.
fn find_number(out: &str, key: &str) -> Option<f64> {
    out.lines().find_map(|line| {
        let rest = &line[line.find(key)? + key.len()..];
        let number: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        number.parse().ok()
    })
}

/// The last lines of some output, on one line.
fn tail(out: &str) -> String {
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(3);
    lines[start..].join(" / ").chars().take(200).collect()
}

/// Medians of a series of pgbench runs.
pub(crate) fn median_of(series: &Series<PgbenchRun>, f: impl Fn(&PgbenchRun) -> f64) -> f64 {
    crate::stats::median(&series.done.iter().map(f).collect::<Vec<_>>())
}
