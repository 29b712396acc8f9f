//! One-line log records on standard error. Writing never panics (a closed
//! standard error loses the line, nothing else), and warnings that a broken
//! Redis would repeat on every request go through [`Throttled`].

use std::fmt::Display;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

fn write(level: &str, message: impl Display) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "palisade-ratelimit: {level}: {message}");
}

pub fn info(message: impl Display) {
    write("info", message);
}

pub fn warn(message: impl Display) {
    write("warning", message);
}

pub fn error(message: impl Display) {
    write("error", message);
}

/// At most one warning per `every`; the next one that gets through says how
/// many were dropped in between.
pub struct Throttled {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttled {
    pub const fn new(every: Duration) -> Self {
        Self {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// Logs `message()` unless a warning was logged less than `every` ago.
    pub fn warn(&self, message: impl FnOnce() -> String) {
        let now = Instant::now();
        let dropped = {
            let mut state = self
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match state.0 {
                Some(last) if now.duration_since(last) < self.every => {
                    state.1 += 1;
                    return;
                }
                _ => {
                    let dropped = state.1;
                    *state = (Some(now), 0);
                    dropped
                }
            }
        };
        if dropped == 0 {
            warn(message());
        } else {
            warn(format_args!(
                "{} ({dropped} similar warnings not shown)",
                message()
            ));
        }
    }
}
