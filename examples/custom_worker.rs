//! A worker with custom tasks, built on the `muster-worker` library.
//!
//! Run it against a coordinator, then submit jobs for its tasks:
//! ```text
//! cargo run --example custom_worker -- --scheduler http://127.0.0.1:7070
//! curl -H "Authorization: Bearer $(cat muster-data/client.token)" -d \
//!   '{"task": "primes", "chunks": [{"from": 0, "to": 100000}, {"from": 100000, "to": 200000}], "reduce": "sum"}' \
//!   http://127.0.0.1:7070/v1/jobs
//! ```
//! Tasks:
//! - `primes`: counts the primes in `[from, to)` (CPU-bound; checks for cancellation as it goes).
//! - `nap`: sleeps `ms` milliseconds, then returns `value` (stands in for slow I/O; cancellable).
//!   `NAP_SLOWDOWN=N` in the worker's environment makes its naps N times longer: a slow machine,
//!   for trying speculation.
//! - `fail`: always fails with a retryable error (shows retries and the attempt report).
//! - `fan` (async): submits `children` sub-jobs and waits for them all, its slot free
//!   meanwhile; returns the sum of their results. Each child sums `[value, i]` (a built-in
//!   `sum`), or, with `nap_ms`, naps that long first (a `nap` job), on workers with `labels`.
//!   `fan_blocking` does the same as a plain task, waiting on its blocking thread.
//! - `nest` (async): `{"depth": N}` submits a `nest` of depth N - 1 and waits for it, down to 0,
//!   which naps `nap_ms` in a `nap` job of its own when that is given; returns N. Past the
//!   coordinator's `--max-sub-job-depth` the deepest submission is refused and the whole chain
//!   fails saying so.
//!
//! It also runs the built-in tasks (`sum`, `sort`, `wordcount`).

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use muster_worker::cli::{main_with, WorkerArgs};
use muster_worker::{TaskContext, TaskError, Tasks};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Range {
    from: u64,
    to: u64,
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

fn primes(ctx: &TaskContext, range: Range) -> Result<u64, TaskError> {
    if range.from > range.to {
        return Err(TaskError::permanent(format!(
            "empty range {}..{}",
            range.from, range.to
        )));
    }
    let mut count = 0;
    for n in range.from..range.to {
        if n.is_multiple_of(4096) && ctx.is_cancelled() {
            return Err(ctx.cancelled_error());
        }
        count += u64::from(is_prime(n));
    }
    Ok(count)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Nap {
    ms: u64,
    #[serde(default)]
    value: Value,
}

fn nap(ctx: &TaskContext, nap: Nap) -> Result<Value, TaskError> {
    let slowdown = std::env::var("NAP_SLOWDOWN")
        .ok()
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(1);
    ctx.sleep(Duration::from_millis(nap.ms.saturating_mul(slowdown)))?;
    Ok(nap.value)
}

fn fail(ctx: &TaskContext, _input: Value) -> Result<Value, TaskError> {
    Err(TaskError::retryable(format!(
        "task `fail` fails on purpose (chunk {})",
        ctx.chunk()
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fan {
    children: u32,
    #[serde(default)]
    value: i64,
    #[serde(default)]
    nap_ms: Option<u64>,
    #[serde(default)]
    labels: Value,
}

impl Fan {
    /// Child `i`'s key and job.
    fn child(&self, i: u32) -> (String, Value) {
        let job = match self.nap_ms {
            None => json!({"kind": "sum", "input": [self.value, i]}),
            Some(ms) => json!({"task": "nap", "reduce": "sum", "labels": self.labels,
                "chunks": [{"ms": ms, "value": self.value + i64::from(i)}]}),
        };
        (format!("child-{i}"), job)
    }
}

/// The sum of the children's results.
fn total(ends: Vec<muster_worker::tasks::JobEnded>) -> Result<i64, TaskError> {
    ends.into_iter()
        .map(|end| muster_worker::tasks::result_of::<i64>(Some(end)))
        .sum()
}

async fn fan(ctx: TaskContext, fan: Fan) -> Result<i64, TaskError> {
    let cluster = ctx.cluster()?;
    let mut children = Vec::with_capacity(fan.children as usize);
    for i in 0..fan.children {
        let (key, job) = fan.child(i);
        children.push(cluster.submit(&key, &job).await?);
    }
    total(cluster.wait(&children).await?)
}

/// `fan` as a plain task: it waits on its blocking thread, its slot free all the same.
fn fan_blocking(ctx: &TaskContext, fan: Fan) -> Result<i64, TaskError> {
    let cluster = ctx.cluster()?;
    let children = (0..fan.children)
        .map(|i| {
            let (key, job) = fan.child(i);
            cluster.submit_blocking(&key, &job)
        })
        .collect::<Result<Vec<_>, _>>()?;
    total(cluster.wait_blocking(&children)?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Nest {
    depth: u32,
    #[serde(default)]
    nap_ms: Option<u64>,
}

async fn nest(ctx: TaskContext, nest: Nest) -> Result<u32, TaskError> {
    if nest.depth == 0 {
        if let Some(ms) = nest.nap_ms {
            let job = json!({"task": "nap", "reduce": "sum", "chunks": [{"ms": ms, "value": 0}]});
            ctx.cluster()?.run::<u32>("nap", &job).await?;
        }
        return Ok(0);
    }
    let job = json!({"task": "nest", "reduce": "sum",
        "chunks": [{"depth": nest.depth - 1, "nap_ms": nest.nap_ms}]});
    let below: u32 = ctx.cluster()?.run("deeper", &job).await?;
    Ok(below + 1)
}

fn main() -> ExitCode {
    let mut tasks = Tasks::builtin();
    tasks.register("primes", primes);
    tasks.register("nap", nap);
    tasks.register("fail", fail);
    tasks.register_async("fan", fan);
    tasks.register("fan_blocking", fan_blocking);
    tasks.register_async("nest", nest);
    main_with(tasks, WorkerArgs::parse())
}
