//! A seeded soak: rounds of mixed jobs (custom naps, built-in sorts, parents that wait on
//! children) while workers are SIGKILLed and replaced and the coordinator is SIGKILLed and
//! restarted on its store. Every accepted job ends with its exact result, and every parent with
//! its own children, each of which ran to one result.

use std::time::{Duration, Instant};

use muster_suite::{custom_worker_bin, Api, Coordinator, Proc, WAIT};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// What is done to the cluster after each round's jobs are under way.
#[derive(Debug, Clone, Copy)]
enum Chaos {
    KillWorker,
    RestartCoordinator,
    Nothing,
}

/// The rounds, in order: every kind of trouble at least twice.
const ROUNDS: [Chaos; 7] = [
    Chaos::KillWorker,
    Chaos::RestartCoordinator,
    Chaos::KillWorker,
    Chaos::Nothing,
    Chaos::RestartCoordinator,
    Chaos::KillWorker,
    Chaos::Nothing,
];

/// Workers kept running (one is replaced as another is killed).
const WORKERS: usize = 3;

/// A job and what it must end with.
struct Expected {
    id: String,
    result: Value,
    /// For a parent: how many children it must have.
    children: Option<u64>,
}

fn start_worker(c: &Coordinator, n: usize) -> Proc {
    c.worker_with(
        custom_worker_bin(),
        &format!("w{n}"),
        2,
        &["--reconnect-max", "0.3"],
    )
}

/// Waits (bounded) until `n` workers are connected.
fn wait_workers(api: &Api, n: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let listed = api.get("/v1/workers").body;
        let connected = listed["workers"].as_array().map_or(0, Vec::len);
        if connected == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{n} workers never connected: {listed}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One round's jobs: a custom `nap` job, a built-in sort, and a parent with children.
fn submit_round(api: &Api, rng: &mut StdRng) -> Vec<Expected> {
    let values: Vec<i64> = (0..rng.gen_range(10..40))
        .map(|_| rng.gen_range(-1000..1000))
        .collect();
    let chunks: Vec<Value> = values
        .iter()
        .map(|v| json!({"ms": rng.gen_range(20..120), "value": v}))
        .collect();
    let naps = api.submit(&json!({"task": "nap", "reduce": "sum", "chunks": chunks}));
    let mut numbers: Vec<i64> = (0..rng.gen_range(100..3000))
        .map(|_| rng.gen_range(-1_000_000..1_000_000))
        .collect();
    let sort =
        api.submit(&json!({"kind": "sort", "input": numbers, "chunks": rng.gen_range(2..8)}));
    numbers.sort_unstable();
    let children: u64 = rng.gen_range(2..6);
    let value: u64 = rng.gen_range(0..100);
    let parent = api.submit(&json!({"task": "fan", "reduce": "sum", "chunks": [
        {"children": children, "value": value, "nap_ms": rng.gen_range(50..300)}
    ]}));
    vec![
        Expected {
            id: naps,
            result: json!(values.iter().sum::<i64>()),
            children: None,
        },
        Expected {
            id: sort,
            result: json!(numbers),
            children: None,
        },
        Expected {
            id: parent,
            // Child i naps, then returns value + i.
            result: json!(children * value + children * (children - 1) / 2),
            children: Some(children),
        },
    ]
}

#[test]
fn a_seeded_mix_of_jobs_ends_exactly_through_killed_workers_and_coordinator_restarts() {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut c = Coordinator::start(&[]);
    let mut workers: Vec<Proc> = (0..WORKERS).map(|n| start_worker(&c, n)).collect();
    let mut started = WORKERS;
    let mut expected = Vec::new();
    for chaos in ROUNDS {
        let api = c.api();
        let round = submit_round(&api, &mut rng);
        // The trouble comes once the round's first job is under way.
        api.wait_status(&round[0].id, |s| {
            s["chunks"]["succeeded"].as_u64() >= Some(3)
        });
        expected.extend(round);
        match chaos {
            Chaos::KillWorker => {
                let victim = rng.gen_range(0..workers.len());
                workers[victim].signal("KILL");
                workers[victim] = start_worker(&c, started);
                started += 1;
            }
            Chaos::RestartCoordinator => {
                c.restart(&[]);
                wait_workers(&c.api(), WORKERS);
            }
            Chaos::Nothing => {}
        }
    }
    let api = c.api();
    // The trouble hit running work: attempts ended by a lost worker and by a restart.
    let mut classes = std::collections::BTreeSet::new();
    for job in &expected {
        assert_eq!(api.result(&job.id), job.result, "job {}", job.id);
        let status = api.status(&job.id);
        for chunk in status["retries"].as_array().into_iter().flatten() {
            for attempt in chunk["attempts"].as_array().into_iter().flatten() {
                if let Some(class) = attempt["error"]["class"].as_str() {
                    classes.insert(class.to_owned());
                }
            }
        }
        let Some(n) = job.children else { continue };
        let listed = api.get(&format!("/v1/jobs?parent={}", job.id)).body;
        let kids = listed["jobs"].as_array().cloned().unwrap_or_default();
        assert_eq!(kids.len() as u64, n, "the children of {}: {listed}", job.id);
        for kid in kids {
            assert_eq!(kid["status"], json!("succeeded"), "{kid}");
            assert_eq!(kid["parent"]["job"], json!(job.id), "{kid}");
        }
    }
    for class in ["worker_lost", "coordinator_restarted"] {
        assert!(
            classes.contains(class),
            "no attempt ended {class}: {classes:?}"
        );
    }
}
