//! BPE training, the minbpe idea: learn byte-level merges from a corpus.
//!
//! 1. Split the corpus at `<|endoftext|>` and into GPT-2 pieces (pretokenize.rs); count each
//!    distinct piece. BPE never merges across pieces, so a distinct piece is a "word" with a
//!    count, and Tiny Shakespeare's 1.1 MB become ~25k words.
//! 2. A word starts as its bytes; ids 0..=255 are the bytes themselves (byte fallback: any
//!    text can be encoded).
//! 3. Count adjacent pairs over all words, each weighted by its word's count.
//! 4. Repeatedly merge the most frequent pair into a new token, in every word that holds it.
//!    Counts are updated incrementally: for each word that holds the pair (an index pair ->
//!    words says which), subtract its old pairs, merge, add its new pairs. Stale heap entries
//!    are skipped when popped (lazy deletion).
//!
//! Ties: among pairs of equal count, the one with the smaller (left id, right id) merges first.
//! This is deterministic and independent of hashing and of the order of the corpus's words.
//!
//! Ids: 0..=255 the bytes, then one per new token in merge order, then `<|endoftext|>` last
//! (GPT-2's layout: 256 + merges + 1). If a merge spells bytes that are already a token (two
//! different pairs can), it reuses that token, as Hugging Face does, and the vocabulary does
//! not grow. Training stops early when no pair is left.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::bpe::{BpeSpec, MergeRule};
use super::gpt2::EOT;
use super::hash::FxMap;
use super::pretokenize::pieces;
use crate::error::{Error, Result};

fn key(left: u32, right: u32) -> u64 {
    (left as u64) << 32 | right as u64
}

/// Learns merges from `text` until the vocabulary has `vocab_size` ids (at least 257).
pub fn train(text: &str, vocab_size: usize) -> Result<BpeSpec> {
    if !(257..=u32::MAX as usize).contains(&vocab_size) {
        return Err(Error::Tokenizer(format!(
            "BPE vocabulary size {vocab_size} is too small: it needs 256 bytes + <|endoftext|> + merges"
        )));
    }
    let mut piece_counts: FxMap<&str, i64> = FxMap::default();
    for piece in text.split(EOT).flat_map(pieces) {
        *piece_counts.entry(piece).or_default() += 1;
    }
    let mut words: Vec<(Vec<u32>, i64)> = piece_counts
        .into_iter()
        .map(|(p, n)| (p.bytes().map(u32::from).collect(), n))
        .collect();
    words.sort_unstable();

    let mut tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    let mut ids: FxMap<Vec<u8>, u32> = (0..=255u8).map(|b| (vec![b], b as u32)).collect();
    let mut counts: FxMap<u64, i64> = FxMap::default();
    let mut words_with: FxMap<u64, Vec<u32>> = FxMap::default();
    for (w, (word, n)) in words.iter().enumerate() {
        for p in word.windows(2) {
            *counts.entry(key(p[0], p[1])).or_default() += n;
            words_with.entry(key(p[0], p[1])).or_default().push(w as u32);
        }
    }
    // Max-heap on count, then on Reverse(pair): the smaller pair wins ties.
    let mut heap: BinaryHeap<(i64, Reverse<u64>)> = counts.iter().map(|(&k, &n)| (n, Reverse(k))).collect();
    let mut merges = Vec::new();
    let mut merged_pairs: FxMap<u64, ()> = FxMap::default();
    let mut last_seen = vec![0; words.len()];
    let mut step = 0;
    let mut new_pairs = Vec::new();

    while tokens.len() < vocab_size - 1 {
        let Some((n, Reverse(pair))) = heap.pop() else {
            break;
        };
        let current = counts.get(&pair).copied().unwrap_or(0);
        if current != n {
            if current > 0 {
                heap.push((current, Reverse(pair)));
            }
            continue;
        }
        let (a, b) = ((pair >> 32) as u32, pair as u32);
        let bytes = [&tokens[a as usize][..], &tokens[b as usize][..]].concat();
        let new = match ids.get(&bytes) {
            Some(&id) => id,
            None => {
                let id = tokens.len() as u32;
                ids.insert(bytes.clone(), id);
                tokens.push(bytes);
                id
            }
        };
        if merged_pairs.insert(pair, ()).is_none() {
            merges.push((a, b));
        }
        step += 1;
        new_pairs.clear();
        for w in words_with.remove(&pair).unwrap_or_default() {
            let w = w as usize;
            if std::mem::replace(&mut last_seen[w], step) == step {
                continue;
            }
            let (word, n) = &mut words[w];
            if !word.windows(2).any(|p| p == [a, b]) {
                continue;
            }
            for p in word.windows(2) {
                if let Some(c) = counts.get_mut(&key(p[0], p[1])) {
                    *c -= *n;
                }
            }
            let (mut read, mut write) = (0, 0);
            while read < word.len() {
                if read + 1 < word.len() && word[read] == a && word[read + 1] == b {
                    word[write] = new;
                    read += 2;
                } else {
                    word[write] = word[read];
                    read += 1;
                }
                write += 1;
            }
            word.truncate(write);
            for p in word.windows(2) {
                let k = key(p[0], p[1]);
                *counts.entry(k).or_default() += *n;
                if p.contains(&new) {
                    words_with.entry(k).or_default().push(w as u32);
                    new_pairs.push(k);
                }
            }
        }
        new_pairs.sort_unstable();
        new_pairs.dedup();
        for &k in &new_pairs {
            if let Some(&n) = counts.get(&k).filter(|&&n| n > 0) {
                heap.push((n, Reverse(k)));
            }
        }
    }

    let eot_id = tokens.len() as u32;
    Ok(BpeSpec {
        tokens: tokens.into_iter().map(Some).collect(),
        rule: MergeRule::Merges {
            merges,
            ignore_merges: false,
        },
        specials: vec![(EOT.to_string(), eot_id)],
    })
}
