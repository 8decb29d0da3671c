//! Cutting a built-in job's input into chunk payloads.
//!
//! Splits are contiguous and cover the input exactly once, so reducing the partial results in chunk
//! order gives the same answer as a single chunk. Text is cut only where whitespace starts, so no word
//! is ever split across two chunks.

use bytes::Bytes;
use serde::Serialize;

use crate::job::{Chunking, Input, Kind};

/// Chunk count when the job gives none: this many chunks per connected slot, so that a slow chunk
/// does not leave the other slots idle at the end of the job.
pub const AUTO_CHUNKS_PER_SLOT: u64 = 4;

/// Number of chunks for `len` units under `chunking`; `slots` is the connected capacity.
pub fn chunk_count(len: usize, chunking: Chunking, slots: u64) -> usize {
    let len = len.max(1) as u64;
    let wanted = match chunking {
        Chunking::Count(n) => n,
        Chunking::Size(k) => len.div_ceil(k),
        Chunking::Auto => slots.max(1) * AUTO_CHUNKS_PER_SLOT,
    };
    wanted.clamp(1, len) as usize
}

/// Boundaries `0 = b0 <= b1 <= ... <= bn = len` of `n` near-equal contiguous ranges.
fn even_bounds(len: usize, n: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..n).map(move |i| (i * len / n, (i + 1) * len / n))
}

fn to_json<T: Serialize + ?Sized>(value: &T) -> Bytes {
    // Serializing plain numbers, strings and `Value`s into a Vec cannot fail.
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

/// Cuts `input` into JSON chunk payloads for the chunk task of `kind` (integer arrays are cut by
/// [`crate::ints::pack_chunks`] instead).
pub fn split(kind: &Kind, input: &Input, chunking: Chunking, slots: u64) -> Vec<Bytes> {
    let n = chunk_count(input.len(), chunking, slots);
    match (input, kind) {
        (Input::Items(v), Kind::Sort { descending: true }) => even_bounds(v.len(), n)
            .map(|(a, b)| to_json(&serde_json::json!({"items": &v[a..b], "descending": true})))
            .collect(),
        (Input::Items(v), _) => even_bounds(v.len(), n)
            .map(|(a, b)| to_json(&v[a..b]))
            .collect(),
        (Input::Text(s), _) => split_text(s, n).into_iter().map(to_json).collect(),
    }
}

/// Cuts text into at most `n` pieces at whitespace, dropping empty pieces (at least one remains).
pub fn split_text(text: &str, n: usize) -> Vec<&str> {
    let mut pieces = Vec::with_capacity(n);
    let mut start = 0;
    for (_, target) in even_bounds(text.len(), n) {
        if target <= start {
            continue;
        }
        let end = if target >= text.len() {
            text.len()
        } else {
            next_whitespace(text, target)
        };
        if end > start {
            pieces.push(&text[start..end]);
            start = end;
        }
    }
    if pieces.is_empty() {
        pieces.push(text);
    }
    pieces
}

/// First byte offset at or after `from` that starts a whitespace character (or the end).
fn next_whitespace(text: &str, from: usize) -> usize {
    let mut at = from;
    while !text.is_char_boundary(at) {
        at += 1;
    }
    text[at..]
        .char_indices()
        .find(|(_, c)| c.is_whitespace())
        .map_or(text.len(), |(i, _)| at + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_splits_never_cut_a_word() {
        let text = "héllo wörld  and more words here";
        for n in 1..12 {
            let pieces = split_text(text, n);
            assert_eq!(pieces.concat(), text);
            for p in &pieces[1..] {
                assert!(p.starts_with(char::is_whitespace), "{pieces:?}");
            }
        }
    }

    #[test]
    fn counts_are_clamped_to_the_input() {
        assert_eq!(chunk_count(3, Chunking::Count(100), 1), 3);
        assert_eq!(chunk_count(0, Chunking::Count(5), 1), 1);
        assert_eq!(chunk_count(10, Chunking::Size(3), 1), 4);
        assert_eq!(chunk_count(1000, Chunking::Auto, 2), 8);
    }
}
