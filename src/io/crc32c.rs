//! CRC-32C (Castagnoli), the checksum of LevelDB tables and TensorFlow tensor bundles, and the
//! "masked" form in which both store it.
//!
//! x86-64 computes it with the SSE4.2 `crc32` instruction (several GB/s, so verifying a
//! 1.5B-parameter checkpoint costs about a second); elsewhere a 256-entry table does it a byte
//! at a time.

/// The reflected Castagnoli polynomial.
const POLY: u32 = 0x82f6_3b78;

/// `TABLE[b]` = the CRC register after shifting in byte `b` from zero.
const TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut b = 0;
    while b < 256 {
        let mut crc = b as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ POLY } else { crc >> 1 };
            bit += 1;
        }
        table[b] = crc;
        b += 1;
    }
    table
};

/// The CRC-32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    !update(!0, data)
}

/// Runs the (pre-inverted) CRC register over `data`.
fn update(crc: u32, data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("sse4.2") {
        // SAFETY: the CPU supports SSE4.2, checked just above.
        return unsafe { update_sse42(crc, data) };
    }
    update_table(crc, data)
}

fn update_table(crc: u32, data: &[u8]) -> u32 {
    data.iter()
        .fold(crc, |crc, &b| (crc >> 8) ^ TABLE[((crc ^ b as u32) & 0xff) as usize])
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn update_sse42(crc: u32, data: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u64, _mm_crc32_u8};
    let mut words = data.chunks_exact(8);
    let mut crc = crc as u64;
    for w in &mut words {
        crc = _mm_crc32_u64(crc, u64::from_le_bytes(w.try_into().expect("8 bytes")));
    }
    words
        .remainder()
        .iter()
        .fold(crc as u32, |crc, &b| _mm_crc32_u8(crc, b))
}

const MASK_DELTA: u32 = 0xa282_ead8;

/// The stored form: a CRC of data that itself holds CRCs is easy to get accidentally right, so
/// LevelDB rotates and offsets the value before writing it.
pub fn mask(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(MASK_DELTA)
}

/// The inverse of [`mask`].
pub fn unmask(masked: u32) -> u32 {
    masked.wrapping_sub(MASK_DELTA).rotate_left(15)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // RFC 3720 (iSCSI) test vectors, and the standard check value.
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62a8_ab43);
        let ascending: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&ascending), 0x46dd_794e);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn hardware_and_table_agree_on_every_length() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for len in [0, 1, 7, 8, 9, 63, 64, 65, 999, 1000] {
            assert_eq!(update(!0, &data[..len]), update_table(!0, &data[..len]), "length {len}");
        }
    }

    #[test]
    fn mask_round_trips() {
        for crc in [0, 1, 0xe306_9283, u32::MAX] {
            assert_eq!(unmask(mask(crc)), crc);
            assert_ne!(mask(crc), crc);
        }
    }
}
