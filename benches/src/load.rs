//! How much CPU time other processes took while the benchmark ran: on a 2-core machine any
//! other load distorts the results, so the report says how much there was.

/// CPU time counters, in clock ticks (`USER_HZ`, 100 per second on Linux).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuTime {
    /// Busy time of all CPUs: user, nice, system, irq, softirq and steal.
    system: u64,
    /// This process and its waited-for children (the child processes it starts).
    own: u64,
}

/// Clock ticks per second of `/proc` counters.
const USER_HZ: f64 = 100.0;

impl CpuTime {
    /// The counters now, or `None` where `/proc` cannot tell.
    pub(crate) fn now() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let cpu: Vec<u64> = stat
            .lines()
            .find(|l| l.starts_with("cpu "))?
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        // user nice system idle iowait irq softirq steal
        let system = [0, 1, 2, 5, 6, 7]
            .iter()
            .map(|&i| cpu.get(i).copied().unwrap_or(0))
            .sum();
        let me = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name (which may contain spaces): state is field 3, utime
        // 14, stime 15, cutime 16, cstime 17.
        let rest: Vec<u64> = me
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        let own = (11..=14).map(|i| rest.get(i).copied().unwrap_or(0)).sum();
        Some(CpuTime { system, own })
    }

    /// CPU-seconds this benchmark and everything else used since `self`.
    pub(crate) fn since(self, later: CpuTime) -> (f64, f64) {
        let system = later.system.saturating_sub(self.system) as f64 / USER_HZ;
        let own = later.own.saturating_sub(self.own) as f64 / USER_HZ;
        (own, (system - own).max(0.0))
    }
}
