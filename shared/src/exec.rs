//! `exec` jobs: a program run over batches of items (test files, say) on the workers that allow
//! it. A batch travels as an [`ExecBatch`] chunk payload and comes back as an [`ExecReport`]
//! partial result; the job's result is the array of reports in batch order.
//!
//! The program and its arguments are passed to the operating system as they are, one argument
//! each, never through a shell: an item such as `x; rm -rf ~` is one argument. The argument
//! [`ITEMS`] stands for the batch's items, one argument each.

use serde::{Deserialize, Serialize};

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
    /// The JUnit XML the program wrote at [`JUNIT`], if it wrote one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub junit: Option<String>,
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
        let batch = ExecBatch {
            program: self.program.clone(),
            args: self.args.clone(),
            items,
        };
        bytes::Bytes::from(serde_json::to_vec(&batch).unwrap_or_default())
    }
}

/// Cuts `items` into `n` batches of about equal expected duration, longest batch first: items
/// are taken longest first, each into the batch with the least expected time so far (longest
/// processing time first), and items never seen count at the median of those seen. `None`
/// when no item has an estimate (the caller keeps its equal counts).
pub fn balanced_batches(
    items: &[String],
    estimate: impl Fn(&str) -> Option<u64>,
    n: usize,
) -> Option<Vec<Vec<String>>> {
    let known: Vec<Option<u64>> = items.iter().map(|i| estimate(i)).collect();
    let mut seen: Vec<u64> = known.iter().flatten().copied().collect();
    if seen.is_empty() || n == 0 {
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
    let n = n.min(items.len());
    let mut batches: Vec<(u64, Vec<String>)> = vec![(0, Vec::new()); n];
    for (ms, i) in order {
        let lightest = (0..n).min_by_key(|&b| (batches[b].0, b)).unwrap_or(0);
        batches[lightest].0 += ms;
        batches[lightest].1.push(items[i].clone());
    }
    batches.sort_by_key(|b| std::cmp::Reverse(b.0));
    Some(batches.into_iter().map(|(_, items)| items).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_balanced_by_estimate_longest_first() {
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
        let batches = balanced_batches(&items, ms, 2).unwrap();
        assert_eq!(batches, [vec!["a", "d", "f"], vec!["b", "c", "e"]]);
        assert_eq!(balanced_batches(&items, |_| None, 2), None);
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
