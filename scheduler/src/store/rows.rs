//! What the SQL stores share: the buffer of writes waiting for the next commit, and decoding of the
//! text columns both schemas use.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use muster_shared::ids::{ChunkIndex, JobId};

use super::{JobEnd, StoreError};
use crate::records::{AttemptRecord, JobMeta};

/// A write waiting for the next commit. Job ids are text, shared by the writes of one job.
#[derive(Debug)]
pub(super) enum Pending {
    /// Upsert of one attempt record (see [`encode_attempt`]).
    Attempt {
        job: Arc<str>,
        chunk: u32,
        attempt: u32,
        record: String,
    },
    /// A chunk's partial result, with the record of the attempt that made it when the two were
    /// written together (one row instead of two).
    Result {
        job: Arc<str>,
        chunk: u32,
        result: Bytes,
        ended: Option<(u32, String)>,
    },
    /// A job's end; its payloads are dropped with it.
    Finish {
        job: Arc<str>,
        kind: &'static str,
        text: Option<String>,
        at: String,
    },
}

/// Writes buffered between commits (group commit).
#[derive(Debug, Default)]
pub(super) struct Buffer {
    writes: Vec<Pending>,
    /// The last job written for and its id as text: most writes in a row are for one job.
    last_job: Option<(JobId, Arc<str>)>,
}

fn encode_err(e: serde_json::Error) -> StoreError {
    StoreError::Other(format!("cannot encode for the store: {e}"))
}

impl Buffer {
    /// The job's id as text, made once for a run of writes for it.
    fn job(&mut self, job: JobId) -> Arc<str> {
        match &self.last_job {
            Some((id, text)) if *id == job => text.clone(),
            _ => {
                let text: Arc<str> = job.to_string().into();
                self.last_job = Some((job, text.clone()));
                text
            }
        }
    }

    pub(super) fn attempt(
        &mut self,
        job: JobId,
        chunk: ChunkIndex,
        record: &AttemptRecord,
    ) -> Result<(), StoreError> {
        let encoded = encode_attempt(record)?;
        let job = self.job(job);
        // The end of the attempt whose result was just written rides along with the result.
        if let Some(Pending::Result {
            job: result_job,
            chunk: result_chunk,
            ended: ended @ None,
            ..
        }) = self.writes.last_mut()
        {
            if *result_chunk == chunk.0 && *result_job == job {
                *ended = Some((record.attempt.0, encoded));
                return Ok(());
            }
        }
        self.writes.push(Pending::Attempt {
            job,
            chunk: chunk.0,
            attempt: record.attempt.0,
            record: encoded,
        });
        Ok(())
    }

    pub(super) fn result(&mut self, job: JobId, chunk: ChunkIndex, result: &Bytes) {
        let job = self.job(job);
        self.writes.push(Pending::Result {
            job,
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
        let job = self.job(job);
        self.writes.push(Pending::Finish {
            job,
            kind,
            text,
            at: at.to_rfc3339(),
        });
    }

    /// The writes so far; the buffer starts again with room for as many.
    pub(super) fn take(&mut self) -> Vec<Pending> {
        let room = self.writes.len();
        std::mem::replace(&mut self.writes, Vec::with_capacity(room))
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

/// Starts an attempt record in the compact form [`encode_attempt`] writes.
const COMPACT_ATTEMPT: &str = "a1 ";

/// An attempt record as stored: `a1 ATTEMPT WORKER STARTED FINISHED NAME_LEN:NAME` then the error
/// as JSON, if any. `ATTEMPT` is the number, then `b` for a backup and `#SEQ` for the partial's
/// number when they apply; ids are 32 hex digits, times nanoseconds since the epoch (`-` when not
/// finished). One is written as each attempt starts and ends, so this runs twice per chunk:
/// several times cheaper than the JSON the first files used (still read, see [`attempt`]).
pub(super) fn encode_attempt(record: &AttemptRecord) -> Result<String, StoreError> {
    // Times past 2262 do not fit: such a record is written as JSON.
    let finished = match record.finished_at {
        None => Some(None),
        Some(t) => t.timestamp_nanos_opt().map(Some),
    };
    let (Some(started), Some(finished)) = (record.started_at.timestamp_nanos_opt(), finished)
    else {
        return serde_json::to_string(record).map_err(encode_err);
    };
    let mut out = String::with_capacity(96 + record.worker_name.len());
    let mut number = itoa::Buffer::new();
    out.push_str(COMPACT_ATTEMPT);
    out.push_str(number.format(record.attempt.0));
    if record.backup {
        out.push('b');
    }
    if let Some(seq) = record.seq {
        out.push('#');
        out.push_str(number.format(seq));
    }
    out.push(' ');
    out.push_str(
        record
            .worker
            .0
            .simple()
            .encode_lower(&mut uuid::Uuid::encode_buffer()),
    );
    out.push(' ');
    out.push_str(number.format(started));
    out.push(' ');
    match finished {
        Some(f) => out.push_str(number.format(f)),
        None => out.push('-'),
    }
    out.push(' ');
    out.push_str(number.format(record.worker_name.len()));
    out.push(':');
    out.push_str(&record.worker_name);
    if let Some(error) = &record.error {
        out.push_str(&serde_json::to_string(error).map_err(encode_err)?);
    }
    Ok(out)
}

/// An attempt record back, in either stored form.
pub(super) fn attempt(s: &str) -> Result<AttemptRecord, StoreError> {
    let Some(compact) = s.strip_prefix(COMPACT_ATTEMPT) else {
        return serde_json::from_str(s).map_err(|e| corrupt("attempt", e));
    };
    let bad = |what: &str| corrupt("attempt", format!("{what} in `{s}`"));
    let mut fields = compact.splitn(5, ' ');
    let mut next = |what: &str| fields.next().ok_or_else(|| bad(what));
    let token = next("attempt")?;
    let (attempt, seq) = match token.split_once('#') {
        Some((attempt, seq)) => (attempt, Some(seq.parse().map_err(|_| bad("seq"))?)),
        None => (token, None),
    };
    let (attempt, backup) = match attempt.strip_suffix('b') {
        Some(attempt) => (attempt, true),
        None => (attempt, false),
    };
    let attempt = attempt.parse().map_err(|_| bad("attempt"))?;
    let worker = next("worker")?
        .parse::<uuid::Uuid>()
        .map_err(|_| bad("worker"))?;
    let nanos = |t: &str| {
        t.parse::<i64>()
            .map(DateTime::from_timestamp_nanos)
            .map_err(|_| bad("time"))
    };
    let started_at = nanos(next("start")?)?;
    let finished_at = match next("end")? {
        "-" => None,
        t => Some(nanos(t)?),
    };
    let rest = next("name")?;
    let (len, rest) = rest.split_once(':').ok_or_else(|| bad("name"))?;
    let len: usize = len.parse().map_err(|_| bad("name length"))?;
    if !rest.is_char_boundary(len) {
        return Err(bad("name length"));
    }
    let (worker_name, error) = rest.split_at(len);
    let error = match error {
        "" => None,
        json => Some(serde_json::from_str(json).map_err(|e| corrupt("attempt error", e))?),
    };
    Ok(AttemptRecord {
        attempt: muster_shared::ids::Attempt(attempt),
        worker: muster_shared::ids::WorkerId(worker),
        worker_name: worker_name.into(),
        started_at,
        finished_at,
        error,
        backup,
        seq,
    })
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

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use muster_shared::ids::{Attempt, WorkerId};

    use super::*;
    use crate::records::FailReason;

    fn record(name: &str, finished: bool, error: Option<FailReason>) -> AttemptRecord {
        AttemptRecord {
            attempt: Attempt(3),
            worker: WorkerId::new(),
            worker_name: name.into(),
            started_at: Utc::now(),
            finished_at: finished.then(Utc::now),
            error,
            backup: false,
            seq: None,
        }
    }

    fn same(a: &AttemptRecord, b: &AttemptRecord) -> bool {
        serde_json::to_value(a).unwrap() == serde_json::to_value(b).unwrap()
    }

    #[test]
    fn attempt_records_read_back_as_written_in_both_forms() {
        let records = [
            record("w-1", false, None),
            record("näme with spaces: and 1:colons", true, None),
            record(
                "",
                true,
                Some(FailReason::TaskError("bad {input} \"x\"".into())),
            ),
            record("w 2", true, Some(FailReason::WorkerLost)),
            AttemptRecord {
                backup: true,
                ..record("backup", false, None)
            },
            AttemptRecord {
                seq: Some(41),
                ..record("kept", true, None)
            },
            AttemptRecord {
                backup: true,
                seq: Some(0),
                ..record("backup kept", true, None)
            },
        ];
        for r in &records {
            let compact = encode_attempt(r).unwrap();
            assert!(compact.starts_with(COMPACT_ATTEMPT), "{compact}");
            assert!(same(&attempt(&compact).unwrap(), r), "{compact}");
            // Files written before the compact form hold JSON.
            let json = serde_json::to_string(r).unwrap();
            assert!(same(&attempt(&json).unwrap(), r), "{json}");
        }
    }

    #[test]
    fn a_damaged_compact_attempt_record_is_an_error() {
        let good = encode_attempt(&record("worker", true, None)).unwrap();
        for bad in [
            "a1 ",
            "a1 x",
            &good[..good.len() - 3],
            &good.replace(" 6:", " 60:"),
            &good.replace(" 6:", " 6"),
            &good.replacen("a1 3 ", "a1 3#x ", 1),
            &good.replacen("a1 3 ", "a1 3c ", 1),
            &good.replacen("a1 3 ", "a1 3#1b ", 1),
            &format!("{good}{{not json"),
        ] {
            assert!(attempt(bad).is_err(), "{bad}");
        }
    }
}
