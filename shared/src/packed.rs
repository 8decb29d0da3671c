//! Packed integer chunks: how the coordinator hands a built-in job's integer input to workers and
//! how an integer `sort` hands its sorted run back, without any JSON to print or parse.
//!
//! A packed run is frame-of-reference encoded, little-endian:
//!
//! ```text
//! byte 0      0x00 (no JSON text starts with a NUL byte, so a payload is either JSON or packed)
//! byte 1      flags: bit 0 = descending (for `sort`)
//! byte 2      width w of each value: 1, 2, 4 or 8
//! bytes 3-10  base, i64
//! then        n values, each `value - base` as a w-byte unsigned integer
//! ```
//!
//! With the smallest value as the base, integers below 2^32 take 4 bytes instead of ~11 as JSON.

use bytes::Bytes;

const TAG: u8 = 0;
const HEADER: usize = 11;
const DESCENDING: u8 = 1;

/// True when `payload` is a packed run rather than JSON text.
pub fn is_packed(payload: &[u8]) -> bool {
    payload.first() == Some(&TAG)
}

/// Packs `values` (kept in their order) into a run.
pub fn pack(values: &[i64], descending: bool) -> Bytes {
    let (min, max) = values
        .iter()
        .fold((i64::MAX, i64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let base = if values.is_empty() { 0 } else { min };
    let range = (max as i128 - base as i128).max(0) as u64;
    let width: usize = match range {
        0..=0xff => 1,
        0x100..=0xffff => 2,
        0x1_0000..=0xffff_ffff => 4,
        _ => 8,
    };
    let mut out = vec![0u8; HEADER + values.len() * width];
    out[0] = TAG;
    out[1] = if descending { DESCENDING } else { 0 };
    out[2] = width as u8;
    out[3..HEADER].copy_from_slice(&base.to_le_bytes());
    let offset = |v: i64| v.wrapping_sub(base) as u64;
    let data = &mut out[HEADER..];
    // Fixed-size stores into a sized buffer: the compiler can vectorise these loops.
    match width {
        1 => data
            .iter_mut()
            .zip(values)
            .for_each(|(d, &v)| *d = offset(v) as u8),
        2 => data
            .chunks_exact_mut(2)
            .zip(values)
            .for_each(|(d, &v)| d.copy_from_slice(&(offset(v) as u16).to_le_bytes())),
        4 => data
            .chunks_exact_mut(4)
            .zip(values)
            .for_each(|(d, &v)| d.copy_from_slice(&(offset(v) as u32).to_le_bytes())),
        _ => data
            .chunks_exact_mut(8)
            .zip(values)
            .for_each(|(d, &v)| d.copy_from_slice(&offset(v).to_le_bytes())),
    }
    Bytes::from(out)
}

/// A packed run, read in place.
#[derive(Debug, Clone, Copy)]
pub struct Packed<'a> {
    descending: bool,
    width: usize,
    base: i64,
    data: &'a [u8],
}

impl<'a> Packed<'a> {
    /// Reads a packed run; `None` when `payload` is not one (JSON, or damaged).
    pub fn read(payload: &'a [u8]) -> Option<Self> {
        if !is_packed(payload) || payload.len() < HEADER {
            return None;
        }
        let width = usize::from(payload[2]);
        let data = &payload[HEADER..];
        if !matches!(width, 1 | 2 | 4 | 8) || !data.len().is_multiple_of(width) {
            return None;
        }
        let base = i64::from_le_bytes(payload[3..HEADER].try_into().ok()?);
        Some(Self {
            descending: payload[1] & DESCENDING != 0,
            width,
            base,
            data,
        })
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.data.len() / self.width
    }

    /// True when the run holds no value.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The descending flag (`sort`).
    pub fn descending(&self) -> bool {
        self.descending
    }

    /// Calls `f` with every offset from the base, in order.
    fn for_each_offset(&self, mut f: impl FnMut(u64)) {
        let d = self.data;
        match self.width {
            1 => d.iter().for_each(|&b| f(u64::from(b))),
            2 => d
                .chunks_exact(2)
                .for_each(|c| f(u64::from(u16::from_le_bytes([c[0], c[1]])))),
            4 => d
                .chunks_exact(4)
                .for_each(|c| f(u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))),
            _ => d.chunks_exact(8).for_each(|c| {
                f(u64::from_le_bytes([
                    c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7],
                ]))
            }),
        }
    }

    /// The values, in order.
    pub fn values(&self) -> Vec<i64> {
        let mut out = Vec::with_capacity(self.len());
        let base = self.base;
        self.for_each_offset(|o| out.push(base.wrapping_add(o as i64)));
        out
    }

    /// The run sorted (largest first when descending), packed again with the same base and
    /// width. Offsets are sorted as they are stored (four bytes each for integers below 2^32),
    /// which orders the values too: `pack` takes the smallest value as the base, so no value
    /// wraps around. A run whose largest value would, is sorted by value instead.
    pub fn sorted(&self) -> Bytes {
        let descending = self.descending;
        let mut largest = 0u64;
        self.for_each_offset(|o| largest = largest.max(o));
        if i128::from(self.base) + i128::from(largest) > i128::from(i64::MAX) {
            let mut values = self.values();
            values.sort_unstable();
            if descending {
                values.reverse();
            }
            return pack(&values, descending);
        }
        let mut out = vec![0u8; HEADER + self.data.len()];
        out[0] = TAG;
        out[1] = if descending { DESCENDING } else { 0 };
        out[2] = self.width as u8;
        out[3..HEADER].copy_from_slice(&self.base.to_le_bytes());
        let data = &mut out[HEADER..];
        if self.width == 8 {
            let mut offsets = Vec::with_capacity(self.len());
            self.for_each_offset(|o| offsets.push(o));
            offsets.sort_unstable();
            if descending {
                offsets.reverse();
            }
            data.chunks_exact_mut(8)
                .zip(&offsets)
                .for_each(|(d, o)| d.copy_from_slice(&o.to_le_bytes()));
        } else {
            let mut offsets: Vec<u32> = Vec::with_capacity(self.len());
            self.for_each_offset(|o| offsets.push(o as u32));
            sort_offsets(&mut offsets, largest as u32);
            if descending {
                offsets.reverse();
            }
            let width = self.width;
            data.chunks_exact_mut(width)
                .zip(&offsets)
                .for_each(|(d, o)| d.copy_from_slice(&o.to_le_bytes()[..width]));
        }
        Bytes::from(out)
    }

    /// The exact sum of the values.
    pub fn sum(&self) -> i128 {
        // Offsets are below 2^64 and there are fewer than 2^64 of them: u128 cannot overflow.
        let mut offsets: u128 = 0;
        self.for_each_offset(|o| offsets += u128::from(o));
        i128::from(self.base) * self.len() as i128 + offsets as i128
    }

    /// The values as a JSON array.
    pub fn to_json(&self) -> Vec<u8> {
        json_array(&self.values())
    }

    /// The JSON chunk payload this run stands for: the array, or for a descending `sort`
    /// `{"items": [...], "descending": true}`.
    pub fn to_json_payload(&self) -> Vec<u8> {
        if !self.descending {
            return self.to_json();
        }
        let mut out = b"{\"items\":".to_vec();
        out.extend_from_slice(&self.to_json());
        out.extend_from_slice(b",\"descending\":true}");
        out
    }
}

/// Runs at least this long are sorted by radix, shorter ones by comparison.
const RADIX_SORT_MIN: usize = 4096;
/// Bits of an offset one radix pass sorts by.
const RADIX_BITS: u32 = 11;

/// Sorts offsets no larger than `largest` ascending. A long run goes through a least significant
/// digit radix sort, 11 bits a pass and only as many passes as `largest` needs (three for any
/// 32-bit offset): for 125k random offsets 1.2 ms against `sort_unstable`'s 2.6 ms here.
fn sort_offsets(offsets: &mut Vec<u32>, largest: u32) {
    if offsets.len() < RADIX_SORT_MIN {
        offsets.sort_unstable();
        return;
    }
    const DIGITS: usize = 1 << RADIX_BITS;
    let digit = |v: u32, shift: u32| ((v >> shift) as usize) & (DIGITS - 1);
    let passes = (32 - largest.leading_zeros()).div_ceil(RADIX_BITS);
    // Every pass's digit counts in one read of the offsets.
    let mut counts = vec![[0usize; DIGITS]; passes as usize];
    for &v in offsets.iter() {
        for (pass, count) in counts.iter_mut().enumerate() {
            count[digit(v, pass as u32 * RADIX_BITS)] += 1;
        }
    }
    let mut spare = vec![0u32; offsets.len()];
    for (pass, count) in counts.iter_mut().enumerate() {
        let shift = pass as u32 * RADIX_BITS;
        // A digit every offset shares orders nothing.
        if count.contains(&offsets.len()) {
            continue;
        }
        let mut at = 0;
        for n in count.iter_mut() {
            (*n, at) = (at, at + *n);
        }
        for &v in offsets.iter() {
            let slot = &mut count[digit(v, shift)];
            spare[*slot] = v;
            *slot += 1;
        }
        std::mem::swap(offsets, &mut spare);
    }
}

/// Writes integers as a JSON array.
pub fn json_array(values: &[i64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 12 + 2);
    out.push(b'[');
    json_items(values, &mut out);
    out.push(b']');
    out
}

/// Appends `values` as JSON numbers separated by commas (an array's inside).
pub fn json_items(values: &[i64], out: &mut Vec<u8>) {
    let mut buf = itoa::Buffer::new();
    for (i, &v) in values.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(buf.format(v).as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_round_trip_at_every_width() {
        let cases: [&[i64]; 6] = [
            &[],
            &[7],
            &[5, 300, 5],
            &[-70_000, 0, 70_000],
            &[0, 4_294_967_295, 12],
            &[i64::MIN, i64::MAX, 0, -1],
        ];
        for values in cases {
            for descending in [false, true] {
                let run = pack(values, descending);
                assert!(is_packed(&run));
                let read = Packed::read(&run).expect("packed");
                assert_eq!(read.values(), values);
                assert_eq!(read.descending(), descending);
                let sum: i128 = values.iter().map(|&v| i128::from(v)).sum();
                assert_eq!(read.sum(), sum);
                let json: Vec<i64> = serde_json::from_slice(&read.to_json()).expect("json");
                assert_eq!(json, values);
                let payload: serde_json::Value =
                    serde_json::from_slice(&read.to_json_payload()).expect("json");
                if descending {
                    assert_eq!(payload["descending"], true);
                    assert_eq!(payload["items"], serde_json::json!(values));
                } else {
                    assert_eq!(payload, serde_json::json!(values));
                }
            }
        }
        assert_eq!(pack(&[1, 2, 3], false).len(), HEADER + 3);
        assert_eq!(pack(&[0, 1 << 32], false).len(), HEADER + 16);
    }

    #[test]
    fn sorted_runs_keep_every_value_in_order() {
        let cases: [&[i64]; 5] = [
            &[],
            &[5, 300, 5, 7, 0],
            &[-70_000, 12, 70_000, -3],
            &[4_294_967_295, 0, 12, 99],
            &[i64::MAX, i64::MIN, 0, -1, 1],
        ];
        for values in cases {
            for descending in [false, true] {
                let mut expected = values.to_vec();
                expected.sort_unstable();
                if descending {
                    expected.reverse();
                }
                let sorted = Packed::read(&pack(values, descending)).unwrap().sorted();
                let read = Packed::read(&sorted).unwrap();
                assert_eq!(
                    read.values(),
                    expected,
                    "{values:?} descending={descending}"
                );
                assert_eq!(read.descending(), descending);
            }
        }
    }

    #[test]
    fn long_runs_sort_by_radix_like_a_comparison_sort() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        // Ranges that need one, two and three radix passes, and one whose lower two digits every
        // offset shares (passes that are skipped).
        let ranges: [(i64, u64); 5] = [
            (-5, 1 << 10),
            (1000, 1 << 20),
            (0, 1 << 32),
            (7, 1 << 31),
            (0, 0),
        ];
        for (base, range) in ranges {
            let values: Vec<i64> = (0..RADIX_SORT_MIN * 3 + 17)
                .map(|_| match range {
                    0 => ((next() % 1024) << 22 | 0x2aa << 11 | 5) as i64,
                    _ => base + (next() % range) as i64,
                })
                .collect();
            for descending in [false, true] {
                let mut expected = values.clone();
                expected.sort_unstable();
                if descending {
                    expected.reverse();
                }
                let sorted = Packed::read(&pack(&values, descending)).unwrap().sorted();
                assert_eq!(
                    Packed::read(&sorted).unwrap().values(),
                    expected,
                    "range {range}"
                );
            }
        }
    }

    #[test]
    fn integers_print_as_rust_prints_them() {
        let mut values = vec![
            0,
            1,
            -1,
            9,
            10,
            -10,
            99,
            100,
            -101,
            i64::MAX,
            i64::MIN,
            i64::MIN + 1,
        ];
        values.extend((0..19).map(|p| 10_i64.pow(p)));
        values.extend((1..19).map(|p| 10_i64.pow(p) - 1));
        values.extend((1..19).map(|p| -(10_i64.pow(p) + 7)));
        let mut out = Vec::new();
        json_items(&values, &mut out);
        let expected: Vec<String> = values.iter().map(i64::to_string).collect();
        assert_eq!(String::from_utf8(out).unwrap(), expected.join(","));
    }

    #[test]
    fn json_and_damaged_runs_are_not_packed() {
        assert!(Packed::read(b"[1,2]").is_none());
        assert!(Packed::read(&[0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0]).is_none());
        assert!(Packed::read(&[0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 1]).is_none());
        assert!(Packed::read(&[0, 0, 1]).is_none());
    }
}
