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
}
