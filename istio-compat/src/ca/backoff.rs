//! Exponential backoff with jitter for retrying a failed certificate fetch.
//!
//! The defaults follow ztunnel's certificate manager: the first retry after about 1 s,
//! doubling, at most 150 s apart, each delay randomized by ±20% so that the proxies of
//! a cluster do not retry against istiod in lockstep. Pure: the random draw is an
//! argument of [`Backoff::next_delay_with`], so tests are deterministic.

use std::time::Duration;

/// ztunnel's `CERT_REFRESH_FAILURE_RETRY_DELAY_MAX_INTERVAL`.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(150);
pub const DEFAULT_INITIAL_DELAY: Duration = Duration::from_secs(1);
pub const DEFAULT_MULTIPLIER: f64 = 2.0;
/// A delay is drawn uniformly from `[d·(1−j), d·(1+j)]`.
pub const DEFAULT_JITTER: f64 = 0.2;

#[derive(Clone, Debug, PartialEq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    multiplier: f64,
    jitter: f64,
    current: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(DEFAULT_INITIAL_DELAY, DEFAULT_MAX_DELAY, DEFAULT_MULTIPLIER, DEFAULT_JITTER)
    }
}

impl Backoff {
    /// `multiplier` below 1 is taken as 1; `jitter` is clamped to `[0, 1]`; `max`
    /// below `initial` is raised to `initial`.
    pub fn new(initial: Duration, max: Duration, multiplier: f64, jitter: f64) -> Self {
        let multiplier = if multiplier.is_finite() && multiplier >= 1.0 { multiplier } else { 1.0 };
        let jitter = if jitter.is_finite() { jitter.clamp(0.0, 1.0) } else { 0.0 };
        let max = max.max(initial);
        Backoff { initial, max, multiplier, jitter, current: initial }
    }

    /// The delay before the next attempt (randomized), then grows the base delay.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(rand::random::<f64>())
    }

    /// As [`next_delay`](Self::next_delay) with the random draw given: `unit` in
    /// `[0, 1)` maps linearly onto `[base·(1−jitter), base·(1+jitter)]`. The result never
    /// exceeds the maximum.
    pub fn next_delay_with(&mut self, unit: f64) -> Duration {
        let unit = if unit.is_finite() { unit.clamp(0.0, 1.0) } else { 0.5 };
        let factor = 1.0 - self.jitter + 2.0 * self.jitter * unit;
        let delay = self.current.mul_f64(factor).min(self.max);
        self.current = self.current.mul_f64(self.multiplier).min(self.max);
        delay
    }

    /// After a success: the next failure starts again from the initial delay.
    pub fn reset(&mut self) {
        self.current = self.initial;
    }

    /// The base (un-randomized) delay of the next attempt.
    pub fn current(&self) -> Duration {
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_one_second_up_to_the_cap() {
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..10).map(|_| b.next_delay_with(0.5).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 64, 128, 150, 150]);
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let mut low = Backoff::default();
        let mut high = Backoff::default();
        for _ in 0..4 {
            low.next_delay_with(0.5);
            high.next_delay_with(0.5);
        }
        // Base is now 16 s.
        assert_eq!(low.next_delay_with(0.0), Duration::from_millis(12_800));
        assert_eq!(high.next_delay_with(1.0), Duration::from_millis(19_200));
    }

    #[test]
    fn randomized_delays_vary_and_stay_in_range() {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..50 {
            let mut b = Backoff::default();
            let d = b.next_delay();
            assert!(d >= Duration::from_millis(800) && d <= Duration::from_millis(1200), "{d:?}");
            seen.insert(d);
        }
        assert!(seen.len() > 1, "jitter never varied");
    }

    #[test]
    fn never_exceeds_the_maximum_even_with_jitter() {
        let mut b = Backoff::default();
        for _ in 0..20 {
            assert!(b.next_delay_with(1.0) <= DEFAULT_MAX_DELAY);
        }
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::default();
        for _ in 0..5 {
            b.next_delay_with(0.5);
        }
        assert_eq!(b.current(), Duration::from_secs(32));
        b.reset();
        assert_eq!(b.next_delay_with(0.5), Duration::from_secs(1));
        assert_eq!(b.current(), Duration::from_secs(2));
    }

    #[test]
    fn nonsense_parameters_are_tamed() {
        let mut b = Backoff::new(Duration::from_secs(5), Duration::from_secs(1), 0.5, 7.0);
        // max raised to initial, multiplier 1, jitter 1 → [0, 10 s] capped at 5 s.
        assert_eq!(b.next_delay_with(1.0), Duration::from_secs(5));
        assert_eq!(b.next_delay_with(0.0), Duration::ZERO);
        assert_eq!(b.current(), Duration::from_secs(5));
    }
}
