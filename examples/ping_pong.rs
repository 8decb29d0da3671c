//! Computers that ask each other: workers labelled `role=a` run sums, workers labelled `role=b`
//! run sorts, and each asks the other for work through sub-jobs.
//!
//! - `ping` (run it on A workers): asks B for a `pong` of its numbers, and answers with what
//!   came back plus the total.
//! - `pong` (B workers): sorts its numbers, then asks A for the sums of the sorted halves (two
//!   built-in `sum` jobs for `role=a` workers), and answers with the sorted list and the sums.
//!
//! Both are `async` tasks: while one waits for its sub-jobs, its slot is free for other chunks,
//! so the whole exchange runs with one slot per worker, and a parent's retry (its worker died)
//! finds the sub-jobs its first attempt submitted instead of running them again.
//!
//! ```text
//! muster serve &
//! cargo run --example ping_pong -- --scheduler http://127.0.0.1:7070 --label role=a --slots 1 &
//! cargo run --example ping_pong -- --scheduler http://127.0.0.1:7070 --label role=b --slots 1 &
//! echo '{"task": "ping", "labels": {"role": "a"}, "reduce": "none", "chunks": [[5, 3, 9, 1], [8, 2, 7]]}' > ping.json
//! muster submit --wait --body-file ping.json
//! ```
//! Each chunk's answer: `{"sorted": [1, 3, 5, 9], "sums": [4, 14], "total": 18}`.

use std::process::ExitCode;

use clap::Parser;
use muster_worker::cli::{main_with, WorkerArgs};
use muster_worker::{TaskContext, TaskError, Tasks};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// What `pong` answers, and `ping` with the total.
#[derive(Debug, Serialize, Deserialize)]
struct Sorted {
    sorted: Vec<i64>,
    sums: [i64; 2],
    #[serde(default, skip_serializing_if = "Option::is_none")]
    total: Option<i64>,
}

/// On an A worker: B sorts, A sums the halves, and this adds the sums up.
async fn ping(ctx: TaskContext, numbers: Vec<i64>) -> Result<Sorted, TaskError> {
    let cluster = ctx.cluster()?;
    let job =
        json!({"task": "pong", "labels": {"role": "b"}, "reduce": "none", "chunks": [numbers]});
    let [mut answer]: [Sorted; 1] = cluster.run("pong", &job).await?;
    answer.total = Some(answer.sums[0] + answer.sums[1]);
    Ok(answer)
}

/// On a B worker: sorts, then asks A for the sums of both halves at once.
async fn pong(ctx: TaskContext, mut numbers: Vec<i64>) -> Result<Sorted, TaskError> {
    let cluster = ctx.cluster()?;
    numbers.sort_unstable();
    let (low, high) = numbers.split_at(numbers.len() / 2);
    let sum = |half: &[i64]| json!({"kind": "sum", "input": half, "labels": {"role": "a"}});
    let halves = [
        cluster.submit("low", &sum(low)).await?,
        cluster.submit("high", &sum(high)).await?,
    ];
    let mut ends = cluster.wait(&halves).await?.into_iter();
    let low = muster_worker::tasks::result_of::<i64>(ends.next())?;
    let high = muster_worker::tasks::result_of::<i64>(ends.next())?;
    Ok(Sorted {
        sorted: numbers,
        sums: [low, high],
        total: None,
    })
}

fn main() -> ExitCode {
    let mut tasks = Tasks::builtin();
    tasks.register_async("ping", ping);
    tasks.register_async("pong", pong);
    main_with(tasks, WorkerArgs::parse())
}
