//! The retry policy: which failures a later attempt can fix. One place, so every stage agrees
//! (the replication session, the state database, the destination writers).

/// Whether retrying can fix an error with this SQLSTATE: 08 connection exception; 40001
/// serialization failure, 40P01 deadlock; 53 insufficient resources (too many connections,
/// out of memory, disk full); 57P01/02/03/05 shutdown, crash, starting up, idle-session
/// timeout. Not 57P04 (database dropped): retrying cannot bring the database back.
pub fn sqlstate_is_transient(code: &str) -> bool {
    code.starts_with("08")
        || code == "40001"
        || code == "40P01"
        || code.starts_with("53")
        || (code.starts_with("57P0") && code != "57P04")
}

/// The same for a tokio-postgres error, where a closed connection or an I/O error underneath
/// (refused, reset, timed out) is transient too.
pub fn pg_error_is_transient(e: &tokio_postgres::Error) -> bool {
    if let Some(code) = e.code() {
        return sqlstate_is_transient(code.code());
    }
    if e.is_closed() {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// Capped exponential backoff with jitter: each delay is 50–100% of the current step, the
/// step doubles up to `max`, and an attempt that ran at least `healthy` starts over at
/// `first`. One policy for the source's restarts and the destinations' reconnects.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: std::time::Duration,
    max: std::time::Duration,
    healthy: std::time::Duration,
    step: std::time::Duration,
}

impl Backoff {
    pub fn new(
        first: std::time::Duration,
        max: std::time::Duration,
        healthy: std::time::Duration,
    ) -> Self {
        Backoff {
            first,
            max,
            healthy,
            step: first,
        }
    }

    /// The wait before the next attempt, after one that ran for `ran` and failed.
    pub fn next_delay(&mut self, ran: std::time::Duration) -> std::time::Duration {
        if ran >= self.healthy {
            self.step = self.first;
        }
        let delay = self.step.mul_f64(0.5 + rand::random::<f64>() / 2.0);
        self.step = (self.step * 2).min(self.max);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_and_capacity_errors_are_transient_definite_ones_are_not() {
        for code in [
            "08006", "08001", "40001", "40P01", "53300", "57P01", "57P03",
        ] {
            assert!(sqlstate_is_transient(code), "{code}");
        }
        for code in [
            "42501", "42P01", "42703", "42804", "28P01", "22P02", "23505", "57P04", "3D000",
            "XX000",
        ] {
            assert!(!sqlstate_is_transient(code), "{code}");
        }
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_and_resets_after_a_healthy_attempt() {
        use std::time::Duration;
        let ms = Duration::from_millis;
        let mut b = super::Backoff::new(ms(100), ms(400), ms(1000));
        for step in [100, 200, 400, 400] {
            let d = b.next_delay(ms(0));
            assert!(d >= ms(step / 2) && d <= ms(step), "{d:?} for step {step}");
        }
        let d = b.next_delay(ms(1000));
        assert!(d >= ms(50) && d <= ms(100), "{d:?} after a healthy attempt");
    }
}
