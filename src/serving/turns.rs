//! Classify calls in progress, bounded across the process (`server.max_calls_in_progress`), over
//! both APIs: a call past the bound waits for a turn once its request is in, and turns go to
//! one connection at a time in rotation (`request::Caller`, `rotation`).
//!
//! Every call in progress is a task the async runtime polls at each step, in arrival order: one
//! client keeping 512 calls in flight on 8 connections made another caller's calls wait behind
//! all of them in the runtime's queues (its p50 1.7 -> 10.8 ms, p99 3.3 -> 27 ms, with the model
//! queue already taking turns), where 64 calls already kept the workers as busy (22,191 against
//! 24,825 answers/s). A call waiting here is parked and costs the runtime nothing; its request's
//! bytes stay reserved from the upload budgets while it waits (`grpc::upload::Parked`). The turn
//! is not taken before the request is in: then 32 uploads stalled after their headers held every
//! turn until their deadline, and every other caller's calls failed.
//!
//! Busy connections yield to light ones: a call is busy when its connection has another in
//! progress or waiting, or had two at once within the last second and started at least half the
//! mean calls per connection in the last second (a client spreading many calls over a few
//! connections leaves each empty now and then; a light caller falling behind sends two at once
//! now and then). A light call does not wait behind busy ones: freed places go to light and busy
//! calls in alternation (so many light connections cannot starve a busy one), and while light
//! calls come beside busy ones, the busy ones together are held to
//! `server.max_busy_calls_in_progress`. What a light caller waits for under a flood is a CPU at
//! each step of its call, behind every other call in progress: on two cores saturated by a
//! 512-call flood its p99 read 10.3-11.2 ms with the flood's 32 calls in progress and 5.0-6.3 ms
//! held to 8, which cost the flood 0.66-0.75x its answers. A lone busy client keeps the whole bound.
//!
//! A large call weighs by its size (`LARGE_CALL_BYTES`), known when it asks for its turn (its
//! request is in), and counts as busy. Beside any small call, light or busy, large calls are
//! held to `max_busy` by weight among themselves; beside a light caller, small busy calls to
//! `max_busy` by count: so maximal requests go one at a time, and a small call is never held
//! behind them. (Held only beside light callers, large calls ran three at once in the full
//! attack suite whenever the steady caller, the one calling most often there, was counted busy
//! after falling behind.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use metrics::Gauge;
use tokio::sync::oneshot;

use crate::error::Error;
use crate::request::Caller;
use crate::rotation::Rotation;

/// How long after a light call was let in beside busy ones the busy ones stay held to their own
/// bound: longer than the gap between a steady light caller's calls, so the bound does not lift
/// between them. Also how long a connection that had two calls at once is remembered for it, and
/// the period over which calls per connection are counted.
const WINDOW: Duration = Duration::from_secs(1);

/// What a large request weighs on the busy bound: one call per this many bytes of its message
/// (at most the whole bound). A call of 512 KiB or more makes its connection busy for the window.
/// Three callers with one maximal (2 MiB) call in flight each are three light calls, and their
/// decoding, tokenizing and scoring held two cores: a steady light caller's p99 read 7.0 ms beside
/// them and 4.5-4.7 ms beside one such caller (the server used 1.56 and 1.14 CPUs). At 2 MiB a
/// call weighs the default bound of 8, so large calls take turns one at a time while light
/// callers call, and keep the whole bound when none does. A 64-review batch of ordinary reviews
/// (a few KiB each) weighs one, and is held (when busy) by count with the other small calls.
pub const LARGE_CALL_BYTES: usize = 256 * 1024;

/// The gauges `Turns` keeps.
pub struct TurnGauges {
    /// Calls waiting now.
    pub waiting: Gauge,
    /// Calls in progress now from light connections.
    pub light: Gauge,
    /// Calls in progress now from busy connections.
    pub busy: Gauge,
}

impl TurnGauges {
    pub fn noop() -> TurnGauges {
        TurnGauges { waiting: Gauge::noop(), light: Gauge::noop(), busy: Gauge::noop() }
    }
}

/// The bound and the calls waiting for a turn. Clones share it.
#[derive(Clone)]
pub struct Turns(Arc<Shared>);

struct Shared {
    state: Mutex<State>,
    max: usize,
    /// Busy connections' calls in progress together while light calls come beside them.
    max_busy: usize,
    window: Duration,
    gauges: TurnGauges,
}

#[derive(Default)]
struct State {
    in_progress: usize,
    busy_in_progress: usize,
    /// Of those, the large ones (weighing more than one, `LARGE_CALL_BYTES`), and their weight.
    heavy_in_progress: usize,
    heavy_weight: usize,
    /// Connections with a call in progress, or a call started in this period or the last.
    conns: HashMap<Caller, Conn>,
    /// Calls are counted in periods of one window from `first`: this period's and the last's.
    first: Option<Instant>,
    period: u64,
    counts: Counts,
    last_counts: Counts,
    /// When `conns` was last swept of connections that are neither.
    swept: Option<Instant>,
    /// Until when busy connections are held to `max_busy`.
    light_until: Option<Instant>,
    /// Until when large calls are held to `max_busy` by weight: a small call, light or busy,
    /// came beside them.
    small_until: Option<Instant>,
    /// The calls waiting, by connection: each is woken with its permit.
    light: Rotation<Waiter>,
    busy: Rotation<Waiter>,
    /// Busy calls expected to be large: held by weight, apart from the small ones.
    heavy: Rotation<Waiter>,
    /// Whether the next place freed goes to a busy call, if both kinds wait.
    busy_next: bool,
}

#[derive(Default)]
struct Conn {
    in_progress: usize,
    /// Until when it counts as having had two calls at once.
    busy_until: Option<Instant>,
    /// The period `calls` counts in, and its count in the period before.
    period: u64,
    calls: u64,
    last_calls: u64,
}

/// Calls started in a period, and by how many connections.
#[derive(Default, Clone, Copy)]
struct Counts {
    calls: u64,
    conns: u64,
}

struct Waiter {
    caller: Caller,
    weight: usize,
    tx: oneshot::Sender<Permit>,
}

/// How a call counts, from its start to its end: busy or light, and its weight.
#[derive(Clone, Copy)]
struct Call {
    busy: bool,
    weight: usize,
}

impl State {
    /// Counts a call from `caller` of `weight` (its request's, `LARGE_CALL_BYTES`) and says
    /// whether it is a busy one (see the module's doc).
    fn mark(&mut self, caller: Caller, weight: usize, now: Instant, window: Duration) -> bool {
        let first = *self.first.get_or_insert(now);
        let period = (now.saturating_duration_since(first).as_nanos() / window.as_nanos().max(1)) as u64;
        if period != self.period {
            self.last_counts = if period == self.period + 1 { self.counts } else { Counts::default() };
            self.counts = Counts::default();
            self.period = period;
        }
        let waiting = self.light.held(caller) + self.busy.held(caller) + self.heavy.held(caller);
        let conn = self.conns.entry(caller).or_default();
        if conn.period != period {
            conn.last_calls = if conn.period + 1 == period { conn.calls } else { 0 };
            conn.calls = 0;
            conn.period = period;
        }
        conn.calls += 1;
        self.counts.calls += 1;
        self.counts.conns += u64::from(conn.calls == 1);
        let concurrent = conn.in_progress > 0 || waiting > 0;
        let had_two = conn.busy_until.is_some_and(|until| now < until);
        // At least half the mean per connection: 2 * its calls >= calls / connections. No count
        // yet (the first period) counts as at least.
        let Counts { calls, conns } = self.last_counts;
        let many_calls = 2 * conn.calls.max(conn.last_calls) * conns >= calls;
        if concurrent {
            conn.busy_until = Some(now + window);
        }
        if self.swept.is_none_or(|at| now >= at + window) {
            self.conns.retain(|_, c| {
                c.in_progress > 0 || c.period + 1 >= period || c.busy_until.is_some_and(|until| now < until)
            });
            self.swept = Some(now);
        }
        concurrent || weight > 1 || (had_two && many_calls)
    }

    fn waiting(&self) -> usize {
        self.light.len() + self.busy.len() + self.heavy.len()
    }

    /// Whether a call of the kind given may start now, waiting calls aside. Large busy calls are
    /// held by their weight among themselves, small ones by their count: a light caller that
    /// falls behind and is counted busy for a moment must not wait for the large calls in
    /// progress to end (in the full attack suite such a call waited 437 ms behind three 2 MiB
    /// calls when one weight held every busy call).
    fn has_room(&self, shared: &Shared, busy: bool, weight: usize, now: Instant) -> bool {
        let armed = |until: Option<Instant>| until.is_some_and(|until| now < until);
        let held_back = busy
            && if weight > 1 {
                self.heavy_weight + weight > shared.max_busy && (armed(self.light_until) || armed(self.small_until))
            } else {
                self.busy_in_progress - self.heavy_in_progress >= shared.max_busy && armed(self.light_until)
            };
        self.in_progress < shared.max && !held_back
    }

    fn start(&mut self, caller: Caller, busy: bool, weight: usize, now: Instant, window: Duration) {
        if weight == 1 && (self.heavy_in_progress > 0 || !self.heavy.is_empty()) {
            self.small_until = Some(now + window);
        }
        self.in_progress += 1;
        self.conns.entry(caller).or_default().in_progress += 1;
        if busy {
            self.busy_in_progress += 1;
            if weight > 1 {
                self.heavy_in_progress += 1;
                self.heavy_weight += weight;
            }
        } else if self.busy_in_progress > 0 || !self.busy.is_empty() || !self.heavy.is_empty() {
            self.light_until = Some(now + window);
        }
    }

    /// Ends a call; a busy one keeps its connection busy for the window from now.
    fn finish(&mut self, caller: Caller, busy: bool, weight: usize, now: Instant, window: Duration) {
        self.in_progress -= 1;
        if busy {
            self.busy_in_progress -= 1;
            if weight > 1 {
                self.heavy_in_progress -= 1;
                self.heavy_weight -= weight;
            }
        }
        if let Some(conn) = self.conns.get_mut(&caller) {
            conn.in_progress -= 1;
            if busy {
                conn.busy_until = Some(now + window);
            }
        }
    }
}

impl Turns {
    /// `max` calls in progress; `max_busy` of them from busy connections while light calls come
    /// beside them (at most `max`).
    pub fn new(max: usize, max_busy: usize, gauges: TurnGauges) -> Turns {
        Turns::with_window(max, max_busy, WINDOW, gauges)
    }

    fn with_window(max: usize, max_busy: usize, window: Duration, gauges: TurnGauges) -> Turns {
        // Exported from the start, so a dashboard or alert sees 0 rather than no series.
        for gauge in [&gauges.waiting, &gauges.light, &gauges.busy] {
            gauge.set(0.0);
        }
        let max = max.max(1);
        let max_busy = max_busy.clamp(1, max);
        Turns(Arc::new(Shared { state: Mutex::new(State::default()), max, max_busy, window, gauges }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn export(&self, state: &State) {
        let gauges = &self.0.gauges;
        gauges.waiting.set(state.waiting() as f64);
        gauges.busy.set(state.busy_in_progress as f64);
        gauges.light.set((state.in_progress - state.busy_in_progress) as f64);
    }

    /// A turn for a call from `caller` whose request is `bytes` long (it weighs by its size,
    /// `LARGE_CALL_BYTES`): at once if there is room and no call it must yield to is waiting,
    /// else when its turn comes. The call is in progress until the permit is dropped.
    /// Cancel-safe: a call that stops waiting gives up its place, and a turn handed to it as it
    /// stopped goes to the next.
    async fn enter(&self, caller: Caller, bytes: usize) -> Permit {
        let rx = {
            let now = Instant::now();
            let mut state = self.lock();
            let weight = (bytes / LARGE_CALL_BYTES).clamp(1, self.0.max_busy);
            let busy = state.mark(caller, weight, now, self.0.window);
            let ahead = match (busy, weight > 1) {
                (false, _) => state.light.len(),
                (true, false) => state.light.len() + state.busy.len(),
                (true, true) => state.light.len() + state.heavy.len(),
            };
            if ahead == 0 && state.has_room(&self.0, busy, weight, now) {
                state.start(caller, busy, weight, now, self.0.window);
                self.export(&state);
                return Permit(Some(Ticket { turns: self.clone(), caller, call: Call { busy, weight } }));
            }
            let (tx, rx) = oneshot::channel();
            let queue = match (busy, weight > 1) {
                (false, _) => &mut state.light,
                (true, false) => &mut state.busy,
                (true, true) => &mut state.heavy,
            };
            queue.push(caller, Waiter { caller, weight, tx });
            self.export(&state);
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

    /// `enter` for a call whose request of `bytes` has arrived, given up at `limit`: the refusal
    /// says why.
    pub async fn enter_within(&self, caller: Caller, bytes: usize, limit: Duration) -> Result<Permit, Error> {
        tokio::time::timeout(limit, self.enter(caller, bytes)).await.map_err(|_| {
            Error::DeadlineExceeded(format!(
                "after {limit:?} waiting for a turn: {} Classify calls were in progress \
                 (server.max_calls_in_progress); the server is overloaded, retry with backoff",
                self.0.max
            ))
        })
    }

    /// Ends a call, and starts the waiting calls that now have room.
    fn release(&self, caller: Caller, Call { busy, weight }: Call) {
        let now = Instant::now();
        let mut state = self.lock();
        state.finish(caller, busy, weight, now, self.0.window);
        self.admit(&mut state, now);
        self.export(&state);
    }

    /// Starts the waiting calls that have room: light and busy ones in alternation, light first
    /// (of the busy ones, a large one first when it fits).
    fn admit(&self, state: &mut State, now: Instant) {
        loop {
            let light = !state.light.is_empty() && state.has_room(&self.0, false, 1, now);
            let heavy = state.heavy.peek().is_some_and(|w| state.has_room(&self.0, true, w.weight, now));
            let small = !state.busy.is_empty() && state.has_room(&self.0, true, 1, now);
            let busy_turn = (heavy || small) && (!light || state.busy_next);
            let next = if busy_turn {
                let queue = if heavy { &mut state.heavy } else { &mut state.busy };
                queue.pop().map(|w| (w, true))
            } else if light {
                state.light.pop().map(|w| (w, false))
            } else {
                None
            };
            let Some((Waiter { caller, weight, tx }, busy)) = next else {
                break;
            };
            state.busy_next = !busy;
            state.start(caller, busy, weight, now, self.0.window);
            let ticket = Ticket { turns: self.clone(), caller, call: Call { busy, weight } };
            // A caller that has stopped waiting hands the permit back unsent; disarm it (dropping
            // it here would release again, under the lock) and offer the place to the next.
            if let Err(mut unsent) = tx.send(Permit(Some(ticket))) {
                unsent.0 = None;
                state.finish(caller, busy, weight, now, self.0.window);
            }
        }
    }
}

struct Ticket {
    turns: Turns,
    caller: Caller,
    call: Call,
}

/// A call in progress; dropping it hands the turn on.
pub struct Permit(Option<Ticket>);

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(Ticket { turns, caller, call }) = self.0.take() {
            turns.release(caller, call);
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
            state.light.retain(|w| !w.tx.is_closed());
            state.busy.retain(|w| !w.tx.is_closed());
            state.heavy.retain(|w| !w.tx.is_closed());
            // A large busy call that gave up may have been holding back smaller ones behind it.
            self.turns.admit(&mut state, Instant::now());
            self.turns.export(&state);
        }
        drop(sent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turns(max: usize) -> Turns {
        Turns::new(max, max, TurnGauges::noop())
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
            let _permit = turns.enter(Caller::connection(caller), 0).await;
            log.lock().unwrap().push(name);
            let _ = finished.await;
        });
        (task, finish)
    }

    /// Tells every call to finish once it has its turn, then waits for them all.
    async fn finish_all(calls: impl IntoIterator<Item = (tokio::task::JoinHandle<()>, oneshot::Sender<()>)>) {
        let tasks: Vec<_> = calls
            .into_iter()
            .map(|(task, finish)| {
                let _ = finish.send(());
                task
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
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
        finish_all(queued.into_iter().chain([(first, finish_first)])).await;
        // b1 and c1 were each their connection's only call (light), the others busy: freed
        // places go to light and busy calls in alternation, light first, and the busy
        // connections take turns, a's backlog last.
        assert_eq!(*log.lock().unwrap(), ["a1", "b1", "a2", "c1", "b2", "a3", "a4"]);
        assert_eq!(turns.lock().in_progress, 0);
    }

    #[tokio::test]
    async fn a_call_that_stops_waiting_gives_up_its_place_and_never_holds_a_turn() {
        let turns = turns(1);
        let log = Arc::new(Mutex::new(Vec::new()));
        let (first, finish_first) = call(&turns, 1, "a1", &log);
        settle().await;
        // Gives up while waiting (its deadline, or its client gone).
        let gave_up = tokio::time::timeout(Duration::from_millis(10), turns.enter(Caller::connection(2), 0)).await;
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
        assert_eq!((state.in_progress, state.waiting()), (0, 0));
    }

    /// A lone busy connection gets the whole bound; once a light caller calls beside it, its calls
    /// are held to the busy bound until the light one has been quiet for the window.
    #[tokio::test]
    async fn busy_connections_are_held_back_only_while_a_light_one_calls() {
        let window = Duration::from_millis(200);
        let turns = Turns::with_window(4, 2, window, TurnGauges::noop());
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut calls = std::collections::HashMap::new();
        for name in ["a1", "a2", "a3", "a4", "a5", "a6"] {
            calls.insert(name, call(&turns, 1, name, &log));
            settle().await;
        }
        assert_eq!(*log.lock().unwrap(), ["a1", "a2", "a3", "a4"], "alone, it has all four places");
        calls.insert("b1", call(&turns, 2, "b1", &log));
        settle().await;
        let mut finish = |name: &str| {
            let (_, finish) = calls.get_mut(name).unwrap();
            let (dummy, _) = oneshot::channel();
            let _ = std::mem::replace(finish, dummy).send(());
        };
        finish("a1");
        settle().await;
        assert_eq!(log.lock().unwrap().last(), Some(&"b1"), "the light call has the freed place");
        finish("a2");
        finish("b1");
        settle().await;
        {
            let state = turns.lock();
            assert_eq!((state.in_progress, state.busy_in_progress, state.busy.len()), (2, 2, 2));
        }
        assert_eq!(log.lock().unwrap().len(), 5, "two busy calls in progress are its bound beside b1");
        tokio::time::sleep(window * 2).await;
        finish("a3");
        settle().await;
        assert_eq!(*log.lock().unwrap(), ["a1", "a2", "a3", "a4", "b1", "a5", "a6"], "the bound lifted");
        for name in ["a4", "a5", "a6"] {
            finish(name);
        }
        for (_, (task, _)) in calls {
            task.await.unwrap();
        }
        {
            let state = turns.lock();
            assert_eq!((state.in_progress, state.busy_in_progress), (0, 0));
        }
        // The connection that had calls at once stays busy for the window: a lone call of its
        // now is busy, and arms no hold; after the window, its next is light again.
        let permit = turns.enter(Caller::connection(1), 0).await;
        assert_eq!(turns.lock().busy_in_progress, 1);
        drop(permit);
        tokio::time::sleep(window * 2).await;
        let permit = turns.enter(Caller::connection(1), 0).await;
        assert_eq!(turns.lock().busy_in_progress, 0);
        drop(permit);
        assert!(turns.lock().light_until.is_none_or(|until| until < Instant::now()));
    }

    /// Freed places alternate between light and busy calls: connections with one call each,
    /// however many, cannot keep a busy connection's calls waiting.
    #[tokio::test]
    async fn many_light_connections_cannot_starve_a_busy_one() {
        let turns = turns(2);
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut calls = Vec::new();
        for (caller, name) in [(1, "a1"), (1, "a2"), (1, "a3"), (2, "b1"), (3, "c1"), (4, "d1"), (5, "e1")] {
            calls.push(call(&turns, caller, name, &log));
            settle().await;
        }
        assert_eq!(*log.lock().unwrap(), ["a1", "a2"]);
        // Each call finishes as soon as it has its place.
        finish_all(calls).await;
        let log = log.lock().unwrap().clone();
        let a3 = log.iter().position(|n| *n == "a3").unwrap();
        assert!(a3 <= 4, "a3 waited behind {} light calls: {log:?}", a3 - 2);
        assert_eq!(log.len(), 7);
    }

    /// Large calls' weight in progress, and large calls waiting.
    fn heavy_held(turns: &Turns) -> (usize, usize) {
        let state = turns.lock();
        (state.heavy_weight, state.heavy.len())
    }

    /// Three connections with one large call each: busy by weight from the start, so beside a
    /// light caller their next calls go one at a time; alone they have the whole bound again.
    #[tokio::test]
    async fn large_calls_take_turns_while_a_light_caller_calls() {
        let window = Duration::from_millis(300);
        let turns = Turns::with_window(32, 8, window, TurnGauges::noop());
        let (large, small) = (2 * 1024 * 1024, 4096);
        let enter = |caller: u64, bytes: usize| turns.enter(Caller::connection(caller), bytes);
        let first: Vec<Permit> = vec![enter(1, large).await, enter(2, large).await, enter(3, large).await];
        assert_eq!(
            {
                let state = turns.lock();
                (state.busy_in_progress, state.heavy_weight)
            },
            (3, 24),
            "one call each, but large: busy, weighing 8 each"
        );
        let light = enter(9, small).await;
        drop(first);
        let one = enter(1, large).await;
        let spawn_enter = |caller: u64| {
            let turns = turns.clone();
            tokio::spawn(async move { turns.enter(Caller::connection(caller), large).await })
        };
        let (second, third) = (spawn_enter(2), spawn_enter(3));
        settle().await;
        assert_eq!(heavy_held(&turns), (8, 2), "one large call at a time");
        // A small busy call is held by count, not by the large calls' weight: the second of these
        // is busy (its connection has another call in progress) and starts.
        let small_calls = (enter(7, small).await, enter(7, small).await);
        assert_eq!(turns.lock().busy_in_progress, 2);
        drop(small_calls);
        drop(one);
        settle().await;
        assert_eq!(heavy_held(&turns), (8, 1), "the next large call");
        // Once no light or small call has come for the window, the bound lifts: large calls
        // start together.
        drop(light);
        tokio::time::sleep(window * 2).await;
        drop(second.await.unwrap());
        let third = third.await.unwrap();
        let again = enter(3, large).await;
        assert_eq!(
            {
                let state = turns.lock();
                (state.heavy_weight, state.waiting())
            },
            (16, 0)
        );
        drop((third, again));
        let state = turns.lock();
        assert_eq!((state.in_progress, state.busy_in_progress, state.heavy_weight), (0, 0, 0));
    }

    /// A small call that counts as busy (a light caller that fell behind, or a flood) holds the
    /// large calls to one at a time as a light call does.
    #[tokio::test]
    async fn large_calls_take_turns_beside_small_busy_calls() {
        let window = Duration::from_millis(300);
        let turns = Turns::with_window(32, 8, window, TurnGauges::noop());
        let (large, small) = (2 * 1024 * 1024, 4096);
        let enter = |caller: u64, bytes: usize| turns.enter(Caller::connection(caller), bytes);
        let first: Vec<Permit> = vec![enter(1, large).await, enter(2, large).await];
        // A light call beside them holds them; let that lapse.
        let light = enter(7, small).await;
        tokio::time::sleep(window * 2).await;
        // Two at once from one connection: the second is busy, and weighs one.
        let busy = enter(7, small).await;
        assert_eq!(turns.lock().busy_in_progress, 3);
        drop(first);
        let spawn_enter = |caller: u64| {
            let turns = turns.clone();
            tokio::spawn(async move { turns.enter(Caller::connection(caller), large).await })
        };
        let (one, two) = (spawn_enter(1), spawn_enter(2));
        settle().await;
        assert_eq!(heavy_held(&turns), (8, 1), "one large call at a time");
        drop((light, busy));
        let (started, waiting) = if one.is_finished() { (one, two) } else { (two, one) };
        drop(started.await.unwrap());
        drop(waiting.await.unwrap());
        let state = turns.lock();
        assert_eq!((state.in_progress, state.busy_in_progress, state.heavy_weight), (0, 0, 0));
    }

    /// Two calls at once now and then do not make a connection busy when it calls far less than
    /// the others (a light caller catching up); they do when it calls as much (a client spreading
    /// its calls over connections, one of them empty for a moment).
    #[test]
    fn a_connection_that_had_two_calls_at_once_is_busy_only_if_it_also_calls_much() {
        let (window, t0) = (Duration::from_secs(1), Instant::now());
        let (heavy, light) = (Caller::connection(1), Caller::connection(2));
        let mut state = State::default();
        let calls = |state: &mut State, caller: Caller, n: usize, at: Instant| -> Vec<bool> {
            let kinds: Vec<bool> = (0..n)
                .map(|_| {
                    let busy = state.mark(caller, 1, at, window);
                    state.start(caller, busy, 1, at, window);
                    busy
                })
                .collect();
            for busy in &kinds {
                state.finish(caller, *busy, 1, at + window / 2, window);
            }
            kinds
        };
        // In the first period: 20 calls at once on one connection, two on the other.
        assert_eq!(calls(&mut state, heavy, 20, t0).iter().filter(|b| **b).count(), 19);
        assert_eq!(calls(&mut state, light, 2, t0), [false, true]);
        // The next period: each has nothing in progress, and had two at once 0.6 s ago.
        let t1 = t0 + window + window / 10;
        assert_eq!(calls(&mut state, light, 1, t1), [false], "2 calls a period against a mean of 11: light");
        assert_eq!(calls(&mut state, heavy, 1, t1), [true], "20 calls a period: busy");
        // Two periods on, neither has had two at once within the window.
        let t3 = t0 + window * 3;
        assert_eq!(calls(&mut state, heavy, 1, t3), [false]);
        assert_eq!((state.in_progress, state.busy_in_progress), (0, 0));
    }
}
