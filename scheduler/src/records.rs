//! Records the cluster state and the store share: what a job runs ([`JobMeta`]), how its attempts
//! went ([`AttemptRecord`], [`FailReason`]), how it ended ([`JobEnd`]), what is first written of
//! it ([`NewJob`]) and what is read back ([`Snapshot`]). They keep the form the store needs; the
//! state (`state`) and the store (`store`) both use them and neither uses the other.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use muster_shared::ids::{Attempt, ChunkIndex, JobId, WorkerId};
use muster_shared::reduce::Reducer;
use serde::{Deserialize, Serialize};

/// Why an attempt ended without a result. Whether it is retried is decided by the coordinator alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "class", content = "message", rename_all = "snake_case")]
pub enum FailReason {
    /// The worker's connection dropped.
    WorkerLost,
    /// The worker stopped sending heartbeats.
    HeartbeatTimeout,
    /// The attempt ran past the job's `chunk_timeout`.
    ChunkTimeout,
    /// The task returned a retryable error.
    TaskError(String),
    /// An `exec` program ran and failed, and its job reruns failed batches (`retry_failed`);
    /// counted against that budget, not `max_attempts`.
    ProgramFailed(String),
    /// The task said the input can never succeed.
    Permanent(String),
    /// The worker did not know the task.
    UnknownTask(String),
    /// The worker's result does not fit the job's reducer; retried at once on another worker.
    BadResult(String),
    /// The worker gave the chunk back unfinished while shutting down; not counted as an attempt.
    HandedBack,
    /// The coordinator restarted while the attempt ran; not counted as an attempt.
    CoordinatorRestarted,
    /// Another copy of the chunk (a speculative backup, or the attempt it backed up) finished
    /// first; this one was stopped. Not counted as an attempt.
    Superseded,
}

impl FailReason {
    /// Every [`FailReason::class`].
    pub const CLASSES: [&'static str; 11] = [
        "worker_lost",
        "heartbeat_timeout",
        "chunk_timeout",
        "task_error",
        "program_failed",
        "permanent",
        "unknown_task",
        "bad_result",
        "handed_back",
        "coordinator_restarted",
        "superseded",
    ];

    /// The reason's kind, as its stored record names it (`worker_lost`, `task_error`, ...).
    pub fn class(&self) -> &'static str {
        match self {
            FailReason::WorkerLost => "worker_lost",
            FailReason::HeartbeatTimeout => "heartbeat_timeout",
            FailReason::ChunkTimeout => "chunk_timeout",
            FailReason::TaskError(_) => "task_error",
            FailReason::ProgramFailed(_) => "program_failed",
            FailReason::Permanent(_) => "permanent",
            FailReason::UnknownTask(_) => "unknown_task",
            FailReason::BadResult(_) => "bad_result",
            FailReason::HandedBack => "handed_back",
            FailReason::CoordinatorRestarted => "coordinator_restarted",
            FailReason::Superseded => "superseded",
        }
    }

    /// True when the job must fail at once, without retries.
    pub fn is_permanent(&self) -> bool {
        matches!(self, FailReason::Permanent(_))
    }

    /// True when the retry waits the backoff: the chunk itself failed (its task errored or ran
    /// too long). A chunk whose worker went away is retried at once, elsewhere.
    pub fn backs_off(&self) -> bool {
        matches!(
            self,
            FailReason::ChunkTimeout | FailReason::TaskError(_) | FailReason::UnknownTask(_)
        )
    }

    /// True when this failure uses up one of the chunk's `max_attempts`.
    pub fn counts_as_attempt(&self) -> bool {
        !matches!(
            self,
            FailReason::HandedBack
                | FailReason::CoordinatorRestarted
                | FailReason::ProgramFailed(_)
                | FailReason::Superseded
        )
    }
}

impl std::fmt::Display for FailReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FailReason::WorkerLost => f.write_str("worker lost"),
            FailReason::HeartbeatTimeout => f.write_str("heartbeat timeout"),
            FailReason::ChunkTimeout => f.write_str("chunk timeout"),
            FailReason::TaskError(m) => write!(f, "task error: {m}"),
            FailReason::ProgramFailed(m) => write!(f, "program failed: {m}"),
            FailReason::Permanent(m) => write!(f, "permanent task error: {m}"),
            FailReason::UnknownTask(m) => write!(f, "unknown task: {m}"),
            FailReason::BadResult(m) => write!(f, "bad result: {m}"),
            FailReason::HandedBack => f.write_str("handed back by a draining worker"),
            FailReason::CoordinatorRestarted => f.write_str("interrupted by a coordinator restart"),
            FailReason::Superseded => f.write_str("superseded: another copy finished first"),
        }
    }
}

/// One run of one chunk, as shown in job status.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttemptRecord {
    /// Attempt number, from 1.
    pub attempt: Attempt,
    /// The worker it ran on.
    pub worker: WorkerId,
    /// That worker's name.
    #[schema(value_type = String)]
    pub worker_name: Arc<str>,
    /// When it was assigned.
    pub started_at: DateTime<Utc>,
    /// When it ended, if it has.
    pub finished_at: Option<DateTime<Utc>>,
    /// Why it failed, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<FailReason>,
    /// A speculative backup of the attempt then running the chunk.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub backup: bool,
    /// Of the attempt whose result the chunk kept: that partial result's number in the job's
    /// stream of partials (`GET /v1/jobs/{id}/partials`), from 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

/// What a job runs, independent of its progress.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobMeta {
    /// `kind` (built-in) or `task` (custom) name.
    pub name: String,
    /// True for a built-in kind.
    pub builtin: bool,
    /// Task workers must advertise.
    pub task: String,
    /// How partial results merge.
    pub reducer: Reducer,
    /// Runs per chunk before the job fails.
    pub max_attempts: u32,
    /// Longest a single attempt may run.
    pub chunk_timeout: Option<Duration>,
    /// Labels workers must carry.
    pub labels: BTreeMap<String, String>,
    /// Higher first.
    pub priority: i64,
    /// `exec`: times a batch whose program failed runs again.
    #[serde(default)]
    pub retry_failed: u32,
    /// `exec`: the key its items' durations are kept under (`None` for other jobs).
    #[serde(default)]
    pub timings_key: Option<String>,
    /// Most chunks running at once (`None`: no limit but the free slots).
    #[serde(default)]
    pub max_running: Option<u32>,
    /// Backup copies of stragglers in the job's tail.
    #[serde(default)]
    pub speculation: bool,
    /// For a sub-job, the chunk that submitted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentLink>,
}

/// The chunk a sub-job was submitted by, and how deep it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ParentLink {
    /// The parent job.
    pub job: JobId,
    /// Its chunk that submitted this job.
    #[schema(value_type = u32)]
    pub chunk: ChunkIndex,
    /// Sub-jobs above this one, this one included: 1 for a child of a job a client submitted.
    pub depth: u32,
}

impl JobMeta {
    /// How deep this job is among sub-jobs: 0 for one a client submitted.
    pub fn depth(&self) -> u32 {
        self.parent.map_or(0, |p| p.depth)
    }
}

/// A job as first written: enough to rebuild it from scratch.
#[derive(Debug, Clone)]
pub struct NewJob<'a> {
    /// Its id.
    pub id: JobId,
    /// What it runs.
    pub meta: &'a JobMeta,
    /// Chunk payloads, in order; each is stored once.
    pub inputs: &'a [Bytes],
    /// Idempotency key and the digest of the body it came with.
    pub idempotency: Option<(&'a str, &'a [u8; 32])>,
    /// When it was accepted.
    pub created_at: DateTime<Utc>,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEnd {
    /// With this result (JSON). Read back empty from the SQL stores, which keep the partial
    /// results instead; the job is then merged again.
    Succeeded(Bytes),
    /// With this error.
    Failed(String),
    /// Cancelled by a client.
    Cancelled,
}

/// One chunk read back.
#[derive(Debug, Clone, Default)]
pub struct StoredChunk {
    /// Its payload (empty once the job ended).
    pub input: Bytes,
    /// Its partial result, if it succeeded.
    pub result: Option<Bytes>,
    /// Its attempts, in order.
    pub attempts: Vec<AttemptRecord>,
}

/// A job read back by the store's `load`.
#[derive(Debug, Clone)]
pub struct StoredJob {
    /// Its id.
    pub id: JobId,
    /// What it runs.
    pub meta: JobMeta,
    /// When it was accepted.
    pub created_at: DateTime<Utc>,
    /// How and when it ended, if it has.
    pub end: Option<(JobEnd, DateTime<Utc>)>,
    /// Its chunks, in order.
    pub chunks: Vec<StoredChunk>,
}

/// Everything a coordinator needs to resume.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every stored job, oldest first.
    pub jobs: Vec<StoredJob>,
    /// Idempotency keys with the job and body digest they map to.
    pub idempotency: Vec<(String, JobId, [u8; 32])>,
    /// The items' recent durations, by timings key (`exec` jobs).
    pub timings: Vec<Timing>,
}

/// An `exec` item's recent duration under a timings key (by default the job's program).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timing {
    /// The timings key.
    pub key: String,
    /// The item.
    pub item: String,
    /// Its estimated duration, in milliseconds.
    pub ms: u64,
}

impl JobMeta {
    /// True for an `exec` job (a program run over batches of items).
    pub fn is_exec(&self) -> bool {
        self.timings_key.is_some()
    }
}

#[cfg(test)]
impl JobMeta {
    /// A built-in `sum` job's description, for tests.
    pub(crate) fn sum_for_tests(max_attempts: u32) -> Self {
        JobMeta {
            name: "sum".into(),
            builtin: true,
            task: "sum".into(),
            reducer: Reducer::Sum,
            max_attempts,
            chunk_timeout: None,
            labels: BTreeMap::new(),
            priority: 0,
            retry_failed: 0,
            timings_key: None,
            max_running: None,
            speculation: false,
            parent: None,
        }
    }
}

/// A job as accepted, owned, for the state to hand to the store.
#[derive(Debug, Clone)]
pub struct AcceptedJob {
    /// Its id.
    pub id: JobId,
    /// What it runs.
    pub meta: JobMeta,
    /// Chunk payloads, in order.
    pub inputs: Vec<Bytes>,
    /// Idempotency key and the digest of the body it came with.
    pub idempotency: Option<(String, [u8; 32])>,
    /// When it was accepted.
    pub created_at: DateTime<Utc>,
}

impl AcceptedJob {
    /// The job as the store's insert takes it.
    pub fn as_new(&self) -> NewJob<'_> {
        NewJob {
            id: self.id,
            meta: &self.meta,
            inputs: &self.inputs,
            idempotency: self.idempotency.as_ref().map(|(k, d)| (k.as_str(), d)),
            created_at: self.created_at,
        }
    }
}

/// A write the cluster state asks for; the coordinator hands them to the store in this order.
#[derive(Debug, Clone)]
pub enum Write {
    /// An accepted job: durable before its client is answered.
    Insert(AcceptedJob),
    /// An attempt's start or end (the record carries both times and the error).
    Attempt {
        /// The job.
        job: JobId,
        /// The chunk.
        chunk: muster_shared::ids::ChunkIndex,
        /// The attempt as it stands.
        record: AttemptRecord,
    },
    /// A chunk's partial result.
    Result {
        /// The job.
        job: JobId,
        /// The chunk.
        chunk: muster_shared::ids::ChunkIndex,
        /// The partial result.
        result: Bytes,
    },
    /// A job's end.
    Finish {
        /// The job.
        job: JobId,
        /// How it ended.
        end: JobEnd,
        /// When.
        at: DateTime<Utc>,
    },
    /// Ended jobs past their retention, to delete.
    Prune(Vec<JobId>),
    /// Items' durations learned from a batch (kept, overwriting earlier ones).
    Timings(Vec<Timing>),
}
