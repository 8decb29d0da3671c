//! The coordinator's plain state: the job table, the chunk queue, placement and the retry policy.
//!
//! [`ClusterState`] is synchronous and knows nothing of actors or sockets: the coordinator actor
//! calls it for every event (job submitted, worker joined or lost, outcome received, timer) and then
//! carries out the [`Effect`]s it queued (send assignments and cancels, wake long-pollers). Unit
//! tests drive it directly.

pub mod health;
pub mod job;
pub mod queue;
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
use tracing::{debug, info, warn};

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
    /// Tell this worker to stop this attempt.
    Cancel {
        /// The worker.
        worker: WorkerId,
        /// The attempt.
        chunk: ChunkRef,
    },
    /// This job reached a terminal state.
    JobDone(JobId),
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
        }
    }
}

/// A submission's answer: the job and whether it was created now or found by idempotency key.
#[derive(Debug, Clone)]
pub struct Submitted {
    /// The job.
    pub id: JobId,
    /// False when an earlier submission with the same idempotency key made it. A new job is
    /// accepted once the next [`ClusterState::ticket`] is durable: its insert is handed to the
    /// store with that ticket's batch.
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
}

/// What `/metrics` shows of the coordinator's state now.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    /// Jobs held, by status name.
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

    /// Takes back what the store held: finished jobs for status queries, unfinished jobs with
    /// their succeeded chunks kept and the rest re-queued, and idempotency keys. The writes it
    /// queues (interrupted attempts, merged ends, pruned jobs) are for the caller to make durable.
    pub fn restore(&mut self, snapshot: Snapshot) {
        let Snapshot { jobs, idempotency } = snapshot;
        let (mut unfinished, mut requeued) = (0, 0);
        let mut complete = Vec::new();
        for stored in jobs {
            let (job, interrupted) = Job::restore(stored);
            if !job.state.is_terminal() && job.counts.succeeded == job.counts.total {
                // Every result was stored but the job's end was not: merge it now.
                complete.push(job.id);
            }
            if !job.state.is_terminal() {
                unfinished += 1;
                let pending: Vec<ChunkIndex> = job
                    .chunks
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| matches!(c.state, ChunkState::Pending { .. }))
                    .map(|(i, _)| ChunkIndex(i as u32))
                    .collect();
                requeued += pending.len();
                self.unfinished += u64::from(job.counts.total - job.counts.succeeded);
                self.queue
                    .push_job(job_key(job.meta.priority, job.id), pending.into_iter());
            }
            let id = job.id;
            self.jobs.insert(id, job);
            for chunk in interrupted {
                self.record_attempt(chunk);
            }
            if let Some(job) = self.jobs.get_mut(&id).filter(|j| j.state.is_terminal()) {
                job.drop_chunks();
                self.ended
                    .insert((job.finished_at.unwrap_or(job.created_at), id));
            }
        }
        for (key, id, digest) in idempotency {
            self.idempotency.insert(key, (id, digest));
        }
        for id in complete {
            self.reduce(id, false);
        }
        self.prune_ended(Utc::now());
        self.take_effects();
        info!(
            jobs = self.jobs.len(),
            unfinished,
            requeued_chunks = requeued,
            "state restored"
        );
    }

    /// Accepts a job: queues its insert for the store and its chunks; `store_backlog` is how
    /// many batches of writes the store has yet to commit (admission control).
    pub fn submit(
        &mut self,
        spec: JobSpec,
        idempotency: Option<(String, [u8; 32])>,
        store_backlog: u64,
    ) -> Result<Submitted, StateError> {
        if let Some((key, digest)) = &idempotency {
            if let Some((id, known)) = self.idempotency.get(key) {
                if known != digest {
                    return Err(StateError::IdempotencyConflict { key: key.clone() });
                }
                return Ok(Submitted {
                    id: *id,
                    created: false,
                });
            }
        }
        self.admit(store_backlog)?;
        if !spec.is_builtin()
            && self.workers.iter().next().is_some()
            && !self.workers.knows_task(spec.task())
        {
            let mut known: Vec<String> = self
                .workers
                .iter()
                .flat_map(|w| w.tasks.iter().cloned())
                .collect();
            known.sort();
            known.dedup();
            return Err(StateError::UnknownTask {
                task: spec.task().to_owned(),
                known: known.join(", "),
            });
        }
        let meta = JobMeta {
            name: spec.name().to_owned(),
            builtin: spec.is_builtin(),
            task: spec.task().to_owned(),
            reducer: match &spec.work {
                Work::Builtin { kind, .. } => kind.reducer(),
                Work::Custom { reduce, .. } => *reduce,
            },
            max_attempts: spec.max_attempts,
            chunk_timeout: spec.chunk_timeout,
            labels: spec.labels,
            priority: spec.priority,
        };
        let inputs: Vec<Bytes> = match spec.work {
            Work::Builtin { chunks, .. } | Work::Custom { chunks, .. } => chunks,
        };
        let id = JobId::new();
        let job = Job::new(id, meta, inputs);
        self.writes.push(Write::Insert(AcceptedJob {
            id,
            meta: job.meta.clone(),
            inputs: job.chunks.iter().map(|c| c.input.clone()).collect(),
            idempotency: idempotency.clone(),
            created_at: job.created_at,
        }));
        let n = job.chunks.len() as u32;
        self.unfinished += u64::from(n);
        let key = job_key(job.meta.priority, id);
        self.jobs.insert(id, job);
        self.queue.push_job(key, (0..n).map(ChunkIndex));
        if let Some((k, digest)) = idempotency {
            self.idempotency.insert(k, (id, digest));
        }
        self.counters.jobs_submitted += 1;
        Ok(Submitted { id, created: true })
    }

    /// Turns a new job away (429) while the backlog is past a limit: the coordinator answers
    /// overload rather than grow without bound. A job is admitted while the backlog is below the
    /// limit, so one larger than the limit alone still runs once the others have drained.
    fn admit(&self, store_backlog: u64) -> Result<(), StateError> {
        let pending = self.unfinished;
        if pending >= self.policy.max_pending_chunks {
            return Err(StateError::TooManyPending {
                pending,
                limit: self.policy.max_pending_chunks,
            });
        }
        if store_backlog >= self.policy.max_store_backlog {
            return Err(StateError::StoreBehind {
                backlog: store_backlog,
                limit: self.policy.max_store_backlog,
            });
        }
        Ok(())
    }

    /// Keeps `cell` equal to the unfinished chunks (as of each coordinator message's end).
    pub fn publish_unfinished_to(&mut self, cell: std::sync::Arc<std::sync::atomic::AtomicU64>) {
        cell.store(self.unfinished, std::sync::atomic::Ordering::Relaxed);
        self.published_unfinished = cell;
    }

    /// Adds a connected worker.
    pub fn add_worker(
        &mut self,
        id: WorkerId,
        hello: Hello,
        address: String,
    ) -> Result<(), String> {
        if hello.slots == 0 {
            return Err("a worker needs at least one slot".into());
        }
        check_hello_names(&hello)?;
        let most = self.policy.max_worker_slots;
        if hello.slots > most {
            return Err(format!(
                "{} slots is more than this coordinator allows one worker ({most}, --max-worker-slots)",
                hello.slots
            ));
        }
        info!(worker = %id, name = %hello.name, slots = hello.slots, tasks = ?hello.tasks, "worker registered");
        self.workers.add(WorkerEntry::new(id, hello, address))
    }

    /// Notes that a worker is alive.
    pub fn worker_heartbeat(&mut self, id: WorkerId) {
        self.workers.heard_from(id);
    }

    /// A worker holds this many queued chunks beyond its slots from now on.
    pub fn worker_prefetch(&mut self, id: WorkerId, prefetch: u32) {
        self.workers.set_prefetch(id, prefetch);
    }

    /// A worker announced shutdown: it gets no new chunks.
    pub fn worker_draining(&mut self, id: WorkerId) {
        if let Some(w) = self.workers.get(id) {
            info!(worker = %id, running = w.running.len(), "worker draining");
        }
        self.workers.set_draining(id);
    }

    /// A worker is gone: every attempt it was running fails with `reason` and is retried.
    pub fn worker_gone(&mut self, id: WorkerId, reason: FailReason) {
        let Some(entry) = self.workers.remove(id) else {
            return;
        };
        warn!(worker = %id, name = %entry.name, %reason, running = entry.running.len(), "worker lost");
        let mut lost = 0;
        for chunk in entry.running.into_keys() {
            if self.is_current(chunk, id) {
                self.fail_attempt(chunk, reason.clone());
                lost += 1;
            }
        }
        if lost > 0 {
            self.strike(
                &entry.name,
                &format!("lost {lost} chunk(s) with its connection"),
            );
        }
    }

    /// Counts a strike against a worker name; logs a quarantine it starts.
    fn strike(&mut self, name: &std::sync::Arc<str>, why: &str) {
        let now = Instant::now();
        if let Some(until) = self.workers.strike(name, now) {
            warn!(
                worker_name = %name,
                why,
                for_s = until.duration_since(now).as_secs(),
                "worker quarantined: it gets no new chunks for a while"
            );
        }
    }

    fn is_current(&self, chunk: ChunkRef, worker: WorkerId) -> bool {
        self.jobs
            .get(&chunk.job)
            .is_some_and(|j| j.is_current(chunk.chunk, worker, chunk.attempt))
    }

    /// Applies a worker's outcome; late and duplicate outcomes are ignored and logged.
    pub fn outcome(&mut self, worker: WorkerId, outcome: ChunkOutcome) {
        let chunk = outcome.chunk;
        self.workers.release(worker, &chunk);
        if !self.is_current(chunk, worker) {
            self.counters.outcomes_ignored += 1;
            info!(%worker, %chunk, "ignored late or duplicate outcome");
            return;
        }
        match outcome.result {
            Outcome::Succeeded(result) => {
                let refused = self
                    .jobs
                    .get(&chunk.job)
                    .map(|j| j.meta.reducer.check(&result))
                    .and_then(Result::err);
                match refused {
                    None => self.succeed_attempt(chunk, result),
                    Some(why) => {
                        let name = self.workers.get(worker).map(|w| w.name.clone());
                        warn!(%worker, %chunk, %why, "refused a result that does not fit the job's reducer");
                        self.fail_attempt(chunk, FailReason::BadResult(bounded_message(why)));
                        if let Some(name) = name {
                            self.strike(&name, "sent a result that does not fit its job");
                        }
                    }
                }
            }
            Outcome::Failed(mut failure) => {
                failure.message = bounded_message(failure.message);
                let reason = match failure.class {
                    FailureClass::TaskError => FailReason::TaskError(failure.message),
                    FailureClass::Permanent => FailReason::Permanent(failure.message),
                    FailureClass::UnknownTask => FailReason::UnknownTask(failure.message),
                    FailureClass::HandedBack => FailReason::HandedBack,
                };
                self.fail_attempt(chunk, reason);
            }
        }
    }

    fn record_attempt(&mut self, chunk: ChunkRef) {
        let Some(record) = self
            .jobs
            .get(&chunk.job)
            .and_then(|j| j.chunk(chunk.chunk))
            .and_then(|c| c.attempts.iter().find(|a| a.attempt == chunk.attempt))
        else {
            return;
        };
        self.writes.push(Write::Attempt {
            job: chunk.job,
            chunk: chunk.chunk,
            record: record.clone(),
        });
    }

    fn succeed_attempt(&mut self, chunk: ChunkRef, result: Bytes) {
        self.writes.push(Write::Result {
            job: chunk.job,
            chunk: chunk.chunk,
            result: result.clone(),
        });
        let Some(job) = self.jobs.get_mut(&chunk.job) else {
            return;
        };
        let all_done = job.chunk_succeeded(chunk.chunk, result);
        self.unfinished = self.unfinished.saturating_sub(1);
        self.counters.attempts_succeeded += 1;
        self.record_attempt(chunk);
        debug!(%chunk, "chunk succeeded");
        if all_done {
            self.reduce(chunk.job, true);
        }
    }

    fn fail_attempt(&mut self, chunk: ChunkRef, reason: FailReason) {
        let backoff = self.policy.retry_backoff;
        let Some(job) = self.jobs.get_mut(&chunk.job) else {
            return;
        };
        info!(%chunk, %reason, "chunk attempt failed");
        *self
            .counters
            .attempts_failed
            .entry(reason.class())
            .or_default() += 1;
        let retry = job.chunk_failed(chunk.chunk, reason, backoff);
        let key = job_key(job.meta.priority, job.id);
        let ready_at = match job.chunk(chunk.chunk).map(|c| &c.state) {
            Some(ChunkState::Pending { ready_at }) => Some(*ready_at),
            _ => None,
        };
        let report = (!retry).then(|| job.failure_report(chunk.chunk));
        self.record_attempt(chunk);
        match (report, ready_at) {
            (Some(error), _) => {
                warn!(job_id = %chunk.job, %error, "job failed");
                self.finish(chunk.job, JobState::Failed { error });
            }
            (None, Some(at)) => self.queue.push_retry(key, chunk.chunk, at),
            (None, None) => {}
        }
    }

    /// Merges a job's partial results and ends it; a large merge is left to an
    /// [`Effect::Reduce`] when `may_defer`.
    fn reduce(&mut self, id: JobId, may_defer: bool) {
        let Some(job) = self.jobs.get(&id) else {
            return;
        };
        let partials = job.partials();
        let reducer = job.meta.reducer;
        if may_defer && partials.iter().map(Bytes::len).sum::<usize>() >= REDUCE_OFF_THREAD_BYTES {
            self.effects.push(Effect::Reduce {
                job: id,
                reducer,
                partials,
            });
            return;
        }
        let outcome = reducer.reduce(&partials).map_err(|e| e.to_string());
        self.reduced(id, outcome);
    }

    /// Ends a job whose chunks all succeeded with its merged result, or fails it with the merge's
    /// error; nothing changes if the job ended meanwhile (cancelled, or dropped).
    pub fn reduced(&mut self, id: JobId, outcome: Result<String, String>) {
        let Some(job) = self.jobs.get(&id) else {
            return;
        };
        let state = match outcome {
            Ok(result) => JobState::Succeeded {
                result: Bytes::from(result),
            },
            Err(e) => JobState::Failed {
                error: format!("cannot merge results ({}): {e}", job.meta.reducer.name()),
            },
        };
        self.finish(id, state);
    }

    /// Moves a job to a terminal state: cancels its running attempts, drops its queued chunks and
    /// its payloads, and records the end.
    fn finish(&mut self, id: JobId, state: JobState) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        if job.state.is_terminal() {
            return;
        }
        let left = job.counts.total.saturating_sub(job.counts.succeeded);
        self.unfinished = self.unfinished.saturating_sub(u64::from(left));
        let end = match &state {
            JobState::Succeeded { result } => JobEnd::Succeeded(result.clone()),
            JobState::Failed { error } => JobEnd::Failed(error.clone()),
            _ => JobEnd::Cancelled,
        };
        self.writes.push(Write::Finish {
            job: id,
            end,
            at: Utc::now(),
        });
        stop_attempts(&mut self.workers, &mut self.effects, id, &job.chunks);
        job.counts.pending = 0;
        job.counts.running = 0;
        *self.counters.jobs_finished.entry(state.name()).or_default() += 1;
        job.finish(state);
        let key = job_key(job.meta.priority, id);
        self.ended
            .insert((job.finished_at.unwrap_or(job.created_at), id));
        self.queue.remove_job(&key);
        self.effects.push(Effect::JobDone(id));
        // Past the count, the oldest go now (with some slack, so that pruning, which walks the
        // idempotency keys once, runs once per many ends, not at every one).
        let most = self.policy.retain_ended_jobs;
        if self.ended.len() > most + (most / 16).max(1) {
            self.prune_ended(Utc::now());
        }
    }

    /// Prunes ended jobs that ended longer than the retention ago, and the oldest past the
    /// retained count: from memory (they are no longer shown, and their idempotency keys no
    /// longer match) and from the store.
    pub fn prune_ended(&mut self, now: DateTime<Utc>) {
        let kept =
            chrono::Duration::from_std(self.policy.retain_ended).unwrap_or(chrono::Duration::MAX);
        let cutoff = now
            .checked_sub_signed(kept)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let mut gone = Vec::new();
        while let Some(&(at, id)) = self.ended.first() {
            if at >= cutoff && self.ended.len() <= self.policy.retain_ended_jobs {
                break;
            }
            self.ended.pop_first();
            self.jobs.remove(&id);
            gone.push(id);
        }
        if gone.is_empty() {
            return;
        }
        let set: std::collections::HashSet<JobId> = gone.iter().copied().collect();
        self.idempotency.retain(|_, (job, _)| !set.contains(job));
        info!(jobs = gone.len(), "pruned ended jobs past their retention");
        self.writes.push(Write::Prune(gone));
    }

    /// How often ended jobs are checked against their retention.
    pub fn prune_every(&self) -> Duration {
        (self.policy.retain_ended / 4).clamp(Duration::from_millis(50), Duration::from_secs(60))
    }

    /// Drops a job whose insert did not become durable (its client was told it was not
    /// accepted): it is no longer run, shown or matched by its idempotency key.
    pub fn forget(&mut self, id: JobId) {
        let Some(job) = self.jobs.remove(&id) else {
            return;
        };
        warn!(job_id = %id, "job dropped: it could not be stored");
        if let Some(at) = job.finished_at {
            self.ended.remove(&(at, id));
        }
        if !job.state.is_terminal() {
            let left = job.counts.total.saturating_sub(job.counts.succeeded);
            self.unfinished = self.unfinished.saturating_sub(u64::from(left));
        }
        stop_attempts(&mut self.workers, &mut self.effects, id, &job.chunks);
        self.queue.remove_job(&job_key(job.meta.priority, id));
        self.idempotency.retain(|_, (job, _)| *job != id);
        self.effects.push(Effect::JobDone(id));
    }

    /// Cancels a job; cancelling a finished job changes nothing.
    pub fn cancel(&mut self, id: JobId) -> Result<(), StateError> {
        if !self.jobs.contains_key(&id) {
            return Err(StateError::JobNotFound { id });
        }
        self.finish(id, JobState::Cancelled);
        Ok(())
    }

    /// Abandons attempts past their `chunk_timeout`: the worker is told to stop, the chunk retried.
    pub fn check_timeouts(&mut self, now: Instant) {
        while let Some(Reverse((at, job, chunk, attempt))) = self.deadlines.peek().copied() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            let worker = match self
                .jobs
                .get(&job)
                .and_then(|j| j.chunk(chunk))
                .map(|c| &c.state)
            {
                Some(ChunkState::Running {
                    worker, attempt: a, ..
                }) if *a == attempt => *worker,
                _ => continue,
            };
            let chunk_ref = ChunkRef {
                job,
                chunk,
                attempt,
            };
            if !self.is_current(chunk_ref, worker) {
                continue;
            }
            self.workers.release(worker, &chunk_ref);
            self.effects.push(Effect::Cancel {
                worker,
                chunk: chunk_ref,
            });
            self.fail_attempt(chunk_ref, FailReason::ChunkTimeout);
        }
    }

    /// When the coordinator must next wake up for backoffs or timeouts.
    pub fn next_wakeup(&self) -> Option<Instant> {
        let deadline = self.deadlines.peek().map(|Reverse((at, ..))| *at);
        [
            self.queue.next_ready_at(),
            deadline,
            self.workers.next_quarantine_end(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Places ready chunks on free worker slots, queueing an [`Effect::Assign`] for each.
    pub fn dispatch(&mut self) {
        let now = Instant::now();
        self.workers.end_quarantines(now);
        self.queue.promote(now);
        let mut free = self.workers.free_slots();
        if free == 0 {
            return;
        }
        for key in self.queue.ready_jobs() {
            if free == 0 {
                break;
            }
            let active = self
                .jobs
                .get(&key.1)
                .is_some_and(|j| !j.state.is_terminal());
            if !active {
                self.queue.remove_job(&key);
                continue;
            }
            free -= self.dispatch_job(key, free);
        }
    }

    /// Places chunks of one job; returns how many were placed.
    fn dispatch_job(&mut self, key: JobKey, free: u64) -> u64 {
        let mut placed = 0;
        // Retried chunks that must wait for a worker other than the ones they failed on.
        let mut waiting = Vec::new();
        while placed < free {
            let Some(index) = self.queue.pop(&key) else {
                break;
            };
            let Some(job) = self.jobs.get(&key.1) else {
                break;
            };
            let Some(chunk) = job.chunk(index) else {
                continue;
            };
            if !matches!(chunk.state, ChunkState::Pending { .. }) {
                continue;
            }
            let avoid: Vec<std::sync::Arc<str>> = chunk.failed_on().collect();
            match self.workers.place(&job.meta, &avoid) {
                Some(worker) => {
                    self.assign(key.1, index, worker);
                    placed += 1;
                }
                None if !avoid.is_empty() => waiting.push(index),
                None => {
                    self.queue.unpop(key, index);
                    break;
                }
            }
        }
        for index in waiting.into_iter().rev() {
            self.queue.unpop(key, index);
        }
        placed
    }

    fn assign(&mut self, id: JobId, index: ChunkIndex, worker: WorkerId) {
        let Some(entry) = self.workers.get(worker) else {
            return;
        };
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        let Some(attempt) = job.start_chunk(index, worker, &entry.name) else {
            return;
        };
        let chunk = ChunkRef {
            job: id,
            chunk: index,
            attempt,
        };
        let started = job.chunk(index);
        let bytes = started.map_or(0, |c| c.input.len() as u64);
        self.workers.occupy(worker, chunk, bytes);
        if let Some(ChunkState::Running {
            deadline: Some(at), ..
        }) = started.map(|c| &c.state)
        {
            self.deadlines.push(Reverse((*at, id, index, attempt)));
        }
        let assignment = Assignment {
            chunk,
            task: job.meta.task.clone(),
            input: job.chunks[index.get()].input.clone(),
        };
        self.counters.attempts_started += 1;
        self.record_attempt(chunk);
        self.effects.push(Effect::Assign { worker, assignment });
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
            gauges.busy_slots += (worker.running.len() as u64).min(u64::from(worker.slots));
            gauges.quarantined += u64::from(worker.quarantined_until.is_some());
        }
        gauges
    }

    /// The job, if known.
    pub fn job(&self, id: JobId) -> Option<&Job> {
        self.jobs.get(&id)
    }

    /// Jobs newest first, after (older than) `after`, matching `status`, at most `limit`.
    pub fn jobs_page(&self, status: Option<&str>, after: Option<JobId>, limit: usize) -> Vec<&Job> {
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

/// Refuses a hello whose name, task names or labels are over [`MAX_NAME_BYTES`]: they are shown
/// in every listing and kept with every attempt record.
fn check_hello_names(hello: &Hello) -> Result<(), String> {
    let too_long = |what: &str, text: &str| {
        (text.len() > MAX_NAME_BYTES).then(|| {
            format!(
                "{what} of {} bytes is longer than the {MAX_NAME_BYTES} allowed",
                text.len()
            )
        })
    };
    let mut names = std::iter::once(("a worker name", hello.name.as_str()))
        .chain(hello.tasks.iter().map(|t| ("a task name", t.as_str())))
        .chain(
            hello
                .labels
                .iter()
                .flat_map(|(k, v)| [("a label key", k.as_str()), ("a label value", v.as_str())]),
        );
    match names.find_map(|(what, text)| too_long(what, text)) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// `message` cut to at most [`MAX_MESSAGE_BYTES`] (at a character boundary), marked as cut.
fn bounded_message(mut message: String) -> String {
    if message.len() > MAX_MESSAGE_BYTES {
        let mut end = MAX_MESSAGE_BYTES;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("... (cut)");
    }
    message
}

/// Cancels the running attempts of a job's chunks on their workers and frees their slots.
fn stop_attempts(workers: &mut Workers, effects: &mut Vec<Effect>, id: JobId, chunks: &[Chunk]) {
    for (i, chunk) in chunks.iter().enumerate() {
        if let ChunkState::Running {
            worker, attempt, ..
        } = chunk.state
        {
            let chunk_ref = ChunkRef {
                job: id,
                chunk: ChunkIndex(i as u32),
                attempt,
            };
            workers.release(worker, &chunk_ref);
            effects.push(Effect::Cancel {
                worker,
                chunk: chunk_ref,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use muster_shared::job::RawJob;
    use muster_shared::protocol::Failure;

    use super::*;

    fn state() -> ClusterState {
        ClusterState::new(Policy {
            retry_backoff: Duration::ZERO,
            ..Policy::default()
        })
    }

    fn spec(v: serde_json::Value) -> JobSpec {
        serde_json::from_value::<RawJob>(v)
            .unwrap()
            .validate(1)
            .unwrap()
    }

    fn worker(state: &mut ClusterState, slots: u32) -> WorkerId {
        let id = WorkerId::new();
        let hello = Hello {
            protocol: 1,
            name: id.to_string(),
            slots,
            prefetch: 0,
            tasks: vec!["sum".into()],
            labels: BTreeMap::new(),
            running: Vec::new(),
        };
        state.add_worker(id, hello, "test".into()).unwrap();
        id
    }

    fn assignments(state: &mut ClusterState) -> Vec<(WorkerId, ChunkRef)> {
        state
            .take_effects()
            .into_iter()
            .filter_map(|e| match e {
                Effect::Assign { worker, assignment } => Some((worker, assignment.chunk)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_worker_cannot_claim_more_slots_or_prefetch_than_the_coordinator_allows() {
        let mut s = state();
        let hello = |slots: u32, prefetch: u32, name: String| Hello {
            protocol: 1,
            name,
            slots,
            prefetch,
            tasks: vec!["sum".into()],
            labels: BTreeMap::new(),
            running: Vec::new(),
        };
        let refused = s
            .add_worker(
                WorkerId::new(),
                hello(u32::MAX, u32::MAX, "greedy".into()),
                "t".into(),
            )
            .unwrap_err();
        assert!(refused.contains("--max-worker-slots"), "{refused}");
        let long = s
            .add_worker(
                WorkerId::new(),
                hello(1, 0, "n".repeat(MAX_NAME_BYTES + 1)),
                "t".into(),
            )
            .unwrap_err();
        assert!(long.contains("worker name"), "{long}");
        // The largest hello allowed, with the largest prefetch there is: it holds at most
        // slots x (1 + MAX_PREFETCH_PER_SLOT) chunks, however many are queued.
        let most = Policy::default().max_worker_slots;
        let id = WorkerId::new();
        s.add_worker(id, hello(most, u32::MAX, "big".into()), "t".into())
            .unwrap();
        s.worker_prefetch(id, u32::MAX);
        let cap = u64::from(most) * (1 + u64::from(muster_shared::protocol::MAX_PREFETCH_PER_SLOT));
        assert_eq!(s.workers().free_slots(), cap);
        let chunks: Vec<Vec<i64>> = (0..cap as i64 + 100).map(|i| vec![i]).collect();
        s.submit(
            spec(serde_json::json!({"task": "sum", "chunks": chunks, "reduce": "sum"})),
            None,
            0,
        )
        .unwrap();
        s.dispatch();
        assert_eq!(assignments(&mut s).len() as u64, cap);
    }

    #[test]
    fn higher_priority_jobs_are_placed_first() {
        let mut s = state();
        let low = s
            .submit(
                spec(serde_json::json!({"kind": "sum", "input": [1], "priority": 1})),
                None,
                0,
            )
            .unwrap();
        let high = s
            .submit(
                spec(serde_json::json!({"kind": "sum", "input": [1], "priority": 5})),
                None,
                0,
            )
            .unwrap();
        worker(&mut s, 1);
        s.dispatch();
        let placed = assignments(&mut s);
        assert_eq!(placed.len(), 1);
        assert_eq!(placed[0].1.job, high.id);
        assert_ne!(placed[0].1.job, low.id);
    }

    #[test]
    fn a_forgotten_job_frees_its_slots_and_its_idempotency_key() {
        let mut s = state();
        let w = worker(&mut s, 2);
        let key = Some(("k".to_owned(), [7u8; 32]));
        let job = s
            .submit(
                spec(serde_json::json!({"kind": "sum", "input": [1, 2], "chunks": 2})),
                key.clone(),
                0,
            )
            .unwrap();
        s.dispatch();
        assert_eq!(assignments(&mut s).len(), 2);
        s.forget(job.id);
        let cancelled = s
            .take_effects()
            .into_iter()
            .filter(|e| matches!(e, Effect::Cancel { worker, .. } if *worker == w))
            .count();
        assert_eq!(cancelled, 2);
        assert!(s.job(job.id).is_none());
        assert!(s.workers().get(w).unwrap().running.is_empty());
        let again = s
            .submit(
                spec(serde_json::json!({"kind": "sum", "input": [1, 2], "chunks": 2})),
                key,
                0,
            )
            .unwrap();
        assert!(again.created, "the key no longer names the forgotten job");
        assert_ne!(again.id, job.id);
    }

    #[test]
    fn a_lost_workers_chunk_is_retried_at_once_and_a_task_error_waits() {
        let mut s = ClusterState::new(Policy {
            retry_backoff: Duration::from_secs(60),
            ..Policy::default()
        });
        let first = worker(&mut s, 1);
        let job = s
            .submit(
                spec(serde_json::json!({"kind": "sum", "input": [1]})),
                None,
                0,
            )
            .unwrap();
        s.dispatch();
        assert_eq!(assignments(&mut s)[0].0, first);
        let second = worker(&mut s, 1);
        s.worker_gone(first, FailReason::WorkerLost);
        s.dispatch();
        let placed = assignments(&mut s);
        assert_eq!(placed.len(), 1, "no backoff after a lost worker");
        assert_eq!(placed[0].0, second);
        s.outcome(
            second,
            ChunkOutcome {
                chunk: placed[0].1,
                result: Outcome::Failed(Failure {
                    class: FailureClass::TaskError,
                    message: "boom".into(),
                }),
            },
        );
        worker(&mut s, 1);
        s.dispatch();
        assert!(
            assignments(&mut s).is_empty(),
            "a task error waits the backoff"
        );
        assert_eq!(s.job(job.id).unwrap().counts.pending, 1);
    }

    #[test]
    fn a_large_merge_is_left_to_an_effect_and_a_cancel_before_it_ends_wins() {
        let mut s = state();
        let w = worker(&mut s, 2);
        // A number a reducer takes, padded to a large partial.
        let large = Bytes::from(" ".repeat(REDUCE_OFF_THREAD_BYTES) + "1");
        let mut reduces = Vec::new();
        for cancel in [false, true] {
            let job = s
                .submit(
                    spec(serde_json::json!({"kind": "sum", "input": [1, 2], "chunks": 2})),
                    None,
                    0,
                )
                .unwrap();
            s.dispatch();
            for (i, (_, chunk)) in assignments(&mut s).into_iter().enumerate() {
                let result = if i == 0 {
                    large.clone()
                } else {
                    Bytes::from_static(b"2")
                };
                s.outcome(
                    w,
                    ChunkOutcome {
                        chunk,
                        result: Outcome::Succeeded(result),
                    },
                );
            }
            let effects = s.take_effects();
            assert!(
                !effects.iter().any(|e| matches!(e, Effect::JobDone(_))),
                "the job waits for its merge"
            );
            let Some(Effect::Reduce { partials, .. }) = effects
                .into_iter()
                .find(|e| matches!(e, Effect::Reduce { job: j, .. } if *j == job.id))
            else {
                panic!("no merge asked for");
            };
            assert_eq!(partials.len(), 2);
            assert_eq!(s.job(job.id).unwrap().state.name(), "running");
            if cancel {
                s.cancel(job.id).unwrap();
            }
            s.reduced(job.id, Ok("3".into()));
            reduces.push(s.job(job.id).unwrap().state.name());
        }
        assert_eq!(reduces, ["succeeded", "cancelled"]);
    }

    #[test]
    fn least_loaded_worker_gets_the_chunk() {
        let mut s = state();
        let small = worker(&mut s, 1);
        let big = worker(&mut s, 4);
        s.submit(
            spec(serde_json::json!({"kind": "sum", "input": [1, 2, 3], "chunks": 3})),
            None,
            0,
        )
        .unwrap();
        s.dispatch();
        let placed = assignments(&mut s);
        assert_eq!(placed.len(), 3);
        // 3 chunks on slots 1 + 4: the big worker ends at 2/4 or 3/4, the small one at most 1/1.
        assert!(placed.iter().filter(|(w, _)| *w == big).count() >= 2);
        assert!(placed.iter().filter(|(w, _)| *w == small).count() <= 1);
    }

    #[test]
    fn a_result_that_does_not_fit_the_reducer_fails_only_its_attempt_and_shows_as_a_retry_after_the_end(
    ) {
        let mut s = state();
        let bad = worker(&mut s, 1);
        let job = s
            .submit(
                spec(serde_json::json!({"kind": "sum", "input": [1, 2, 3], "chunks": 1})),
                None,
                0,
            )
            .unwrap();
        s.dispatch();
        let placed = assignments(&mut s);
        s.outcome(
            bad,
            ChunkOutcome {
                chunk: placed[0].1,
                result: Outcome::Succeeded(Bytes::from_static(b"\"six\"")),
            },
        );
        let good = worker(&mut s, 1);
        s.dispatch();
        let retry = assignments(&mut s);
        assert_eq!(retry.len(), 1);
        assert_eq!(
            retry[0].0, good,
            "the retry avoids the worker that sent the bad result"
        );
        s.outcome(
            good,
            ChunkOutcome {
                chunk: retry[0].1,
                result: Outcome::Succeeded(Bytes::from_static(b"6")),
            },
        );
        let done = s.job(job.id).unwrap();
        assert!(matches!(&done.state, JobState::Succeeded { result } if &result[..] == b"6"));
        assert!(done.chunks.is_empty(), "an ended job keeps no chunk table");
        let view = views::JobView::of(done);
        assert_eq!(view.retries.len(), 1);
        let first = &view.retries[0].attempts[0];
        assert_eq!(first.worker, bad);
        assert!(matches!(first.error, Some(FailReason::BadResult(_))));
    }

    #[test]
    fn past_the_retained_count_the_oldest_ended_jobs_are_pruned_with_their_keys() {
        let mut s = ClusterState::new(Policy {
            retain_ended_jobs: 2,
            ..Policy::default()
        });
        let ids: Vec<JobId> = (0..5)
            .map(|i| {
                let key = (format!("key-{i}"), [i as u8; 32]);
                let job = s.submit(
                    spec(serde_json::json!({"kind": "sum", "input": [i]})),
                    Some(key),
                    0,
                );
                let id = job.unwrap().id;
                s.cancel(id).unwrap();
                id
            })
            .collect();
        // The count is kept within a little slack as jobs end, and exactly on the timer.
        assert!(ids.iter().filter(|id| s.job(**id).is_some()).count() <= 3);
        s.prune_ended(Utc::now());
        let kept: Vec<JobId> = ids
            .iter()
            .copied()
            .filter(|id| s.job(*id).is_some())
            .collect();
        assert_eq!(kept, ids[3..]);
        let again = s
            .submit(
                spec(serde_json::json!({"kind": "sum", "input": [0]})),
                Some(("key-0".into(), [0; 32])),
                0,
            )
            .unwrap();
        assert!(
            again.created,
            "a pruned job's idempotency key no longer matches"
        );
    }

    #[test]
    fn a_retry_waits_for_a_worker_other_than_the_one_that_failed_it() {
        let mut s = state();
        let a = worker(&mut s, 1);
        let b = worker(&mut s, 1);
        s.submit(
            spec(serde_json::json!({"kind": "sum", "input": [1, 2], "chunks": 2})),
            None,
            0,
        )
        .unwrap();
        s.dispatch();
        let placed = assignments(&mut s);
        let (on_a, on_b) = if placed[0].0 == a {
            (placed[0].1, placed[1].1)
        } else {
            (placed[1].1, placed[0].1)
        };
        let failure = Outcome::Failed(Failure {
            class: FailureClass::TaskError,
            message: "boom".into(),
        });
        s.outcome(
            a,
            ChunkOutcome {
                chunk: on_a,
                result: failure,
            },
        );
        s.dispatch();
        // `a` is free but failed the chunk; `b` is busy: the retry waits for `b`.
        assert!(assignments(&mut s).is_empty());
        s.outcome(
            b,
            ChunkOutcome {
                chunk: on_b,
                result: Outcome::Succeeded(Bytes::from_static(b"2")),
            },
        );
        s.dispatch();
        let placed = assignments(&mut s);
        assert_eq!(
            placed,
            vec![(
                b,
                ChunkRef {
                    attempt: Attempt(2),
                    ..on_a
                }
            )]
        );
    }

    #[test]
    fn a_larger_prefetch_lets_a_worker_take_more_chunks() {
        let mut s = state();
        let w = worker(&mut s, 1);
        s.submit(
            spec(serde_json::json!({"kind": "sum", "input": [1, 2, 3, 4, 5], "chunks": 5})),
            None,
            0,
        )
        .unwrap();
        s.dispatch();
        assert_eq!(assignments(&mut s).len(), 1);
        s.worker_prefetch(w, 3);
        s.dispatch();
        assert_eq!(assignments(&mut s).len(), 3);
        assert_eq!(s.workers().free_slots(), 0);
    }

    #[test]
    fn duplicate_outcomes_count_once() {
        let mut s = state();
        let w = worker(&mut s, 1);
        let job = s
            .submit(
                spec(serde_json::json!({"kind": "sum", "input": [7]})),
                None,
                0,
            )
            .unwrap();
        s.dispatch();
        let (_, chunk) = assignments(&mut s)[0];
        let ok = || ChunkOutcome {
            chunk,
            result: Outcome::Succeeded(Bytes::from_static(b"7")),
        };
        s.outcome(w, ok());
        s.outcome(w, ok());
        assert_eq!(s.counters.outcomes_ignored, 1);
        assert!(
            matches!(&s.job(job.id).unwrap().state, JobState::Succeeded { result } if &result[..] == b"7")
        );
    }
}

#[cfg(test)]
mod restore_tests {

    use chrono::Utc;

    use super::*;
    use crate::records::{AttemptRecord, JobMeta, StoredChunk, StoredJob};

    #[test]
    fn a_job_whose_results_were_all_stored_but_not_its_end_finishes_on_restore() {
        let id = JobId::new();
        let chunks = [b"1", b"2"]
            .iter()
            .map(|result| StoredChunk {
                input: Bytes::from_static(b"[1]"),
                result: Some(Bytes::from_static(*result)),
                attempts: vec![AttemptRecord {
                    attempt: Attempt(1),
                    worker: WorkerId::new(),
                    worker_name: "w".into(),
                    started_at: Utc::now(),
                    finished_at: Some(Utc::now()),
                    error: None,
                }],
            })
            .collect();
        let snapshot = Snapshot {
            jobs: vec![StoredJob {
                id,
                meta: JobMeta::sum_for_tests(3),
                created_at: Utc::now(),
                end: None,
                chunks,
            }],
            idempotency: Vec::new(),
        };
        let mut state = ClusterState::new(Policy {
            retry_backoff: Duration::ZERO,
            ..Policy::default()
        });
        state.restore(snapshot);
        assert!(
            matches!(&state.job(id).unwrap().state, JobState::Succeeded { result } if &result[..] == b"3")
        );
        let ended = state.take_writes().into_iter().any(
            |w| matches!(w, Write::Finish { job, end: JobEnd::Succeeded(_), .. } if job == id),
        );
        assert!(ended, "the merged end is written back");
    }
}
