//! Who used the CPU during a run: this benchmark (its own threads and the pgbench processes it
//! waited for), the PostgreSQL server (the postmaster and its children, exited backends
//! included) and everything else on the machine. On 2 cores the client and the server compete
//! for the same CPUs, and any other load distorts the figures, so every run is accounted.

use std::time::Instant;

/// Clock ticks per second of `/proc` counters (`USER_HZ`, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// CPU counters at one moment, in clock ticks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    /// When the counters were read.
    at: Instant,
    /// All CPUs: time stolen by the hypervisor (from `/proc/stat`).
    steal: u64,
    /// This process, and the child processes it has waited for (pgbench).
    own: u64,
    /// The postmaster, its live children and the children it has reaped.
    server: u64,
    /// Every other user-space process, with the children each has reaped.
    others: u64,
    /// Kernel threads: softirq work for the run's own loopback traffic lands there too, so
    /// they are reported apart from other processes.
    kernel: u64,
}

/// CPU-seconds used between two samples.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Usage {
    /// Wall time between the samples, seconds.
    pub(crate) wall: f64,
    /// This benchmark (the client side).
    pub(crate) own: f64,
    /// The PostgreSQL server.
    pub(crate) server: f64,
    /// Every other user-space process.
    pub(crate) others: f64,
    /// Kernel threads.
    pub(crate) kernel: f64,
    /// Time the hypervisor gave to someone else.
    pub(crate) steal: f64,
}

impl Usage {
    /// The share of the machine other processes used, 0 to 1.
    pub(crate) fn others_share(&self) -> f64 {
        self.others / (self.wall * cores() as f64).max(1e-9)
    }
}

impl Sample {
    /// The counters now; the server is the postmaster `postmaster` (if known). `None` where
    /// `/proc` cannot tell. Per-process times are the kernel's precise run times, which (on a
    /// kernel with tick-based accounting) the CPU totals of `/proc/stat` are not: other load
    /// is therefore the sum over the other processes, not the machine's total minus ours.
    pub(crate) fn now(postmaster: Option<u32>) -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let steal = stat
            .lines()
            .find(|l| l.starts_with("cpu "))?
            .split_whitespace()
            .nth(8)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let me = std::process::id();
        let own = process("self")?.ticks(true);
        let mut server = 0;
        let mut server_pids = Vec::new();
        if let Some(pm) = postmaster {
            server = process(&pm.to_string()).map_or(0, |p| p.ticks(true));
            server_pids.push(pm);
        }
        let mut others = 0;
        let mut kernel = 0;
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == me || server_pids.contains(&pid) {
                continue;
            }
            let Some(p) = process(&pid.to_string()) else {
                continue;
            };
            if postmaster.is_some_and(|pm| p.ppid == pm) {
                // A backend or background process: its reaped time moves into the
                // postmaster's, so only its own counts.
                server += p.ticks(false);
            } else if p.ppid == me {
                // A child of ours not yet waited for (pgbench while it runs).
            } else if p.flags & PF_KTHREAD != 0 {
                kernel += p.ticks(true);
            } else {
                others += p.ticks(true);
            }
        }
        Some(Sample {
            at: Instant::now(),
            steal,
            own,
            server,
            others,
            kernel,
        })
    }

    /// The usage from `self` to `later`.
    ///
    /// Sums over groups of processes stay exact as processes come and go: a new process
    /// starts from zero, and one that ends moves its time into its parent's reaped-children
    /// time (the postmaster's for a backend; init's or another live process's otherwise).
    pub(crate) fn until(self, later: Sample) -> Usage {
        let secs = |a: u64, b: u64| b.saturating_sub(a) as f64 / USER_HZ;
        Usage {
            wall: later.at.duration_since(self.at).as_secs_f64(),
            own: secs(self.own, later.own),
            server: secs(self.server, later.server),
            others: secs(self.others, later.others),
            kernel: secs(self.kernel, later.kernel),
            steal: secs(self.steal, later.steal),
        }
    }
}

/// The CPU's model name as `/proc/cpuinfo` gives it, or "unknown".
pub(crate) fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Cores available to this process.
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// `PF_KTHREAD` in a process's flags: a kernel thread.
const PF_KTHREAD: u64 = 0x0020_0000;

/// What `/proc/<pid>/stat` says about a process.
#[derive(Debug, Clone, Copy)]
struct Proc {
    /// The parent.
    ppid: u32,
    /// The kernel's flags.
    flags: u64,
    /// User and system ticks.
    run: u64,
    /// User and system ticks of the children it has waited for.
    reaped: u64,
}

impl Proc {
    /// Its ticks, with those of its reaped children when `children` is set.
    fn ticks(&self, children: bool) -> u64 {
        if children {
            self.run + self.reaped
        } else {
            self.run
        }
    }
}

/// Reads `/proc/<pid>/stat` (`pid` a number or `self`).
fn process(pid: &str) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces and parentheses), counted from
    // 1 as in proc(5): state 3, ppid 4, flags 9, utime 14, stime 15, cutime 16, cstime 17.
    let rest: Vec<u64> = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let field = |n: usize| rest.get(n - 3).copied().unwrap_or(0);
    Some(Proc {
        ppid: u32::try_from(field(4)).unwrap_or(0),
        flags: field(9),
        run: field(14) + field(15),
        reaped: field(16) + field(17),
    })
}
