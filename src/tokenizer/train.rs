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
    let mut training = Training::new(count_words(text));
    while training.tokens.len() < vocab_size - 1 {
        let Some(pair) = training.most_frequent_pair() else {
            break;
        };
        training.merge(pair);
    }
    Ok(training.into_spec())
}

/// Steps 1 and 2: the distinct pieces of `text` as byte ids, with their counts, sorted (so that
/// nothing depends on the order of a hash map).
fn count_words(text: &str) -> Vec<(Vec<u32>, i64)> {
    let mut piece_counts: FxMap<&str, i64> = FxMap::default();
    for piece in text.split(EOT).flat_map(pieces) {
        *piece_counts.entry(piece).or_default() += 1;
    }
    let mut words: Vec<(Vec<u32>, i64)> = piece_counts
        .into_iter()
        .map(|(p, n)| (p.bytes().map(u32::from).collect(), n))
        .collect();
    words.sort_unstable();
    words
}

/// Training in progress: the words as ids so far, the vocabulary, and the counts of adjacent
/// pairs with the index and the heap that find the words and the most frequent pair.
struct Training {
    /// Each distinct piece as token ids, with its count.
    words: Vec<(Vec<u32>, i64)>,
    /// The bytes of each token, by id.
    tokens: Vec<Vec<u8>>,
    ids: FxMap<Vec<u8>, u32>,
    /// Occurrences of each pair (key(left, right)) over all words, weighted by their counts.
    counts: FxMap<u64, i64>,
    /// The words that held each pair when it was counted (maybe no longer: checked on use).
    words_with: FxMap<u64, Vec<u32>>,
    /// Max-heap on count, then on Reverse(pair): the smaller pair wins ties. Entries whose
    /// count has changed since they were pushed are stale.
    heap: BinaryHeap<(i64, Reverse<u64>)>,
    merges: Vec<(u32, u32)>,
    merged_pairs: FxMap<u64, ()>,
    /// The merge step at which each word was last updated, to update a word once per merge
    /// although the index may list it several times.
    last_seen: Vec<usize>,
    step: usize,
    /// Pairs that a merge made, to push onto the heap (kept to avoid allocating).
    new_pairs: Vec<u64>,
}

impl Training {
    /// Step 3: the bytes as the first 256 tokens, and every adjacent pair counted.
    fn new(words: Vec<(Vec<u32>, i64)>) -> Training {
        let mut counts: FxMap<u64, i64> = FxMap::default();
        let mut words_with: FxMap<u64, Vec<u32>> = FxMap::default();
        for (w, (word, n)) in words.iter().enumerate() {
            for p in word.windows(2) {
                *counts.entry(key(p[0], p[1])).or_default() += n;
                words_with.entry(key(p[0], p[1])).or_default().push(w as u32);
            }
        }
        Training {
            last_seen: vec![0; words.len()],
            words,
            tokens: (0..=255u8).map(|b| vec![b]).collect(),
            ids: (0..=255u8).map(|b| (vec![b], b as u32)).collect(),
            heap: counts.iter().map(|(&k, &n)| (n, Reverse(k))).collect(),
            counts,
            words_with,
            merges: Vec::new(),
            merged_pairs: FxMap::default(),
            step: 0,
            new_pairs: Vec::new(),
        }
    }

    /// The pair to merge next, off the heap: a stale entry is pushed back with its current
    /// count (if any is left) and skipped. None when no pair is left.
    fn most_frequent_pair(&mut self) -> Option<u64> {
        loop {
            let (n, Reverse(pair)) = self.heap.pop()?;
            let current = self.counts.get(&pair).copied().unwrap_or(0);
            if current == n {
                return Some(pair);
            }
            if current > 0 {
                self.heap.push((current, Reverse(pair)));
            }
        }
    }

    /// Step 4: merges `pair` into a token in every word that holds it, and updates the counts.
    fn merge(&mut self, pair: u64) {
        let (a, b) = ((pair >> 32) as u32, pair as u32);
        let new = self.token_of(a, b);
        if self.merged_pairs.insert(pair, ()).is_none() {
            self.merges.push((a, b));
        }
        self.step += 1;
        self.new_pairs.clear();
        for w in self.words_with.remove(&pair).unwrap_or_default() {
            self.merge_in_word(w as usize, (a, b), new);
        }
        self.new_pairs.sort_unstable();
        self.new_pairs.dedup();
        for &k in &self.new_pairs {
            if let Some(&n) = self.counts.get(&k).filter(|&&n| n > 0) {
                self.heap.push((n, Reverse(k)));
            }
        }
    }

    /// The token spelled by tokens `a` then `b`: a new one, or the one that already has
    /// those bytes.
    fn token_of(&mut self, a: u32, b: u32) -> u32 {
        let bytes = [&self.tokens[a as usize][..], &self.tokens[b as usize][..]].concat();
        if let Some(&id) = self.ids.get(&bytes) {
            return id;
        }
        let id = self.tokens.len() as u32;
        self.ids.insert(bytes.clone(), id);
        self.tokens.push(bytes);
        id
    }

    /// Replaces each (a, b) in word `w` by `new`: its old pairs are uncounted, its new ones
    /// counted, and those that hold `new` indexed and noted for the heap.
    fn merge_in_word(&mut self, w: usize, (a, b): (u32, u32), new: u32) {
        if std::mem::replace(&mut self.last_seen[w], self.step) == self.step {
            return;
        }
        let (word, n) = &mut self.words[w];
        if !word.windows(2).any(|p| p == [a, b]) {
            return;
        }
        for p in word.windows(2) {
            if let Some(c) = self.counts.get_mut(&key(p[0], p[1])) {
                *c -= *n;
            }
        }
        replace_pair(word, (a, b), new);
        for p in word.windows(2) {
            let k = key(p[0], p[1]);
            *self.counts.entry(k).or_default() += *n;
            if p.contains(&new) {
                self.words_with.entry(k).or_default().push(w as u32);
                self.new_pairs.push(k);
            }
        }
    }

    /// The vocabulary learnt: the tokens in id order, the merges, and `<|endoftext|>` last.
    fn into_spec(self) -> BpeSpec {
        let eot_id = self.tokens.len() as u32;
        BpeSpec {
            tokens: self.tokens.into_iter().map(Some).collect(),
            rule: MergeRule::Merges {
                merges: self.merges,
                ignore_merges: false,
            },
            specials: vec![(EOT.to_string(), eot_id)],
        }
    }
}

/// Replaces each non-overlapping occurrence of `a` followed by `b` in `word`, left to right,
/// by `new`, in place.
fn replace_pair(word: &mut Vec<u32>, (a, b): (u32, u32), new: u32) {
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
}
