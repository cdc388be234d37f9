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

/// Tables for slicing by four: `TABLES[k][i]` is the CRC of byte `i` followed by `k` zero bytes.
const TABLES: [[u32; 256]; 4] = {
    let mut tables = [[0u32; 256]; 4];
    tables[0] = TABLE;
    let mut k = 1;
    while k < 4 {
        let mut i = 0;
        while i < 256 {
            let previous = tables[k - 1][i];
            tables[k][i] = (previous >> 8) ^ TABLE[(previous & 0xFF) as usize];
            i += 1;
        }
        k += 1;
    }
    tables
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
        let mut words = data.chunks_exact(4);
        for word in &mut words {
            let crc = self.0 ^ u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
            self.0 = TABLES[3][(crc & 0xFF) as usize]
                ^ TABLES[2][((crc >> 8) & 0xFF) as usize]
                ^ TABLES[1][((crc >> 16) & 0xFF) as usize]
                ^ TABLES[0][(crc >> 24) as usize];
        }
        for &byte in words.remainder() {
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
    const LOW7: u64 = 0x7F7F_7F7F_7F7F_7F7F;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    /// Bytes 0, 31, 62, ... 217: the pattern's steps within one word.
    const STEPS: u64 = 0xD9BA_9B7C_5D3E_1F00;
    let mut value = pattern_byte(seed, first);
    // Eight bytes at a time: each byte of STEPS plus the word's first value, wrapping per byte.
    let mut words = buf.chunks_exact_mut(8);
    for word in &mut words {
        let start = u64::from(value) * 0x0101_0101_0101_0101;
        let bytes = ((STEPS & LOW7) + (start & LOW7)) ^ ((STEPS ^ start) & HIGH);
        word.copy_from_slice(&bytes.to_le_bytes());
        value = value.wrapping_add(8 * 31);
    }
    for byte in words.into_remainder() {
        *byte = value;
        value = value.wrapping_add(31);
    }
}
