//! Reducers: how the coordinator merges partial results, in chunk order, into one result.
//!
//! Every reducer is deterministic and associative over contiguous chunks, so the result does not
//! depend on the chunking, the worker count or retries.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};

use bytes::Bytes;
use serde::ser::{SerializeMap, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::packed::{is_packed, Packed};
use crate::task::{compare, int_from_json};

/// The reducers a job may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "reducer", rename_all = "snake_case")]
pub enum Reducer {
    /// Concatenate array results (a non-array result counts as one element).
    Concat,
    /// Add numeric results: exactly for integers, as `f64` once a float appears.
    Sum,
    /// K-way merge of sorted arrays, stable across chunks.
    MergeSorted {
        /// Chunks were sorted largest first.
        descending: bool,
    },
    /// Add word → count objects; optionally keep the `top` most frequent.
    CountMap {
        /// Keep this many entries, most frequent first (ties by word).
        top: Option<usize>,
    },
    /// No merge: the result is the array of partial results in chunk order.
    None,
}

/// A partial result the reducer cannot use; names the chunk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chunk {chunk}: {message}")]
pub struct ReduceError {
    /// Index of the chunk whose result was refused.
    pub chunk: usize,
    /// What was wrong with it.
    pub message: String,
}

fn bad(chunk: usize, message: impl Into<String>) -> ReduceError {
    ReduceError {
        chunk,
        message: message.into(),
    }
}

fn parse_partial<'a, T: serde::Deserialize<'a>>(
    chunk: usize,
    bytes: &'a [u8],
    expected: &str,
) -> Result<T, ReduceError> {
    serde_json::from_slice(bytes).map_err(|e| bad(chunk, format!("result is not {expected}: {e}")))
}

impl Reducer {
    /// The reducer for a `reduce` name of a custom job.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "concat" => Reducer::Concat,
            "sum" => Reducer::Sum,
            "merge_sorted" => Reducer::MergeSorted { descending: false },
            "count_map" => Reducer::CountMap { top: None },
            "none" => Reducer::None,
            _ => return None,
        })
    }

    /// True for the reducers whose merge does not depend on the order partials are taken in,
    /// which a [`Fold`] does as they arrive.
    pub fn folds(self) -> bool {
        matches!(self, Reducer::MergeSorted { .. } | Reducer::CountMap { .. })
    }

    /// The name used in job bodies.
    pub fn name(&self) -> &'static str {
        match self {
            Reducer::Concat => "concat",
            Reducer::Sum => "sum",
            Reducer::MergeSorted { .. } => "merge_sorted",
            Reducer::CountMap { .. } => "count_map",
            Reducer::None => "none",
        }
    }

    /// Checks that one partial result has the shape this reducer merges (a number for `sum`, an
    /// array or packed run for `merge_sorted`, an object of counts for `count_map`, any JSON for
    /// the others), so that a bad one is refused when it arrives, and its chunk retried
    /// elsewhere, instead of failing the whole job at its merge. Checks without building the
    /// value: no more than a parse's time, no allocation per element.
    pub fn check(&self, partial: &[u8]) -> Result<(), String> {
        use serde::de::IgnoredAny;
        let parsed = match self {
            Reducer::Sum => {
                let v: Value = serde_json::from_slice(partial).map_err(|e| e.to_string())?;
                if int_from_json(&v).is_none() && v.as_f64().is_none() {
                    return Err(format!("`{}` is not a number", short(&v.to_string())));
                }
                return Ok(());
            }
            Reducer::MergeSorted { .. } if is_packed(partial) => {
                return match Packed::read(partial) {
                    Some(_) => Ok(()),
                    None => Err("a damaged packed run".into()),
                };
            }
            Reducer::MergeSorted { .. } => serde_json::from_slice::<Vec<IgnoredAny>>(partial)
                .map(drop)
                .map_err(|e| format!("not an array: {e}")),
            Reducer::CountMap { .. } => serde_json::from_slice::<CountsShape>(partial)
                .map(drop)
                .map_err(|e| format!("not an object of word to count: {e}")),
            Reducer::Concat | Reducer::None => serde_json::from_slice::<IgnoredAny>(partial)
                .map(drop)
                .map_err(|e| format!("not json: {e}")),
        };
        parsed
    }

    /// Merges the partial results (JSON, in chunk order) into the job's result as JSON text.
    pub fn reduce(&self, partials: &[Bytes]) -> Result<String, ReduceError> {
        match *self {
            Reducer::Sum => reduce_sum(partials),
            Reducer::Concat => {
                let mut out = Vec::new();
                for (i, p) in partials.iter().enumerate() {
                    match parse_partial::<Value>(i, p, "json")? {
                        Value::Array(items) => out.extend(items),
                        other => out.push(other),
                    }
                }
                Ok(to_text(&out))
            }
            Reducer::MergeSorted { descending } => {
                if let Some(merged) = merge_sorted_ints(partials, descending) {
                    return Ok(merged);
                }
                let mut runs = Vec::with_capacity(partials.len());
                for (i, p) in partials.iter().enumerate() {
                    runs.push(parse_partial::<Vec<Value>>(i, p, "an array")?);
                }
                Ok(to_text(&merge_sorted(runs, descending)))
            }
            Reducer::CountMap { top } => {
                let mut counts: BTreeMap<String, u64> = BTreeMap::new();
                for (i, p) in partials.iter().enumerate() {
                    let part: BTreeMap<String, u64> =
                        parse_partial(i, p, "an object of word to count")?;
                    for (word, n) in part {
                        *counts.entry(word).or_default() += n;
                    }
                }
                Ok(count_map_text(counts, top))
            }
            Reducer::None => {
                let mut out: Vec<&RawValue> = Vec::with_capacity(partials.len());
                for (i, p) in partials.iter().enumerate() {
                    out.push(parse_partial(i, p, "json")?);
                }
                Ok(to_text(&out))
            }
        }
    }
}

/// An object of word to count, checked without keeping it.
struct CountsShape;

impl<'de> serde::Deserialize<'de> for CountsShape {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = CountsShape;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of word to count")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<CountsShape, A::Error> {
                while map.next_entry::<serde::de::IgnoredAny, u64>()?.is_some() {}
                Ok(CountsShape)
            }
        }
        d.deserialize_map(Visit)
    }
}

/// The start of `text`, for an error message.
fn short(text: &str) -> &str {
    let mut end = text.len().min(64);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn to_text(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn reduce_sum(partials: &[Bytes]) -> Result<String, ReduceError> {
    let mut exact: i128 = 0;
    let mut float: Option<f64> = None;
    for (i, p) in partials.iter().enumerate() {
        let v: Value = parse_partial(i, p, "a number")?;
        if let Some(n) = int_from_json(&v) {
            match float.as_mut() {
                Some(f) => *f += n as f64,
                None => {
                    exact = exact
                        .checked_add(n)
                        .ok_or_else(|| bad(i, "sum overflows 128-bit integers"))?
                }
            }
        } else if let Some(f) = v.as_f64() {
            *float.get_or_insert(exact as f64) += f;
        } else {
            return Err(bad(i, format!("result is not a number: {v}")));
        }
    }
    Ok(match float {
        Some(f) => to_text(&f),
        // Written as a bare JSON number even past 64 bits: the digits are exact.
        None => exact.to_string(),
    })
}

/// One run's head in the merge heap; ties go to the earlier chunk, which keeps the merge stable.
struct Head {
    value: Value,
    run: usize,
    descending: bool,
}

impl Ord for Head {
    fn cmp(&self, other: &Self) -> Ordering {
        // BinaryHeap pops the greatest, so "greatest" here is the element to emit next.
        let by_value = if self.descending {
            compare(&self.value, &other.value)
        } else {
            compare(&other.value, &self.value)
        };
        by_value.then_with(|| other.run.cmp(&self.run))
    }
}
impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Head {}

/// Runs holding at least this many integers in all are merged on several threads.
const PARALLEL_MERGE: usize = 1 << 18;
/// Values taken from each run to choose where the threads' shares of the output begin.
const SAMPLES_PER_RUN: usize = 64;

/// A partial result as a run of 64-bit integers (packed, or a JSON array), if it is one.
fn int_run(partial: &[u8]) -> Option<Vec<i64>> {
    match Packed::read(partial) {
        Some(run) => Some(run.values()),
        None => crate::ints::parse_ints(partial),
    }
}

/// Shares of the output a merge of `total` integers is cut into, one per core when it is large.
fn shares_for(total: usize) -> usize {
    if total >= PARALLEL_MERGE {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
    } else {
        1
    }
}

/// A merge done as the partial results arrive rather than all at the end, for the reducers whose
/// merge does not depend on the order partials are taken in: `merge_sorted` of integer runs
/// (equal integers are indistinguishable) and `count_map` (counts add). Each partial handed to
/// [`Fold::push`] is parsed and merged in on a thread of the fold's own while the job's other
/// chunks still run, so at the end ([`Fold::finish`]) what is left is the last partials and the
/// printing: for sorted runs, one merge of the run folded so far with them. A partial the fold
/// cannot take (a run of anything but integers, say) stops it: the partials are then merged
/// whole, as [`Reducer::reduce`] does. `sum` and the others are not folded: a sum's partials are
/// numbers, added at the end in microseconds, and in chunk order (floats round by order).
#[derive(Debug)]
pub struct Fold {
    shared: std::sync::Arc<FoldShared>,
}

#[derive(Debug)]
struct FoldShared {
    state: std::sync::Mutex<FoldState>,
    idle: std::sync::Condvar,
}

#[derive(Debug)]
struct FoldState {
    /// What was folded so far.
    acc: Folded,
    /// How many partials `acc` holds.
    folded: usize,
    /// Partials not folded yet.
    queued: Vec<Bytes>,
    /// A thread is folding.
    busy: bool,
    /// No more folding: the end came, or a partial could not be taken.
    stopped: bool,
    /// A partial could not be taken.
    refused: bool,
}

/// What a fold holds.
#[derive(Debug)]
enum Folded {
    /// Integer runs merged into one.
    Sorted { descending: bool, merged: Vec<i64> },
    /// Counts added up.
    Counts {
        top: Option<usize>,
        counts: BTreeMap<String, u64>,
    },
}

impl Folded {
    /// An empty one of the same kind.
    fn empty_like(&self) -> Self {
        match self {
            Folded::Sorted { descending, .. } => Folded::Sorted {
                descending: *descending,
                merged: Vec::new(),
            },
            Folded::Counts { top, .. } => Folded::Counts {
                top: *top,
                counts: BTreeMap::new(),
            },
        }
    }

    /// Takes `partials` in; `None` when one of them does not fit.
    fn take_in(self, partials: &[Bytes]) -> Option<Self> {
        Some(match self {
            Folded::Sorted { descending, merged } => {
                let runs: Vec<Vec<i64>> =
                    partials.iter().map(|p| int_run(p)).collect::<Option<_>>()?;
                let mut all: Vec<&[i64]> = vec![&merged];
                all.extend(runs.iter().map(Vec::as_slice));
                Folded::Sorted {
                    descending,
                    merged: merge_runs(all, descending),
                }
            }
            Folded::Counts { top, mut counts } => {
                for p in partials {
                    let part: BTreeMap<String, u64> = serde_json::from_slice(p).ok()?;
                    for (word, n) in part {
                        let count = counts.entry(word).or_default();
                        *count = count.checked_add(n)?;
                    }
                }
                Folded::Counts { top, counts }
            }
        })
    }

    /// The merged result, with the last `partials` taken in.
    fn finish(self, partials: &[Bytes]) -> Option<String> {
        match self {
            Folded::Sorted { descending, merged } => {
                let mut runs = vec![merged];
                for partial in partials {
                    runs.push(int_run(partial)?);
                }
                let total = runs.iter().map(Vec::len).sum();
                merge_in_shares(runs, descending, shares_for(total))
            }
            counts @ Folded::Counts { .. } => match counts.take_in(partials)? {
                Folded::Counts { top, counts } => Some(count_map_text(counts, top)),
                Folded::Sorted { .. } => None,
            },
        }
    }
}

impl Fold {
    /// A fold for `reducer`'s merge, if it is one that folds.
    pub fn for_reducer(reducer: Reducer) -> Option<Self> {
        let acc = match reducer {
            Reducer::MergeSorted { descending } => Folded::Sorted {
                descending,
                merged: Vec::new(),
            },
            Reducer::CountMap { top } => Folded::Counts {
                top,
                counts: BTreeMap::new(),
            },
            _ => return None,
        };
        Some(Self {
            shared: std::sync::Arc::new(FoldShared {
                state: std::sync::Mutex::new(FoldState {
                    acc,
                    folded: 0,
                    queued: Vec::new(),
                    busy: false,
                    stopped: false,
                    refused: false,
                }),
                idle: std::sync::Condvar::new(),
            }),
        })
    }

    /// Takes one chunk's partial result, to be folded in on the fold's thread.
    pub fn push(&self, partial: Bytes) {
        let mut state = self.shared.lock();
        if state.stopped {
            return;
        }
        state.queued.push(partial);
        if !state.busy {
            state.busy = true;
            let shared = self.shared.clone();
            std::thread::spawn(move || shared.fold());
        }
    }

    /// The merged result of `count` partials as JSON text, once the fold's thread is done;
    /// `None` when the fold cannot give it (a partial could not be taken, or fewer than `count`
    /// were pushed): then merge the partials whole.
    pub fn finish(self, count: usize) -> Option<String> {
        let (acc, queued) = {
            let mut state = self.shared.lock();
            state.stopped = true;
            while state.busy {
                state = self
                    .shared
                    .idle
                    .wait(state)
                    .unwrap_or_else(|p| p.into_inner());
            }
            if state.refused || state.folded + state.queued.len() != count {
                return None;
            }
            let empty = state.acc.empty_like();
            (
                std::mem::replace(&mut state.acc, empty),
                std::mem::take(&mut state.queued),
            )
        };
        acc.finish(&queued)
    }
}

impl Drop for Fold {
    /// A fold dropped before its end (its job failed or was cancelled) stops after the merge in
    /// hand.
    fn drop(&mut self) {
        self.shared.lock().stopped = true;
    }
}

impl FoldShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, FoldState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Folds what is queued until nothing is, or the fold is stopped.
    fn fold(&self) {
        loop {
            let (batch, acc) = {
                let mut state = self.lock();
                if state.stopped || state.queued.is_empty() {
                    state.busy = false;
                    self.idle.notify_all();
                    return;
                }
                let empty = state.acc.empty_like();
                (
                    std::mem::take(&mut state.queued),
                    std::mem::replace(&mut state.acc, empty),
                )
            };
            let taken = acc.take_in(&batch);
            let mut state = self.lock();
            match taken {
                Some(acc) => {
                    state.acc = acc;
                    state.folded += batch.len();
                }
                None => {
                    state.refused = true;
                    state.stopped = true;
                }
            }
        }
    }
}

/// Fast path of `merge_sorted` when every partial is a run of 64-bit integers (packed, or a JSON
/// array). Equal integers are indistinguishable, so any merge order is stable: large inputs are
/// split by value into one share per core (every run cut at the same values), and each share is
/// merged and printed on a thread of its own. `None` when some partial is anything else.
fn merge_sorted_ints(partials: &[Bytes], descending: bool) -> Option<String> {
    let runs: Vec<Vec<i64>> = partials.iter().map(|p| int_run(p)).collect::<Option<_>>()?;
    let total: usize = runs.iter().map(Vec::len).sum();
    merge_in_shares(runs, descending, shares_for(total))
}

/// Merges sorted runs in `shares` shares of the output, each on a thread, into a JSON array.
fn merge_in_shares(runs: Vec<Vec<i64>>, descending: bool, shares: usize) -> Option<String> {
    let bounds = share_bounds(&runs, shares, descending);
    // Where each share starts in each run: at the first value not before its lower bound, and
    // never before the previous share's start (a run that is not sorted, which a custom task may
    // send, is then still cut into pieces that cover it once).
    let cuts: Vec<Vec<usize>> = runs
        .iter()
        .map(|run| {
            let mut at = vec![0; shares + 1];
            for s in 1..shares {
                let bound = bounds[s - 1];
                let first =
                    run.partition_point(|&v| if descending { v > bound } else { v < bound });
                at[s] = first.max(at[s - 1]);
            }
            at[shares] = run.len();
            at
        })
        .collect();
    // Each share on a kept helper thread (see `crate::helpers`), whose allocator arena keeps the
    // memory of earlier merges.
    let print = move |s: usize| {
        let share: Vec<&[i64]> = runs
            .iter()
            .zip(&cuts)
            .map(|(run, at)| &run[at[s]..at[s + 1]])
            .collect();
        let merged = merge_runs(share, descending);
        let mut text = Vec::with_capacity(merged.len() * 11);
        crate::packed::json_items(&merged, &mut text);
        text
    };
    let texts: Vec<Vec<u8>> = crate::helpers::run_shares(shares, print)
        .into_iter()
        .collect::<Option<_>>()?;
    let mut out = Vec::with_capacity(texts.iter().map(|t| t.len() + 1).sum::<usize>() + 2);
    out.push(b'[');
    for text in texts.iter().filter(|t| !t.is_empty()) {
        if out.len() > 1 {
            out.push(b',');
        }
        out.extend_from_slice(text);
    }
    out.push(b']');
    String::from_utf8(out).ok()
}

/// The values at which each of `shares` shares after the first begins (a share holds the values
/// from its bound, inclusive, to the next share's, exclusive), from an even sample of every run.
fn share_bounds(runs: &[Vec<i64>], shares: usize, descending: bool) -> Vec<i64> {
    if shares < 2 {
        return Vec::new();
    }
    let mut sample: Vec<i64> = runs
        .iter()
        .filter(|run| !run.is_empty())
        .flat_map(|run| {
            let step = run.len().div_ceil(SAMPLES_PER_RUN);
            run.iter().step_by(step).copied()
        })
        .collect();
    sample.sort_unstable();
    if descending {
        sample.reverse();
    }
    if sample.is_empty() {
        return vec![0; shares - 1];
    }
    (1..shares)
        .map(|s| sample[s * sample.len() / shares])
        .collect()
}

/// Merges sorted runs two by two.
fn merge_runs(runs: Vec<&[i64]>, descending: bool) -> Vec<i64> {
    let mut pairs = runs.into_iter().filter(|r| !r.is_empty());
    let mut merged: Vec<Vec<i64>> = Vec::new();
    while let Some(a) = pairs.next() {
        merged.push(match pairs.next() {
            Some(b) => merge_two(a, b, descending),
            None => a.to_vec(),
        });
    }
    while merged.len() > 1 {
        let mut pairs = merged.into_iter();
        let mut next = Vec::with_capacity(pairs.len().div_ceil(2));
        while let Some(a) = pairs.next() {
            next.push(match pairs.next() {
                Some(b) => merge_two(&a, &b, descending),
                None => a,
            });
        }
        merged = next;
    }
    merged.pop().unwrap_or_default()
}

/// Merges two sorted runs of integers.
fn merge_two(a: &[i64], b: &[i64], descending: bool) -> Vec<i64> {
    if descending {
        merge_two_ordered(a, b, |x, y| x >= y)
    } else {
        merge_two_ordered(a, b, |x, y| x <= y)
    }
}

/// Merges two runs sorted so that `first(x, y)` holds when `x` may come before `y`, from both
/// ends at once: the front takes the smaller half, the back the larger, and the two walks do
/// not wait on each other, so a core runs them side by side (each step of one walk waits on the
/// comparison before it). Ties go to `a` first at the front and to `b` first at the back, the
/// same order, so the halves meet without taking a value twice. Runs that are not sorted (a
/// custom task's) can make the walks cross; they are then merged from the front alone, which
/// keeps every value once whatever the order.
fn merge_two_ordered(a: &[i64], b: &[i64], first: impl Fn(i64, i64) -> bool) -> Vec<i64> {
    if a.is_empty() || b.is_empty() {
        return [a, b].concat();
    }
    let n = a.len() + b.len();
    let mut out = vec![0; n];
    // The front's next values are a[i] and b[j]; the back's, a[ia - 1] and b[jb - 1]. An
    // exhausted side still reads a valid index, and its value is then never taken.
    let (mut i, mut j) = (0, 0);
    let (mut ia, mut jb) = (a.len(), b.len());
    let half = n / 2;
    for k in 0..half {
        let (x, y) = (a[i.min(a.len() - 1)], b[j.min(b.len() - 1)]);
        let take_a = (i < a.len()) & ((j >= b.len()) | first(x, y));
        out[k] = if take_a { x } else { y };
        i += usize::from(take_a);
        j += usize::from(!take_a);
        let (x, y) = (a[ia.max(1) - 1], b[jb.max(1) - 1]);
        let take_b = (jb > 0) & ((ia == 0) | first(x, y));
        out[n - 1 - k] = if take_b { y } else { x };
        jb -= usize::from(take_b);
        ia -= usize::from(!take_b);
    }
    if i > ia || j > jb {
        return merge_forward(a, b, first);
    }
    if n % 2 == 1 {
        // One value is left between the two halves.
        out[half] = if i < ia { a[i] } else { b[j] };
    }
    out
}

/// Merges two runs from the front only.
fn merge_forward(a: &[i64], b: &[i64], first: impl Fn(i64, i64) -> bool) -> Vec<i64> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (x, y) = (a[i], b[j]);
        let take_a = first(x, y);
        out.push(if take_a { x } else { y });
        i += usize::from(take_a);
        j += usize::from(!take_a);
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

/// Merges sorted runs (in chunk order) into one sorted, stable sequence.
pub fn merge_sorted(runs: Vec<Vec<Value>>, descending: bool) -> Vec<Value> {
    let total = runs.iter().map(Vec::len).sum();
    let mut out = Vec::with_capacity(total);
    let mut iters: Vec<_> = runs.into_iter().map(Vec::into_iter).collect();
    let mut heap = BinaryHeap::with_capacity(iters.len());
    for (run, it) in iters.iter_mut().enumerate() {
        if let Some(value) = it.next() {
            heap.push(Head {
                value,
                run,
                descending,
            });
        }
    }
    while let Some(Head { value, run, .. }) = heap.pop() {
        out.push(value);
        if let Some(value) = iters[run].next() {
            heap.push(Head {
                value,
                run,
                descending,
            });
        }
    }
    out
}

/// Writes word counts as a JSON object; with `top`, only the most frequent, in frequency order.
fn count_map_text(counts: BTreeMap<String, u64>, top: Option<usize>) -> String {
    let Some(top) = top else {
        return to_text(&counts);
    };
    let mut entries: Vec<(String, u64)> = counts.into_iter().collect();
    entries.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    entries.truncate(top);
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::new(&mut out);
    let written = (|| {
        let mut map = ser.serialize_map(Some(entries.len()))?;
        for (word, n) in &entries {
            map.serialize_entry(word, n)?;
        }
        map.end()
    })();
    debug_assert!(written.is_ok());
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    /// Seeded numbers below the range asked for (a linear congruential generator).
    fn seeded(mut seed: u64) -> impl FnMut(u64) -> u64 {
        move |range: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % range
        }
    }

    #[test]
    fn a_sorted_fold_gives_what_the_whole_merge_gives_or_nothing() {
        let mut next = seeded(11);
        for descending in [false, true] {
            let partials: Vec<Bytes> = (0..9)
                .map(|i| {
                    let len = [0, 1, 40_000, 3, 90_000][i % 5];
                    let mut run: Vec<i64> = (0..len).map(|_| next(5000) as i64 - 2500).collect();
                    run.sort_unstable();
                    if descending {
                        run.reverse();
                    }
                    if i % 2 == 0 {
                        crate::packed::pack(&run, descending)
                    } else {
                        Bytes::from(serde_json::to_vec(&run).unwrap())
                    }
                })
                .collect();
            let whole = Reducer::MergeSorted { descending }
                .reduce(&partials)
                .unwrap();
            // Pushed in another order than the chunks', some folded before the end and some
            // left to it.
            let fold = Fold::for_reducer(Reducer::MergeSorted { descending }).unwrap();
            for p in partials.iter().rev() {
                fold.push(p.clone());
            }
            assert_eq!(fold.finish(partials.len()).as_deref(), Some(&*whole));
            // A partial missing, or one that is not a run of integers: no answer.
            let fold = Fold::for_reducer(Reducer::MergeSorted { descending }).unwrap();
            for p in &partials[1..] {
                fold.push(p.clone());
            }
            assert_eq!(fold.finish(partials.len()), None);
            let fold = Fold::for_reducer(Reducer::MergeSorted { descending }).unwrap();
            fold.push(partials[2].clone());
            fold.push(b("[1.5]"));
            assert_eq!(fold.finish(2), None);
        }
    }

    #[test]
    fn a_count_fold_gives_what_the_whole_merge_gives() {
        let partials: Vec<Bytes> = (0..12)
            .map(|i| {
                let counts: BTreeMap<String, u64> = (0..200)
                    .map(|w| (format!("w{}", (w * 7 + i) % 150), (w % 5 + i) as u64))
                    .collect();
                Bytes::from(serde_json::to_vec(&counts).unwrap())
            })
            .collect();
        for top in [None, Some(10)] {
            let reducer = Reducer::CountMap { top };
            let whole = reducer.reduce(&partials).unwrap();
            let fold = Fold::for_reducer(reducer).unwrap();
            for p in partials.iter().rev() {
                fold.push(p.clone());
            }
            assert_eq!(fold.finish(partials.len()).as_deref(), Some(&*whole));
        }
        // Not an object of counts: no answer.
        let fold = Fold::for_reducer(Reducer::CountMap { top: None }).unwrap();
        fold.push(b("[1]"));
        assert_eq!(fold.finish(1), None);
        assert!(Fold::for_reducer(Reducer::Sum).is_none());
    }

    #[test]
    fn sum_is_exact_past_64_bits() {
        let max = i64::MAX.to_string();
        let out = Reducer::Sum.reduce(&[b(&max), b(&max), b("2")]).unwrap();
        assert_eq!(out, (2 * i128::from(i64::MAX) + 2).to_string());
    }

    #[test]
    fn large_integer_merges_split_across_threads_lose_and_duplicate_nothing() {
        let mut next = seeded(7);
        for descending in [false, true] {
            // Few distinct values (many equal across the cut points), an empty run, one run
            // far larger than the rest.
            let mut runs: Vec<Vec<i64>> = vec![Vec::new()];
            for len in [3usize, 120_000, 90_000, 70_000, 1] {
                let mut run: Vec<i64> = (0..len).map(|_| next(1000) as i64 - 500).collect();
                run.sort_unstable();
                if descending {
                    run.reverse();
                }
                runs.push(run);
            }
            let partials: Vec<Bytes> = runs
                .iter()
                .enumerate()
                .map(|(i, run)| {
                    if i % 2 == 0 {
                        crate::packed::pack(run, descending)
                    } else {
                        Bytes::from(serde_json::to_vec(run).unwrap())
                    }
                })
                .collect();
            let mut all: Vec<i64> = runs.concat();
            all.sort_unstable();
            if descending {
                all.reverse();
            }
            let expected = serde_json::to_string(&all).unwrap();
            assert!(all.len() >= PARALLEL_MERGE);
            let out = Reducer::MergeSorted { descending }
                .reduce(&partials)
                .unwrap();
            assert_eq!(out, expected, "descending: {descending}");
            for shares in [1, 2, 3, 8] {
                let out = merge_in_shares(runs.clone(), descending, shares).unwrap();
                assert_eq!(out, expected, "descending: {descending}, {shares} shares");
            }
        }
    }

    #[test]
    fn two_runs_merge_from_both_ends_into_one_order() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |range: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % range) as i64
        };
        let sizes = [
            (1, 1),
            (1, 6),
            (7, 0),
            (0, 3),
            (100, 3),
            (2, 99),
            (1000, 999),
            (513, 512),
        ];
        // Few distinct values (many ties) and many.
        for range in [3, 1 << 40] {
            for (m, n) in sizes {
                let mut a: Vec<i64> = (0..m).map(|_| next(range)).collect();
                let mut b: Vec<i64> = (0..n).map(|_| next(range)).collect();
                let mut all = [a.clone(), b.clone()].concat();
                for descending in [false, true] {
                    a.sort_unstable();
                    b.sort_unstable();
                    all.sort_unstable();
                    if descending {
                        a.reverse();
                        b.reverse();
                        all.reverse();
                    }
                    assert_eq!(
                        merge_two(&a, &b, descending),
                        all,
                        "{m} + {n}, range {range}"
                    );
                }
            }
        }
    }

    #[test]
    fn runs_that_are_not_sorted_are_merged_whole_in_shares() {
        let runs: Vec<Vec<i64>> = vec![(0..1000).rev().collect(), vec![5, 1, 9, 3], Vec::new()];
        let count = |out: &str| -> Vec<i64> {
            let mut v: Vec<i64> = serde_json::from_str(out).unwrap();
            v.sort_unstable();
            v
        };
        let mut all = runs.concat();
        all.sort_unstable();
        for shares in [1, 2, 3, 8] {
            for descending in [false, true] {
                let out = merge_in_shares(runs.clone(), descending, shares).unwrap();
                assert_eq!(
                    count(&out),
                    all,
                    "{shares} shares, descending: {descending}"
                );
            }
        }
    }

    #[test]
    fn merge_is_stable_and_ordered() {
        let out = Reducer::MergeSorted { descending: false }
            .reduce(&[b("[1, 3, 5]"), b("[1.0, 2, 6]")])
            .unwrap();
        assert_eq!(out, "[1,1.0,2,3,5,6]");
        let out = Reducer::MergeSorted { descending: true }
            .reduce(&[b("[5, 3]"), b("[6, 3.0, 1]")])
            .unwrap();
        assert_eq!(out, "[6,5,3,3.0,1]");
    }

    #[test]
    fn count_map_top_orders_by_frequency_then_word() {
        let out = Reducer::CountMap { top: Some(2) }
            .reduce(&[b(r#"{"a":1,"b":2}"#), b(r#"{"c":2,"a":2}"#)])
            .unwrap();
        assert_eq!(out, r#"{"a":3,"b":2}"#);
    }

    #[test]
    fn bad_partial_names_its_chunk() {
        let err = Reducer::Sum.reduce(&[b("1"), b("\"x\"")]).unwrap_err();
        assert_eq!(err.chunk, 1);
    }

    #[test]
    fn each_reducer_refuses_a_partial_of_the_wrong_shape_alone() {
        let packed = crate::packed::pack(&[1, 2, 3], false);
        let cases: [(Reducer, &[u8], bool); 12] = [
            (Reducer::Sum, b"12", true),
            (Reducer::Sum, b"1.5", true),
            (Reducer::Sum, b"\"twelve\"", false),
            (Reducer::Sum, b"[1]", false),
            (
                Reducer::MergeSorted { descending: false },
                b"[1,\"a\"]",
                true,
            ),
            (Reducer::MergeSorted { descending: false }, &packed, true),
            (
                Reducer::MergeSorted { descending: false },
                &packed[..5],
                false,
            ),
            (Reducer::MergeSorted { descending: false }, b"{}", false),
            (Reducer::CountMap { top: None }, b"{\"a\":1}", true),
            (Reducer::CountMap { top: None }, b"{\"a\":-1}", false),
            (Reducer::None, b"{\"any\":[null]}", true),
            (Reducer::Concat, b"[1,", false),
        ];
        for (reducer, partial, ok) in cases {
            let checked = reducer.check(partial);
            assert_eq!(
                checked.is_ok(),
                ok,
                "{reducer:?} {:?}: {checked:?}",
                String::from_utf8_lossy(partial)
            );
            if ok {
                assert!(reducer.reduce(&[Bytes::copy_from_slice(partial)]).is_ok());
            }
        }
    }

    #[test]
    fn none_keeps_partials_in_order() {
        let out = Reducer::None.reduce(&[b("{\"a\": 1}"), b("[2]")]).unwrap();
        assert_eq!(out, r#"[{"a": 1},[2]]"#);
    }
}
