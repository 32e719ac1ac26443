//! CPU time and memory of a process, read from /proc (Linux).

/// Clock ticks per second of `/proc/<pid>/stat` times: USER_HZ, 100 on every Linux ABI.
const TICKS: f64 = 100.0;

/// User + system CPU seconds used so far by `pid` (all its threads), or by this process
/// when `pid` is None.
pub fn cpu_secs(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS)
}

/// Resident set size in MiB.
pub fn rss_mb(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_string(),
    };
    let status = std::fs::read_to_string(path).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// The machine's 1-minute load average (other work on the machine disturbs the figures).
pub fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Microseconds that some task of the machine has waited for a CPU, so far (PSI,
/// `/proc/pressure/cpu`, `some total=`): its growth rate over a window is the share of that
/// window in which the CPUs were contended, by anything.
pub fn cpu_pressure_us() -> Option<u64> {
    let p = std::fs::read_to_string("/proc/pressure/cpu").ok()?;
    let some = p.lines().find(|l| l.starts_with("some"))?;
    some.split_whitespace()
        .find_map(|f| f.strip_prefix("total="))?
        .parse()
        .ok()
}

/// Clock ticks (1/100 s) the hypervisor has stolen from this machine's CPUs so far, summed over
/// CPUs (`/proc/stat`): on a VM, time a busy neighbour took away shows up here.
pub fn steal_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?;
    cpu.split_whitespace().nth(8)?.parse().ok()
}

/// CPUs this process may run on (its affinity mask, e.g. under `taskset`).
pub fn cpus_allowed() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process() {
        assert!(super::cpu_secs(None).is_some());
        assert!(super::rss_mb(None).is_some_and(|m| m > 0.0));
        assert!(super::cpu_secs(Some(u32::MAX)).is_none());
    }
}
