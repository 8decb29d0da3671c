//! What the SQL stores share: the buffer of writes waiting for the next commit, and decoding of the
//! text columns both schemas use.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use muster_shared::ids::{ChunkIndex, JobId};

use super::{JobEnd, StoreError};
use crate::state::job::{AttemptRecord, JobMeta};

/// A write waiting for the next commit.
#[derive(Debug)]
pub(super) enum Pending {
    /// Upsert of one attempt record (JSON).
    Attempt {
        job: String,
        chunk: u32,
        attempt: u32,
        record: String,
    },
    /// A chunk's partial result, with the record of the attempt that made it when the two were
    /// written together (one row instead of two).
    Result {
        job: String,
        chunk: u32,
        result: Bytes,
        ended: Option<(u32, String)>,
    },
    /// A job's end; its payloads are dropped with it.
    Finish {
        job: String,
        kind: &'static str,
        text: Option<String>,
        at: String,
    },
}

/// Writes buffered between commits (group commit).
#[derive(Debug, Default)]
pub(super) struct Buffer(pub(super) Vec<Pending>);

fn encode_err(e: serde_json::Error) -> StoreError {
    StoreError::Other(format!("cannot encode for the store: {e}"))
}

impl Buffer {
    pub(super) fn attempt(
        &mut self,
        job: JobId,
        chunk: ChunkIndex,
        record: &AttemptRecord,
    ) -> Result<(), StoreError> {
        let encoded = serde_json::to_string(record).map_err(encode_err)?;
        let job = job.to_string();
        // The end of the attempt whose result was just written rides along with the result.
        if let Some(Pending::Result {
            job: result_job,
            chunk: result_chunk,
            ended: ended @ None,
            ..
        }) = self.0.last_mut()
        {
            if *result_chunk == chunk.0 && *result_job == job {
                *ended = Some((record.attempt.0, encoded));
                return Ok(());
            }
        }
        self.0.push(Pending::Attempt {
            job,
            chunk: chunk.0,
            attempt: record.attempt.0,
            record: encoded,
        });
        Ok(())
    }

    pub(super) fn result(&mut self, job: JobId, chunk: ChunkIndex, result: &Bytes) {
        self.0.push(Pending::Result {
            job: job.to_string(),
            chunk: chunk.0,
            result: result.clone(),
            ended: None,
        });
    }

    pub(super) fn finish(&mut self, job: JobId, end: &JobEnd, at: DateTime<Utc>) {
        let (kind, text) = match end {
            // The result is not written again: the partial results are stored already, and a
            // restarted coordinator merges them anew (reducers are deterministic). Writing a large
            // result a second time cost more than merging it.
            JobEnd::Succeeded(_) => ("succeeded", None),
            JobEnd::Failed(error) => ("failed", Some(error.clone())),
            JobEnd::Cancelled => ("cancelled", None),
        };
        self.0.push(Pending::Finish {
            job: job.to_string(),
            kind,
            text,
            at: at.to_rfc3339(),
        });
    }

    pub(super) fn take(&mut self) -> Vec<Pending> {
        std::mem::take(&mut self.0)
    }
}

pub(super) fn encode_meta(meta: &JobMeta) -> Result<String, StoreError> {
    serde_json::to_string(meta).map_err(encode_err)
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Other(format!("stored {what} is unreadable: {e}"))
}

pub(super) fn job_id(s: &str) -> Result<JobId, StoreError> {
    s.parse().map_err(|e| corrupt("job id", e))
}

pub(super) fn meta(s: &str) -> Result<JobMeta, StoreError> {
    serde_json::from_str(s).map_err(|e| corrupt("job", e))
}

pub(super) fn attempt(s: &str) -> Result<AttemptRecord, StoreError> {
    serde_json::from_str(s).map_err(|e| corrupt("attempt", e))
}

pub(super) fn time(s: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| corrupt("time", e))
}

pub(super) fn digest(bytes: Vec<u8>) -> Result<[u8; 32], StoreError> {
    bytes
        .try_into()
        .map_err(|_| corrupt("idempotency digest", "wrong length"))
}

/// The end columns (`end_kind`, `end_text`, `finished_at`) back as a job end.
pub(super) fn end(
    kind: Option<String>,
    text: Option<String>,
    at: Option<String>,
) -> Result<Option<(JobEnd, DateTime<Utc>)>, StoreError> {
    let (Some(kind), Some(at)) = (kind, at) else {
        return Ok(None);
    };
    let text = text.unwrap_or_default();
    let end = match kind.as_str() {
        "succeeded" => JobEnd::Succeeded(Bytes::from(text)),
        "failed" => JobEnd::Failed(text),
        _ => JobEnd::Cancelled,
    };
    Ok(Some((end, time(&at)?)))
}
