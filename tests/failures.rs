//! Retries and shutdowns with real processes: SIGKILL, SIGSTOP, failing tasks, cancel, SIGTERM.

use muster_suite::{Api, Coordinator};
use serde_json::{json, Value};

/// A custom job of `n` chunks that each sleep `ms` and return their index; reduced by sum.
fn naps(n: u64, ms: u64) -> Value {
    let chunks: Vec<Value> = (0..n).map(|i| json!({"ms": ms, "value": i})).collect();
    json!({"task": "nap", "chunks": chunks, "reduce": "sum"})
}

/// [`naps`] without speculative backups, for the tests that read each chunk's attempts: a
/// backup of a chunk waiting behind a lost or draining worker would add an attempt of its own.
fn naps_alone(n: u64, ms: u64) -> Value {
    let mut job = naps(n, ms);
    job["speculation"] = json!(false);
    job
}

fn expected_sum(n: u64) -> Value {
    json!((0..n).sum::<u64>())
}

/// Waits until the named worker runs at least one chunk.
fn wait_until_busy(api: &Api, name: &str) {
    let deadline = std::time::Instant::now() + muster_suite::WAIT;
    loop {
        let workers = api.get("/v1/workers").body;
        let busy = workers["workers"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|w| w["name"] == name && w["running"].as_u64() > Some(0));
        if busy {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} never got a chunk: {workers}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Every attempt in the status's retry list, as (worker name, error class or "ok").
fn attempts_of(status: &Value) -> Vec<Vec<(String, String)>> {
    status["retries"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|chunk| {
            chunk["attempts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| {
                    let class = a["error"]["class"].as_str().unwrap_or("ok").to_owned();
                    (a["worker_name"].as_str().unwrap_or("").to_owned(), class)
                })
                .collect()
        })
        .collect()
}

#[test]
fn sigkilled_worker_chunks_are_retried_on_other_workers() {
    let c = Coordinator::start(&[]);
    let mut victim = c.custom_worker("victim", 2);
    let _a = c.custom_worker("a", 2);
    let _b = c.custom_worker("b", 2);
    let api = c.api();
    let id = api.submit(&naps_alone(12, 400));
    wait_until_busy(&api, "victim");
    victim.signal("KILL");
    victim.wait_exit();

    assert_eq!(api.result(&id), expected_sum(12));
    let retried = attempts_of(&api.status(&id));
    assert!(!retried.is_empty(), "no chunk was retried");
    for attempts in &retried {
        assert_eq!(
            attempts[0],
            ("victim".to_owned(), "worker_lost".to_owned()),
            "{attempts:?}"
        );
        let last = attempts.last().unwrap();
        assert_ne!(
            last.0, "victim",
            "retry ran on the dead worker: {attempts:?}"
        );
        assert_eq!(last.1, "ok");
    }
}

#[test]
fn frozen_worker_is_replaced_after_the_heartbeat_timeout_and_its_late_results_ignored() {
    let c = Coordinator::start(&[]);
    let frozen = c.custom_worker("frozen", 2);
    let _other = c.custom_worker("other", 2);
    let api = c.api();
    let id = api.submit(&naps(4, 500));
    wait_until_busy(&api, "frozen");
    frozen.signal("STOP");

    assert_eq!(api.result(&id), expected_sum(4));
    let retried = attempts_of(&api.status(&id));
    assert!(!retried.is_empty(), "no chunk was retried");
    for attempts in &retried {
        assert_eq!(
            attempts[0],
            ("frozen".to_owned(), "heartbeat_timeout".to_owned())
        );
        assert_eq!(
            attempts.last().unwrap(),
            &("other".to_owned(), "ok".to_owned())
        );
    }

    frozen.signal("CONT");
    // It reconnects, finishes the chunks it held and reports them; the coordinator ignores them.
    frozen.wait_for_nth("registered with coordinator", 2);
    c.proc.wait_for("ignored late or duplicate outcome");
    assert_eq!(api.result(&id), expected_sum(4));
    assert_eq!(api.status(&id)["status"], "succeeded");
}

#[test]
fn a_task_that_always_fails_ends_the_job_with_every_attempt_listed() {
    let c = Coordinator::start(&[]);
    let _a = c.custom_worker("alpha", 1);
    let _b = c.custom_worker("beta", 1);
    let api = c.api();
    let id = api.submit(&json!({"task": "fail", "chunks": [1], "max_attempts": 3}));
    let answer = api.wait_result(&id);
    assert_eq!(answer.status, 409);
    assert_eq!(answer.body["job_status"], "failed");

    let status = api.status(&id);
    assert_eq!(status["status"], "failed");
    let error = status["error"].as_str().unwrap();
    for n in 1..=3 {
        assert!(
            error.contains(&format!("attempt {n} on worker ")),
            "{error}"
        );
    }
    assert!(error.contains("fails on purpose"), "{error}");
    let attempts = &attempts_of(&status)[0];
    assert_eq!(attempts.len(), 3);
    // Each retry goes to the other worker.
    assert_ne!(attempts[0].0, attempts[1].0);
    assert_ne!(attempts[1].0, attempts[2].0);
}

#[test]
fn a_permanent_task_error_fails_the_job_without_retries() {
    let c = Coordinator::start(&[]);
    let _w = c.worker("w", 2);
    let api = c.api();
    let id = api.submit(&json!({"task": "sum", "chunks": [[1, 2], ["x"]], "reduce": "sum"}));
    assert_eq!(api.wait_result(&id).status, 409);
    let status = api.status(&id);
    let error = status["error"].as_str().unwrap();
    assert!(error.contains("chunk 1 failed permanently"), "{error}");
    assert_eq!(
        status["retries"][0]["attempts"].as_array().unwrap().len(),
        1
    );
}

#[test]
fn cancel_stops_running_chunks_and_frees_the_slots() {
    let c = Coordinator::start(&[]);
    let a = c.custom_worker("a", 1);
    let b = c.custom_worker("b", 1);
    let api = c.api();
    let id = api.submit(&naps(4, 60_000));
    wait_until_busy(&api, "a");
    wait_until_busy(&api, "b");

    let answer = api.call("DELETE", &format!("/v1/jobs/{id}"), None, &[]);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body["status"], "cancelled");
    a.wait_for("cancelled chunk");
    b.wait_for("cancelled chunk");
    let workers = api.get("/v1/workers").body;
    for w in workers["workers"].as_array().unwrap() {
        assert_eq!(w["running"], 0, "{w}");
    }
    let next =
        api.submit(&json!({"task": "nap", "chunks": [{"ms": 1, "value": 5}], "reduce": "sum"}));
    assert_eq!(api.result(&next), json!(5));
    assert_eq!(api.wait_result(&id).body["job_status"], "cancelled");
}

#[test]
fn sigterm_drains_a_worker_and_stops_the_coordinator() {
    let mut c = Coordinator::start(&[]);
    let mut leaving = c.custom_worker("leaving", 2);
    let _staying = c.custom_worker("staying", 2);
    let api = c.api();
    let id = api.submit(&naps_alone(8, 300));
    wait_until_busy(&api, "leaving");
    leaving.signal("TERM");
    leaving.wait_for("draining: taking no new chunks");
    assert_eq!(leaving.wait_exit(), Some(0));
    assert_eq!(api.result(&id), expected_sum(8));
    // The drained worker finished what it ran and handed back what it had not started: no chunk
    // of it was lost or needed a retry for any other reason.
    for attempts in attempts_of(&api.status(&id)) {
        assert_eq!(
            attempts[0],
            ("leaving".to_owned(), "handed_back".to_owned()),
            "{attempts:?}"
        );
        assert_eq!(attempts.len(), 2, "{attempts:?}");
    }

    c.proc.signal("TERM");
    assert_eq!(c.proc.wait_exit(), Some(0));
}

#[test]
fn a_worker_that_cannot_finish_in_its_drain_timeout_hands_its_chunks_back() {
    let c = Coordinator::start(&[]);
    let binary = muster_suite::custom_worker_bin();
    let mut leaving = c.worker_with(
        binary,
        "leaving",
        1,
        &["--drain-timeout", "0.2", "--prefetch", "0"],
    );
    let _staying = c.custom_worker("staying", 1);
    let api = c.api();
    let id = api.submit(&json!({"task": "nap", "chunks": [{"ms": 1500, "value": 1}, {"ms": 1500, "value": 2}], "reduce": "sum", "max_attempts": 1}));
    wait_until_busy(&api, "leaving");
    leaving.signal("TERM");
    leaving.wait_for("drain timeout: handing back unfinished chunks");
    assert_eq!(leaving.wait_exit(), Some(0));
    // max_attempts is 1, yet the job succeeds: a handed-back chunk does not use up an attempt.
    assert_eq!(api.result(&id), json!(3));
    let retried = attempts_of(&api.status(&id));
    assert_eq!(retried.len(), 1, "{retried:?}");
    assert_eq!(
        retried[0][0],
        ("leaving".to_owned(), "handed_back".to_owned())
    );
    assert_eq!(retried[0][1], ("staying".to_owned(), "ok".to_owned()));
}
