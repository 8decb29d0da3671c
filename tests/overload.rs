//! Admission control: past the backlog limit a submission gets 429 with `Retry-After`, the
//! coordinator stays small, and once the backlog drains the next submission is accepted.

use muster_suite::{peak_rss_mib, Coordinator};
use serde_json::{json, Value};

/// A `sum` job of `n` one-element chunks.
fn job(n: u64) -> Value {
    json!({"kind": "sum", "input": (0..n).collect::<Vec<u64>>(), "chunks": n})
}

#[test]
fn submissions_past_the_backlog_limit_get_429_until_it_drains() {
    let c = Coordinator::start(&["--max-pending-chunks", "100"]);
    let api = c.api();
    // No worker yet: 0, 40 and 80 chunks waiting are below the limit, 120 are not.
    let accepted: Vec<String> = (0..3).map(|_| api.submit(&job(40))).collect();
    // Larger bodies, turned away again and again, leave nothing behind.
    let large = json!({"kind": "sum", "input": (0..200_000).collect::<Vec<u64>>(), "chunks": 40})
        .to_string();
    for _ in 0..100 {
        let refused = api.call("POST", "/v1/jobs", Some(&large), &[]);
        assert_eq!(refused.status, 429, "{:?}", refused.body);
        assert_eq!(refused.content_type, "application/problem+json");
        assert_eq!(refused.retry_after.as_deref(), Some("1"));
        let detail = refused.body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("--max-pending-chunks"), "{detail}");
    }
    let peak = peak_rss_mib(c.proc.pid());
    assert!(peak < 200, "the coordinator peaked at {peak} MiB");
    let listed = api.get("/v1/jobs").body;
    assert_eq!(
        listed["jobs"].as_array().map(Vec::len),
        Some(3),
        "refused jobs are not kept"
    );

    // A worker drains the backlog; then a submission is accepted again.
    let _worker = c.worker("w1", 2);
    for id in &accepted {
        assert_eq!(api.result(id), json!(40 * 39 / 2));
    }
    let next = api.submit(&job(40));
    assert_eq!(api.result(&next), json!(40 * 39 / 2));
}
