//! GPT-2's pre-tokenizer, written out by hand (no regex engine at run time).
//!
//! BPE never merges across the pieces this splits text into. GPT-2 (and tiktoken's `gpt2`) use
//!
//! ```text
//! 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//! ```
//!
//! matched repeatedly from the start of the text, the first alternative that matches winning.
//! Every character falls in exactly one class: letter `\p{L}`, number `\p{N}`, whitespace `\s`
//! (Unicode White_Space) or other. Read as rules at the start of each piece:
//!
//! 1. `'` followed by `s t m d` or `re ve ll` (lowercase ASCII) is a piece (a contraction);
//! 2. otherwise a maximal run of letters, of numbers or of "other" characters is a piece, and an
//!    ASCII space just before such a run joins it (`" world"`, `" 42"`, `" !!"`);
//! 3. a run of whitespace followed by the end of the text is a piece; a run followed by a
//!    non-space keeps its last character for the next piece (`\s+(?!\S)` backs off one
//!    character), so that `"  hi"` gives `" "`, `" hi"`; a single whitespace character before a
//!    non-space (which rule 2 did not take, e.g. `"\n"` in `"\nhi"`) is a piece on its own.

use super::unicode_tables::{LETTER, NUMBER, WHITE_SPACE};

/// The class of a character in the GPT-2 pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CharClass {
    Letter,
    Number,
    Space,
    Other,
}

const ASCII_CLASS: [CharClass; 128] = {
    let mut table = [CharClass::Other; 128];
    let mut b = 0;
    while b < 128 {
        table[b] = match b as u8 {
            b'a'..=b'z' | b'A'..=b'Z' => CharClass::Letter,
            b'0'..=b'9' => CharClass::Number,
            b'\t'..=b'\r' | b' ' => CharClass::Space,
            _ => CharClass::Other,
        };
        b += 1;
    }
    table
};

fn in_ranges(ranges: &[(u32, u32)], c: u32) -> bool {
    ranges
        .binary_search_by(|&(lo, hi)| {
            if hi < c {
                std::cmp::Ordering::Less
            } else if lo > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// The class of the code point `c`.
pub fn class_of(c: u32) -> CharClass {
    if c < 128 {
        ASCII_CLASS[c as usize]
    } else if in_ranges(LETTER, c) {
        CharClass::Letter
    } else if in_ranges(NUMBER, c) {
        CharClass::Number
    } else if in_ranges(WHITE_SPACE, c) {
        CharClass::Space
    } else {
        CharClass::Other
    }
}

/// Class and UTF-8 length of the character starting at byte `i` of `s` (a char boundary).
#[inline]
fn char_at(s: &[u8], i: usize) -> (CharClass, usize) {
    let b0 = s[i] as u32;
    if b0 < 0x80 {
        return (ASCII_CLASS[b0 as usize], 1);
    }
    // `s` is valid UTF-8, so the continuation bytes exist.
    let cont = |k: usize| (s[i + k] & 0x3F) as u32;
    let (c, len) = if b0 < 0xE0 {
        (((b0 & 0x1F) << 6) | cont(1), 2)
    } else if b0 < 0xF0 {
        (((b0 & 0x0F) << 12) | (cont(1) << 6) | cont(2), 3)
    } else {
        (((b0 & 0x07) << 18) | (cont(1) << 12) | (cont(2) << 6) | cont(3), 4)
    };
    (class_of(c), len)
}

/// Byte length of the run of `class` characters at the start of `s`.
#[inline]
fn run_len(s: &[u8], class: CharClass) -> usize {
    let mut i = 0;
    while i < s.len() {
        let (c, len) = char_at(s, i);
        if c != class {
            break;
        }
        i += len;
    }
    i
}

/// Rule 1: length of a contraction suffix right after an apostrophe.
fn contraction_len(after: &[u8]) -> Option<usize> {
    match after {
        [b's' | b't' | b'm' | b'd', ..] => Some(1),
        [b'r', b'e', ..] | [b'v', b'e', ..] | [b'l', b'l', ..] => Some(2),
        _ => None,
    }
}

/// Byte length of the first piece of the non-empty text `s`.
fn piece_len(s: &[u8]) -> usize {
    if s[0] == b'\'' {
        if let Some(n) = contraction_len(&s[1..]) {
            return 1 + n;
        }
    }
    // Rule 2, with the optional leading ASCII space.
    let (class, _) = char_at(s, 0);
    let start = usize::from(s[0] == b' ' && s.len() > 1 && char_at(s, 1).0 != CharClass::Space);
    let class = if start == 1 { char_at(s, 1).0 } else { class };
    if class != CharClass::Space {
        return start + run_len(&s[start..], class);
    }
    // Rule 3.
    let run = run_len(s, CharClass::Space);
    if run == s.len() {
        return run;
    }
    let mut last = run - 1;
    while s[last] & 0xC0 == 0x80 {
        last -= 1;
    }
    if last > 0 {
        last
    } else {
        run
    }
}

/// The pieces of `text`, in order; they concatenate back to `text`.
pub fn pieces(text: &str) -> Pieces<'_> {
    Pieces { rest: text }
}

/// Iterator returned by [`pieces`].
#[derive(Clone, Debug)]
pub struct Pieces<'a> {
    rest: &'a str,
}

impl<'a> Iterator for Pieces<'a> {
    type Item = &'a str;

    #[inline]
    fn next(&mut self) -> Option<&'a str> {
        if self.rest.is_empty() {
            return None;
        }
        // piece_len ends on a char boundary: it only steps over whole characters.
        let (piece, rest) = self.rest.split_at(piece_len(self.rest.as_bytes()));
        self.rest = rest;
        Some(piece)
    }
}

/// Whether the pieces of `text` are the pieces of `text[..p]` followed by those of `text[p..]`.
///
/// True when an ASCII whitespace byte at `p` follows a non-whitespace character: the piece
/// holding that character is a letter/number/other run or a contraction, which stops at
/// whitespace in both texts, and no rule looks behind its start, so the scan of `text[p..]`
/// starts afresh. (Splitting anywhere inside or just after a whitespace run is not safe:
/// `"a \nb"` gives `"a"`, `" "`, `"\n"`, `"b"` but `"a \n"` alone gives `"a"`, `" \n"`.)
fn is_safe_split(text: &[u8], p: usize) -> bool {
    if p == 0 || p >= text.len() || ASCII_CLASS.get(text[p] as usize) != Some(&CharClass::Space) {
        return false;
    }
    let mut prev = p - 1;
    while text[prev] & 0xC0 == 0x80 {
        prev -= 1;
    }
    char_at(text, prev).0 != CharClass::Space
}

/// Cuts `text` into consecutive chunks of about `target` bytes (or more) at safe split points,
/// so that encoding the chunks one by one gives the tokens of the whole text.
pub fn chunks(text: &str, target: usize) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(text.len() / target.max(1) + 1);
    let mut start = 0;
    while start < text.len() {
        let mut p = start + target.max(1);
        while p < text.len() && !is_safe_split(bytes, p) {
            p += 1;
        }
        let end = p.min(text.len());
        out.push(&text[start..end]);
        start = end;
    }
    out
}
