//! What the API shows of a job.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use muster_shared::ids::{ChunkIndex, JobId};
use serde::Serialize;

use super::job::{AttemptRecord, ChunkCounts, Job, JobState};

/// Most chunks listed under `retries` in one status.
pub const MAX_RETRIES_SHOWN: usize = 1000;

/// A chunk that needed more than one attempt, or whose attempt failed.
#[derive(Debug, Clone, Serialize)]
pub struct RetriedChunk {
    /// Its index.
    pub chunk: ChunkIndex,
    /// All its attempts.
    pub attempts: Vec<AttemptRecord>,
}

/// `GET /v1/jobs/{id}`.
#[derive(Debug, Clone, Serialize)]
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
    pub status: &'static str,
    /// Chunk counts.
    pub chunks: ChunkCounts,
    /// Attempts started, over all chunks.
    pub attempts: u32,
    /// Chunks that failed an attempt, with every attempt (at most [`MAX_RETRIES_SHOWN`]).
    pub retries: Vec<RetriedChunk>,
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
            priority: job.meta.priority,
            labels: job.meta.labels.clone(),
            created_at: job.created_at,
            started_at: job.started_at,
            finished_at: job.finished_at,
            error: match &job.state {
                JobState::Failed { error } => Some(error.clone()),
                _ => None,
            },
        }
    }
}
