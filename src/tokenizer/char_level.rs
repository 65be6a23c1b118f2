//! Character-level tokenizer: one token per character of a fixed alphabet.
//!
//! As in nanoGPT's Shakespeare model, the alphabet is the sorted set of the characters of the
//! training corpus (65 for Tiny Shakespeare) and a character's id is its position in it.

use std::collections::BTreeSet;

use crate::error::{Error, Result};

/// What encoding does with a character outside the alphabet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnknownChar {
    /// Fail, naming the character and where it is.
    #[default]
    Error,
    /// Leave it out.
    Skip,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CharLevel {
    /// Strictly increasing.
    chars: Vec<char>,
    unknown: UnknownChar,
}

impl CharLevel {
    /// The alphabet of `text`.
    pub fn from_text(text: &str) -> CharLevel {
        let mut ascii = [false; 128];
        let mut others = BTreeSet::new();
        for c in text.chars() {
            match ascii.get_mut(c as usize) {
                Some(seen) => *seen = true,
                None => {
                    others.insert(c);
                }
            }
        }
        let ascii = (0u8..128).filter(|&b| ascii[b as usize]).map(char::from);
        CharLevel {
            chars: ascii.chain(others).collect(),
            unknown: UnknownChar::Error,
        }
    }

    /// An alphabet given in id order; it must be sorted without repeats.
    pub fn from_chars(chars: Vec<char>) -> Result<CharLevel> {
        if let Some(w) = chars.windows(2).find(|w| w[0] >= w[1]) {
            return Err(Error::Tokenizer(format!(
                "character vocabulary is not sorted without repeats: {:?} comes before {:?}",
                w[0], w[1]
            )));
        }
        Ok(CharLevel {
            chars,
            unknown: UnknownChar::Error,
        })
    }

    pub fn chars(&self) -> &[char] {
        &self.chars
    }

    pub fn set_unknown(&mut self, policy: UnknownChar) {
        self.unknown = policy;
    }

    /// Appends the ids of `text` to `out`; `offset` is the byte position of `text` in the
    /// caller's whole text, for error messages.
    pub fn encode(&self, text: &str, offset: usize, out: &mut Vec<u32>) -> Result<()> {
        out.reserve(text.len());
        for (i, c) in text.char_indices() {
            match self.chars.binary_search(&c) {
                Ok(id) => out.push(id as u32),
                Err(_) if self.unknown == UnknownChar::Skip => {}
                Err(_) => {
                    return Err(Error::Tokenizer(format!(
                        "unknown character {c:?} (U+{:04X}) at byte {}: not among the {} characters of this vocabulary",
                        c as u32,
                        offset + i,
                        self.chars.len()
                    )))
                }
            }
        }
        Ok(())
    }

    /// The character of token `id`.
    pub fn char_of(&self, id: u32) -> Option<char> {
        self.chars.get(id as usize).copied()
    }
}
