//! Section "instructions": the client's instructions per `SELECT 1`, counted by callgrind.
//!
//! Timings on a shared 2-core machine move by 10 % from one run to the next; an instruction
//! count does not (callgrind counts the same instructions whatever else the machine does).
//! Each variant runs in a child process of this binary under `valgrind --tool=callgrind`:
//! the child builds the pool (or clients), then `tasks` tasks share a fixed number of
//! statements on a current-thread Tokio runtime. The child runs twice, with N and with 2N
//! statements, and the difference divided by N is what one more statement costs: the pool's
//! set-up, connects included, cancels out.
//!
//! What it counts is everything the client process executes per statement: the pool, the
//! driver, tokio-postgres's encoding and decoding, the runtime's polling and the system call
//! wrappers, not the kernel or the server.

use crate::clients::{Bench, Variant};
use std::path::Path;
use std::process::{Command, ExitCode};

/// The hidden command-line flag that makes this binary the child:
/// `--count-statements KEY SIZE TASKS STATEMENTS DSN`.
pub(crate) const CHILD_FLAG: &str = "--count-statements";

/// The child: builds `variant` with `size` connections, warms it, and runs `statements`
/// statements spread over `tasks` tasks, on a current-thread Tokio runtime.
pub(crate) fn child(args: &[String], variants: &[Variant]) -> ExitCode {
    let parsed = (|| {
        let [key, size, tasks, statements, dsn] = args else {
            return None;
        };
        let variant = variants.iter().copied().find(|v| v.key() == *key)?;
        Some((
            variant,
            size.parse::<usize>().ok()?,
            tasks.parse::<usize>().ok()?,
            statements.parse::<usize>().ok()?,
            dsn.clone(),
        ))
    })();
    let Some((variant, size, tasks, statements, dsn)) = parsed else {
        eprintln!("{CHILD_FLAG} needs KEY SIZE TASKS STATEMENTS DSN");
        return ExitCode::FAILURE;
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start a Tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async move {
        let bench = Bench::build(variant, size, &dsn).await?;
        let left = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(statements));
        let handles: Vec<_> = (0..tasks)
            .map(|task| {
                let bench = bench.clone();
                let left = left.clone();
                tokio::spawn(async move {
                    use std::sync::atomic::Ordering::Relaxed;
                    while left
                        .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
                        .is_ok()
                    {
                        bench.select1(task).await?;
                    }
                    Ok::<(), String>(())
                })
            })
            .collect();
        for handle in handles {
            handle.await.map_err(|e| e.to_string())??;
        }
        bench.close();
        Ok::<(), String>(())
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}: {e}", variant.label());
            ExitCode::FAILURE
        }
    }
}

/// Whether callgrind can be run, or why not.
pub(crate) fn valgrind() -> Result<String, String> {
    match Command::new("valgrind").arg("--version").output() {
        Ok(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).trim().into()),
        Ok(out) => Err(format!("`valgrind --version` failed: {}", out.status)),
        Err(e) => Err(format!(
            "valgrind not found ({e}); install it (Debian: apt-get install valgrind)"
        )),
    }
}

/// Runs the child under callgrind with `statements` statements; returns the instructions it
/// executed.
pub(crate) fn count(
    variant: Variant,
    size: usize,
    tasks: usize,
    statements: usize,
    dsn: &str,
    scratch: &Path,
) -> Result<u64, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out_file = scratch.join(format!(
        "callgrind.{}.{size}.{tasks}.{statements}",
        variant.key()
    ));
    let output = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out_file.display()))
        .arg(&exe)
        .arg(CHILD_FLAG)
        .args([
            variant.key(),
            size.to_string(),
            tasks.to_string(),
            statements.to_string(),
            dsn.to_owned(),
        ])
        .output()
        .map_err(|e| format!("cannot run valgrind: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.starts_with("=="))
            .unwrap_or("");
        return Err(format!(
            "the counted run failed ({}): {last}",
            output.status
        ));
    }
    let text = std::fs::read_to_string(&out_file)
        .map_err(|e| format!("cannot read {}: {e}", out_file.display()))?;
    let _ = std::fs::remove_file(&out_file);
    // "summary:" (older callgrind) or "totals:", the instructions of the whole run.
    text.lines()
        .find_map(|line| {
            line.strip_prefix("summary:")
                .or_else(|| line.strip_prefix("totals:"))
        })
        .and_then(|n| n.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("no totals in {}", out_file.display()))
}
