//! Issue #14's balance workload, shared by bench W7 and `tests/exec.rs` so that both run the
//! same thing: 40 seeded items of uneven durations, each slept by a shell loop that writes a
//! JUnit report timing it, as a test runner's would.

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// 40 item durations in milliseconds, seeded: most 50-400, one in eight 800-1600.
pub fn uneven_items(seed: u64) -> Vec<u64> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..40)
        .map(|_| match rng.gen_range(0..8) {
            0 => rng.gen_range(800..=1600),
            _ => rng.gen_range(50..=400),
        })
        .collect()
}

/// `ms` with its middling item (the one at the middle once sorted) ten times longer: an
/// estimate gone wrong.
pub fn one_middling_item_ten_times_longer(ms: &[u64]) -> Vec<u64> {
    let mut sorted = ms.to_vec();
    sorted.sort_unstable();
    let middling = ms
        .iter()
        .position(|m| *m == sorted[ms.len() / 2])
        .unwrap_or(0);
    let mut wrong = ms.to_vec();
    wrong[middling] *= 10;
    wrong
}

/// max(total / slots, longest item), in milliseconds: no schedule of `ms` on `slots` slots is
/// shorter.
pub fn ideal_ms(ms: &[u64], slots: usize) -> f64 {
    (ms.iter().sum::<u64>() as f64 / slots as f64).max(ms.iter().copied().max().unwrap_or(0) as f64)
}

/// The item named `itemNN:SECONDS` for the `i`th duration.
fn item(i: usize, ms: u64) -> String {
    format!("item{i:02}:{}.{:03}", ms / 1000, ms % 1000)
}

/// The index an item's name carries.
pub fn item_index(name: &str) -> Option<usize> {
    name.strip_prefix("item")?.get(..2)?.parse().ok()
}

/// The `exec` job that sleeps the items `ms` under timings key `key`, cut into `chunks`
/// equal-count batches when given (a static split), else left to the coordinator.
pub fn exec_job(ms: &[u64], key: &str, chunks: Option<u64>) -> Value {
    let items: Vec<String> = ms.iter().enumerate().map(|(i, m)| item(i, *m)).collect();
    let script = r#"out=$1; shift; echo '<testsuite>' > "$out"
        for t; do sleep "${t#*:}"; echo "<testcase name=\"$t\" time=\"${t#*:}\"/>" >> "$out"; done
        echo '</testsuite>' >> "$out""#;
    let mut body = json!({"kind": "exec", "program": "sh", "timings_key": key,
        "args": ["-c", script, "sh", "{junit}", "{items}"], "input": items});
    if let Some(n) = chunks {
        body["chunks"] = json!(n);
    }
    body
}
