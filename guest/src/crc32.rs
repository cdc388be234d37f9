//! CRC-32/IEEE (reflected polynomial 0xEDB88320) and the block test pattern.
//!
//! Pure `core` code: the host tests include this file to check it.

/// The lookup table, built at compile time.
const TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// A running CRC-32/IEEE over data fed in pieces.
#[derive(Clone, Copy)]
pub struct Crc32(u32);

impl Crc32 {
    /// A CRC over no data yet.
    pub const fn new() -> Crc32 {
        Crc32(0xFFFF_FFFF)
    }

    /// Feeds `data`.
    pub fn update(&mut self, data: &[u8]) {
        for &byte in data {
            let index = ((self.0 ^ u32::from(byte)) & 0xFF) as usize;
            self.0 = (self.0 >> 8) ^ TABLE[index];
        }
    }

    /// The CRC of everything fed so far.
    pub fn finish(&self) -> u32 {
        !self.0
    }
}

/// Byte `k` of the block test pattern for `seed`: `(seed + 31 * k) mod 256`.
pub fn pattern_byte(seed: u64, k: u64) -> u8 {
    (seed.wrapping_add(k.wrapping_mul(31)) & 0xFF) as u8
}

/// Fills `buf` with the pattern for `seed`, starting at pattern byte `first`.
pub fn fill_pattern(buf: &mut [u8], seed: u64, first: u64) {
    // The pattern repeats every 256 bytes, so one step per byte is enough.
    let mut value = pattern_byte(seed, first);
    for byte in buf.iter_mut() {
        *byte = value;
        value = value.wrapping_add(31);
    }
}
