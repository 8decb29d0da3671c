//! The chunk queue: chunks ready to place, grouped by job in priority order, plus chunks waiting out
//! a retry backoff.
//!
//! Grouping by job keeps a dispatch pass at one eligibility check per job rather than per chunk, and
//! a retried chunk goes to the front of its job so that retries are not starved by fresh chunks.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::time::Instant;

use muster_shared::ids::{ChunkIndex, JobId};

/// Queue order of jobs: higher priority first, then deeper sub-jobs first (a parent waiting on
/// its children is served before fresh work of its rank: depth first, as nested tasks
/// need), then older jobs first (ids are time-ordered).
pub type JobKey = (Reverse<i64>, Reverse<u32>, JobId);

/// Ready and delayed chunks.
#[derive(Debug, Default)]
pub struct ChunkQueue {
    ready: BTreeMap<JobKey, VecDeque<ChunkIndex>>,
    delayed: BinaryHeap<Reverse<(Instant, JobKey, ChunkIndex)>>,
}

/// The queue key of a job.
pub fn job_key(meta: &crate::records::JobMeta, job: JobId) -> JobKey {
    (Reverse(meta.priority), Reverse(meta.depth()), job)
}

impl ChunkQueue {
    /// Queues a job's fresh chunks.
    pub fn push_job(&mut self, key: JobKey, chunks: impl Iterator<Item = ChunkIndex>) {
        self.ready.entry(key).or_default().extend(chunks);
    }

    /// Queues a retried chunk, ready at `at`.
    pub fn push_retry(&mut self, key: JobKey, chunk: ChunkIndex, at: Instant) {
        if at <= Instant::now() {
            self.ready.entry(key).or_default().push_front(chunk);
        } else {
            self.delayed.push(Reverse((at, key, chunk)));
        }
    }

    /// Moves chunks whose backoff has passed into the ready queue.
    pub fn promote(&mut self, now: Instant) {
        while let Some(Reverse((at, _, _))) = self.delayed.peek() {
            if *at > now {
                break;
            }
            if let Some(Reverse((_, key, chunk))) = self.delayed.pop() {
                self.ready.entry(key).or_default().push_front(chunk);
            }
        }
    }

    /// When the next delayed chunk becomes ready.
    pub fn next_ready_at(&self) -> Option<Instant> {
        self.delayed.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Drops every queued chunk of a job (it finished or was cancelled).
    pub fn remove_job(&mut self, key: &JobKey) {
        self.ready.remove(key);
        // Delayed entries of the job are skipped when they come up: the job is no longer active.
    }

    /// Jobs with ready chunks, in queue order.
    pub fn ready_jobs(&self) -> Vec<JobKey> {
        self.ready.keys().copied().collect()
    }

    /// Takes the next ready chunk of a job.
    pub fn pop(&mut self, key: &JobKey) -> Option<ChunkIndex> {
        let queue = self.ready.get_mut(key)?;
        let chunk = queue.pop_front();
        if queue.is_empty() {
            self.ready.remove(key);
        }
        chunk
    }

    /// Puts back a chunk taken by [`ChunkQueue::pop`] that could not be placed.
    pub fn unpop(&mut self, key: JobKey, chunk: ChunkIndex) {
        self.ready.entry(key).or_default().push_front(chunk);
    }
}
