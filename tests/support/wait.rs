//! Polling with a deadline: the only way tests wait for something.

use std::fmt::Debug;
use std::time::{Duration, Instant};

/// What a polled condition may return: `bool` (done when true), `Option<T>`
/// (done with `T` when `Some`), or `Result<T, E>` (done with `T` when `Ok`;
/// the last `Err` is shown if the deadline passes).
pub trait WaitOutcome {
    type Output;
    /// `Ok(output)` when the condition holds, else `Err(why not, if known)`.
    fn into_ready(self) -> Result<Self::Output, Option<String>>;
}

impl WaitOutcome for bool {
    type Output = ();
    fn into_ready(self) -> Result<(), Option<String>> {
        if self { Ok(()) } else { Err(None) }
    }
}

impl<T> WaitOutcome for Option<T> {
    type Output = T;
    fn into_ready(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: Debug> WaitOutcome for Result<T, E> {
    type Output = T;
    fn into_ready(self) -> Result<T, Option<String>> {
        self.map_err(|e| Some(format!("{e:?}")))
    }
}

/// Polls `f` (every 10 ms at first, backing off to 100 ms) until it reports
/// ready, and returns its output. Panics with `what` (and the last error, for
/// a `Result`) if `deadline` passes first. `f` is always called at least
/// once, and once more after the deadline before giving up.
pub fn wait_for<R: WaitOutcome>(deadline: Duration, what: &str, mut f: impl FnMut() -> R) -> R::Output {
    let start = Instant::now();
    let mut interval = Duration::from_millis(10);
    let mut polls = 0u32;
    loop {
        polls += 1;
        let last = match f().into_ready() {
            Ok(out) => return out,
            Err(last) => last,
        };
        let elapsed = start.elapsed();
        if elapsed >= deadline {
            match last {
                Some(err) => {
                    panic!("timed out after {elapsed:.1?} ({polls} polls) waiting for {what}; last error: {err}")
                }
                None => panic!("timed out after {elapsed:.1?} ({polls} polls) waiting for {what}"),
            }
        }
        std::thread::sleep(interval.min(deadline - elapsed));
        interval = (interval * 2).min(Duration::from_millis(100));
    }
}
