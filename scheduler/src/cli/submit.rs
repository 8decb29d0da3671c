//! `muster submit`: builds a job body from flags and files, submits it, and with `--wait` shows
//! progress on a terminal and prints the result.

use std::path::PathBuf;

use clap::Args;
use serde_json::{json, Map, Value};

use super::client::{block_on, fetch_result, print_json, Client, ClientArgs};
use super::watch::{follow_job, View};
use super::{batch_line, live_line, say, CliError};
use muster_shared::exec::{ExecReport, ItemResult, ItemStatus};

/// Seconds each long-poll waits before the progress bar is refreshed.
const POLL_SECONDS: f64 = 0.5;

/// `muster submit` flags.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Built-in kind: sum, sort, wordcount or exec (omit with --task or --body-file).
    pub kind: Option<String>,
    /// exec: a command (run by `sh -c` here) whose output lines are the items.
    #[arg(long, conflicts_with_all = ["items", "input_file"])]
    pub items_from: Option<String>,
    /// exec: times a batch whose program failed runs again (on another worker where one
    /// exists); a batch that then passes is flaky, and the job still passes.
    #[arg(long)]
    pub retry_failed: Option<u32>,
    /// exec: the key the items' durations are kept under (default: the program).
    #[arg(long)]
    pub timings_key: Option<String>,
    /// Most chunks (for exec, batches: processes) running at once; an exec job's batches are
    /// cut for this many shards.
    #[arg(long)]
    pub shards: Option<u32>,
    /// exec, with --wait: write the batches' JUnit reports, merged, to this file (the program
    /// writes its report where `{junit}` says).
    #[arg(long, requires = "wait")]
    pub junit_out: Option<PathBuf>,
    /// exec: the program and its arguments, after `--`; `{items}` stands for a batch's items.
    #[arg(last = true)]
    pub command: Vec<String>,
    /// Items given inline (numbers or strings; for wordcount, words of the text).
    #[arg(long, num_args = 1.., conflicts_with = "input_file")]
    pub items: Vec<String>,
    /// Input file: a JSON array, or whitespace-separated items; for wordcount, the text itself;
    /// for exec (also as --items-file), one item per line.
    #[arg(long, visible_alias = "items-file")]
    pub input_file: Option<PathBuf>,
    /// Custom task name (with --chunks-file).
    #[arg(long, conflicts_with = "kind")]
    pub task: Option<String>,
    /// JSON file holding the array of chunk inputs of a custom task.
    #[arg(long, requires = "task")]
    pub chunks_file: Option<PathBuf>,
    /// Reducer of a custom task: concat, sum, merge_sorted, count_map or none.
    #[arg(long, requires = "task")]
    pub reduce: Option<String>,
    /// A complete JSON job body (other job flags are refused with it).
    #[arg(long, conflicts_with_all = ["kind", "task", "items", "input_file"])]
    pub body_file: Option<PathBuf>,
    /// Number of chunks.
    #[arg(long)]
    pub chunks: Option<u64>,
    /// Items per chunk (bytes of text for wordcount).
    #[arg(long, conflicts_with = "chunks")]
    pub chunk_size: Option<u64>,
    /// sort: largest first.
    #[arg(long)]
    pub descending: bool,
    /// wordcount: keep the N most frequent words.
    #[arg(long)]
    pub top: Option<u64>,
    /// Runs a chunk gets before the job fails.
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Seconds one chunk attempt may run.
    #[arg(long)]
    pub chunk_timeout: Option<f64>,
    /// Higher runs first.
    #[arg(long)]
    pub priority: Option<i64>,
    /// A label workers must carry, key=value; repeatable.
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Resubmitting with the same key returns the same job.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Wait for the result and print it (progress on a terminal).
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

fn read(path: &PathBuf) -> Result<String, CliError> {
    std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))
}

/// Parses whitespace-separated items: all numbers, or else all strings.
fn items_from_words<'a>(words: impl Iterator<Item = &'a str>) -> Value {
    let words: Vec<&str> = words.collect();
    let numbers: Option<Vec<Value>> = words
        .iter()
        .map(|w| {
            serde_json::from_str::<serde_json::Number>(w)
                .ok()
                .map(Value::Number)
        })
        .collect();
    match numbers {
        Some(n) => Value::Array(n),
        None => Value::Array(
            words
                .iter()
                .map(|w| Value::String((*w).to_owned()))
                .collect(),
        ),
    }
}

impl SubmitArgs {
    /// An exec job's items: `--items`, or the lines of `--input-file` or of the output of
    /// `--items-from` (empty lines skipped).
    fn exec_items(&self) -> Result<Vec<String>, CliError> {
        let lines = |text: &str| -> Vec<String> {
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect()
        };
        if let Some(command) = &self.items_from {
            let out = std::process::Command::new("sh")
                .args(["-c", command])
                .stderr(std::process::Stdio::inherit())
                .output()
                .map_err(|e| {
                    CliError::Usage(format!("cannot run --items-from `{command}`: {e}"))
                })?;
            if !out.status.success() {
                return Err(CliError::Usage(format!(
                    "--items-from `{command}` failed ({})",
                    out.status
                )));
            }
            return Ok(lines(&String::from_utf8_lossy(&out.stdout)));
        }
        match &self.input_file {
            Some(path) => Ok(lines(&read(path)?)),
            None => Ok(self.items.clone()),
        }
    }

    fn body(&self) -> Result<Value, CliError> {
        if let Some(path) = &self.body_file {
            return serde_json::from_str(&read(path)?)
                .map_err(|e| CliError::Usage(format!("{} is not json: {e}", path.display())));
        }
        let mut body = Map::new();
        match (&self.kind, &self.task) {
            (Some(kind), None) if kind == "exec" => {
                body.insert("kind".into(), json!(kind));
                let (program, args) = self.command.split_first().ok_or_else(|| {
                    CliError::Usage(
                        "exec needs the program after `--`: muster submit exec --items ... -- PROGRAM ARG... {items}".into(),
                    )
                })?;
                body.insert("program".into(), json!(program));
                if !args.is_empty() {
                    body.insert("args".into(), json!(args));
                }
                body.insert("input".into(), json!(self.exec_items()?));
                if let Some(n) = self.retry_failed {
                    body.insert("retry_failed".into(), json!(n));
                }
                if let Some(key) = &self.timings_key {
                    body.insert("timings_key".into(), json!(key));
                }
            }
            (Some(_), None) if !self.command.is_empty() => {
                return Err(CliError::Usage(
                    "a program after `--` is for kind exec only".into(),
                ))
            }
            (Some(kind), None) => {
                body.insert("kind".into(), json!(kind));
                let input = match (&self.input_file, kind.as_str()) {
                    (Some(path), "wordcount") => Value::String(read(path)?),
                    (Some(path), _) => {
                        let text = read(path)?;
                        if text.trim_start().starts_with('[') {
                            serde_json::from_str(&text).map_err(|e| {
                                CliError::Usage(format!(
                                    "{} is not a json array: {e}",
                                    path.display()
                                ))
                            })?
                        } else {
                            items_from_words(text.split_whitespace())
                        }
                    }
                    (None, "wordcount") => Value::String(self.items.join(" ")),
                    (None, _) => items_from_words(self.items.iter().map(String::as_str)),
                };
                body.insert("input".into(), input);
            }
            (None, Some(task)) => {
                body.insert("task".into(), json!(task));
                let path = self
                    .chunks_file
                    .as_ref()
                    .ok_or_else(|| CliError::Usage("--task needs --chunks-file".into()))?;
                let chunks: Value = serde_json::from_str(&read(path)?)
                    .map_err(|e| CliError::Usage(format!("{} is not json: {e}", path.display())))?;
                body.insert("chunks".into(), chunks);
                if let Some(r) = &self.reduce {
                    body.insert("reduce".into(), json!(r));
                }
            }
            _ => {
                return Err(CliError::Usage(
                    "give a kind (sum, sort, wordcount), --task NAME or --body-file F".into(),
                ))
            }
        }
        if let Some(n) = self.chunks {
            body.insert("chunks".into(), json!(n));
        }
        if let Some(n) = self.chunk_size {
            body.insert("chunk_size".into(), json!(n));
        }
        if self.descending {
            body.insert("descending".into(), json!(true));
        }
        if let Some(n) = self.top {
            body.insert("top".into(), json!(n));
        }
        if let Some(n) = self.max_attempts {
            body.insert("max_attempts".into(), json!(n));
        }
        if let Some(s) = self.chunk_timeout {
            body.insert("chunk_timeout".into(), json!(s));
        }
        if let Some(p) = self.priority {
            body.insert("priority".into(), json!(p));
        }
        if let Some(n) = self.shards {
            body.insert("max_running".into(), json!(n));
        }
        if !self.labels.is_empty() {
            let mut labels = Map::new();
            for l in &self.labels {
                let (k, v) = l.split_once('=').ok_or_else(|| {
                    CliError::Usage(format!("label `{l}` must look like key=value"))
                })?;
                labels.insert(k.to_owned(), json!(v));
            }
            body.insert("labels".into(), Value::Object(labels));
        }
        Ok(Value::Object(body))
    }
}

/// `muster submit`.
pub fn submit(args: SubmitArgs) -> Result<(), CliError> {
    let body = args.body()?;
    block_on(async move {
        let client = Client::new(&args.client)?;
        let bytes = bytes::Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        let reply = client
            .call(
                awc::http::Method::POST,
                "/v1/jobs",
                Some((bytes, args.idempotency_key.as_deref())),
            )
            .await?;
        if !reply.status.is_success() {
            return Err(CliError::Failed(reply.problem()));
        }
        let id = reply.body["id"].as_str().unwrap_or_default().to_owned();
        if !args.wait {
            if args.client.json {
                print_json(&reply.body)?;
            } else {
                say(&id)?;
            }
            return Ok(());
        }
        if args.kind.as_deref() == Some("exec") && !args.client.json {
            let followed = follow_output(&client, &id).await?;
            let verdict = exec_verdict(&client, &id, !followed).await;
            let ran = !matches!(verdict, Err(CliError::NotRun(_)));
            if let (Some(path), true) = (&args.junit_out, ran) {
                let report = client.get_ok(&format!("/v1/jobs/{id}/junit")).await?;
                std::fs::write(path, report.as_str().unwrap_or_default()).map_err(|e| {
                    CliError::Failed(format!("cannot write {}: {e}", path.display()))
                })?;
            }
            return verdict;
        }
        // The job's stream: a progress bar with ETA on a terminal, retries as they happen.
        follow_job(&client, &id, View::waiting()).await?;
        fetch_result(&client, &id, None, args.client.json).await
    })
}

/// Prints what an exec job's batches print as it comes, each line prefixed by its batch, until
/// the job ends; false when no line was there to follow (the job's lines are no longer kept,
/// say, or it printed nothing).
async fn follow_output(client: &Client, id: &str) -> Result<bool, CliError> {
    let mut after = 0;
    loop {
        let reply = client
            .call(
                awc::http::Method::GET,
                &format!("/v1/jobs/{id}/output?after={after}&wait={POLL_SECONDS}"),
                None,
            )
            .await?;
        if !reply.status.is_success() {
            return Err(CliError::Failed(reply.problem()));
        }
        let missed = reply.body["missed"].as_u64().unwrap_or(0);
        if missed > 0 {
            eprintln!("muster: {missed} lines of output were not kept; `GET /v1/jobs/{id}/logs` has each batch's head and tail");
        }
        let lines = reply.body["lines"].as_array().cloned().unwrap_or_default();
        for line in &lines {
            say(&live_line(line))?;
        }
        after = reply.body["next"].as_u64().unwrap_or(after);
        if lines.is_empty() && reply.body["ended"] == Value::Bool(true) {
            return Ok(after > 0);
        }
    }
}

/// Prints a summary of an exec job's items such as `41 passed, 1 failed, 2 flaky in 1m32s on
/// 4 workers (ideal 1m28s)`, after each batch's output from its report when `outputs` (none was
/// followed live); fails with exit 1 when an item failed, and with exit 2 when the job could
/// not run.
async fn exec_verdict(client: &Client, id: &str, outputs: bool) -> Result<(), CliError> {
    let reply = client
        .call(
            awc::http::Method::GET,
            &format!("/v1/jobs/{id}/result"),
            None,
        )
        .await?;
    if !reply.status.is_success() {
        return Err(CliError::NotRun(reply.problem()));
    }
    let reports: Vec<ExecReport> =
        serde_json::from_value(reply.body["result"].clone()).map_err(|e| {
            CliError::Failed(format!(
                "the exec job's result is not a list of batch reports: {e}"
            ))
        })?;
    if outputs {
        for (i, report) in reports.iter().enumerate() {
            for line in report.output.lines() {
                say(&batch_line(i, line))?;
            }
        }
    }
    let job = client.get_ok(&format!("/v1/jobs/{id}")).await?;
    let summary = exec_summary(&reports, &job);
    let failed: Vec<&str> = reports
        .iter()
        .flat_map(|r| &r.results)
        .filter(|r| r.status == ItemStatus::Failed)
        .map(|r| r.item.as_str())
        .collect();
    if failed.is_empty() {
        return say(&summary);
    }
    let named: Vec<&str> = failed.iter().take(20).copied().collect();
    let more = match failed.len() - named.len() {
        0 => String::new(),
        n => format!(" and {n} more"),
    };
    Err(CliError::Failed(format!(
        "{summary}; failed: {}{more}",
        named.join(" ")
    )))
}

/// `41 passed, 1 failed, 2 flaky in 1m32s on 4 workers (ideal 1m28s)`: the ideal is the items'
/// total time shared evenly among the workers that ran them, or the longest item if longer.
fn exec_summary(reports: &[ExecReport], job: &Value) -> String {
    let results: Vec<&ItemResult> = reports.iter().flat_map(|r| &r.results).collect();
    let counts: Vec<String> = [ItemStatus::Passed, ItemStatus::Failed, ItemStatus::Flaky]
        .into_iter()
        .filter_map(|status| {
            let n = results.iter().filter(|r| r.status == status).count();
            (n > 0 || status == ItemStatus::Passed).then(|| format!("{n} {}", status.name()))
        })
        .collect();
    let workers: std::collections::HashSet<&str> =
        results.iter().map(|r| r.worker.as_str()).collect();
    let total: u64 = results.iter().map(|r| r.duration_ms).sum();
    let longest = results.iter().map(|r| r.duration_ms).max().unwrap_or(0);
    let ideal = (total / workers.len().max(1) as u64).max(longest);
    let time = |key: &str| {
        job[key]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    };
    let took = match (time("started_at"), time("finished_at")) {
        (Some(from), Some(to)) => (to - from).num_milliseconds().max(0) as u64,
        _ => 0,
    };
    format!(
        "{} in {} on {} worker{} (ideal {})",
        counts.join(", "),
        human_ms(took),
        workers.len(),
        if workers.len() == 1 { "" } else { "s" },
        human_ms(ideal)
    )
}

/// `1m32s`, `4.2s`, `35ms`.
fn human_ms(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms}ms"),
        1000..=59_999 => format!("{:.1}s", ms as f64 / 1000.0),
        _ => format!("{}m{:02}s", ms / 60_000, ms / 1000 % 60),
    }
}
