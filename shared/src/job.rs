//! The job request body: parsed raw (unknown fields refused), then validated into a [`JobSpec`].

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::reduce::Reducer;
use crate::split::{chunk_count, split};

/// Attempts a chunk gets when the job does not say.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Upper bound on `max_attempts`, so a typo cannot keep a failing chunk cycling for ever.
pub const MAX_MAX_ATTEMPTS: u32 = 100;
/// Upper bound on the number of chunks one job may ask for.
pub const MAX_CHUNKS: u64 = 10_000_000;

/// Why a job request was refused; the message names the field at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct InvalidJob(pub String);

fn invalid(msg: impl Into<String>) -> InvalidJob {
    InvalidJob(msg.into())
}

/// The job body as sent; every field optional so that validation can say precisely what is wrong.
#[derive(Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = JobRequest))]
#[serde(deny_unknown_fields)]
pub struct RawJob {
    /// Built-in kind: `sum`, `sort` or `wordcount`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Custom task name (with explicit `chunks`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// Input of a built-in kind, as JSON text: big integer arrays are checked and cut without
    /// ever becoming a value tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<serde_json::Value>))]
    pub input: Option<Box<RawValue>>,
    /// The text of an `input` that looked like an integer array, found without parsing it (see
    /// [`crate::body`]); used instead of `input` when set.
    #[serde(skip)]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub int_input: Option<crate::ints::IntArray>,
    /// The text of a `chunks` array, as a slice of the request body (see [`crate::body`]); used
    /// instead of `chunks` when set, so that chunk payloads share the body's buffer.
    #[serde(skip)]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub chunks_text: Option<Bytes>,
    /// A chunk count (built-in kinds) or the explicit chunk list (custom tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<serde_json::Value>))]
    pub chunks: Option<Box<RawValue>>,
    /// Elements per chunk (built-in kinds; bytes of text for `wordcount`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>))]
    pub chunk_size: Option<Value>,
    /// `sort` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub descending: Option<bool>,
    /// `wordcount` only: keep the N most frequent words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>))]
    pub top: Option<Value>,
    /// Custom tasks only: how partial results are merged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reduce: Option<String>,
    /// Runs a chunk gets before the job fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u32>))]
    pub max_attempts: Option<Value>,
    /// Seconds one chunk attempt may run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<f64>))]
    pub chunk_timeout: Option<Value>,
    /// Labels a worker must carry to run this job's chunks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Higher runs first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<i64>))]
    pub priority: Option<Value>,
    /// `exec` only: the program to run, as the workers' allowlists name it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,
    /// `exec` only: its arguments, `{items}` standing for a batch's items (default: just them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// `exec` only: times a batch whose program failed runs again (on another worker where one
    /// exists); one that then passes is flaky.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u32>))]
    pub retry_failed: Option<Value>,
    /// `exec` only: the key its items' durations are kept under (default: the program).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings_key: Option<String>,
    /// Most chunks of the job running at once (default: as many as there are free slots); for
    /// `exec`, the shards its batches are cut for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u32>))]
    pub max_running: Option<Value>,
    /// Backup copies of straggling chunks in the job's tail, the first to finish winning
    /// (default true; not for `exec`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speculation: Option<bool>,
}

/// A built-in job kind with its options.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// Exact integer sum.
    Sum,
    /// Stable sort of numbers or strings.
    Sort {
        /// Largest first.
        descending: bool,
    },
    /// Word frequencies.
    Wordcount {
        /// Keep only the N most frequent words.
        top: Option<usize>,
    },
}

impl Kind {
    /// The kind's name as submitted.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Sum => "sum",
            Kind::Sort { .. } => "sort",
            Kind::Wordcount { .. } => "wordcount",
        }
    }

    /// The chunk task that runs this kind on workers.
    pub fn task(&self) -> &'static str {
        self.name()
    }

    /// The reducer that merges this kind's partial results.
    pub fn reducer(&self) -> Reducer {
        match *self {
            Kind::Sum => Reducer::Sum,
            Kind::Sort { descending } => Reducer::MergeSorted { descending },
            Kind::Wordcount { top } => Reducer::CountMap { top },
        }
    }
}

/// How a built-in input is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunking {
    /// Exactly this many chunks (fewer when the input is shorter).
    Count(u64),
    /// This many elements per chunk (bytes of text for `wordcount`).
    Size(u64),
    /// Let the coordinator pick from the connected capacity.
    Auto,
}

/// What a job computes.
#[derive(Debug, Clone)]
pub enum Work {
    /// A built-in kind over an input cut into chunks when the job was validated.
    Builtin {
        /// Which kind, with its options.
        kind: Kind,
        /// One payload per chunk: packed integers (see [`crate::packed`]) or JSON.
        chunks: Vec<Bytes>,
    },
    /// A named task over explicit chunks.
    Custom {
        /// Task name workers advertise.
        task: String,
        /// One JSON payload per chunk, cut from the request text as it was sent.
        chunks: Vec<Bytes>,
        /// How partial results are merged.
        reduce: Reducer,
    },
}

/// A built-in kind's input other than an integer array (those are cut by
/// [`crate::ints::pack_chunks`]), checked for the element type the kind needs.
#[derive(Debug, Clone)]
pub enum Input {
    /// `sort`: numbers or strings (never mixed).
    Items(Vec<Value>),
    /// `wordcount`: text.
    Text(String),
}

impl Input {
    /// Number of splittable units: elements, or bytes of text.
    pub fn len(&self) -> usize {
        match self {
            Input::Items(v) => v.len(),
            Input::Text(s) => s.len(),
        }
    }

    /// True when there is nothing to split.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A validated job.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// What to compute.
    pub work: Work,
    /// Runs a chunk gets before the job fails.
    pub max_attempts: u32,
    /// How long one attempt may run before it is abandoned and retried.
    pub chunk_timeout: Option<Duration>,
    /// Labels a worker must carry.
    pub labels: BTreeMap<String, String>,
    /// Higher runs first.
    pub priority: i64,
    /// `exec`: times a batch whose program failed runs again (0: a failure is final).
    pub retry_failed: u32,
    /// `exec`: the key its items' durations are kept under (`None` for other jobs).
    pub timings_key: Option<String>,
    /// `exec`: the items before they were cut, for balancing by duration.
    pub exec: Option<crate::exec::ExecPlan>,
    /// Most chunks running at once.
    pub max_running: Option<u32>,
    /// Backup copies of stragglers in the job's tail.
    pub speculation: bool,
}

/// Largest `max_running`.
pub const MAX_RUNNING: u64 = 1_000_000;

/// Most reruns `retry_failed` may ask for.
pub const MAX_RETRY_FAILED: u64 = 10;

impl JobSpec {
    /// The `kind` or `task` name shown in status.
    pub fn name(&self) -> &str {
        match &self.work {
            Work::Builtin { kind, .. } => kind.name(),
            Work::Custom { task, .. } => task,
        }
    }

    /// The task workers must advertise to run this job's chunks.
    pub fn task(&self) -> &str {
        match &self.work {
            Work::Builtin { kind, .. } => kind.task(),
            Work::Custom { task, .. } => task,
        }
    }

    /// True for a built-in kind, false for a custom task.
    pub fn is_builtin(&self) -> bool {
        matches!(self.work, Work::Builtin { .. })
    }
}

fn positive_int(field: &str, v: &Value, max: u64) -> Result<u64, InvalidJob> {
    match v.as_u64() {
        Some(n) if n >= 1 && n <= max => Ok(n),
        _ => Err(invalid(format!(
            "`{field}` must be an integer from 1 to {max}, got {v}"
        ))),
    }
}

fn refuse_option(present: bool, field: &str, kind: &str) -> Result<(), InvalidJob> {
    if present {
        return Err(invalid(format!("`{field}` does not apply to {kind}")));
    }
    Ok(())
}

impl RawJob {
    /// Checks every field and builds the job, its input cut into chunks (`slots`, the connected
    /// capacity, sets the chunk count when the job leaves it open); the error names the first
    /// field at fault.
    pub fn validate(self, slots: u64) -> Result<JobSpec, InvalidJob> {
        let max_attempts = match &self.max_attempts {
            None => DEFAULT_MAX_ATTEMPTS,
            Some(v) => positive_int("max_attempts", v, MAX_MAX_ATTEMPTS as u64)? as u32,
        };
        let chunk_timeout = match &self.chunk_timeout {
            None => None,
            Some(v) => match v.as_f64() {
                Some(s) if s > 0.0 && s <= 7.0 * 86_400.0 => Some(Duration::from_secs_f64(s)),
                _ => {
                    return Err(invalid(format!(
                        "`chunk_timeout` must be a number of seconds above 0 and at most a week, got {v}"
                    )))
                }
            },
        };
        let priority = match &self.priority {
            None => 0,
            Some(v) => v
                .as_i64()
                .ok_or_else(|| invalid(format!("`priority` must be an integer, got {v}")))?,
        };
        let labels = self.labels.clone().unwrap_or_default();
        check_labels(&labels)?;
        let timings_key = match (&self.timings_key, self.kind.as_deref()) {
            (Some(_), kind) if kind != Some("exec") => {
                return Err(invalid("`timings_key` applies to kind exec only"))
            }
            (Some(k), _) if k.is_empty() || k.len() > 256 => {
                return Err(invalid("`timings_key` must be 1 to 256 bytes"))
            }
            (Some(k), _) => Some(k.clone()),
            (None, Some("exec")) => self.program.clone(),
            (None, _) => None,
        };
        let retry_failed = match &self.retry_failed {
            None => 0,
            Some(_) if self.kind.as_deref() != Some("exec") => {
                return Err(invalid("`retry_failed` applies to kind exec only"))
            }
            Some(v) => match v.as_u64() {
                Some(n) if n <= MAX_RETRY_FAILED => n as u32,
                _ => {
                    return Err(invalid(format!(
                        "`retry_failed` must be an integer from 0 to {MAX_RETRY_FAILED}, got {v}"
                    )))
                }
            },
        };
        let max_running = match &self.max_running {
            None => None,
            Some(v) => Some(positive_int("max_running", v, MAX_RUNNING)? as u32),
        };
        let speculation = self.speculation;
        // The slots a job is cut for: no more than it may use at once.
        let slots = max_running.map_or(slots, |m| slots.min(u64::from(m)));
        let mut exec = None;
        let work = match (&self.kind, &self.task) {
            (Some(_), Some(_)) => {
                return Err(invalid("give either `kind` or `task`, not both"));
            }
            (None, None) => {
                return Err(invalid(
                    "missing `kind` (sum, sort, wordcount) or `task` (with explicit `chunks`)",
                ));
            }
            (Some(kind), None) if kind == "exec" => {
                let (work, plan) = self.exec(slots)?;
                exec = Some(plan);
                work
            }
            (Some(kind), None) => {
                let kind = kind.clone();
                let mut this = self;
                let input = this.input.take();
                this.builtin(&kind, input, slots)?
            }
            (None, Some(task)) => self.custom(task)?,
        };
        // On by default, but for exec batches.
        let speculation = match (speculation, exec.is_some()) {
            (Some(true), true) => {
                return Err(invalid(
                    "`speculation` is not offered for exec jobs: a batch's program may not be safe to run twice at once",
                ))
            }
            (Some(asked), _) => asked,
            (None, exec) => !exec,
        };
        Ok(JobSpec {
            work,
            max_attempts,
            chunk_timeout,
            labels,
            priority,
            retry_failed,
            timings_key,
            exec,
            max_running,
            speculation,
        })
    }

    fn builtin(
        &self,
        kind: &str,
        input: Option<Box<RawValue>>,
        slots: u64,
    ) -> Result<Work, InvalidJob> {
        refuse_option(self.reduce.is_some(), "reduce", "built-in kinds")?;
        refuse_option(self.program.is_some(), "program", "this kind (only exec)")?;
        refuse_option(self.args.is_some(), "args", "this kind (only exec)")?;
        let kind = match kind {
            "sum" => Kind::Sum,
            "sort" => Kind::Sort {
                descending: self.descending.unwrap_or(false),
            },
            "wordcount" => Kind::Wordcount {
                top: match &self.top {
                    None => None,
                    Some(v) => Some(positive_int("top", v, u32::MAX as u64)? as usize),
                },
            },
            other => {
                return Err(invalid(format!(
                    "unknown kind `{other}`: expected sum, sort, wordcount or exec (or a custom `task`)"
                )))
            }
        };
        refuse_option(
            self.descending.is_some() && kind.name() != "sort",
            "descending",
            kind.name(),
        )?;
        refuse_option(
            self.top.is_some() && kind.name() != "wordcount",
            "top",
            kind.name(),
        )?;
        let chunks: Option<Value> = match (&self.chunks_text, self.chunks.as_deref()) {
            // Set aside only when it is an array, which is all that matters here.
            (Some(_), _) => Some(Value::Array(Vec::new())),
            (None, raw) => raw
                .map(|raw| serde_json::from_str(raw.get()).map_err(|e| invalid(e.to_string())))
                .transpose()?,
        };
        let chunking = match (&chunks, &self.chunk_size) {
            (Some(_), Some(_)) => return Err(invalid("give either `chunks` or `chunk_size`, not both")),
            (Some(Value::Array(_)), None) => {
                return Err(invalid(
                    "explicit `chunks` need a custom `task`; built-in kinds take `input` and a chunk count",
                ))
            }
            (Some(v), None) => Chunking::Count(positive_int("chunks", v, MAX_CHUNKS)?),
            (None, Some(v)) => Chunking::Size(positive_int("chunk_size", v, u64::MAX >> 1)?),
            (None, None) => Chunking::Auto,
        };
        let text: &[u8] = match (&self.int_input, &input) {
            (Some(ints), _) => ints.text(),
            (None, Some(raw)) => raw.get().as_bytes(),
            (None, None) => {
                return Err(invalid(format!("missing `input` for kind {}", kind.name())))
            }
        };
        let descending = matches!(kind, Kind::Sort { descending: true });
        if matches!(kind, Kind::Sum | Kind::Sort { .. }) {
            let count = |len| chunk_count(len, chunking, slots);
            let packed = match &self.int_input {
                Some(ints) => ints.pack_chunks(count, descending),
                // Only when the body's shortcut could not read it (an escaped key, say).
                None => crate::ints::pack_chunks(&Bytes::copy_from_slice(text), count, descending),
            };
            if let Ok(chunks) = packed {
                return Ok(Work::Builtin { kind, chunks });
            }
        }
        // Errors and other element types take the slow path, which names what is wrong.
        let value: Value = serde_json::from_slice(text).map_err(|e| invalid(e.to_string()))?;
        let input = match &kind {
            Kind::Sum => return Err(int_array_error(&value)),
            Kind::Sort { .. } => Input::Items(sortable_array(&value)?),
            Kind::Wordcount { .. } => match value {
                Value::String(s) => Input::Text(s),
                other => {
                    return Err(invalid(format!(
                        "`input` of wordcount must be a string, got {}",
                        type_name(&other)
                    )))
                }
            },
        };
        let chunks = split(&kind, &input, chunking, slots);
        Ok(Work::Builtin { kind, chunks })
    }

    /// An `exec` job: the program runs on workers that allow it, over batches of the `input`
    /// items; the result is the array of the batches' reports.
    fn exec(&self, slots: u64) -> Result<(Work, crate::exec::ExecPlan), InvalidJob> {
        use crate::exec::{task_name, ExecPlan, ITEMS};
        refuse_option(self.reduce.is_some(), "reduce", "exec")?;
        refuse_option(self.descending.is_some(), "descending", "exec")?;
        refuse_option(self.top.is_some(), "top", "exec")?;
        let program = self
            .program
            .clone()
            .ok_or_else(|| invalid("missing `program` for kind exec"))?;
        if program.is_empty() || program.len() > 120 || program.contains('\0') {
            return Err(invalid(
                "`program` must be a program name or path of 1 to 120 bytes",
            ));
        }
        let args = self.args.clone().unwrap_or_else(|| vec![ITEMS.to_owned()]);
        if !args.iter().any(|a| a == ITEMS) {
            return Err(invalid(format!(
                "`args` must hold `{ITEMS}`, where a batch's items go"
            )));
        }
        if args.iter().any(|a| a.contains('\0')) {
            return Err(invalid("`args` must not hold NUL bytes"));
        }
        let input = self
            .input
            .as_deref()
            .ok_or_else(|| invalid("missing `input` for kind exec: the items to run"))?;
        let items: Vec<String> = serde_json::from_str(input.get()).map_err(|_| {
            invalid("`input` of exec must be an array of strings (the items to run)")
        })?;
        if items.is_empty() {
            return Err(invalid("`input` of exec must not be empty"));
        }
        if let Some(i) = items
            .iter()
            .position(|item| item.is_empty() || item.contains('\0'))
        {
            return Err(invalid(format!(
                "`input[{i}]` must be a non-empty item without NUL bytes"
            )));
        }
        let chunking = match (self.chunks.as_deref(), &self.chunk_size) {
            (Some(_), Some(_)) => {
                return Err(invalid("give either `chunks` or `chunk_size`, not both"))
            }
            (Some(raw), None) => {
                let v: Value =
                    serde_json::from_str(raw.get()).map_err(|e| invalid(e.to_string()))?;
                Chunking::Count(positive_int("chunks", &v, MAX_CHUNKS)?)
            }
            (None, Some(v)) => Chunking::Size(positive_int("chunk_size", v, u64::MAX >> 1)?),
            (None, None) => Chunking::Auto,
        };
        let n = chunk_count(items.len(), chunking, slots);
        let plan = ExecPlan {
            program: program.clone(),
            args,
            items,
            balance: chunking == Chunking::Auto,
        };
        let len = plan.items.len();
        let chunks = (0..n)
            .map(|i| plan.payload(plan.items[i * len / n..(i + 1) * len / n].to_vec()))
            .collect();
        let work = Work::Custom {
            task: task_name(&program),
            chunks,
            reduce: Reducer::Concat,
        };
        Ok((work, plan))
    }

    fn custom(&self, task: &str) -> Result<Work, InvalidJob> {
        if task.is_empty() || task.len() > 128 {
            return Err(invalid("`task` must be a name of 1 to 128 characters"));
        }
        refuse_option(
            self.program.is_some(),
            "program",
            "custom tasks (only exec)",
        )?;
        refuse_option(self.args.is_some(), "args", "custom tasks (only exec)")?;
        refuse_option(
            self.input.is_some() || self.int_input.is_some(),
            "input",
            "custom tasks (give `chunks`)",
        )?;
        refuse_option(self.chunk_size.is_some(), "chunk_size", "custom tasks")?;
        refuse_option(self.descending.is_some(), "descending", "custom tasks")?;
        refuse_option(self.top.is_some(), "top", "custom tasks")?;
        let text = match (&self.chunks_text, self.chunks.as_deref()) {
            (Some(text), _) => text.clone(),
            (None, Some(raw)) => Bytes::copy_from_slice(raw.get().as_bytes()),
            (None, None) => return Err(invalid("missing `chunks` for custom task")),
        };
        // Each chunk is a slice of the request text as it is: no value tree, no copy.
        let chunks: Vec<Bytes> = match serde_json::from_slice::<Vec<&RawValue>>(&text) {
            Ok(items) if !items.is_empty() => items
                .into_iter()
                .map(|c| text.slice_ref(c.get().as_bytes()))
                .collect(),
            Ok(_) => return Err(invalid("`chunks` must not be empty")),
            Err(_) => {
                let other: Value =
                    serde_json::from_slice(&text).map_err(|e| invalid(e.to_string()))?;
                return Err(invalid(format!(
                    "`chunks` of a custom task must be an array of chunk inputs, got {}",
                    type_name(&other)
                )));
            }
        };
        if chunks.len() as u64 > MAX_CHUNKS {
            return Err(invalid(format!(
                "`chunks` may hold at most {MAX_CHUNKS} chunks"
            )));
        }
        let reduce = match self.reduce.as_deref() {
            None => Reducer::None,
            Some(name) => Reducer::parse(name).ok_or_else(|| {
                invalid(format!(
                    "unknown reduce `{name}`: expected concat, sum, merge_sorted, count_map or none"
                ))
            })?,
        };
        Ok(Work::Custom {
            task: task.to_owned(),
            chunks,
            reduce,
        })
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Says which element of a `sum` input is not a 64-bit integer.
fn int_array_error(input: &Value) -> InvalidJob {
    let Some(items) = input.as_array() else {
        return invalid(format!(
            "`input` of sum must be an array of integers, got {}",
            type_name(input)
        ));
    };
    match items.iter().position(|v| v.as_i64().is_none()) {
        Some(i) => invalid(format!(
            "`input[{i}]` must be an integer that fits in 64 bits, got {}",
            items[i]
        )),
        None => invalid("`input` of sum must be an array of integers"),
    }
}

fn sortable_array(input: &Value) -> Result<Vec<Value>, InvalidJob> {
    let items = input.as_array().ok_or_else(|| {
        invalid(format!(
            "`input` of sort must be an array of numbers or of strings, got {}",
            type_name(input)
        ))
    })?;
    let want_strings = matches!(items.first(), Some(Value::String(_)));
    for (i, v) in items.iter().enumerate() {
        let ok = if want_strings {
            v.is_string()
        } else {
            v.is_number()
        };
        if !ok {
            let expected = if want_strings { "a string" } else { "a number" };
            return Err(invalid(format!(
                "`input[{i}]` must be {expected} like input[0], got {}",
                type_name(v)
            )));
        }
    }
    Ok(items.clone())
}

/// Refuses more than [`MAX_LABELS`](crate::protocol::MAX_LABELS) labels, or a key or value longer
/// than [`MAX_NAME_BYTES`](crate::protocol::MAX_NAME_BYTES): labels are kept with the job and shown
/// in every listing of it.
fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), InvalidJob> {
    use crate::protocol::{MAX_LABELS, MAX_NAME_BYTES};
    if labels.len() > MAX_LABELS {
        return Err(invalid(format!(
            "`labels` may hold at most {MAX_LABELS} labels, got {}",
            labels.len()
        )));
    }
    match labels
        .iter()
        .find(|(k, v)| k.is_empty() || k.len() > MAX_NAME_BYTES || v.len() > MAX_NAME_BYTES)
    {
        Some((k, v)) => {
            let key: String = k.chars().take(32).collect();
            Err(invalid(format!(
                "label `{key}`: keys must be 1 to {MAX_NAME_BYTES} bytes and values at most {MAX_NAME_BYTES} (got {} and {})",
                k.len(),
                v.len()
            )))
        }
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<JobSpec, InvalidJob> {
        serde_json::from_value::<RawJob>(v)
            .map_err(|e| InvalidJob(e.to_string()))?
            .validate(1)
    }

    #[test]
    fn speculation_is_on_by_default_but_for_exec_which_refuses_it() {
        let on = |v: Value| parse(v).map(|spec| spec.speculation);
        assert_eq!(on(json!({"kind": "sum", "input": [1]})), Ok(true));
        assert_eq!(
            on(json!({"kind": "sum", "input": [1], "speculation": false})),
            Ok(false)
        );
        let exec = json!({"kind": "exec", "program": "p", "input": ["a"]});
        assert_eq!(on(exec.clone()), Ok(false));
        let mut asked = exec;
        asked["speculation"] = json!(true);
        let err = parse(asked).unwrap_err();
        assert!(err.0.contains("not offered for exec"), "{err}");
    }

    #[test]
    fn too_many_or_too_long_labels_are_refused() {
        let many: BTreeMap<String, String> = (0..=crate::protocol::MAX_LABELS)
            .map(|i| (i.to_string(), "x".into()))
            .collect();
        let err = parse(json!({"kind": "sum", "input": [1], "labels": many})).unwrap_err();
        assert!(err.0.contains("at most 64 labels"), "{err}");
        let long = "v".repeat(crate::protocol::MAX_NAME_BYTES + 1);
        let err =
            parse(json!({"kind": "sum", "input": [1], "labels": {"zone": long}})).unwrap_err();
        assert!(err.0.contains("label `zone`"), "{err}");
        let ok = parse(json!({"kind": "sum", "input": [1], "labels": {"zone": "a"}}));
        assert!(ok.is_ok());
    }

    #[test]
    fn an_exec_job_cuts_its_items_into_batches_for_the_programs_task() {
        let spec = parse(
            json!({"kind": "exec", "program": "pytest", "args": ["-q", "{items}"],
            "input": ["a", "b", "c", "d", "e"], "chunks": 2}),
        )
        .unwrap();
        let Work::Custom {
            task,
            chunks,
            reduce,
        } = &spec.work
        else {
            panic!("an exec job runs as the program's task");
        };
        assert_eq!((task.as_str(), *reduce), ("exec:pytest", Reducer::Concat));
        let batches: Vec<crate::exec::ExecBatch> = chunks
            .iter()
            .map(|c| serde_json::from_slice(c).unwrap())
            .collect();
        let items: Vec<Vec<String>> = batches.iter().map(|b| b.items.clone()).collect();
        assert_eq!(items, [vec!["a", "b"], vec!["c", "d", "e"]]);
        for (body, says) in [
            (json!({"kind": "exec", "input": ["a"]}), "missing `program`"),
            (
                json!({"kind": "exec", "program": "p", "args": ["x"], "input": ["a"]}),
                "{items}",
            ),
            (
                json!({"kind": "exec", "program": "p", "input": []}),
                "must not be empty",
            ),
            (
                json!({"kind": "exec", "program": "p", "input": [1]}),
                "array of strings",
            ),
            (
                json!({"kind": "sum", "program": "p", "input": [1]}),
                "`program`",
            ),
            (
                json!({"kind": "sum", "input": [1], "retry_failed": 1}),
                "exec only",
            ),
            (
                json!({"kind": "exec", "program": "p", "input": ["a"], "retry_failed": 11}),
                "from 0 to 10",
            ),
            (
                json!({"kind": "sum", "input": [1], "max_running": 0}),
                "`max_running`",
            ),
        ] {
            let err = parse(body).unwrap_err();
            assert!(err.0.contains(says), "{err}");
        }
    }

    #[test]
    fn zero_chunks_is_refused() {
        let err = parse(json!({"kind": "sum", "input": [1], "chunks": 0})).unwrap_err();
        assert!(err.0.contains("`chunks`"), "{err}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = parse(json!({"kind": "sum", "input": [1], "chunkz": 2})).unwrap_err();
        assert!(err.0.contains("chunkz"), "{err}");
    }

    #[test]
    fn mixed_sort_input_names_the_element() {
        let err = parse(json!({"kind": "sort", "input": [1, "a"]})).unwrap_err();
        assert!(err.0.contains("input[1]"), "{err}");
    }

    #[test]
    fn custom_task_defaults_to_no_reduce() {
        let spec = parse(json!({"task": "t", "chunks": [1, 2]})).unwrap();
        assert!(matches!(
            spec.work,
            Work::Custom {
                reduce: Reducer::None,
                ..
            }
        ));
        assert_eq!(spec.max_attempts, DEFAULT_MAX_ATTEMPTS);
    }

    #[test]
    fn options_of_other_kinds_are_refused() {
        assert!(parse(json!({"kind": "sum", "input": [1], "top": 3})).is_err());
        assert!(parse(json!({"kind": "wordcount", "input": "a", "descending": true})).is_err());
    }
}
