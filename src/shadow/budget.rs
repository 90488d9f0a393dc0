//! The shadow CPU budget: how much CPU time shadow work may use, and how much it does.
//!
//! Shadow worker threads measure each batch with their own thread CPU clock and `record` it
//! here. The budget is a rate (CPU-seconds per second) enforced as a generic cell rate
//! algorithm: one atomic "busy until" instant that each batch pushes forward by its cost over
//! the rate. While that instant is in the future the budget is spent: the request path sheds new
//! shadow work (`ShadowOutcome::Budget`) and shadow workers wait before starting a batch. So
//! over any interval T shadow work uses at most `rate * (T + BURST)` CPU-seconds, plus the one
//! batch per worker thread that started just before the budget ran out.
//!
//! The budget in force can be lower than the configured one: a sampler thread lowers it to
//! the headroom the process's CPUs leave (`super::headroom`), down to nothing on a busy node.
//!
//! CPU time is the right unit because it is what a cgroup quota charges: priorities
//! (`SCHED_IDLE`, `nice`) order threads inside the process but cannot stop a shadow from spending
//! the quota that live work then waits for.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metrics::Histogram;

use super::headroom::{Headroom, Limits, Reading};
use crate::inference::cpu::{self, CpuSet};
use crate::metrics::BudgetMetrics;

/// Budget that may be spent at once after an idle spell: small, so a burst cannot take a whole
/// quota period from live work.
pub const BURST: Duration = Duration::from_millis(100);
/// How often the headroom is measured.
pub const HEADROOM_TICK: Duration = Duration::from_millis(250);
/// While the headroom leaves shadows nothing, how long a worker naps before it looks again.
const PAUSE: Duration = Duration::from_millis(50);
/// The most budget debt one batch can leave: a batch that ran while the budget in force was
/// tiny must not lock shadows out for long once room comes back.
const MAX_DEBT: Duration = Duration::from_secs(1);
/// The usage window: 1 s buckets over 10 s.
const BUCKETS: usize = 10;

/// CPU use in a sliding window of one-second buckets. Pure: time is passed in.
#[derive(Debug, Clone, Default)]
pub struct CpuWindow {
    /// Nanoseconds used in the second `stamps[i]`, for the bucket `second % BUCKETS`.
    ns: [u64; BUCKETS],
    stamps: [u64; BUCKETS],
    /// The first second anything was recorded (so a young window is not diluted).
    first: Option<u64>,
}

impl CpuWindow {
    pub fn add(&mut self, second: u64, ns: u64) {
        let i = (second % BUCKETS as u64) as usize;
        if self.stamps[i] != second {
            self.stamps[i] = second;
            self.ns[i] = 0;
        }
        self.ns[i] += ns;
        self.first.get_or_insert(second);
    }

    /// Mean CPU-seconds per second over the last `BUCKETS` seconds up to `second` (fewer while
    /// the window is younger than that).
    pub fn rate(&self, second: u64) -> f64 {
        let Some(first) = self.first else { return 0.0 };
        let span = (second.saturating_sub(first) + 1).min(BUCKETS as u64);
        let used: u64 = (0..BUCKETS)
            .filter(|&i| self.stamps[i] + BUCKETS as u64 > second && self.stamps[i] <= second)
            .map(|i| self.ns[i])
            .sum();
        used as f64 / 1e9 / span as f64
    }
}

/// CPU used by one shadow model's workers, cumulative (for the rate controller's deltas).
#[derive(Debug)]
pub struct ModelCpu {
    pub name: String,
    ns: AtomicU64,
    reviews: AtomicU64,
    seconds: Histogram,
}

impl ModelCpu {
    pub fn new(name: &str) -> ModelCpu {
        ModelCpu {
            name: name.to_string(),
            ns: AtomicU64::new(0),
            reviews: AtomicU64::new(0),
            seconds: crate::metrics::shadow_batch_cpu_seconds(name),
        }
    }

    /// (CPU nanoseconds, reviews run) since start.
    pub fn totals(&self) -> (u64, u64) {
        (self.ns.load(Ordering::Relaxed), self.reviews.load(Ordering::Relaxed))
    }
}

/// The process's shadow CPU budget and use. One per server, kept across reloads.
#[derive(Debug)]
pub struct ShadowCpu {
    epoch: Instant,
    /// CPU-seconds per second, as f64 bits; 0 = no budget.
    rate: AtomicU64,
    /// Nanoseconds after `epoch` until which the budget is spent.
    busy_until: AtomicU64,
    /// All shadow CPU, cumulative nanoseconds.
    total_ns: AtomicU64,
    /// For the `use` gauge: recent shadow CPU per second. Locked by workers once per batch and
    /// by the rate controllers once per tick; never by the request path.
    window: Mutex<CpuWindow>,
    /// Shadow models running inference (for each one's fair share of the budget).
    models: AtomicU64,
    /// The headroom in CPU-seconds per second, as f64 bits (infinite = not limited by it).
    ceiling: AtomicU64,
    /// What the headroom sampler measures against, and on which CPUs; `None` = off.
    limits: Mutex<Option<(Limits, CpuSet)>>,
    sampling: AtomicBool,
    metrics: BudgetMetrics,
}

impl Default for ShadowCpu {
    fn default() -> Self {
        ShadowCpu::new()
    }
}

impl ShadowCpu {
    pub fn new() -> ShadowCpu {
        let now = Instant::now();
        ShadowCpu {
            // A burst's worth before now, so the burst is there from the start too.
            epoch: now.checked_sub(BURST).unwrap_or(now),
            rate: AtomicU64::new(0),
            busy_until: AtomicU64::new(0),
            total_ns: AtomicU64::new(0),
            window: Mutex::new(CpuWindow::default()),
            models: AtomicU64::new(0),
            ceiling: AtomicU64::new(f64::INFINITY.to_bits()),
            limits: Mutex::new(None),
            sampling: AtomicBool::new(false),
            metrics: BudgetMetrics::new(),
        }
    }

    /// Sets the budget (CPU-seconds per second) and how many shadow models share it.
    pub fn configure(&self, rate: f64, models: usize) {
        let rate = rate.max(0.0);
        self.rate.store(rate.to_bits(), Ordering::Relaxed);
        self.models.store(models as u64, Ordering::Relaxed);
        self.metrics.budget.set(rate);
        self.metrics.allowed.set(self.in_force().unwrap_or(0.0));
    }

    /// Turns the headroom limit on (`Some`: measured against these limits on these CPUs) or off.
    /// Starts the sampler thread the first time it is turned on; it ends with the `ShadowCpu`.
    pub fn set_headroom(self: &Arc<Self>, limits: Option<(Limits, CpuSet)>) {
        let on = limits.is_some();
        let was_on = std::mem::replace(&mut *self.limits.lock().unwrap_or_else(|p| p.into_inner()), limits).is_some();
        if !on {
            self.set_ceiling(f64::INFINITY);
            return;
        }
        if !was_on {
            // Nothing for shadows until the headroom has been measured (two readings, half a
            // second): a server that starts under load must not hand its first moments to them.
            self.set_ceiling(0.0);
        }
        if !self.sampling.swap(true, Ordering::Relaxed) {
            let weak = Arc::downgrade(self);
            let spawned = std::thread::Builder::new().name("shadow-headroom".into()).spawn(move || {
                let start = Instant::now();
                let mut headroom = Headroom::default();
                loop {
                    std::thread::sleep(HEADROOM_TICK);
                    let Some(cpu) = weak.upgrade() else { return };
                    cpu.sample(&mut headroom, start);
                }
            });
            if let Err(e) = spawned {
                // Shadows then run within the configured budget alone.
                tracing::warn!(error = %e, "could not start the shadow headroom sampler; the shadow budget is not lowered on a busy node");
            }
        }
    }

    /// One headroom measurement: the clocks read now, the ceiling set from them.
    fn sample(&self, headroom: &mut Headroom, start: Instant) {
        let limits = *self.limits.lock().unwrap_or_else(|p| p.into_inner());
        let Some((limits, cpus)) = limits else {
            *headroom = Headroom::default();
            return;
        };
        let reading = Reading {
            at: start.elapsed().as_secs_f64(),
            process: cpu::process_cpu_time().as_secs_f64(),
            shadow: self.total_ns() as f64 / 1e9,
            idle: if limits.quota { None } else { cpu::idle_time(&cpus).map(|d| d.as_secs_f64()) },
        };
        if let Some(allowed) = headroom.update(limits, reading) {
            self.set_ceiling(allowed);
        }
    }

    fn set_ceiling(&self, rate: f64) {
        self.ceiling.store(rate.to_bits(), Ordering::Relaxed);
        self.metrics.allowed.set(self.in_force().unwrap_or(0.0));
    }

    /// The configured budget in CPU-seconds per second, if there is one.
    pub fn budget(&self) -> Option<f64> {
        let rate = f64::from_bits(self.rate.load(Ordering::Relaxed));
        (rate > 0.0).then_some(rate)
    }

    /// The budget in force now: the configured one, lowered to the headroom (possibly to 0).
    pub fn in_force(&self) -> Option<f64> {
        let ceiling = f64::from_bits(self.ceiling.load(Ordering::Relaxed));
        self.budget().map(|b| b.min(ceiling).max(0.0))
    }

    pub fn models(&self) -> usize {
        self.models.load(Ordering::Relaxed).max(1) as usize
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// How long until shadow work may start again; zero when it may start now.
    pub fn wait(&self) -> Duration {
        match self.in_force() {
            None => return Duration::ZERO,
            Some(rate) if rate <= 0.0 => return PAUSE,
            Some(_) => {}
        }
        Duration::from_nanos(self.busy_until.load(Ordering::Relaxed).saturating_sub(self.now_ns()))
    }

    /// True while the budget is spent.
    pub fn exhausted(&self) -> bool {
        !self.wait().is_zero()
    }

    /// Records `cpu` of shadow work by `model` on `reviews` reviews.
    pub fn record(&self, model: &ModelCpu, cpu: Duration, reviews: usize) {
        let ns = cpu.as_nanos() as u64;
        model.ns.fetch_add(ns, Ordering::Relaxed);
        model.reviews.fetch_add(reviews as u64, Ordering::Relaxed);
        model.seconds.record(cpu.as_secs_f64());
        self.total_ns.fetch_add(ns, Ordering::Relaxed);
        let now = self.now_ns();
        if let (Some(configured), Some(in_force)) = (self.budget(), self.in_force()) {
            // Charged at the rate in force, but never less than at the configured one (that
            // bound always holds) nor, beyond that, more than `MAX_DEBT`.
            let at_configured = ns as f64 / configured;
            let at_in_force = if in_force > 0.0 { ns as f64 / in_force } else { f64::INFINITY };
            let cost = at_in_force.min(at_configured.max(MAX_DEBT.as_nanos() as f64)) as u64;
            let floor = now.saturating_sub(BURST.as_nanos() as u64);
            let _ = self
                .busy_until
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |until| Some(until.max(floor) + cost));
        }
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        window.add(now / 1_000_000_000, ns);
        self.metrics.usage.set(window.rate(now / 1_000_000_000));
    }

    /// Cumulative shadow CPU nanoseconds.
    pub fn total_ns(&self) -> u64 {
        self.total_ns.load(Ordering::Relaxed)
    }

    /// Recent shadow CPU-seconds per second (10 s window); also refreshes the gauge, which
    /// would otherwise keep its last value while no shadow runs.
    pub fn usage(&self) -> f64 {
        let window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let rate = window.rate(self.now_ns() / 1_000_000_000);
        self.metrics.usage.set(rate);
        rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_averages_the_last_ten_seconds() {
        let mut w = CpuWindow::default();
        w.add(100, 500_000_000);
        assert_eq!(w.rate(100), 0.5);
        w.add(101, 500_000_000);
        assert_eq!(w.rate(101), 0.5);
        // 1 s used over the 10 s ending at 109.
        assert!((w.rate(109) - 0.1).abs() < 1e-9);
        // Both buckets have left the window.
        assert_eq!(w.rate(112), 0.0);
        // A reused bucket starts from zero: 101 and 110 are in the window ending at 110.
        w.add(110, 100_000_000);
        assert!((w.rate(110) - 0.06).abs() < 1e-9);
        assert!((w.rate(111) - 0.01).abs() < 1e-9);
    }

    #[test]
    fn spending_the_budget_blocks_until_it_refills() {
        let cpu = ShadowCpu::new();
        let model = ModelCpu::new("budget-test");
        assert!(!cpu.exhausted(), "no budget: never exhausted");
        cpu.record(&model, Duration::from_millis(50), 1);
        assert!(!cpu.exhausted());
        cpu.configure(0.1, 1);
        // 50 ms at 0.1 CPU/s pays for 500 ms, minus the 100 ms burst.
        cpu.record(&model, Duration::from_millis(50), 1);
        let wait = cpu.wait();
        assert!(wait > Duration::from_millis(350) && wait <= Duration::from_millis(400), "{wait:?}");
        assert_eq!(model.totals(), (100_000_000, 2));
        assert_eq!(cpu.total_ns(), 100_000_000);
    }

    #[test]
    fn the_headroom_lowers_the_budget_in_force_and_none_left_pauses_shadows() {
        let cpu = ShadowCpu::new();
        let model = ModelCpu::new("headroom-test");
        cpu.configure(0.5, 1);
        cpu.set_ceiling(0.1);
        assert_eq!(cpu.in_force(), Some(0.1));
        // 20 ms at the 0.1 in force pays for 200 ms, minus the burst.
        cpu.record(&model, Duration::from_millis(20), 1);
        let wait = cpu.wait();
        assert!(wait > Duration::from_millis(50) && wait <= Duration::from_millis(100), "{wait:?}");
        // No headroom: spent whatever the debt, until room comes back.
        cpu.set_ceiling(0.0);
        assert_eq!(cpu.in_force(), Some(0.0));
        assert_eq!(cpu.wait(), PAUSE);
        assert!(cpu.exhausted());
        cpu.set_ceiling(f64::INFINITY);
        assert_eq!(cpu.in_force(), Some(0.5));
        // Without a configured budget the headroom changes nothing.
        let unbudgeted = ShadowCpu::new();
        unbudgeted.set_ceiling(0.0);
        assert_eq!(unbudgeted.in_force(), None);
        assert!(!unbudgeted.exhausted());
    }

    #[test]
    fn debt_run_up_at_a_tiny_headroom_is_capped_but_never_below_the_configured_rate() {
        let model = ModelCpu::new("debt-test");
        // 10 ms at an in-force 0.001 would be 10 s of debt: capped at MAX_DEBT.
        let cpu = ShadowCpu::new();
        cpu.configure(0.5, 1);
        cpu.set_ceiling(0.001);
        cpu.record(&model, Duration::from_millis(10), 1);
        let wait = cpu.wait();
        assert!(wait > Duration::from_millis(800) && wait <= MAX_DEBT, "{wait:?}");
        // A tiny configured budget keeps its own bound: 10 ms at 0.002 is 5 s, not capped.
        let tight = ShadowCpu::new();
        tight.configure(0.002, 1);
        tight.record(&model, Duration::from_millis(10), 1);
        assert!(tight.wait() > Duration::from_secs(4), "{:?}", tight.wait());
    }
}
