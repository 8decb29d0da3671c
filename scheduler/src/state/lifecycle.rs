//! A job's life in the cluster state: restored or submitted (with admission control), merged
//! and ended, cancelled or forgotten, and pruned past its retention.

use super::*;
use crate::records::ParentLink;
use muster_shared::exec::{balanced_batches, ExecPlan, STARTUP_ITEM};
use muster_shared::split::AUTO_CHUNKS_PER_SLOT;

impl ClusterState {
    /// Takes back what the store held: finished jobs for status queries, unfinished jobs with
    /// their succeeded chunks kept and the rest re-queued, and idempotency keys. The writes it
    /// queues (interrupted attempts, merged ends, pruned jobs) are for the caller to make durable.
    pub fn restore(&mut self, snapshot: Snapshot) {
        let Snapshot {
            jobs,
            idempotency,
            timings,
        } = snapshot;
        for t in timings {
            self.timings.entry(t.key).or_default().insert(t.item, t.ms);
        }
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
                    .push_job(job_key(&job.meta, job.id), pending.into_iter());
            }
            let id = job.id;
            if let Some(link) = job.meta.parent {
                self.adopt(link, id);
            }
            if job.meta.speculation && !job.state.is_terminal() {
                self.speculative.insert(id);
            }
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
        self.accept(spec, idempotency, store_backlog, None)
    }

    /// [`ClusterState::submit`], for a sub-job of `parent` when there is one.
    pub(super) fn accept(
        &mut self,
        spec: JobSpec,
        idempotency: Option<(String, [u8; 32])>,
        store_backlog: u64,
        parent: Option<ParentLink>,
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
            retry_failed: spec.retry_failed,
            timings_key: spec.timings_key,
            max_running: spec.max_running,
            speculation: spec.speculation,
            parent,
        };
        let mut inputs: Vec<Bytes> = match spec.work {
            Work::Builtin { chunks, .. } | Work::Custom { chunks, .. } => chunks,
        };
        // An exec job that left its batches to the coordinator is re-cut by its items' recorded
        // durations, longest batch first; with no durations known its equal counts stay.
        if let (Some(plan), Some(key)) =
            (spec.exec.as_ref().filter(|p| p.balance), &meta.timings_key)
        {
            if let Some(batches) = self.balanced_exec(plan, key, &meta, inputs.len()) {
                inputs = batches;
            }
        }
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
        let spec_name = job.meta.name.clone();
        self.unfinished += u64::from(n);
        let key = job_key(&job.meta, id);
        if job.meta.speculation {
            self.speculative.insert(id);
        }
        self.jobs.insert(id, job);
        self.queue.push_job(key, (0..n).map(ChunkIndex));
        if let Some(link) = parent {
            self.adopt(link, id);
        }
        if let Some((k, digest)) = idempotency {
            self.idempotency.insert(k, (id, digest));
        }
        self.counters.jobs_submitted += 1;
        self.events.push(events::ClusterEvent::JobSubmitted {
            job_id: id,
            name: spec_name,
            chunks: n,
        });
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

    /// Merges a job's partial results and ends it; a large merge is left to an
    /// [`Effect::Reduce`] when `may_defer`.
    pub(super) fn reduce(&mut self, id: JobId, may_defer: bool) {
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

    /// An `exec` job's batches cut by its items' recorded durations for the slots of the
    /// workers that suit it (see [`balanced_batches`]): as many as the program's start-up cost
    /// makes best when it is known, else about `asked`. `None` with no durations known.
    fn balanced_exec(
        &self,
        plan: &ExecPlan,
        key: &str,
        meta: &JobMeta,
        asked: usize,
    ) -> Option<Vec<Bytes>> {
        let known = self.timings.get(key)?;
        let estimate = |item: &str| known.get(item).copied();
        let slots: u64 = self
            .workers
            .iter()
            .filter(|w| w.suits(meta))
            .map(|w| u64::from(w.slots))
            .sum();
        // With no worker connected yet, the slots the asked count was made for.
        let slots = match slots {
            0 => (asked as u64 / AUTO_CHUNKS_PER_SLOT).max(1),
            n => n,
        };
        let slots = meta.max_running.map_or(slots, |m| slots.min(u64::from(m)));
        let startup = known.get(STARTUP_ITEM).copied();
        let batches = balanced_batches(&plan.items, estimate, slots as usize, asked, startup)?;
        Some(batches.into_iter().map(|b| plan.payload(b)).collect())
    }

    /// Moves a job to a terminal state: cancels its running attempts, drops its queued chunks and
    /// its payloads, and records the end.
    pub(super) fn finish(&mut self, id: JobId, state: JobState) {
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
        self.speculative.remove(&id);
        job.counts.pending = 0;
        job.counts.running = 0;
        *self.counters.jobs_finished.entry(state.name()).or_default() += 1;
        self.events.push(events::ClusterEvent::JobEnded {
            job_id: id,
            status: state.name(),
        });
        job.finish(state);
        let key = job_key(&job.meta, id);
        self.ended
            .insert((job.finished_at.unwrap_or(job.created_at), id));
        self.queue.remove_job(&key);
        self.live.end(id);
        self.effects.push(Effect::JobDone(id));
        self.ended_for_sub_jobs(id);
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
        for id in &gone {
            self.children.remove(id);
        }
        info!(jobs = gone.len(), "pruned ended jobs past their retention");
        self.writes.push(Write::Prune(gone));
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
        self.queue.remove_job(&job_key(&job.meta, id));
        self.live.remove(id);
        self.idempotency.retain(|_, (job, _)| *job != id);
        if let Some(link) = job.meta.parent {
            if let Some(children) = self.children.get_mut(&link.job) {
                children.retain(|c| *c != id);
            }
        }
        self.effects.push(Effect::JobDone(id));
        // Attempts waiting for it are told it is gone.
        self.ended_for_sub_jobs(id);
    }

    /// Cancels a job; cancelling a finished job changes nothing.
    pub fn cancel(&mut self, id: JobId) -> Result<(), StateError> {
        if !self.jobs.contains_key(&id) {
            return Err(StateError::JobNotFound { id });
        }
        self.finish(id, JobState::Cancelled);
        Ok(())
    }
}

/// Cancels the running attempts of a job's chunks on their workers and frees their slots.
fn stop_attempts(workers: &mut Workers, effects: &mut Vec<Effect>, id: JobId, chunks: &[Chunk]) {
    for (i, chunk) in chunks.iter().enumerate() {
        let running = match chunk.state {
            ChunkState::Running {
                worker, attempt, ..
            } => Some((worker, attempt)),
            _ => None,
        };
        // The attempt and its speculative backup, if it has one.
        for (worker, attempt) in running.into_iter().chain(chunk.backup) {
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
