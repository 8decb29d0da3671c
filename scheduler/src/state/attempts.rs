//! Chunk attempts as they start and end, for the task stream (`GET /v1/attempts`) and the
//! `attempt` events of a job's stream, and the cluster's throughput second by second. Both are
//! bounded: the last [`MAX_ATTEMPT_EVENTS`] events and the last [`THROUGHPUT_SECONDS`] seconds.
//! Recording one costs a push onto a ring: the events are cut to what a reader shows.

use std::collections::VecDeque;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use muster_shared::ids::JobId;
use serde::Serialize;

use crate::records::AttemptRecord;

/// Most attempt events kept; a reader further behind is told how many it missed.
pub const MAX_ATTEMPT_EVENTS: usize = 20_000;

/// Seconds of throughput kept.
pub const THROUGHPUT_SECONDS: usize = 600;

/// One attempt started or ended.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AttemptEvent {
    /// Its job.
    pub job_id: JobId,
    /// Its chunk.
    pub chunk: u32,
    /// Its number, from 1.
    pub attempt: u32,
    /// The name of the worker it runs on.
    #[schema(value_type = String)]
    pub worker: Arc<str>,
    /// `started`, `succeeded` or `failed`.
    #[schema(value_type = String)]
    pub state: &'static str,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it ended, if it has.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// Why it failed: the failure's class (`worker_lost`, `task_error`...).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub class: Option<&'static str>,
    /// And its message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl AttemptEvent {
    /// The event an attempt's record stands for now.
    pub fn of(job_id: JobId, chunk: u32, record: &AttemptRecord) -> Self {
        let state = match (&record.error, record.finished_at) {
            (Some(_), _) => "failed",
            (None, Some(_)) => "succeeded",
            (None, None) => "started",
        };
        Self {
            job_id,
            chunk,
            attempt: record.attempt.0,
            worker: record.worker_name.clone(),
            state,
            started_at: record.started_at,
            finished_at: record.finished_at,
            class: record.error.as_ref().map(|e| e.class()),
            reason: record.error.as_ref().map(ToString::to_string),
        }
    }
}

/// Attempt events after a given number.
#[derive(Debug, Clone, Default)]
pub struct AttemptsRead {
    /// The events with their numbers, in order.
    pub events: Vec<(u64, AttemptEvent)>,
    /// The number to read from next time.
    pub next: u64,
    /// Events asked for that are no longer kept (of any job).
    pub missed: u64,
    /// The number the next event will get.
    pub head: u64,
}

/// The last attempt events, numbered from 0.
#[derive(Debug, Default)]
pub struct AttemptLog {
    events: VecDeque<(u64, AttemptEvent)>,
    next: u64,
}

impl AttemptLog {
    /// Records `event`.
    pub fn push(&mut self, event: AttemptEvent) {
        if self.events.len() == MAX_ATTEMPT_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back((self.next, event));
        self.next += 1;
    }

    /// The events numbered `from` and on, of `job` only when one is named, at most `most` of
    /// them; the reading stops at the newest event, so a reader polls as often as it likes for
    /// the cost of what is new.
    pub fn read(&self, from: u64, job: Option<JobId>, most: usize) -> AttemptsRead {
        let first = self.events.front().map_or(self.next, |(n, _)| *n);
        let start = from.max(first).min(self.next);
        let mut next = start;
        let mut events = Vec::new();
        for (n, event) in self.events.iter().skip((start - first) as usize) {
            if events.len() == most {
                break;
            }
            next = n + 1;
            if job.is_none_or(|j| j == event.job_id) {
                events.push((*n, event.clone()));
            }
        }
        AttemptsRead {
            events,
            next,
            missed: start.saturating_sub(from),
            head: self.next,
        }
    }

    /// The number the next event gets.
    pub fn next(&self) -> u64 {
        self.next
    }
}

/// Chunks that succeeded in each of the last [`THROUGHPUT_SECONDS`] seconds.
#[derive(Debug, Default)]
pub struct Throughput {
    /// The second (Unix time) the last count is for.
    last: i64,
    /// Counts, the last second last.
    counts: VecDeque<u32>,
}

impl Throughput {
    /// A chunk succeeded at `at`.
    pub fn count(&mut self, at: DateTime<Utc>) {
        let second = at.timestamp();
        self.advance(second);
        // A clock that stepped back counts in the newest second.
        if let Some(last) = self.counts.back_mut() {
            *last = last.saturating_add(1);
        }
    }

    /// Moves the newest second up to `second`, with zeroes for the seconds between.
    fn advance(&mut self, second: i64) {
        if self.counts.is_empty() {
            self.last = second;
            self.counts.push_back(0);
            return;
        }
        let gap = second.saturating_sub(self.last);
        if gap <= 0 {
            return;
        }
        for _ in 0..gap.min(THROUGHPUT_SECONDS as i64) {
            if self.counts.len() == THROUGHPUT_SECONDS {
                self.counts.pop_front();
            }
            self.counts.push_back(0);
        }
        self.last = second;
    }

    /// The counts of the `seconds` seconds up to `now` (the last one still filling), oldest
    /// first.
    pub fn last(&self, now: DateTime<Utc>, seconds: usize) -> Vec<u32> {
        let seconds = seconds.min(THROUGHPUT_SECONDS);
        let mut out = vec![0; seconds];
        let now = now.timestamp();
        for (age, count) in self.counts.iter().rev().enumerate() {
            let Some(slot) = (now - self.last)
                .checked_add(age as i64)
                .filter(|a| (0..seconds as i64).contains(a))
            else {
                continue;
            };
            out[seconds - 1 - slot as usize] = *count;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_shared::ids::{Attempt, WorkerId};

    fn record(error: bool, ended: bool) -> AttemptRecord {
        AttemptRecord {
            attempt: Attempt(1),
            worker: WorkerId::new(),
            worker_name: Arc::from("w1"),
            started_at: Utc::now(),
            finished_at: ended.then(Utc::now),
            error: error.then_some(crate::records::FailReason::ChunkTimeout),
            backup: false,
            seq: None,
        }
    }

    #[test]
    fn a_record_becomes_the_event_of_its_state() {
        let job = JobId::new();
        assert_eq!(
            AttemptEvent::of(job, 3, &record(false, false)).state,
            "started"
        );
        assert_eq!(
            AttemptEvent::of(job, 3, &record(false, true)).state,
            "succeeded"
        );
        let failed = AttemptEvent::of(job, 3, &record(true, true));
        assert_eq!(
            (failed.state, failed.class),
            ("failed", Some("chunk_timeout"))
        );
    }

    #[test]
    fn a_job_reads_its_own_events_and_a_late_reader_learns_what_it_missed() {
        let (a, b) = (JobId::new(), JobId::new());
        let mut log = AttemptLog::default();
        for i in 0..(MAX_ATTEMPT_EVENTS as u32 + 10) {
            let job = if i % 2 == 0 { a } else { b };
            log.push(AttemptEvent::of(job, i, &record(false, false)));
        }
        let read = log.read(0, Some(a), 3);
        assert_eq!(read.missed, 10);
        assert_eq!(
            read.events.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            [10, 12, 14]
        );
        assert!(read.events.iter().all(|(_, e)| e.job_id == a));
        // The next read starts after the last one matched, not after the whole ring.
        assert_eq!(read.next, 15);
        let all = log.read(read.next, None, usize::MAX);
        assert_eq!(all.events.len(), MAX_ATTEMPT_EVENTS - 5);
        assert_eq!(all.next, log.next());
        assert!(log.read(log.next(), None, 10).events.is_empty());
    }

    #[test]
    fn throughput_counts_by_second_with_quiet_seconds_as_zero() {
        let mut t = Throughput::default();
        let at = |s: i64| DateTime::from_timestamp(1_000_000 + s, 0).expect("a time");
        t.count(at(0));
        t.count(at(0));
        t.count(at(2));
        assert_eq!(t.last(at(2), 4), [0, 2, 0, 1]);
        // Seconds without a chunk since the last one read as zero.
        assert_eq!(t.last(at(4), 5), [2, 0, 1, 0, 0]);
        t.count(at(2 + THROUGHPUT_SECONDS as i64 * 3));
        assert_eq!(t.last(at(2 + THROUGHPUT_SECONDS as i64 * 3), 2), [0, 1]);
        assert!(t.counts.len() <= THROUGHPUT_SECONDS);
    }
}
