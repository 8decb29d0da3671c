//! `GET /v1/jobs/{id}/partials`: a running job's partial results, streamed as chunks succeed.

use std::sync::mpsc::Receiver;

use muster_suite::{partials_feed, Coordinator, WAIT};
use serde_json::{json, Value};

/// The lines of `GET /v1/jobs/{id}/partials?from=N` on `c`.
fn partials(c: &Coordinator, id: &str, from: u64) -> Receiver<Value> {
    partials_feed(&c.url, id, from)
}

/// `n` chunks of the example worker's `nap` task, chunk i worth i; the last one naps `last_ms`.
fn naps(n: u64, ms: u64, last_ms: u64) -> Value {
    let chunks: Vec<Value> = (0..n)
        .map(|i| json!({"ms": if i == n - 1 { last_ms } else { ms }, "value": i}))
        .collect();
    json!({"task": "nap", "chunks": chunks, "reduce": "sum"})
}

#[test]
fn partials_stream_while_the_job_runs_resume_from_a_number_and_end_with_the_job() {
    let c = Coordinator::start(&[]);
    let _w1 = c.custom_worker("c1", 2);
    let _w2 = c.custom_worker("c2", 2);
    let api = c.api();

    // The last chunk naps for a minute: every other partial arrives while the job runs.
    let long = api.submit(&naps(100, 5, 60_000));
    let stream = partials(&c, &long, 0);
    let first = stream.recv_timeout(WAIT).expect("a first partial");
    assert_eq!(first["seq"], json!(0), "{first}");
    assert_eq!(api.status(&long)["status"], json!("running"));
    let mut lines = vec![first];
    lines.extend((0..98).map(|_| stream.recv_timeout(WAIT).expect("a partial")));
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (0..99).collect::<Vec<_>>());
    let mut chunks: Vec<u64> = lines.iter().map(|l| l["chunk"].as_u64().unwrap()).collect();
    chunks.sort_unstable();
    assert_eq!(chunks, (0..99).collect::<Vec<_>>());
    // Each partial is its chunk's own result.
    assert!(lines.iter().all(|l| l["result"] == l["chunk"]), "{lines:?}");
    // A reader that comes back at 60 gets the same partials from there on.
    let again = partials(&c, &long, 60);
    let resumed: Vec<Value> = (0..39)
        .map(|_| again.recv_timeout(WAIT).expect("a partial"))
        .collect();
    assert_eq!(resumed, lines[60..]);
    // The job's end ends the streams; an ended job's partials are its result's.
    assert_eq!(
        api.call("DELETE", &format!("/v1/jobs/{long}"), None, &[])
            .status,
        200
    );
    assert!(stream.recv_timeout(WAIT).is_err());
    assert!(again.recv_timeout(WAIT).is_err());
    let ended = api.get(&format!("/v1/jobs/{long}/partials"));
    assert_eq!(ended.status, 409, "{:?}", ended.body);
    assert!(ended.body["detail"]
        .as_str()
        .unwrap_or_default()
        .contains("has ended"));

    // A job followed from its start to its end (it waits for a worker with its label, started
    // once the stream is open): every partial once, summing to its result.
    let mut job = naps(100, 5, 5);
    job["labels"] = json!({"zone": "late"});
    let whole = api.submit(&job);
    let stream = partials(&c, &whole, 0);
    let _late = c.worker_with(
        muster_suite::custom_worker_bin(),
        "late",
        2,
        &["--label", "zone=late"],
    );
    let lines: Vec<Value> = stream.iter().collect();
    assert_eq!(lines.len(), 100, "{lines:?}");
    let sum: u64 = lines.iter().map(|l| l["result"].as_u64().unwrap()).sum();
    assert_eq!(api.result(&whole), json!(sum));
    assert_eq!(sum, (0..100).sum::<u64>());

    let missing = api.get("/v1/jobs/01a24e4c-2a88-73f4-9e3d-e45585f8c833/partials");
    assert_eq!(missing.status, 404);
}

#[test]
fn partial_numbers_survive_a_coordinator_restart() {
    let mut c = Coordinator::start(&[]);
    let workers = [c.custom_worker("c1", 2), c.custom_worker("c2", 2)];
    let api = c.api();
    // Naps of scattered lengths, so chunks succeed out of their order; the last one naps for a
    // minute, so the job still runs when the coordinator is killed.
    let chunks: Vec<Value> = (0..40u64)
        .map(|i| json!({"ms": if i == 39 { 60_000 } else { 5 + (i * 37) % 60 }, "value": i}))
        .collect();
    let id = api.submit(&json!({"task": "nap", "chunks": chunks, "reduce": "sum"}));
    let stream = partials(&c, &id, 0);
    let before: Vec<Value> = (0..39)
        .map(|_| stream.recv_timeout(WAIT).expect("a partial"))
        .collect();
    let order: Vec<u64> = before
        .iter()
        .map(|l| l["chunk"].as_u64().unwrap())
        .collect();
    assert_ne!(
        order,
        (0..39).collect::<Vec<_>>(),
        "the chunks succeeded in their own order: nothing to renumber"
    );

    c.restart(&[]);
    for w in &workers {
        w.wait_for_nth("registered with coordinator", 2);
    }
    // From the start and from the middle, the same numbers name the same chunks.
    let again = partials(&c, &id, 0);
    let after: Vec<Value> = (0..39)
        .map(|_| again.recv_timeout(WAIT).expect("a partial"))
        .collect();
    assert_eq!(after, before);
    let middle = partials(&c, &id, 20);
    let resumed: Vec<Value> = (0..19)
        .map(|_| middle.recv_timeout(WAIT).expect("a partial"))
        .collect();
    assert_eq!(resumed, before[20..]);
    assert_eq!(
        api.call("DELETE", &format!("/v1/jobs/{id}"), None, &[])
            .status,
        200
    );
}
