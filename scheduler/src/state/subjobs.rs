//! Sub-jobs: jobs that running chunks submit, wait for and cancel, over their worker's
//! connection and on the authority of the attempt they run.
//!
//! - A sub-job is submitted under a key unique within its parent chunk, through the idempotency
//!   keys clients use (`sub-job:JOB/CHUNK/KEY`, stored with the job): a retried attempt that
//!   submits again gets the job the first attempt made, results and all.
//! - A sub-job records its parent job and chunk ([`ParentLink`], stored with the job); it is
//!   cancelled when its parent job ends, and so on down. Depth and fan-out are bounded
//!   ([`Policy::max_sub_job_depth`](super::Policy), [`Policy::max_sub_jobs`](super::Policy)).
//! - An attempt waiting for sub-jobs holds no slot (see `WorkerEntry::waiting`): its worker takes
//!   other chunks, its children's among them (the queue serves deeper jobs first), and the attempt
//!   takes its slot back with the answer.

use std::collections::HashMap;

use muster_shared::ids::{JobId, WorkerId};
use muster_shared::job::JobSpec;
use muster_shared::protocol::{ChunkRef, CoordinatorMessage, JobEnded, MAX_NAME_BYTES};

use super::job::JobState;
use super::{ClusterState, Effect, StateError, Submitted};
use crate::records::ParentLink;

/// Attempts waiting for sub-jobs to end.
#[derive(Debug, Default)]
pub struct Awaits {
    next: u64,
    waits: HashMap<u64, Wait>,
    /// The waits each unfinished job is in.
    by_job: HashMap<JobId, Vec<u64>>,
}

/// One attempt's wait.
#[derive(Debug)]
struct Wait {
    worker: WorkerId,
    parent: ChunkRef,
    request: u64,
    jobs: Vec<JobId>,
    /// Jobs of `jobs` not ended yet.
    left: usize,
}

impl ClusterState {
    /// Refuses an ask from an attempt that is not running on the worker asking.
    fn check_parent(&self, worker: WorkerId, parent: ChunkRef) -> Result<(), StateError> {
        let running = self
            .workers
            .get(worker)
            .is_some_and(|w| w.running.contains_key(&parent));
        match running {
            true => Ok(()),
            false => Err(StateError::SubJob(format!(
                "attempt {parent} is not running on this worker: only a running attempt may submit, wait for or cancel sub-jobs"
            ))),
        }
    }

    /// Submits a sub-job for the attempt `parent`, running on `worker`, under `key` (with the
    /// digest of its body): the job an earlier attempt of the chunk made under that key, or a
    /// new one.
    pub fn submit_child(
        &mut self,
        worker: WorkerId,
        parent: ChunkRef,
        key: &str,
        spec: JobSpec,
        digest: [u8; 32],
        store_backlog: u64,
    ) -> Result<Submitted, StateError> {
        self.check_parent(worker, parent)?;
        if key.is_empty() || key.len() > MAX_NAME_BYTES {
            return Err(StateError::SubJob(format!(
                "a sub-job's key must be 1 to {MAX_NAME_BYTES} bytes long"
            )));
        }
        let idempotency = format!("sub-job:{}/{}/{key}", parent.job, parent.chunk.0);
        let depth = self
            .jobs
            .get(&parent.job)
            .map_or(0, |j| j.meta.depth())
            .saturating_add(1);
        let most = self.policy.max_sub_job_depth;
        if depth > most {
            return Err(StateError::SubJob(format!(
                "sub-jobs nest at most {most} deep (--max-sub-job-depth), and job {} is {} deep already",
                parent.job,
                depth - 1
            )));
        }
        let known = self.idempotency.contains_key(&idempotency);
        let children = self.children.get(&parent.job).map_or(0, Vec::len);
        let most = self.policy.max_sub_jobs;
        if !known && children >= most {
            return Err(StateError::SubJob(format!(
                "job {} has {children} sub-jobs, the most one job may have (--max-sub-jobs)",
                parent.job
            )));
        }
        let link = ParentLink {
            job: parent.job,
            chunk: parent.chunk,
            depth,
        };
        self.accept(spec, Some((idempotency, digest)), store_backlog, Some(link))
    }

    /// Notes a new sub-job under its parent.
    pub(super) fn adopt(&mut self, link: ParentLink, child: JobId) {
        self.children.entry(link.job).or_default().push(child);
    }

    /// The attempt `parent`, running on `worker`, waits for `jobs`, sub-jobs of its job, to end:
    /// answered at once when they all have, else when the last one does, its slot free
    /// meanwhile.
    pub fn await_jobs(
        &mut self,
        worker: WorkerId,
        parent: ChunkRef,
        request: u64,
        jobs: Vec<JobId>,
    ) -> Result<(), StateError> {
        self.check_parent(worker, parent)?;
        self.check_children(parent, &jobs)?;
        let unfinished: Vec<JobId> = jobs
            .iter()
            .copied()
            .filter(|j| self.jobs.get(j).is_some_and(|j| !j.state.is_terminal()))
            .collect();
        if unfinished.is_empty() {
            self.answer_wait(worker, request, &jobs);
            return Ok(());
        }
        let id = self.awaits.next;
        self.awaits.next += 1;
        for job in &unfinished {
            self.awaits.by_job.entry(*job).or_default().push(id);
        }
        self.awaits.waits.insert(
            id,
            Wait {
                worker,
                parent,
                request,
                jobs,
                left: unfinished.len(),
            },
        );
        self.workers.set_waiting(worker, parent, true);
        Ok(())
    }

    /// The attempt `parent`, running on `worker`, cancels `job`, a sub-job of its job.
    pub fn cancel_child(
        &mut self,
        worker: WorkerId,
        parent: ChunkRef,
        job: JobId,
    ) -> Result<(), StateError> {
        self.check_parent(worker, parent)?;
        self.check_children(parent, &[job])?;
        self.cancel(job)
    }

    /// Refuses jobs that are not sub-jobs of `parent`'s job.
    fn check_children(&self, parent: ChunkRef, jobs: &[JobId]) -> Result<(), StateError> {
        for id in jobs {
            let job = self
                .jobs
                .get(id)
                .ok_or(StateError::JobNotFound { id: *id })?;
            if job.meta.parent.map(|p| p.job) != Some(parent.job) {
                return Err(StateError::SubJob(format!(
                    "job {id} is not a sub-job of job {}",
                    parent.job
                )));
            }
        }
        Ok(())
    }

    /// Sends `worker` how `jobs` ended, for its request.
    fn answer_wait(&mut self, worker: WorkerId, request: u64, jobs: &[JobId]) {
        let ends = jobs.iter().map(|id| self.end_of(*id)).collect();
        self.effects.push(Effect::Send {
            worker,
            message: CoordinatorMessage::JobsEnded {
                request,
                result: Ok(ends),
            },
        });
    }

    /// How a job ended, as a waiting attempt is told.
    fn end_of(&self, id: JobId) -> JobEnded {
        let state = self.jobs.get(&id).map(|j| &j.state);
        JobEnded {
            job: id,
            status: state.map_or("gone", JobState::name).to_owned(),
            result: match state {
                Some(JobState::Succeeded { result }) => Some(result.clone()),
                _ => None,
            },
            error: match state {
                Some(JobState::Failed { error }) => Some(error.clone()),
                None => Some(
                    "the job is gone: pruned past its retention, or it could not be stored".into(),
                ),
                _ => None,
            },
        }
    }

    /// A job ended: the waits it completes are answered (their attempts take their slots
    /// back), and its sub-jobs still running are cancelled.
    pub(super) fn ended_for_sub_jobs(&mut self, id: JobId) {
        for wait in self.awaits.by_job.remove(&id).into_iter().flatten() {
            let Some(w) = self.awaits.waits.get_mut(&wait) else {
                continue;
            };
            w.left -= 1;
            if w.left > 0 {
                continue;
            }
            let Some(w) = self.awaits.waits.remove(&wait) else {
                continue;
            };
            // An attempt that is no longer running (its worker went, it was cancelled) is told
            // nothing: a retry asks again.
            let running = self
                .workers
                .get(w.worker)
                .is_some_and(|e| e.running.contains_key(&w.parent));
            if running {
                self.workers.set_waiting(w.worker, w.parent, false);
                self.answer_wait(w.worker, w.request, &w.jobs);
            }
        }
        for child in self.children.get(&id).cloned().into_iter().flatten() {
            if self
                .jobs
                .get(&child)
                .is_some_and(|j| !j.state.is_terminal())
            {
                self.finish(child, JobState::Cancelled);
            }
        }
    }

    /// Sends `worker` a message with the effects of this turn, in order.
    pub fn send(&mut self, worker: WorkerId, message: CoordinatorMessage) {
        self.effects.push(Effect::Send { worker, message });
    }

    /// The sub-jobs of a job, oldest first.
    pub fn children_of(&self, id: JobId) -> &[JobId] {
        self.children.get(&id).map_or(&[], Vec::as_slice)
    }
}
