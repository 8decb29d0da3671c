//! The task registry: task names a worker advertises, and the functions that run them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use muster_shared::packed::Packed;
use muster_shared::protocol::ChunkRef;
use muster_shared::task::{TaskError, BUILTIN_TASKS};
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::mpsc::UnboundedSender;

use crate::session::Done;

/// What a running task can see: which chunk it runs and whether it was cancelled.
#[derive(Debug, Clone)]
pub struct TaskContext {
    chunk: ChunkRef,
    cancelled: Arc<AtomicBool>,
    output: Option<OutputSink>,
}

/// Sends a running attempt's output to the coordinator as it comes (see
/// [`TaskContext::output`]).
#[derive(Debug, Clone)]
pub struct OutputSink {
    chunk: ChunkRef,
    tx: UnboundedSender<Done>,
}

impl OutputSink {
    /// Sends `text`; nothing happens once the session has gone.
    pub fn send(&self, text: String) {
        let _ = self.tx.send(Done::Output(self.chunk, text));
    }
}

impl TaskContext {
    pub(crate) fn new(
        chunk: ChunkRef,
        cancelled: Arc<AtomicBool>,
        output: Option<UnboundedSender<Done>>,
    ) -> Self {
        Self {
            chunk,
            cancelled,
            output: output.map(|tx| OutputSink { chunk, tx }),
        }
    }

    /// Where the attempt's output goes live, when the session takes it (an attempt run inline
    /// has none).
    pub fn output(&self) -> Option<OutputSink> {
        self.output.clone()
    }

    /// The attempt being run.
    pub fn chunk(&self) -> ChunkRef {
        self.chunk
    }

    /// True once the coordinator cancelled this attempt; long tasks should check it and return.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// An error for a task that stops because it was cancelled.
    pub fn cancelled_error(&self) -> TaskError {
        TaskError::retryable(format!("chunk {} was cancelled", self.chunk))
    }

    /// Sleeps for `duration`, waking early (with an error) if the attempt is cancelled.
    pub fn sleep(&self, duration: Duration) -> Result<(), TaskError> {
        const STEP: Duration = Duration::from_millis(10);
        let mut left = duration;
        while !left.is_zero() {
            if self.is_cancelled() {
                return Err(self.cancelled_error());
            }
            let step = left.min(STEP);
            std::thread::sleep(step);
            left -= step;
        }
        Ok(())
    }
}

/// A task body: JSON chunk payload in, JSON partial result out.
pub type TaskFn = Arc<dyn Fn(&TaskContext, &[u8]) -> Result<Bytes, TaskError> + Send + Sync>;

/// The tasks a worker can run, by name.
#[derive(Clone, Default)]
pub struct Tasks {
    by_name: HashMap<String, TaskFn>,
    /// Tasks whose run time is bounded by their input's size (the stock built-ins): a small
    /// chunk of one runs in microseconds.
    bounded: HashSet<String>,
}

impl std::fmt::Debug for Tasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl Tasks {
    /// No tasks at all.
    pub fn empty() -> Self {
        Self::default()
    }

    /// The chunk tasks of the built-in job kinds (`sum`, `sort`, `wordcount`).
    pub fn builtin() -> Self {
        let mut tasks = Self::empty();
        for &(name, f) in BUILTIN_TASKS {
            // The built-in tasks read packed integer chunks themselves.
            tasks
                .by_name
                .insert(name.to_owned(), Arc::new(move |_ctx, input| f(input)));
            tasks.bounded.insert(name.to_owned());
        }
        tasks
    }

    /// Registers a task over raw JSON bytes, replacing any task of the same name. A packed
    /// integer chunk (a built-in kind's chunk sent to a task registered under its name) is
    /// handed over as the JSON array it stands for.
    pub fn register_raw<F>(&mut self, name: &str, f: F) -> &mut Self
    where
        F: Fn(&TaskContext, &[u8]) -> Result<Bytes, TaskError> + Send + Sync + 'static,
    {
        let task: TaskFn = Arc::new(move |ctx, input| match Packed::read(input) {
            Some(run) => f(ctx, &run.to_json_payload()),
            None => f(ctx, input),
        });
        self.by_name.insert(name.to_owned(), task);
        self.bounded.remove(name);
        self
    }

    /// Registers a typed task: the chunk is deserialized into `I` (a chunk that does not fit is a
    /// permanent error) and the `O` it returns is serialized as the partial result.
    pub fn register<I, O, F>(&mut self, name: &str, f: F) -> &mut Self
    where
        I: DeserializeOwned,
        O: Serialize,
        F: Fn(&TaskContext, I) -> Result<O, TaskError> + Send + Sync + 'static,
    {
        let task = name.to_owned();
        self.register_raw(name, move |ctx, input| {
            let input: I = serde_json::from_slice(input).map_err(|e| {
                TaskError::permanent(format!("chunk does not fit task `{task}`: {e}"))
            })?;
            let output = f(ctx, input)?;
            serde_json::to_vec(&output).map(Bytes::from).map_err(|e| {
                TaskError::permanent(format!("result of task `{task}` is not json: {e}"))
            })
        })
    }

    /// The task of that name.
    pub fn get(&self, name: &str) -> Option<&TaskFn> {
        self.by_name.get(name)
    }

    /// Whether `name` is a stock built-in task, whose run time its input's size bounds.
    pub(crate) fn is_bounded(&self, name: &str) -> bool {
        self.bounded.contains(name)
    }

    /// Every task name, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.by_name.keys().cloned().collect();
        names.sort();
        names
    }
}
