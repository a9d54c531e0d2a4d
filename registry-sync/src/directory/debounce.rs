//! [`Debounce`]: turn a burst of filesystem events into one rescan.
//!
//! ```text
//!  events:   x  x x    x                         x
//!            │<quiet>│<quiet>│                   │<quiet>│
//!  fire:                     ▲ (quiet period passed)     ▲
//!  a steady stream of events still fires every `max_delay`.
//! ```
//!
//! Editors save in bursts (write a temp file, rename it over the original,
//! touch the directory); rescanning after the burst reads each file once.
//! Time is passed in, so the rules are tested without a clock.

use std::time::{Duration, Instant};

/// Coalesces events until `quiet` has passed without one, or `max_delay`
/// since the first.
#[derive(Clone, Debug)]
pub struct Debounce {
    quiet: Duration,
    max_delay: Duration,
    /// First and latest event since the last firing.
    pending: Option<(Instant, Instant)>,
}

impl Debounce {
    pub fn new(quiet: Duration, max_delay: Duration) -> Debounce {
        Debounce { quiet, max_delay: max_delay.max(quiet), pending: None }
    }

    /// An event happened at `now`.
    pub fn event(&mut self, now: Instant) {
        self.pending = Some(match self.pending {
            Some((first, last)) => (first, last.max(now)),
            None => (now, now),
        });
    }

    /// When [`fire`](Self::fire) will next return true, if an event is pending.
    pub fn deadline(&self) -> Option<Instant> {
        self.pending.map(|(first, last)| (last + self.quiet).min(first + self.max_delay))
    }

    /// Whether the pending events are due at `now`; if so they are consumed.
    pub fn fire(&mut self, now: Instant) -> bool {
        match self.deadline() {
            Some(deadline) if deadline <= now => {
                self.pending = None;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn nothing_pending_never_fires() {
        let mut d = Debounce::new(100 * MS, 1000 * MS);
        let t0 = Instant::now();
        assert_eq!(d.deadline(), None);
        assert!(!d.fire(t0 + 10_000 * MS));
    }

    #[test]
    fn fires_once_after_the_quiet_period_of_the_last_event() {
        let mut d = Debounce::new(100 * MS, 1000 * MS);
        let t0 = Instant::now();
        d.event(t0);
        d.event(t0 + 50 * MS);
        d.event(t0 + 80 * MS);
        assert_eq!(d.deadline(), Some(t0 + 180 * MS));
        assert!(!d.fire(t0 + 179 * MS));
        assert!(d.fire(t0 + 180 * MS));
        assert!(!d.fire(t0 + 500 * MS), "consumed");
        assert_eq!(d.deadline(), None);
    }

    #[test]
    fn a_steady_stream_still_fires_at_max_delay() {
        let mut d = Debounce::new(100 * MS, 300 * MS);
        let t0 = Instant::now();
        let mut fired = Vec::new();
        for i in 0..10u32 {
            let now = t0 + 50 * MS * i;
            if d.fire(now) {
                fired.push(i);
            }
            d.event(now);
        }
        assert_eq!(fired, vec![6], "fired at 300 ms, while events kept coming");
        assert_eq!(d.deadline(), Some(t0 + 450 * MS + 100 * MS));
    }

    #[test]
    fn events_out_of_order_do_not_move_the_deadline_back() {
        let mut d = Debounce::new(100 * MS, 1000 * MS);
        let t0 = Instant::now();
        d.event(t0 + 50 * MS);
        d.event(t0);
        assert_eq!(d.deadline(), Some(t0 + 150 * MS));
    }
}
