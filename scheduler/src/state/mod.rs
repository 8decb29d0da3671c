//! The coordinator's plain state: the job table, the chunk queue, placement and the retry policy.
//!
//! [`ClusterState`] is synchronous and knows nothing of actors, sockets, HTTP or the store: the
//! coordinator actor calls it for every event (job submitted, worker joined or lost, outcome
//! received, timer) and then carries out the [`Effect`]s it queued (send assignments and cancels,
//! wake long-pollers) and hands the [`Write`]s it queued to the store, in order. Its refusals are
//! [`StateError`]s. Unit tests drive it directly.
//!
//! - `lifecycle`: a job's life: restored or submitted (admission control), merged and ended,
//!   cancelled or forgotten, pruned past its retention.
//! - `dispatch`: chunks on workers: workers joining and leaving, placement, outcomes, timeouts,
//!   strikes.
//! - [`job`]: one job's chunk state machine; [`queue`]: the chunk queue; [`workers`] and
//!   [`health`]: connected workers and their records; [`views`]: what the API shows.

pub mod attempts;
mod dispatch;
pub mod events;
pub mod health;
pub mod job;
mod lifecycle;
pub mod live;
pub mod queue;
mod subjobs;
pub mod views;
pub mod workers;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use muster_shared::ids::{Attempt, ChunkIndex, JobId, WorkerId};
use muster_shared::job::{JobSpec, Work};
use muster_shared::protocol::{
    Assignment, ChunkOutcome, ChunkRef, FailureClass, Hello, Outcome, MAX_MESSAGE_BYTES,
    MAX_NAME_BYTES,
};
use muster_shared::reduce::Reducer;
use tracing::{debug, error, info, warn};

use crate::records::{AcceptedJob, JobEnd, Snapshot, Write};
use job::{Chunk, ChunkState, FailReason, Job, JobMeta, JobState};
use queue::{job_key, ChunkQueue, JobKey};
use workers::{WorkerEntry, Workers};

/// Something the coordinator actor must do after a state change.
#[derive(Debug, Clone)]
pub enum Effect {
    /// Send this assignment to this worker.
    Assign {
        /// The worker.
        worker: WorkerId,
        /// What to run.
        assignment: Assignment,
    },
    /// Send this worker this message (an answer to its ask).
    Send {
        /// The worker.
        worker: WorkerId,
        /// The message.
        message: muster_shared::protocol::CoordinatorMessage,
    },
    /// Tell this worker to stop this attempt.
    Cancel {
        /// The worker.
        worker: WorkerId,
        /// The attempt.
        chunk: ChunkRef,
    },
    /// This job reached a terminal state.
    JobDone(JobId),
    /// A chunk of a job whose partial results are followed succeeded.
    Partial {
        /// The job.
        job: JobId,
        /// The chunk, its number and its result.
        partial: job::Partial,
    },
    /// A large partial result of a `merge_sorted` or `count_map` job, to merge into the rest as
    /// it comes (see [`muster_shared::reduce::Fold`]).
    Fold {
        /// The job.
        job: JobId,
        /// Its reducer.
        reducer: Reducer,
        /// The partial result.
        result: Bytes,
    },
    /// Merge these partial results off the coordinator's thread, then hand the outcome to
    /// [`ClusterState::reduced`].
    Reduce {
        /// The job, all of whose chunks succeeded.
        job: JobId,
        /// Its reducer.
        reducer: Reducer,
        /// Its partial results, in chunk order.
        partials: Vec<Bytes>,
    },
}

/// Partial results at least this large in all are merged off the coordinator's thread, so that
/// a large merge does not hold up every other job; smaller ones are merged at once.
pub const REDUCE_OFF_THREAD_BYTES: usize = 1 << 20;

/// Partial results of `merge_sorted` and `count_map` jobs at least this large are merged into
/// the job's other partials as they come, not only at the end.
pub const FOLD_AT_BYTES: usize = 64 << 10;

/// Policy settings: retries, and what one worker may claim.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Delay before the first retry of a chunk; doubles with each further failure.
    pub retry_backoff: Duration,
    /// Most slots one worker may announce: a worker token is held by many machines, so one
    /// leaked token must not let a single connection claim every queued chunk.
    pub max_worker_slots: u32,
    /// Unfinished chunks past which new jobs are turned away (429) until the backlog drains.
    pub max_pending_chunks: u64,
    /// Store batches not yet committed past which new jobs are turned away (429).
    pub max_store_backlog: u64,
    /// How long an ended job is kept (shown, and matched by its idempotency key) before it is
    /// pruned from memory and the store.
    pub retain_ended: Duration,
    /// Most ended jobs kept: past it, the oldest ended ones are pruned.
    pub retain_ended_jobs: usize,
    /// The least a running attempt has run before it may be called a straggler
    /// ([`SPECULATE_AT_LEAST`]).
    pub speculate_at_least: Duration,
    /// How often stragglers are looked for ([`SPECULATE_EVERY`]).
    pub speculate_every: Duration,
    /// How deep sub-jobs may nest: a job a client submitted is 0 deep, its sub-jobs 1.
    pub max_sub_job_depth: u32,
    /// Most sub-jobs one job may have.
    pub max_sub_jobs: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            retry_backoff: Duration::from_secs_f64(crate::config::DEFAULT_RETRY_BACKOFF),
            max_worker_slots: crate::config::DEFAULT_MAX_WORKER_SLOTS,
            max_pending_chunks: crate::config::DEFAULT_MAX_PENDING_CHUNKS,
            max_store_backlog: crate::config::DEFAULT_MAX_STORE_BACKLOG,
            retain_ended: Duration::from_secs_f64(crate::config::DEFAULT_RETAIN_ENDED),
            retain_ended_jobs: crate::config::DEFAULT_RETAIN_ENDED_JOBS,
            speculate_at_least: SPECULATE_AT_LEAST,
            speculate_every: SPECULATE_EVERY,
            max_sub_job_depth: crate::config::DEFAULT_MAX_SUB_JOB_DEPTH,
            max_sub_jobs: crate::config::DEFAULT_MAX_SUB_JOBS,
        }
    }
}

/// A submission's answer: the job and whether it was created now or found by idempotency key.
#[derive(Debug, Clone)]
pub struct Submitted {
    /// The job.
    pub id: JobId,
    /// False when an earlier submission with the same idempotency key made it. A new job is
    /// accepted once its insert (the [`Write::Insert`] queued with it) is durable.
    pub created: bool,
}

/// Counts of what happened since this coordinator started leading, for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// New jobs (not answers to a repeated idempotency key).
    pub jobs_submitted: u64,
    /// Jobs that reached a terminal state, by its name.
    pub jobs_finished: BTreeMap<&'static str, u64>,
    /// Attempts handed to workers.
    pub attempts_started: u64,
    /// Attempts whose result counted.
    pub attempts_succeeded: u64,
    /// Attempts that ended without a result, by [`FailReason::class`].
    pub attempts_failed: BTreeMap<&'static str, u64>,
    /// Outcomes ignored because they were late or duplicates.
    pub outcomes_ignored: u64,
    /// How long attempts waited and ran.
    pub times: ChunkTimes,
    /// Speculative backups of stragglers started.
    pub backups_started: u64,
    /// Backups that finished before the attempt they backed up.
    pub backups_won: u64,
}

/// A straggler is a running attempt this many times slower than its job's median.
pub const SPECULATE_AFTER: f64 = 1.5;
/// And at least this slow: short chunks vary more than that with the machine alone.
pub const SPECULATE_AT_LEAST: Duration = Duration::from_millis(250);
/// How often stragglers are looked for.
pub const SPECULATE_EVERY: Duration = Duration::from_millis(100);

/// Upper bounds of the chunk time histograms' buckets, in seconds.
pub const TIME_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0,
];

/// Most task names the run time histogram tells apart; later ones count as `other`.
const MAX_TIMED_TASKS: usize = 256;

/// Counts of observations by [`TIME_BUCKETS`] (not cumulative), with their sum.
#[derive(Debug, Clone, Default)]
pub struct TimeHistogram {
    /// Observations at or under each bound (and over the last one, in the last place).
    pub counts: [u64; TIME_BUCKETS.len() + 1],
    /// Their sum, in seconds.
    pub sum: f64,
}

impl TimeHistogram {
    fn observe(&mut self, took: Duration) {
        let secs = took.as_secs_f64();
        self.counts[TIME_BUCKETS.partition_point(|&bound| bound < secs)] += 1;
        self.sum += secs;
    }
}

/// Histograms of chunk attempts' times for `/metrics`: how long each ran, by task
/// (`muster_chunk_run_seconds`), and how long chunks waited from ready to assigned
/// (`muster_chunk_queue_seconds`). Plain counts: the state is the only one counting.
#[derive(Debug, Clone, Default)]
pub struct ChunkTimes {
    /// Run times, by task.
    pub run: HashMap<String, TimeHistogram>,
    /// Queue times.
    pub queue: TimeHistogram,
}

impl ChunkTimes {
    /// An attempt of `task` ran this long.
    pub fn ran(&mut self, task: &str, took: Duration) {
        if let Some(histogram) = self.run.get_mut(task) {
            return histogram.observe(took);
        }
        let label = match self.run.len() < MAX_TIMED_TASKS {
            true => task,
            false => "other",
        };
        self.run.entry(label.to_owned()).or_default().observe(took);
    }

    /// A chunk waited this long for a worker.
    pub fn waited(&mut self, took: Duration) {
        self.queue.observe(took);
    }
}

/// What `/metrics` and `GET /v1/overview` show of the coordinator's state now.
#[derive(Debug, Clone, Default, serde::Serialize, utoipa::ToSchema)]
pub struct Gauges {
    /// Jobs held, by status name.
    #[schema(value_type = BTreeMap<String, u64>)]
    pub jobs: BTreeMap<&'static str, u64>,
    /// Chunks of unfinished jobs waiting for a worker (retries included).
    pub chunks_pending: u64,
    /// Chunks running or queued on a worker.
    pub chunks_running: u64,
    /// Connected workers.
    pub workers: u64,
    /// Their slots.
    pub slots: u64,
    /// Their slots running a chunk.
    pub busy_slots: u64,
    /// Connected workers in quarantine.
    pub quarantined: u64,
}

/// Jobs, queue and workers.
pub struct ClusterState {
    jobs: BTreeMap<JobId, Job>,
    idempotency: HashMap<String, (JobId, [u8; 32])>,
    /// Ended jobs by when they ended, oldest first: what pruning takes from.
    ended: BTreeSet<(DateTime<Utc>, JobId)>,
    /// `exec` items' recent durations in milliseconds, by timings key.
    timings: HashMap<String, HashMap<String, u64>>,
    /// What running `exec` batches print, for followers.
    live: live::LiveLogs,
    /// What happened in the cluster, for `GET /v1/events`.
    events: events::EventLog,
    /// Attempts as they start and end, for the task stream and job streams.
    attempts: attempts::AttemptLog,
    /// When stragglers were last looked for.
    last_speculation: Option<Instant>,
    /// Sub-jobs by parent job, oldest first.
    children: HashMap<JobId, Vec<JobId>>,
    /// Attempts waiting for sub-jobs.
    awaits: subjobs::Awaits,
    /// Unfinished jobs with `speculation`.
    speculative: BTreeSet<JobId>,
    /// True while some of them are in their tail: stragglers are looked for again in
    /// [`SPECULATE_EVERY`], events or none.
    tails: bool,
    /// Chunks that succeeded, second by second.
    throughput: attempts::Throughput,
    queue: ChunkQueue,
    deadlines: BinaryHeap<Reverse<(Instant, JobId, ChunkIndex, Attempt)>>,
    workers: Workers,
    policy: Policy,
    effects: Vec<Effect>,
    /// Writes for the store, in order, for the coordinator to hand on.
    writes: Vec<Write>,
    /// What happened since this coordinator started leading (for `/metrics`).
    pub counters: Counters,
    /// Chunks of unfinished jobs not succeeded yet, kept as they change: what admission control
    /// bounds.
    unfinished: u64,
    /// `unfinished` as of the last [`ClusterState::take_effects`], where request handlers read it
    /// to turn a submission away before reading its body.
    published_unfinished: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// Why the state refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// No job with this id.
    #[error("no job with id `{id}`")]
    JobNotFound {
        /// The id asked for.
        id: JobId,
    },
    /// The idempotency key came with another body.
    #[error("idempotency key `{key}` was already used with a different request body")]
    IdempotencyConflict {
        /// The key.
        key: String,
    },
    /// No connected worker runs the job's task.
    #[error("unknown task `{task}`: no connected worker runs it (connected workers run: {known})")]
    UnknownTask {
        /// The task asked for.
        task: String,
        /// The tasks connected workers run, comma-separated.
        known: String,
    },
    /// The chunks waiting or running are at the limit.
    #[error("{pending} chunks are waiting or running, at the limit of {limit} (--max-pending-chunks): retry once some have finished")]
    TooManyPending {
        /// Chunks waiting or running.
        pending: u64,
        /// The limit.
        limit: u64,
    },
    /// A sub-job ask refused: not from a running attempt, past a limit, not a sub-job.
    #[error("{0}")]
    SubJob(String),
    /// The store's writer is too far behind.
    #[error("the store is {backlog} batches of writes behind, at the limit of {limit} (--max-store-backlog): retry shortly")]
    StoreBehind {
        /// Batches not yet committed.
        backlog: u64,
        /// The limit.
        limit: u64,
    },
}

impl ClusterState {
    /// Empty state.
    pub fn new(policy: Policy) -> Self {
        Self {
            jobs: BTreeMap::new(),
            idempotency: HashMap::new(),
            ended: BTreeSet::new(),
            timings: HashMap::new(),
            live: live::LiveLogs::default(),
            events: events::EventLog::default(),
            attempts: attempts::AttemptLog::default(),
            last_speculation: None,
            children: HashMap::new(),
            awaits: subjobs::Awaits::default(),
            speculative: BTreeSet::new(),
            tails: false,
            throughput: attempts::Throughput::default(),
            queue: ChunkQueue::default(),
            deadlines: BinaryHeap::new(),
            workers: Workers::default(),
            policy,
            effects: Vec::new(),
            writes: Vec::new(),
            counters: Counters::default(),
            unfinished: 0,
            published_unfinished: Default::default(),
        }
    }

    /// Effects queued since the last call.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        self.published_unfinished
            .store(self.unfinished, std::sync::atomic::Ordering::Relaxed);
        let room = self.effects.len();
        std::mem::replace(&mut self.effects, Vec::with_capacity(room))
    }

    /// Writes for the store queued since the last call, in order.
    pub fn take_writes(&mut self) -> Vec<Write> {
        std::mem::take(&mut self.writes)
    }

    /// Keeps `cell` equal to the unfinished chunks (as of each coordinator message's end).
    pub fn publish_unfinished_to(&mut self, cell: std::sync::Arc<std::sync::atomic::AtomicU64>) {
        cell.store(self.unfinished, std::sync::atomic::Ordering::Relaxed);
        self.published_unfinished = cell;
    }

    /// How often ended jobs are checked against their retention.
    pub fn prune_every(&self) -> Duration {
        (self.policy.retain_ended / 4).clamp(Duration::from_millis(50), Duration::from_secs(60))
    }

    /// When the coordinator must next wake up for backoffs or timeouts.
    pub fn next_wakeup(&self) -> Option<Instant> {
        let deadline = self.deadlines.peek().map(|Reverse((at, ..))| *at);
        let speculation = self
            .last_speculation
            .filter(|_| self.tails)
            .map(|at| at + self.policy.speculate_every);
        [
            self.queue.next_ready_at(),
            deadline,
            self.workers.next_quarantine_end(),
            speculation,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The state's sizes now, for `/metrics`: one pass over the jobs held.
    pub fn gauges(&self) -> Gauges {
        let mut gauges = Gauges::default();
        for job in self.jobs.values() {
            *gauges.jobs.entry(job.state.name()).or_default() += 1;
            gauges.chunks_pending += u64::from(job.counts.pending);
            gauges.chunks_running += u64::from(job.counts.running);
        }
        for worker in self.workers.iter() {
            gauges.workers += 1;
            gauges.slots += u64::from(worker.slots);
            gauges.busy_slots += (worker.held() as u64).min(u64::from(worker.slots));
            gauges.quarantined += u64::from(worker.quarantined_until.is_some());
        }
        gauges
    }

    /// The job, if known.
    pub fn job(&self, id: JobId) -> Option<&Job> {
        self.jobs.get(&id)
    }

    /// Jobs newest first, after (older than) `after`, matching `status`, at most `limit`.
    pub fn jobs_page(
        &self,
        status: Option<&str>,
        parent: Option<JobId>,
        after: Option<JobId>,
        limit: usize,
    ) -> Vec<&Job> {
        if let Some(parent) = parent {
            return self
                .children_of(parent)
                .iter()
                .rev()
                .filter(|id| after.is_none_or(|a| **id < a))
                .filter_map(|id| self.jobs.get(id))
                .filter(|j| status.is_none_or(|s| j.state.name() == s))
                .take(limit)
                .collect();
        }
        let older = match after {
            Some(a) => self.jobs.range(..a),
            None => self.jobs.range(..),
        };
        older
            .rev()
            .map(|(_, j)| j)
            .filter(|j| status.is_none_or(|s| j.state.name() == s))
            .take(limit)
            .collect()
    }

    /// Connected workers.
    pub fn workers(&self) -> &Workers {
        &self.workers
    }

    /// Keeps `cell` equal to the connected capacity (slots of workers taking chunks), for
    /// request handlers sizing jobs that leave the chunk count open.
    pub fn publish_capacity_to(&mut self, cell: std::sync::Arc<std::sync::atomic::AtomicU64>) {
        self.workers.publish_capacity_to(cell);
    }
}

#[cfg(test)]
mod tests;
