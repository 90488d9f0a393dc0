//! What the process may use of the machine's CPUs, and the per-thread controls that keep shadow
//! work behind live work: CPU lists, the affinity mask, the cgroup CPU quota (v1 and v2), the
//! calling thread's scheduling class, and per-thread CPU clocks.
//!
//! Parsing is pure and unit-tested; the syscalls are in `crate::sys`. Everything is Linux-first:
//! elsewhere the controls report that they could not act and the clocks read zero.

pub use crate::config::{CpuListError, CpuSet, MAX_CPUS, allowed_cpus};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Restricts the calling thread to `cpus`.
pub fn set_thread_affinity(cpus: &CpuSet) -> std::io::Result<()> {
    crate::sys::set_affinity(cpus.iter())
}

/// The scheduler slice the threads a short call waits on ask for: the async runtime's and a live
/// model's short-job workers. Under attack i (three callers of maximal requests, 2026-12-06) a
/// short call's threads waited out the running long-job thread's slice (1.4 ms here) at each
/// wake-up; with this slice (the kernel's minimum) they preempt it. See docs/reliability.md.
pub const LATENCY_SLICE: Duration = Duration::from_micros(100);

/// Asks for `LATENCY_SLICE` on the calling thread. Best effort: a refusal is logged once per
/// process (the thread keeps the default slice, as before Linux 6.12, which ignores it).
pub fn shorten_slice() {
    static WARNED: std::sync::Once = std::sync::Once::new();
    if let Err(e) = crate::sys::set_sched_slice(LATENCY_SLICE) {
        WARNED.call_once(|| {
            tracing::warn!(error = %e, "cannot shorten the scheduler slice of latency threads; short calls may wait out a long job's slice");
        });
    }
}

/// Gives the calling thread the kernel's default slice back: threads started from the async
/// runtime inherit its short one, with which even a niced thread would preempt live work when it
/// wakes.
pub fn default_slice() {
    let _ = crate::sys::set_sched_slice(Duration::ZERO);
}

/// The scheduler slice of thread `tid` (0: the calling thread) as the kernel reports it: the one
/// asked for, else the default; zero before Linux 6.12.
pub fn thread_slice(tid: i32) -> std::io::Result<Duration> {
    crate::sys::sched_slice(tid)
}

/// The scheduling a shadow worker thread ended up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedPolicy {
    /// `SCHED_IDLE`: runs only when no normal thread wants the CPU.
    Idle,
    /// Normal class at a raised niceness: a smaller share of a busy CPU, not none.
    Nice,
    /// Neither could be applied (or none was asked for).
    Normal,
}

impl SchedPolicy {
    pub const ALL: [SchedPolicy; 3] = [SchedPolicy::Idle, SchedPolicy::Nice, SchedPolicy::Normal];

    pub const fn as_str(self) -> &'static str {
        match self {
            SchedPolicy::Idle => "idle",
            SchedPolicy::Nice => "nice",
            SchedPolicy::Normal => "normal",
        }
    }
}

/// Moves the calling thread below normal work: `SCHED_IDLE` when `idle` and the kernel allows
/// it, else niceness `nice` (when non-zero). Returns what took effect; failures are logged by
/// the caller, which knows the model.
pub fn lower_thread_priority(idle: bool, nice: i32) -> (SchedPolicy, Option<std::io::Error>) {
    default_slice();
    let mut error = None;
    if idle {
        match crate::sys::set_sched_idle() {
            Ok(()) => {
                // The nice value still orders idle threads among themselves; keep it too (best
                // effort: the idle class is what matters).
                let _ = crate::sys::set_nice(nice);
                return (SchedPolicy::Idle, None);
            }
            Err(e) => error = Some(e),
        }
    }
    if nice == 0 {
        return (SchedPolicy::Normal, error);
    }
    match crate::sys::set_nice(nice) {
        Ok(()) => (SchedPolicy::Nice, error),
        Err(e) => (SchedPolicy::Normal, Some(e)),
    }
}

/// CPU time the calling thread has used (user + system), from its own CPU clock.
pub fn thread_cpu_time() -> Duration {
    crate::sys::thread_cpu_time()
}

/// Time the calling thread has spent runnable but waiting for a CPU (the second field of
/// `/proc/thread-self/schedstat`), or `None` where the kernel does not provide it.
pub fn thread_run_delay() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// CPU time the whole process has used (every thread).
pub fn process_cpu_time() -> Duration {
    crate::sys::process_cpu_time()
}

/// Time the CPUs in `cpus` spent idle (idle + iowait in `/proc/stat`), summed; `None` where
/// `/proc/stat` cannot be read. Counts every process on the node, which is the point: CPU time
/// another process uses is not free for shadow work either.
pub fn idle_time(cpus: &CpuSet) -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_idle(&stat, cpus, crate::sys::clock_ticks_per_second())
}

/// Sums idle + iowait ticks of the `cpuN` lines of `/proc/stat` whose N is in `cpus`.
pub fn parse_idle(stat: &str, cpus: &CpuSet, ticks_per_second: u64) -> Option<Duration> {
    let mut ticks = 0u64;
    let mut seen = false;
    for line in stat.lines() {
        let mut fields = line.split_whitespace();
        let Some(cpu) = fields.next().and_then(|f| f.strip_prefix("cpu")).and_then(|n| n.parse::<usize>().ok()) else {
            continue;
        };
        if !cpus.contains(cpu) {
            continue;
        }
        // user nice system idle iowait ...
        let values: Vec<u64> = fields.take(5).filter_map(|f| f.parse().ok()).collect();
        if values.len() < 5 {
            return None;
        }
        ticks += values[3] + values[4];
        seen = true;
    }
    seen.then(|| Duration::from_nanos(ticks.saturating_mul(1_000_000_000 / ticks_per_second.max(1))))
}

// === capacity: how many CPUs the process may use ===

/// Where the CPU capacity figure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapacitySource {
    /// cgroup v2 `cpu.max`.
    CgroupV2,
    /// cgroup v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`.
    CgroupV1,
    /// No quota: the affinity mask.
    Affinity,
}

impl CapacitySource {
    pub const fn as_str(self) -> &'static str {
        match self {
            CapacitySource::CgroupV2 => "cgroup_v2",
            CapacitySource::CgroupV1 => "cgroup_v1",
            CapacitySource::Affinity => "affinity",
        }
    }
}

/// CPUs (possibly fractional) the process may use per second of wall time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Capacity {
    pub cpus: f64,
    pub source: CapacitySource,
}

/// The process's CPU capacity: the tightest cgroup quota on its own cgroup or an ancestor
/// (v2 `cpu.max`, else v1 CFS quota), capped by the affinity mask; the mask alone when there
/// is no quota.
pub fn process_capacity() -> Capacity {
    let affinity = allowed_cpus().map(|s| s.count()).unwrap_or(1).max(1) as f64;
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let quota = cgroup_quota(Path::new("/sys/fs/cgroup"), &cgroup, |p| std::fs::read_to_string(p).ok());
    match quota {
        Some((cpus, source)) if cpus < affinity => Capacity { cpus, source },
        _ => Capacity { cpus: affinity, source: CapacitySource::Affinity },
    }
}

/// The tightest quota (in CPUs) over the cgroup named in `proc_self_cgroup` and its ancestors,
/// reading files under `root` through `read` (injectable for tests).
pub fn cgroup_quota(
    root: &Path,
    proc_self_cgroup: &str,
    read: impl Fn(&Path) -> Option<String>,
) -> Option<(f64, CapacitySource)> {
    let mut best: Option<(f64, CapacitySource)> = None;
    let mut consider = |q: Option<f64>, source| {
        if let Some(q) = q
            && best.is_none_or(|(b, _)| q < b)
        {
            best = Some((q, source));
        }
    };
    for line in proc_self_cgroup.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            // v2: the unified hierarchy at the root, or under `unified` in hybrid mode.
            for base in [root.to_path_buf(), root.join("unified")] {
                for dir in ancestors(&base, path) {
                    consider(read(&dir.join("cpu.max")).as_deref().and_then(parse_cpu_max), CapacitySource::CgroupV2);
                }
            }
        } else if controllers.split(',').any(|c| c == "cpu") {
            for mount in ["cpu", "cpu,cpuacct", "cpuacct,cpu"] {
                for dir in ancestors(&root.join(mount), path) {
                    let quota = read(&dir.join("cpu.cfs_quota_us"));
                    let period = read(&dir.join("cpu.cfs_period_us"));
                    consider(quota.zip(period).and_then(|(q, p)| parse_cfs(&q, &p)), CapacitySource::CgroupV1);
                }
            }
        }
    }
    best
}

/// `base/path` and each of its ancestors up to `base` itself.
fn ancestors(base: &Path, path: &str) -> Vec<PathBuf> {
    let mut dirs = vec![base.to_path_buf()];
    let mut dir = base.to_path_buf();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        dir.push(part);
        dirs.push(dir.clone());
    }
    dirs
}

/// cgroup v2 `cpu.max`: "QUOTA PERIOD" in microseconds, or "max PERIOD" for no limit.
pub fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut fields = text.split_whitespace();
    let quota = fields.next()?;
    let period: f64 = fields.next().unwrap_or("100000").parse().ok()?;
    if quota == "max" || period <= 0.0 {
        return None;
    }
    let quota: f64 = quota.parse().ok()?;
    (quota > 0.0).then(|| quota / period)
}

/// cgroup v1 CFS quota and period (microseconds); a quota of -1 means no limit.
pub fn parse_cfs(quota: &str, period: &str) -> Option<f64> {
    let quota: i64 = quota.trim().parse().ok()?;
    let period: i64 = period.trim().parse().ok()?;
    (quota > 0 && period > 0).then(|| quota as f64 / period as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn cpu_lists_parse_and_print() {
        let s = CpuSet::parse("2-3,6, 0").unwrap();
        assert_eq!(s.iter().collect::<Vec<_>>(), [0, 2, 3, 6]);
        assert_eq!(s.to_list(), "0,2-3,6");
        assert_eq!(s.count(), 4);
        assert_eq!(CpuSet::parse(""), Err(CpuListError::Empty));
        assert_eq!(CpuSet::parse("a"), Err(CpuListError::Syntax("a".into())));
        assert_eq!(CpuSet::parse("3-1"), Err(CpuListError::Backwards("3-1".into())));
        assert_eq!(CpuSet::parse("1024"), Err(CpuListError::TooLarge(1024)));
        assert_eq!(CpuSet::parse("0-3").unwrap().minus(&CpuSet::parse("1-2").unwrap()).to_list(), "0,3");
    }

    #[test]
    fn idle_time_sums_idle_and_iowait_of_the_listed_cpus_only() {
        let stat = "cpu  10 0 10 1000 50 0 0 0 0 0\n\
                    cpu0 5 0 5 300 20 0 0 0 0 0\n\
                    cpu1 5 0 5 700 30 0 0 0 0 0\n\
                    intr 12345\n";
        let only1 = CpuSet::parse("1").unwrap();
        assert_eq!(parse_idle(stat, &only1, 100), Some(Duration::from_millis(7_300)));
        let both = CpuSet::parse("0-1").unwrap();
        assert_eq!(parse_idle(stat, &both, 100), Some(Duration::from_millis(10_500)));
        assert_eq!(parse_idle(stat, &CpuSet::parse("5").unwrap(), 100), None, "no line for the CPU");
        assert_eq!(parse_idle("cpu1 1 2\n", &only1, 100), None, "a short line");
    }

    #[test]
    fn quota_files_parse() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(1.5));
        assert_eq!(parse_cfs("-1", "100000"), None);
        assert_eq!(parse_cfs("50000\n", "100000\n"), Some(0.5));
    }

    fn files(entries: &[(&str, &str)]) -> impl Fn(&Path) -> Option<String> {
        let map: HashMap<PathBuf, String> = entries.iter().map(|(p, t)| (PathBuf::from(p), t.to_string())).collect();
        move |p: &Path| map.get(p).cloned()
    }

    #[test]
    fn the_tightest_quota_of_the_cgroup_and_its_ancestors_wins() {
        let v2 = "0::/kubepods/pod1/ctr\n";
        let read = files(&[
            ("/cg/kubepods/cpu.max", "max 100000"),
            ("/cg/kubepods/pod1/cpu.max", "200000 100000"),
            ("/cg/kubepods/pod1/ctr/cpu.max", "max 100000"),
        ]);
        assert_eq!(cgroup_quota(Path::new("/cg"), v2, read), Some((2.0, CapacitySource::CgroupV2)));
        let v1 = "4:memory:/x\n1:cpu,cpuacct:/bench\n0::/\n";
        let read = files(&[
            ("/cg/cpu,cpuacct/bench/cpu.cfs_quota_us", "100000"),
            ("/cg/cpu,cpuacct/bench/cpu.cfs_period_us", "100000"),
            ("/cg/cpu,cpuacct/cpu.cfs_quota_us", "-1"),
            ("/cg/cpu,cpuacct/cpu.cfs_period_us", "100000"),
        ]);
        assert_eq!(cgroup_quota(Path::new("/cg"), v1, read), Some((1.0, CapacitySource::CgroupV1)));
        assert_eq!(cgroup_quota(Path::new("/cg"), "0::/\n", files(&[])), None);
    }

    #[test]
    fn thread_clocks_advance_with_work() {
        let before = thread_cpu_time();
        let mut x = 0u64;
        while thread_cpu_time() - before < Duration::from_millis(5) {
            x = x.wrapping_add(1);
        }
        assert!(x > 0);
        assert!(thread_cpu_time() - before >= Duration::from_millis(5));
    }
}
