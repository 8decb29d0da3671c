//! Chunks on workers: workers joining and leaving, placement, assignments, outcomes, timeouts,
//! and the strikes that quarantine a worker.

use super::*;
use crate::records::Timing;
use events::ClusterEvent;
use muster_shared::exec::{ExecBatch, ExecReport, STARTUP_ITEM};
use muster_shared::junit::{item_runs, ItemRun};
use std::collections::HashMap;

impl ClusterState {
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
        let joined = ClusterEvent::WorkerJoined {
            worker_id: id,
            name: hello.name.clone(),
            slots: hello.slots,
        };
        self.workers.add(WorkerEntry::new(id, hello, address))?;
        self.events.push(joined);
        Ok(())
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
            if !w.draining {
                self.events.push(ClusterEvent::WorkerDraining {
                    worker_id: id,
                    name: w.name.to_string(),
                });
            }
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
        self.events.push(ClusterEvent::WorkerLeft {
            worker_id: id,
            name: entry.name.to_string(),
            reason: reason.to_string(),
            chunks_lost: lost,
        });
        if lost > 0 {
            self.strike(
                &entry.name,
                &format!("lost {lost} chunk(s) with its connection"),
            );
        }
    }

    /// The cluster's events numbered `from` and on, at most `most`.
    pub fn cluster_events(&self, from: u64, most: usize) -> events::EventsRead {
        self.events.read(from, most)
    }

    /// Attempt events numbered `from` and on, of `job` alone when one is named, at most `most`.
    pub fn attempt_events(
        &self,
        from: u64,
        job: Option<JobId>,
        most: usize,
    ) -> attempts::AttemptsRead {
        self.attempts.read(from, job, most)
    }

    /// Starts following `job`'s partial results: those of its chunks that succeeded from the
    /// `from`-th on now, and an [`Effect::Partial`] for each chunk that succeeds from here on.
    /// `None` for a job that has ended: its partials are merged into its result.
    pub fn follow_partials(&mut self, job: JobId, from: u64) -> Option<Option<Vec<job::Partial>>> {
        let job = self.jobs.get_mut(&job)?;
        if job.state.is_terminal() {
            return Some(None);
        }
        job.partials_followed = true;
        Some(Some(job.partials_from(from)))
    }

    /// Chunks that succeeded in each of the last `seconds` seconds, oldest first.
    pub fn throughput(&self, seconds: usize) -> Vec<u32> {
        self.throughput.last(Utc::now(), seconds)
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
            info!(%worker, job_id = %chunk.job, chunk = chunk.chunk.0, attempt = chunk.attempt.0, "ignored late or duplicate outcome");
            return;
        }
        if let Some(job) = self.jobs.get(&chunk.job) {
            let started = job
                .chunk(chunk.chunk)
                .and_then(|c| c.record(chunk.attempt))
                .map(|a| a.started_at);
            if let Some(took) = started.and_then(|at| (Utc::now() - at).to_std().ok()) {
                self.counters.times.ran(&job.meta.task, took);
            }
        }
        match outcome.result {
            Outcome::Succeeded(result) => {
                let refused = self
                    .jobs
                    .get(&chunk.job)
                    .map(|j| j.meta.reducer.check(&result))
                    .and_then(Result::err);
                match refused {
                    None => self.accept_result(chunk, result),
                    Some(why) => {
                        let name = self.workers.get(worker).map(|w| w.name.clone());
                        warn!(%worker, job_id = %chunk.job, chunk = chunk.chunk.0, attempt = chunk.attempt.0, %why, "refused a result that does not fit the job's reducer");
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

    /// Output that a worker's running attempt printed, kept for followers while the attempt is
    /// current; true when it was kept.
    pub fn output(&mut self, worker: WorkerId, chunk: ChunkRef, text: &str) -> bool {
        if !self.is_current(chunk, worker) {
            return false;
        }
        self.live.append(chunk.job, chunk.chunk, text);
        true
    }

    /// What `job`'s batches printed from line `after` on, and whether the job has ended; `None`
    /// for a job not held.
    pub fn live_output(&self, job: JobId, after: u64) -> Option<(live::LiveRead, bool)> {
        let ended = self.jobs.get(&job)?.state.is_terminal();
        Some((self.live.read(job, after), ended))
    }

    /// Each batch's output of the `exec` job `job`; `None` for a job not held, `Err` for a job
    /// of another kind.
    pub fn batch_logs(&self, job: JobId) -> Option<Result<Vec<views::BatchLog>, String>> {
        let job = self.jobs.get(&job)?;
        if !job.meta.is_exec() {
            return Some(Err(format!(
                "job {} is a `{}` job: only exec jobs have logs",
                job.id, job.meta.name
            )));
        }
        Some(Ok(views::batch_logs(job, &self.live)))
    }

    /// A result that fits its job. An `exec` batch's report (read once) teaches its items'
    /// durations and judges each item; with `retry_failed`, the items that failed run again
    /// (only they, on another worker where there is one) while the batch has reruns left, and
    /// the runs fold into one report, flaky items marked. Then the chunk succeeds.
    fn accept_result(&mut self, chunk: ChunkRef, result: Bytes) {
        let exec = self
            .jobs
            .get(&chunk.job)
            .and_then(|j| j.meta.timings_key.clone())
            .and_then(|key| Some((key, ExecReport::read(&result)?)));
        let Some((key, mut report)) = exec else {
            return self.succeed_attempt(chunk, result);
        };
        let runs = report
            .junit
            .as_deref()
            .and_then(|xml| item_runs(xml, &report.items))
            .unwrap_or_default();
        let durations = self.learn_timings(key, &report, &runs);
        let Some(job) = self.jobs.get_mut(&chunk.job) else {
            return;
        };
        let (retry_failed, task) = (job.meta.retry_failed, job.meta.task.clone());
        let Some(batch) = job.chunks.get_mut(chunk.chunk.get()) else {
            return;
        };
        let worker = batch
            .attempts
            .last()
            .map(|a| a.worker_name.to_string())
            .unwrap_or_default();
        let failing = report.judge(&runs, &durations, &worker, chunk.attempt.0);
        let ran = report.items.len();
        if let Some(earlier) = batch.earlier.take() {
            report = earlier.followed_by(report);
        }
        if !failing.is_empty() && batch.program_failures() < retry_failed {
            let rerun = serde_json::from_slice::<ExecBatch>(&batch.input).map(|mut b| {
                b.items = failing.clone();
                b.payload()
            });
            if let Ok(input) = rerun {
                let named: Vec<&str> = failing.iter().take(3).map(String::as_str).collect();
                let why = format!(
                    "`{task}` failed for {} of its {ran} item(s): {}{}",
                    failing.len(),
                    named.join(", "),
                    if failing.len() > named.len() {
                        ", ..."
                    } else {
                        ""
                    }
                );
                batch.input = input;
                batch.earlier = Some(Box::new(report));
                return self.fail_attempt(chunk, FailReason::ProgramFailed(why));
            }
        }
        let result = serde_json::to_vec(&report).map_or(result, Bytes::from);
        self.succeed_attempt(chunk, result);
    }

    /// Learns the durations of a batch's items from its run and returns this run's, in item
    /// order: an item its JUnit report times (`measured`) took that time; the rest of the
    /// batch's time is split among the other items in proportion to their estimates (items
    /// never seen at the median estimate); each estimate moves halfway to this run's time.
    fn learn_timings(
        &mut self,
        key: String,
        report: &ExecReport,
        measured: &HashMap<String, ItemRun>,
    ) -> Vec<u64> {
        let known = self.timings.entry(key.clone()).or_default();
        // The median of every estimate, for items neither timed nor seen before: worked out
        // only when the batch holds one (a sort of every item the key knows).
        let unseen = report
            .items
            .iter()
            .any(|i| !measured.contains_key(i) && !known.contains_key(i));
        let median = match unseen {
            false => 1,
            true => {
                let mut all: Vec<u64> = known
                    .iter()
                    .filter(|(item, _)| *item != STARTUP_ITEM)
                    .map(|(_, ms)| *ms)
                    .collect();
                all.sort_unstable();
                all.get(all.len() / 2).copied().unwrap_or(1).max(1)
            }
        };
        let weights: Vec<u64> = report
            .items
            .iter()
            .map(|item| match measured.contains_key(item) {
                true => 0,
                false => known.get(item).copied().unwrap_or(median).max(1),
            })
            .collect();
        let total: u64 = weights.iter().sum();
        let rest = report
            .duration_ms
            .saturating_sub(measured.values().map(|r| r.ms).sum::<u64>());
        let mut learned = Vec::with_capacity(weights.len());
        let mut durations = Vec::with_capacity(weights.len());
        for (item, weight) in report.items.iter().zip(weights) {
            let share = match measured.get(item) {
                Some(run) => run.ms,
                None => rest * weight / total.max(1),
            };
            let ms = match known.get(item) {
                Some(old) => (old + share) / 2,
                None => share,
            };
            known.insert(item.clone(), ms);
            durations.push(share);
            learned.push(Timing {
                key: key.clone(),
                item: item.clone(),
                ms,
            });
        }
        // A batch whose report timed every item tells the program's start-up cost: the rest of
        // its time.
        if !measured.is_empty() && report.items.iter().all(|i| measured.contains_key(i)) {
            let ms = match known.get(STARTUP_ITEM) {
                Some(old) => (old + rest) / 2,
                None => rest,
            };
            known.insert(STARTUP_ITEM.to_owned(), ms);
            learned.push(Timing {
                key: key.clone(),
                item: STARTUP_ITEM.to_owned(),
                ms,
            });
        }
        self.writes.push(Write::Timings(learned));
        durations
    }

    pub(super) fn record_attempt(&mut self, chunk: ChunkRef) {
        let Some(record) = self
            .jobs
            .get(&chunk.job)
            .and_then(|j| j.chunk(chunk.chunk))
            .and_then(|c| c.record(chunk.attempt))
        else {
            return;
        };
        let event = attempts::AttemptEvent::of(chunk.job, chunk.chunk.0, record);
        if let (None, Some(at)) = (&record.error, record.finished_at) {
            self.throughput.count(at);
        }
        self.writes.push(Write::Attempt {
            job: chunk.job,
            chunk: chunk.chunk,
            record: record.clone(),
        });
        self.attempts.push(event);
    }

    fn succeed_attempt(&mut self, chunk: ChunkRef, result: Bytes) {
        let Some(job) = self.jobs.get_mut(&chunk.job) else {
            return;
        };
        // Of a chunk and its backup, the first to finish wins; the other copy is stopped.
        let backup_won = job.is_backup(chunk.chunk, chunk.attempt);
        let outcome = if backup_won {
            job.backup_succeeded(chunk.chunk, chunk.attempt, result.clone())
                .map(|(all_done, primary)| (all_done, Some(primary)))
        } else {
            let backup = job.drop_backup(chunk.chunk);
            job.chunk_succeeded(chunk.chunk, chunk.attempt, result.clone())
                .map(|all_done| (all_done, backup))
        };
        let (all_done, loser) = match outcome {
            Ok(outcome) => outcome,
            Err(refused) => {
                error!(job_id = %chunk.job, chunk = chunk.chunk.0, attempt = chunk.attempt.0, error = %refused, "refused an illegal chunk transition");
                return;
            }
        };
        if backup_won {
            self.counters.backups_won += 1;
        }
        if let Some((worker, attempt)) = loser {
            self.stop_copy(chunk.job, chunk.chunk, worker, attempt);
        }
        let Some(job) = self.jobs.get(&chunk.job) else {
            return;
        };
        if job.partials_followed {
            let partial = job::Partial {
                seq: job.succeeded_order.len() as u64 - 1,
                chunk: chunk.chunk,
                result: result.clone(),
            };
            self.effects.push(Effect::Partial {
                job: chunk.job,
                partial,
            });
        }
        let reducer = job.meta.reducer;
        if reducer.folds() && result.len() >= FOLD_AT_BYTES {
            self.effects.push(Effect::Fold {
                job: chunk.job,
                reducer,
                result: result.clone(),
            });
        }
        self.writes.push(Write::Result {
            job: chunk.job,
            chunk: chunk.chunk,
            result,
        });
        self.unfinished = self.unfinished.saturating_sub(1);
        self.counters.attempts_succeeded += 1;
        self.record_attempt(chunk);
        debug!(job_id = %chunk.job, chunk = chunk.chunk.0, attempt = chunk.attempt.0, "chunk succeeded");
        if all_done {
            self.reduce(chunk.job, true);
        }
    }

    fn fail_attempt(&mut self, chunk: ChunkRef, reason: FailReason) {
        let backoff = self.policy.retry_backoff;
        let Some(job) = self.jobs.get_mut(&chunk.job) else {
            return;
        };
        let class = reason.class();
        info!(job_id = %chunk.job, chunk = chunk.chunk.0, attempt = chunk.attempt.0, %reason, "chunk attempt failed");
        // A copy that fails while the other runs leaves the chunk to the other.
        if job.is_backup(chunk.chunk, chunk.attempt) {
            if job
                .backup_failed(chunk.chunk, chunk.attempt, reason)
                .is_ok()
            {
                *self.counters.attempts_failed.entry(class).or_default() += 1;
                self.record_attempt(chunk);
            }
            return;
        }
        if let Some((_, attempt)) = job.promote_backup(chunk.chunk, chunk.attempt, reason.clone()) {
            if let Some(ChunkState::Running {
                deadline: Some(at), ..
            }) = job.chunk(chunk.chunk).map(|c| &c.state)
            {
                self.deadlines
                    .push(Reverse((*at, chunk.job, chunk.chunk, attempt)));
            }
            *self.counters.attempts_failed.entry(class).or_default() += 1;
            self.record_attempt(chunk);
            return;
        }
        if let Some((worker, attempt)) = job.drop_backup(chunk.chunk) {
            self.stop_copy(chunk.job, chunk.chunk, worker, attempt);
        }
        let Some(job) = self.jobs.get_mut(&chunk.job) else {
            return;
        };
        let retry = match job.chunk_failed(chunk.chunk, chunk.attempt, reason, backoff) {
            Ok(retry) => retry,
            Err(refused) => {
                error!(job_id = %chunk.job, chunk = chunk.chunk.0, attempt = chunk.attempt.0, error = %refused, "refused an illegal chunk transition");
                return;
            }
        };
        *self.counters.attempts_failed.entry(class).or_default() += 1;
        let key = job_key(&job.meta, job.id);
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

    /// Stops a copy of a chunk that lost to the other (or whose job's chunk ended otherwise):
    /// its worker is told to stop and its slot is free, its record (already closed) stored.
    fn stop_copy(&mut self, job: JobId, chunk: ChunkIndex, worker: WorkerId, attempt: Attempt) {
        let copy = ChunkRef {
            job,
            chunk,
            attempt,
        };
        self.workers.release(worker, &copy);
        self.effects.push(Effect::Cancel {
            worker,
            chunk: copy,
        });
        self.record_attempt(copy);
    }

    /// Starts backups of stragglers (`speculation`): in each such job whose chunks all run or
    /// are done, a chunk that has run longer than [`SPECULATE_AFTER`] times the median of its
    /// job's succeeded attempts (and [`SPECULATE_AT_LEAST`]) gets a copy on another worker
    /// with a free slot, while there are such slots. Looked at every [`SPECULATE_EVERY`].
    fn speculate(&mut self, now: Instant) {
        if self
            .last_speculation
            .is_some_and(|at| now.saturating_duration_since(at) < self.policy.speculate_every)
        {
            return;
        }
        self.last_speculation = Some(now);
        let tails: Vec<JobId> = self
            .speculative
            .iter()
            .filter_map(|id| self.jobs.get(id))
            .filter(|j| j.counts.pending == 0 && j.counts.running > 0)
            // A parent's chunks wait for their sub-jobs, which is no sign of a slow worker.
            .filter(|j| !self.children.contains_key(&j.id))
            .map(|j| j.id)
            .collect();
        self.tails = !tails.is_empty();
        for id in tails {
            if self.workers.free_slots() == 0 {
                return;
            }
            let least = self.policy.speculate_at_least;
            let Some(stragglers) = self
                .jobs
                .get(&id)
                .map(|j| j.stragglers(SPECULATE_AFTER, least))
            else {
                continue;
            };
            for (index, running_on) in stragglers {
                let Some(worker) = self
                    .jobs
                    .get(&id)
                    .and_then(|job| self.workers.place(&job.meta, &[running_on]))
                else {
                    break;
                };
                let Some(name) = self.workers.get(worker).map(|w| w.name.clone()) else {
                    break;
                };
                let started = self.jobs.get_mut(&id);
                let Some(attempt) = started.and_then(|j| j.start_backup(index, worker, &name))
                else {
                    continue;
                };
                info!(job_id = %id, chunk = index.0, attempt = attempt.0, worker = %name, "backup of a straggler started");
                self.counters.backups_started += 1;
                let chunk = ChunkRef {
                    job: id,
                    chunk: index,
                    attempt,
                };
                self.hand_out(chunk, worker);
            }
        }
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
                .get(&key.2)
                .is_some_and(|j| !j.state.is_terminal());
            if !active {
                self.queue.remove_job(&key);
                continue;
            }
            free -= self.dispatch_job(key, free, now);
        }
        if free > 0 {
            self.speculate(now);
        }
    }

    /// Places chunks of one job (no more than its `max_running` at once); returns how many
    /// were placed.
    fn dispatch_job(&mut self, key: JobKey, free: u64, now: Instant) -> u64 {
        let free = match self.jobs.get(&key.2) {
            Some(job) => job.meta.max_running.map_or(free, |most| {
                free.min(u64::from(most.saturating_sub(job.counts.running)))
            }),
            None => free,
        };
        let mut placed = 0;
        // Retried chunks that must wait for a worker other than the ones they failed on.
        let mut waiting = Vec::new();
        while placed < free {
            let Some(index) = self.queue.pop(&key) else {
                break;
            };
            let Some(job) = self.jobs.get(&key.2) else {
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
                    self.assign(key.2, index, worker, now);
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

    fn assign(&mut self, id: JobId, index: ChunkIndex, worker: WorkerId, now: Instant) {
        let Some(entry) = self.workers.get(worker) else {
            return;
        };
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        if let Some(ChunkState::Pending { ready_at }) = job.chunk(index).map(|c| &c.state) {
            self.counters
                .times
                .waited(now.saturating_duration_since(*ready_at));
        }
        let Some(attempt) = job.start_chunk(index, worker, &entry.name) else {
            return;
        };
        if let Some(ChunkState::Running {
            deadline: Some(at), ..
        }) = job.chunk(index).map(|c| &c.state)
        {
            self.deadlines.push(Reverse((*at, id, index, attempt)));
        }
        self.hand_out(
            ChunkRef {
                job: id,
                chunk: index,
                attempt,
            },
            worker,
        );
    }

    /// Sends an attempt just started (or a backup) to its worker: the slot is taken, the
    /// attempt counted and recorded, the assignment queued.
    fn hand_out(&mut self, chunk: ChunkRef, worker: WorkerId) {
        let Some(job) = self.jobs.get(&chunk.job) else {
            return;
        };
        let Some(input) = job.chunk(chunk.chunk).map(|c| c.input.clone()) else {
            return;
        };
        self.workers.occupy(worker, chunk, input.len() as u64);
        let assignment = Assignment {
            chunk,
            task: job.meta.task.clone(),
            input,
        };
        self.counters.attempts_started += 1;
        self.record_attempt(chunk);
        self.effects.push(Effect::Assign { worker, assignment });
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
