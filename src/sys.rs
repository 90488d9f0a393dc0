//! The only module allowed `unsafe`: thin wrappers over the Linux syscalls the thread isolation
//! needs (the calling thread's affinity, scheduling class, niceness, scheduler slice and CPU
//! clock), and over the one allocator option the binary sets. Each takes and returns plain Rust
//! values; `inference::cpu` builds the policy on them. Elsewhere than Linux they report
//! `Unsupported` (and the clock reads zero).

use std::io;
use std::time::Duration;

/// CPUs `libc::cpu_set_t` can hold.
#[cfg(target_os = "linux")]
const SETSIZE: usize = libc::CPU_SETSIZE as usize;

/// The CPU numbers in the calling thread's affinity mask.
#[cfg(target_os = "linux")]
pub fn affinity() -> io::Result<Vec<usize>> {
    // SAFETY: `mask` is a plain bit array the kernel fills; its size is given exactly.
    let mut mask: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut mask) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: every cpu < CPU_SETSIZE.
    Ok((0..SETSIZE).filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &mask) }).collect())
}

#[cfg(not(target_os = "linux"))]
pub fn affinity() -> io::Result<Vec<usize>> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "CPU affinity needs Linux"))
}

/// Restricts the calling thread to `cpus` (numbers at or beyond `CPU_SETSIZE` are ignored).
#[cfg(target_os = "linux")]
pub fn set_affinity(cpus: impl Iterator<Item = usize>) -> io::Result<()> {
    // SAFETY: `mask` is a plain bit array; pid 0 is the calling thread; every cpu < CPU_SETSIZE.
    let mut mask: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for cpu in cpus.filter(|&cpu| cpu < SETSIZE) {
        unsafe { libc::CPU_SET(cpu, &mut mask) };
    }
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mask) };
    if rc != 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

#[cfg(not(target_os = "linux"))]
pub fn set_affinity(_cpus: impl Iterator<Item = usize>) -> io::Result<()> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "CPU affinity needs Linux"))
}

/// Moves the calling thread to `SCHED_IDLE`.
pub fn set_sched_idle() -> io::Result<()> {
    set_scheduler(Policy::Idle)
}

/// Moves the calling thread back to the normal class (`SCHED_OTHER`).
pub fn set_sched_normal() -> io::Result<()> {
    set_scheduler(Policy::Normal)
}

enum Policy {
    Idle,
    Normal,
}

#[cfg(target_os = "linux")]
fn set_scheduler(policy: Policy) -> io::Result<()> {
    let policy = match policy {
        Policy::Idle => libc::SCHED_IDLE,
        Policy::Normal => libc::SCHED_OTHER,
    };
    // SAFETY: sched_param is plain data; pid 0 is the calling thread.
    let param = libc::sched_param { sched_priority: 0 };
    if unsafe { libc::sched_setscheduler(0, policy, &param) } == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

#[cfg(not(target_os = "linux"))]
fn set_scheduler(_policy: Policy) -> io::Result<()> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "scheduling classes need Linux"))
}

/// Sets the calling thread's niceness (Linux applies `setpriority` per thread).
pub fn set_nice(nice: i32) -> io::Result<()> {
    // SAFETY: plain syscalls on the calling thread, no pointers involved.
    let rc = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice)
    };
    if rc != 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// `struct sched_attr` of sched_setattr(2), its first version (56 bytes).
#[cfg(target_os = "linux")]
#[repr(C)]
#[derive(Default)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    /// For `SCHED_OTHER` and `SCHED_BATCH` since Linux 6.12: the slice the thread asks for.
    runtime: u64,
    deadline: u64,
    period: u64,
    util_min: u32,
    util_max: u32,
}

#[cfg(target_os = "linux")]
fn sched_getattr(tid: i32) -> io::Result<SchedAttr> {
    let mut attr = SchedAttr::default();
    // SAFETY: `attr` is a valid out-pointer of the size passed; the kernel writes at most that.
    let rc = unsafe {
        libc::syscall(libc::SYS_sched_getattr, tid, &mut attr as *mut SchedAttr, size_of::<SchedAttr>() as u32, 0u32)
    };
    if rc != 0 { Err(io::Error::last_os_error()) } else { Ok(attr) }
}

/// Asks the scheduler for a `slice` for the calling thread, keeping its class and niceness. On
/// Linux 6.12 and later (EEVDF) a shorter slice means an earlier deadline, so the thread
/// preempts a running one of the same class when it wakes instead of waiting out that one's
/// slice; older kernels accept the call and ignore the slice. Only for `SCHED_OTHER` and
/// `SCHED_BATCH` threads.
#[cfg(target_os = "linux")]
pub fn set_sched_slice(slice: Duration) -> io::Result<()> {
    let mut attr = sched_getattr(0)?;
    if attr.policy != libc::SCHED_OTHER as u32 && attr.policy != libc::SCHED_BATCH as u32 {
        return Err(io::Error::new(io::ErrorKind::Unsupported, "a slice applies to SCHED_OTHER and SCHED_BATCH only"));
    }
    attr.size = size_of::<SchedAttr>() as u32;
    attr.flags = 0;
    attr.runtime = slice.as_nanos().min(u64::MAX as u128) as u64;
    // SAFETY: `attr` is a valid, fully initialised sched_attr of the size it declares.
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0u32) };
    if rc != 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

#[cfg(not(target_os = "linux"))]
pub fn set_sched_slice(_slice: Duration) -> io::Result<()> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "scheduler slices need Linux"))
}

/// The scheduler slice of thread `tid` (0: the calling thread) as the kernel reports it; zero
/// where it reports none (kernels before 6.12, classes without one).
#[cfg(target_os = "linux")]
pub fn sched_slice(tid: i32) -> io::Result<Duration> {
    sched_getattr(tid).map(|attr| Duration::from_nanos(attr.runtime))
}

#[cfg(not(target_os = "linux"))]
pub fn sched_slice(_tid: i32) -> io::Result<Duration> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "scheduler slices need Linux"))
}

/// CPU time the calling thread has used (user + system), from its own CPU clock; zero if the
/// clock cannot be read.
pub fn thread_cpu_time() -> Duration {
    cpu_clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// Clock ticks per second of `/proc/stat` (`USER_HZ`); 100 where it cannot be read.
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as u64 } else { 100 }
}

/// CPU time of the whole process (every thread, user + system).
pub fn process_cpu_time() -> Duration {
    cpu_clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

fn cpu_clock(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out-pointer; both CPU clocks always exist on Linux.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

// mimalloc (the binary's global allocator) is linked wherever this crate is, so the options
// below always resolve; in a program whose allocator is another, they set an unused instance.
use mimalloc as _;

/// `mi_option_purge_delay`: its place in mimalloc's option list, the same in its v2 and v3
/// headers (`libmimalloc-sys` names no constant for it).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

unsafe extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    #[cfg(test)]
    fn mi_option_get(option: std::ffi::c_int) -> std::ffi::c_long;
}

/// Sets how many milliseconds mimalloc waits before giving freed memory back to the kernel (its
/// default 1000 in the v3 build linked here; 0 at once).
pub fn set_allocator_purge_delay(ms: i64) {
    // SAFETY: mi_option_set only stores the value; any value is valid for this option.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, ms as std::ffi::c_long) }
}

/// mimalloc's purge delay in force, in milliseconds.
#[cfg(test)]
pub fn allocator_purge_delay() -> i64 {
    // SAFETY: mi_option_get only reads the option (initialising options from the environment
    // the first time).
    unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) as i64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_the_one_set() {
        // Option 15's default is v3's purge delay of 1000 ms (its neighbours are 0/1 switches),
        // unless the environment set it.
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(allocator_purge_delay(), 1000);
        }
        let before = allocator_purge_delay();
        set_allocator_purge_delay(0);
        assert_eq!(allocator_purge_delay(), 0);
        set_allocator_purge_delay(before);
    }
}
