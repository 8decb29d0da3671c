//! The chunk tasks every stock worker runs (`sum`, `sort`, `wordcount`), and the task error type.
//!
//! A task takes one chunk payload (JSON bytes) and returns a partial result (JSON bytes). Custom
//! tasks registered with the worker library follow the same shape. The built-in `sum` and `sort`
//! also take packed integers (see [`crate::packed`]), which is how the coordinator cuts integer
//! inputs; `sort` then answers a packed run.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

use crate::packed::Packed;

/// A task's failure. Permanent errors mean the input can never succeed, so the job fails at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TaskError {
    /// Lowercase description naming what failed.
    pub message: String,
    /// True when retrying cannot help (for example a chunk of the wrong type).
    pub permanent: bool,
}

impl TaskError {
    /// A failure that another attempt may not hit (the default for task code).
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            permanent: false,
        }
    }

    /// A failure that no retry can fix.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            permanent: true,
        }
    }
}

/// Signature of a built-in chunk task.
pub type BuiltinTask = fn(&[u8]) -> Result<Bytes, TaskError>;

/// Built-in chunk tasks by name.
pub const BUILTIN_TASKS: &[(&str, BuiltinTask)] =
    &[("sum", sum), ("sort", sort), ("wordcount", wordcount)];

fn parse<'a, T: Deserialize<'a>>(
    task: &str,
    input: &'a [u8],
    expected: &str,
) -> Result<T, TaskError> {
    serde_json::from_slice(input)
        .map_err(|e| TaskError::permanent(format!("{task} chunk must be {expected}: {e}")))
}

fn to_bytes(v: &impl serde::Serialize) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

/// Writes an exact integer as JSON: a number when it fits in 64 bits, else a string of digits
/// (JSON numbers past 64 bits lose precision in most clients).
pub fn int_to_json(n: i128) -> Value {
    if let Ok(v) = i64::try_from(n) {
        Value::from(v)
    } else if let Ok(v) = u64::try_from(n) {
        Value::from(v)
    } else {
        Value::String(n.to_string())
    }
}

/// Reads an exact integer written by [`int_to_json`].
pub fn int_from_json(v: &Value) -> Option<i128> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from)),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// `sum`: the exact sum of an array of 64-bit integers (JSON or packed).
pub fn sum(input: &[u8]) -> Result<Bytes, TaskError> {
    if let Some(run) = Packed::read(input) {
        return Ok(to_bytes(&int_to_json(run.sum())));
    }
    let items: Vec<i64> = match crate::ints::parse_ints(input) {
        Some(items) => items,
        None => parse("sum", input, "an array of 64-bit integers")?,
    };
    let total: i128 = items.iter().map(|&v| i128::from(v)).sum();
    Ok(to_bytes(&int_to_json(total)))
}

/// Total order used by `sort` and `merge_sorted`: numbers by value (integers exactly), strings by
/// code point; numbers before strings so that any mix still has one order.
pub fn compare(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let exact = |n: &serde_json::Number| {
                n.as_i64()
                    .map(i128::from)
                    .or_else(|| n.as_u64().map(i128::from))
            };
            match (exact(x), exact(y)) {
                (Some(i), Some(j)) => i.cmp(&j),
                _ => {
                    let f = |n: &serde_json::Number| n.as_f64().unwrap_or(f64::NAN);
                    f(x).total_cmp(&f(y))
                }
            }
        }
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Number(_), _) => Ordering::Less,
        (_, Value::Number(_)) => Ordering::Greater,
        _ => Ordering::Equal,
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum IntSortChunk {
    Plain(Vec<i64>),
    WithOptions {
        items: Vec<i64>,
        #[serde(default)]
        descending: bool,
    },
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SortChunk {
    Plain(Vec<Value>),
    WithOptions {
        items: Vec<Value>,
        #[serde(default)]
        descending: bool,
    },
}

/// `sort`: a stable sort of an array of numbers or strings; the payload may also be
/// `{"items": [...], "descending": true}`, or packed integers, which come back packed.
pub fn sort(input: &[u8]) -> Result<Bytes, TaskError> {
    if let Some(run) = Packed::read(input) {
        return Ok(run.sorted());
    }
    // Fast path: integers sort as integers (equal integers are indistinguishable, so an unstable
    // sort is still a stable one).
    let fast = match crate::ints::parse_ints(input) {
        Some(items) => Some(IntSortChunk::Plain(items)),
        None => serde_json::from_slice::<IntSortChunk>(input).ok(),
    };
    if let Some(chunk) = fast {
        let (mut items, descending) = match chunk {
            IntSortChunk::Plain(items) => (items, false),
            IntSortChunk::WithOptions { items, descending } => (items, descending),
        };
        items.sort_unstable();
        if descending {
            items.reverse();
        }
        return Ok(to_bytes(&items));
    }
    let chunk: SortChunk = parse(
        "sort",
        input,
        "an array of numbers or strings, or {\"items\": [...], \"descending\": bool}",
    )?;
    let (mut items, descending) = match chunk {
        SortChunk::Plain(items) => (items, false),
        SortChunk::WithOptions { items, descending } => (items, descending),
    };
    if let Some(bad) = items.iter().position(|v| !v.is_number() && !v.is_string()) {
        return Err(TaskError::permanent(format!(
            "sort chunk element {bad} is neither a number nor a string"
        )));
    }
    if descending {
        items.sort_by(|a, b| compare(b, a));
    } else {
        items.sort_by(compare);
    }
    Ok(to_bytes(&items))
}

/// Splits text into words: maximal runs of Unicode alphanumerics, lowercased.
pub fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

/// `wordcount`: an object of word → count for one piece of text.
pub fn wordcount(input: &[u8]) -> Result<Bytes, TaskError> {
    let text: String = parse("wordcount", input, "a string")?;
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for w in words(&text) {
        *counts.entry(w).or_default() += 1;
    }
    Ok(to_bytes(&counts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_past_64_bits_is_exact() {
        let input = serde_json::to_vec(&[i64::MAX, i64::MAX]).unwrap();
        let out: Value = serde_json::from_slice(&sum(&input).unwrap()).unwrap();
        assert_eq!(int_from_json(&out), Some(2 * i128::from(i64::MAX)));
    }

    #[test]
    fn sum_of_wrong_type_is_permanent() {
        let err = sum(br#"["a"]"#).unwrap_err();
        assert!(err.permanent);
    }

    #[test]
    fn sort_is_stable_across_int_and_float() {
        let out = sort(br#"[2, 1.0, 1, 0.5]"#).unwrap();
        assert_eq!(&out[..], b"[0.5,1.0,1,2]");
        let out = sort(br#"{"items": [1, 3, 2], "descending": true}"#).unwrap();
        assert_eq!(&out[..], b"[3,2,1]");
    }

    #[test]
    fn words_are_unicode_alphanumeric_runs() {
        let w: Vec<String> = words("Héllo, WORLD! x2 -- héllo").collect();
        assert_eq!(w, ["héllo", "world", "x2", "héllo"]);
    }
}
