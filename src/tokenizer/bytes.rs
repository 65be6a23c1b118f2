//! GPT-2's reversible byte <-> character table.
//!
//! Byte-level BPE files (encoder.json, vocab.bpe, Hugging Face tokenizer.json) write tokens as
//! text. So that every byte is a visible, non-whitespace character, GPT-2 maps the 188 printable
//! bytes `!..=~`, `¡..=¬`, `®..=ÿ` to the character with the same code point and the other 68
//! bytes (controls, space, NBSP, soft hyphen), in byte order, to U+0100, U+0101, ...
//! A space is therefore `Ġ` (U+0120) and a newline `Ċ` (U+010A).
//!
//! The same order numbers GPT-2's first 256 tokens: token i is the byte `BYTE_ORDER[i]`
//! (the 188 printable bytes first, then the others).

const fn is_printable(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// `CHAR_OF[b]` = code point standing for byte `b`.
const CHAR_OF: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut others = 0;
    let mut b = 0;
    while b < 256 {
        table[b] = if is_printable(b as u8) {
            b as u32
        } else {
            others += 1;
            255 + others
        };
        b += 1;
    }
    table
};

/// The GPT-2 id order of the 256 single-byte tokens: printable bytes, then the rest.
pub const BYTE_ORDER: [u8; 256] = {
    let mut order = [0u8; 256];
    let mut n = 0;
    let mut pass = 0;
    while pass < 2 {
        let mut b = 0;
        while b < 256 {
            if is_printable(b as u8) == (pass == 0) {
                order[n] = b as u8;
                n += 1;
            }
            b += 1;
        }
        pass += 1;
    }
    order
};

/// The character that stands for byte `b`.
pub fn byte_to_char(b: u8) -> char {
    // Every entry is below U+0144, a valid scalar value.
    char::from_u32(CHAR_OF[b as usize]).unwrap_or(char::REPLACEMENT_CHARACTER)
}

/// The byte that character `c` stands for, if `c` belongs to the table.
pub fn char_to_byte(c: char) -> Option<u8> {
    let c = c as u32;
    if c < 256 && is_printable(c as u8) {
        Some(c as u8)
    } else if (256..256 + 68).contains(&c) {
        // the (c - 256)-th non-printable byte
        BYTE_ORDER.get(188 + (c - 256) as usize).copied()
    } else {
        None
    }
}

/// Writes bytes in the GPT-2 alphabet (`" hi\n"` -> `"ĠhiĊ"`).
pub fn bytes_to_text(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| byte_to_char(b)).collect()
}

/// Reads text written in the GPT-2 alphabet back into bytes; `None` if a character is foreign.
pub fn text_to_bytes(text: &str) -> Option<Vec<u8>> {
    text.chars().map(char_to_byte).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_a_bijection_in_gpt2_order() {
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(byte_to_char(b)), Some(b));
        }
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(BYTE_ORDER[0], b'!');
        // encoder.json: "Ā" (byte 0) has id 188
        assert_eq!(BYTE_ORDER[188], 0);
        assert_eq!(char_to_byte('Ń'), Some(0xAD)); // the last of the 68
        assert_eq!(char_to_byte('ń'), None);
    }
}
