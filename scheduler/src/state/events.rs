//! What happens in the cluster, for `GET /v1/events`: jobs submitted and ended, workers that
//! joined, drain and left, numbered from 0, the last [`MAX_EVENTS`] kept.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use muster_shared::ids::{JobId, WorkerId};
use serde::Serialize;

/// Most events kept; a reader further behind is told how many it missed.
pub const MAX_EVENTS: usize = 10_000;

/// One thing that happened. Its data names it too (`"event": "worker_joined"`...), as the stream's event name does.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ClusterEvent {
    /// A job was accepted.
    JobSubmitted {
        /// The job.
        job_id: JobId,
        /// Its kind or task.
        name: String,
        /// Its chunks.
        chunks: u32,
    },
    /// A job ended.
    JobEnded {
        /// The job.
        job_id: JobId,
        /// `succeeded`, `failed` or `cancelled`.
        #[schema(value_type = String)]
        status: &'static str,
    },
    /// A worker connected.
    WorkerJoined {
        /// Its connection's id.
        worker_id: WorkerId,
        /// Its name.
        name: String,
        /// Its slots.
        slots: u32,
    },
    /// A worker announced it is shutting down.
    WorkerDraining {
        /// Its connection's id.
        worker_id: WorkerId,
        /// Its name.
        name: String,
    },
    /// A worker's connection ended.
    WorkerLeft {
        /// Its connection's id.
        worker_id: WorkerId,
        /// Its name.
        name: String,
        /// Why (the connection was lost, its heartbeats stopped...).
        reason: String,
        /// Chunks it was running, now retried elsewhere.
        chunks_lost: usize,
    },
}

impl ClusterEvent {
    /// Its name in the stream.
    pub fn name(&self) -> &'static str {
        match self {
            Self::JobSubmitted { .. } => "job_submitted",
            Self::JobEnded { .. } => "job_ended",
            Self::WorkerJoined { .. } => "worker_joined",
            Self::WorkerDraining { .. } => "worker_draining",
            Self::WorkerLeft { .. } => "worker_left",
        }
    }
}

/// An event with when it happened.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Happened {
    /// When.
    pub at: DateTime<Utc>,
    /// What.
    #[serde(flatten)]
    pub event: ClusterEvent,
}

/// Events after a given number.
#[derive(Debug, Clone, Default)]
pub struct EventsRead {
    /// The events with their numbers, in order.
    pub events: Vec<(u64, Happened)>,
    /// The number to read from next time.
    pub next: u64,
    /// Events asked for that are no longer kept.
    pub missed: u64,
}

/// The last events, numbered.
#[derive(Debug, Default)]
pub struct EventLog {
    events: VecDeque<(u64, Happened)>,
    next: u64,
}

impl EventLog {
    /// Records `event`.
    pub fn push(&mut self, event: ClusterEvent) {
        let at = Utc::now();
        self.events.push_back((self.next, Happened { at, event }));
        self.next += 1;
        if self.events.len() > MAX_EVENTS {
            self.events.pop_front();
        }
    }

    /// The events numbered `from` and on, at most `most`.
    pub fn read(&self, from: u64, most: usize) -> EventsRead {
        let first = self.events.front().map_or(self.next, |(n, _)| *n);
        let start = from.max(first).min(self.next);
        let events: Vec<(u64, Happened)> = self
            .events
            .iter()
            .skip((start - first) as usize)
            .take(most)
            .cloned()
            .collect();
        EventsRead {
            next: events.last().map_or(start, |(n, _)| n + 1),
            missed: start.saturating_sub(from),
            events,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_read_after_a_number_and_the_oldest_go() {
        let mut log = EventLog::default();
        let ended = |i: u32| ClusterEvent::JobSubmitted {
            job_id: JobId::new(),
            name: format!("job{i}"),
            chunks: i,
        };
        for i in 0..(MAX_EVENTS as u32 + 5) {
            log.push(ended(i));
        }
        let read = log.read(0, 3);
        assert_eq!(read.missed, 5);
        assert_eq!(read.events[0].0, 5);
        assert_eq!(read.next, 8);
        let end = log.read(read.next + MAX_EVENTS as u64, 10);
        assert!(end.events.is_empty());
        assert_eq!(end.next, MAX_EVENTS as u64 + 5);
    }
}
