//! Token shards: a tokenised corpus on disk, memory-mapped.
//!
//! Format (all little-endian): a 24-byte header — magic `GPT2TOKS`, version u32 (1), bytes per
//! id u32 (2 for vocabularies up to 65,536 ids, else 4), id count u64 — then the ids.
//!
//! [`tokenize_cached`] keys a shard by the SHA-256 of the corpus text and of the tokenizer, so a
//! second run on the same text and tokenizer skips tokenisation.

use super::corpus::Document;
use crate::error::{Error, Result};
use crate::io::atomic::{remove_stale_temps, write_file};
use crate::tokenizer::{SpecialTokens, Tokenizer};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

const MAGIC: &[u8; 8] = b"GPT2TOKS";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 24;

/// A memory-mapped token shard.
#[derive(Debug)]
pub struct Shard {
    path: PathBuf,
    map: memmap2::Mmap,
    width: usize,
    len: usize,
}

impl Shard {
    /// Writes `ids` as a shard at `path`, atomically.
    pub fn write(path: &Path, ids: &[u32], vocab_size: usize) -> Result<()> {
        let width: u32 = if vocab_size <= 1 << 16 { 2 } else { 4 };
        write_file(path, |w| {
            w.write_all(MAGIC)?;
            w.write_all(&VERSION.to_le_bytes())?;
            w.write_all(&width.to_le_bytes())?;
            w.write_all(&(ids.len() as u64).to_le_bytes())?;
            let mut buf = Vec::with_capacity(1 << 16);
            for chunk in ids.chunks(1 << 14) {
                buf.clear();
                for &id in chunk {
                    match width {
                        2 => buf.extend_from_slice(&(id as u16).to_le_bytes()),
                        _ => buf.extend_from_slice(&id.to_le_bytes()),
                    }
                }
                w.write_all(&buf)?;
            }
            Ok(())
        })
    }

    /// Maps a shard, checking its header against its size.
    pub fn open(path: &Path) -> Result<Shard> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: read-only map of a file that is only ever replaced by rename, never rewritten.
        // The size is checked against the header below, before any id is read; a file cut short
        // while a run has it mapped ends that run (SIGBUS): the README says a run owns its cache.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let bad = |msg: String| Error::Input(format!("{}: not a token shard: {msg}", path.display()));
        if map.len() < HEADER_LEN || &map[..8] != MAGIC {
            return Err(bad("no GPT2TOKS header".into()));
        }
        let word = |at: usize| u32::from_le_bytes(map[at..at + 4].try_into().expect("4 bytes"));
        if word(8) != VERSION {
            return Err(bad(format!("version {} (expected {VERSION})", word(8))));
        }
        let width = word(12) as usize;
        if width != 2 && width != 4 {
            return Err(bad(format!("{width} bytes per id (expected 2 or 4)")));
        }
        let len = u64::from_le_bytes(map[16..24].try_into().expect("8 bytes")) as usize;
        if (map.len() - HEADER_LEN) != len.saturating_mul(width) {
            return Err(bad(format!(
                "header says {len} ids of {width} bytes, file holds {} bytes: it was changed or cut \
                 short since it was written; delete it, and the next run tokenises the corpus again",
                map.len() - HEADER_LEN
            )));
        }
        Ok(Shard {
            path: path.to_path_buf(),
            map,
            width,
            len,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of token ids.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Id number `i`.
    pub fn get(&self, i: usize) -> u32 {
        let at = HEADER_LEN + i * self.width;
        let b = &self.map[at..at + self.width];
        match self.width {
            2 => u16::from_le_bytes([b[0], b[1]]) as u32,
            _ => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        }
    }
}

/// The cache key of `docs` tokenised by `tokenizer`: hex SHA-256 over the shard format version,
/// the tokenizer's saved form (its tokenizer.json) and each document's length and bytes.
pub fn cache_key(docs: &[Document], tokenizer_json: &[u8]) -> String {
    let mut hash = Sha256::new();
    hash.update(MAGIC);
    hash.update(VERSION.to_le_bytes());
    hash.update((tokenizer_json.len() as u64).to_le_bytes());
    hash.update(tokenizer_json);
    for doc in docs {
        hash.update((doc.text.len() as u64).to_le_bytes());
        hash.update(doc.text.as_bytes());
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The ids of the corpus: each document encoded in turn (special-token text as plain text),
/// separated by `<|endoftext|>` when the vocabulary has it. A character outside a char
/// tokenizer's vocabulary is an error naming the file and byte.
pub fn tokenize(docs: &[Document], tokenizer: &Tokenizer) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        if i > 0 {
            ids.extend(tokenizer.eot_token());
        }
        let doc_ids = tokenizer
            .encode_parallel_with_special(&doc.text, SpecialTokens::AsText)
            .map_err(|e| match e {
                Error::Tokenizer(msg) => Error::Tokenizer(format!("{}: {msg}", doc.path.display())),
                other => other,
            })?;
        ids.extend(doc_ids);
    }
    Ok(ids)
}

/// The shard of `docs` under `tokenizer`, from `cache_dir/<key>.tokens` if an earlier run made
/// it, else tokenised now and stored there. Returns the shard and whether it came from the cache.
/// Shards that killed processes left half-written (`.KEY.tokens.tmp-PID`) are removed first.
pub fn tokenize_cached(docs: &[Document], tokenizer: &Tokenizer, cache_dir: &Path) -> Result<(Shard, bool)> {
    remove_stale_temps(cache_dir);
    let path = cache_dir.join(format!("{}.tokens", corpus_key(docs, tokenizer, cache_dir)?));
    if path.is_file() {
        if let Ok(shard) = Shard::open(&path) {
            return Ok((shard, true));
        }
    }
    let ids = tokenize(docs, tokenizer)?;
    Shard::write(&path, &ids, tokenizer.vocab_size())?;
    Ok((Shard::open(&path)?, false))
}

/// The key [`tokenize_cached`] names the shard of `docs` by: a training run records it, and
/// checks it on resume before anything is tokenised. Creates `cache_dir` (for a scratch file).
pub fn corpus_key(docs: &[Document], tokenizer: &Tokenizer, cache_dir: &Path) -> Result<String> {
    std::fs::create_dir_all(cache_dir).map_err(|e| Error::io(cache_dir, e))?;
    Ok(cache_key(docs, &saved_form(tokenizer, cache_dir)?))
}

/// The bytes of `tokenizer.json` for `tokenizer` (written to a scratch file in `dir`).
fn saved_form(tokenizer: &Tokenizer, dir: &Path) -> Result<Vec<u8>> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let scratch = dir.join(format!(".tokenizer-{}-{n}.json", std::process::id()));
    let bytes = tokenizer
        .save_file(&scratch)
        .and_then(|_| std::fs::read(&scratch).map_err(|e| Error::io(&scratch, e)));
    let _ = std::fs::remove_file(&scratch);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gpt2-shard-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn shards_round_trip_in_both_widths_and_reject_damage() {
        let dir = temp_dir("roundtrip");
        for (vocab, ids) in [(65, vec![0u32, 64, 7, 1]), (100_000, vec![99_999, 0, 65_536])] {
            let path = dir.join("x.tokens");
            Shard::write(&path, &ids, vocab).unwrap();
            let shard = Shard::open(&path).unwrap();
            assert_eq!((0..shard.len()).map(|i| shard.get(i)).collect::<Vec<_>>(), ids);
            assert_eq!(
                std::fs::metadata(&path).unwrap().len() as usize,
                HEADER_LEN + ids.len() * if vocab > 65536 { 4 } else { 2 }
            );
        }
        let path = dir.join("x.tokens");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.pop();
        std::fs::write(&path, &bytes).unwrap();
        assert!(Shard::open(&path).unwrap_err().to_string().contains("file holds"));
        std::fs::write(&path, b"hello").unwrap();
        assert!(Shard::open(&path)
            .unwrap_err()
            .to_string()
            .contains("not a token shard"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_cache_is_keyed_by_text_and_tokenizer() {
        let dir = temp_dir("cache");
        let doc = |text: &str| {
            vec![Document {
                path: "a.txt".into(),
                text: text.into(),
            }]
        };
        let tok = Tokenizer::char_level_from_text("abc");
        let (shard, cached) = tokenize_cached(&doc("abcab"), &tok, &dir).unwrap();
        assert!(!cached && shard.len() == 5 && shard.get(1) == 1);
        let (_, cached) = tokenize_cached(&doc("abcab"), &tok, &dir).unwrap();
        assert!(cached, "same text and tokenizer: from the cache");
        let (_, cached) = tokenize_cached(&doc("abcac"), &tok, &dir).unwrap();
        assert!(!cached, "other text: tokenised again");
        let (shard, cached) = tokenize_cached(&doc("abcab"), &Tokenizer::char_level_from_text("abcd"), &dir).unwrap();
        assert!(!cached && shard.len() == 5, "other tokenizer: tokenised again");
        let err = tokenize(&doc("abz"), &tok).unwrap_err().to_string();
        assert!(err.contains("a.txt") && err.contains("byte 2"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
