//! Steps whose cost grows with the request's size, kept off the async runtime's workers.
//!
//! Decoding and validating a 2 MB request is milliseconds of CPU in a single poll. On a runtime
//! worker that poll holds every task queued behind it, and under a stream of large requests (the
//! attack suite's i) both workers can be in such polls while a small call waits. So a large step
//! runs elsewhere: `block_in_place` hands the worker's queue to another thread, and the step runs
//! on a thread of its own under `SCHED_IDLE`, as long jobs do, so it takes a CPU only when no
//! call, runtime or live worker thread wants one. The trade is the long jobs' one: while small
//! calls keep every CPU busy, a large request waits, on the idle class's sliver of CPU; a step
//! cannot be interrupted, so a Classify whose decoding and validation outlast its deadline is
//! answered DEADLINE_EXCEEDED when they end (the deadline is checked after validation). Small
//! requests stay inline, since the hand-off costs a thread start. docs/reliability.md has the
//! measurements.

/// Request bytes from which a step is run off the worker: well above a typical request (a few
/// KiB), well below the largest (4 MB by default).
pub const LARGE_FROM_BYTES: usize = 256 * 1024;

/// Runs `step` and returns its result: inline, or, when its input is `bytes` >= `LARGE_FROM_BYTES`
/// on a multi-thread runtime, at idle priority with this worker's other tasks handed to another
/// thread (a current-thread runtime, as in unit tests, runs it inline).
pub fn if_large<R: Send>(bytes: usize, step: impl FnOnce() -> R + Send) -> R {
    if bytes >= LARGE_FROM_BYTES && on_multi_thread_runtime() {
        tokio::task::block_in_place(|| at_idle_priority(step))
    } else {
        step()
    }
}

/// Runs `step` on a thread of its own under `SCHED_IDLE` (as long jobs run), waiting for it.
fn at_idle_priority<R: Send>(step: impl FnOnce() -> R + Send) -> R {
    let step = std::sync::Mutex::new(Some(step));
    let ran = std::thread::scope(|s| {
        let spawned = std::thread::Builder::new().name("large-step".into()).spawn_scoped(s, || {
            crate::inference::cpu::lower_thread_priority(true, 19);
            let step = step.lock().unwrap_or_else(|p| p.into_inner()).take();
            step.map(|step| step())
        });
        match spawned {
            Ok(thread) => thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            Err(_) => None,
        }
    });
    match ran {
        Some(r) => r,
        // No thread to be had: run it here.
        None => (step.into_inner().unwrap_or_else(|p| p.into_inner()).expect("the step did not run"))(),
    }
}

fn on_multi_thread_runtime() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| matches!(h.runtime_flavor(), tokio::runtime::RuntimeFlavor::MultiThread))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's scheduling policy, `/proc/thread-self/stat` field 41.
    fn thread_policy() -> u32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        // Fields after the command name, which ends with the last ')': field 3 is the first.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        rest.split(' ').nth(41 - 3).unwrap().parse().unwrap()
    }

    #[test]
    fn runs_inline_outside_a_runtime_and_on_a_current_thread_runtime() {
        assert_eq!(if_large(LARGE_FROM_BYTES, || 7), 7);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        assert_eq!(rt.block_on(async { if_large(LARGE_FROM_BYTES, || 8) }), 8);
    }

    #[test]
    fn a_large_step_runs_at_idle_priority_and_leaves_the_worker_s_tasks_to_another_thread() {
        // One worker: while the large step blocks its thread, a task spawned before it can only
        // run if the worker's queue went to another thread.
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().unwrap();
        rt.block_on(async {
            tokio::spawn(async {
                let (tx, rx) = std::sync::mpsc::channel::<()>();
                let other = tokio::spawn(async move { tx.send(()).unwrap() });
                let (got, policy) = if_large(LARGE_FROM_BYTES, move || {
                    (rx.recv_timeout(std::time::Duration::from_secs(10)), thread_policy())
                });
                other.await.unwrap();
                assert!(got.is_ok(), "the other task did not run while the large step blocked");
                assert_eq!(policy, 5, "the large step did not run under SCHED_IDLE (5)");
            })
            .await
            .unwrap();
        });
    }
}
