//! What `exec` batches print while they run, kept per job in a bounded buffer of numbered lines
//! for clients that follow a job (`GET /v1/jobs/{id}/output`). Each batch's report keeps its
//! output for good; this buffer is for watching: the oldest lines of a job go past
//! [`MAX_JOB_BYTES`], and ended jobs' lines go once more than [`MAX_ENDED_LOGS`] have ended.

use std::collections::{HashMap, VecDeque};

use muster_shared::ids::{ChunkIndex, JobId};
use serde::Serialize;

/// Most bytes of lines kept per job.
pub const MAX_JOB_BYTES: usize = 4 << 20;

/// Most ended jobs whose lines are kept (for followers reading the last lines).
pub const MAX_ENDED_LOGS: usize = 32;

/// Most bytes of lines one read returns.
const MAX_READ_BYTES: usize = 1 << 20;

/// One line a batch printed.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LiveLine {
    /// Its number in the job's output, from 0.
    pub seq: u64,
    /// The batch that printed it.
    pub batch: ChunkIndex,
    /// The line, without its end.
    pub text: String,
}

/// Lines after a given number.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LiveRead {
    /// The lines, in order.
    pub lines: Vec<LiveLine>,
    /// The number to read after next time.
    pub next: u64,
    /// Lines asked for that are no longer kept.
    pub missed: u64,
}

#[derive(Debug, Default)]
struct LiveLog {
    lines: VecDeque<LiveLine>,
    bytes: usize,
    next: u64,
}

/// Every job's lines.
#[derive(Debug, Default)]
pub struct LiveLogs {
    logs: HashMap<JobId, LiveLog>,
    ended: VecDeque<JobId>,
}

impl LiveLogs {
    /// Adds what `batch` of `job` printed, split into lines.
    pub fn append(&mut self, job: JobId, batch: ChunkIndex, text: &str) {
        let log = self.logs.entry(job).or_default();
        for line in text.strip_suffix('\n').unwrap_or(text).split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            log.bytes += line.len();
            log.lines.push_back(LiveLine {
                seq: log.next,
                batch,
                text: line.to_owned(),
            });
            log.next += 1;
        }
        while log.bytes > MAX_JOB_BYTES {
            match log.lines.pop_front() {
                Some(old) => log.bytes -= old.text.len(),
                None => break,
            }
        }
    }

    /// The lines of `job` numbered `after` and on.
    pub fn read(&self, job: JobId, after: u64) -> LiveRead {
        let Some(log) = self.logs.get(&job) else {
            return LiveRead {
                next: after,
                ..LiveRead::default()
            };
        };
        let first = log.lines.front().map_or(log.next, |l| l.seq);
        let from = after.max(first);
        let mut bytes = 0;
        let lines: Vec<LiveLine> = log
            .lines
            .iter()
            .skip((from - first) as usize)
            .take_while(|l| {
                // The first line goes whatever its length, so that a read always moves on.
                let first = bytes == 0;
                bytes += l.text.len() + 1;
                first || bytes <= MAX_READ_BYTES
            })
            .cloned()
            .collect();
        LiveRead {
            next: lines.last().map_or(from.min(log.next), |l| l.seq + 1),
            missed: from
                .saturating_sub(after)
                .min(log.next.saturating_sub(after)),
            lines,
        }
    }

    /// The text `batch` of `job` printed, as far as it is kept.
    pub fn batch_text(&self, job: JobId, batch: ChunkIndex) -> String {
        let Some(log) = self.logs.get(&job) else {
            return String::new();
        };
        let mut text = String::new();
        for line in log.lines.iter().filter(|l| l.batch == batch) {
            text.push_str(&line.text);
            text.push('\n');
        }
        text
    }

    /// The batches of `job` with lines kept, in order.
    pub fn batches(&self, job: JobId) -> Vec<ChunkIndex> {
        let mut batches: Vec<ChunkIndex> = self
            .logs
            .get(&job)
            .map(|log| log.lines.iter().map(|l| l.batch).collect())
            .unwrap_or_default();
        batches.sort_unstable();
        batches.dedup();
        batches
    }

    /// `job` ended: its lines stay until more than [`MAX_ENDED_LOGS`] others ended after it.
    pub fn end(&mut self, job: JobId) {
        if !self.logs.contains_key(&job) {
            return;
        }
        self.ended.push_back(job);
        while self.ended.len() > MAX_ENDED_LOGS {
            if let Some(old) = self.ended.pop_front() {
                self.logs.remove(&old);
            }
        }
    }

    /// Forgets `job`'s lines.
    pub fn remove(&mut self, job: JobId) {
        self.logs.remove(&job);
        self.ended.retain(|j| *j != job);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_numbered_read_after_a_number_and_the_oldest_go_past_the_cap() {
        let mut logs = LiveLogs::default();
        let job = JobId::new();
        logs.append(job, ChunkIndex(0), "one\ntwo\r\n");
        logs.append(job, ChunkIndex(1), "three");
        let read = logs.read(job, 1);
        let texts: Vec<&str> = read.lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["two", "three"]);
        assert_eq!((read.next, read.missed), (3, 0));
        assert_eq!(logs.read(job, 3).lines.len(), 0);
        assert_eq!(logs.read(job, 3).next, 3);
        assert_eq!(logs.batch_text(job, ChunkIndex(0)), "one\ntwo\n");
        let big = "x".repeat(MAX_JOB_BYTES / 2);
        logs.append(job, ChunkIndex(0), &format!("{big}\n{big}\n{big}"));
        let read = logs.read(job, 0);
        assert_eq!(read.missed, 4);
        assert_eq!(read.lines[0].seq, 4);
        // A read is bounded; the next one goes on where it stopped.
        assert_eq!(read.lines.len(), 1);
        assert_eq!(logs.read(job, read.next).lines[0].seq, 5);
    }

    #[test]
    fn only_the_latest_ended_jobs_keep_their_lines() {
        let mut logs = LiveLogs::default();
        let jobs: Vec<JobId> = (0..MAX_ENDED_LOGS + 1).map(|_| JobId::new()).collect();
        for job in &jobs {
            logs.append(*job, ChunkIndex(0), "line");
            logs.end(*job);
        }
        assert!(logs.read(jobs[0], 0).lines.is_empty());
        assert_eq!(logs.read(jobs[1], 0).lines.len(), 1);
    }
}
