//! The task registry: task names a worker advertises, and the functions that run them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::LocalBoxFuture;
use muster_shared::ids::JobId;
use muster_shared::packed::Packed;
use muster_shared::protocol::ChunkRef;
pub use muster_shared::protocol::JobEnded;
use muster_shared::task::{TaskError, BUILTIN_TASKS};
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

use crate::session::Done;

/// What a running task can see: which chunk it runs, whether it was cancelled, and the
/// cluster it can ask for more work.
#[derive(Debug, Clone)]
pub struct TaskContext {
    chunk: ChunkRef,
    cancelled: Arc<AtomicBool>,
    output: Option<OutputSink>,
    cluster: Option<Cluster>,
}

/// A running task's client for the cluster: it submits sub-jobs, waits for them and cancels
/// them, over its worker's own connection and on the authority of the chunk it runs (see
/// [`TaskContext::cluster`]).
///
/// - A sub-job is submitted under a key, unique within its parent chunk: a retried attempt (its
///   worker died, say) that submits again under the same key gets the job the first attempt
///   made, and that job's result, instead of running it twice.
/// - While a task waits, its slot is free for other chunks (its sub-jobs' among them), and it
///   takes it back when the results are in: a parent waiting on its children never holds up the
///   cluster, even with one slot in all.
/// - A sub-job belongs to its parent job: it is cancelled when the parent job ends. Depth and
///   fan-out are limited by the coordinator.
///
/// Each call has an `async` form, for tasks registered with [`Tasks::register_async`] (thousands
/// of them may wait at once, each costing memory, not a thread), and a `_blocking` one for
/// plain tasks.
#[derive(Debug, Clone)]
pub struct Cluster {
    chunk: ChunkRef,
    tx: UnboundedSender<Done>,
}

/// What a task asks of the cluster, through its session.
#[derive(Debug)]
pub(crate) enum Ask {
    /// Submit a sub-job.
    Submit { key: String, body: Bytes },
    /// Wait for sub-jobs to end.
    Await { jobs: Vec<JobId> },
    /// Cancel a sub-job.
    Cancel { job: JobId },
}

/// The coordinator's answer to an [`Ask`].
#[derive(Debug)]
pub(crate) enum Answer {
    /// To a submission.
    Submitted(Result<JobId, String>),
    /// To a wait.
    Ended(Result<Vec<JobEnded>, String>),
}

impl Cluster {
    fn ask(&self, ask: Ask) -> oneshot::Receiver<Answer> {
        let (reply, answer) = oneshot::channel();
        let _ = self.tx.send(Done::Ask {
            chunk: self.chunk,
            ask,
            reply: Some(reply),
        });
        answer
    }

    fn submission(
        &self,
        key: &str,
        job: &serde_json::Value,
    ) -> Result<oneshot::Receiver<Answer>, TaskError> {
        let body = serde_json::to_vec(job)
            .map_err(|e| TaskError::permanent(format!("the sub-job is not json: {e}")))?;
        Ok(self.ask(Ask::Submit {
            key: key.to_owned(),
            body: Bytes::from(body),
        }))
    }

    /// Submits `job` (a body as `POST /v1/jobs` takes it: a built-in kind or a custom task,
    /// with labels) under `key`; its id.
    pub async fn submit(&self, key: &str, job: &serde_json::Value) -> Result<JobId, TaskError> {
        submitted(self.submission(key, job)?.await)
    }

    /// [`Cluster::submit`] for a plain (blocking) task.
    pub fn submit_blocking(&self, key: &str, job: &serde_json::Value) -> Result<JobId, TaskError> {
        submitted(self.submission(key, job)?.blocking_recv())
    }

    /// Waits until every one of `jobs` (sub-jobs of this task's job) has ended; how each ended,
    /// in the same order. The task's slot is free meanwhile.
    pub async fn wait(&self, jobs: &[JobId]) -> Result<Vec<JobEnded>, TaskError> {
        ended(
            self.ask(Ask::Await {
                jobs: jobs.to_vec(),
            })
            .await,
        )
    }

    /// [`Cluster::wait`] for a plain (blocking) task.
    pub fn wait_blocking(&self, jobs: &[JobId]) -> Result<Vec<JobEnded>, TaskError> {
        ended(
            self.ask(Ask::Await {
                jobs: jobs.to_vec(),
            })
            .blocking_recv(),
        )
    }

    /// Cancels `job`, a sub-job of this task's job.
    pub fn cancel(&self, job: JobId) {
        let _ = self.tx.send(Done::Ask {
            chunk: self.chunk,
            ask: Ask::Cancel { job },
            reply: None,
        });
    }

    /// Submits `job` under `key`, waits for it, and reads its result as a `T`: a sub-job that
    /// failed or was cancelled is this task's permanent error (a retry would find it again).
    pub async fn run<T: DeserializeOwned>(
        &self,
        key: &str,
        job: &serde_json::Value,
    ) -> Result<T, TaskError> {
        let id = self.submit(key, job).await?;
        let mut ends = self.wait(&[id]).await?;
        result_of(ends.pop())
    }

    /// [`Cluster::run`] for a plain (blocking) task.
    pub fn run_blocking<T: DeserializeOwned>(
        &self,
        key: &str,
        job: &serde_json::Value,
    ) -> Result<T, TaskError> {
        let id = self.submit_blocking(key, job)?;
        let mut ends = self.wait_blocking(&[id])?;
        result_of(ends.pop())
    }
}

/// The error of an ask whose answer never came: the connection (or the attempt) went first.
fn unanswered() -> TaskError {
    TaskError::retryable("the coordinator's answer never came: the connection or the attempt ended")
}

fn submitted(answer: Result<Answer, oneshot::error::RecvError>) -> Result<JobId, TaskError> {
    match answer.map_err(|_| unanswered())? {
        Answer::Submitted(result) => result.map_err(TaskError::permanent),
        Answer::Ended(_) => Err(unanswered()),
    }
}

fn ended(answer: Result<Answer, oneshot::error::RecvError>) -> Result<Vec<JobEnded>, TaskError> {
    match answer.map_err(|_| unanswered())? {
        Answer::Ended(result) => result.map_err(TaskError::permanent),
        Answer::Submitted(_) => Err(unanswered()),
    }
}

/// A sub-job's result read as a `T`, or its failure as a permanent error.
pub fn result_of<T: DeserializeOwned>(end: Option<JobEnded>) -> Result<T, TaskError> {
    let end = end.ok_or_else(unanswered)?;
    match (&end.result, end.status.as_str()) {
        (Some(result), "succeeded") => serde_json::from_slice(result).map_err(|e| {
            TaskError::permanent(format!("sub-job {}'s result does not fit: {e}", end.job))
        }),
        _ => Err(TaskError::permanent(format!(
            "sub-job {} {}{}",
            end.job,
            end.status,
            end.error.map(|e| format!(": {e}")).unwrap_or_default()
        ))),
    }
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
        session: Option<UnboundedSender<Done>>,
    ) -> Self {
        Self {
            chunk,
            cancelled,
            output: session.clone().map(|tx| OutputSink { chunk, tx }),
            cluster: session.map(|tx| Cluster { chunk, tx }),
        }
    }

    /// The cluster, for sub-jobs (see [`Cluster`]); an error for a chunk run inline, which
    /// has no session to ask through (only small chunks of the stock built-in tasks are).
    pub fn cluster(&self) -> Result<&Cluster, TaskError> {
        self.cluster
            .as_ref()
            .ok_or_else(|| TaskError::permanent("this attempt runs without a cluster client"))
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

/// An `async` task body: run on the worker's own thread, so it must not block (hand heavy work
/// to a blocking thread); while it waits, it costs memory, not a thread.
pub type AsyncTaskFn = Arc<
    dyn Fn(TaskContext, Bytes) -> LocalBoxFuture<'static, Result<Bytes, TaskError>> + Send + Sync,
>;

/// How a task runs.
#[derive(Clone)]
pub enum TaskBody {
    /// On a blocking thread.
    Blocking(TaskFn),
    /// On the worker's own thread, as a future.
    Async(AsyncTaskFn),
}

/// The tasks a worker can run, by name.
#[derive(Clone, Default)]
pub struct Tasks {
    by_name: HashMap<String, TaskFn>,
    by_name_async: HashMap<String, AsyncTaskFn>,
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
        let task: TaskFn = Arc::new(move |ctx, input| f(ctx, &as_json(input)));
        self.by_name.insert(name.to_owned(), task);
        self.by_name_async.remove(name);
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
            to_json(&task, &output)
        })
    }

    /// Registers a typed `async` task (see [`AsyncTaskFn`]), replacing any task of the same
    /// name: one that waits for sub-jobs without holding a thread.
    pub fn register_async<I, O, F, Fut>(&mut self, name: &str, f: F) -> &mut Self
    where
        I: DeserializeOwned,
        O: Serialize,
        F: Fn(TaskContext, I) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<O, TaskError>> + 'static,
    {
        let task = name.to_owned();
        let f = Arc::new(f);
        let body: AsyncTaskFn = Arc::new(move |ctx, input: Bytes| {
            let (f, task) = (f.clone(), task.clone());
            Box::pin(async move {
                let input: I = serde_json::from_slice(&as_json(&input)).map_err(|e| {
                    TaskError::permanent(format!("chunk does not fit task `{task}`: {e}"))
                })?;
                let output = f(ctx, input).await?;
                to_json(&task, &output)
            })
        });
        self.by_name.remove(name);
        self.bounded.remove(name);
        self.by_name_async.insert(name.to_owned(), body);
        self
    }

    /// The task of that name.
    pub fn get(&self, name: &str) -> Option<TaskBody> {
        match self.by_name.get(name) {
            Some(f) => Some(TaskBody::Blocking(f.clone())),
            None => self.by_name_async.get(name).cloned().map(TaskBody::Async),
        }
    }

    /// The blocking task of that name.
    pub(crate) fn get_blocking(&self, name: &str) -> Option<&TaskFn> {
        self.by_name.get(name)
    }

    /// Whether `name` is a stock built-in task, whose run time its input's size bounds.
    pub(crate) fn is_bounded(&self, name: &str) -> bool {
        self.bounded.contains(name)
    }

    /// Every task name, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .by_name
            .keys()
            .chain(self.by_name_async.keys())
            .cloned()
            .collect();
        names.sort();
        names
    }
}

/// A chunk's input as JSON: a packed integer chunk (a built-in kind's, sent to a task
/// registered under its name) as the array it stands for, anything else as it is.
fn as_json(input: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    match Packed::read(input) {
        Some(run) => std::borrow::Cow::Owned(run.to_json_payload()),
        None => std::borrow::Cow::Borrowed(input),
    }
}

/// `output` as a task's JSON result.
fn to_json<O: Serialize>(task: &str, output: &O) -> Result<Bytes, TaskError> {
    serde_json::to_vec(output)
        .map(Bytes::from)
        .map_err(|e| TaskError::permanent(format!("result of task `{task}` is not json: {e}")))
}
