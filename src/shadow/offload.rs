//! Shadow work that runs no inference (a policy-only shadow: the live scores under another
//! policy) still costs, per review, a decision, metric updates and, on a disagreement, a hashed
//! and serialised log line. It runs here, on one background thread behind live work
//! (`SCHED_IDLE`, else `nice`), not on the request's task: the request hands it over with a
//! send that never waits, and a full queue sheds the work (counted by the caller).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;

use crossbeam_channel::Sender;

/// Work handed to the thread.
pub type Work = Box<dyn FnOnce() + Send>;

/// Pieces of work that may wait; beyond this, `submit` refuses.
const CAPACITY: usize = 4096;

/// Queues `work` for the background thread; false when the queue is full or the thread could
/// not be started (the work is dropped unrun).
pub fn submit(work: Work) -> bool {
    static QUEUE: OnceLock<Option<Sender<Work>>> = OnceLock::new();
    QUEUE.get_or_init(start).as_ref().is_some_and(|queue| queue.try_send(work).is_ok())
}

fn start() -> Option<Sender<Work>> {
    let (tx, rx) = crossbeam_channel::bounded::<Work>(CAPACITY);
    let spawned = std::thread::Builder::new().name("shadow-offload".into()).spawn(move || {
        let _ = crate::inference::cpu::lower_thread_priority(true, crate::config::defaults::SHADOW_NICE);
        for work in rx {
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
