//! Speculative backups of stragglers: a slow worker's chunks in a job's tail get copies on
//! fast workers, and the first copy to finish wins.

use std::process::Command;
use std::time::Instant;

use muster_suite::{
    custom_worker_bin, leader_and_standby, wait_role, Coordinator, Postgres, Proc, WORKER_TOKEN,
};
use serde_json::{json, Value};

/// A custom worker whose naps take ten times as long, with `extra` arguments.
fn slow_worker(c: &Coordinator, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(custom_worker_bin());
    cmd.args(["--scheduler", &c.url, "--name", "slow", "--slots", "1"])
        .args(extra)
        .env("MUSTER_WORKER_TOKEN", WORKER_TOKEN)
        .env("NAP_SLOWDOWN", "10")
        .env_remove("MUSTER_SCHEDULER");
    let proc = Proc::spawn("slow", cmd);
    proc.wait_for("registered with coordinator");
    proc
}

/// Chunks in the job.
const CHUNKS: u64 = 100;

/// `CHUNKS` chunks of a 100 ms nap, chunk i worth i, on workers with `labels`.
fn naps(speculation: bool, labels: Value) -> Value {
    let chunks: Vec<Value> = (0..CHUNKS)
        .map(|i| json!({"ms": 100, "value": i}))
        .collect();
    json!({"task": "nap", "chunks": chunks, "reduce": "sum", "speculation": speculation, "labels": labels})
}

#[test]
fn a_slow_workers_stragglers_are_backed_up_and_every_chunk_counts_once() {
    let mut c = Coordinator::start(&[]);
    let _fast: Vec<Proc> = (1..=3)
        .map(|i| {
            let name = format!("fast{i}");
            c.worker_with(custom_worker_bin(), &name, 1, &["--label", "speed=fast"])
        })
        .collect();
    let _slow = slow_worker(&c, &[]);
    let api = c.api();
    let run = |speculation: bool, labels: Value| {
        let start = Instant::now();
        let id = api.submit(&naps(speculation, labels));
        assert_eq!(api.result(&id), json!((0..CHUNKS).sum::<u64>()));
        (start.elapsed(), api.status(&id))
    };
    // The same job on the fast workers alone, the mark the issue sets (1.3 x); times are printed,
    // not asserted: the machine is shared.
    let (alone, _) = run(true, json!({"speed": "fast"}));
    let (with, status) = run(true, json!({}));
    let (without, plain) = run(false, json!({}));
    eprintln!(
        "{CHUNKS} chunks of 100 ms: {alone:?} on the 3 fast workers alone; with a 10x slower fourth, \
         {with:?} with speculation ({:.2} x), {without:?} without ({:.2} x)",
        with.as_secs_f64() / alone.as_secs_f64(),
        without.as_secs_f64() / alone.as_secs_f64()
    );
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
    // The job's counts are kept with its attempts: a restart shows the same.
    c.restart(&[]);
    let restored = c.api().status(status["id"].as_str().unwrap());
    assert_eq!(restored["backups"], status["backups"], "{restored}");
}

#[test]
fn a_jobs_backup_counts_survive_a_failover_on_postgres() {
    let pg = Postgres::start();
    let (a, b) = leader_and_standby(&pg);
    let both = ["--scheduler", &b.url, "--reconnect-max", "0.3"];
    let _fast: Vec<Proc> = (1..=3)
        .map(|i| a.worker_with(custom_worker_bin(), &format!("fast{i}"), 1, &both))
        .collect();
    let _slow = slow_worker(&a, &both);
    let api = a.api();
    let id = api.submit(&naps(true, json!({})));
    assert_eq!(api.result(&id), json!((0..CHUNKS).sum::<u64>()));
    let before = api.status(&id);
    assert!(
        before["backups"]["won"].as_u64().unwrap_or(0) >= 1,
        "{before}"
    );
    a.proc.signal("KILL");
    wait_role(&b.url, "leader");
    let after = b.api().status(&id);
    assert_eq!(after["backups"], before["backups"], "{after}");
}
