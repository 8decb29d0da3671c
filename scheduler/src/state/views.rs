//! What the API shows of a job.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use muster_shared::ids::{ChunkIndex, JobId};
use serde::Serialize;

use muster_shared::exec::{ExecBatch, ExecReport};

use super::job::{AttemptRecord, BackupCounts, ChunkCounts, ChunkState, Job, JobState};
use super::live::LiveLogs;

/// Most chunks listed under `retries` in one status.
pub const MAX_RETRIES_SHOWN: usize = 1000;

/// A chunk that needed more than one attempt, or whose attempt failed.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RetriedChunk {
    /// Its index.
    pub chunk: ChunkIndex,
    /// All its attempts.
    pub attempts: Vec<AttemptRecord>,
}

/// `GET /v1/jobs/{id}`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobView {
    /// Job id.
    pub id: JobId,
    /// Built-in kind, for built-in jobs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Task, for custom jobs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    #[schema(value_type = String)]
    pub status: &'static str,
    /// Chunk counts.
    pub chunks: ChunkCounts,
    /// Attempts started, over all chunks.
    pub attempts: u32,
    /// Chunks that failed an attempt, with every attempt (at most [`MAX_RETRIES_SHOWN`]).
    pub retries: Vec<RetriedChunk>,
    /// Speculative backups of stragglers started and won (`speculation`); a backup that lost,
    /// or the attempt a winning backup beat, ends `superseded`.
    pub backups: BackupCounts,
    /// Priority.
    pub priority: i64,
    /// Required worker labels.
    pub labels: BTreeMap<String, String>,
    /// Accepted at.
    pub created_at: DateTime<Utc>,
    /// First chunk assigned at.
    pub started_at: Option<DateTime<Utc>>,
    /// Terminal at.
    pub finished_at: Option<DateTime<Utc>>,
    /// Why it failed.
    pub error: Option<String>,
    /// For a sub-job, the chunk that submitted it (list a job's sub-jobs with
    /// `GET /v1/jobs?parent=ID`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<crate::records::ParentLink>,
}

impl JobView {
    /// The view of a job.
    pub fn of(job: &Job) -> Self {
        let retries = job
            .retries()
            .into_iter()
            .map(|(chunk, attempts)| RetriedChunk {
                chunk,
                attempts: attempts.to_vec(),
            })
            .collect();
        let (kind, task) = if job.meta.builtin {
            (Some(job.meta.name.clone()), None)
        } else {
            (None, Some(job.meta.name.clone()))
        };
        Self {
            id: job.id,
            kind,
            task,
            status: job.state.name(),
            chunks: job.counts,
            attempts: job.attempts,
            retries,
            backups: job.backups,
            priority: job.meta.priority,
            labels: job.meta.labels.clone(),
            created_at: job.created_at,
            started_at: job.started_at,
            finished_at: job.finished_at,
            error: match &job.state {
                JobState::Failed { error } => Some(error.clone()),
                _ => None,
            },
            parent: job.meta.parent,
        }
    }
}

/// A job's progress, as `GET /v1/jobs/{id}/events` sends it: small enough to read often.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Progress {
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    #[schema(value_type = String)]
    pub status: &'static str,
    /// Chunk counts.
    pub chunks: ChunkCounts,
    /// Chunks that needed more than one attempt.
    pub retried: usize,
    /// Seconds until the job is likely done, from the pace of its chunks so far (while it runs
    /// and some chunk is done).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<f64>,
    /// The error, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Progress {
    /// `job`'s progress now.
    pub fn of(job: &Job) -> Self {
        let c = job.counts;
        let eta_seconds = match (&job.state, job.started_at) {
            (JobState::Running, Some(started)) if c.succeeded > 0 => {
                let spent = (Utc::now() - started).num_milliseconds().max(0) as f64 / 1000.0;
                let left = c.total.saturating_sub(c.succeeded + c.failed);
                Some((spent / f64::from(c.succeeded) * f64::from(left) * 10.0).round() / 10.0)
            }
            _ => None,
        };
        Self {
            status: job.state.name(),
            chunks: c,
            retried: job.retried_count(),
            eta_seconds,
            error: match &job.state {
                JobState::Failed { error } => Some(error.clone()),
                _ => None,
            },
        }
    }
}

/// Each chunk's state as one letter, in chunk order, for the dashboard's grid
/// (`GET /v1/jobs/{id}/chunks`): `p` waiting, `w` waiting for a retry, `r` running, `s`
/// succeeded, `f` failed for good, `c` never ran (its job ended first). An ended job's chunk
/// table is dropped: its letters come from its counts then.
pub fn chunk_states(job: &Job) -> String {
    if job.chunks.is_empty() {
        let c = job.counts;
        let rest = c.total.saturating_sub(c.succeeded + c.failed);
        let mut out = String::with_capacity(c.total as usize);
        for (letter, n) in [('s', c.succeeded), ('f', c.failed), ('c', rest)] {
            out.extend(std::iter::repeat_n(letter, n as usize));
        }
        return out;
    }
    let ended = job.state.is_terminal();
    job.chunks
        .iter()
        .map(|chunk| match chunk.state {
            ChunkState::Pending { .. } if ended => 'c',
            ChunkState::Pending { .. } if chunk.attempts.is_empty() => 'p',
            ChunkState::Pending { .. } => 'w',
            ChunkState::Running { .. } => 'r',
            ChunkState::Succeeded { .. } => 's',
            ChunkState::Failed => 'f',
        })
        .collect()
}

/// One batch of an `exec` job, as `GET /v1/jobs/{id}/logs` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BatchLog {
    /// Its index.
    pub batch: ChunkIndex,
    /// `passed` or `failed` (its program's verdict, after reruns), else where the batch stands
    /// (`pending`, `running`), or `unknown` for a batch of an ended job that did not succeed.
    #[schema(value_type = String)]
    pub status: &'static str,
    /// Its items, when known.
    pub items: Vec<String>,
    /// The worker that ran it last, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Its program's exit code, when it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// What it printed: from its report once it ended (head and tail past the worker's cap),
    /// else the lines kept while it runs.
    pub output: String,
    /// Bytes of output cut out of its report.
    pub output_cut: u64,
}

impl BatchLog {
    fn of_report(batch: ChunkIndex, report: ExecReport) -> Self {
        Self {
            batch,
            status: if report.passed() { "passed" } else { "failed" },
            worker: report.results.last().map(|r| r.worker.clone()),
            exit_code: report.exit_code,
            items: report.items,
            output: report.output,
            output_cut: report.output_cut,
        }
    }
}

/// Every batch's output of an `exec` job: from the batch reports where the batches ended, else
/// from `live`, the lines kept while they run.
pub fn batch_logs(job: &Job, live: &LiveLogs) -> Vec<BatchLog> {
    if let JobState::Succeeded { result } = &job.state {
        let reports: Vec<ExecReport> = serde_json::from_slice(result).unwrap_or_default();
        return reports
            .into_iter()
            .enumerate()
            .map(|(i, r)| BatchLog::of_report(ChunkIndex(i as u32), r))
            .collect();
    }
    let unknown = |batch| BatchLog {
        batch,
        status: "unknown",
        items: Vec::new(),
        worker: None,
        exit_code: None,
        output: live.batch_text(job.id, batch),
        output_cut: 0,
    };
    if job.chunks.is_empty() {
        // An ended job's chunk table is gone: what was kept of its output is all there is.
        return live.batches(job.id).into_iter().map(unknown).collect();
    }
    job.chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let batch = ChunkIndex(i as u32);
            if let ChunkState::Succeeded { result } = &chunk.state {
                if let Some(report) = ExecReport::read(result) {
                    return BatchLog::of_report(batch, report);
                }
            }
            let items = serde_json::from_slice::<ExecBatch>(&chunk.input)
                .map(|b| b.items)
                .unwrap_or_default();
            BatchLog {
                status: chunk.state.name(),
                items,
                worker: chunk.attempts.last().map(|a| a.worker_name.to_string()),
                ..unknown(batch)
            }
        })
        .collect()
}
