//! Built-in kinds and custom tasks end to end: a real coordinator and real workers over sockets.

use muster_suite::Coordinator;
use rand::{Rng, SeedableRng};
use serde_json::json;

#[test]
fn three_workers_compute_sum_sort_and_wordcount_exactly() {
    let c = Coordinator::start(&[]);
    let _workers: Vec<_> = (1..=3).map(|i| c.worker(&format!("w{i}"), 2)).collect();
    let api = c.api();

    let sum = api.submit(
        &json!({"kind": "sum", "input": (1..=1_000_000).collect::<Vec<i64>>(), "chunks": 100}),
    );

    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    // 1.6 MB of sorted runs come back: merged off the coordinator's thread.
    let numbers: Vec<i64> = (0..200_000).map(|_| rng.gen()).collect();
    let sort = api.submit(&json!({"kind": "sort", "input": numbers, "chunks": 12}));

    let text = "The quick brown fox jumps over the lazy dog. THE DOG sleeps; the fox runs! Ünïcode ünïcode 42";
    let words = api.submit(&json!({"kind": "wordcount", "input": text, "chunks": 5}));

    assert_eq!(api.result(&sum), json!(500_000_500_000_i64));
    let mut sorted = numbers.clone();
    sorted.sort();
    assert_eq!(api.result(&sort), json!(sorted));
    assert_eq!(
        api.result(&words),
        json!({"42": 1, "brown": 1, "dog": 2, "fox": 2, "jumps": 1, "lazy": 1, "over": 1,
               "quick": 1, "runs": 1, "sleeps": 1, "the": 4, "ünïcode": 2})
    );
    let status = api.status(&sum);
    assert_eq!(status["status"], "succeeded");
    assert_eq!(status["chunks"]["succeeded"], 100);

    // Counts of 12,000 distinct words in three chunks: each chunk's counts are large enough
    // (over 64 KiB) to be folded in as they come.
    let many: Vec<String> = (0..30_000).map(|i| format!("w{}", i % 12_000)).collect();
    let counted = api.submit(&json!({"kind": "wordcount", "input": many.join(" "), "chunks": 3}));
    let mut expected = std::collections::BTreeMap::new();
    for word in &many {
        *expected.entry(word.clone()).or_insert(0u64) += 1;
    }
    assert_eq!(api.result(&counted), json!(expected));
}

#[test]
fn one_kept_alive_connection_serves_submits_and_long_polls_in_turn() {
    let c = Coordinator::start(&[]);
    let _worker = c.worker("w1", 1);
    let mut conn = c.api().connect();
    for i in 0..5_i64 {
        let body = json!({"task": "sum", "chunks": [[i, 1], [2]], "reduce": "sum"}).to_string();
        let (status, created) = conn.request("POST", "/v1/jobs", Some(&body));
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&created));
        let created: serde_json::Value = serde_json::from_slice(&created).expect("json");
        let id = created["id"].as_str().expect("id");
        let (status, result) = conn.request("GET", &format!("/v1/jobs/{id}/result?wait=10"), None);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&result));
        let result: serde_json::Value = serde_json::from_slice(&result).expect("json");
        assert_eq!(result["result"], json!(i + 3));
    }
}
