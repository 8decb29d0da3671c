//! Speculative backups of stragglers: a slow worker's chunks in a job's tail get copies on
//! fast workers, and the first copy to finish wins.

use std::process::Command;
use std::time::Instant;

use muster_suite::{custom_worker_bin, Coordinator, Proc, WORKER_TOKEN};
use serde_json::{json, Value};

/// A custom worker whose naps take ten times as long.
fn slow_worker(c: &Coordinator) -> Proc {
    let mut cmd = Command::new(custom_worker_bin());
    cmd.args(["--scheduler", &c.url, "--name", "slow", "--slots", "1"])
        .env("MUSTER_WORKER_TOKEN", WORKER_TOKEN)
        .env("NAP_SLOWDOWN", "10")
        .env_remove("MUSTER_SCHEDULER");
    let proc = Proc::spawn("slow", cmd);
    proc.wait_for("registered with coordinator");
    proc
}

/// 40 chunks of a 100 ms nap, chunk i worth i.
fn naps(speculation: bool) -> Value {
    let chunks: Vec<Value> = (0..40).map(|i| json!({"ms": 100, "value": i})).collect();
    json!({"task": "nap", "chunks": chunks, "reduce": "sum", "speculation": speculation})
}

#[test]
fn a_slow_workers_stragglers_are_backed_up_and_every_chunk_counts_once() {
    let c = Coordinator::start(&[]);
    let _fast: Vec<Proc> = (1..=3)
        .map(|i| c.worker_with(custom_worker_bin(), &format!("fast{i}"), 1, &[]))
        .collect();
    let _slow = slow_worker(&c);
    let api = c.api();
    let run = |speculation: bool| {
        let start = Instant::now();
        let id = api.submit(&naps(speculation));
        assert_eq!(api.result(&id), json!((0..40).sum::<u64>()));
        (start.elapsed(), api.status(&id))
    };
    let (with, status) = run(true);
    let (without, plain) = run(false);
    eprintln!("40 chunks on 3 fast workers and a 10x slower one: {with:?} with speculation, {without:?} without");
    // Backups started and won, and the attempts they beat end superseded, on the slow worker.
    assert!(
        status["backups"]["won"].as_u64().unwrap_or(0) >= 1,
        "{status}"
    );
    let superseded: Vec<&Value> = status["retries"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["attempts"].as_array().unwrap())
        .filter(|a| a["error"]["class"] == json!("superseded"))
        .collect();
    assert!(!superseded.is_empty(), "{status}");
    // A backup uses up no attempt: no chunk failed, none ran out of attempts.
    assert_eq!(status["chunks"]["failed"], json!(0));
    assert_eq!(plain["backups"], json!({"started": 0, "won": 0}), "{plain}");
    let (_, metrics) = api.call_bytes("GET", "/metrics", None);
    let metrics = String::from_utf8_lossy(&metrics);
    let won = status["backups"]["won"].as_u64().unwrap();
    assert!(
        metrics.contains(&format!("muster_backups_won_total {won}")),
        "{metrics}"
    );
}
