//! Muster's benchmark: runs workloads through the real stack (a coordinator process, worker
//! processes, REST on 127.0.0.1) and prints a table plus one machine-readable line per workload.
//!
//! ```text
//! cargo build --release --workspace --bins --examples
//! ./target/release/examples/bench --workload W1 --store memory,sqlite,postgres
//! ```
//! Workloads:
//! - `W1`: one job of 20,000 tiny chunks (`{"task": "sum", "chunks": [[10 integers], ...]}`), two
//!   workers of one slot; the figure is chunks per second from submit to merged result.
//!
//! Each workload runs 3 times per store; the median is reported. Correctness is checked on every
//! run. `postgres` starts a throwaway server from the system's binaries (see the test harness).

use std::time::Instant;

use clap::Parser;
use muster_suite::{bin, Coordinator, Postgres, Proc};
use rand::{Rng, SeedableRng};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(about = "Muster benchmark")]
struct Args {
    /// Workloads to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "W1")]
    workload: Vec<String>,
    /// Stores to run them on, comma-separated: memory, sqlite, postgres.
    #[arg(long, value_delimiter = ',', default_value = "sqlite")]
    store: Vec<String>,
    /// Runs per workload and store.
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

/// One measured run: the figure, and whether the result was right.
struct Run {
    value: f64,
    correct: bool,
}

fn w1(coordinator: &Coordinator, seed: u64) -> Run {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let chunks: Vec<Vec<i64>> = (0..20_000)
        .map(|_| (0..10).map(|_| rng.gen_range(0..1_000_000)).collect())
        .collect();
    let expected: i64 = chunks.iter().flatten().sum();
    let body = json!({"task": "sum", "chunks": chunks, "reduce": "sum"});
    let api = coordinator.api();
    let start = Instant::now();
    let id = api.submit(&body);
    let result = api.result(&id);
    let secs = start.elapsed().as_secs_f64();
    Run {
        value: 20_000.0 / secs,
        correct: result == json!(expected),
    }
}

fn cluster(store: &str, pg: &mut Option<Postgres>) -> (Coordinator, Vec<Proc>) {
    let store_arg = match store {
        "postgres" => pg.get_or_insert_with(Postgres::start).url(),
        other => other.to_owned(),
    };
    let coordinator = Coordinator::start_with(&["--store", &store_arg]);
    let workers = (1..=2)
        .map(|i| coordinator.worker_with(bin("muster-worker"), &format!("bench-{i}"), 1, &[]))
        .collect();
    (coordinator, workers)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let args = Args::parse();
    let mut pg: Option<Postgres> = None;
    let mut lines = Vec::new();
    println!("workload  store             median unit           runs");
    for workload in &args.workload {
        for store in &args.store {
            let (coordinator, _workers) = cluster(store, &mut pg);
            let runs: Vec<Run> = (0..args.runs)
                .map(|i| match workload.as_str() {
                    "W1" => w1(&coordinator, i as u64),
                    other => panic!("unknown workload {other}"),
                })
                .collect();
            let correct = runs.iter().all(|r| r.correct);
            let values: Vec<f64> = runs.iter().map(|r| r.value).collect();
            let m = median(values.clone());
            let shown: Vec<String> = values.iter().map(|v| format!("{v:.0}")).collect();
            println!(
                "{workload:<9} {store:<9} {m:>14.0} {:<14} {}",
                "chunks_per_s",
                shown.join(" ")
            );
            lines.push(format!(
                "workload={workload} store={store} runs={} median={m:.0} unit=chunks_per_s correct={correct}",
                runs.len()
            ));
        }
    }
    for line in lines {
        println!("{line}");
    }
}
