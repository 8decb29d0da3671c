//! Ended jobs leave: past `--retain-ended` they are pruned from memory and from the store, and
//! their idempotency keys with them.

use muster_suite::Coordinator;
use serde_json::json;

#[test]
fn an_ended_job_past_its_retention_is_pruned_from_memory_and_the_store() {
    let mut c = Coordinator::start(&["--retain-ended", "0.3"]);
    let _worker = c.worker("w1", 1);
    let api = c.api();
    let job = json!({"kind": "sum", "input": [1, 2, 3], "chunks": 3});
    let key = [("Idempotency-Key", "nightly-1")];
    let first = api.call("POST", "/v1/jobs", Some(&job.to_string()), &key);
    assert_eq!(first.status, 201, "{:?}", first.body);
    let id = first.body["id"].as_str().expect("an id").to_owned();
    assert_eq!(api.result(&id), json!(6));

    c.proc.wait_for("pruned ended jobs from the store");
    assert_eq!(api.get(&format!("/v1/jobs/{id}")).status, 404);
    // A restart that would keep every ended job finds none: the store no longer has it.
    c.restart(&["--retain-ended", "1000000"]);
    let api = c.api();
    assert_eq!(api.get(&format!("/v1/jobs/{id}")).status, 404);
    assert_eq!(api.get("/v1/jobs").body["jobs"], json!([]));
    // Its idempotency key went with it: the same key makes a new job.
    let again = api.call("POST", "/v1/jobs", Some(&job.to_string()), &key);
    assert_eq!(again.status, 201, "{:?}", again.body);
    assert_ne!(again.body["id"].as_str(), Some(id.as_str()));
}
