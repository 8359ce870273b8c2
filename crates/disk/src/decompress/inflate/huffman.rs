//! Canonical Huffman codes: their tables (a first level indexed by the next input bits,
//! the longer codes bit by bit) and the deflate alphabets' entries.

/// Bits of the first-level table for literals/lengths and for distances; longer codes
/// are decoded bit by bit.
pub(super) const LIT_BITS: u32 = 10;
pub(super) const DIST_BITS: u32 = 8;

/// Entry kinds, bits 4..8 of a table entry.
pub(super) const LITERAL: u32 = 0;
pub(super) const LENGTH: u32 = 1;
pub(super) const END: u32 = 2;
const INVALID: u32 = 3;
/// The code is longer than the table's bits: decode it bit by bit.
const LONG: u32 = 4;

const fn entry(kind: u32, value: u32, extra: u32) -> u32 {
    (value << 16) | (extra << 8) | (kind << 4)
}

const LENGTH_BASE: [u16; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195,
    227, 258,
];
const LENGTH_EXTRA: [u8; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];
const DIST_BASE: [u16; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073,
    4097, 6145, 8193, 12289, 16385, 24577,
];
const DIST_EXTRA: [u8; 30] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13,
];
/// The order in which code length code lengths are stored.
pub(super) const CLEN_ORDER: [usize; 19] = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15];

pub(super) fn lit_entry(sym: usize) -> u32 {
    match sym {
        0..=255 => entry(LITERAL, sym as u32, 0),
        256 => entry(END, 0, 0),
        257..=285 => entry(
            LENGTH,
            u32::from(LENGTH_BASE[sym - 257]),
            u32::from(LENGTH_EXTRA[sym - 257]),
        ),
        _ => entry(INVALID, 0, 0),
    }
}

pub(super) fn dist_entry(sym: usize) -> u32 {
    match sym {
        0..=29 => entry(LITERAL, u32::from(DIST_BASE[sym]), u32::from(DIST_EXTRA[sym])),
        _ => entry(INVALID, 0, 0),
    }
}

/// Code-length codes: the symbol is the value.
pub(super) fn clen_entry(sym: usize) -> u32 {
    entry(LITERAL, sym as u32, 0)
}

/// A canonical Huffman code: a first-level table indexed by the next `bits` input bits,
/// and the symbols by code for the longer codes.
pub(super) struct Huffman {
    bits: u32,
    fast: Vec<u32>,
    /// Codes per length.
    count: [u16; 16],
    /// Symbols ordered by code.
    symbols: Vec<u16>,
    /// The entry of each symbol (without its length).
    entries: Vec<u32>,
}

impl Huffman {
    /// Builds the code of `lens` (a length per symbol, 0: unused). As zlib: an
    /// over-subscribed set is refused, and an incomplete one unless it is a single code of
    /// length 1 (not for code-length codes); no code at all is accepted (any use fails).
    pub(super) fn new(
        lens: &[u8],
        bits: u32,
        entry_of: fn(usize) -> u32,
        codes: bool,
    ) -> Result<Self, &'static str> {
        let mut count = [0u16; 16];
        for &l in lens {
            count[usize::from(l)] += 1;
        }
        count[0] = 0;
        let max = (1..16).rev().find(|&l| count[l] != 0).unwrap_or(0);
        let mut left: i32 = 1;
        for c in &count[1..] {
            left = (left << 1) - i32::from(*c);
            if left < 0 {
                return Err("over-subscribed");
            }
        }
        if max != 0 && left > 0 && (codes || max != 1) {
            return Err("incomplete");
        }
        // start[l]: index of the first symbol of length l among the ordered symbols.
        let mut start = [0usize; 16];
        for l in 2..16 {
            start[l] = start[l - 1] + usize::from(count[l - 1]);
        }
        let mut symbols = vec![0u16; count.iter().map(|c| usize::from(*c)).sum()];
        let mut next = start;
        for (sym, &l) in lens.iter().enumerate() {
            if l != 0 {
                symbols[next[usize::from(l)]] = sym as u16;
                next[usize::from(l)] += 1;
            }
        }
        let entries: Vec<u32> = (0..lens.len()).map(entry_of).collect();
        let size = 1usize << bits;
        let mut fast = vec![entry(INVALID, 0, 0); size];
        // Canonical codes, in order of length then symbol.
        let mut code: u32 = 0;
        let mut i = 0usize;
        for l in 1..16u32 {
            for _ in 0..count[l as usize] {
                let sym = usize::from(symbols[i]);
                i += 1;
                let rev = code.reverse_bits() >> (32 - l);
                if l <= bits {
                    let e = entries[sym] | l;
                    let mut j = rev as usize;
                    while j < size {
                        fast[j] = e;
                        j += 1 << l;
                    }
                } else {
                    fast[(rev & ((1 << bits) - 1)) as usize] = entry(LONG, 0, 0);
                }
                code += 1;
            }
            code <<= 1;
        }
        Ok(Self {
            bits,
            fast,
            count,
            symbols,
            entries,
        })
    }

    /// The entry (with its length) of the code at the bottom of `bitbuf`, which holds at
    /// least 15 bits; `None` for a code that is not in the table.
    #[inline(always)]
    pub(super) fn decode(&self, bitbuf: u64) -> Option<u32> {
        let e = self.fast[(bitbuf & ((1 << self.bits) - 1)) as usize];
        if (e >> 4) & 15 != LONG {
            return Some(e);
        }
        self.decode_long(bitbuf)
    }

    #[cold]
    pub(super) fn decode_long(&self, bitbuf: u64) -> Option<u32> {
        let (mut code, mut first, mut index) = (0i32, 0i32, 0i32);
        for len in 1..16u32 {
            code |= ((bitbuf >> (len - 1)) & 1) as i32;
            let count = i32::from(self.count[len as usize]);
            if code - first < count {
                let sym = usize::from(self.symbols[(index + code - first) as usize]);
                return Some(self.entries[sym] | len);
            }
            index += count;
            first = (first + count) << 1;
            code <<= 1;
        }
        None
    }
}
