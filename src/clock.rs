//! The time meter runs on. Production reads the system clock; tests (and anyone rehearsing a
//! schedule) start it at another instant with `METER_NOW=2026-11-23T08:59:50Z`, from where it
//! runs at real speed. Budget periods, ledger timestamps, alerts and the weekly schedule all
//! read this one clock, so they agree.

use chrono::{DateTime, Duration, Utc};

/// A clock: the system's, shifted by a fixed offset (zero in production).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    offset: Duration,
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl Clock {
    pub fn system() -> Clock {
        Clock {
            offset: Duration::zero(),
        }
    }

    /// A clock that reads `start` now and runs on from there.
    pub fn starting_at(start: DateTime<Utc>) -> Clock {
        Clock {
            offset: start - Utc::now(),
        }
    }

    /// `METER_NOW` (RFC 3339) when set, else the system clock. A value that does not parse is
    /// an error, not silently ignored.
    pub fn from_env() -> Result<Clock, String> {
        match std::env::var("METER_NOW") {
            Ok(text) if !text.trim().is_empty() => DateTime::parse_from_rfc3339(text.trim())
                .map(|t| Clock::starting_at(t.with_timezone(&Utc)))
                .map_err(|err| format!("METER_NOW: {text:?} is not an RFC 3339 time ({err})")),
            _ => Ok(Clock::system()),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.offset
    }

    /// Whether this clock is shifted (logged at startup so nobody is surprised).
    pub fn is_shifted(&self) -> bool {
        !self.offset.is_zero()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_shifted_clock_starts_where_told_and_runs() {
        let start = DateTime::parse_from_rfc3339("2026-11-23T08:59:50Z")
            .unwrap()
            .with_timezone(&Utc);
        let clock = Clock::starting_at(start);
        let first = clock.now();
        assert!((first - start).num_milliseconds().abs() < 1_000);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(clock.now() > first);
        assert!(clock.is_shifted());
        assert!(!Clock::system().is_shifted());
    }
}
