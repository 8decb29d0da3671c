//! `exec` jobs: a program run over batches of items (test files, say) on the workers that allow
//! it. A batch travels as an [`ExecBatch`] chunk payload and comes back as an [`ExecReport`]
//! partial result; the job's result is the array of reports in batch order.
//!
//! The program and its arguments are passed to the operating system as they are, one argument
//! each, never through a shell: an item such as `x; rm -rf ~` is one argument. The argument
//! [`ITEMS`] stands for the batch's items, one argument each.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::junit::ItemRun;

/// The argument that expands to a batch's items, one argument each.
pub const ITEMS: &str = "{items}";

/// The argument (or part of one) that expands to a path where the program may write its JUnit
/// XML report, which the batch's report then carries.
pub const JUNIT: &str = "{junit}";

/// Largest JUnit report a batch carries; a larger one is left out, and its output says so.
pub const MAX_JUNIT_BYTES: u64 = 4 << 20;

/// The task name workers advertise for the `exec` jobs of `program`.
pub fn task_name(program: &str) -> String {
    format!("exec:{program}")
}

/// One batch: what a worker runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecBatch {
    /// The program, as the worker's allowlist names it.
    pub program: String,
    /// Its arguments; [`ITEMS`] expands to the items.
    pub args: Vec<String>,
    /// The batch's items.
    pub items: Vec<String>,
}

impl ExecBatch {
    /// It as a chunk payload.
    pub fn payload(&self) -> bytes::Bytes {
        bytes::Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    /// The arguments with [`ITEMS`] expanded, and [`JUNIT`] replaced by `junit`.
    pub fn argv(&self, junit: &str) -> Vec<String> {
        let mut argv = Vec::with_capacity(self.args.len() + self.items.len());
        for arg in &self.args {
            if arg == ITEMS {
                argv.extend(self.items.iter().cloned());
            } else {
                argv.push(arg.replace(JUNIT, junit));
            }
        }
        argv
    }

    /// True when the arguments name [`JUNIT`].
    pub fn wants_junit(&self) -> bool {
        self.args.iter().any(|a| a.contains(JUNIT))
    }
}

/// How a batch's run went: a batch's partial result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecReport {
    /// The batch's items.
    pub items: Vec<String>,
    /// The program's exit code; `None` when a signal ended it.
    pub exit_code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// How long it ran, in milliseconds.
    pub duration_ms: u64,
    /// Its output (standard output and error, interleaved as read), the middle cut out past the
    /// worker's cap.
    pub output: String,
    /// Bytes of output cut out.
    pub output_cut: u64,
    /// Runs of this batch whose program failed before this one (with `retry_failed`).
    #[serde(default)]
    pub failed_runs: u32,
    /// True when the program failed before and then passed.
    #[serde(default)]
    pub flaky: bool,
    /// The JUnit XML the program wrote at [`JUNIT`], if it wrote one (after reruns, with
    /// Surefire's `<flakyFailure>` and `<rerunFailure>` for the earlier runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub junit: Option<String>,
    /// How each item ended, filled in by the coordinator.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<ItemResult>,
}

/// How an item of an `exec` job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemStatus {
    /// It passed the first time it ran.
    Passed,
    /// It failed, on its last run too.
    Failed,
    /// It failed, then passed on a rerun (`retry_failed`).
    Flaky,
}

impl ItemStatus {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::Failed => "failed",
            Self::Flaky => "flaky",
        }
    }
}

/// How one item ended, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemResult {
    /// The item.
    pub item: String,
    /// How it ended.
    pub status: ItemStatus,
    /// How long its last run took, in milliseconds: its testcases' time when the batch wrote a
    /// JUnit report that names it, else its share of the batch's time.
    pub duration_ms: u64,
    /// The name of the worker that ran it last.
    pub worker: String,
    /// The number of the batch's attempt that ran it last, from 1: attempts lost with a worker
    /// and reruns of failed items both count.
    pub attempts: u32,
}

impl ExecReport {
    /// The report in `partial`, if it is one.
    pub fn read(partial: &[u8]) -> Option<Self> {
        serde_json::from_slice(partial).ok()
    }

    /// True when the program exited with status 0.
    pub fn passed(&self) -> bool {
        self.exit_code == Some(0)
    }

    /// Judges each item of this run, which `worker` ran as the batch's attempt `attempt`, and
    /// returns those that failed. An item fails when one of its testcases in `runs` (read off
    /// the batch's JUnit report) failed; when the program failed, so does every item the report
    /// does not name, and every item when the report names no failure (there is no telling
    /// which failed). `durations` are the items' times, in item order.
    pub fn judge(
        &mut self,
        runs: &HashMap<String, ItemRun>,
        durations: &[u64],
        worker: &str,
        attempt: u32,
    ) -> Vec<String> {
        let passed = self.passed();
        let named_failure = self
            .items
            .iter()
            .any(|i| runs.get(i).is_some_and(|r| r.failed));
        self.results = self
            .items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let failed = match runs.get(item) {
                    Some(run) => run.failed || (!passed && !named_failure),
                    None => !passed,
                };
                ItemResult {
                    item: item.clone(),
                    status: if failed {
                        ItemStatus::Failed
                    } else {
                        ItemStatus::Passed
                    },
                    duration_ms: durations.get(i).copied().unwrap_or(0),
                    worker: worker.to_owned(),
                    attempts: attempt,
                }
            })
            .collect();
        self.results
            .iter()
            .filter(|r| r.status == ItemStatus::Failed)
            .map(|r| r.item.clone())
            .collect()
    }

    /// This batch's report after `rerun`, a judged run of some of its failed items: their
    /// results are the rerun's (flaky when they pass now), the outputs follow each other, the
    /// JUnit reports fold together (see [`crate::junit::after_rerun`]), and the exit status
    /// is the rerun's.
    pub fn followed_by(mut self, rerun: ExecReport) -> ExecReport {
        let worker = rerun.results.first().map_or("", |r| r.worker.as_str());
        self.output.push_str(&format!(
            "\n[muster: rerun of {} failed item(s) on {worker}]\n",
            rerun.items.len()
        ));
        self.output.push_str(&rerun.output);
        for later in &rerun.results {
            if let Some(result) = self.results.iter_mut().find(|r| r.item == later.item) {
                let status = match (result.status, later.status) {
                    (ItemStatus::Failed | ItemStatus::Flaky, ItemStatus::Passed) => {
                        ItemStatus::Flaky
                    }
                    (_, status) => status,
                };
                *result = ItemResult {
                    status,
                    ..later.clone()
                };
            }
        }
        self.junit = match (self.junit.take(), rerun.junit) {
            (Some(earlier), Some(later)) => match crate::junit::after_rerun(&earlier, &later) {
                Ok(merged) => Some(merged),
                Err(e) => {
                    self.output
                        .push_str(&format!("[muster: the JUnit reports do not fold: {e}]\n"));
                    Some(later)
                }
            },
            (earlier, later) => later.or(earlier),
        };
        ExecReport {
            exit_code: rerun.exit_code,
            signal: rerun.signal,
            duration_ms: self.duration_ms + rerun.duration_ms,
            output_cut: self.output_cut + rerun.output_cut,
            failed_runs: self.failed_runs + 1,
            flaky: self.results.iter().any(|r| r.status == ItemStatus::Flaky),
            ..self
        }
    }

    /// How many of its items ended with `status`.
    pub fn count(&self, status: ItemStatus) -> usize {
        self.results.iter().filter(|r| r.status == status).count()
    }
}

/// An `exec` job's items before they are cut, for the coordinator to balance by the items'
/// recorded durations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecPlan {
    /// The program.
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Every item, in the order given.
    pub items: Vec<String>,
    /// True when the job left the batch count to the coordinator: the batches may be re-cut
    /// by duration; with `chunks` or `chunk_size` given they are kept as asked.
    pub balance: bool,
}

impl ExecPlan {
    /// The chunk payload of a batch of `items`.
    pub fn payload(&self, items: Vec<String>) -> bytes::Bytes {
        ExecBatch {
            program: self.program.clone(),
            args: self.args.clone(),
            items,
        }
        .payload()
    }
}

/// The timings item under which a program's start-up cost is kept (no item is empty).
pub const STARTUP_ITEM: &str = "";

/// The number of batches for items expected to take `total_ms` in all on `slots` slots, when
/// each batch costs `startup_ms` besides its items (the program starting, a test runner
/// collecting): the count that makes least of `(total + n × startup) / slots + total / n`, the
/// work's time with its start-ups plus a batch at the tail, which is `√(total × slots /
/// startup)`; at least one batch per slot and at most one per item.
pub fn batch_count(total_ms: u64, startup_ms: u64, slots: u64, items: usize) -> usize {
    let best = ((total_ms as f64) * (slots.max(1) as f64) / (startup_ms.max(1) as f64)).sqrt();
    (best.round() as usize).clamp(slots.max(1) as usize, items.max(1))
}

/// Cuts `items` into batches for a queue that `slots` slots take from, by their estimated
/// durations (items never seen count at the median of those seen), and orders the queue.
///
/// The cut: items longest first, each batch about a quarter of what is left shared among the
/// slots, so that batches shrink toward the end, down to about half of an `n`th of the total,
/// and never below twice the program's start-up cost `startup_ms` (a batch shorter than that
/// spends a third of its time starting). A known start-up cost also sets `n`, by
/// [`batch_count`].
///
/// The order: see [`lane_order`]. `None` when no item has an estimate (the caller keeps its
/// equal counts).
pub fn balanced_batches(
    items: &[String],
    estimate: impl Fn(&str) -> Option<u64>,
    slots: usize,
    n: usize,
    startup_ms: Option<u64>,
) -> Option<Vec<Vec<String>>> {
    let known: Vec<Option<u64>> = items.iter().map(|i| estimate(i)).collect();
    let mut seen: Vec<u64> = known.iter().flatten().copied().collect();
    if seen.is_empty() || items.is_empty() {
        return None;
    }
    seen.sort_unstable();
    let median = seen[seen.len() / 2];
    let mut order: Vec<(u64, usize)> = known
        .iter()
        .enumerate()
        .map(|(i, e)| (e.unwrap_or(median), i))
        .collect();
    // Longest first; equal estimates keep the given order.
    order.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut left: u64 = order.iter().map(|(ms, _)| ms).sum();
    // A known start-up cost decides the count (see [`batch_count`]).
    let n = startup_ms.map_or(n, |startup| {
        batch_count(left, startup, slots as u64, items.len())
    });
    let smallest = (left / (2 * n.max(1) as u64))
        .max(2 * startup_ms.unwrap_or(0))
        .max(1);
    let share = 4 * slots.max(1) as u64;
    let mut batches = Vec::new();
    let mut batch: Vec<String> = Vec::new();
    let mut batch_ms = 0;
    for (ms, i) in order {
        if !batch.is_empty() && batch_ms + ms > (left / share).max(smallest) {
            batches.push((batch_ms, std::mem::take(&mut batch)));
            left -= batch_ms;
            batch_ms = 0;
        }
        batch.push(items[i].clone());
        batch_ms += ms;
    }
    batches.push((batch_ms, batch));
    Some(lane_order(batches, slots, startup_ms.unwrap_or(0)))
}

/// A batch of items with its estimated duration, in milliseconds.
pub type Estimated = (u64, Vec<String>);

/// How many of a lane's shortest batches close it, longest of them first.
pub const LANE_CLOSERS: usize = 2;

/// Orders `batches` (each with its estimate) for a queue that `slots` slots take from, so that
/// the run is as short as the estimates allow when they are right, and an item whose estimate
/// is wrong still starts early.
///
/// The batches are dealt longest first, each to the lane (slot) that the plan has free soonest,
/// every batch also costing `startup_ms`: the lanes of a longest-first schedule, which end
/// together. Each lane then runs its batches shortest first, but for its [`LANE_CLOSERS`]
/// shortest, which close it: a lane's length does not depend on its order, but shortest first
/// starts most of its items early, and short batches at the end absorb what the estimates
/// missed. The queue holds the batches by their start in that plan, so slots taking from it
/// in turn follow the plan while the estimates hold, and share out the rest when one does not.
///
/// Against a longest-first queue, where a middling item starts only once every longer one has,
/// this starts middling items (the many whose estimate may be off) in the first part of the
/// run, while the longest still end by the planned makespan.
pub fn lane_order(mut batches: Vec<Estimated>, slots: usize, startup_ms: u64) -> Vec<Vec<String>> {
    batches.sort_by_key(|b| std::cmp::Reverse(b.0));
    let slots = slots.clamp(1, batches.len().max(1));
    let mut lanes: Vec<(u64, Vec<Estimated>)> = vec![(0, Vec::new()); slots];
    for batch in batches {
        let lane = lanes
            .iter_mut()
            .min_by_key(|(load, _)| *load)
            .expect("at least one lane");
        lane.0 += batch.0 + startup_ms;
        lane.1.push(batch);
    }
    let mut planned: Vec<(u64, usize, Vec<String>)> = Vec::new();
    for (index, (_, mut lane)) in lanes.into_iter().enumerate() {
        // Dealt longest first: reversed, shortest first; then the shortest few move to the end.
        lane.reverse();
        let closers = LANE_CLOSERS.min(lane.len());
        lane.rotate_left(closers);
        let at = lane.len() - closers;
        lane[at..].reverse();
        let mut start = 0;
        for (ms, batch) in lane {
            planned.push((start, index, batch));
            start += ms + startup_ms;
        }
    }
    planned.sort_by_key(|(start, lane, _)| (*start, *lane));
    planned.into_iter().map(|(_, _, batch)| batch).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each batch's items' total, in milliseconds, for items named by their duration.
    fn batch_ms(batches: &[Vec<String>]) -> Vec<u64> {
        batches
            .iter()
            .map(|b| {
                b.iter()
                    .map(|i| i.parse::<u64>().expect("a duration"))
                    .sum()
            })
            .collect()
    }

    #[test]
    fn batches_shrink_from_the_longest_items_and_each_item_is_cut_once() {
        let items: Vec<String> = ["a", "b", "c", "d", "e", "f"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let ms = |i: &str| match i {
            "a" => Some(90),
            "b" => Some(60),
            "c" => Some(30),
            "d" => Some(30),
            "e" => None,
            _ => Some(10),
        };
        // 250 ms in all (`e` at the median, 30) on one slot: half of what is left a batch, down
        // to a quarter of the total (n = 2). One lane: shortest first but for the two shortest,
        // which close it.
        let batches = balanced_batches(&items, ms, 1, 2, None).unwrap();
        assert_eq!(
            batches,
            [vec!["b"], vec!["a"], vec!["c", "d"], vec!["e", "f"]]
        );
        assert_eq!(balanced_batches(&items, |_| None, 1, 2, None), None);
        // Many equal items on two slots: the cut shrinks from a quarter of a slot's share.
        let many: Vec<String> = (0..64).map(|i| i.to_string()).collect();
        let batches = balanced_batches(&many, |_| Some(10), 2, 16, None).unwrap();
        let mut cut: Vec<String> = batches.iter().flatten().cloned().collect();
        cut.sort_by_key(|i| i.parse::<u32>().ok());
        assert_eq!(cut, many);
        let mut sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        sizes.sort_unstable_by(|a, b| b.cmp(a));
        assert_eq!(sizes[0], 8, "{sizes:?}");
        assert!(sizes.iter().rev().take(4).all(|&n| n <= 2), "{sizes:?}");
        // Each slot's queue closes on short batches.
        assert!(
            batches.iter().rev().take(4).all(|b| b.len() <= 2),
            "{batches:?}"
        );
        // A costly start keeps every batch at least twice as long as it.
        let sizes: Vec<usize> = balanced_batches(&many, |_| Some(10), 2, 16, Some(40))
            .unwrap()
            .iter()
            .map(Vec::len)
            .collect();
        assert!(sizes.iter().all(|&n| n >= 8), "{sizes:?}");
    }

    #[test]
    fn lanes_end_together_and_start_their_middling_batches_early() {
        // Items named by their duration; two slots; no start-up cost.
        let ms = [800, 700, 400, 300, 300, 200, 100, 100, 60, 40];
        let batches: Vec<(u64, Vec<String>)> =
            ms.iter().map(|m| (*m, vec![m.to_string()])).collect();
        let queue = lane_order(batches, 2, 0);
        // Longest first, to the lane free soonest (the first on a tie): [800, 300, 300, 100]
        // and [700, 400, 200, 100, 60, 40], 1500 each. Each lane shortest first but for its two
        // shortest: [300, 800, 300, 100] and [100, 200, 400, 700, 60, 40]; the queue by
        // planned start.
        assert_eq!(
            batch_ms(&queue),
            [300, 100, 200, 800, 400, 700, 300, 100, 60, 40]
        );
        // Taken in turn by two slots, the queue keeps the plan's lanes and length.
        let mut free_at = [0u64; 2];
        for ms in batch_ms(&queue) {
            let slot = if free_at[0] <= free_at[1] { 0 } else { 1 };
            free_at[slot] += ms;
        }
        assert_eq!(free_at, [1500, 1500]);
        // More slots than batches: one lane each, longest first.
        let few = vec![(5, vec!["5".to_string()]), (9, vec!["9".to_string()])];
        assert_eq!(batch_ms(&lane_order(few, 8, 0)), [9, 5]);
    }

    #[test]
    fn a_costly_start_makes_fewer_larger_batches() {
        // Pytest's seconds to start: few batches; a cheap start: many, for a short tail.
        assert_eq!(batch_count(1_500_000, 2_000, 4, 5_000), 55);
        assert_eq!(batch_count(1_500_000, 5, 4, 5_000), 1095);
        assert_eq!(batch_count(100, 500, 2, 12), 2);
        assert_eq!(batch_count(1_000_000, 1, 2, 12), 12);
    }

    #[test]
    fn items_fail_by_their_testcases_or_else_by_the_programs_status() {
        let report = |code| ExecReport {
            items: vec!["a".into(), "b".into(), "c".into()],
            exit_code: Some(code),
            signal: None,
            duration_ms: 30,
            output: String::new(),
            output_cut: 0,
            failed_runs: 0,
            flaky: false,
            junit: None,
            results: Vec::new(),
        };
        let run = |failed| ItemRun { ms: 1, failed };
        let named: HashMap<String, ItemRun> =
            [("a".to_string(), run(false)), ("b".to_string(), run(true))].into();
        let judge =
            |code, runs: &HashMap<String, ItemRun>| report(code).judge(runs, &[10, 10, 10], "w", 1);
        // The report names `b`; `c`, which it does not name, cannot be told to have passed.
        assert_eq!(judge(1, &named), ["b", "c"]);
        // No failure named although the program failed: every item failed.
        let passing: HashMap<String, ItemRun> = [("a".to_string(), run(false))].into();
        assert_eq!(judge(1, &passing), ["a", "b", "c"]);
        assert_eq!(judge(1, &HashMap::new()), ["a", "b", "c"]);
        assert!(judge(0, &HashMap::new()).is_empty());
        // A rerun that passes makes its items flaky; the rest keep their first results.
        let mut first = report(1);
        first.judge(&named, &[10, 10, 10], "w1", 1);
        let mut rerun = ExecReport {
            items: vec!["b".into(), "c".into()],
            ..report(0)
        };
        rerun.judge(&HashMap::new(), &[5, 5], "w2", 2);
        let after = first.followed_by(rerun);
        let statuses: Vec<(&str, ItemStatus, &str, u32)> = after
            .results
            .iter()
            .map(|r| (r.item.as_str(), r.status, r.worker.as_str(), r.attempts))
            .collect();
        assert_eq!(
            statuses,
            [
                ("a", ItemStatus::Passed, "w1", 1),
                ("b", ItemStatus::Flaky, "w2", 2),
                ("c", ItemStatus::Flaky, "w2", 2)
            ]
        );
        assert!(after.passed() && after.flaky);
        assert_eq!((after.failed_runs, after.duration_ms), (1, 60));
    }

    #[test]
    fn items_expand_in_place_as_separate_arguments() {
        let batch = ExecBatch {
            program: "pytest".into(),
            args: vec!["-q".into(), ITEMS.into(), "--tb=short".into()],
            items: vec!["a b.py".into(), "$(touch F)".into()],
        };
        assert_eq!(
            batch.argv("/j.xml"),
            ["-q", "a b.py", "$(touch F)", "--tb=short"]
        );
        let junit = ExecBatch {
            args: vec![format!("--junitxml={JUNIT}"), ITEMS.into()],
            ..batch
        };
        assert!(junit.wants_junit());
        assert_eq!(junit.argv("/j.xml")[0], "--junitxml=/j.xml");
    }
}
