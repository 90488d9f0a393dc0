//! The effective sample rate of one shadow: what share of reviews it actually takes, at most
//! the configured `sample_rate`, lowered when the CPU budget or the queues cannot take that
//! many. Lowering the rate instead of shedding what arrives last keeps the compared reviews a
//! uniform sample: `shadow::sampled` against a lower rate picks a subset of the same hash, so
//! every replica at the same rate compares the same reviews.
//!
//! `RateController` is pure: the shadow feeds it one `Tick` of measurements per interval.

/// Rates move on a ladder of steps of sqrt(2) below the configured rate, so small differences
/// in measured cost between replicas rarely put them on different rates, and when they do the
/// lower one samples a subset of the higher one.
const STEP: f64 = std::f64::consts::SQRT_2;
/// Share of its CPU target a shadow aims at; the rest absorbs estimation error, so the hard
/// budget (which sheds non-uniformly) is rarely what stops work.
const HEADROOM: f64 = 0.9;
/// Weight of the newest measurement in the smoothed cost and demand.
const SMOOTHING: f64 = 0.3;
/// After a tick with shed work the rate drops one ladder step at least; with none it may rise
/// by at most this factor (two steps) per tick.
const RAISE: f64 = 2.0;

/// What happened to one shadow during one tick.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Tick {
    /// Seconds since the previous tick.
    pub seconds: f64,
    /// Reviews offered to the shadow (before sampling).
    pub offered: u64,
    /// Reviews in the effective sample, and those of them shed for want of room (queue full,
    /// live pressure, budget spent).
    pub sampled: u64,
    pub shed: u64,
    /// CPU nanoseconds the shadow model used, and reviews it ran.
    pub cpu_ns: u64,
    pub reviews_run: u64,
    /// CPU-seconds per second this shadow may use (its share of the budget), if budgeted.
    pub target_cpu: Option<f64>,
}

/// The controller's state.
#[derive(Debug, Clone)]
pub struct RateController {
    configured: f64,
    floor: f64,
    effective: f64,
    /// Smoothed CPU-seconds per review run.
    cost: Option<f64>,
    /// Smoothed reviews offered per second.
    demand: Option<f64>,
}

impl RateController {
    /// `floor`: the lowest effective rate (so a trickle keeps the cost measured).
    pub fn new(configured: f64, floor: f64) -> RateController {
        RateController { configured, floor: floor.min(configured), effective: configured, cost: None, demand: None }
    }

    pub fn configured(&self) -> f64 {
        self.configured
    }

    pub fn effective(&self) -> f64 {
        self.effective
    }

    /// Takes one tick of measurements and returns the new effective rate.
    pub fn tick(&mut self, t: Tick) -> f64 {
        if t.seconds <= 0.0 {
            return self.effective;
        }
        let smooth = |old: Option<f64>, new: f64| Some(old.map_or(new, |o| o + SMOOTHING * (new - o)));
        if t.reviews_run > 0 {
            self.cost = smooth(self.cost, t.cpu_ns as f64 / 1e9 / t.reviews_run as f64);
        }
        self.demand = smooth(self.demand, t.offered as f64 / t.seconds);
        // What the budget can pay for: target / (cost per review * reviews offered per second).
        let affordable = match (t.target_cpu, self.cost, self.demand) {
            (Some(target), Some(cost), Some(demand)) if cost > 0.0 && demand > 0.0 => {
                HEADROOM * target / (cost * demand)
            }
            _ => f64::INFINITY,
        };
        // Shed work means the rate is already too high for the queues or the budget, whatever
        // the estimate says: step down. Otherwise climb back towards what is affordable.
        // A shed share under 1% is noise (a burst); above it, the rate is too high.
        let shedding = t.shed > 0 && t.shed as f64 >= 0.01 * t.sampled.max(1) as f64;
        let next = if shedding { self.effective / STEP } else { self.effective * RAISE };
        self.effective = self.on_ladder(next.min(affordable));
        self.effective
    }

    /// The highest ladder rate at or below `rate`, within [floor, configured].
    fn on_ladder(&self, rate: f64) -> f64 {
        if rate >= self.configured {
            return self.configured;
        }
        if rate <= self.floor || self.configured <= 0.0 {
            return self.floor;
        }
        // configured / STEP^k <= rate, smallest such k.
        let k = ((self.configured / rate).ln() / STEP.ln() - 1e-9).ceil();
        (self.configured / STEP.powf(k)).max(self.floor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(offered: u64, shed: u64, cpu_ms: u64, run: u64, target: Option<f64>) -> Tick {
        Tick {
            seconds: 1.0,
            offered,
            sampled: offered,
            shed,
            cpu_ns: cpu_ms * 1_000_000,
            reviews_run: run,
            target_cpu: target,
        }
    }

    #[test]
    fn stays_at_the_configured_rate_when_affordable() {
        let mut c = RateController::new(0.5, 0.001);
        for _ in 0..5 {
            // 100 reviews/s offered, 50 run at 1 ms each = 0.05 CPU/s against 0.5.
            assert_eq!(c.tick(tick(100, 0, 50, 50, Some(0.5))), 0.5);
        }
    }

    #[test]
    fn lowers_to_what_the_budget_pays_for_and_climbs_back() {
        let mut c = RateController::new(1.0, 0.001);
        // 1,000 reviews/s at 10 ms each would need 10 CPUs; the target is 0.5.
        let mut rate = 1.0;
        for _ in 0..10 {
            let run = (1000.0 * rate) as u64;
            rate = c.tick(tick(1000, 0, run * 10, run, Some(0.5)));
        }
        // Affordable: 0.9 * 0.5 / (0.01 * 1000) = 0.045; the ladder step at or below it.
        assert!(rate <= 0.045 && rate * STEP > 0.045, "{rate}");
        // Load drops to 10 reviews/s: everything is affordable again once the smoothed demand
        // has followed (about ten ticks).
        for _ in 0..15 {
            let run = (10.0 * rate).ceil() as u64;
            rate = c.tick(tick(10, 0, run * 10, run, Some(0.5)));
        }
        assert_eq!(rate, 1.0);
    }

    #[test]
    fn sheds_step_the_rate_down_without_a_budget() {
        let mut c = RateController::new(1.0, 0.01);
        let r1 = c.tick(tick(100, 10, 0, 0, None));
        let r2 = c.tick(tick(100, 10, 0, 0, None));
        assert!(r1 < 1.0 && r2 < r1, "{r1} {r2}");
        for _ in 0..20 {
            c.tick(tick(100, 10, 0, 0, None));
        }
        assert_eq!(c.effective(), 0.01, "never below the floor");
        for _ in 0..10 {
            c.tick(tick(100, 0, 0, 0, None));
        }
        assert_eq!(c.effective(), 1.0);
    }

    #[test]
    fn rates_sit_on_a_shared_ladder() {
        let c = RateController::new(0.8, 0.0001);
        for x in [0.79, 0.5, 0.3, 0.01] {
            let r = c.on_ladder(x);
            let k = (0.8f64 / r).ln() / STEP.ln();
            assert!((k - k.round()).abs() < 1e-6 && r <= x && r * STEP > x - 1e-12, "{x} -> {r}");
        }
        // Two controllers fed the same measurements agree exactly.
        let (mut a, mut b) = (RateController::new(1.0, 0.001), RateController::new(1.0, 0.001));
        for i in 0..20 {
            let t = tick(500 + i, i % 3, 40 + i, 20, Some(0.2));
            assert_eq!(a.tick(t), b.tick(t));
        }
    }
}
