//! Each worker's record of chunks it lost with its connection and of results that did not fit,
//! kept by worker name across connections (a worker that reconnects keeps its record). A worker
//! that keeps losing or corrupting chunks is quarantined: it gets no new chunks for a while, so
//! one bad machine, or one leaked worker token, cannot use up every job's attempts.
//!
//! A strike is a connection lost while it held chunks, or a result its job's reducer refused.
//! [`STRIKES`] strikes within [`WINDOW`] quarantine the name for [`FIRST_QUARANTINE`], doubling
//! with each further quarantine up to [`LONGEST_QUARANTINE`] (as Nomad and Kubernetes back off a
//! crash-looping task). A worker killed once in a while never comes near it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Strikes within [`WINDOW`] that quarantine a worker.
pub const STRIKES: usize = 3;
/// How far back strikes count.
pub const WINDOW: Duration = Duration::from_secs(60);
/// A worker's first quarantine.
pub const FIRST_QUARANTINE: Duration = Duration::from_secs(30);
/// The longest quarantine.
pub const LONGEST_QUARANTINE: Duration = Duration::from_secs(15 * 60);
/// Records kept before those with nothing recent in them are dropped.
const KEPT: usize = 10_000;

/// One worker name's record.
#[derive(Debug, Default)]
struct Record {
    /// When its recent strikes happened, oldest first.
    strikes: VecDeque<Instant>,
    /// When its quarantine ends, if it was ever quarantined.
    until: Option<Instant>,
    /// Quarantines so far: each lasts twice the one before.
    times: u32,
}

/// Every worker name's record.
#[derive(Debug, Default)]
pub struct Health {
    records: HashMap<Arc<str>, Record>,
}

impl Health {
    /// Counts a strike against `name` at `now`; returns the end of the quarantine it starts, if
    /// it starts one.
    pub fn strike(&mut self, name: &Arc<str>, now: Instant) -> Option<Instant> {
        if self.records.len() >= KEPT {
            self.records.retain(|_, r| {
                r.until.is_some_and(|u| u > now)
                    || r.strikes
                        .back()
                        .is_some_and(|t| now.duration_since(*t) < WINDOW)
            });
        }
        let record = self.records.entry(name.clone()).or_default();
        while record
            .strikes
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            record.strikes.pop_front();
        }
        record.strikes.push_back(now);
        if record.strikes.len() < STRIKES {
            return None;
        }
        record.strikes.clear();
        let lasts = FIRST_QUARANTINE
            .saturating_mul(1 << record.times.min(16))
            .min(LONGEST_QUARANTINE);
        record.times += 1;
        let until = now + lasts;
        record.until = Some(until);
        Some(until)
    }

    /// When `name`'s quarantine ends, if it is quarantined at `now`.
    pub fn quarantined_until(&self, name: &str, now: Instant) -> Option<Instant> {
        self.records
            .get(name)
            .and_then(|r| r.until)
            .filter(|until| *until > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strikes_close_together_quarantine_a_name_for_longer_each_time() {
        let mut health = Health::default();
        let name: Arc<str> = "flaky".into();
        let t0 = Instant::now();
        // Strikes further apart than the window never add up.
        for k in 0..5u32 {
            assert_eq!(health.strike(&name, t0 + WINDOW * k), None);
        }
        let t1 = t0 + WINDOW * 10;
        assert_eq!(health.strike(&name, t1), None);
        assert_eq!(health.strike(&name, t1), None);
        let until = health.strike(&name, t1).expect("quarantined");
        assert_eq!(until, t1 + FIRST_QUARANTINE);
        assert_eq!(health.quarantined_until("flaky", t1), Some(until));
        assert_eq!(health.quarantined_until("other", t1), None);
        assert_eq!(health.quarantined_until("flaky", until), None);
        let t2 = until + Duration::from_secs(1);
        for _ in 0..2 {
            assert_eq!(health.strike(&name, t2), None);
        }
        assert_eq!(health.strike(&name, t2), Some(t2 + FIRST_QUARANTINE * 2));
    }
}
