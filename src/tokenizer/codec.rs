//! The [`Tokenizer`]: GPT-2's byte-level BPE, another byte-level BPE or char level behind one
//! type, and how it encodes text (special tokens, long texts in parallel) and decodes ids.

use std::sync::Arc;

use rayon::prelude::*;

use super::bpe::{Bpe, BpeSpec};
use super::char_level::{CharLevel, UnknownChar};
use super::gpt2::{self, EOT};
use super::{pretokenize, train};
use crate::error::{Error, Result};

/// What encoding does with the text of a special token (e.g. `<|endoftext|>`) found in the
/// input. tiktoken's rules: by default it is an error, so that user text cannot inject control
/// tokens by accident.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SpecialTokens {
    /// Error (tiktoken's `disallowed_special="all"`).
    #[default]
    Reject,
    /// Encode it as its special id (`allowed_special="all"`): 50256 for GPT-2.
    Allow,
    /// Encode it as ordinary text (`disallowed_special=()`).
    AsText,
}

#[derive(Clone, Debug)]
pub enum Tokenizer {
    /// The bundled GPT-2 vocabulary (50,257 ids).
    Gpt2(Arc<Bpe>),
    /// Character level.
    Char(CharLevel),
    /// Any other byte-level BPE.
    Bpe(Arc<Bpe>),
}

/// A stretch of input: ordinary text (with its byte offset in the input) or a special token.
enum Segment<'a> {
    Text(usize, &'a str),
    Special(u32),
}

/// Chunk size for [`Tokenizer::encode_parallel`].
const PARALLEL_CHUNK: usize = 64 * 1024;

impl Tokenizer {
    /// GPT-2's tokenizer (tiktoken `gpt2`), from the vocabulary compiled into the binary.
    pub fn gpt2() -> Tokenizer {
        Tokenizer::Gpt2(gpt2::bpe())
    }

    /// A character-level tokenizer over the distinct characters of `text`, sorted.
    pub fn char_level_from_text(text: &str) -> Tokenizer {
        Tokenizer::Char(CharLevel::from_text(text))
    }

    /// A character-level tokenizer with the given alphabet (sorted, no repeats).
    pub fn char_level(chars: Vec<char>) -> Result<Tokenizer> {
        Ok(Tokenizer::Char(CharLevel::from_chars(chars)?))
    }

    /// Trains a byte-level BPE on `text` with `vocab_size` ids (see `train.rs` for the rules).
    pub fn train_bpe(text: &str, vocab_size: usize) -> Result<Tokenizer> {
        Ok(Tokenizer::Bpe(Arc::new(Bpe::new(train::train(text, vocab_size)?)?)))
    }

    /// A byte-level BPE from its definition; GPT-2's own vocabulary becomes [`Tokenizer::Gpt2`].
    pub fn from_bpe_spec(spec: BpeSpec) -> Result<Tokenizer> {
        if gpt2::is_gpt2(&spec) {
            Ok(Tokenizer::gpt2())
        } else {
            Ok(Tokenizer::Bpe(Arc::new(Bpe::new(spec)?)))
        }
    }

    /// Sets what a character-level tokenizer does with characters outside its alphabet
    /// (byte-level tokenizers encode any text).
    pub fn with_unknown_chars(mut self, policy: UnknownChar) -> Tokenizer {
        if let Tokenizer::Char(c) = &mut self {
            c.set_unknown(policy);
        }
        self
    }

    /// `"gpt2"`, `"char"` or `"bpe"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Tokenizer::Gpt2(_) => "gpt2",
            Tokenizer::Char(_) => "char",
            Tokenizer::Bpe(_) => "bpe",
        }
    }

    /// Number of token ids (ids are `0..vocab_size`).
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Gpt2(b) | Tokenizer::Bpe(b) => b.vocab_size(),
            Tokenizer::Char(c) => c.chars().len(),
        }
    }

    /// The special tokens, `(text, id)`.
    pub fn special_tokens(&self) -> &[(String, u32)] {
        match self {
            Tokenizer::Gpt2(b) | Tokenizer::Bpe(b) => b.specials(),
            Tokenizer::Char(_) => &[],
        }
    }

    /// The id of `<|endoftext|>`, if this vocabulary has it.
    pub fn eot_token(&self) -> Option<u32> {
        self.special_tokens().iter().find(|s| s.0 == EOT).map(|s| s.1)
    }

    /// Encodes `text`; the text of a special token in it is an error.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_with_special(text, SpecialTokens::Reject)
    }

    /// Encodes `text`, treating special-token text as `special` says.
    pub fn encode_with_special(&self, text: &str, special: SpecialTokens) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(text.len() / 3);
        for segment in self.segments(text, special)? {
            self.encode_segment(&segment, &mut out)?;
        }
        Ok(out)
    }

    /// [`Tokenizer::encode`] on all threads of the rayon pool, with the same result.
    pub fn encode_parallel(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_parallel_with_special(text, SpecialTokens::Reject)
    }

    /// [`Tokenizer::encode_with_special`] on all threads, with the same result: the text is
    /// cut into chunks only where the pre-tokenizer would split anyway
    /// ([`pretokenize::chunks`]), and BPE never merges across pre-tokenizer pieces.
    pub fn encode_parallel_with_special(&self, text: &str, special: SpecialTokens) -> Result<Vec<u32>> {
        let mut jobs = Vec::new();
        for segment in self.segments(text, special)? {
            match segment {
                Segment::Text(offset, text) => {
                    let mut start = offset;
                    for chunk in pretokenize::chunks(text, PARALLEL_CHUNK) {
                        jobs.push(Segment::Text(start, chunk));
                        start += chunk.len();
                    }
                }
                special => jobs.push(special),
            }
        }
        let parts = jobs
            .par_iter()
            .map(|job| {
                let mut out = Vec::new();
                self.encode_segment(job, &mut out).map(|()| out)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(parts.concat())
    }

    fn encode_segment(&self, segment: &Segment, out: &mut Vec<u32>) -> Result<()> {
        match (segment, self) {
            (Segment::Special(id), _) => out.push(*id),
            (Segment::Text(_, text), Tokenizer::Gpt2(b) | Tokenizer::Bpe(b)) => b.encode_ordinary(text, out)?,
            (Segment::Text(offset, text), Tokenizer::Char(c)) => c.encode(text, *offset, out)?,
        }
        Ok(())
    }

    /// Splits `text` at the special tokens that `special` lets through.
    fn segments<'a>(&self, text: &'a str, special: SpecialTokens) -> Result<Vec<Segment<'a>>> {
        let specials = self.special_tokens();
        let mut segments = Vec::new();
        let mut start = 0;
        if special != SpecialTokens::AsText {
            // The leftmost special token, the longest one if several start there.
            let next = |from: usize| {
                specials
                    .iter()
                    .filter_map(|(s, id)| text[from..].find(s.as_str()).map(|at| (from + at, s, *id)))
                    .min_by_key(|&(at, s, _)| (at, std::cmp::Reverse(s.len())))
            };
            while let Some((at, s, id)) = next(start) {
                if special == SpecialTokens::Reject {
                    return Err(Error::Tokenizer(format!(
                        "the text holds the special token {s} at byte {at}; allow it (encode it as id {id}; `tokenize --special allow`) or encode it as plain text (`--special text`)"
                    )));
                }
                if at > start {
                    segments.push(Segment::Text(start, &text[start..at]));
                }
                segments.push(Segment::Special(id));
                start = at + s.len();
            }
        }
        if start < text.len() {
            segments.push(Segment::Text(start, &text[start..]));
        }
        Ok(segments)
    }

    /// The exact bytes of `ids`; an id outside the vocabulary is an error.
    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            match self {
                Tokenizer::Gpt2(b) | Tokenizer::Bpe(b) => {
                    out.extend_from_slice(b.token_bytes(id).ok_or_else(|| self.bad_id(id))?)
                }
                Tokenizer::Char(c) => {
                    let ch = c.char_of(id).ok_or_else(|| self.bad_id(id))?;
                    out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                }
            }
        }
        Ok(out)
    }

    /// The bytes of `ids`, where an id outside the vocabulary stands for U+FFFD (a model's
    /// vocabulary can be padded beyond its tokenizer's).
    pub fn decode_bytes_lossy(&self, ids: &[u32]) -> Vec<u8> {
        ids.iter()
            .flat_map(|&id| self.decode_bytes(&[id]).unwrap_or_else(|_| "\u{FFFD}".into()))
            .collect()
    }

    /// The text of `ids`; bytes that are not valid UTF-8 (a character cut between tokens)
    /// become U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.decode_bytes(ids)?).into_owned())
    }

    fn bad_id(&self, id: u32) -> Error {
        Error::Tokenizer(format!(
            "token id {id} is not in this vocabulary ({} ids)",
            self.vocab_size()
        ))
    }

    /// Token `id` for display: its text, with bytes that are not UTF-8 on their own written
    /// `\xNN` (`"\xF0\x9F"` for the first half of an emoji); `<invalid id N>` outside the
    /// vocabulary.
    pub fn token_text(&self, id: u32) -> String {
        let Ok(bytes) = self.decode_bytes(&[id]) else {
            return format!("<invalid id {id}>");
        };
        let mut text = String::new();
        for chunk in bytes.utf8_chunks() {
            text.push_str(chunk.valid());
            for b in chunk.invalid() {
                text.push_str(&format!("\\x{b:02X}"));
            }
        }
        text
    }
}
