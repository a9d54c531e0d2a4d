//! Debouncing store changes into pushes, as istiod does: a change starts a
//! quiet period (`PILOT_DEBOUNCE_AFTER`, 100 ms); every further change
//! restarts it; a burst is cut off after a maximum delay
//! (`PILOT_DEBOUNCE_MAX`, 10 s) so a steady stream of changes cannot starve
//! proxies. Pure: the caller supplies the time.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebounceConfig {
    pub quiet: Duration,
    pub max_delay: Duration,
}

impl Default for DebounceConfig {
    fn default() -> Self {
        DebounceConfig { quiet: Duration::from_millis(100), max_delay: Duration::from_secs(10) }
    }
}

#[derive(Debug)]
pub struct Debouncer {
    config: DebounceConfig,
    first: Option<Instant>,
    last: Option<Instant>,
    events: u64,
}

impl Debouncer {
    pub fn new(config: DebounceConfig) -> Debouncer {
        Debouncer { config, first: None, last: None, events: 0 }
    }

    /// Record a change at `now`.
    pub fn on_change(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
        self.events += 1;
    }

    /// When the pending changes should be pushed, if any are pending.
    pub fn deadline(&self) -> Option<Instant> {
        let (first, last) = (self.first?, self.last?);
        Some((last + self.config.quiet).min(first + self.config.max_delay))
    }

    /// If the deadline has passed at `now`, take the pending burst: returns
    /// how many changes it held and how long the first one waited.
    pub fn fire(&mut self, now: Instant) -> Option<(u64, Duration)> {
        if self.deadline()? > now {
            return None;
        }
        let waited = now - self.first?;
        let events = self.events;
        self.first = None;
        self.last = None;
        self.events = 0;
        Some((events, waited))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> DebounceConfig {
        DebounceConfig { quiet: Duration::from_millis(100), max_delay: Duration::from_millis(1000) }
    }

    #[test]
    fn nothing_pending_means_no_deadline() {
        let mut d = Debouncer::new(config());
        assert_eq!(d.deadline(), None);
        assert_eq!(d.fire(Instant::now()), None);
    }

    #[test]
    fn fires_after_a_quiet_period() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(config());
        d.on_change(t0);
        d.on_change(t0 + Duration::from_millis(50));
        assert_eq!(d.deadline(), Some(t0 + Duration::from_millis(150)));
        assert_eq!(d.fire(t0 + Duration::from_millis(149)), None);
        assert_eq!(d.fire(t0 + Duration::from_millis(150)), Some((2, Duration::from_millis(150))));
        assert_eq!(d.deadline(), None);
    }

    #[test]
    fn a_steady_stream_is_cut_off_at_the_max_delay() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(config());
        let mut t = t0;
        let mut fired = None;
        for _ in 0..100 {
            d.on_change(t);
            t += Duration::from_millis(50);
            if let Some(f) = d.fire(t) {
                fired = Some((t, f));
                break;
            }
        }
        let (at, (events, waited)) = fired.expect("a push despite continuous changes");
        assert_eq!(at, t0 + Duration::from_millis(1000));
        assert_eq!(waited, Duration::from_millis(1000));
        assert_eq!(events, 20);
    }
}
