//! Byte-level BPE: encode a piece of text by merging its bytes into tokens, decode by
//! concatenating token bytes.
//!
//! A piece starts as one part per byte (each byte is a token: byte fallback). Then, repeatedly,
//! the adjacent pair of parts with the lowest merge priority is replaced by the merged token,
//! the leftmost pair winning ties, until no adjacent pair can merge. Two well-known rules say
//! which pairs merge, and both end up in one table `(left, right) -> (priority, merged)`:
//!
//! - [`MergeRule::Ranks`] (tiktoken, `.tiktoken` files): token ids are ranks; two adjacent parts
//!   merge when their concatenated bytes are a token, the token's rank being the priority. The
//!   table therefore holds every split of every token into two tokens. Before merging, a piece
//!   that is itself a token is encoded as that token.
//! - [`MergeRule::Merges`] (GPT-2's `encoder.py`, Hugging Face, minbpe): an ordered list of
//!   pairs; the pair's position is its priority and the merged token is the token spelling the
//!   concatenation. Hugging Face's `ignore_merges` adds the whole-piece lookup.
//!
//! The merge loop keeps the parts in a linked list and candidate pairs in a min-heap keyed by
//! (priority, position), so a piece of n bytes costs O(n log n) instead of tiktoken's O(n^2).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::hash::FxMap;
use super::pretokenize::pieces;
use crate::error::{Error, Result};

/// Marks "no token" / "no part".
const NONE: u32 = u32::MAX;

/// Which adjacent tokens merge, and in what order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MergeRule {
    /// tiktoken's rule: the priority of a merge is the rank (id) of the token it makes.
    Ranks,
    /// An ordered list of `(left, right)` token-id pairs, earliest first.
    Merges {
        merges: Vec<(u32, u32)>,
        /// Look a whole piece up in the vocabulary before merging (Hugging Face option).
        ignore_merges: bool,
    },
}

/// Everything that defines a byte-level BPE vocabulary, as read from or written to a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BpeSpec {
    /// `tokens[id]` = bytes of ordinary token `id`; `None` for ids that are special or unused.
    pub tokens: Vec<Option<Vec<u8>>>,
    pub rule: MergeRule,
    /// Special tokens (e.g. `<|endoftext|>`): matched in the text before pre-tokenisation.
    pub specials: Vec<(String, u32)>,
}

/// A byte-level BPE vocabulary ready to encode and decode.
#[derive(Clone)]
pub struct Bpe {
    /// Ordinary token `id` is `bytes[offsets[id]..offsets[id + 1]]` (empty: not an ordinary token).
    bytes: Vec<u8>,
    offsets: Vec<u32>,
    /// Ordinary token bytes -> id.
    ids: FxMap<Box<[u8]>, u32>,
    /// The same for tokens of up to 7 bytes, keyed by [`pack`]: most pieces are short, and
    /// this lookup is one probe with no pointer to follow and no `memcmp`.
    short_ids: FxMap<u64, u32>,
    /// Token of each single byte, or NONE.
    byte_ids: [u32; 256],
    /// `left << 32 | right` -> (priority, merged token).
    pairs: FxMap<u64, (u32, u32)>,
    whole_pieces: bool,
    rule: MergeRule,
    specials: Vec<(String, u32)>,
    vocab_size: usize,
}

/// Up to 7 bytes and their count in one integer (little-endian bytes, count in the top byte).
#[inline]
fn pack(bytes: &[u8]) -> Option<u64> {
    let mut word = [0u8; 8];
    word.get_mut(..bytes.len())
        .filter(|_| bytes.len() < 8)?
        .copy_from_slice(bytes);
    word[7] = bytes.len() as u8;
    Some(u64::from_le_bytes(word))
}

#[inline]
fn pair_key(left: u32, right: u32) -> u64 {
    (left as u64) << 32 | right as u64
}

/// Special tokens must be distinct, non-empty and not reuse an ordinary id. Returns the
/// vocabulary size (one past the largest id).
fn check_specials(tokens: &[Option<Vec<u8>>], specials: &[(String, u32)]) -> Result<usize> {
    let mut vocab_size = tokens.len();
    for (i, (text, id)) in specials.iter().enumerate() {
        if text.is_empty() || specials[..i].iter().any(|(t, _)| t == text) {
            return Err(Error::Tokenizer(format!("special token {text:?} is empty or repeated")));
        }
        if matches!(tokens.get(*id as usize), Some(Some(_))) || specials[..i].iter().any(|s| s.1 == *id) {
            return Err(Error::Tokenizer(format!("special token {text:?} reuses id {id}")));
        }
        // Tables are sized by the vocabulary: an id far past the tokens would inflate them.
        let limit = 2 * (tokens.len() + specials.len()) + 1024;
        if *id as usize >= limit {
            return Err(Error::Tokenizer(format!(
                "special token {text:?} has id {id}, too large for a vocabulary of {} tokens",
                tokens.len()
            )));
        }
        vocab_size = vocab_size.max(*id as usize + 1);
    }
    Ok(vocab_size)
}

/// The table `(left, right) -> (priority, merged)` of `rule` (see the module notes).
fn merge_table(
    tokens: &[Option<Vec<u8>>],
    ids: &FxMap<Box<[u8]>, u32>,
    rule: &MergeRule,
) -> Result<FxMap<u64, (u32, u32)>> {
    let mut pairs = FxMap::with_capacity_and_hasher(2 * tokens.len(), Default::default());
    match rule {
        MergeRule::Ranks => {
            for (id, t) in tokens.iter().enumerate() {
                let Some(t) = t else { continue };
                for k in 1..t.len() {
                    if let (Some(&l), Some(&r)) = (ids.get(&t[..k]), ids.get(&t[k..])) {
                        pairs.insert(pair_key(l, r), (id as u32, id as u32));
                    }
                }
            }
        }
        MergeRule::Merges { merges, .. } => {
            let token = |id: u32| tokens.get(id as usize).and_then(|t| t.as_deref());
            for (priority, &(l, r)) in merges.iter().enumerate() {
                let (Some(lt), Some(rt)) = (token(l), token(r)) else {
                    return Err(Error::Tokenizer(format!(
                        "merge {priority} ({l}, {r}) names an unknown token"
                    )));
                };
                let Some(&merged) = ids.get(&[lt, rt].concat()[..]) else {
                    return Err(Error::Tokenizer(format!(
                        "merge {priority} ({l}, {r}): no token spells the two together"
                    )));
                };
                // A repeated pair keeps its first (highest) priority.
                pairs.entry(pair_key(l, r)).or_insert((priority as u32, merged));
            }
        }
    }
    Ok(pairs)
}

impl Bpe {
    /// Checks a vocabulary and builds its merge table.
    pub fn new(spec: BpeSpec) -> Result<Bpe> {
        let BpeSpec { tokens, rule, specials } = spec;
        let mut bytes = Vec::new();
        let mut offsets = Vec::with_capacity(tokens.len() + 1);
        let mut ids = FxMap::with_capacity_and_hasher(tokens.len(), Default::default());
        let mut byte_ids = [NONE; 256];
        offsets.push(0);
        for (id, token) in tokens.iter().enumerate() {
            let id = u32::try_from(id).map_err(|_| Error::Tokenizer("vocabulary too large".into()))?;
            if let Some(token) = token {
                if token.is_empty() {
                    return Err(Error::Tokenizer(format!("token {id} is empty")));
                }
                if let Some(other) = ids.insert(token.clone().into_boxed_slice(), id) {
                    return Err(Error::Tokenizer(format!(
                        "tokens {other} and {id} have the same bytes {:?}",
                        String::from_utf8_lossy(token)
                    )));
                }
                if let [b] = token[..] {
                    byte_ids[b as usize] = id;
                }
                bytes.extend_from_slice(token);
            }
            offsets.push(bytes.len() as u32);
        }
        let vocab_size = check_specials(&tokens, &specials)?;
        let pairs = merge_table(&tokens, &ids, &rule)?;
        let short_ids = ids.iter().filter_map(|(t, &id)| Some((pack(t)?, id))).collect();
        let whole_pieces = match &rule {
            MergeRule::Ranks => true,
            MergeRule::Merges { ignore_merges, .. } => *ignore_merges,
        };
        Ok(Bpe {
            bytes,
            offsets,
            ids,
            short_ids,
            byte_ids,
            pairs,
            whole_pieces,
            rule,
            specials,
            vocab_size,
        })
    }

    /// The definition this was built from (for saving and comparing).
    pub fn spec(&self) -> BpeSpec {
        BpeSpec {
            tokens: (0..self.offsets.len() - 1)
                .map(|id| self.ordinary_bytes(id as u32).map(<[u8]>::to_vec))
                .collect(),
            rule: self.rule.clone(),
            specials: self.specials.clone(),
        }
    }

    /// Number of ids, ordinary and special.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn specials(&self) -> &[(String, u32)] {
        &self.specials
    }

    fn ordinary_bytes(&self, id: u32) -> Option<&[u8]> {
        let id = id as usize;
        let range = *self.offsets.get(id)? as usize..*self.offsets.get(id + 1)? as usize;
        (!range.is_empty()).then(|| &self.bytes[range])
    }

    /// The bytes of token `id` (a special token's are its text); `None` if `id` is unused.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.ordinary_bytes(id)
            .or_else(|| self.specials.iter().find(|s| s.1 == id).map(|s| s.0.as_bytes()))
    }

    /// Encodes text with no special tokens in it, appending to `out`.
    pub fn encode_ordinary(&self, text: &str, out: &mut Vec<u32>) -> Result<()> {
        let mut work = MergeWork::default();
        for piece in pieces(text) {
            self.encode_piece(piece.as_bytes(), out, &mut work)?;
        }
        Ok(())
    }

    #[inline]
    fn encode_piece(&self, piece: &[u8], out: &mut Vec<u32>, work: &mut MergeWork) -> Result<()> {
        if self.whole_pieces {
            let id = match pack(piece) {
                Some(key) => self.short_ids.get(&key),
                None => self.ids.get(piece),
            };
            if let Some(&id) = id {
                out.push(id);
                return Ok(());
            }
        }
        if let [b] = *piece {
            out.push(self.byte_id(b)?);
            return Ok(());
        }
        self.merge(piece, out, work)
    }

    fn byte_id(&self, b: u8) -> Result<u32> {
        match self.byte_ids[b as usize] {
            NONE => Err(Error::Tokenizer(format!(
                "byte 0x{b:02X} has no token in this vocabulary"
            ))),
            id => Ok(id),
        }
    }

    #[inline]
    fn pair(&self, left: u32, right: u32) -> Option<(u32, u32)> {
        self.pairs.get(&pair_key(left, right)).copied()
    }

    /// The BPE merge loop over the bytes of one piece.
    fn merge(&self, piece: &[u8], out: &mut Vec<u32>, work: &mut MergeWork) -> Result<()> {
        let MergeWork { parts, heap } = work;
        parts.clear();
        heap.clear();
        let n = piece.len() as u32;
        for (i, &b) in piece.iter().enumerate() {
            let i = i as u32;
            let next = if i + 1 < n { i + 1 } else { NONE };
            parts.push(Part {
                id: self.byte_id(b)?,
                prev: i.wrapping_sub(1),
                next,
            });
        }
        // Heap entries are (priority << 32 | position), smallest first: lowest priority, then leftmost.
        for i in 0..parts.len().saturating_sub(1) {
            if let Some((priority, _)) = self.pair(parts[i].id, parts[i + 1].id) {
                heap.push(Reverse((priority as u64) << 32 | i as u64));
            }
        }
        while let Some(Reverse(entry)) = heap.pop() {
            let (priority, i) = ((entry >> 32) as u32, entry as u32 as usize);
            let Part { id, prev, next } = parts[i];
            // Skip entries made stale by earlier merges: the pair at i must still be this one.
            if id == NONE || next == NONE {
                continue;
            }
            let Some((current, merged)) = self.pair(id, parts[next as usize].id) else {
                continue;
            };
            if current != priority {
                continue;
            }
            let after = parts[next as usize].next;
            parts[next as usize].id = NONE;
            parts[i].id = merged;
            parts[i].next = after;
            if after != NONE {
                parts[after as usize].prev = i as u32;
                if let Some((p, _)) = self.pair(merged, parts[after as usize].id) {
                    heap.push(Reverse((p as u64) << 32 | i as u64));
                }
            }
            if prev != NONE {
                if let Some((p, _)) = self.pair(parts[prev as usize].id, merged) {
                    heap.push(Reverse((p as u64) << 32 | prev as u64));
                }
            }
        }
        let mut i = 0;
        while i != NONE {
            out.push(parts[i as usize].id);
            i = parts[i as usize].next;
        }
        Ok(())
    }
}

/// A summary: the tables are too large to print.
impl std::fmt::Debug for Bpe {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let rule = match &self.rule {
            MergeRule::Ranks => "ranks".to_string(),
            MergeRule::Merges { merges, .. } => format!("{} merges", merges.len()),
        };
        f.debug_struct("Bpe")
            .field("vocab_size", &self.vocab_size)
            .field("rule", &rule)
            .field("specials", &self.specials)
            .finish()
    }
}

/// One part of a piece being merged: a token and its neighbours in the linked list.
#[derive(Clone, Copy)]
struct Part {
    id: u32,
    prev: u32,
    next: u32,
}

/// Buffers reused from piece to piece.
#[derive(Default)]
struct MergeWork {
    parts: Vec<Part>,
    heap: BinaryHeap<Reverse<u64>>,
}
