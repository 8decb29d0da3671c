//! Several coordinators on one PostgreSQL store: one leads, a standby takes over when it dies, and a
//! deposed leader cannot change anything.

use std::process::Command;
use std::time::Duration;

use muster_suite::{
    bin, custom_worker_bin, partials_feed, wait_role, Api, Coordinator, Postgres, CLIENT_TOKEN,
};
use serde_json::{json, Value};

fn coordinator(pg: &Postgres) -> Coordinator {
    Coordinator::start(&["--store", &pg.url(), "--lease", "1"])
}

#[test]
fn the_standby_takes_over_within_five_seconds_and_finishes_the_job() {
    let pg = Postgres::start();
    let mut a = coordinator(&pg);
    wait_role(&a.url, "leader");
    let b = coordinator(&pg);
    wait_role(&b.url, "standby");

    // A standby points API calls at the leader (once it has read who leads).
    let standby = Api::new(&b.url, Some(CLIENT_TOKEN));
    let deadline = std::time::Instant::now() + muster_suite::WAIT;
    let location = loop {
        let answer = standby.call_raw("GET", "/v1/jobs");
        if answer.0 == 307 {
            break answer.1;
        }
        assert_eq!(answer.0, 503, "a standby answered {answer:?}");
        assert!(
            std::time::Instant::now() < deadline,
            "the standby never named the leader"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(location, format!("{}/v1/jobs", a.url));
    // The CLI follows the standby's redirect only to a configured coordinator: given the
    // standby's address alone, it does not send its token to the leader the standby names.
    let via_standby = Command::new(bin("muster"))
        .args(["jobs", "--json", "--scheduler", &b.url])
        .env("MUSTER_TOKEN", CLIENT_TOKEN)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&via_standby.stderr);
    assert!(!via_standby.status.success());
    assert!(stderr.contains("not a configured coordinator"), "{stderr}");
    let both = format!("{},{}", a.url, b.url);
    let via_both = Command::new(bin("muster"))
        .args([
            "jobs",
            "--json",
            "--scheduler",
            &format!("{},{}", b.url, a.url),
        ])
        .env("MUSTER_TOKEN", CLIENT_TOKEN)
        .output()
        .unwrap();
    assert!(
        via_both.status.success(),
        "{}",
        String::from_utf8_lossy(&via_both.stderr)
    );

    let _workers: Vec<_> = ["w1", "w2", "w3"]
        .iter()
        .map(|n| {
            a.worker_with(
                custom_worker_bin(),
                n,
                2,
                &["--scheduler", &b.url, "--reconnect-max", "0.3"],
            )
        })
        .collect();
    let api = a.api();
    let chunks: Vec<Value> = (0..60).map(|i| json!({"ms": 100, "value": i})).collect();
    let id = api.submit(&json!({"task": "nap", "chunks": chunks, "reduce": "sum"}));
    // Beside it, a job whose chunks succeed out of their order and whose last one naps for a
    // minute: its streamed partials keep their numbers on the next leader.
    let scattered: Vec<Value> = (0..30u64)
        .map(|i| json!({"ms": if i == 29 { 60_000 } else { 5 + (i * 37) % 60 }, "value": i}))
        .collect();
    let streamed = api.submit(&json!({"task": "nap", "chunks": scattered, "reduce": "sum"}));
    let feed = partials_feed(&a.url, &streamed, 0);
    let before: Vec<Value> = (0..29)
        .map(|_| feed.recv_timeout(muster_suite::WAIT).expect("a partial"))
        .collect();
    api.wait_status(&id, |s| s["chunks"]["succeeded"].as_u64() >= Some(12));

    a.proc.signal("KILL");
    a.proc.wait_exit();
    let took = wait_role(&b.url, "leader");
    assert!(
        took <= Duration::from_secs(5),
        "the standby took {took:?} to lead"
    );

    // Clients that try both addresses get the result from whichever leads.
    let out = Command::new(bin("muster"))
        .args(["result", &id, "--wait", "60", "--scheduler", &both])
        .env("MUSTER_TOKEN", CLIENT_TOKEN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        (0..60).sum::<u64>().to_string()
    );
    assert_eq!(b.api().status(&id)["chunks"]["succeeded"], 60);
    let feed = partials_feed(&b.url, &streamed, 0);
    let after: Vec<Value> = (0..29)
        .map(|_| feed.recv_timeout(muster_suite::WAIT).expect("a partial"))
        .collect();
    assert_eq!(after, before);
    let cancel = b
        .api()
        .call("DELETE", &format!("/v1/jobs/{streamed}"), None, &[]);
    assert_eq!(cancel.status, 200);
}

#[test]
fn a_leader_frozen_past_its_lease_cannot_change_any_job() {
    let pg = Postgres::start();
    let mut a = coordinator(&pg);
    wait_role(&a.url, "leader");
    let b = coordinator(&pg);
    wait_role(&b.url, "standby");
    let id = a.api().submit(&json!({"kind": "sum", "input": [1, 2, 3]}));

    a.proc.signal("STOP");
    wait_role(&b.url, "leader");
    a.proc.signal("CONT");

    // The old leader refuses the cancel (it may not lead) and then stops for good.
    // The old leader refuses the cancel (it may not lead), or is already closing, and stops.
    if let Ok(answer) = a
        .api()
        .try_call("DELETE", &format!("/v1/jobs/{id}"), None, &[])
    {
        assert_ne!(
            answer.status, 200,
            "a deposed leader accepted a cancel: {answer:?}"
        );
    }
    assert_ne!(a.proc.wait_exit(), Some(0));
    a.proc.wait_for("lost leadership");

    let status = b.api().status(&id);
    assert_eq!(status["status"], "queued", "{status}");
}

#[test]
fn a_leader_whose_database_stops_answering_steps_down_instead_of_hanging() {
    let pg = Postgres::start();
    let mut a = coordinator(&pg);
    wait_role(&a.url, "leader");
    // The database accepts packets but answers nothing, as behind a partition: the lease
    // queries time out, and the leader steps down within its lease.
    pg.signal_all(true);
    a.proc
        .wait_for("lease expired without a renewal: stepping down");
    assert_ne!(
        a.proc.wait_exit(),
        Some(0),
        "a deposed leader exits with an error"
    );
    pg.signal_all(false);
}
