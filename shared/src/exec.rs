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
    /// The arguments with [`ITEMS`] expanded.
    pub fn argv(&self) -> Vec<String> {
        let mut argv = Vec::with_capacity(self.args.len() + self.items.len());
        for arg in &self.args {
            if arg == ITEMS {
                argv.extend(self.items.iter().cloned());
            } else {
                argv.push(arg.clone());
            }
        }
        argv
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_expand_in_place_as_separate_arguments() {
        let batch = ExecBatch {
            program: "pytest".into(),
            args: vec!["-q".into(), ITEMS.into(), "--tb=short".into()],
            items: vec!["a b.py".into(), "$(touch F)".into()],
        };
        assert_eq!(batch.argv(), ["-q", "a b.py", "$(touch F)", "--tb=short"]);
    }
}
