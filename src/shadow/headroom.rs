//! Headroom: how much CPU time shadow work may use right now, from what everything else on the
//! process's CPUs leaves idle.
//!
//! `SCHED_IDLE` decides who runs on a CPU, not how the kernel places and balances waking threads.
//! Measured on two cores shared with the load generator, a shadow that used a tenth of a CPU
//! raised the live threads' waits on each other (not on the shadow) and live p99 by 1.2-1.4x, and
//! at 80% load it brought stalls of 50-130 ms; inside a CPU quota it spends the quota live then
//! waits for. So a shadow only runs while enough of the CPUs stays free without it:
//! `allowed = free - shadow.cpu_reserve x capacity`, where `free` is the CPU time live work and
//! every other process left idle (plus what shadows used themselves, which they would give
//! back). Under a quota, `free` is the quota minus the process's own non-shadow CPU time (other
//! processes do not spend it); without one, it is the idle time of the process's CPUs from
//! `/proc/stat`.
//!
//! Pure: the sampler thread in `budget` feeds it readings.

/// Weight of a new, higher reading of free CPU: room handed back to shadows over a few ticks,
/// while a lower reading takes it back at once.
const RISE: f64 = 0.25;

/// The clocks at one instant, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// Seconds since a fixed start.
    pub at: f64,
    /// CPU-seconds the whole process has used.
    pub process: f64,
    /// CPU-seconds shadow work has used (a part of `process`).
    pub shadow: f64,
    /// CPU-seconds the process's CPUs have been idle, counting every process on them; `None`
    /// under a quota, or where `/proc/stat` cannot be read.
    pub idle: Option<f64>,
}

/// What the headroom is measured against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// CPUs the process may use (its quota, else its affinity mask).
    pub capacity: f64,
    /// Whether `capacity` is a cgroup quota (which only this process's own work spends).
    pub quota: bool,
    /// Share of `capacity` that must stay free before shadows get any.
    pub reserve: f64,
}

#[derive(Debug, Clone, Default)]
pub struct Headroom {
    last: Option<Reading>,
    /// Smoothed free CPUs (shadow work counted as free).
    free: Option<f64>,
}

impl Headroom {
    /// Takes a reading; returns the CPU-seconds per second shadow work may use now, or `None`
    /// until two readings exist.
    pub fn update(&mut self, limits: Limits, r: Reading) -> Option<f64> {
        let last = self.last.replace(r)?;
        let seconds = r.at - last.at;
        if seconds <= 0.0 {
            return self.allowed(limits);
        }
        let shadow = (r.shadow - last.shadow).max(0.0) / seconds;
        let busy_without_shadow = ((r.process - last.process) / seconds - shadow).max(0.0);
        let free_now = match (limits.quota, r.idle, last.idle) {
            (false, Some(idle), Some(before)) => (idle - before).max(0.0) / seconds + shadow,
            // Under a quota (or without /proc/stat): the process's own work is all that counts.
            _ => limits.capacity - busy_without_shadow,
        }
        .clamp(0.0, limits.capacity);
        self.free = Some(match self.free {
            Some(free) if free_now > free => free + RISE * (free_now - free),
            _ => free_now,
        });
        self.allowed(limits)
    }

    fn allowed(&self, limits: Limits) -> Option<f64> {
        self.free.map(|free| (free - limits.reserve * limits.capacity).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_CPUS: Limits = Limits { capacity: 2.0, quota: false, reserve: 0.5 };
    const ONE_CPU_QUOTA: Limits = Limits { capacity: 1.0, quota: true, reserve: 0.5 };

    fn reading(at: f64, process: f64, shadow: f64, idle: Option<f64>) -> Reading {
        Reading { at, process, shadow, idle }
    }

    #[test]
    fn nothing_until_two_readings() {
        let mut h = Headroom::default();
        assert_eq!(h.update(TWO_CPUS, reading(0.0, 0.0, 0.0, Some(0.0))), None);
    }

    #[test]
    fn without_a_quota_shadows_get_the_idle_time_beyond_the_reserve() {
        let mut h = Headroom::default();
        h.update(TWO_CPUS, reading(0.0, 0.0, 0.0, Some(0.0)));
        // 1.5 CPUs idle over the second: 1.5 - 0.5 x 2 = 0.5.
        let allowed = h.update(TWO_CPUS, reading(1.0, 0.4, 0.0, Some(1.5))).unwrap();
        assert!((allowed - 0.5).abs() < 1e-9, "{allowed}");
    }

    #[test]
    fn time_the_shadows_used_counts_as_free_since_they_would_give_it_back() {
        let mut h = Headroom::default();
        h.update(TWO_CPUS, reading(0.0, 0.0, 0.0, Some(0.0)));
        // 1.2 idle plus 0.3 of shadow work: the same 1.5 free as above.
        let allowed = h.update(TWO_CPUS, reading(1.0, 0.7, 0.3, Some(1.2))).unwrap();
        assert!((allowed - 0.5).abs() < 1e-9, "{allowed}");
    }

    #[test]
    fn a_busy_node_leaves_shadows_nothing_even_when_this_process_is_quiet() {
        let mut h = Headroom::default();
        h.update(TWO_CPUS, reading(0.0, 0.0, 0.0, Some(0.0)));
        // The process used 0.1 CPU, but another process kept the CPUs busy: 0.4 idle.
        assert_eq!(h.update(TWO_CPUS, reading(1.0, 0.1, 0.0, Some(0.4))), Some(0.0));
    }

    #[test]
    fn under_a_quota_only_the_process_own_work_counts() {
        let mut h = Headroom::default();
        h.update(ONE_CPU_QUOTA, reading(0.0, 0.0, 0.0, None));
        // Live used 0.3 of the one-CPU quota (0.4 used, 0.1 of it shadow): 0.7 free - 0.5.
        let allowed = h.update(ONE_CPU_QUOTA, reading(1.0, 0.4, 0.1, None)).unwrap();
        assert!((allowed - 0.2).abs() < 1e-9, "{allowed}");
        // Live at 0.8 of the quota: none.
        assert_eq!(h.update(ONE_CPU_QUOTA, reading(2.0, 1.2, 0.1, None)), Some(0.0));
    }

    #[test]
    fn room_is_taken_back_at_once_and_handed_back_slowly() {
        let mut h = Headroom::default();
        let limits = Limits { reserve: 0.0, ..ONE_CPU_QUOTA };
        h.update(limits, reading(0.0, 0.0, 0.0, None));
        // Live busy: 0.1 free at once.
        let busy = h.update(limits, reading(1.0, 0.9, 0.0, None)).unwrap();
        assert!((busy - 0.1).abs() < 1e-9, "{busy}");
        // Live idle again: a quarter of the way back per reading, not all of it.
        let next = h.update(limits, reading(2.0, 0.9, 0.0, None)).unwrap();
        assert!((next - (0.1 + RISE * 0.9)).abs() < 1e-9, "{next}");
        let mut allowed = next;
        for i in 3..30 {
            allowed = h.update(limits, reading(i as f64, 0.9, 0.0, None)).unwrap();
        }
        assert!(allowed > 0.99, "{allowed}");
    }

    #[test]
    fn a_zero_reserve_leaves_all_the_free_time_and_clock_glitches_stay_in_range() {
        let mut h = Headroom::default();
        let limits = Limits { reserve: 0.0, ..TWO_CPUS };
        h.update(limits, reading(0.0, 0.0, 0.0, Some(10.0)));
        // Idle going backwards (a CPU hot-unplugged) reads as none free, never negative.
        assert_eq!(h.update(limits, reading(1.0, 0.0, 0.0, Some(5.0))), Some(0.0));
        // More idle than the CPUs can have is capped at capacity.
        let mut h = Headroom::default();
        h.update(limits, reading(0.0, 0.0, 0.0, Some(0.0)));
        assert_eq!(h.update(limits, reading(1.0, 0.0, 0.0, Some(9.0))), Some(2.0));
    }
}
