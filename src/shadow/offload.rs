//! Shadow work that runs no inference (a policy-only shadow: the live scores under another
//! policy) still costs, per review, a decision, metric updates and, on a disagreement, a hashed
//! and serialised log line. It runs here, on one background thread placed like the shadow
//! workers (`shadow.scheduling`, `shadow.nice`, `shadow.cpus`), not on the request's task: the
//! request hands it over with a send that never waits, and a full queue sheds the work (counted
//! by the caller).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use crossbeam_channel::Sender;

use crate::inference::cpu::{self, CpuSet};

/// How the thread runs: the `[shadow]` settings of the config being served.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    pub idle: bool,
    pub nice: i32,
    pub cpus: Option<CpuSet>,
}

impl Default for Placement {
    fn default() -> Placement {
        Placement { idle: true, nice: crate::config::defaults::SHADOW_NICE, cpus: None }
    }
}

static PLACEMENT: Mutex<Option<Placement>> = Mutex::new(None);
/// Bumped by every change of `PLACEMENT`; the thread re-applies it before its next work.
static PLACED: AtomicU64 = AtomicU64::new(0);

/// Sets how the thread runs from its next piece of work on (every load of a config calls it).
pub fn place(placement: Placement) {
    let mut current = PLACEMENT.lock().unwrap_or_else(|e| e.into_inner());
    if current.as_ref() != Some(&placement) {
        *current = Some(placement);
        PLACED.fetch_add(1, Ordering::Release);
    }
}

/// Applies the current placement to the calling thread; `all` is the process's CPUs, where the
/// thread goes back to when `shadow.cpus` is unset. Best effort, as for the shadow workers:
/// what could not be applied is logged.
fn apply(all: Option<&CpuSet>) {
    let placement = PLACEMENT.lock().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or_default();
    if !placement.idle {
        // From SCHED_IDLE (a previous config) back to the normal class first.
        let _ = crate::sys::set_sched_normal();
    }
    let (policy, error) = cpu::lower_thread_priority(placement.idle, placement.nice);
    if let Some(error) = error {
        // E.g. SCHED_IDLE refused, or a lower niceness than before without CAP_SYS_NICE.
        let wanted = if placement.idle { "idle" } else { "nice" };
        tracing::warn!(wanted, policy = policy.as_str(), nice = placement.nice, %error, "the shadow comparison thread could not be placed as configured");
    }
    if let Some(cpus) = placement.cpus.as_ref().or(all)
        && let Err(e) = cpu::set_thread_affinity(cpus)
    {
        tracing::warn!(cpus = %cpus.to_list(), error = %e, "cannot place the shadow comparison thread on shadow.cpus");
    }
}

/// Work handed to the thread.
pub type Work = Box<dyn FnOnce() + Send>;

/// Pieces of work that may wait; beyond this, `submit` refuses.
const CAPACITY: usize = 4096;
/// Bytes of review text that waiting and running work may keep alive; beyond this, `submit`
/// refuses. Each piece holds its request's reviews, and this thread runs only when live work
/// leaves a core idle: under 2 MiB requests that kept the CPUs busy, a queue bounded by count
/// alone held ~230 MiB.
const MAX_BYTES: usize = 8 * 1024 * 1024;

static HELD: AtomicUsize = AtomicUsize::new(0);

/// `bytes` held against `MAX_BYTES` until dropped: after the work has run, or unrun.
struct Charge(usize);

impl Drop for Charge {
    fn drop(&mut self) {
        HELD.fetch_sub(self.0, Ordering::Relaxed);
    }
}

/// Queues `work`, which keeps `bytes` of review text alive, for the background thread; false
/// when the queue is full, by count or bytes, or the thread could not be started (the work is
/// dropped unrun).
pub fn submit(work: Work, bytes: usize) -> bool {
    static QUEUE: OnceLock<Option<Sender<Work>>> = OnceLock::new();
    let charge = Charge(bytes);
    let held = HELD.fetch_add(bytes, Ordering::Relaxed);
    if held > 0 && held + bytes > MAX_BYTES {
        return false;
    }
    let work: Work = Box::new(move || {
        let _charge = charge;
        work();
    });
    QUEUE.get_or_init(start).as_ref().is_some_and(|queue| queue.try_send(work).is_ok())
}

fn start() -> Option<Sender<Work>> {
    let (tx, rx) = crossbeam_channel::bounded::<Work>(CAPACITY);
    // Read here, on a thread no shadow setting has restricted.
    let all = cpu::allowed_cpus().ok();
    let spawned = std::thread::Builder::new().name("shadow-offload".into()).spawn(move || {
        let mut placed = None;
        for work in rx {
            let now = PLACED.load(Ordering::Acquire);
            if placed != Some(now) {
                apply(all.as_ref());
                placed = Some(now);
            }
            // A failing comparison must not take the thread (and every later one) down.
            if catch_unwind(AssertUnwindSafe(work)).is_err() {
                tracing::error!("a shadow comparison panicked; the next one runs");
            }
        }
    });
    match spawned {
        Ok(_) => Some(tx),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the shadow comparison thread; policy-only shadows are shed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    #[test]
    fn work_is_refused_beyond_the_byte_budget_until_what_holds_it_has_run() {
        let (ran_tx, ran) = mpsc::channel();
        let (release, wait) = mpsc::channel::<()>();
        let half = MAX_BYTES / 2 + 1;
        let holder = ran_tx.clone();
        assert!(submit(
            Box::new(move || {
                let _ = wait.recv();
                let _ = holder.send("first");
            }),
            half
        ));
        assert!(!submit(Box::new(|| {}), half), "two halves and a byte are more than the budget");
        release.send(()).unwrap();
        // The thread runs one piece at a time: once this one runs, the first has given its bytes back.
        let marker = ran_tx.clone();
        assert!(submit(
            Box::new(move || {
                let _ = marker.send("marker");
            }),
            0
        ));
        assert_eq!((ran.recv().unwrap(), ran.recv().unwrap()), ("first", "marker"));
        assert!(submit(
            Box::new(move || {
                let _ = ran_tx.send("again");
            }),
            half
        ));
        assert_eq!(ran.recv().unwrap(), "again");
    }
}
