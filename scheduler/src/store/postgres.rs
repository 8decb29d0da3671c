//! The scale-out store: PostgreSQL shared by several coordinators, one of which leads.
//!
//! Every write transaction ends by reading the leadership row `FOR SHARE` and checking that it still
//! holds the epoch it was elected with ([`crate::leader`]), then commits. A deposed leader that wakes
//! up therefore fails its first write with [`StoreError::Fenced`] and stops; a takeover (which
//! updates that row) either commits first, and the check fails, or waits the moment it takes to
//! commit, so the new leader's first read sees every write of the old one. Taking the lock last keeps
//! it for the commit only, so a long write never delays the lease renewal.
//!
//! The `postgres` client blocks and must not be created on an async runtime, so the connection lives
//! on the writer thread (see `writer`), which also group-commits.

use bytes::Bytes;
use postgres::{Client, Transaction};

use super::rows::{self, Pending};
use super::writer::{Backend, InsertJob, Op, Writer};
use super::{Snapshot, Store, StoreError, StoredChunk, StoredJob, Timing};

/// Tables shared by the store and the leader lease.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS muster_leader (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    holder     TEXT NOT NULL,
    address    TEXT NOT NULL,
    epoch      BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
INSERT INTO muster_leader VALUES (1, '', '', 0, 'epoch') ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS muster_jobs (
    id          TEXT PRIMARY KEY,
    meta        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    end_kind    TEXT,
    end_text    TEXT,
    finished_at TEXT
);
CREATE TABLE IF NOT EXISTS muster_chunks (
    job_id TEXT NOT NULL,
    idx    INTEGER NOT NULL,
    input  BYTEA NOT NULL,
    result BYTEA,
    PRIMARY KEY (job_id, idx)
);
CREATE TABLE IF NOT EXISTS muster_attempts (
    job_id  TEXT NOT NULL,
    idx     INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    record  TEXT NOT NULL,
    PRIMARY KEY (job_id, idx, attempt)
);
CREATE TABLE IF NOT EXISTS muster_timings (
    key  TEXT NOT NULL,
    item TEXT NOT NULL,
    ms   BIGINT NOT NULL,
    PRIMARY KEY (key, item)
);
CREATE TABLE IF NOT EXISTS muster_idempotency (
    key    TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    digest BYTEA NOT NULL
);
";

/// What every connection runs first: a session that stops mid-transaction (a frozen process) is
/// ended by the server, so it cannot hold the leadership row and block a takeover; the tables
/// are created if needed, under a lock, since concurrent `CREATE TABLE IF NOT EXISTS` can race
/// on the catalog.
pub fn setup_sql() -> String {
    format!(
        "SET client_min_messages = warning; SET idle_in_transaction_session_timeout = '2s'; BEGIN; SELECT pg_advisory_xact_lock(7070); {SCHEMA} COMMIT;"
    )
}

/// Connects (over TLS as the URL says) and sets the session up with [`setup_sql`].
pub fn connect(url: &str) -> Result<Client, StoreError> {
    let mut client = super::pg_tls::connect(url).map_err(|e| {
        let why = match e {
            StoreError::Other(why) => why,
            fenced => fenced.to_string(),
        };
        StoreError::Other(format!("cannot connect to {}: {why}", redact(url)))
    })?;
    client.batch_execute(&setup_sql())?;
    Ok(client)
}

/// The URL without a password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}@{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// The PostgreSQL connection the writer thread owns, with the epoch it leads with.
struct Postgres {
    client: Client,
    epoch: i64,
}

/// Connects for a coordinator that leads with `epoch` and starts the writer thread.
pub fn open(url: &str, epoch: i64) -> Result<Box<dyn Store>, StoreError> {
    let url = url.to_owned();
    let writer = Writer::start("postgres", move || {
        Ok(Postgres {
            client: connect(&url)?,
            epoch,
        })
    })?;
    Ok(Box::new(writer))
}

/// Commits `tx` if this coordinator still leads with epoch `held`; rolls it back otherwise.
fn commit_fenced(mut tx: Transaction<'_>, held: i64) -> Result<(), StoreError> {
    let current: i64 = tx
        .query_one(
            "SELECT epoch FROM muster_leader WHERE id = 1 FOR SHARE",
            &[],
        )?
        .get(0);
    if current != held {
        return Err(StoreError::Fenced { held, current });
    }
    tx.commit()?;
    Ok(())
}

fn insert(tx: &mut Transaction<'_>, job: &InsertJob) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO muster_jobs (id, meta, created_at) VALUES ($1, $2, $3)",
        &[&job.id, &job.meta, &job.created_at],
    )?;
    // One statement for all chunks: a round trip per chunk would make big jobs slow to accept.
    let indexes: Vec<i32> = (0..job.inputs.len() as i32).collect();
    let inputs: Vec<&[u8]> = job.inputs.iter().map(|b| &b[..]).collect();
    tx.execute(
        "INSERT INTO muster_chunks (job_id, idx, input) \
         SELECT $1, idx, input FROM UNNEST($2::int4[], $3::bytea[]) AS c(idx, input)",
        &[&job.id, &indexes, &inputs],
    )?;
    if let Some((key, digest)) = &job.idempotency {
        tx.execute(
            "INSERT INTO muster_idempotency (key, job_id, digest) VALUES ($1, $2, $3)",
            &[key, &job.id, digest],
        )?;
    }
    Ok(())
}

/// Applies queued writes with one statement per kind of write, not one per write: attempts (the
/// last record of each attempt wins), then partial results, then job ends.
fn apply(tx: &mut Transaction<'_>, ops: &[&Pending]) -> Result<(), StoreError> {
    let mut attempts: std::collections::BTreeMap<(&str, i32, i32), &str> = Default::default();
    let (mut result_jobs, mut result_idx, mut results) = (Vec::new(), Vec::new(), Vec::new());
    let mut finishes = Vec::new();
    for op in ops {
        match op {
            Pending::Attempt {
                job,
                chunk,
                attempt,
                record,
            } => {
                attempts.insert((&**job, *chunk as i32, *attempt as i32), record.as_str());
            }
            Pending::Result {
                job,
                chunk,
                result,
                ended,
            } => {
                result_jobs.push(&**job);
                result_idx.push(*chunk as i32);
                results.push(&result[..]);
                if let Some((attempt, record)) = ended {
                    attempts.insert((&**job, *chunk as i32, *attempt as i32), record.as_str());
                }
            }
            Pending::Finish { .. } => finishes.push(*op),
        }
    }
    if !attempts.is_empty() {
        let (mut jobs, mut idx, mut nums, mut records) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for ((job, chunk, attempt), record) in attempts {
            jobs.push(job);
            idx.push(chunk);
            nums.push(attempt);
            records.push(record);
        }
        tx.execute(
            "INSERT INTO muster_attempts (job_id, idx, attempt, record) \
             SELECT * FROM UNNEST($1::text[], $2::int4[], $3::int4[], $4::text[]) \
             ON CONFLICT (job_id, idx, attempt) DO UPDATE SET record = EXCLUDED.record",
            &[&jobs, &idx, &nums, &records],
        )?;
    }
    if !results.is_empty() {
        tx.execute(
            "UPDATE muster_chunks AS c SET result = r.result \
             FROM UNNEST($1::text[], $2::int4[], $3::bytea[]) AS r(job_id, idx, result) \
             WHERE c.job_id = r.job_id AND c.idx = r.idx",
            &[&result_jobs, &result_idx, &results],
        )?;
    }
    for op in finishes {
        if let Pending::Finish {
            job,
            kind,
            text,
            at,
        } = op
        {
            tx.execute(
                "UPDATE muster_jobs SET end_kind = $2, end_text = $3, finished_at = $4 WHERE id = $1",
                &[&&**job, kind, text, at],
            )?;
        }
    }
    Ok(())
}

impl Backend for Postgres {
    fn write(&mut self, ops: &[Op]) -> Result<(), StoreError> {
        let mut tx = self.client.transaction()?;
        let mut writes = Vec::with_capacity(ops.len());
        // New jobs first: every other write in the batch concerns a job whose insert was handed
        // over before it was made, so it can only be in this batch or an earlier one.
        for op in ops {
            match op {
                Op::Insert(job) => insert(&mut tx, job)?,
                Op::Write(pending) => writes.push(pending),
                Op::Timings(timings) => {
                    for t in timings {
                        tx.execute(
                            "INSERT INTO muster_timings (key, item, ms) VALUES ($1, $2, $3) \
                             ON CONFLICT (key, item) DO UPDATE SET ms = excluded.ms",
                            &[&t.key, &t.item, &(t.ms as i64)],
                        )?;
                    }
                }
            }
        }
        apply(&mut tx, &writes)?;
        commit_fenced(tx, self.epoch)
    }

    fn prune(&mut self, jobs: &[String]) -> Result<(), StoreError> {
        let mut tx = self.client.transaction()?;
        tx.batch_execute("SET LOCAL synchronous_commit = off")?;
        for table in ["muster_chunks", "muster_attempts", "muster_idempotency"] {
            tx.execute(
                &format!("DELETE FROM {table} WHERE job_id = ANY($1)"),
                &[&jobs],
            )?;
        }
        tx.execute("DELETE FROM muster_jobs WHERE id = ANY($1)", &[&jobs])?;
        commit_fenced(tx, self.epoch)
    }

    fn drop_inputs(&mut self, jobs: &[String]) -> Result<(), StoreError> {
        let mut tx = self.client.transaction()?;
        // Not worth waiting for the disk: a restart finds the job finished either way.
        tx.batch_execute("SET LOCAL synchronous_commit = off")?;
        // Partial results stay: a succeeded job's result is merged from them on restart.
        tx.execute(
            "UPDATE muster_chunks SET input = ''::bytea WHERE job_id = ANY($1)",
            &[&jobs],
        )?;
        commit_fenced(tx, self.epoch)
    }

    fn load(&mut self) -> Result<Snapshot, StoreError> {
        let mut tx = self.client.transaction()?;
        let mut snapshot = Snapshot::default();
        let jobs = tx.query(
                "SELECT id, meta, created_at, end_kind, end_text, finished_at FROM muster_jobs ORDER BY id",
                &[],
            )?;
        let chunks =
            tx.prepare("SELECT input, result FROM muster_chunks WHERE job_id = $1 ORDER BY idx")?;
        let attempts = tx.prepare(
            "SELECT idx, record FROM muster_attempts WHERE job_id = $1 ORDER BY idx, attempt",
        )?;
        for row in jobs {
            let id: String = row.get(0);
            let mut stored: Vec<StoredChunk> = tx
                .query(&chunks, &[&id])?
                .into_iter()
                .map(|c| StoredChunk {
                    input: Bytes::from(c.get::<_, Vec<u8>>(0)),
                    result: c.get::<_, Option<Vec<u8>>>(1).map(Bytes::from),
                    attempts: Vec::new(),
                })
                .collect();
            for a in tx.query(&attempts, &[&id])? {
                let idx: i32 = a.get(0);
                let record: String = a.get(1);
                if let Some(chunk) = stored.get_mut(idx as usize) {
                    chunk.attempts.push(rows::attempt(&record)?);
                }
            }
            snapshot.jobs.push(StoredJob {
                id: rows::job_id(&id)?,
                meta: rows::meta(&row.get::<_, String>(1))?,
                created_at: rows::time(&row.get::<_, String>(2))?,
                end: rows::end(row.get(3), row.get(4), row.get(5))?,
                chunks: stored,
            });
        }
        for row in tx.query("SELECT key, job_id, digest FROM muster_idempotency", &[])? {
            let job: String = row.get(1);
            snapshot
                .idempotency
                .push((row.get(0), rows::job_id(&job)?, rows::digest(row.get(2))?));
        }
        for row in tx.query("SELECT key, item, ms FROM muster_timings", &[])? {
            snapshot.timings.push(Timing {
                key: row.get(0),
                item: row.get(1),
                ms: u64::try_from(row.get::<_, i64>(2)).unwrap_or(0),
            });
        }
        commit_fenced(tx, self.epoch)?;
        Ok(snapshot)
    }
}
