//! Warnings that an attacker or an overload could make fire thousands of times a second, logged
//! at most once per period with the count of events since the last line: one line says as much
//! to the on-call engineer, and thousands cost the server and whatever ships its logs.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One kind of event, logged at most once per `period`.
pub struct Every {
    period: Duration,
    /// When the last line was logged, and the events since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl Every {
    pub const fn new(period: Duration) -> Every {
        Every { period, state: Mutex::new((None, 0)) }
    }

    /// Counts one event; `Some(events since the last line, this one included)` when a line is
    /// due now.
    pub fn note(&self) -> Option<u64> {
        self.note_many(1)
    }

    /// `note` for `n` events at once (the lines of a failed batch).
    pub fn note_many(&self, n: u64) -> Option<u64> {
        self.note_at(Instant::now(), n)
    }

    fn note_at(&self, now: Instant, n: u64) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.1 += n;
        if state.0.is_some_and(|t| now.saturating_duration_since(t) < self.period) {
            return None;
        }
        state.0 = Some(now);
        Some(std::mem::take(&mut state.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_with_the_events_since_the_last() {
        let every = Every::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(every.note_at(t0, 1), Some(1), "the first event is logged at once");
        for ms in [1, 500, 999] {
            assert_eq!(every.note_at(t0 + Duration::from_millis(ms), 1), None);
        }
        assert_eq!(every.note_at(t0 + Duration::from_millis(1000), 1), Some(4));
        assert_eq!(every.note_at(t0 + Duration::from_millis(1001), 5), None);
        assert_eq!(every.note_at(t0 + Duration::from_millis(2500), 1), Some(6));
    }
}
