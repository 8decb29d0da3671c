//! One job and its chunks: the per-chunk state machine and the attempt history.
//!
//! ```text
//!            assign                 success
//! Pending ───────────▶ Running ─────────────▶ Succeeded
//!    ▲                   │
//!    └── retryable ──────┤ failure, attempts left
//!        (backoff)       └──────────────────▶ Failed   (permanent, or attempts used up)
//! ```
//! A job is `Queued` until its first chunk runs, `Running` until every chunk succeeded (then it is
//! reduced) or one chunk failed for good, and it can be `Cancelled` from any non-terminal state.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use muster_shared::exec::ExecReport;
use muster_shared::ids::{Attempt, ChunkIndex, JobId, WorkerId};
use muster_shared::protocol::ChunkRef;
use serde::Serialize;

use super::views::MAX_RETRIES_SHOWN;
pub use crate::records::{AttemptRecord, FailReason, JobMeta};
use crate::records::{JobEnd, StoredJob};

/// Where one chunk stands.
#[derive(Debug, Clone)]
pub enum ChunkState {
    /// Waiting for a worker; not before `ready_at` (retry backoff).
    Pending {
        /// Earliest time it may be placed.
        ready_at: Instant,
    },
    /// Assigned to a worker.
    Running {
        /// The worker running it.
        worker: WorkerId,
        /// The attempt it runs.
        attempt: Attempt,
        /// After this the attempt is abandoned (`chunk_timeout`).
        deadline: Option<Instant>,
    },
    /// Done; its partial result counts.
    Succeeded {
        /// The partial result, JSON.
        result: Bytes,
    },
    /// Failed for good (the job failed with it).
    Failed,
}

impl ChunkState {
    /// The state's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            ChunkState::Pending { .. } => "pending",
            ChunkState::Running { .. } => "running",
            ChunkState::Succeeded { .. } => "succeeded",
            ChunkState::Failed => "failed",
        }
    }
}

/// An attempt's end asked of a chunk that is not running that attempt: refused, nothing changes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chunk {chunk}: attempt {attempt} cannot end, the chunk is {now}")]
pub struct IllegalMove {
    /// The chunk.
    pub chunk: ChunkIndex,
    /// The attempt whose end was asked.
    pub attempt: Attempt,
    /// Where the chunk stands instead.
    pub now: &'static str,
}

/// One chunk: its payload, state and attempts.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// The payload, JSON.
    pub input: Bytes,
    /// Where it stands.
    pub state: ChunkState,
    /// Every attempt so far.
    pub attempts: Vec<AttemptRecord>,
    /// An `exec` batch's report so far while its failed items rerun (`retry_failed`); kept in
    /// memory only: after a restart the whole batch runs again.
    pub earlier: Option<Box<ExecReport>>,
    /// A speculative copy running beside the attempt in `state` (`speculation`): its worker
    /// and attempt. The first of the two to finish wins.
    pub backup: Option<(WorkerId, Attempt)>,
}

impl Chunk {
    /// A fresh chunk, ready now.
    pub fn new(input: Bytes) -> Self {
        Self {
            input,
            state: ChunkState::Pending {
                ready_at: Instant::now(),
            },
            attempts: Vec::new(),
            earlier: None,
            backup: None,
        }
    }

    /// Failures that used up an attempt.
    pub fn counted_failures(&self) -> u32 {
        self.attempts
            .iter()
            .filter(|a| a.error.as_ref().is_some_and(FailReason::counts_as_attempt))
            .count() as u32
    }

    /// Runs of an `exec` batch whose program failed (see `retry_failed`).
    pub fn program_failures(&self) -> u32 {
        self.attempts
            .iter()
            .filter(|a| matches!(a.error, Some(FailReason::ProgramFailed(_))))
            .count() as u32
    }

    /// Names of the workers whose attempts at this chunk failed; a retry avoids them when it
    /// can. By name, not id: a worker that reconnects (and so has a new id) is still avoided.
    pub fn failed_on(&self) -> impl Iterator<Item = Arc<str>> + '_ {
        self.attempts
            .iter()
            .filter(|a| a.error.is_some())
            .map(|a| a.worker_name.clone())
    }

    /// The record of `attempt`.
    pub fn record(&self, attempt: Attempt) -> Option<&AttemptRecord> {
        self.attempts.iter().rev().find(|r| r.attempt == attempt)
    }

    fn record_mut(&mut self, attempt: Attempt) -> Option<&mut AttemptRecord> {
        self.attempts
            .iter_mut()
            .rev()
            .find(|r| r.attempt == attempt)
    }

    /// The attempt number the next run gets.
    pub fn next_attempt(&self) -> Attempt {
        Attempt(self.attempts.len() as u32 + 1)
    }

    /// Records a new attempt on `worker`, started now; its number.
    fn open_attempt(&mut self, worker: WorkerId, worker_name: &Arc<str>) -> Attempt {
        let attempt = self.next_attempt();
        self.attempts.push(AttemptRecord {
            attempt,
            worker,
            worker_name: worker_name.clone(),
            started_at: Utc::now(),
            finished_at: None,
            error: None,
            backup: false,
            seq: None,
        });
        attempt
    }
}

/// Speculative backups of a job's stragglers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct BackupCounts {
    /// Backups started.
    pub started: u32,
    /// Backups that finished before the attempt they backed up.
    pub won: u32,
}

/// A chunk's partial result, numbered by when it succeeded in its job.
#[derive(Debug, Clone, PartialEq)]
pub struct Partial {
    /// Its place in the job's succeeded chunks, from 0.
    pub seq: u64,
    /// The chunk.
    pub chunk: ChunkIndex,
    /// Its result, JSON.
    pub result: Bytes,
}

/// Where a job stands.
#[derive(Debug, Clone)]
pub enum JobState {
    /// Accepted; no chunk has run yet.
    Queued,
    /// At least one chunk has been assigned.
    Running,
    /// Reduced; the result is JSON text.
    Succeeded {
        /// The merged result.
        result: Bytes,
    },
    /// Failed; the error says why (for chunk failures, every attempt).
    Failed {
        /// Human-readable error.
        error: String,
    },
    /// Cancelled by a client.
    Cancelled,
}

impl JobState {
    /// The status word used by the API.
    pub fn name(&self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded { .. } => "succeeded",
            JobState::Failed { .. } => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// True for `succeeded`, `failed` and `cancelled`.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            JobState::Succeeded { .. } | JobState::Failed { .. } | JobState::Cancelled
        )
    }
}

/// Counts of chunks by state, kept up to date on every transition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ChunkCounts {
    /// Chunks in the job.
    pub total: u32,
    /// Waiting for a worker.
    pub pending: u32,
    /// Running now.
    pub running: u32,
    /// Done.
    pub succeeded: u32,
    /// Failed for good.
    pub failed: u32,
}

/// A job with its chunks.
#[derive(Debug, Clone)]
pub struct Job {
    /// Its id.
    pub id: JobId,
    /// What it runs.
    pub meta: JobMeta,
    /// Where it stands.
    pub state: JobState,
    /// Chunk table, in reduce order.
    pub chunks: Vec<Chunk>,
    /// Chunk counts by state.
    pub counts: ChunkCounts,
    /// Attempts started so far.
    pub attempts: u32,
    /// Chunks with a failed attempt, kept as they fail so that a status shows them without
    /// walking every chunk of a large job.
    pub retried: BTreeSet<ChunkIndex>,
    /// Once the job has ended and its chunk table is dropped: the attempts of the first
    /// [`MAX_RETRIES_SHOWN`] chunks in `retried`, all a status still shows of its chunks.
    pub kept_retries: Vec<(ChunkIndex, Vec<AttemptRecord>)>,
    /// Succeeded chunks in the order they succeeded (restored ones first, in chunk order): what
    /// `GET /v1/jobs/{id}/partials` numbers its lines by. Dropped with the chunk table.
    pub succeeded_order: Vec<ChunkIndex>,
    /// True once a reader follows the job's partial results: each success is then handed to
    /// the coordinator as an [`crate::state::Effect::Partial`].
    pub partials_followed: bool,
    /// Speculative backups started, and those that finished first.
    pub backups: BackupCounts,
    /// How long each succeeded attempt ran, in milliseconds: what a straggler is measured
    /// against (`speculation` only).
    pub run_ms: Vec<u32>,
    /// When it was accepted.
    pub created_at: DateTime<Utc>,
    /// When its first chunk was assigned.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a terminal state.
    pub finished_at: Option<DateTime<Utc>>,
}

impl Job {
    /// A queued job over these chunk payloads.
    pub fn new(id: JobId, meta: JobMeta, inputs: Vec<Bytes>) -> Self {
        let chunks: Vec<Chunk> = inputs.into_iter().map(Chunk::new).collect();
        let n = chunks.len() as u32;
        Self {
            id,
            meta,
            state: JobState::Queued,
            counts: ChunkCounts {
                total: n,
                pending: n,
                ..ChunkCounts::default()
            },
            chunks,
            attempts: 0,
            retried: BTreeSet::new(),
            kept_retries: Vec::new(),
            succeeded_order: Vec::new(),
            partials_followed: false,
            backups: BackupCounts::default(),
            run_ms: Vec::new(),
            created_at: Utc::now(),
            started_at: None,
            finished_at: None,
        }
    }

    /// Rebuilds a job read back from the store. Attempts that were running when the coordinator
    /// stopped end as [`FailReason::CoordinatorRestarted`] and their chunks are pending again;
    /// succeeded chunks keep their results. Returns the job and the attempts it closed that way.
    pub fn restore(stored: StoredJob) -> (Self, Vec<ChunkRef>) {
        let mut interrupted = Vec::new();
        let mut counts = ChunkCounts {
            total: stored.chunks.len() as u32,
            ..ChunkCounts::default()
        };
        let mut attempts = 0;
        let mut retried = BTreeSet::new();
        let mut started_at: Option<DateTime<Utc>> = None;
        let chunks: Vec<Chunk> = stored
            .chunks
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let mut records = c.attempts;
                for record in &mut records {
                    if record.finished_at.is_none() {
                        record.finished_at = Some(Utc::now());
                        record.error = Some(FailReason::CoordinatorRestarted);
                        interrupted.push(ChunkRef {
                            job: stored.id,
                            chunk: ChunkIndex(i as u32),
                            attempt: record.attempt,
                        });
                    }
                    started_at =
                        Some(started_at.map_or(record.started_at, |s| s.min(record.started_at)));
                }
                attempts += records.len() as u32;
                if records.iter().any(|r| r.error.is_some()) {
                    retried.insert(ChunkIndex(i as u32));
                }
                let state = match c.result {
                    Some(result) => {
                        counts.succeeded += 1;
                        ChunkState::Succeeded { result }
                    }
                    None => {
                        counts.pending += 1;
                        ChunkState::Pending {
                            ready_at: Instant::now(),
                        }
                    }
                };
                Chunk {
                    input: c.input,
                    state,
                    attempts: records,
                    earlier: None,
                    backup: None,
                }
            })
            .collect();
        let (state, finished_at) = match stored.end {
            Some((end, at)) => {
                counts.pending = 0;
                let state = match end {
                    JobEnd::Succeeded(result) if result.is_empty() => {
                        let partials: Vec<Bytes> = chunks
                            .iter()
                            .filter_map(|c| match &c.state {
                                ChunkState::Succeeded { result } => Some(result.clone()),
                                _ => None,
                            })
                            .collect();
                        match stored.meta.reducer.reduce(&partials) {
                            Ok(result) => JobState::Succeeded {
                                result: Bytes::from(result),
                            },
                            Err(e) => JobState::Failed {
                                error: format!("cannot merge the stored results: {e}"),
                            },
                        }
                    }
                    JobEnd::Succeeded(result) => JobState::Succeeded { result },
                    JobEnd::Failed(error) => JobState::Failed { error },
                    JobEnd::Cancelled => JobState::Cancelled,
                };
                (state, Some(at))
            }
            None if attempts > 0 => (JobState::Running, None),
            None => (JobState::Queued, None),
        };
        // An ended job's chunk table is dropped by the caller, once its interrupted attempts are
        // recorded (`Job::drop_chunks`).
        if let JobState::Failed { .. } = state {
            counts.failed = chunks
                .iter()
                .filter(|c| {
                    matches!(c.state, ChunkState::Pending { .. })
                        && c.attempts.last().is_some_and(|a| {
                            a.error.as_ref().is_some_and(FailReason::counts_as_attempt)
                        })
                })
                .count() as u32;
        }
        // Partials in the order they were numbered when they came (chunk order for those stored
        // before partials were numbered).
        let mut succeeded_order: Vec<ChunkIndex> = (0..chunks.len())
            .filter(|&i| matches!(chunks[i].state, ChunkState::Succeeded { .. }))
            .map(|i| ChunkIndex(i as u32))
            .collect();
        succeeded_order.sort_by_key(|i| {
            let seq = chunks[i.get()].attempts.iter().rev().find_map(|r| r.seq);
            (seq.unwrap_or(u64::MAX), *i)
        });
        // Backups started, and those that won: each win superseded the attempt it backed up.
        let records = || chunks.iter().flat_map(|c| &c.attempts);
        let backups = BackupCounts {
            started: records().filter(|r| r.backup).count() as u32,
            won: records()
                .filter(|r| !r.backup && matches!(r.error, Some(FailReason::Superseded)))
                .count() as u32,
        };
        let job = Self {
            id: stored.id,
            meta: stored.meta,
            state,
            chunks,
            counts,
            attempts,
            retried,
            kept_retries: Vec::new(),
            succeeded_order,
            partials_followed: false,
            backups,
            run_ms: Vec::new(),
            created_at: stored.created_at,
            started_at,
            finished_at,
        };
        (job, interrupted)
    }

    /// The chunk at `index`, if the job has one there.
    pub fn chunk(&self, index: ChunkIndex) -> Option<&Chunk> {
        self.chunks.get(index.get())
    }

    /// Pending → Running. Returns the attempt number, or `None` if the chunk was not pending.
    pub fn start_chunk(
        &mut self,
        index: ChunkIndex,
        worker: WorkerId,
        worker_name: &Arc<str>,
    ) -> Option<Attempt> {
        let deadline = self.meta.chunk_timeout.map(|t| Instant::now() + t);
        let chunk = self.chunks.get_mut(index.get())?;
        if !matches!(chunk.state, ChunkState::Pending { .. }) || self.state.is_terminal() {
            return None;
        }
        let attempt = chunk.open_attempt(worker, worker_name);
        chunk.state = ChunkState::Running {
            worker,
            attempt,
            deadline,
        };
        self.counts.pending -= 1;
        self.counts.running += 1;
        self.attempts += 1;
        if matches!(self.state, JobState::Queued) {
            self.state = JobState::Running;
            self.started_at = Some(Utc::now());
        }
        Some(attempt)
    }

    /// True when `index` is running `attempt` on `worker`, as its attempt or as its backup:
    /// only then does an outcome count.
    pub fn is_current(&self, index: ChunkIndex, worker: WorkerId, attempt: Attempt) -> bool {
        let Some(chunk) = self.chunk(index) else {
            return false;
        };
        let running = matches!(
            chunk.state,
            ChunkState::Running { worker: w, attempt: a, .. } if w == worker && a == attempt
        );
        (running || chunk.backup == Some((worker, attempt))) && !self.state.is_terminal()
    }

    /// True when `attempt` is the speculative backup `index` runs.
    pub fn is_backup(&self, index: ChunkIndex, attempt: Attempt) -> bool {
        self.chunk(index)
            .and_then(|c| c.backup)
            .is_some_and(|(_, a)| a == attempt)
    }

    /// Closes the record of `attempt`, with its error if it failed.
    fn close_record(&mut self, index: ChunkIndex, attempt: Attempt, error: Option<FailReason>) {
        if let Some(record) = self.chunks[index.get()].record_mut(attempt) {
            record.finished_at = Some(Utc::now());
            if let Some(ms) = record
                .finished_at
                .and_then(|end| (end - record.started_at).to_std().ok())
                .filter(|_| error.is_none() && self.meta.speculation)
            {
                self.run_ms
                    .push(ms.as_millis().min(u128::from(u32::MAX)) as u32);
            }
            record.error = error;
        }
    }

    fn end_attempt(&mut self, index: ChunkIndex, attempt: Attempt, error: Option<FailReason>) {
        self.close_record(index, attempt, error);
        self.counts.running -= 1;
    }

    /// Starts a speculative copy of running chunk `index` on `worker`; its attempt number, or
    /// `None` when the chunk is not running or has a copy already.
    pub fn start_backup(
        &mut self,
        index: ChunkIndex,
        worker: WorkerId,
        worker_name: &Arc<str>,
    ) -> Option<Attempt> {
        if self.state.is_terminal() {
            return None;
        }
        let chunk = self.chunks.get_mut(index.get())?;
        if !matches!(chunk.state, ChunkState::Running { .. }) || chunk.backup.is_some() {
            return None;
        }
        let attempt = chunk.open_attempt(worker, worker_name);
        if let Some(record) = chunk.attempts.last_mut() {
            record.backup = true;
        }
        chunk.backup = Some((worker, attempt));
        self.attempts += 1;
        self.backups.started += 1;
        Some(attempt)
    }

    /// Stops `index`'s backup, if it has one, because the attempt it backed up ended: its worker
    /// and attempt, to cancel.
    pub fn drop_backup(&mut self, index: ChunkIndex) -> Option<(WorkerId, Attempt)> {
        let (worker, attempt) = self.chunks.get_mut(index.get())?.backup.take()?;
        self.close_record(index, attempt, Some(FailReason::Superseded));
        self.retried.insert(index);
        Some((worker, attempt))
    }

    /// `index`'s backup `attempt` finished first with `result`: the chunk succeeds with it and
    /// the attempt it backed up is superseded. Returns whether every chunk has now succeeded,
    /// and the superseded attempt's worker and number, to cancel.
    pub fn backup_succeeded(
        &mut self,
        index: ChunkIndex,
        attempt: Attempt,
        result: Bytes,
    ) -> Result<(bool, (WorkerId, Attempt)), IllegalMove> {
        let primary = match self.chunk(index).map(|c| (&c.state, c.backup)) {
            Some((
                ChunkState::Running {
                    worker, attempt: a, ..
                },
                Some((_, b)),
            )) if b == attempt && !self.state.is_terminal() => (*worker, *a),
            other => {
                return Err(IllegalMove {
                    chunk: index,
                    attempt,
                    now: other.map_or("not in this job", |(s, _)| s.name()),
                })
            }
        };
        self.chunks[index.get()].backup = None;
        self.close_record(index, primary.1, Some(FailReason::Superseded));
        self.retried.insert(index);
        self.succeed(index, attempt, result);
        self.backups.won += 1;
        Ok((self.counts.succeeded == self.counts.total, primary))
    }

    /// `index`'s backup `attempt` failed: the attempt it backed up runs on alone.
    pub fn backup_failed(
        &mut self,
        index: ChunkIndex,
        attempt: Attempt,
        reason: FailReason,
    ) -> Result<(), IllegalMove> {
        if !self.is_backup(index, attempt) {
            return Err(IllegalMove {
                chunk: index,
                attempt,
                now: "not running it as a backup",
            });
        }
        self.chunks[index.get()].backup = None;
        self.close_record(index, attempt, Some(reason));
        self.retried.insert(index);
        Ok(())
    }

    /// The attempt `index` runs failed, not for good, while its backup runs: the backup goes
    /// on as the chunk's attempt (with a deadline of its own from now). Returns its worker and
    /// number, or `None` when there is no backup to go on with (the failure takes its course).
    pub fn promote_backup(
        &mut self,
        index: ChunkIndex,
        attempt: Attempt,
        reason: FailReason,
    ) -> Option<(WorkerId, Attempt)> {
        if reason.is_permanent() {
            return None;
        }
        let chunk = self.chunks.get(index.get())?;
        let (worker, backup) = chunk.backup?;
        if !matches!(chunk.state, ChunkState::Running { attempt: a, .. } if a == attempt) {
            return None;
        }
        let deadline = self.meta.chunk_timeout.map(|t| Instant::now() + t);
        self.close_record(index, attempt, Some(reason));
        self.retried.insert(index);
        let chunk = &mut self.chunks[index.get()];
        chunk.backup = None;
        chunk.state = ChunkState::Running {
            worker,
            attempt: backup,
            deadline,
        };
        Some((worker, backup))
    }

    /// Running chunks that have run longer than `k` times the median of the job's succeeded
    /// attempts (and at least `least`), without a backup yet: stragglers worth a copy.
    pub fn stragglers(&self, k: f64, least: Duration) -> Vec<(ChunkIndex, Arc<str>)> {
        if self.run_ms.is_empty() || self.state.is_terminal() {
            return Vec::new();
        }
        let mut times = self.run_ms.clone();
        let middle = times.len() / 2;
        let median = *times.select_nth_unstable(middle).1;
        let after = Duration::from_secs_f64(f64::from(median) / 1000.0 * k).max(least);
        let now = Utc::now();
        self.chunks
            .iter()
            .enumerate()
            .filter(|(_, c)| c.backup.is_none() && matches!(c.state, ChunkState::Running { .. }))
            .filter_map(|(i, c)| {
                let record = c.attempts.last()?;
                let ran = (now - record.started_at).to_std().ok()?;
                (ran > after).then(|| (ChunkIndex(i as u32), record.worker_name.clone()))
            })
            .collect()
    }

    /// Refuses an end of `attempt` unless the chunk is running it in a job not ended.
    fn running(&self, index: ChunkIndex, attempt: Attempt) -> Result<(), IllegalMove> {
        let now = match self.chunk(index).map(|c| &c.state) {
            None => "not in this job",
            Some(_) if self.state.is_terminal() => "in an ended job",
            Some(ChunkState::Running { attempt: a, .. }) if *a == attempt => return Ok(()),
            Some(ChunkState::Running { .. }) => "running another attempt",
            Some(other) => other.name(),
        };
        Err(IllegalMove {
            chunk: index,
            attempt,
            now,
        })
    }

    /// Running `attempt` → Succeeded; refused from any other state. Returns true when every
    /// chunk has now succeeded.
    pub fn chunk_succeeded(
        &mut self,
        index: ChunkIndex,
        attempt: Attempt,
        result: Bytes,
    ) -> Result<bool, IllegalMove> {
        self.running(index, attempt)?;
        self.succeed(index, attempt, result);
        Ok(self.counts.succeeded == self.counts.total)
    }

    /// `attempt` of `index` ends with `result`, which the chunk keeps as the next partial of the
    /// job's stream (its number kept in the attempt's record, so that a restart numbers the
    /// partials alike).
    fn succeed(&mut self, index: ChunkIndex, attempt: Attempt, result: Bytes) {
        self.end_attempt(index, attempt, None);
        let seq = self.succeeded_order.len() as u64;
        let chunk = &mut self.chunks[index.get()];
        if let Some(record) = chunk.record_mut(attempt) {
            record.seq = Some(seq);
        }
        chunk.state = ChunkState::Succeeded { result };
        self.counts.succeeded += 1;
        self.succeeded_order.push(index);
    }

    /// Running `attempt` → Pending (retry at `ready_at`) or → Failed, by the retry policy:
    /// permanent errors and exhausted attempts fail the chunk (and so the job); refused from any
    /// other state. Returns true when the chunk will be retried.
    pub fn chunk_failed(
        &mut self,
        index: ChunkIndex,
        attempt: Attempt,
        reason: FailReason,
        backoff: Duration,
    ) -> Result<bool, IllegalMove> {
        self.running(index, attempt)?;
        let permanent = reason.is_permanent();
        self.end_attempt(index, attempt, Some(reason));
        self.retried.insert(index);
        let chunk = &mut self.chunks[index.get()];
        if permanent || chunk.counted_failures() >= self.meta.max_attempts {
            chunk.state = ChunkState::Failed;
            self.counts.failed += 1;
            return Ok(false);
        }
        let delay = if chunk
            .attempts
            .last()
            .is_some_and(|a| a.error.as_ref().is_some_and(FailReason::backs_off))
        {
            // Exponential backoff: base, 2×base, 4×base ... capped at 64×base.
            backoff * (1 << chunk.counted_failures().saturating_sub(1).min(6))
        } else {
            Duration::ZERO
        };
        chunk.state = ChunkState::Pending {
            ready_at: Instant::now() + delay,
        };
        self.counts.pending += 1;
        Ok(true)
    }

    /// The error text for a job that failed on chunk `index`: every attempt with worker, reason, time.
    pub fn failure_report(&self, index: ChunkIndex) -> String {
        let chunk = &self.chunks[index.get()];
        let permanent = chunk
            .attempts
            .last()
            .and_then(|a| a.error.as_ref())
            .is_some_and(FailReason::is_permanent);
        let mut out = if permanent {
            format!("chunk {index} failed permanently (not retried)")
        } else {
            format!(
                "chunk {index} failed after {} attempts",
                chunk.attempts.len()
            )
        };
        for a in &chunk.attempts {
            let reason = a
                .error
                .as_ref()
                .map_or("no error".to_owned(), |e| e.to_string());
            out.push_str(&format!(
                "; attempt {} on worker {} ({}) at {}: {}",
                a.attempt,
                a.worker_name,
                a.worker,
                a.finished_at.unwrap_or(a.started_at).to_rfc3339(),
                reason
            ));
        }
        out
    }

    /// Moves to a terminal state; chunks still pending or running stop counting as such.
    pub fn finish(&mut self, state: JobState) {
        debug_assert!(state.is_terminal());
        self.state = state;
        self.finished_at = Some(Utc::now());
        self.drop_chunks();
    }

    /// Drops an ended job's chunk table, payloads and attempt history with it, keeping what a
    /// status shows (its counts and the attempts of its first retried chunks): an ended job of
    /// ten million chunks takes a few hundred bytes, not a gigabyte, until it is pruned.
    pub fn drop_chunks(&mut self) {
        self.kept_retries = self
            .retried
            .iter()
            .take(MAX_RETRIES_SHOWN)
            .filter_map(|&i| Some((i, self.chunk(i)?.attempts.clone())))
            .collect();
        self.retried = BTreeSet::new();
        self.chunks = Vec::new();
        self.succeeded_order = Vec::new();
        self.run_ms = Vec::new();
    }

    /// The partial results of the chunks that succeeded, from the `from`-th to succeed on:
    /// (its number, the chunk, its result).
    pub fn partials_from(&self, from: u64) -> Vec<Partial> {
        self.succeeded_order
            .iter()
            .enumerate()
            .skip(from as usize)
            .filter_map(|(seq, &chunk)| match &self.chunks.get(chunk.get())?.state {
                ChunkState::Succeeded { result } => Some(Partial {
                    seq: seq as u64,
                    chunk,
                    result: result.clone(),
                }),
                _ => None,
            })
            .collect()
    }

    /// The chunks with a failed attempt and their attempts, at most [`MAX_RETRIES_SHOWN`],
    /// whether the job's chunk table is still held or was dropped at its end.
    pub fn retries(&self) -> Vec<(ChunkIndex, &[AttemptRecord])> {
        if !self.kept_retries.is_empty() {
            return self
                .kept_retries
                .iter()
                .map(|(i, a)| (*i, a.as_slice()))
                .collect();
        }
        self.retried
            .iter()
            .take(MAX_RETRIES_SHOWN)
            .filter_map(|&i| Some((i, self.chunk(i)?.attempts.as_slice())))
            .collect()
    }

    /// How many chunks needed more than one attempt, whether the chunk table is still held or
    /// was dropped at the job's end.
    pub fn retried_count(&self) -> usize {
        match self.chunks.is_empty() {
            true => self.kept_retries.len(),
            false => self.retried.len(),
        }
    }

    /// Partial results in chunk order (all chunks succeeded).
    pub fn partials(&self) -> Vec<Bytes> {
        self.chunks
            .iter()
            .filter_map(|c| match &c.state {
                ChunkState::Succeeded { result } => Some(result.clone()),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(max_attempts: u32) -> Job {
        Job::new(
            JobId::new(),
            JobMeta::sum_for_tests(max_attempts),
            vec![Bytes::from_static(b"[1]"), Bytes::from_static(b"[2]")],
        )
    }

    #[test]
    fn a_chunk_cannot_start_twice() {
        let mut j = job(3);
        let w = WorkerId::new();
        assert_eq!(
            j.start_chunk(ChunkIndex(0), w, &"w".into()),
            Some(Attempt(1))
        );
        assert_eq!(j.start_chunk(ChunkIndex(0), w, &"w".into()), None);
        assert_eq!(j.counts.running, 1);
        assert!(matches!(j.state, JobState::Running));
    }

    #[test]
    fn stale_attempts_are_not_current() {
        let mut j = job(3);
        let (a, b) = (WorkerId::new(), WorkerId::new());
        j.start_chunk(ChunkIndex(0), a, &"a".into());
        assert_eq!(
            j.chunk_failed(
                ChunkIndex(0),
                Attempt(1),
                FailReason::WorkerLost,
                Duration::ZERO
            ),
            Ok(true)
        );
        j.start_chunk(ChunkIndex(0), b, &"b".into());
        assert!(!j.is_current(ChunkIndex(0), a, Attempt(1)));
        assert!(j.is_current(ChunkIndex(0), b, Attempt(2)));
    }

    #[test]
    fn attempts_run_out() {
        let mut j = job(2);
        let w = WorkerId::new();
        j.start_chunk(ChunkIndex(1), w, &"w".into());
        assert_eq!(
            j.chunk_failed(
                ChunkIndex(1),
                Attempt(1),
                FailReason::TaskError("x".into()),
                Duration::ZERO
            ),
            Ok(true)
        );
        j.start_chunk(ChunkIndex(1), w, &"w".into());
        assert_eq!(
            j.chunk_failed(
                ChunkIndex(1),
                Attempt(2),
                FailReason::TaskError("y".into()),
                Duration::ZERO
            ),
            Ok(false)
        );
        let report = j.failure_report(ChunkIndex(1));
        assert!(
            report.contains("attempt 1 on worker w") && report.contains("task error: y"),
            "{report}"
        );
    }

    #[test]
    fn handed_back_chunks_do_not_use_attempts() {
        let mut j = job(1);
        let w = WorkerId::new();
        j.start_chunk(ChunkIndex(0), w, &"w".into());
        assert_eq!(
            j.chunk_failed(
                ChunkIndex(0),
                Attempt(1),
                FailReason::HandedBack,
                Duration::from_secs(9)
            ),
            Ok(true)
        );
        assert!(
            matches!(j.chunks[0].state, ChunkState::Pending { ready_at } if ready_at <= Instant::now())
        );
    }

    #[test]
    fn permanent_errors_fail_at_once() {
        let mut j = job(3);
        j.start_chunk(ChunkIndex(0), WorkerId::new(), &"w".into());
        assert_eq!(
            j.chunk_failed(
                ChunkIndex(0),
                Attempt(1),
                FailReason::Permanent("bad".into()),
                Duration::ZERO
            ),
            Ok(false)
        );
        assert!(j.failure_report(ChunkIndex(0)).contains("permanently"));
    }

    #[test]
    fn an_attempt_that_is_not_running_cannot_end() {
        let mut j = job(3);
        let w = WorkerId::new();
        let done = Bytes::from_static(b"1");
        let pending = j.chunk_succeeded(ChunkIndex(0), Attempt(1), done.clone());
        assert_eq!(pending.unwrap_err().now, "pending");
        j.start_chunk(ChunkIndex(0), w, &"w".into());
        let stale = j.chunk_failed(
            ChunkIndex(0),
            Attempt(2),
            FailReason::WorkerLost,
            Duration::ZERO,
        );
        assert_eq!(stale.unwrap_err().now, "running another attempt");
        assert_eq!(
            j.chunk_succeeded(ChunkIndex(0), Attempt(1), done.clone()),
            Ok(false)
        );
        let twice = j.chunk_succeeded(ChunkIndex(0), Attempt(1), done.clone());
        assert_eq!(twice.unwrap_err().now, "succeeded");
        assert!(j.chunk_succeeded(ChunkIndex(7), Attempt(1), done).is_err());
        assert_eq!((j.counts.succeeded, j.counts.running), (1, 0));
    }

    #[test]
    fn a_reasons_class_is_the_one_its_record_names() {
        for reason in [
            FailReason::WorkerLost,
            FailReason::HeartbeatTimeout,
            FailReason::ChunkTimeout,
            FailReason::TaskError("x".into()),
            FailReason::Permanent("x".into()),
            FailReason::UnknownTask("x".into()),
            FailReason::HandedBack,
            FailReason::CoordinatorRestarted,
        ] {
            let record = serde_json::to_value(&reason).expect("serialised");
            assert_eq!(record["class"], reason.class(), "{reason}");
            assert!(FailReason::CLASSES.contains(&reason.class()), "{reason}");
        }
    }
}
