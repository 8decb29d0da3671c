//! Reading a job request body. The commonest large body is an integer array under `input`; a
//! generic JSON parser would scan those megabytes once to check them and the integer path would
//! scan them again to cut them. Here the top-level object is read member by member with
//! serde_json, but an `input` that starts like an array is only located (up to its first `]`,
//! counting its commas on the way: [`crate::ints::IntArray`]), and then checked strictly while it
//! is cut. Whenever that shortcut does not give a valid job, the body is parsed again the ordinary
//! way, which is what decides every answer (and every error message).

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::ints::IntArray;
use crate::job::{JobSpec, RawJob};

/// Why a body is not a job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Not JSON at all.
    #[error("{0}")]
    Malformed(String),
    /// JSON, but not a valid job.
    #[error("{0}")]
    Invalid(String),
}

/// Parses and validates a job body, cutting its input into chunks (see [`RawJob::validate`]).
pub fn parse_job(body: &Bytes, slots: u64) -> Result<JobSpec, BodyError> {
    if let Some(raw) = scan(body) {
        if let Ok(spec) = raw.validate(slots) {
            return Ok(spec);
        }
    }
    let raw: RawJob = serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => BodyError::Invalid(e.to_string()),
        _ => BodyError::Malformed(e.to_string()),
    })?;
    raw.validate(slots).map_err(|e| BodyError::Invalid(e.0))
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\n' | b'\r' | b'\t') {
        i += 1;
    }
    i
}

/// One JSON value at the start of `b` and its length, or `None`.
fn value_at<'a, T: serde::Deserialize<'a>>(b: &'a [u8]) -> Option<(T, usize)> {
    let mut values = serde_json::Deserializer::from_slice(b).into_iter::<T>();
    let value = values.next()?.ok()?;
    Some((value, values.byte_offset()))
}

/// The body with an array-looking `input` set aside as [`RawJob::int_input`], or `None` when
/// the body is anything but a well-formed object with at most one `input`.
fn scan(body: &Bytes) -> Option<RawJob> {
    let b = &body[..];
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(b, i + 1);
    // The other members, copied as they are into a small object serde reads the usual way.
    let mut rest = Vec::with_capacity(256);
    rest.push(b'{');
    let mut int_input = None;
    let mut chunks_text = None;
    let mut inputs = 0;
    let mut chunk_lists = 0;
    let mut more = b.get(i) != Some(&b'}');
    while more {
        let key_start = i;
        let (key, key_len) = value_at::<String>(&b[i..])?;
        i = skip_ws(b, i + key_len);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(b, i + 1);
        let value_start = i;
        // A second member of either name is an error the ordinary parse reports.
        match key.as_str() {
            "input" => inputs += 1,
            "chunks" => chunk_lists += 1,
            _ => {}
        }
        if key == "input" && b.get(i) == Some(&b'[') {
            let array = IntArray::locate(body, i)?;
            i += array.text().len();
            int_input = Some(array);
        } else if key == "chunks" && b.get(i) == Some(&b'[') {
            let (_, len) = value_at::<&RawValue>(&b[i..])?;
            i += len;
            chunks_text = Some(body.slice(value_start..i));
        } else {
            let (_, len) = value_at::<&RawValue>(&b[i..])?;
            i += len;
            if rest.len() > 1 {
                rest.push(b',');
            }
            rest.extend_from_slice(&b[key_start..key_start + key_len]);
            rest.push(b':');
            rest.extend_from_slice(&b[value_start..i]);
        }
        i = skip_ws(b, i);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => more = false,
            _ => return None,
        }
    }
    if inputs > 1 || chunk_lists > 1 || skip_ws(b, i + 1) != b.len() {
        return None;
    }
    rest.push(b'}');
    let mut raw: RawJob = serde_json::from_slice(&rest).ok()?;
    raw.int_input = int_input;
    raw.chunks_text = chunks_text;
    Some(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Work;
    use crate::packed::Packed;

    fn chunks(body: &str) -> Vec<Vec<i64>> {
        match parse_job(&Bytes::copy_from_slice(body.as_bytes()), 1)
            .expect("valid")
            .work
        {
            Work::Builtin { chunks, .. } => chunks
                .iter()
                .map(|c| Packed::read(c).expect("packed").values())
                .collect(),
            Work::Custom { .. } => panic!("built-in expected"),
        }
    }

    #[test]
    fn an_integer_input_is_found_and_cut_without_the_generic_parser() {
        let body = r#" { "kind" : "sum", "input" : [1, 2, 3, 4] , "chunks": 2 } "#;
        let raw = scan(&Bytes::copy_from_slice(body.as_bytes())).expect("fast path");
        assert_eq!(
            raw.int_input.as_ref().map(IntArray::text),
            Some(&b"[1, 2, 3, 4]"[..])
        );
        assert_eq!(raw.kind.as_deref(), Some("sum"));
        assert_eq!(chunks(body), vec![vec![1, 2], vec![3, 4]]);
    }

    #[test]
    fn bodies_the_shortcut_cannot_read_get_the_ordinary_answer() {
        for (body, expected) in [
            // Nested arrays: the first `]` is not the end of the input.
            (r#"{"kind": "sum", "input": [1, [2]]}"#, "input[1]"),
            (r#"{"kind": "sum", "input": [1, 2.5]}"#, "input[1]"),
            (
                r#"{"kind": "sum", "input": [1], "input": [2]}"#,
                "duplicate field",
            ),
            (r#"{"kind": "sum", "input": [1],}"#, "trailing comma"),
            (r#"{"kind": "sum", "input": [1]} x"#, "trailing characters"),
            (
                r#"{"kind": "sum", "input": [1], "kind": "sort"}"#,
                "duplicate field",
            ),
            (r#"{"kind": "sum", "input": [01]}"#, "invalid number"),
            (
                r#"{"task": "t", "input": [1], "chunks": [1]}"#,
                "`input` does not apply",
            ),
            (r#"{"kind": "wordcount", "input": [1]}"#, "must be a string"),
            (
                r#"{"kind": "sum", "input": [1], "chunks": [[1]]}"#,
                "need a custom `task`",
            ),
            (
                r#"{"task": "t", "chunks": [1], "chunks": [2]}"#,
                "duplicate field",
            ),
            (r#"{"task": "t", "chunks": []}"#, "must not be empty"),
        ] {
            let err = parse_job(&Bytes::copy_from_slice(body.as_bytes()), 1).unwrap_err();
            assert!(err.to_string().contains(expected), "{body}: {err}");
        }
    }

    #[test]
    fn custom_chunks_are_slices_of_the_body() {
        let body = Bytes::from_static(br#"{"task": "t", "chunks": [[1, 2], {"a": "]"}, 3]}"#);
        let spec = parse_job(&body, 1).expect("valid");
        let Work::Custom { chunks, .. } = spec.work else {
            panic!("custom expected");
        };
        let texts: Vec<&[u8]> = chunks.iter().map(|c| &c[..]).collect();
        assert_eq!(texts, [&b"[1, 2]"[..], br#"{"a": "]"}"#, b"3"]);
        let inside = body.as_ptr_range();
        assert!(chunks.iter().all(|c| inside.contains(&c.as_ptr())));
    }

    #[test]
    fn other_inputs_and_escaped_keys_still_parse() {
        assert_eq!(
            chunks(r#"{"kind": "sum", "\u0069nput": [5, 6], "chunks": 1}"#),
            vec![vec![5, 6]]
        );
        let sort = r#"{"kind": "sort", "input": ["b", "a"], "chunks": 1}"#;
        let spec = parse_job(&Bytes::copy_from_slice(sort.as_bytes()), 1).expect("valid");
        assert!(matches!(spec.work, Work::Builtin { ref chunks, .. } if chunks.len() == 1));
        assert!(matches!(
            parse_job(&Bytes::from_static(b"{\"kind\": "), 1),
            Err(BodyError::Malformed(_))
        ));
    }
}
