//! The integer parser's fast path on x86-64, sixteen bytes at a time with SSE2 (which every
//! x86-64 CPU has), through `safe_arch`'s safe wrappers.
//!
//! The text is taken 64 bytes at a time: one pass marks its commas and its digits in two bit masks,
//! then each element that ends at a comma in the block is checked against the masks and converted
//! from the 16 bytes that end at its comma. The elements' conversions do not wait on one another
//! (the byte loop's `v * 10 + d` chain does), which is where the speed comes from.

use safe_arch::{
    bitand_m128i, cmp_eq_mask_i8_m128i, get_i64_from_m128i_s, load_unaligned_m128i, min_u8_m128i,
    move_mask_i8_m128i, mul_i16_horizontal_add_m128i, pack_i32_to_i16_m128i, set_i16_m128i,
    set_splat_i8_m128i, sub_i8_m128i, unpack_high_i8_m128i, unpack_low_i8_m128i, zeroed_m128i,
};

/// Bit k is set where `block[k]` is a comma, and where it is a decimal digit.
#[inline]
fn block_masks(block: &[u8; 64]) -> (u64, u64) {
    let comma = set_splat_i8_m128i(b',' as i8);
    let zero = set_splat_i8_m128i(b'0' as i8);
    let nine = set_splat_i8_m128i(9);
    let (mut commas, mut digits) = (0u64, 0u64);
    for (k, lane) in block.chunks_exact(16).enumerate() {
        let Ok(lane) = <&[u8; 16]>::try_from(lane) else {
            break;
        };
        let x = load_unaligned_m128i(lane);
        // Digits are the bytes whose distance above '0' is at most 9 (unsigned).
        let d = sub_i8_m128i(x, zero);
        let c = move_mask_i8_m128i(cmp_eq_mask_i8_m128i(x, comma)) as u16;
        let g = move_mask_i8_m128i(cmp_eq_mask_i8_m128i(min_u8_m128i(d, nine), d)) as u16;
        commas |= u64::from(c) << (16 * k);
        digits |= u64::from(g) << (16 * k);
    }
    (commas, digits)
}

/// `KEEP[len]` keeps the last `len` bytes of sixteen: the digits of a number that ends a window.
const KEEP: [[u8; 16]; 17] = {
    let mut masks = [[0u8; 16]; 17];
    let mut len = 0;
    while len <= 16 {
        let mut k = 16 - len;
        while k < 16 {
            masks[len][k] = 0xff;
            k += 1;
        }
        len += 1;
    }
    masks
};

/// The value of the last `len` (1..=16) bytes of `window`, which are decimal digits.
#[inline]
fn value(window: &[u8; 16], len: usize) -> u64 {
    // The bytes before the number (the previous element's tail) count as zeros.
    let keep = load_unaligned_m128i(&KEEP[len.min(16)]);
    let digits = bitand_m128i(
        sub_i8_m128i(load_unaligned_m128i(window), set_splat_i8_m128i(b'0' as i8)),
        keep,
    );
    let zero = zeroed_m128i();
    // Adjacent digits, then pairs, then fours combine: 8 x 2, 4 x 4 then 2 x 8 digits.
    let tens = set_i16_m128i(1, 10, 1, 10, 1, 10, 1, 10);
    let pairs = pack_i32_to_i16_m128i(
        mul_i16_horizontal_add_m128i(unpack_low_i8_m128i(digits, zero), tens),
        mul_i16_horizontal_add_m128i(unpack_high_i8_m128i(digits, zero), tens),
    );
    let hundreds = set_i16_m128i(1, 100, 1, 100, 1, 100, 1, 100);
    let fours = mul_i16_horizontal_add_m128i(pairs, hundreds);
    let fours = pack_i32_to_i16_m128i(fours, fours);
    let ten_thousands = set_i16_m128i(1, 10000, 1, 10000, 1, 10000, 1, 10000);
    let eights = get_i64_from_m128i_s(mul_i16_horizontal_add_m128i(fours, ten_thousands)) as u64;
    (eights & 0xffff_ffff) * 100_000_000 + (eights >> 32)
}

/// Parses elements from `i` (the start of one) into `out` while each is an optionally negative
/// integer of at most 16 digits, in JSON's form, after at most one space and followed right away
/// by a comma; returns the index
/// of the first element it did not take (the scalar parser goes on from there).
pub(super) fn plain_elements(b: &[u8], mut i: usize, out: &mut Vec<i64>) -> usize {
    while let Some(block) = b.get(i..i + 64).and_then(|s| <&[u8; 64]>::try_from(s).ok()) {
        let (mut commas, digits) = block_masks(block);
        // The element being read starts at `start` within the block.
        let mut start = 0usize;
        while commas != 0 {
            let end = commas.trailing_zeros() as usize;
            commas &= commas - 1;
            // One space after the comma, as `json.dumps` and many other writers put there.
            let spaced = usize::from(block[start] == b' ');
            let negative = block[start + spaced] == b'-';
            let first = start + spaced + usize::from(negative);
            let len = end.wrapping_sub(first);
            // Empty, too long, or a leading zero (or `-0`): the scalar parser decides.
            if len == 0 || len > 16 || (block[first] == b'0' && (len > 1 || negative)) {
                return i + start;
            }
            let all = (u64::MAX >> (64 - len)) << first;
            let window = (i + end)
                .checked_sub(16)
                .and_then(|from| b.get(from..i + end))
                .and_then(|s| <&[u8; 16]>::try_from(s).ok());
            let Some(window) = window.filter(|_| digits & all == all) else {
                return i + start;
            };
            let v = value(window, len) as i64;
            out.push(if negative { -v } else { v });
            start = end + 1;
        }
        if start == 0 {
            // No element ends in these 64 bytes.
            return i;
        }
        i += start;
    }
    i
}
