//! Muster's benchmark: runs the published workloads through the real stack (a `muster serve`
//! process, worker processes, REST on 127.0.0.1), checks every result, and prints a table plus one
//! machine-readable line per workload. See BENCHMARKS.md.
//!
//! ```text
//! cargo run --release --example bench                  # every workload, default store
//! cargo run --release --example bench -- --workload W1,W5 --store memory,sqlite,postgres
//! ```
//!
//! Started by `cargo run`, it first builds the binaries it starts; started directly
//! (`./target/release/examples/bench`), it uses the ones built beside it.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use clap::Parser;
use muster_suite::{bin, bin_dir, Api, Coordinator, Postgres, Proc, WORKER_TOKEN};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

#[derive(Debug, Parser)]
#[command(about = "Muster benchmark")]
struct Args {
    /// Workloads, comma-separated: W0, W1, W2, W3, W4, W5, W6, W7, S1.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "W0,W1,W2,W3,W4,W5,W6,W7,S1"
    )]
    workload: Vec<String>,
    /// Stores, comma-separated: sqlite (the default store), memory, postgres.
    #[arg(long, value_delimiter = ',', default_value = "sqlite")]
    store: Vec<String>,
    /// Runs per workload and store.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Workers in the S1 swarm.
    #[arg(long, default_value_t = 1000)]
    s1_workers: u32,
    /// Chunks in the S1 job.
    #[arg(long, default_value_t = 1_000_000)]
    s1_chunks: usize,
    /// Keep a dashboard's load on each cluster: the cluster's event stream, the overview, the
    /// worker list and the task stream polled as the dashboard does, and every job's own event
    /// stream and chunk grid followed from its start to its end.
    #[arg(long)]
    dashboard: bool,
}

/// One run: named figures (the first is the headline), and whether the result was right.
struct Run {
    figures: Vec<(&'static str, f64, &'static str)>,
    correct: bool,
}

/// A coordinator and its workers for one workload.
struct Cluster {
    coordinator: Coordinator,
    workers: Vec<Proc>,
    /// Workers started so far, for fresh names.
    started: usize,
}

impl Cluster {
    /// A coordinator on `store` with two workers; `log`: the coordinator's `RUST_LOG` filter.
    fn start(store: &str, pg: &mut Option<Postgres>, log: Option<&str>) -> Self {
        let store_arg = match store {
            "postgres" => pg.get_or_insert_with(Postgres::start).url(),
            other => other.to_owned(),
        };
        let args = ["--store", &store_arg, "--max-body-bytes", "400000000"];
        let coordinator = Coordinator::start_logging(&args, log);
        let mut cluster = Self {
            coordinator,
            workers: Vec::new(),
            started: 0,
        };
        cluster.add_worker();
        cluster.add_worker();
        cluster
    }

    fn add_worker(&mut self) {
        // A fresh name for each: W4's replacements under one name would gather that name the
        // strikes of the workers killed before them, and get it quarantined.
        self.started += 1;
        let name = format!("bench-{}", self.started);
        // `sleep` for W6's exec batches, `sh` for W7's.
        let w = self.coordinator.worker_with(
            bin("muster-worker"),
            &name,
            1,
            &["--allow-exec", "sleep,sh"],
        );
        self.workers.push(w);
    }

    fn api(&self) -> Api {
        self.coordinator.api()
    }
}

/// What an open dashboard asks of a coordinator, from threads of its own, for as long as the
/// coordinator runs: the overview's polls and the cluster's event stream, and a job's page (its
/// event stream and its grid) open on each job submitted while no other job's page is open.
fn dashboard_load(url: &str) {
    use std::io::BufRead;
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(3600))
        .build();
    let auth = format!("Bearer {}", muster_suite::CLIENT_TOKEN);
    let get = {
        let (agent, auth, url) = (agent.clone(), auth.clone(), url.to_owned());
        move |path: &str| -> Option<Value> {
            agent
                .get(&format!("{url}{path}"))
                .set("Authorization", &auth)
                .call()
                .ok()?
                .into_json()
                .ok()
        }
    };
    // The overview page's polls: the cards and the chart, the workers, the task stream.
    let poll = get.clone();
    std::thread::spawn(move || {
        let mut next = 0;
        for tick in 0u64.. {
            // As the task stream reads: at most two pages, skipping to the last 2,000 events.
            for _ in 0..2 {
                let Some(read) = poll(&format!("/v1/attempts?after={next}")) else {
                    break;
                };
                let head = read["head"].as_u64().unwrap_or(0);
                next = read["next"].as_u64().unwrap_or(next);
                if head.saturating_sub(next) > 2000 {
                    next = head - 2000;
                    continue;
                }
                if read["attempts"].as_array().is_none_or(|a| a.len() < 1000) {
                    break;
                }
            }
            if tick % 2 == 0 && poll("/v1/overview").is_none() | poll("/v1/workers").is_none() {
                return;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    // The cluster's events; each submitted job's page: its events to the end, its grid twice
    // a second.
    let Ok(events) = agent
        .get(&format!("{url}/v1/events"))
        .set("Authorization", &auth)
        .call()
    else {
        return;
    };
    let (agent, url) = (agent.clone(), url.to_owned());
    let page_open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(events.into_reader()).lines() {
            let Ok(line) = line else { return };
            let Some(data) = line.strip_prefix("data: ") else {
                continue;
            };
            let event: Value = serde_json::from_str(data).unwrap_or(Value::Null);
            let Some(id) = (event["event"] == "job_submitted")
                .then(|| event["job_id"].as_str().map(str::to_owned))
                .flatten()
            else {
                continue;
            };
            if page_open.swap(true, std::sync::atomic::Ordering::AcqRel) {
                continue;
            }
            let (agent, auth, url, grid) = (agent.clone(), auth.clone(), url.clone(), get.clone());
            let page = page_open.clone();
            std::thread::spawn(move || {
                let _closed = Closes(page);
                let Ok(stream) = agent
                    .get(&format!("{url}/v1/jobs/{id}/events"))
                    .set("Authorization", &auth)
                    .call()
                else {
                    return;
                };
                let mut last_grid = Instant::now();
                for line in std::io::BufReader::new(stream.into_reader()).lines() {
                    let Ok(line) = line else { return };
                    if line == "event: end" {
                        return;
                    }
                    if last_grid.elapsed() >= Duration::from_millis(500) {
                        last_grid = Instant::now();
                        grid(&format!("/v1/jobs/{id}/chunks"));
                    }
                }
            });
        }
    });
}

/// Clears its flag when dropped: a dashboard's job page closed, however its stream ended.
struct Closes(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for Closes {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Release);
    }
}

fn ints(seed: u64, n: usize) -> Vec<u64> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen_range(0..1u64 << 32)).collect()
}

fn json_array(values: &[u64]) -> String {
    let mut out = String::with_capacity(values.len() * 11 + 2);
    out.push('[');
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{v}");
    }
    out.push(']');
    out
}

/// How long the machine must be idle before a run starts, and how long to wait for that at most.
const IDLE_WINDOW: Duration = Duration::from_millis(500);
const IDLE_WAIT: Duration = Duration::from_secs(10);
/// Idle: every CPU together busy for less than this share of one core over the window.
const IDLE_SHARE: f64 = 0.02;

/// Waits until the machine is idle, as the peers' figures were measured (each run started on an
/// idle machine): the previous run's housekeeping and the next body's making are done, and a
/// neighbour's burst has passed. Says so when the machine stayed busy.
fn wait_for_idle() {
    let started = Instant::now();
    loop {
        let (before, at) = (cpu_busy_secs(), Instant::now());
        std::thread::sleep(IDLE_WINDOW);
        let share = (cpu_busy_secs() - before) / at.elapsed().as_secs_f64();
        if share < IDLE_SHARE {
            if profiling() {
                println!("  idle after {:.1} s", started.elapsed().as_secs_f64());
            }
            return;
        }
        if started.elapsed() > IDLE_WAIT {
            println!(
                "  the machine stayed busy: {:.0} % of a core before this run",
                share * 100.0
            );
            return;
        }
    }
}

/// CPU seconds every CPU spent busy since boot (`/proc/stat`: all but idle and iowait, steal
/// included, in the kernel's 100 Hz ticks); 0 where there is no `/proc/stat`.
fn cpu_busy_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|t| t.parse().ok())
        .collect();
    let idle = ticks.get(3).unwrap_or(&0.0) + ticks.get(4).unwrap_or(&0.0);
    (ticks.iter().sum::<f64>() - idle) / 100.0
}

/// Submits a raw body and waits for the result; returns (seconds, result). The clock stops when
/// the result's last byte has arrived: decoding it is the benchmark client's cost, not Muster's.
fn timed(api: &Api, body: &str) -> (f64, Value) {
    wait_for_idle();
    let start = Instant::now();
    let (status, answer) = api.post_whole("/v1/jobs", body.as_bytes());
    let answer: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
    assert_eq!(status, 201, "{answer:?}");
    let id = answer["id"].as_str().expect("id").to_owned();
    let posted = start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    let bytes = loop {
        let (status, bytes) = api.call_bytes("GET", &format!("/v1/jobs/{id}/result?wait=30"), None);
        if status == 200 || Instant::now() > deadline {
            break bytes;
        }
        let problem: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        assert!(
            matches!(problem["job_status"].as_str(), Some("queued" | "running")),
            "{problem}"
        );
    };
    let secs = start.elapsed().as_secs_f64();
    show_client_times(posted, secs);
    let result: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (secs, result["result"].clone())
}

fn w0(store: &str, pg: &mut Option<Postgres>) -> Run {
    wait_for_idle();
    let start = Instant::now();
    let cluster = Cluster::start(store, pg, None);
    let answer = cluster.api().call(
        "POST",
        "/v1/jobs",
        Some(r#"{"kind": "sum", "input": [1]}"#),
        &[],
    );
    let secs = start.elapsed().as_secs_f64();
    let _ = &cluster.workers;
    Run {
        figures: vec![("seconds", secs, "s")],
        correct: answer.status == 201,
    }
}

/// CPU time the process `pid` has used, all its threads together, in nanoseconds (the
/// scheduler's own accounting, `/proc/PID/task/*/schedstat`): what a run cost the coordinator,
/// whatever else the machine was doing meanwhile.
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn w1(cluster: &Cluster, seed: u64) -> Run {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let chunks: Vec<Vec<i64>> = (0..20_000)
        .map(|_| (0..10).map(|_| rng.gen_range(0..1_000_000)).collect())
        .collect();
    let expected: i64 = chunks.iter().flatten().sum();
    let body = json!({"task": "sum", "chunks": chunks, "reduce": "sum"}).to_string();
    let pid = cluster.coordinator.proc.pid();
    let cpu = cpu_ns(pid);
    let (secs, result) = timed(&cluster.api(), &body);
    let cpu_ms = cpu_ns(pid).saturating_sub(cpu) as f64 / 1e6;
    Run {
        figures: vec![
            ("chunks_per_s", 20_000.0 / secs, "chunks/s"),
            ("coordinator_cpu_ms", cpu_ms, "ms"),
        ],
        correct: result == json!(expected),
    }
}

fn w2_body(seed: u64) -> (String, u128) {
    let values = ints(seed, 10_000_000);
    let expected: u128 = values.iter().map(|&v| u128::from(v)).sum();
    let body = format!(
        r#"{{"kind": "sum", "chunks": 100, "input": {}}}"#,
        json_array(&values)
    );
    (body, expected)
}

fn w2(cluster: &Cluster, seed: u64) -> Run {
    let (body, expected) = w2_body(seed);
    let (secs, result) = timed(&cluster.api(), &body);
    Run {
        figures: vec![
            ("seconds", secs, "s"),
            ("input_mb_per_s", body.len() as f64 / 1e6 / secs, "MB/s"),
        ],
        correct: result.as_u64().map(u128::from) == Some(expected),
    }
}

fn w3(cluster: &Cluster, seed: u64) -> Run {
    let values = ints(seed, 2_000_000);
    let body = format!(
        r#"{{"kind": "sort", "chunks": 16, "input": {}}}"#,
        json_array(&values)
    );
    let (secs, result) = timed(&cluster.api(), &body);
    let mut sorted = values;
    sorted.sort_unstable();
    let correct = result.as_array().is_some_and(|r| {
        r.len() == sorted.len() && r.iter().zip(&sorted).all(|(a, b)| a.as_u64() == Some(*b))
    });
    Run {
        figures: vec![("seconds", secs, "s")],
        correct,
    }
}

/// What the coordinator logs (at debug level, see [`W4_LOG`]) as each chunk succeeds.
const CHUNK_SUCCEEDED: &str = "chunk succeeded";
/// W4's coordinator logs each chunk's success, so that the benchmark can kill a worker once 30 %
/// of the chunks are done: a client cannot see a job's progress before its 201, and by then the
/// chunks, which start as soon as the job is accepted, are mostly done.
const W4_LOG: &str = "info,muster_scheduler::state=debug";

fn w4(cluster: &mut Cluster, seed: u64) -> Run {
    let (body, expected) = w2_body(seed);
    let api = cluster.api();
    let log = &cluster.coordinator.proc;
    let done_before = log
        .lines()
        .iter()
        .filter(|l| l.contains(CHUNK_SUCCEEDED))
        .count();
    let victim = cluster.workers.first().expect("a worker");
    let (secs, result, killed_at) = std::thread::scope(|scope| {
        // Kill a worker once 30 of the 100 chunks are done.
        let killer = scope.spawn(|| {
            log.wait_for_nth(CHUNK_SUCCEEDED, done_before + 30);
            victim.signal("KILL");
            Instant::now()
        });
        let (secs, result) = timed(&api, &body);
        (secs, result, killer.join().expect("killer thread"))
    });
    // A fresh worker a second after the kill.
    std::thread::sleep(Duration::from_secs(1).saturating_sub(killed_at.elapsed()));
    cluster.workers.remove(0);
    cluster.add_worker();
    Run {
        figures: vec![("seconds", secs, "s")],
        correct: result.as_u64().map(u128::from) == Some(expected),
    }
}

fn w5(cluster: &Cluster) -> Run {
    let mut conn = cluster.api().connect();
    let mut latencies = Vec::with_capacity(200);
    let mut correct = true;
    let json = |body: &[u8]| serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
    wait_for_idle();
    let pid = cluster.coordinator.proc.pid();
    let cpu = cpu_ns(pid);
    for i in 0..200u64 {
        let body = format!(r#"{{"task": "sum", "chunks": [[{i}, 1]], "reduce": "sum"}}"#);
        let start = Instant::now();
        let (_, created) = conn.request("POST", "/v1/jobs", Some(&body));
        let id = json(&created)["id"].as_str().unwrap_or_default().to_owned();
        let (status, result) = conn.request("GET", &format!("/v1/jobs/{id}/result?wait=10"), None);
        latencies.push(start.elapsed().as_secs_f64() * 1000.0);
        correct &= status == 200 && json(&result)["result"] == json!(i + 1);
    }
    if profiling() {
        // Slow jobs in a row point at the machine (a busy disk), lone ones at a checkpoint.
        let mut slowest: Vec<(usize, f64)> = latencies.iter().copied().enumerate().collect();
        slowest.sort_by(|a, b| b.1.total_cmp(&a.1));
        let shown: Vec<String> = slowest[..6]
            .iter()
            .map(|(job, ms)| format!("#{job} {ms:.2} ms"))
            .collect();
        println!("  slowest jobs: {}", shown.join(", "));
    }
    let cpu_us_per_job = cpu_ns(pid).saturating_sub(cpu) as f64 / 1e3 / 200.0;
    latencies.sort_by(f64::total_cmp);
    Run {
        figures: vec![
            ("p50_ms", latencies[latencies.len() / 2], "ms"),
            ("p99_ms", latencies[latencies.len() * 99 / 100], "ms"),
            ("coordinator_cpu_us_per_job", cpu_us_per_job, "us"),
        ],
        correct,
    }
}

/// W6: an exec job of 200 items that take 0-50 ms each (`sleep` over a batch's items sleeps their
/// sum) on the two workers. Makespan against the ideal, max(total / 2, longest item), and each
/// batch's overhead: its run time beyond its items' (process start and end included).
fn w6(cluster: &Cluster, seed: u64) -> Run {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let ms: Vec<u64> = (0..200).map(|_| rng.gen_range(0..=50)).collect();
    let items: Vec<String> = ms.iter().map(|m| format!("0.{m:03}")).collect();
    let total: u64 = ms.iter().sum();
    let ideal = (total as f64 / 2.0).max(ms.iter().copied().max().unwrap_or(0) as f64) / 1000.0;
    let body = json!({"kind": "exec", "program": "sleep", "args": ["{items}"], "input": items});
    let api = cluster.api();
    wait_for_idle();
    let start = Instant::now();
    let id = api.submit(&body);
    let result = api.result(&id);
    let makespan = start.elapsed().as_secs_f64();
    let reports = result.as_array().cloned().unwrap_or_default();
    let item_ms = |item: &Value| -> f64 {
        item.as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .map_or(0.0, |s| s * 1000.0)
    };
    let overheads: Vec<f64> = reports
        .iter()
        .map(|r| {
            let items: f64 = r["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(item_ms)
                .sum();
            r["duration_ms"].as_f64().unwrap_or(0.0) - items
        })
        .collect();
    let ran: usize = reports
        .iter()
        .map(|r| r["items"].as_array().map_or(0, Vec::len))
        .sum();
    Run {
        figures: vec![
            ("makespan_over_ideal", makespan / ideal, "x"),
            (
                "batch_overhead_ms",
                overheads.iter().sum::<f64>() / overheads.len().max(1) as f64,
                "ms",
            ),
            ("batches", reports.len() as f64, "batches"),
        ],
        correct: ran == 200 && reports.iter().all(|r| r["exit_code"] == json!(0)),
    }
}

/// W7: balance on four workers of one slot. 40 seeded items of uneven durations (most 50-400
/// ms, one in eight 0.8-1.6 s), each `NAME:SECONDS` slept by a shell loop that writes a JUnit
/// report timing each, under a timings key of the run's own. Makespan over ideal (max(total / 4, longest item)) for the first run (no
/// timings: equal counts), the second (timings known), and, after one middling item became ten
/// times longer than its record, the balanced run against an equal-count static split of the
/// same items (one batch per worker, as a CI matrix cuts them).
fn w7(cluster: &Cluster, seed: u64) -> Run {
    use muster_suite::balance::{
        exec_job, ideal_ms, one_middling_item_ten_times_longer, uneven_items,
    };
    let ms = uneven_items(seed);
    let key = format!("w7-{seed}-{}", std::process::id());
    let api = cluster.api();
    let run = |ms: &[u64], chunks: Option<u64>| -> (f64, f64, bool) {
        let body = exec_job(ms, &key, chunks);
        let ideal = ideal_ms(ms, 4) / 1000.0;
        wait_for_idle();
        let start = Instant::now();
        let result = api.result(&api.submit(&body));
        let makespan = start.elapsed().as_secs_f64();
        if profiling() {
            // Each batch: its time, its worker and its items, in queue order.
            println!("  makespan {makespan:.3} s, ideal {ideal:.3} s");
            for r in result.as_array().into_iter().flatten() {
                println!(
                    "  {} {} {}",
                    r["duration_ms"], r["results"][0]["worker"], r["items"]
                );
            }
        }
        let ok = result
            .as_array()
            .is_some_and(|r| r.iter().all(|b| b["exit_code"] == json!(0)));
        (makespan / ideal, ideal, ok)
    };
    let (first, _, ok1) = run(&ms, None);
    let (second, _, ok2) = run(&ms, None);
    // A middling item now takes ten times what its record says.
    let ms = one_middling_item_ten_times_longer(&ms);
    let (wrong, _, ok3) = run(&ms, None);
    let (static_split, _, ok4) = run(&ms, Some(4));
    Run {
        figures: vec![
            ("timed_over_ideal", second, "x"),
            ("first_over_ideal", first, "x"),
            ("wrong_estimate_over_ideal", wrong, "x"),
            ("static_split_over_ideal", static_split, "x"),
        ],
        correct: ok1 && ok2 && ok3 && ok4,
    }
}

/// Whether `MUSTER_CHILD_LOG` is set: a profiling run, which also shows client-side timings.
fn profiling() -> bool {
    std::env::var_os("MUSTER_CHILD_LOG").is_some()
}

/// When profiling, when the client got its 201 and its result.
fn show_client_times(posted: Duration, secs: f64) {
    if profiling() {
        println!("  client: 201 after {posted:?}, result after {secs:.4} s");
    }
}

fn rss_kib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0.0)
}

fn s1(cluster: &Cluster, workers: u32, chunks: usize) -> Run {
    let c = &cluster.coordinator;
    let mut cmd = std::process::Command::new(bin("examples/swarm"));
    cmd.args(["--scheduler", &c.url, "--workers", &workers.to_string()])
        .env("MUSTER_WORKER_TOKEN", WORKER_TOKEN)
        .env("RUST_LOG", "warn");
    let _swarm = Proc::spawn("swarm", cmd);
    let api = cluster.api();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = api.get("/v1/workers").body["workers"]
            .as_array()
            .map_or(0, Vec::len);
        if n >= workers as usize + cluster.workers.len() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut body = String::with_capacity(chunks * 4 + 64);
    body.push_str(r#"{"task": "sum", "reduce": "sum", "chunks": ["#);
    for i in 0..chunks {
        body.push_str(if i == 0 { "[1]" } else { ",[1]" });
    }
    body.push_str("]}");
    let pid = c.proc.pid();
    let before = rss_kib(pid, "VmRSS:");
    let start = Instant::now();
    let answer = api.call("POST", "/v1/jobs", Some(&body), &[]);
    let posted = start.elapsed();
    let queued = rss_kib(pid, "VmRSS:");
    let id = answer.body["id"].as_str().unwrap_or_default().to_owned();
    let result = api.wait_result_within(&id, Duration::from_secs(900)).body["result"].clone();
    let secs = start.elapsed().as_secs_f64();
    show_client_times(posted, secs);
    Run {
        figures: vec![
            ("chunks_per_s", chunks as f64 / secs, "chunks/s"),
            ("peak_rss_mb", rss_kib(pid, "VmHWM:") / 1024.0, "MB"),
            (
                "bytes_per_queued_chunk",
                (queued - before).max(0.0) * 1024.0 / chunks as f64,
                "B",
            ),
        ],
        correct: result == json!(chunks),
    }
}

/// Flushes every file system (`sync`), so that writes left by one workload are not paid by the
/// next.
fn settle_disk() {
    if let Err(e) = std::process::Command::new("sync").status() {
        eprintln!("cannot run sync: {e}");
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// When `cargo run` started the bench, builds the binaries it starts (the coordinator, the worker
/// and the S1 swarm) in its own profile first: `cargo run --release --example bench` builds only
/// the bench, and would otherwise measure binaries left from an older build, or none.
fn build_binaries() {
    let Some(cargo) = std::env::var_os("CARGO") else {
        return;
    };
    let profile = match bin_dir().file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_owned(),
        Some(name) => name.to_owned(),
        None => return,
    };
    let mut build = std::process::Command::new(cargo);
    build.args([
        "build",
        "--profile",
        &profile,
        "--workspace",
        "--bins",
        "--examples",
    ]);
    if let Some(dir) = std::env::var_os("CARGO_MANIFEST_DIR") {
        build.current_dir(dir);
    }
    match build.status() {
        Ok(status) if status.success() => {}
        Ok(status) => {
            eprintln!("bench: building the binaries failed ({status})");
            std::process::exit(2);
        }
        Err(e) => {
            eprintln!("bench: cannot run cargo to build the binaries: {e}");
            std::process::exit(2);
        }
    }
}

fn main() {
    let args = Args::parse();
    build_binaries();
    // What a build (or anything before the bench) left to write goes to the disk before the
    // first workload's syncs, not during them.
    settle_disk();
    let mut pg: Option<Postgres> = None;
    let mut lines = Vec::new();
    println!(
        "{:<9} {:<9} {:<24} {:>12}  runs",
        "workload", "store", "figure", "median"
    );
    for workload in &args.workload {
        for store in &args.store {
            let mut runs = Vec::new();
            let log = (workload == "W4").then_some(W4_LOG);
            let mut cluster = (workload != "W0").then(|| Cluster::start(store, &mut pg, log));
            if let (Some(c), true) = (cluster.as_ref(), args.dashboard) {
                dashboard_load(&c.coordinator.url);
            }
            if let (Some(c), "W7") = (cluster.as_mut(), workload.as_str()) {
                // Four workers of one slot.
                c.add_worker();
                c.add_worker();
            }
            for i in 0..args.runs {
                let seed = i as u64;
                let run = match (workload.as_str(), cluster.as_mut()) {
                    ("W0", _) => w0(store, &mut pg),
                    ("W1", Some(c)) => w1(c, seed),
                    ("W2", Some(c)) => w2(c, seed),
                    ("W3", Some(c)) => w3(c, seed),
                    ("W4", Some(c)) => w4(c, seed),
                    ("W5", Some(c)) => w5(c),
                    ("W6", Some(c)) => w6(c, seed),
                    ("W7", Some(c)) => w7(c, seed),
                    ("S1", Some(c)) => s1(c, args.s1_workers, args.s1_chunks),
                    (other, _) => panic!("unknown workload {other}"),
                };
                runs.push(run);
                if workload == "S1" {
                    // One run: the swarm and a million chunks are minutes of work, not seconds.
                    break;
                }
            }
            if profiling() {
                // Profiling: the coordinator's timed log lines, each job's start and end, lost workers
                // and their failed attempts.
                for line in cluster.iter().flat_map(|c| c.coordinator.proc.lines()) {
                    if [
                        "took",
                        "job accepted",
                        "job finished",
                        "attempt failed",
                        "connection ended",
                    ]
                    .iter()
                    .any(|s| line.contains(s))
                    {
                        println!("  | {line}");
                    }
                }
            }
            // The cluster's data dir goes, and the disk finishes with it (freeing a WAL of many
            // megabytes can stall the next workload's syncs) before the next workload starts.
            drop(cluster);
            settle_disk();
            let correct = runs.iter().all(|r| r.correct);
            for (k, (name, _, unit)) in runs[0].figures.iter().enumerate() {
                let values: Vec<f64> = runs.iter().map(|r| r.figures[k].1).collect();
                let m = median(values.clone());
                let shown: Vec<String> = values.iter().map(|v| format!("{v:.3}")).collect();
                println!(
                    "{workload:<9} {store:<9} {:<24} {m:>12.3}  {}",
                    format!("{name} ({unit})"),
                    shown.join(" ")
                );
                lines.push(format!(
                    "workload={workload} store={store} figure={name} runs={} median={m:.4} unit={unit} correct={correct}",
                    runs.len()
                ));
            }
        }
    }
    for line in lines {
        println!("{line}");
    }
}
