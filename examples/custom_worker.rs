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
//!
//! It also runs the built-in tasks (`sum`, `sort`, `wordcount`).

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use muster_worker::cli::{main_with, WorkerArgs};
use muster_worker::{TaskContext, TaskError, Tasks};
use serde::Deserialize;
use serde_json::Value;

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

fn main() -> ExitCode {
    let mut tasks = Tasks::builtin();
    tasks.register("primes", primes);
    tasks.register("nap", nap);
    tasks.register("fail", fail);
    main_with(tasks, WorkerArgs::parse())
}
