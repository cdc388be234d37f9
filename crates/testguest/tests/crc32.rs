//! The guest's CRC-32 and block pattern (guest/src/crc32.rs) built for the host.

#[allow(dead_code)]
#[path = "../../../guest/src/crc32.rs"]
mod crc32;

#[test]
fn check_value_and_every_split() {
    let mut crc = crc32::Crc32::new();
    crc.update(b"123456789");
    assert_eq!(crc.finish(), 0xCBF4_3926);
    let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
    for split in [0, 1, 3, 5, 8, 499, 999, 1000] {
        let mut crc = crc32::Crc32::new();
        crc.update(&data[..split]);
        crc.update(&data[split..]);
        assert_eq!(crc.finish(), crc32fast::hash(&data), "split at {split}");
    }
}

#[test]
fn pattern_matches_the_formula_at_any_start() {
    for seed in [0u64, 1, 7, 200, 255, 1000] {
        for first in [0u64, 1, 7, 8, 513] {
            let mut buf = vec![0u8; 77];
            crc32::fill_pattern(&mut buf, seed, first);
            for (k, &byte) in buf.iter().enumerate() {
                assert_eq!(
                    byte,
                    ((seed + 31 * (first + k as u64)) % 256) as u8,
                    "seed {seed} first {first} k {k}"
                );
            }
        }
    }
}
