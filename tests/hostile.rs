//! A worker that holds a valid worker token and misbehaves on purpose, written byte by byte: it
//! declares frames far over the limit, claims every slot there is, takes another worker's id,
//! answers with results of the wrong type, and takes chunks only to drop its connection. The
//! coordinator must stay small, refuse each move, quarantine the bad worker, and still finish
//! every honest job exactly.

use std::time::Duration;

use muster_shared::ids::WorkerId;
use muster_shared::protocol::{WorkerMessage, CLOSE_REFUSED};
use muster_suite::raw_worker::{RawWorker, Received};
use muster_suite::{custom_worker_bin, peak_rss_mib, Coordinator};
use serde_json::{json, Value};

/// A `nap` job of `n` chunks of `ms` each, whose result is the sum 0 + 1 + ... + (n - 1).
fn naps(n: u64, ms: u64) -> Value {
    let chunks: Vec<Value> = (0..n).map(|i| json!({"ms": ms, "value": i})).collect();
    json!({"task": "nap", "chunks": chunks, "reduce": "sum"})
}

/// The `/v1/workers` entry named `name`, if it is connected.
fn listed(c: &Coordinator, name: &str) -> Option<Value> {
    let page = c.api().get("/v1/workers").body;
    page["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|w| w["name"] == name)
        .cloned()
}

/// Waits (bounded) until the worker named `name` is listed as quarantined.
fn wait_quarantined(c: &Coordinator, name: &str) {
    let deadline = std::time::Instant::now() + muster_suite::WAIT;
    loop {
        let entry = listed(c, name);
        if entry
            .as_ref()
            .is_some_and(|e| e["quarantined_until"].is_string())
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} was never quarantined: {entry:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_hostile_worker_cannot_take_the_coordinator_down_or_fail_honest_jobs() {
    let c = Coordinator::start(&[]);
    let api = c.api();

    // Huge declared frames: refused at the header, long before the bytes would fill memory.
    let mut big = RawWorker::connect(&c.url);
    let hello = RawWorker::hello("big-frames", 1, &["nap"]);
    assert!(matches!(
        big.say_hello(WorkerId::new(), hello),
        Received::Frame(_)
    ));
    assert!(big.write_raw(&RawWorker::header(1 << 40)));
    let piece = vec![0u8; 1 << 20];
    big.write_raw(&piece);
    match big.receive(Duration::from_secs(10)) {
        Received::Close(code, reason) => {
            assert_eq!(code, CLOSE_REFUSED);
            assert!(reason.contains("over this coordinator's limit"), "{reason}");
        }
        other => panic!("a frame declared at 1 TiB was not refused at its header: {other:?}"),
    }
    // What follows is read and dropped, never kept.
    let mut sent = piece.len();
    while sent < (256 << 20) && big.write_raw(&piece) {
        sent += piece.len();
    }
    let peak = peak_rss_mib(c.proc.pid());
    assert!(
        peak < 200,
        "{peak} MiB after {sent} bytes of a refused frame"
    );
    drop(big);

    // A frame that trickles in never completes: the connection ends at the heartbeat timeout
    // (1 s here) instead of staying open.
    let mut slow = RawWorker::connect(&c.url);
    slow.say_hello(
        WorkerId::new(),
        RawWorker::hello("slow-frame", 1, &["none"]),
    );
    assert!(slow.write_raw(&RawWorker::header(1000)));
    let started = std::time::Instant::now();
    let ended = loop {
        slow.write_raw(&[0]);
        match slow.receive(Duration::from_millis(100)) {
            Received::Close(code, reason) => break (code, reason),
            Received::Frame(_) => {}
            Received::Nothing => assert!(
                started.elapsed() < muster_suite::WAIT,
                "a trickling frame kept its connection open"
            ),
        }
    };
    assert_eq!(
        ended.0,
        muster_shared::protocol::CLOSE_HEARTBEAT_TIMEOUT,
        "{ended:?}"
    );
    drop(slow);

    // Every slot there is.
    let mut greedy = RawWorker::connect(&c.url);
    match greedy.say_hello(
        WorkerId::new(),
        RawWorker::hello("greedy", u32::MAX, &["nap"]),
    ) {
        Received::Close(code, reason) => {
            assert_eq!(code, CLOSE_REFUSED);
            assert!(reason.contains("max-worker-slots"), "{reason}");
        }
        other => panic!("a hello with u32::MAX slots was not refused: {other:?}"),
    }

    // Another worker's id: the coordinator names connections, so the thief gets an id of its own
    // and cannot speak for the victim.
    let mut victim = RawWorker::connect(&c.url);
    victim.say_hello(WorkerId::new(), RawWorker::hello("victim", 1, &["none"]));
    let victim_id = victim.id.expect("the victim was welcomed");
    let mut thief = RawWorker::connect(&c.url);
    thief.say_hello(victim_id, RawWorker::hello("thief", 1, &["none"]));
    let thief_id = thief.id.expect("the thief was welcomed");
    assert_ne!(thief_id, victim_id);
    thief.send(victim_id, vec![WorkerMessage::Heartbeat]);
    match thief.receive(Duration::from_secs(10)) {
        Received::Close(code, reason) => {
            assert_eq!(code, CLOSE_REFUSED);
            assert!(reason.contains("another worker"), "{reason}");
        }
        other => panic!("a frame under another worker's id was taken: {other:?}"),
    }
    let still = listed(&c, "victim").expect("the victim is still connected");
    assert_eq!(still["id"], json!(victim_id.to_string()));
    drop((victim, thief));

    // Honest workers that hold one chunk at a time, so a bad worker gets chunks too.
    let _honest: Vec<_> = ["honest-1", "honest-2"]
        .iter()
        .map(|name| c.worker_with(custom_worker_bin(), name, 1, &["--prefetch", "0"]))
        .collect();
    let corrupted = api.submit(&naps(40, 30));
    let grabbed = api.submit(&naps(120, 30));

    // Results of the wrong type: each is refused on arrival and its chunk retried elsewhere; the
    // third strike quarantines the worker.
    let mut corrupter = RawWorker::connect(&c.url);
    corrupter.say_hello(WorkerId::new(), RawWorker::hello("corrupter", 2, &["nap"]));
    let mut refused = 0;
    while refused < 3 {
        let taken = corrupter.assignments(Duration::from_secs(10));
        assert!(!taken.is_empty(), "the corrupter got no chunks to corrupt");
        for a in &taken {
            corrupter.answer(a, b"\"not a number\"");
            refused += 1;
        }
    }
    wait_quarantined(&c, "corrupter");
    drop(corrupter);

    // Grab and drop: each lost connection is a strike; the third quarantines the name, which a
    // new connection under it keeps.
    for round in 1..=3 {
        let mut grabber = RawWorker::connect(&c.url);
        grabber.say_hello(WorkerId::new(), RawWorker::hello("grabber", 4, &["nap"]));
        let taken = grabber.assignments(Duration::from_secs(10));
        assert!(!taken.is_empty(), "round {round}: no chunks to grab");
        drop(grabber);
        // The next connection comes after this one is known lost.
        api.wait_status(&grabbed, |_| listed(&c, "grabber").is_none());
    }
    let mut grabber = RawWorker::connect(&c.url);
    grabber.say_hello(WorkerId::new(), RawWorker::hello("grabber", 4, &["nap"]));
    let entry = listed(&c, "grabber").expect("the grabber is connected");
    assert!(
        entry["quarantined_until"].is_string(),
        "the grabber is not quarantined: {entry}"
    );
    assert!(
        grabber.assignments(Duration::from_millis(500)).is_empty(),
        "a quarantined worker got chunks"
    );
    let metrics = String::from_utf8(api.call_bytes("GET", "/metrics", None).1).expect("utf-8");
    let quarantined = metrics.lines().find_map(|l| {
        l.strip_prefix("muster_workers_quarantined ")?
            .parse::<u32>()
            .ok()
    });
    assert!(quarantined >= Some(1), "{metrics}");
    drop(grabber);

    // Every honest job finishes, exactly.
    assert_eq!(api.result(&corrupted), json!(40 * 39 / 2));
    assert_eq!(api.result(&grabbed), json!(120 * 119 / 2));
    let peak = peak_rss_mib(c.proc.pid());
    assert!(peak < 200, "the coordinator peaked at {peak} MiB");
}
