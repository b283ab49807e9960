//! Waiting for a condition instead of sleeping: poll until it holds or a bound passes.

use std::time::{Duration, Instant};

/// Polls `check` until it returns `Ok`, backing off from 10 ms to 100 ms between
/// tries; panics after `timeout` with `what` and the last error.
pub fn assert_eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    loop {
        match check() {
            Ok(v) => return v,
            Err(last) => {
                if Instant::now() >= deadline {
                    panic!("timed out after {timeout:?} waiting for {what}; last observation: {last}");
                }
            }
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// `assert_eventually` for a boolean condition described by `what`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    assert_eventually(what, timeout, || if cond() { Ok(()) } else { Err("condition false".to_owned()) })
}
