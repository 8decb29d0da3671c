//! Placement and lifecycle: labels, unknown tasks, chunk timeouts, coordinator restarts, tokens.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use muster_suite::{bin, listening_url, Api, Coordinator, Proc};
use serde_json::json;

#[test]
fn labelled_jobs_wait_for_a_worker_with_the_labels() {
    let c = Coordinator::start(&[]);
    let _plain = c.worker("plain", 2);
    let api = c.api();
    let labelled =
        api.submit(&json!({"kind": "sum", "input": [1, 2, 3], "labels": {"gpu": "yes"}}));
    let unlabelled = api.submit(&json!({"kind": "sum", "input": [4, 5]}));
    assert_eq!(api.result(&unlabelled), json!(9));
    let status = api.status(&labelled);
    assert_eq!(status["status"], "queued", "{status}");
    assert_eq!(status["attempts"], 0);

    let gpu = muster_suite::bin("muster-worker");
    let _gpu = c.worker_with(gpu, "gpu", 1, &["--label", "gpu=yes"]);
    assert_eq!(api.result(&labelled), json!(6));
}

#[test]
fn a_task_no_connected_worker_runs_is_refused() {
    let c = Coordinator::start(&[]);
    let _w = c.worker("stock", 1);
    let answer = c.api().call(
        "POST",
        "/v1/jobs",
        Some(r#"{"task": "primes", "chunks": [{"from": 0, "to": 10}]}"#),
        &[],
    );
    assert_eq!(answer.status, 422);
    let detail = answer.body["detail"].as_str().unwrap();
    assert!(
        detail.contains("unknown task `primes`") && detail.contains("sum"),
        "{detail}"
    );
}

#[test]
fn chunks_past_their_timeout_are_stopped_and_retried_until_attempts_run_out() {
    let c = Coordinator::start(&[]);
    let w = c.custom_worker("slow", 1);
    let api = c.api();
    let id = api.submit(&json!({
        "task": "nap", "chunks": [{"ms": 60000}], "chunk_timeout": 0.3, "max_attempts": 2
    }));
    assert_eq!(api.wait_result(&id).body["job_status"], "failed");
    let error = api.status(&id)["error"].as_str().unwrap().to_owned();
    assert_eq!(error.matches("chunk timeout").count(), 2, "{error}");
    w.wait_for("cancelled chunk");
}

#[test]
fn workers_reconnect_to_a_restarted_coordinator() {
    let mut c = Coordinator::start(&[]);
    let w = c.worker("w", 1);
    c.restart(&[]);
    w.wait_for_nth("registered with coordinator", 2);
    let api = c.api();
    let id = api.submit(&json!({"kind": "sum", "input": [1, 2, 3], "chunks": 3}));
    assert_eq!(api.result(&id), json!(6));
}

#[test]
fn first_start_generates_private_tokens_of_two_roles() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin("muster"));
    cmd.args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env_remove("MUSTER_CLIENT_TOKEN")
        .env_remove("MUSTER_WORKER_TOKEN");
    let proc = Proc::spawn("coordinator", cmd);
    let url = listening_url(&proc);
    proc.wait_for("client token: ");
    let client_file = dir.path().join("client.token");
    let worker_file = dir.path().join("worker.token");
    for file in [&client_file, &worker_file] {
        let mode = std::fs::metadata(file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", file.display());
    }
    let client = std::fs::read_to_string(&client_file).unwrap();
    let worker = std::fs::read_to_string(&worker_file).unwrap();
    assert_ne!(client, worker);
    assert_eq!(
        Api::new(&url, Some(client.trim())).get("/v1/jobs").status,
        200
    );
    assert_eq!(
        Api::new(&url, Some(worker.trim())).get("/v1/jobs").status,
        403
    );
}

#[test]
fn insecure_mode_needs_no_token_and_says_so() {
    let c = Coordinator::start(&["--insecure"]);
    c.proc.wait_for("running with --insecure");
    assert_eq!(Api::new(&c.url, None).get("/v1/workers").status, 200);
}
