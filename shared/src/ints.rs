//! The fast path for the commonest input, a JSON array of 64-bit integers: one pass over its text
//! checks it, cuts it into chunks and packs each chunk (see [`crate::packed`]), with large arrays
//! cut on several threads. No value tree is built and no integer is printed again.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;

use crate::packed;

#[cfg(target_arch = "x86_64")]
mod lanes;

/// Parses plain elements (see [`lanes::plain_elements`]) from `i` on; where it stops, the byte
/// loop goes on.
#[cfg(target_arch = "x86_64")]
use lanes::plain_elements;

/// Without SSE2 every element goes through the byte loop.
#[cfg(not(target_arch = "x86_64"))]
fn plain_elements(_: &[u8], i: usize, _: &mut Vec<i64>) -> usize {
    i
}

/// Why a text is not an array of 64-bit integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotInts {
    /// The text is not an array at all.
    NotArray,
    /// Element `index` is not an integer, does not fit in 64 bits, or is not followed by a
    /// separator.
    Element {
        /// Its position.
        index: usize,
    },
}

fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\n' | b'\r' | b'\t')
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && is_ws(b[i]) {
        i += 1;
    }
    i
}

/// Reads one JSON integer at `b[i..]` that fits in `i64`; returns it and the index after it.
#[inline]
fn int_at(b: &[u8], mut i: usize) -> Option<(i64, usize)> {
    let negative = b.get(i) == Some(&b'-');
    if negative {
        i += 1;
    }
    let start = i;
    let mut value: u64 = 0;
    // Eighteen decimal digits always fit in a u64: no overflow check until then.
    let fast_end = b.len().min(start + 18);
    while i < fast_end {
        let d = b[i].wrapping_sub(b'0');
        if d > 9 {
            break;
        }
        value = value * 10 + u64::from(d);
        i += 1;
    }
    while i < b.len() {
        let d = b[i].wrapping_sub(b'0');
        if d > 9 {
            break;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(d))?;
        i += 1;
    }
    // JSON has no leading zeros; serde reads `-0` as a float, so it is not an integer here either.
    if i == start || (b[start] == b'0' && (i - start > 1 || negative)) {
        return None;
    }
    let limit = if negative {
        1u64 << 63
    } else {
        i64::MAX as u64
    };
    if value > limit {
        return None;
    }
    // `value` fits: as i64 for positives, or as the magnitude of a negative (2^63 included).
    let v = if negative {
        (value as i64).wrapping_neg()
    } else {
        value as i64
    };
    Some((v, i))
}

/// Parses the comma-separated integers of `b` (the inside of an array, or a run of it) into `out`;
/// on failure, the index within `b` of the element at fault.
fn parse_run(b: &[u8], out: &mut Vec<i64>) -> Result<(), usize> {
    parse_run_with(b, out, plain_elements)
}

/// [`parse_run`], with `fast` taking what elements it can before each one the byte loop reads.
fn parse_run_with(
    b: &[u8],
    out: &mut Vec<i64>,
    fast: fn(&[u8], usize, &mut Vec<i64>) -> usize,
) -> Result<(), usize> {
    let first = out.len();
    let mut i = skip_ws(b, 0);
    if i == b.len() {
        return Ok(());
    }
    loop {
        // Elements the fast path takes end in a comma with no space before the next one.
        i = skip_ws(b, fast(b, i, out));
        let bad = out.len() - first;
        let (v, next) = int_at(b, i).ok_or(bad)?;
        out.push(v);
        i = skip_ws(b, next);
        match b.get(i) {
            None => return Ok(()),
            Some(b',') => i = skip_ws(b, i + 1),
            // A fraction, an exponent, or anything but a separator: not an integer.
            Some(_) => return Err(bad),
        }
    }
}

/// The inside of a JSON array text (without its brackets and surrounding whitespace).
fn inside(text: &[u8]) -> Result<&[u8], NotInts> {
    let open = skip_ws(text, 0);
    let mut close = text.len();
    while close > open && is_ws(text[close - 1]) {
        close -= 1;
    }
    if text.get(open) != Some(&b'[') || close < open + 2 || text[close - 1] != b']' {
        return Err(NotInts::NotArray);
    }
    Ok(&text[open + 1..close - 1])
}

/// Parses a JSON array of 64-bit integers about three times faster than a generic JSON parser;
/// `None` when the text is anything else.
pub fn parse_ints(text: &[u8]) -> Option<Vec<i64>> {
    let body = inside(text).ok()?;
    let mut values = Vec::with_capacity(body.len() / 8);
    parse_run(body, &mut values).ok()?;
    Some(values)
}

/// Commas are counted in blocks of this many bytes, so that finding the k-th comma skips whole
/// blocks with a vectorised count instead of visiting every comma.
const COUNT_BLOCK: usize = 64 << 10;

/// Commas per block of `body`.
fn comma_counts(body: &[u8]) -> Vec<usize> {
    body.chunks(COUNT_BLOCK)
        .map(|block| memchr::memchr_iter(b',', block).count())
        .collect()
}

/// Number of elements the array holds if it is an array of integers: commas plus one.
fn element_count(body: &[u8], commas: usize) -> usize {
    match commas {
        0 if body.iter().all(|&c| is_ws(c)) => 0,
        commas => commas + 1,
    }
}

/// One chunk to cut: its byte range in the array's inside, first element and element count.
#[derive(Debug, Clone, Copy)]
struct Cut {
    from: usize,
    to: usize,
    first: usize,
    count: usize,
}

/// Byte ranges of `n` near-equal runs of the `len` elements of `body` (`counts`: commas per
/// block). Integers hold no commas, so the k-th comma ends the k-th element; a text that is not
/// all integers fails when parsed.
fn cuts(body: &[u8], counts: &[usize], len: usize, n: usize) -> Vec<Cut> {
    let starts: Vec<usize> = (0..=n).map(|k| k * len / n).collect();
    // Byte offsets of the comma ending element starts[k] - 1 (comma number starts[k] - 1, from
    // 0), for k in 1..n; they increase with k.
    let mut ends = Vec::with_capacity(n);
    let (mut block, mut before) = (0, 0);
    // Where the last search stopped and the commas before it: the next cut in the same block
    // is searched from there, so many small cuts scan each block once, not once per cut.
    let (mut pos, mut seen) = (0, 0);
    for &start in &starts[1..n] {
        let wanted = start - 1;
        while block < counts.len() && before + counts[block] <= wanted {
            before += counts[block];
            block += 1;
        }
        let from = block * COUNT_BLOCK;
        if pos < from || seen < before {
            (pos, seen) = (from, before);
        }
        let within = &body[pos.min(body.len())..body.len().min(from + COUNT_BLOCK)];
        let at = wanted
            .checked_sub(seen)
            .and_then(|nth| memchr::memchr_iter(b',', within).nth(nth));
        match at {
            Some(at) => {
                ends.push(pos + at);
                (pos, seen) = (pos + at + 1, wanted + 1);
            }
            None => ends.push(body.len()),
        }
    }
    ends.push(body.len());
    let mut from = 0;
    (0..n)
        .map(|k| {
            let cut = Cut {
                from,
                to: ends[k],
                first: starts[k],
                count: starts[k + 1] - starts[k],
            };
            from = (ends[k] + 1).min(body.len());
            cut
        })
        .collect()
}

/// Parses and packs one cut (`values` is scratch space); on failure, the index (in the whole
/// array) of the element at fault.
fn pack_cut(
    body: &[u8],
    cut: &Cut,
    descending: bool,
    values: &mut Vec<i64>,
) -> Result<Bytes, usize> {
    values.clear();
    parse_run(&body[cut.from..cut.to], values).map_err(|i| cut.first + i)?;
    if values.len() != cut.count {
        return Err(cut.first + values.len().min(cut.count));
    }
    Ok(packed::pack(values, descending))
}

/// Takes cuts one at a time from `next` and packs them, until none is left or one failed.
fn take_cuts(
    body: &[u8],
    cuts: &[Cut],
    descending: bool,
    next: &AtomicUsize,
    failed: &AtomicBool,
) -> Vec<(usize, Result<Bytes, usize>)> {
    let mut values = Vec::new();
    let mut done = Vec::new();
    while !failed.load(Ordering::Relaxed) {
        let k = next.fetch_add(1, Ordering::Relaxed);
        let Some(cut) = cuts.get(k) else { break };
        let packed = pack_cut(body, cut, descending, &mut values);
        if packed.is_err() {
            failed.store(true, Ordering::Relaxed);
        }
        done.push((k, packed));
    }
    done
}

/// Packs every cut on `threads` threads (this one and kept helpers), each taking the next cut as
/// it finishes one, so a thread that runs slower takes fewer. After a failure no new cut is
/// started: every cut before the failing one was already taken, so the first bad element is
/// still found.
fn pack_cuts(
    body: &Bytes,
    cuts: Vec<Cut>,
    descending: bool,
    threads: usize,
) -> Result<Vec<Bytes>, usize> {
    let (next, failed) = (AtomicUsize::new(0), AtomicBool::new(false));
    let mut done = if threads <= 1 {
        take_cuts(body, &cuts, descending, &next, &failed)
    } else {
        let body = body.clone();
        let shares = crate::helpers::run_shares(threads, move |_| {
            take_cuts(&body, &cuts, descending, &next, &failed)
        });
        shares
            .into_iter()
            // A panic while parsing is a bug; report it as an unreadable first element.
            .flat_map(|share| share.unwrap_or_else(|| vec![(0, Err(0))]))
            .collect()
    };
    if let Some(first_bad) = done.iter().filter_map(|(_, r)| r.as_ref().err()).min() {
        return Err(*first_bad);
    }
    done.sort_unstable_by_key(|(k, _)| *k);
    Ok(done.into_iter().filter_map(|(_, r)| r.ok()).collect())
}

/// Arrays at least this large are located and cut on several threads.
const PARALLEL_BYTES: usize = 4 << 20;

/// Threads for an array text of `bytes` bytes, and at most `most`.
fn threads_for(bytes: usize, most: usize) -> usize {
    if bytes < PARALLEL_BYTES {
        return 1;
    }
    std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, 4)
        .min(most)
        .max(1)
}

/// Commas per block in the `per` blocks of `rest` from block `first` on, up to the first `]` in
/// them, and where in its block that `]` is.
fn scan(rest: &[u8], first: usize, per: usize) -> (Vec<usize>, Option<usize>) {
    let mut counts = Vec::new();
    for block in rest.chunks(COUNT_BLOCK).skip(first).take(per) {
        match memchr::memchr(b']', block) {
            Some(at) => {
                counts.push(memchr::memchr_iter(b',', &block[..at]).count());
                return (counts, Some(at));
            }
            None => counts.push(memchr::memchr_iter(b',', block).count()),
        }
    }
    (counts, None)
}

/// The text of an array that starts a body's member, found by its first `]` (an integer array
/// holds none before its end), with its commas counted per block on the same pass, on several
/// threads when it is large. Whether it really is an array of integers is only known once it is
/// cut ([`IntArray::pack_chunks`]).
#[derive(Debug, Clone)]
pub struct IntArray {
    /// From `[` to `]`, both included.
    text: Bytes,
    /// Commas per block of the inside.
    counts: Vec<usize>,
}

impl IntArray {
    /// The array that opens at `body[open]` (a `[`), or `None` when no `]` closes it.
    pub fn locate(body: &Bytes, open: usize) -> Option<Self> {
        let from = open + 1;
        let rest = body.get(from..)?;
        let blocks = rest.len().div_ceil(COUNT_BLOCK);
        let threads = threads_for(rest.len(), blocks);
        // Each thread takes a run of blocks and stops at the first `]` in them.
        let per = blocks.div_ceil(threads.max(1)).max(1);
        let runs = if threads <= 1 {
            vec![scan(rest, 0, per)]
        } else {
            let rest = body.slice(from..);
            crate::helpers::run_shares(threads, move |k| scan(&rest, k * per, per))
                .into_iter()
                // A panic while counting is a bug; the ordinary parse then reads the body.
                .collect::<Option<Vec<_>>>()?
        };
        let mut counts = Vec::with_capacity(blocks);
        for (run, close) in runs {
            counts.extend(run);
            if let Some(at) = close {
                let close = from + (counts.len() - 1) * COUNT_BLOCK + at;
                return Some(Self {
                    text: body.slice(open..=close),
                    counts,
                });
            }
        }
        None
    }

    /// The array's text, `[` to `]`.
    pub fn text(&self) -> &[u8] {
        &self.text
    }

    /// [`pack_chunks`] for this array, with its commas already counted.
    pub fn pack_chunks(
        &self,
        chunks: impl FnOnce(usize) -> usize,
        descending: bool,
    ) -> Result<Vec<Bytes>, NotInts> {
        let inside = self.text.slice(1..self.text.len() - 1);
        pack_counted(&inside, &self.counts, chunks, descending)
    }
}

/// Checks that `text` is a JSON array of 64-bit integers, cuts it into `chunks(len)` near-equal
/// contiguous runs and packs each one, in a single pass over the text.
pub fn pack_chunks(
    text: &Bytes,
    chunks: impl FnOnce(usize) -> usize,
    descending: bool,
) -> Result<Vec<Bytes>, NotInts> {
    let body = text.slice_ref(inside(text)?);
    pack_counted(&body, &comma_counts(&body), chunks, descending)
}

/// Cuts and packs the inside of an array (`counts`: its commas per block).
fn pack_counted(
    body: &Bytes,
    counts: &[usize],
    chunks: impl FnOnce(usize) -> usize,
    descending: bool,
) -> Result<Vec<Bytes>, NotInts> {
    let len = element_count(body, counts.iter().sum());
    let n = chunks(len).clamp(1, len.max(1));
    let cuts = cuts(body, counts, len, n);
    let packed = pack_cuts(body, cuts, descending, threads_for(body.len(), n));
    packed.map_err(|index| NotInts::Element { index })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packed::Packed;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngSeed};

    /// The byte loop alone, to hold the fast path to.
    fn parse_bytewise(b: &[u8]) -> (Vec<i64>, Result<(), usize>) {
        let mut out = Vec::new();
        let result = parse_run_with(b, &mut out, |_, i, _| i);
        (out, result)
    }

    fn parse_fast(b: &[u8]) -> (Vec<i64>, Result<(), usize>) {
        let mut out = Vec::new();
        let result = parse_run(b, &mut out);
        (out, result)
    }

    /// An element: an integer of any length, or now and then one that is not.
    fn element() -> impl Strategy<Value = String> {
        prop_oneof![
            8 => any::<i64>().prop_map(|v| v.to_string()),
            8 => (0u64..1 << 32).prop_map(|v| v.to_string()),
            2 => (0usize..20).prop_map(|n| "9".repeat(n + 1)),
            2 => (0usize..20).prop_map(|n| format!("-1{}", "0".repeat(n))),
            1 => Just("0".to_owned()),
            1 => prop_oneof![
                Just("-0"), Just("00"), Just("-"), Just(""), Just("1.5"), Just("2e3"),
                Just("x"), Just("\"1\""), Just("--1"), Just("1-"), Just("12345678901234567890"),
            ].prop_map(str::to_owned),
        ]
    }

    /// A separator: mostly a bare comma.
    fn separator() -> impl Strategy<Value = &'static str> {
        prop_oneof![
            10 => Just(","), 4 => Just(", "), 1 => Just(" ,"), 1 => Just(",  "), 1 => Just(",\n\t")
        ]
    }

    proptest! {
        #![proptest_config(Config {
            cases: 400,
            rng_seed: RngSeed::Fixed(0x696e_7473),
            failure_persistence: None,
            ..Config::default()
        })]

        #[test]
        fn the_fast_path_reads_exactly_what_the_byte_loop_reads(
            pieces in proptest::collection::vec((element(), separator()), 0..120),
            trailing: bool,
        ) {
            let mut text: String = pieces.iter().map(|(e, s)| format!("{e}{s}")).collect();
            if !trailing {
                text.truncate(text.trim_end_matches([',', ' ', '\n', '\t']).len());
            }
            prop_assert_eq!(parse_fast(text.as_bytes()), parse_bytewise(text.as_bytes()));
            let array = format!("[{text}]");
            prop_assert_eq!(
                parse_ints(array.as_bytes()),
                serde_json::from_str::<Vec<i64>>(&array).ok()
            );
        }

        #[test]
        fn well_formed_arrays_parse_whole(values in proptest::collection::vec(any::<i64>(), 0..400)) {
            let text = serde_json::to_string(&values).unwrap_or_default();
            prop_assert_eq!(parse_ints(text.as_bytes()), Some(values));
        }
    }

    fn pack_all(text: &str, n: usize) -> Result<Vec<Vec<i64>>, NotInts> {
        pack_chunks(&Bytes::copy_from_slice(text.as_bytes()), |_| n, false).map(|chunks| {
            chunks
                .iter()
                .map(|c| Packed::read(c).expect("packed").values())
                .collect()
        })
    }

    #[test]
    fn accepts_integer_arrays_and_names_the_first_bad_element() {
        assert_eq!(pack_all("[ 1, -2 ,3 ]", 1).unwrap(), vec![vec![1, -2, 3]]);
        assert_eq!(pack_all(" [] ", 1).unwrap(), vec![Vec::<i64>::new()]);
        assert_eq!(pack_all("[ ]", 3).unwrap(), vec![Vec::<i64>::new()]);
        for (text, index) in [
            ("[1, 2.5]", 1),
            ("[1, \"x\"]", 1),
            ("[9223372036854775808]", 0),
            ("[1, 01]", 1),
            ("[1,]", 1),
            ("[1,,2]", 1),
            ("[1 2]", 0),
            ("[-]", 0),
            ("[1, 2, 3e4]", 2),
            ("[1, -0]", 1),
        ] {
            assert_eq!(
                pack_all(text, 2).unwrap_err(),
                NotInts::Element { index },
                "{text}"
            );
        }
        assert_eq!(
            pack_all("[-9223372036854775808, 9223372036854775807]", 1).unwrap(),
            vec![vec![i64::MIN, i64::MAX]]
        );
        for text in ["{\"a\": 1}", "[1", "1]", "", "[1]x"] {
            assert_eq!(pack_all(text, 1).unwrap_err(), NotInts::NotArray, "{text}");
        }
    }

    #[test]
    fn integers_of_every_length_parse_wherever_they_sit() {
        let mut cases: Vec<String> = Vec::new();
        let mut n: u64 = 0;
        for len in 1..=20u32 {
            // 1, 12, 123, ... and the largest numbers of each length.
            n = n.wrapping_mul(10).wrapping_add(u64::from(len % 10));
            cases.push(n.to_string());
            cases.push((10u64.saturating_pow(len).saturating_sub(1)).to_string());
        }
        cases.extend(
            [
                "0",
                "9223372036854775807",
                "9223372036854775808",
                "18446744073709551616",
                "00",
                "012",
            ]
            .map(String::from),
        );
        for case in &cases {
            for sign in ["", "-"] {
                for tail in ["", ",", "]", " ", "x", ".5", "1234567890"] {
                    for pad in 0..9 {
                        let text = format!("{}{sign}{case}{tail}", " ".repeat(pad));
                        let got = int_at(text.as_bytes(), pad);
                        let number = format!(
                            "{sign}{case}{}",
                            if tail.starts_with(|c: char| c.is_ascii_digit()) {
                                tail
                            } else {
                                ""
                            }
                        );
                        let ok = !(number.trim_start_matches('-').len() > 1
                            && number.trim_start_matches('-').starts_with('0'))
                            && number != "-0";
                        let want = number
                            .parse::<i64>()
                            .ok()
                            .filter(|_| ok)
                            .map(|v| (v, pad + number.len()));
                        assert_eq!(got, want, "{text:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn parses_what_serde_parses() {
        let text = "[0, -1, 9223372036854775807, -9223372036854775808, 42]";
        assert_eq!(
            parse_ints(text.as_bytes()),
            serde_json::from_str::<Vec<i64>>(text).ok()
        );
        assert_eq!(parse_ints(b"[1.5]"), None);
        assert_eq!(parse_ints(b" [ ] "), Some(vec![]));
    }

    #[test]
    fn cuts_cover_every_element_once_in_near_equal_runs() {
        let values: Vec<i64> = (0..23).map(|v| v * 7 - 40).collect();
        let text = serde_json::to_string(&values).unwrap();
        for n in 1..30 {
            let chunks = pack_all(&text, n).unwrap();
            assert_eq!(chunks.len(), n.min(values.len()), "n = {n}");
            let sizes: Vec<usize> = chunks.iter().map(Vec::len).collect();
            let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(hi - lo <= 1, "n = {n}: {sizes:?}");
            assert_eq!(chunks.concat(), values, "n = {n}");
        }
    }

    #[test]
    fn many_small_cuts_of_a_large_array_keep_every_element_in_order() {
        let values: Vec<i64> = (0..300_000).map(|v| v * 13 - 7).collect();
        let text = serde_json::to_string(&values).unwrap();
        let chunks = pack_all(&text, 100_000).unwrap();
        assert_eq!(chunks.len(), 100_000);
        assert!(chunks.iter().all(|c| c.len() == 3));
        assert_eq!(chunks.concat(), values);
    }

    #[test]
    fn arrays_located_in_a_body_cut_as_the_text_alone_does() {
        // Small and large (located on several threads) arrays, with members after them.
        for n in [0usize, 1, 7, 1000, 600_000] {
            let values: Vec<i64> = (0..n as i64).map(|v| v * 7919 - 3).collect();
            let array = serde_json::to_string(&values).unwrap_or_default();
            let body = Bytes::from(format!(r#"{{"input": {array}, "after": [1, [2]]}}"#));
            let open = body.iter().position(|&c| c == b'[').unwrap_or_default();
            let located = IntArray::locate(&body, open).expect("closed");
            assert_eq!(located.text(), array.as_bytes(), "n = {n}");
            for chunks in [1, 3, 100] {
                assert_eq!(
                    located.pack_chunks(|_| chunks, false),
                    pack_chunks(&Bytes::from(array.clone()), |_| chunks, false),
                    "n = {n}, {chunks} chunks"
                );
            }
        }
        let open_only = Bytes::from(format!("[{}", "1,".repeat(3_000_000)));
        assert!(IntArray::locate(&open_only, 0).is_none());
        assert!(IntArray::locate(&Bytes::from_static(b"[1, 2"), 0).is_none());
    }

    #[test]
    fn large_arrays_cut_on_several_threads_report_the_first_bad_element() {
        let mut values: Vec<String> = (0..1_000_000).map(|v: i64| (v * 37).to_string()).collect();
        let text = format!("[{}]", values.join(","));
        let chunks = pack_all(&text, 10).unwrap();
        assert_eq!(
            chunks.concat(),
            (0..1_000_000).map(|v| v * 37).collect::<Vec<_>>()
        );
        values[999_000] = "1.5".into();
        values[700_001] = "x".into();
        let text = format!("[{}]", values.join(","));
        assert_eq!(
            pack_all(&text, 10).unwrap_err(),
            NotInts::Element { index: 700_001 }
        );
    }
}
