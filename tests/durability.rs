//! The SQLite store (the default): jobs, progress and idempotency keys survive `kill -9` of the
//! coordinator.

use muster_suite::{custom_worker_bin, Coordinator};
use serde_json::{json, Value};

#[test]
fn a_coordinator_killed_mid_job_resumes_it_without_rerunning_succeeded_chunks() {
    let mut c = Coordinator::start(&[]);
    let workers: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|name| c.worker_with(custom_worker_bin(), name, 2, &["--reconnect-max", "0.3"]))
        .collect();
    let api = c.api();
    let chunks: Vec<Value> = (0..200).map(|i| json!({"ms": 40, "value": i})).collect();
    let id = api.submit(&json!({"task": "nap", "chunks": chunks, "reduce": "sum"}));
    let before = api.wait_status(&id, |s| s["chunks"]["succeeded"].as_u64() >= Some(100));
    let done_before = before["chunks"]["succeeded"].as_u64().unwrap();
    assert!(
        done_before < 200,
        "the job finished before the kill: {before}"
    );

    c.restart(&[]);
    for w in &workers {
        w.wait_for_nth("registered with coordinator", 2);
    }
    let api = c.api();
    assert_eq!(api.result(&id), json!((0..200).sum::<u64>()));

    let status = api.status(&id);
    let retries = status["retries"].as_array().unwrap();
    // Chunks that had succeeded before the kill ran once; only interrupted ones ran again.
    assert!(
        retries.len() as u64 <= 200 - done_before,
        "{} retried, {done_before} done before",
        retries.len()
    );
    for chunk in retries {
        let attempts = chunk["attempts"].as_array().unwrap();
        assert_eq!(
            attempts[0]["error"]["class"], "coordinator_restarted",
            "{chunk}"
        );
        assert!(attempts.last().unwrap()["error"].is_null(), "{chunk}");
    }
    let extra: u64 = retries
        .iter()
        .map(|c| c["attempts"].as_array().unwrap().len() as u64 - 1)
        .sum();
    assert_eq!(status["attempts"].as_u64().unwrap(), 200 + extra);

    // A finished job and its result survive a further restart.
    c.restart(&[]);
    let api = c.api();
    assert_eq!(api.result(&id), json!((0..200).sum::<u64>()));
    assert_eq!(api.status(&id)["chunks"]["succeeded"], 200);
}

#[test]
fn a_job_accepted_right_before_a_kill_is_there_after_the_restart() {
    let mut c = Coordinator::start(&[]);
    let id = c
        .api()
        .submit(&json!({"kind": "sum", "input": [1, 2, 3, 4], "chunks": 2}));
    c.restart(&[]);
    let api = c.api();
    assert_eq!(api.status(&id)["status"], "queued");
    let _w = c.worker("w", 1);
    assert_eq!(api.result(&id), json!(10));
}

#[test]
fn idempotency_keys_survive_a_restart() {
    let mut c = Coordinator::start(&[]);
    let body = json!({"kind": "sum", "input": [5, 6]}).to_string();
    let key = [("Idempotency-Key", "nightly-7")];
    let first = c.api().call("POST", "/v1/jobs", Some(&body), &key);
    assert_eq!(first.status, 201);
    c.restart(&[]);
    let api = c.api();
    let again = api.call("POST", "/v1/jobs", Some(&body), &key);
    assert_eq!(again.status, 200);
    assert_eq!(again.body["id"], first.body["id"]);
    let other = json!({"kind": "sum", "input": [7]}).to_string();
    assert_eq!(api.call("POST", "/v1/jobs", Some(&other), &key).status, 422);
}

#[test]
fn a_large_job_keeps_its_payload_file_across_a_kill_and_drops_it_once_done() {
    let mut c = Coordinator::start(&[]);
    // 400,000 integers needing 4 bytes each: 1.6 MB of packed payloads, kept in a file.
    let input: Vec<u64> = (0..400_000u64).map(|i| i * 7919 % 1_000_000_007).collect();
    let expected: u64 = input.iter().sum();
    let id = c
        .api()
        .submit(&json!({"kind": "sum", "input": input, "chunks": 8}));
    let payloads = c.dir.path().join("payloads");
    let files = || std::fs::read_dir(&payloads).map_or(0, |d| d.count());
    assert_eq!(files(), 1, "the payloads are in a file of their own");
    c.restart(&[]);
    let api = c.api();
    assert_eq!(api.status(&id)["status"], "queued");
    let w = c.worker("w", 2);
    assert_eq!(api.result(&id), json!(expected));
    // The writer drops a finished job's payloads when idle; a restart drops any left.
    drop(w);
    c.restart(&[]);
    assert_eq!(c.api().result(&id), json!(expected));
    assert_eq!(files(), 0, "a finished job's payload file is gone");
}

#[test]
fn a_job_that_cannot_be_stored_is_refused_and_forgotten() {
    let c = Coordinator::start(&[]);
    let _w = c.worker("w", 1);
    // Payload files cannot be created once a plain file stands where their directory was.
    let payloads = c.dir.path().join("payloads");
    std::fs::remove_dir_all(&payloads).unwrap();
    std::fs::write(&payloads, b"not a directory").unwrap();
    let input: Vec<u64> = (0..400_000u64).map(|i| i * 7919 % 1_000_000_007).collect();
    let body = json!({"kind": "sum", "input": input, "chunks": 4}).to_string();
    let api = c.api();
    let refused = api.call("POST", "/v1/jobs", Some(&body), &[]);
    assert_eq!(refused.status, 503, "{:?}", refused.body);
    assert!(
        refused.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("payloads")),
        "{:?}",
        refused.body
    );
    // Not listed, not run: the job is gone. A job small enough for the database still goes in.
    let small = api.submit(&json!({"kind": "sum", "input": [1, 2, 3]}));
    assert_eq!(api.result(&small), json!(6));
    let jobs = api.get("/v1/jobs").body;
    let listed: Vec<&str> = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|j| j["id"].as_str())
        .collect();
    assert_eq!(listed, vec![small.as_str()]);
}

#[test]
fn a_second_coordinator_on_the_same_data_dir_is_refused() {
    let c = Coordinator::start(&[]);
    // The first one's store is open once it answers from it.
    assert_eq!(c.api().get("/v1/jobs").status, 200);
    let mut cmd = std::process::Command::new(muster_suite::bin("muster"));
    cmd.args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(c.dir.path())
        .env("MUSTER_CLIENT_TOKEN", muster_suite::CLIENT_TOKEN)
        .env("MUSTER_WORKER_TOKEN", muster_suite::WORKER_TOKEN);
    let mut second = muster_suite::Proc::spawn("second", cmd);
    let refusal = second.wait_for("in use by another muster coordinator");
    assert!(
        refusal.contains(&c.dir.path().display().to_string()),
        "{refusal}"
    );
    assert_ne!(second.wait_exit(), Some(0));
    // The first one goes on.
    let id = c
        .api()
        .submit(&json!({"kind": "sum", "input": [1, 2], "chunks": 1}));
    let _worker = c.worker("w", 1);
    assert_eq!(c.api().result(&id), json!(3));
}
