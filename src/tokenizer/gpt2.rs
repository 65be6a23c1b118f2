//! The GPT-2 vocabulary, bundled in the binary: tiktoken's `gpt2` (= `r50k_base`) encoding.
//!
//! The data is OpenAI's `vocab.bpe` (data/tokenizer/, see NOTICE.md there): 50,000 merges in
//! order. The 50,257 ids follow: ids 0..256 are the single bytes in GPT-2's byte order
//! (bytes.rs), id 256 + i is the token made by merge i, and 50256 is `<|endoftext|>`.
//! This is how tiktoken derives `r50k_base` from the same file, and it reproduces OpenAI's
//! `encoder.json`. Encoding uses tiktoken's rank rule ([`MergeRule::Ranks`]). The `vocab.bpe`
//! parser is here too; the other tokenizer files read their merges with it.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use super::bpe::{Bpe, BpeSpec, MergeRule};
use super::bytes::{text_to_bytes, BYTE_ORDER};
use super::hash::FxMap;
use crate::error::{Error, Result};

/// GPT-2's end-of-text token.
pub const EOT: &str = "<|endoftext|>";
/// Its id.
pub const EOT_ID: u32 = 50256;

static VOCAB_BPE: &str = include_str!("../../data/tokenizer/vocab.bpe");

struct Bundled {
    bpe: Arc<Bpe>,
    /// vocab.bpe's merges as token-id pairs, to recognise GPT-2 in files that list merges.
    merges: Vec<(u32, u32)>,
}

fn build() -> Result<Bundled> {
    let mut tokens: Vec<Option<Vec<u8>>> = BYTE_ORDER.iter().map(|&b| Some(vec![b])).collect();
    let mut ids: FxMap<Vec<u8>, u32> = BYTE_ORDER.iter().zip(0..).map(|(&b, id)| (vec![b], id)).collect();
    let mut merges = Vec::new();
    for (left, right) in parse_vocab_bpe(VOCAB_BPE, Path::new("data/tokenizer/vocab.bpe"))? {
        let (Some(&l), Some(&r)) = (ids.get(&left), ids.get(&right)) else {
            return Err(Error::Tokenizer("bundled vocab.bpe merges an unknown token".into()));
        };
        let merged = [left, right].concat();
        ids.insert(merged.clone(), tokens.len() as u32);
        tokens.push(Some(merged));
        merges.push((l, r));
    }
    let specials = vec![(EOT.to_string(), EOT_ID)];
    let bpe = Bpe::new(BpeSpec {
        tokens,
        rule: MergeRule::Ranks,
        specials,
    })?;
    Ok(Bundled {
        bpe: Arc::new(bpe),
        merges,
    })
}

/// Merges of a `vocab.bpe` (GPT-2's merges file, Hugging Face's `merges.txt`): an optional
/// `#version` line, then `left right` per line, both in GPT-2's byte alphabet. `path` names the
/// file in errors.
pub fn parse_vocab_bpe(text: &str, path: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut merges = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.is_empty() || (n == 0 && line.starts_with("#version")) {
            continue;
        }
        let pair = line
            .split_once(' ')
            .and_then(|(l, r)| Some((text_to_bytes(l)?, text_to_bytes(r)?)));
        match pair {
            Some((l, r)) if !l.is_empty() && !r.is_empty() => merges.push((l, r)),
            _ => {
                return Err(Error::Tokenizer(format!(
                    "{}: line {}: expected two byte-level tokens, found {line:?}",
                    path.display(),
                    n + 1
                )))
            }
        }
    }
    Ok(merges)
}

fn bundled() -> &'static Bundled {
    static BUNDLED: OnceLock<Bundled> = OnceLock::new();
    // The data is compiled in and checked by the tests; failing here is a build defect.
    BUNDLED.get_or_init(|| build().expect("the bundled GPT-2 vocab.bpe is valid"))
}

/// The bundled GPT-2 vocabulary (built once, then shared).
pub fn bpe() -> Arc<Bpe> {
    bundled().bpe.clone()
}

/// GPT-2's merges as token-id pairs, in vocab.bpe's order (merge i makes token 256 + i).
pub fn merges() -> &'static [(u32, u32)] {
    &bundled().merges
}

/// Whether `spec` holds exactly GPT-2's tokens, special token and merges, under either rule
/// (a Hugging Face or OpenAI file of GPT-2, distilgpt2, ...).
pub fn is_gpt2(spec: &BpeSpec) -> bool {
    let gpt2 = bundled();
    let mut tokens = &spec.tokens[..];
    while let [rest @ .., None] = tokens {
        tokens = rest;
    }
    let same_rule = match &spec.rule {
        MergeRule::Ranks => true,
        MergeRule::Merges { merges, ignore_merges } => !ignore_merges && *merges == gpt2.merges,
    };
    same_rule
        && spec.specials == gpt2.bpe.specials()
        && tokens.len() == EOT_ID as usize
        && tokens
            .iter()
            .zip(0..)
            .all(|(t, id)| t.as_deref() == gpt2.bpe.token_bytes(id))
}
