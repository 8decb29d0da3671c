//! Sub-jobs: running tasks that submit jobs of their own, wait for them with their slots free,
//! and find them again when they are retried.

use muster_suite::{
    bin, custom_worker_bin, leader_and_standby, wait_role, Api, Coordinator, Postgres, Proc,
    WORKER_TOKEN,
};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// The ping-pong example worker, labelled `role=ROLE`, with one slot.
fn ping_pong(c: &Coordinator, name: &str, role: &str) -> Proc {
    c.worker_with(
        bin("examples/ping_pong"),
        name,
        1,
        &["--label", &format!("role={role}")],
    )
}

/// The sub-jobs of job `id`, as `GET /v1/jobs?parent=` lists them.
fn children(c: &Coordinator, id: &str) -> Vec<Value> {
    children_on(&c.api(), id)
}

/// [`children`], asking `api`.
fn children_on(api: &Api, id: &str) -> Vec<Value> {
    let page = api.get(&format!("/v1/jobs?parent={id}&limit=1000")).body;
    page["jobs"].as_array().cloned().unwrap_or_default()
}

/// Waits until job `id` has `n` sub-jobs.
fn wait_for_children(c: &Coordinator, id: &str, n: usize) {
    let deadline = std::time::Instant::now() + muster_suite::WAIT;
    while children(c, id).len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "job {id} never had {n} sub-jobs"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The ids of `jobs`, sorted.
fn ids(jobs: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = jobs
        .iter()
        .map(|j| j["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    ids.sort();
    ids
}

#[test]
fn ping_pong_between_sum_and_sort_workers_is_exact_with_one_slot_each_and_a_worker_killed() {
    let c = Coordinator::start(&[]);
    let a1 = ping_pong(&c, "a1", "a");
    let _a2 = ping_pong(&c, "a2", "a");
    let _b1 = ping_pong(&c, "b1", "b");
    let _b2 = ping_pong(&c, "b2", "b");
    let api = c.api();
    let mut rng = rand::rngs::StdRng::seed_from_u64(16);
    let lists: Vec<Vec<i64>> = (0..12)
        .map(|_| {
            (0..rng.gen_range(2..40))
                .map(|_| rng.gen_range(-1000..1000))
                .collect()
        })
        .collect();
    let id = api.submit(
        &json!({"task": "ping", "labels": {"role": "a"}, "reduce": "none",
        "chunks": lists, "speculation": false}),
    );
    // A worker of A dies midway: pings it ran, and sums it ran for pongs, run again elsewhere.
    api.wait_status(&id, |s| s["chunks"]["succeeded"].as_u64() >= Some(3));
    a1.signal("KILL");
    let result = api.result(&id);
    for (list, answer) in lists
        .iter()
        .zip(result.as_array().expect("one answer a chunk"))
    {
        let mut sorted = list.clone();
        sorted.sort_unstable();
        let (low, high) = sorted.split_at(sorted.len() / 2);
        let sums = [low.iter().sum::<i64>(), high.iter().sum::<i64>()];
        assert_eq!(
            answer,
            &json!({"sorted": sorted, "sums": sums, "total": sums[0] + sums[1]}),
            "{list:?}"
        );
    }
    // Each ping asked B once, and each pong asked A twice, retries included.
    let pongs = children(&c, &id);
    assert_eq!(pongs.len(), 12, "{pongs:?}");
    for pong in &pongs {
        assert_eq!(pong["parent"]["job"], json!(id), "{pong}");
        assert_eq!(pong["parent"]["depth"], json!(1), "{pong}");
        let sums = children(&c, pong["id"].as_str().unwrap());
        assert_eq!(sums.len(), 2, "{sums:?}");
        assert!(sums
            .iter()
            .all(|s| s["status"] == json!("succeeded") && s["parent"]["depth"] == json!(2)));
    }
}

#[test]
fn a_thousand_parents_each_waiting_on_ten_children_finish_on_two_slots_in_all() {
    let c = Coordinator::start(&[]);
    let _w = c.worker_with(custom_worker_bin(), "w1", 2, &[]);
    let api = c.api();
    let chunks: Vec<Value> = (0..1000)
        .map(|i| json!({"children": 10, "value": i}))
        .collect();
    let id = api.submit(&json!({"task": "fan", "reduce": "sum", "chunks": chunks}));
    let result = api.wait_result_within(&id, std::time::Duration::from_secs(600));
    // Parent i's children sum [i, k] for k in 0..10: 10 i + 45.
    let expected: i64 = (0..1000).map(|i: i64| 10 * i + 45).sum();
    assert_eq!(result.status, 200, "{:?}", api.status(&id));
    assert_eq!(result.body["result"], json!(expected));
    let status = api.status(&id);
    assert_eq!(
        status["attempts"],
        json!(1000),
        "no parent ran twice: {status}"
    );
}

#[test]
fn sub_jobs_are_the_running_chunks_own_a_worker_token_still_cannot_submit() {
    let c = Coordinator::start(&["--max-sub-job-depth", "3"]);
    let _w = c.worker_with(custom_worker_bin(), "w1", 1, &[]);
    let api = c.api();
    // Three deep is allowed, the fourth is refused, and the chain fails saying so.
    let ok = api.submit(&json!({"task": "nest", "reduce": "sum", "chunks": [{"depth": 3}]}));
    assert_eq!(api.result(&ok), json!(3));
    let deep = api.submit(
        &json!({"task": "nest", "reduce": "sum", "chunks": [{"depth": 4}],
        "max_attempts": 1}),
    );
    let answer = api.wait_result(&deep);
    assert_eq!(
        answer.body["job_status"],
        json!("failed"),
        "{:?}",
        answer.body
    );
    let status = api.status(&deep);
    let error = status["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("sub-jobs nest at most 3 deep (--max-sub-job-depth)"),
        "{error}"
    );
    // A worker token is for workers: submitting over REST is a client's right alone.
    let as_worker = muster_suite::Api::new(&c.url, Some(WORKER_TOKEN));
    let refused = as_worker.call(
        "POST",
        "/v1/jobs",
        Some(r#"{"kind": "sum", "input": [1, 2]}"#),
        &[],
    );
    assert_eq!(refused.status, 403, "{:?}", refused.body);
    let bad = api.get("/v1/jobs?parent=nope");
    assert_eq!(bad.status, 422, "{:?}", bad.body);
    assert_eq!(bad.body["detail"], json!("`parent` is not a job id: nope"));
}

/// Every job below `id`, depth first.
fn descendants(c: &Coordinator, id: &str) -> Vec<Value> {
    let mut all = Vec::new();
    for child in children(c, id) {
        let below = descendants(c, child["id"].as_str().unwrap_or_default());
        all.push(child);
        all.extend(below);
    }
    all
}

#[test]
fn cancelling_the_root_cancels_every_descendant_and_stops_their_chunks() {
    let c = Coordinator::start(&[]);
    let w = c.worker_with(custom_worker_bin(), "w1", 1, &[]);
    let api = c.api();
    // nest 2 → nest 1 → nest 0 → a nap of ten minutes, three levels down.
    let root = api.submit(&json!({"task": "nest", "reduce": "sum",
        "chunks": [{"depth": 2, "nap_ms": 600_000}]}));
    let deadline = std::time::Instant::now() + muster_suite::WAIT;
    let nap = loop {
        let below = descendants(&c, &root);
        if let Some(nap) = below
            .iter()
            .find(|j| j["task"] == json!("nap") && j["chunks"]["running"] == json!(1))
        {
            assert_eq!(below.len(), 3, "{below:?}");
            break nap["id"].as_str().unwrap_or_default().to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the nap never started: {below:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let cancelled = api.call("DELETE", &format!("/v1/jobs/{root}"), None, &[]);
    assert_eq!(cancelled.status, 200, "{:?}", cancelled.body);
    for job in descendants(&c, &root) {
        assert_eq!(job["status"], json!("cancelled"), "{job}");
        assert_eq!(job["chunks"]["running"], json!(0), "{job}");
    }
    // The nap's chunk was stopped on its worker, which is free again.
    w.wait_for(&format!("job_id={nap}"));
    w.wait_for("cancelled chunk");
    let workers = api.get("/v1/workers").body;
    assert_eq!(workers["workers"][0]["running"], json!(0), "{workers}");
}

#[test]
fn a_retried_parent_finds_the_children_its_killed_attempt_submitted_and_none_runs_twice() {
    let c = Coordinator::start(&[]);
    let p1 = c.worker_with(custom_worker_bin(), "p1", 1, &["--label", "role=p"]);
    let _c1 = c.worker_with(custom_worker_bin(), "c1", 4, &["--label", "role=c"]);
    let api = c.api();
    let root = api.submit(
        &json!({"task": "fan", "reduce": "sum", "labels": {"role": "p"},
        "chunks": [{"children": 4, "value": 10, "nap_ms": 1500, "labels": {"role": "c"}}]}),
    );
    // Once all four children run, the parent's worker dies; another takes the parent up.
    let deadline = std::time::Instant::now() + muster_suite::WAIT;
    while children(&c, &root)
        .iter()
        .filter(|j| j["chunks"]["running"] == json!(1))
        .count()
        < 4
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the children never ran"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    p1.signal("KILL");
    let _p2 = c.worker_with(custom_worker_bin(), "p2", 1, &["--label", "role=p"]);
    assert_eq!(api.result(&root), json!(10 + 11 + 12 + 13));
    let status = api.status(&root);
    assert_eq!(
        status["attempts"],
        json!(2),
        "the parent ran again: {status}"
    );
    let kids = children(&c, &root);
    assert_eq!(kids.len(), 4, "{kids:?}");
    for kid in kids {
        assert_eq!(kid["attempts"], json!(1), "each child ran once: {kid}");
    }
}

#[test]
fn sub_jobs_and_their_parent_links_survive_a_coordinator_restart() {
    let mut c = Coordinator::start(&[]);
    let w = c.worker_with(custom_worker_bin(), "w1", 2, &[]);
    let api = c.api();
    let root = api.submit(&json!({"task": "fan", "reduce": "sum",
        "chunks": [{"children": 3, "value": 1, "nap_ms": 1000}]}));
    wait_for_children(&c, &root, 3);
    let before = ids(&children(&c, &root));
    c.restart(&[]);
    w.wait_for_nth("registered with coordinator", 2);
    let api = c.api();
    assert_eq!(api.result(&root), json!(1 + 2 + 3));
    // The same three children, still linked to their parent: the rerun parent found them.
    let after = children(&c, &root);
    assert_eq!(ids(&after), before);
    for kid in after {
        assert_eq!(kid["parent"]["job"], json!(root), "{kid}");
        assert_eq!(kid["status"], json!("succeeded"), "{kid}");
    }
}

#[test]
fn a_plain_task_waits_on_its_blocking_thread_with_its_one_slot_free_for_its_children() {
    let c = Coordinator::start(&[]);
    let _w = c.worker_with(custom_worker_bin(), "w1", 1, &[]);
    let api = c.api();
    let chunks: Vec<Value> = (0..4).map(|i| json!({"children": 3, "value": i})).collect();
    let id = api.submit(&json!({"task": "fan_blocking", "reduce": "sum", "chunks": chunks}));
    // Parent i's children sum [i, k] for k in 0..3: 3 i + 3.
    assert_eq!(
        api.result(&id),
        json!((0..4).map(|i| 3 * i + 3).sum::<i64>())
    );
    assert_eq!(children(&c, &id).len(), 12);
}

#[test]
fn sub_jobs_and_their_parent_links_survive_a_failover_on_postgres() {
    let pg = Postgres::start();
    let (a, b) = leader_and_standby(&pg);
    let _w = a.worker_with(
        custom_worker_bin(),
        "w1",
        2,
        &["--scheduler", &b.url, "--reconnect-max", "0.3"],
    );
    let api = a.api();
    let root = api.submit(&json!({"task": "fan", "reduce": "sum",
        "chunks": [{"children": 3, "value": 1, "nap_ms": 1000}]}));
    wait_for_children(&a, &root, 3);
    let before = ids(&children(&a, &root));
    a.proc.signal("KILL");
    wait_role(&b.url, "leader");
    let api = b.api();
    assert_eq!(api.result(&root), json!(1 + 2 + 3));
    let after = children_on(&api, &root);
    assert_eq!(
        ids(&after),
        before,
        "the new leader's parent found the same children"
    );
    assert!(
        after.iter().all(|k| k["parent"]["job"] == json!(root)),
        "{after:?}"
    );
}
