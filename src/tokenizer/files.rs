//! Tokenizer files: our own `tokenizer.json`, and the vocabulary files of other libraries.
//!
//! Our tokenizer file (`bpe train --out`; the `tokenizer.json` of a model directory when Hugging
//! Face's format cannot express the tokenizer, see [`save_in_model_dir`]) is one of
//!
//! ```text
//! {"type": "gpt2"}                                    the bundled GPT-2 vocabulary
//! {"type": "char", "chars": ["\n", " ", "!", ...]}    character level; id = position
//! {"type": "bpe", "pattern": "gpt2",                  byte-level BPE:
//!  "vocab": ["!", "\"", ..., "Ġt", ...],                vocab[id] = the token's bytes in GPT-2's
//!                                                       byte alphabet (bytes.rs), null if none
//!  "merges": [[82, 64], ...],                           (left, right) ids, first merges first;
//!                                                       absent: tiktoken's rank rule
//!  "ignore_merges": false,                              optional: look whole pieces up first
//!  "special_tokens": {"<|endoftext|>": 4095}}
//! ```
//!
//! Also read, each encoded the way its own library does:
//! - Hugging Face `tokenizer.json` of a byte-level BPE (`model.type` BPE, ByteLevel
//!   pre-tokenizer): merge list rule; its `added_tokens` become special tokens;
//! - OpenAI `encoder.json` + `vocab.bpe` (the same as Hugging Face's `vocab.json` +
//!   `merges.txt`): merge list rule, as GPT-2's `encoder.py`; `<|...|>` entries are special;
//! - tiktoken `.tiktoken` (`base64 rank` per line): rank rule, with `<|endoftext|>` at the first
//!   id without a rank (50256 in `r50k_base` and `p50k_base`).
//!
//! A vocabulary identical to GPT-2's loads as the bundled GPT-2 tokenizer.
//!
//! Every vocabulary is pre-tokenised with GPT-2's pattern (pretokenize.rs): right for GPT-2,
//! `r50k_base` and `p50k_base`, but not for tiktoken's `cl100k_base` / `o200k_base`, whose
//! patterns differ (they load, and encode differently from tiktoken).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::bpe::{BpeSpec, MergeRule};
use super::bytes::{bytes_to_text, text_to_bytes};
use super::char_level::CharLevel;
use super::codec::Tokenizer;
use super::gpt2::{self, parse_vocab_bpe, EOT};
use crate::error::{Error, Result};

/// The file name of a saved tokenizer in a model directory.
pub const FILE_NAME: &str = "tokenizer.json";

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum OurFile {
    Gpt2,
    Char {
        chars: Vec<char>,
    },
    Bpe {
        pattern: String,
        vocab: Vec<Option<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        merges: Option<Vec<(u32, u32)>>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        ignore_merges: bool,
        special_tokens: BTreeMap<String, u32>,
    },
}

fn bad(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("{}: {msg}", path.display()))
}

fn read_text(path: &Path) -> Result<String> {
    crate::files::regular(path)?;
    fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

fn read_json(path: &Path) -> Result<Value> {
    serde_json::from_str(&read_text(path)?).map_err(|e| bad(path, e))
}

/// The bytes of a token written in GPT-2's byte alphabet.
fn token_bytes(text: &str, path: &Path) -> Result<Vec<u8>> {
    text_to_bytes(text).ok_or_else(|| bad(path, format_args!("token {text:?} is not in the byte-level alphabet")))
}

/// The largest id a file of `entries` tokens may give: ids fill 0..entries, and some slack
/// leaves room for gaps (ids kept for special tokens listed elsewhere). A larger id would make
/// the id-indexed list far larger than the file: one id of 16777215 is 400 MB of list.
fn id_limit(entries: usize) -> u32 {
    u32::try_from(2 * entries + 1024).unwrap_or(u32::MAX)
}

/// Stores token `id`'s bytes in the id-indexed list, refusing an id given twice or one beyond
/// `limit` ([`id_limit`]).
fn place(tokens: &mut Vec<Option<Vec<u8>>>, id: u32, limit: u32, bytes: Vec<u8>, path: &Path) -> Result<()> {
    if id >= limit {
        return Err(bad(
            path,
            format_args!("token id {id} is too large for a vocabulary of this size (at most {limit})"),
        ));
    }
    let id = id as usize;
    if tokens.len() <= id {
        tokens.resize(id + 1, None);
    }
    match tokens[id].replace(bytes) {
        Some(_) => Err(bad(path, format_args!("token id {id} is given twice"))),
        None => Ok(()),
    }
}

/// The byte-level tokens of `(text, id)` vocabulary entries, by id, leaving out special ones.
fn byte_level_tokens(
    entries: &[(&str, u32)],
    is_special: impl Fn(&str) -> bool,
    path: &Path,
) -> Result<Vec<Option<Vec<u8>>>> {
    let mut tokens = Vec::new();
    let limit = id_limit(entries.len());
    for &(text, id) in entries.iter().filter(|e| !is_special(e.0)) {
        place(&mut tokens, id, limit, token_bytes(text, path)?, path)?;
    }
    Ok(tokens)
}

fn merge_ids(
    merges: impl Iterator<Item = Result<(String, String)>>,
    entries: &[(&str, u32)],
    path: &Path,
) -> Result<Vec<(u32, u32)>> {
    let by_text: BTreeMap<&str, u32> = entries.iter().copied().collect();
    merges
        .map(|m| {
            let (l, r) = m?;
            match (by_text.get(l.as_str()), by_text.get(r.as_str())) {
                (Some(&l), Some(&r)) => Ok((l, r)),
                _ => Err(bad(
                    path,
                    format_args!("merge {l:?} {r:?} names a token missing from the vocabulary"),
                )),
            }
        })
        .collect()
}

fn u32_of(v: &Value, path: &Path, what: &str) -> Result<u32> {
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| bad(path, format_args!("{what} is not a token id: {v}")))
}

/// A Hugging Face `tokenizer.json` of a byte-level BPE model.
fn read_hugging_face(json: &Value, path: &Path) -> Result<BpeSpec> {
    let model = &json["model"];
    if model["type"] != "BPE" {
        return Err(bad(
            path,
            "model.type is not \"BPE\": only byte-level BPE tokenizers are supported",
        ));
    }
    let pre = &json["pre_tokenizer"];
    if pre["type"] != "ByteLevel" || pre["add_prefix_space"] == true || pre["use_regex"] == false {
        return Err(bad(
            path,
            format_args!("pre_tokenizer {pre} is not GPT-2's (ByteLevel, no prefix space)"),
        ));
    }
    if !json["normalizer"].is_null() {
        return Err(bad(path, "normalizers are not supported"));
    }
    for affix in ["continuing_subword_prefix", "end_of_word_suffix"] {
        if model[affix].as_str().is_some_and(|s| !s.is_empty()) {
            return Err(bad(path, format_args!("model.{affix} is not supported")));
        }
    }
    // Hugging Face splits added tokens out of the text before the model sees it.
    let mut specials = Vec::new();
    for t in json["added_tokens"].as_array().into_iter().flatten() {
        let content = t["content"]
            .as_str()
            .ok_or_else(|| bad(path, format_args!("added token {t} has no content")))?;
        specials.push((content.to_string(), u32_of(&t["id"], path, "an added token id")?));
    }
    specials.sort_by_key(|s| s.1);
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| bad(path, "model.vocab is not an object"))?;
    let entries = vocab
        .iter()
        .map(|(t, id)| Ok((t.as_str(), u32_of(id, path, "a model.vocab value")?)))
        .collect::<Result<Vec<_>>>()?;
    let tokens = byte_level_tokens(&entries, |t| specials.iter().any(|s| s.0 == t), path)?;
    let merges = model["merges"]
        .as_array()
        .ok_or_else(|| bad(path, "model.merges is not a list"))?;
    let merges = merges.iter().map(|m| {
        let pair = match m {
            Value::String(s) => s.split_once(' ').map(|(l, r)| (l.to_string(), r.to_string())),
            Value::Array(a) => match &a[..] {
                [Value::String(l), Value::String(r)] => Some((l.clone(), r.clone())),
                _ => None,
            },
            _ => None,
        };
        pair.ok_or_else(|| bad(path, format_args!("merge {m} is not \"left right\" or [left, right]")))
    });
    let merges = merge_ids(merges, &entries, path)?;
    let ignore_merges = model["ignore_merges"] == true;
    Ok(BpeSpec {
        tokens,
        rule: MergeRule::Merges { merges, ignore_merges },
        specials,
    })
}

/// OpenAI's `encoder.json` + `vocab.bpe` (or Hugging Face's `vocab.json` + `merges.txt`).
fn read_openai(encoder: &Path, vocab_bpe: &Path) -> Result<BpeSpec> {
    let json = read_json(encoder)?;
    let map = json
        .as_object()
        .ok_or_else(|| bad(encoder, "not a JSON object of token -> id"))?;
    let entries = map
        .iter()
        .map(|(t, id)| Ok((t.as_str(), u32_of(id, encoder, "a value")?)))
        .collect::<Result<Vec<_>>>()?;
    let is_special = |t: &str| t.len() > 4 && t.starts_with("<|") && t.ends_with("|>");
    let tokens = byte_level_tokens(&entries, is_special, encoder)?;
    let mut specials: Vec<(String, u32)> = entries
        .iter()
        .filter(|e| is_special(e.0))
        .map(|&(t, id)| (t.to_string(), id))
        .collect();
    specials.sort_by_key(|s| s.1);
    let merges = parse_vocab_bpe(&read_text(vocab_bpe)?, vocab_bpe)?;
    let merges = merges
        .into_iter()
        .map(|(l, r)| Ok((bytes_to_text(&l), bytes_to_text(&r))));
    let merges = merge_ids(merges, &entries, vocab_bpe)?;
    Ok(BpeSpec {
        tokens,
        rule: MergeRule::Merges {
            merges,
            ignore_merges: false,
        },
        specials,
    })
}

/// Standard base64 (with or without `=` padding).
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = acc << 6 | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// A tiktoken `.tiktoken` rank file.
fn read_tiktoken(path: &Path) -> Result<BpeSpec> {
    let mut tokens: Vec<Option<Vec<u8>>> = Vec::new();
    let text = read_text(path)?;
    let limit = id_limit(text.lines().count());
    for (n, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let entry = line
            .split_once(' ')
            .and_then(|(b64, rank)| Some((base64_decode(b64)?, rank.parse::<u32>().ok()?)));
        let Some((bytes, rank)) = entry else {
            return Err(bad(
                path,
                format_args!("line {}: expected \"<base64 token> <rank>\", found {line:?}", n + 1),
            ));
        };
        place(&mut tokens, rank, limit, bytes, path)?;
    }
    let eot = tokens.iter().position(Option::is_none).unwrap_or(tokens.len()) as u32;
    Ok(BpeSpec {
        tokens,
        rule: MergeRule::Ranks,
        specials: vec![(EOT.to_string(), eot)],
    })
}

fn read_our_file(file: OurFile, path: &Path) -> Result<Tokenizer> {
    match file {
        OurFile::Gpt2 => Ok(Tokenizer::gpt2()),
        OurFile::Char { chars } => Ok(Tokenizer::Char(CharLevel::from_chars(chars).map_err(|e| bad(path, e))?)),
        OurFile::Bpe {
            pattern,
            vocab,
            merges,
            ignore_merges,
            special_tokens,
        } => {
            if pattern != "gpt2" {
                return Err(bad(
                    path,
                    format_args!("pre-tokenizer pattern {pattern:?} is not supported (only \"gpt2\")"),
                ));
            }
            let tokens = vocab
                .iter()
                .map(|t| t.as_deref().map(|t| token_bytes(t, path)).transpose())
                .collect::<Result<_>>()?;
            let rule = match merges {
                Some(merges) => MergeRule::Merges { merges, ignore_merges },
                None => MergeRule::Ranks,
            };
            let mut specials: Vec<(String, u32)> = special_tokens.into_iter().collect();
            specials.sort_by_key(|s| s.1);
            Tokenizer::from_bpe_spec(BpeSpec { tokens, rule, specials }).map_err(|e| bad(path, e))
        }
    }
}

/// A tokenizer file: ours, Hugging Face's `tokenizer.json`, or a `.tiktoken` rank file.
pub fn load_file(path: &Path) -> Result<Tokenizer> {
    if path.extension().is_some_and(|e| e == "tiktoken") {
        return Tokenizer::from_bpe_spec(read_tiktoken(path)?).map_err(|e| bad(path, e));
    }
    let json = read_json(path)?;
    if json.get("type").is_some() {
        let file: OurFile = serde_json::from_value(json).map_err(|e| bad(path, e))?;
        read_our_file(file, path)
    } else if json.get("model").is_some() {
        Tokenizer::from_bpe_spec(read_hugging_face(&json, path)?).map_err(|e| bad(path, e))
    } else {
        Err(bad(
            path,
            "neither our tokenizer.json (no \"type\") nor Hugging Face's (no \"model\")",
        ))
    }
}

/// The tokenizer saved in a model directory: `tokenizer.json` (ours or Hugging Face's), else
/// `encoder.json` + `vocab.bpe`, else `vocab.json` + `merges.txt`; `None` if there is none.
pub fn load_dir(dir: &Path) -> Result<Option<Tokenizer>> {
    if !dir.is_dir() {
        return Err(Error::io(
            dir,
            std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
        ));
    }
    let json = dir.join(FILE_NAME);
    if json.is_file() {
        return load_file(&json).map(Some);
    }
    for (vocab, merges) in [("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt")] {
        let (vocab, merges) = (dir.join(vocab), dir.join(merges));
        if vocab.is_file() && merges.is_file() {
            let spec = read_openai(&vocab, &merges)?;
            return Tokenizer::from_bpe_spec(spec).map(Some).map_err(|e| bad(&vocab, e));
        }
    }
    Ok(None)
}

/// Writes `bytes` to `path` so that a crash leaves the old file or the new one, never half of
/// one: write a temporary file beside it, fsync it, rename it over `path`, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = Path::new(&tmp);
    let write = || -> std::io::Result<()> {
        let mut file = fs::File::create(tmp)?;
        file.write_all(bytes)?;
        file.sync_all()
    };
    write().map_err(|e| Error::io(tmp, e))?;
    fs::rename(tmp, path).map_err(|e| Error::io(path, e))?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// The largest tokenizer JSON [`is_tokenizer_json`] reads: a vocabulary of a million tokens is
/// some tens of megabytes.
const MAX_TOKENIZER_JSON: u64 = 256 << 20;

/// Whether the file `path` is a tokenizer JSON that we or Hugging Face wrote: ours
/// (`{"type": "gpt2" | "char" | "bpe", ...}`) or a Hugging Face `tokenizer.json` (with a
/// `model` object). Anything else (a corpus, notes, a larger file) is not.
pub fn is_tokenizer_json(path: &Path) -> bool {
    let small = fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() <= MAX_TOKENIZER_JSON);
    let Some(json) = small.then(|| read_json(path).ok()).flatten() else {
        return false;
    };
    let ours = matches!(json.get("type").and_then(Value::as_str), Some("gpt2" | "char" | "bpe"));
    ours || json.get("model").is_some_and(Value::is_object)
}

/// Writes `tokenizer` to `path` in our format.
pub fn save(tokenizer: &Tokenizer, path: &Path) -> Result<()> {
    let file = match tokenizer {
        Tokenizer::Gpt2(_) => OurFile::Gpt2,
        Tokenizer::Char(c) => OurFile::Char {
            chars: c.chars().to_vec(),
        },
        Tokenizer::Bpe(bpe) => {
            let BpeSpec { tokens, rule, specials } = bpe.spec();
            let (merges, ignore_merges) = match rule {
                MergeRule::Ranks => (None, false),
                MergeRule::Merges { merges, ignore_merges } => (Some(merges), ignore_merges),
            };
            OurFile::Bpe {
                pattern: "gpt2".into(),
                vocab: tokens.iter().map(|t| t.as_deref().map(bytes_to_text)).collect(),
                merges,
                ignore_merges,
                special_tokens: specials.into_iter().collect(),
            }
        }
    };
    let mut json = serde_json::to_vec(&file).map_err(|e| Error::Tokenizer(e.to_string()))?;
    json.push(b'\n');
    write_atomic(path, &json)
}

/// Writes `tokenizer` as the `tokenizer.json` of a model directory: in Hugging Face's format
/// for a byte-level BPE with a merge list (GPT-2's, or one from `gpt2 bpe train`), so that
/// `transformers` loads it with the model; in ours otherwise (character level, tiktoken's rank
/// rule), which Hugging Face has no equivalent for.
pub fn save_in_model_dir(tokenizer: &Tokenizer, path: &Path) -> Result<()> {
    let BpeSpec { tokens, rule, specials } = match tokenizer {
        Tokenizer::Gpt2(bpe) | Tokenizer::Bpe(bpe) => bpe.spec(),
        Tokenizer::Char(_) => return save(tokenizer, path),
    };
    let (merges, ignore_merges) = match (tokenizer, rule) {
        // GPT-2 encodes by tiktoken's ranks, which give the same tokens as vocab.bpe's merges.
        (Tokenizer::Gpt2(_), _) => (gpt2::merges().to_vec(), false),
        (_, MergeRule::Merges { merges, ignore_merges }) => (merges, ignore_merges),
        (_, MergeRule::Ranks) => return save(tokenizer, path),
    };
    let text_of: Vec<Option<String>> = tokens.iter().map(|t| t.as_deref().map(bytes_to_text)).collect();
    let mut vocab = serde_json::Map::new();
    for (id, text) in text_of.iter().enumerate() {
        if let Some(text) = text {
            vocab.insert(text.clone(), id.into());
        }
    }
    let mut added_tokens = Vec::new();
    for (content, id) in &specials {
        vocab.insert(content.clone(), (*id).into());
        added_tokens.push(serde_json::json!({"id": id, "content": content, "single_word": false,
            "lstrip": false, "rstrip": false, "normalized": true, "special": true}));
    }
    let token = |id: u32| text_of.get(id as usize).cloned().flatten();
    let merges = merges
        .iter()
        .map(|&(l, r)| match (token(l), token(r)) {
            (Some(l), Some(r)) => Ok(format!("{l} {r}")),
            _ => Err(Error::Tokenizer(format!(
                "merge ({l}, {r}) names a token without bytes"
            ))),
        })
        .collect::<Result<Vec<String>>>()?;
    // GPT-2's pre-tokenizer, post-processor and decoder, as in the hub's gpt2/tokenizer.json.
    let byte_level = |add_prefix_space: bool, trim_offsets: bool| {
        serde_json::json!({"type": "ByteLevel", "add_prefix_space": add_prefix_space,
            "trim_offsets": trim_offsets, "use_regex": true})
    };
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": null,
        "pre_tokenizer": byte_level(false, true),
        "post_processor": byte_level(true, false),
        "decoder": byte_level(true, true),
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges},
    });
    let mut bytes = serde_json::to_vec(&json).map_err(|e| Error::Tokenizer(e.to_string()))?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// A tokenizer file, or the tokenizer saved in a model directory.
pub fn load_path(path: &Path) -> Result<Tokenizer> {
    if path.is_dir() {
        load_dir(path)?.ok_or_else(|| bad(path, "no tokenizer files in this directory"))
    } else {
        load_file(path)
    }
}

/// `char:<path>`: a model directory or our tokenizer.json, else a text whose distinct
/// characters are the vocabulary.
pub fn load_char_spec(path: &Path) -> Result<Tokenizer> {
    if path.is_dir() {
        return load_path(path);
    }
    let text = read_text(path)?;
    match serde_json::from_str::<OurFile>(&text) {
        Ok(file) => read_our_file(file, path),
        Err(_) if text.is_empty() => Err(Error::Tokenizer(format!(
            "{}: the file is empty, so a character vocabulary read from it has no characters \
             (give a text, or a char-level tokenizer.json)",
            path.display()
        ))),
        Err(e) if looks_like_tokenizer_json(path, &text) => Err(Error::Tokenizer(format!(
            "{}: looks like a tokenizer JSON file but cannot be read as one ({e}); a char-level \
             vocabulary is read from a tokenizer.json of ours or from a plain text",
            path.display()
        ))),
        Err(_) => Ok(Tokenizer::char_level_from_text(&text)),
    }
}

/// Whether a file that `char:FILE` names was meant as a tokenizer file rather than a text whose
/// characters make the vocabulary: a JSON object in a `.json` file, or one with a `"type"` key.
fn looks_like_tokenizer_json(path: &Path, text: &str) -> bool {
    text.trim_start().starts_with('{')
        && (path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")) || text.contains("\"type\""))
}
