//! Helpers shared by the fuzz targets: turning a few input bytes into a reproducible way of
//! cutting a byte stream into chunks, as a socket or a file reader would deliver it.

/// How many leading input bytes a target spends on the chunking seed.
pub const SEED_LEN: usize = 8;

/// Splits `input` into a chunking seed (its first [`SEED_LEN`] bytes, little-endian, zero
/// when the input is shorter) and the rest.
pub fn split_seed(input: &[u8]) -> (u64, &[u8]) {
    match input.split_first_chunk::<SEED_LEN>() {
        Some((seed, rest)) => (u64::from_le_bytes(*seed), rest),
        None => (0, &[]),
    }
}

/// The chunks of `data` that seed `seed` describes: seed 0 is the whole input at once;
/// any other seed drives a small PRNG that picks each chunk's length from one of four
/// ranges (1–8, 1–64, 1–1024, 1–16384 bytes), so byte-at-a-time, message-sized and
/// page-sized deliveries all occur.
pub struct Chunks<'a> {
    rest: &'a [u8],
    state: u64,
}

impl<'a> Chunks<'a> {
    pub fn new(seed: u64, data: &'a [u8]) -> Self {
        Chunks {
            rest: data,
            state: seed,
        }
    }

    /// xorshift64*: state 0 stays 0, which [`Iterator::next`] reads as "everything".
    fn next_random(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

impl<'a> Iterator for Chunks<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        let len = if self.state == 0 {
            self.rest.len()
        } else {
            let r = self.next_random();
            let max = [8u64, 64, 1024, 16384][(r & 3) as usize];
            let len = 1 + (r >> 8) % max;
            usize::try_from(len).unwrap_or(usize::MAX)
        };
        let (chunk, rest) = self.rest.split_at(len.min(self.rest.len()));
        self.rest = rest;
        Some(chunk)
    }
}
