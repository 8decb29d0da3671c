//! Running `exec` batches: the programs on the worker's allowlist, each run as argv (never
//! through a shell), in a clean environment, in its own process group and a scratch directory,
//! with its output captured up to a cap.
//!
//! - **Allowlist.** Only programs given with `--allow-exec` run; each is advertised as the task
//!   `exec:PROGRAM`, so the coordinator sends a program's batches only to workers that allow it.
//! - **Environment.** `PATH`, `HOME` and `LANG` as the worker has them, plus the names allowed with
//!   `--exec-env`; nothing else of the worker's (its token included) reaches the program.
//! - **Directory.** `--exec-dir` (a checkout), else the attempt's scratch directory, which is
//!   removed afterwards either way.
//! - **Process group.** The program runs in a process group of its own, started by the worker's
//!   long-lived `muster-exec-guard` (see [`crate::exec_guard`]); when it ends, or the attempt is
//!   cancelled (a cancel, a chunk timeout, a drain), the whole group is ended: SIGTERM, then
//!   SIGKILL after a grace period, so no grandchild outlives the batch. The guard ends every group
//!   it started when the worker dies, even by SIGKILL. A program ended by a signal reports exit
//!   code 128 + its number.
//! - **Output.** Standard output and error are read as they come; the first and the last half of
//!   the cap are kept and the middle is counted, so a program that prints without end costs the
//!   worker at most the cap. Whole lines also go to the coordinator as they come (for clients
//!   that follow the job), up to the cap per attempt.

use std::collections::VecDeque;
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use muster_shared::exec::{task_name, ExecBatch, ExecReport, MAX_JUNIT_BYTES};
use muster_shared::task::TaskError;
use rustix::process::Signal;

use crate::exec_guard::{self, Spawn, StartError};
use crate::tasks::{OutputSink, TaskContext, Tasks};

/// Environment variables every program gets, as the worker has them.
const BASE_ENV: [&str; 3] = ["PATH", "HOME", "LANG"];

/// How often a running program's attempt is checked for a cancel (its end is seen at once: a
/// thread waits for it).
const POLL: Duration = Duration::from_millis(5);

/// What a worker lets `exec` batches do.
#[derive(Debug, Clone)]
pub struct ExecSettings {
    /// Programs it runs (names looked up in `PATH`, or paths).
    pub allow: Vec<String>,
    /// Where programs run; `None`: each attempt's scratch directory.
    pub dir: Option<PathBuf>,
    /// Environment variables passed on besides `PATH`, `HOME` and `LANG`.
    pub env: Vec<String>,
    /// Output kept per attempt, in bytes (half from the start, half from the end).
    pub output_cap: usize,
    /// Between SIGTERM and SIGKILL when a batch is stopped.
    pub grace: Duration,
}

impl Default for ExecSettings {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            dir: None,
            env: Vec::new(),
            output_cap: 1 << 20,
            grace: Duration::from_secs(2),
        }
    }
}

impl Tasks {
    /// Registers the task `exec:PROGRAM` for every program `settings` allows.
    pub fn with_exec(mut self, settings: &ExecSettings) -> Self {
        if !settings.allow.is_empty() {
            exec_guard::warm();
        }
        for program in &settings.allow {
            let program = program.clone();
            let settings = settings.clone();
            let name = task_name(&program);
            self.register(&name, move |ctx: &TaskContext, batch: ExecBatch| {
                run(ctx, &program, &settings, batch)
            });
        }
        self
    }
}

/// Output read so far: a head, a tail, and what was cut between them.
#[derive(Debug, Default)]
struct Capture {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    cut: u64,
}

impl Capture {
    fn push(&mut self, bytes: &[u8], cap: usize) {
        let head_room = (cap / 2).saturating_sub(self.head.len());
        let (to_head, rest) = bytes.split_at(head_room.min(bytes.len()));
        self.head.extend_from_slice(to_head);
        let keep = cap - cap / 2;
        self.tail.extend(rest);
        while self.tail.len() > keep {
            let over = self.tail.len() - keep;
            self.tail.drain(..over);
            self.cut += over as u64;
        }
    }

    fn text(&self) -> String {
        let mut out = String::from_utf8_lossy(&self.head).into_owned();
        if self.cut > 0 {
            out.push_str(&format!("\n[... {} bytes of output cut ...]\n", self.cut));
        }
        let tail: Vec<u8> = self.tail.iter().copied().collect();
        out.push_str(&String::from_utf8_lossy(&tail));
        out
    }
}

/// Longest piece of a line forwarded live without its end.
const LIVE_PIECE: usize = 64 * 1024;

/// Output forwarded to the coordinator as it comes, whole lines at a time, until the attempt's
/// streams have used up a budget they share (the output cap): past it, the batch's report
/// still keeps the head and tail.
struct Live {
    sink: OutputSink,
    budget: Arc<AtomicUsize>,
    pending: Vec<u8>,
}

impl Live {
    fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        let end = match self.pending.iter().rposition(|b| *b == b'\n') {
            Some(i) => i + 1,
            None if self.pending.len() >= LIVE_PIECE => self.pending.len(),
            None => return,
        };
        let piece: Vec<u8> = self.pending.drain(..end).collect();
        self.forward(&piece);
    }

    fn forward(&mut self, piece: &[u8]) {
        let before = self
            .budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                Some(left.saturating_sub(piece.len()))
            })
            .unwrap_or(0);
        let granted = before.min(piece.len());
        if granted == 0 {
            return;
        }
        let mut text = String::from_utf8_lossy(&piece[..granted]).into_owned();
        if granted < piece.len() {
            text.push_str(
                "\n[muster: live output stops here, over the output cap; the batch's report keeps the head and tail]\n",
            );
        }
        self.sink.send(text);
    }

    fn finish(mut self) {
        let rest = std::mem::take(&mut self.pending);
        if !rest.is_empty() {
            self.forward(&rest);
        }
    }
}

/// Reads `source` to its end into `capture`, forwarding it to `live` as it comes.
fn drain(mut source: impl Read, capture: Arc<Mutex<Capture>>, cap: usize, mut live: Option<Live>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match source.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                capture
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(&buf[..n], cap);
                if let Some(live) = live.as_mut() {
                    live.push(&buf[..n]);
                }
            }
        }
    }
    if let Some(live) = live {
        live.finish();
    }
}

/// Runs one batch of `program`; a program that ran and failed is a report, not an error.
fn run(
    ctx: &TaskContext,
    program: &str,
    settings: &ExecSettings,
    batch: ExecBatch,
) -> Result<ExecReport, TaskError> {
    if batch.program != program {
        return Err(TaskError::permanent(format!(
            "this task runs `{program}`, not `{}`",
            batch.program
        )));
    }
    let scratch = tempfile::Builder::new()
        .prefix("muster-exec-")
        .tempdir()
        .map_err(|e| TaskError::retryable(format!("cannot make a scratch directory: {e}")))?;
    let junit_path = scratch.path().join("junit.xml");
    let spawn = Spawn {
        program: program.into(),
        args: batch
            .argv(&junit_path.to_string_lossy())
            .into_iter()
            .map(Into::into)
            .collect(),
        env: BASE_ENV
            .iter()
            .copied()
            .chain(settings.env.iter().map(String::as_str))
            .filter_map(|name| Some((name.into(), std::env::var_os(name)?)))
            .collect(),
        dir: settings
            .dir
            .clone()
            .unwrap_or_else(|| scratch.path().to_path_buf()),
    };
    let pipes = |what: &str| {
        std::io::pipe()
            .map_err(|e| TaskError::retryable(format!("cannot make a pipe for {what}: {e}")))
    };
    let (out_read, out_write) = pipes("standard output")?;
    let (err_read, err_write) = pipes("standard error")?;
    let started = Instant::now();
    let started_program =
        exec_guard::start(&spawn, out_write.into(), err_write.into()).map_err(|e| match e {
            StartError::Program(e) => {
                TaskError::permanent(format!("cannot start `{program}`: {e}"))
            }
            StartError::Guard(e) => TaskError::retryable(e),
        })?;
    let group = started_program.pid;
    let capture = Arc::new(Mutex::new(Capture::default()));
    let cap = settings.output_cap;
    let budget = Arc::new(AtomicUsize::new(cap));
    let readers: Vec<_> = [out_read, err_read]
        .into_iter()
        .map(|source| {
            let capture = capture.clone();
            let live = ctx.output().map(|sink| Live {
                sink,
                budget: budget.clone(),
                pending: Vec::new(),
            });
            std::thread::spawn(move || drain(source, capture, cap, live))
        })
        .collect();
    let mut stopping: Option<Instant> = None;
    let status = loop {
        match started_program.ended_within(POLL) {
            Ok(status) => break Some(status),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break None,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        match stopping {
            None if ctx.is_cancelled() => {
                exec_guard::signal(group, Signal::TERM);
                stopping = Some(Instant::now());
            }
            Some(at) if at.elapsed() >= settings.grace => {
                exec_guard::signal(group, Signal::KILL);
            }
            _ => {}
        }
    };
    // Whatever the program left running in its group goes with it, so the pipes close too.
    exec_guard::signal(group, Signal::KILL);
    for reader in readers {
        let _ = reader.join();
    }
    let duration_ms = started.elapsed().as_millis() as u64;
    if stopping.is_some() {
        return Err(ctx.cancelled_error());
    }
    let status =
        status.ok_or_else(|| TaskError::retryable(format!("lost track of `{program}`")))?;
    let mut capture = capture.lock().unwrap_or_else(|p| p.into_inner());
    let junit = match std::fs::metadata(&junit_path) {
        Ok(meta) if batch.wants_junit() && meta.len() > MAX_JUNIT_BYTES => {
            let note = format!(
                "\n[muster: the JUnit report of {} bytes is over the {MAX_JUNIT_BYTES} kept, and was left out]\n",
                meta.len()
            );
            capture.push(note.as_bytes(), cap);
            None
        }
        Ok(_) if batch.wants_junit() => std::fs::read(&junit_path)
            .ok()
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
        _ => None,
    };
    Ok(ExecReport {
        items: batch.items,
        exit_code: status.code(),
        signal: std::os::unix::process::ExitStatusExt::signal(&status),
        duration_ms,
        output: capture.text(),
        output_cut: capture.cut,
        failed_runs: 0,
        flaky: false,
        junit,
        results: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capture_keeps_its_head_and_tail_and_counts_the_middle() {
        let mut c = Capture::default();
        for chunk in (0u8..100).collect::<Vec<_>>().chunks(7) {
            c.push(chunk, 20);
        }
        assert_eq!(c.head, (0..10).collect::<Vec<u8>>());
        assert_eq!(
            c.tail.iter().copied().collect::<Vec<u8>>(),
            (90..100).collect::<Vec<u8>>()
        );
        assert_eq!(c.cut, 80);
    }
}
