//! Classify calls in progress, bounded across the process (`server.max_calls_in_progress`), over
//! both APIs: a call past the bound waits for a turn before its request is read, and turns go to
//! one connection at a time in rotation (`request::Caller`, `rotation`).
//!
//! Every call in progress is a task the async runtime polls at each step, in arrival order: one
//! client keeping 512 calls in flight on 8 connections made another caller's calls wait behind
//! all of them in the runtime's queues (its p50 1.7 -> 10.8 ms, p99 3.3 -> 27 ms, with the model
//! queue already taking turns), where 64 calls already kept the workers as busy (22,191 against
//! 24,825 answers/s). A call waiting here is parked, costs the runtime nothing, and has not been
//! read: HTTP/2 flow control holds the rest of its upload at the client.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use metrics::Gauge;
use tokio::sync::oneshot;

use crate::error::Error;
use crate::request::Caller;
use crate::rotation::Rotation;

/// The bound and the calls waiting for a turn. Clones share it.
#[derive(Clone)]
pub struct Turns(Arc<Shared>);

struct Shared {
    state: Mutex<State>,
    max: usize,
    /// Calls waiting now.
    waiting: Gauge,
}

#[derive(Default)]
struct State {
    in_progress: usize,
    /// The calls waiting, by connection: each is woken with its permit.
    waiting: Rotation<oneshot::Sender<Permit>>,
}

impl Turns {
    pub fn new(max: usize, waiting: Gauge) -> Turns {
        // Exported from the start, so a dashboard or alert sees 0 rather than no series.
        waiting.set(0.0);
        Turns(Arc::new(Shared { state: Mutex::new(State::default()), max: max.max(1), waiting }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A turn for a call from `caller`: at once while fewer than the bound are in progress and
    /// nobody waits, else when its connection's turn comes. The call is in progress until the
    /// permit is dropped. Cancel-safe: a call that stops waiting gives up its place, and a turn
    /// handed to it as it stopped goes to the next.
    pub async fn enter(&self, caller: Caller) -> Permit {
        let rx = {
            let mut state = self.lock();
            if state.in_progress < self.0.max && state.waiting.is_empty() {
                state.in_progress += 1;
                return Permit(Some(self.clone()));
            }
            let (tx, rx) = oneshot::channel();
            state.waiting.push(caller, tx);
            self.0.waiting.set(state.waiting.len() as f64);
            rx
        };
        let mut waiting = Waiting { turns: self.clone(), rx: Some(rx) };
        let rx = waiting.rx.as_mut().expect("set above");
        // The sender goes only with a permit sent, or with `Waiting` (which outlives this await),
        // so an error cannot happen; if it did, the call goes on uncounted rather than fail.
        let permit = rx.await.unwrap_or(Permit(None));
        waiting.rx = None;
        permit
    }

    /// `enter`, given up at `limit`: the refusal says why.
    pub async fn enter_within(&self, caller: Caller, limit: Duration) -> Result<Permit, Error> {
        tokio::time::timeout(limit, self.enter(caller)).await.map_err(|_| {
            Error::DeadlineExceeded(format!(
                "after {limit:?} waiting for a turn: {} Classify calls were in progress \
                 (server.max_calls_in_progress); the server is overloaded, retry with backoff",
                self.0.max
            ))
        })
    }

    /// Hands a finished call's turn to the next waiting call, or frees it.
    fn release(&self) {
        let mut state = self.lock();
        loop {
            let Some(next) = state.waiting.pop() else {
                state.in_progress -= 1;
                break;
            };
            // The permit moves on: `in_progress` stays. A caller that has stopped waiting hands
            // it back unsent; disarm it (dropping it here would release again, under the lock).
            match next.send(Permit(Some(self.clone()))) {
                Ok(()) => break,
                Err(mut unsent) => unsent.0 = None,
            }
        }
        self.0.waiting.set(state.waiting.len() as f64);
    }
}

/// A call in progress; dropping it hands the turn on.
pub struct Permit(Option<Turns>);

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(turns) = self.0.take() {
            turns.release();
        }
    }
}

/// A call waiting for its turn; if dropped before the turn came, its place is given up (see
/// `Turns::enter`).
struct Waiting {
    turns: Turns,
    rx: Option<oneshot::Receiver<Permit>>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        // Closing first means `release` can no longer send to us: whatever it sent before is
        // in the channel, and is dropped (handing the turn on) below, outside the lock.
        rx.close();
        let sent = rx.try_recv().ok();
        {
            let mut state = self.turns.lock();
            state.waiting.retain(|tx| !tx.is_closed());
            self.turns.0.waiting.set(state.waiting.len() as f64);
        }
        drop(sent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turns(max: usize) -> Turns {
        Turns::new(max, Gauge::noop())
    }

    /// Starts a call from `caller` that records its name once it has a turn and holds the turn
    /// until told to finish.
    fn call(
        turns: &Turns,
        caller: u64,
        name: &'static str,
        log: &Arc<Mutex<Vec<&'static str>>>,
    ) -> (tokio::task::JoinHandle<()>, oneshot::Sender<()>) {
        let (finish, finished) = oneshot::channel::<()>();
        let (turns, log) = (turns.clone(), log.clone());
        let task = tokio::spawn(async move {
            let _permit = turns.enter(Caller::connection(caller)).await;
            log.lock().unwrap().push(name);
            let _ = finished.await;
        });
        (task, finish)
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn waiting_calls_get_turns_one_connection_at_a_time() {
        let turns = turns(1);
        let log = Arc::new(Mutex::new(Vec::new()));
        let (first, finish_first) = call(&turns, 1, "a1", &log);
        settle().await;
        let mut queued = Vec::new();
        for (caller, name) in [(1, "a2"), (1, "a3"), (1, "a4"), (2, "b1"), (3, "c1"), (2, "b2")] {
            queued.push(call(&turns, caller, name, &log));
            settle().await;
        }
        assert_eq!(*log.lock().unwrap(), ["a1"]);
        // Each queued call finishes as soon as it has its turn, handing it on.
        let tasks: Vec<_> = queued
            .into_iter()
            .map(|(task, finish)| {
                let _ = finish.send(());
                task
            })
            .collect();
        let _ = finish_first.send(());
        first.await.unwrap();
        for task in tasks {
            task.await.unwrap();
        }
        // a2 was first in line; then each connection in turn, a's backlog last.
        assert_eq!(*log.lock().unwrap(), ["a1", "a2", "b1", "c1", "a3", "b2", "a4"]);
        assert_eq!(turns.lock().in_progress, 0);
    }

    #[tokio::test]
    async fn a_call_that_stops_waiting_gives_up_its_place_and_never_holds_a_turn() {
        let turns = turns(1);
        let log = Arc::new(Mutex::new(Vec::new()));
        let (first, finish_first) = call(&turns, 1, "a1", &log);
        settle().await;
        // Gives up while waiting (its deadline, or its client gone).
        let gave_up = tokio::time::timeout(Duration::from_millis(10), turns.enter(Caller::connection(2))).await;
        assert!(gave_up.is_err());
        let (second, finish_second) = call(&turns, 3, "c1", &log);
        settle().await;
        let _ = finish_first.send(());
        first.await.unwrap();
        settle().await;
        let _ = finish_second.send(());
        second.await.unwrap();
        assert_eq!(*log.lock().unwrap(), ["a1", "c1"]);
        let state = turns.lock();
        assert_eq!((state.in_progress, state.waiting.len()), (0, 0));
    }
}
