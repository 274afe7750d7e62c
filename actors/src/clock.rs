//! Time, as every area reads it: one place, so that decisions take `now`
//! as an argument and the actors that make them read it here.
//!
//! - [`Clock`]: what an actor asks for the time; [`SystemClock`] in a node,
//!   a fixed or stepped clock in tests and in the large-N simulator.
//! - [`now_ms`]: the system clock, for the edges that have no `Clock` yet.
//! - [`rfc3339`]: how a time is shown.
//! - [`minute_ms`]: the length of a schedule minute (a test setting).

/// Where an actor reads the time: milliseconds since the Unix epoch.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> i64;
}

/// The machine's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        now_ms()
    }
}

/// The wall clock in milliseconds since the Unix epoch (0 before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Milliseconds since the epoch as RFC 3339 UTC, to the second.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// Milliseconds in one minute of a job's schedule: 60,000, or what
/// `BACKMESH_MINUTE_SECS` says (the mesh tests shorten minutes to run
/// schedules in seconds). Read once per process.
pub fn minute_ms() -> i64 {
    static MS: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *MS.get_or_init(|| {
        std::env::var("BACKMESH_MINUTE_SECS")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| *v > 0.0)
            .map(|v| (v * 1000.0) as i64)
            .unwrap_or(60_000)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_is_utc_to_the_second() {
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }
}
