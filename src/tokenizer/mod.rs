//! Tokenizers: text <-> token ids.
//!
//! Three kinds behind one [`Tokenizer`] type, which a model checkpoint records so that every
//! command uses the model's own tokenizer:
//!
//! - [`Tokenizer::Gpt2`]: GPT-2's byte-level BPE, bundled, identical to tiktoken's `gpt2`;
//! - [`Tokenizer::Char`]: one token per character (nanoGPT's Shakespeare);
//! - [`Tokenizer::Bpe`]: another byte-level BPE: trained here ([`Tokenizer::train_bpe`]) or
//!   read from Hugging Face / OpenAI / tiktoken files.
//!
//! One file per idea: `codec` (the [`Tokenizer`] type, encoding and decoding), `bytes` (GPT-2's byte <-> character table), `pretokenize` (the GPT-2
//! split pattern), `bpe` (encode/decode by merges), `gpt2` (the bundled vocabulary, the vocab.bpe format),
//! `char_level`, `train` (BPE training), `files` (reading and writing vocabularies).

mod bpe;
mod bytes;
mod char_level;
mod codec;
mod files;
mod gpt2;
mod hash;
pub mod pretokenize;
mod train;
#[rustfmt::skip]
mod unicode_tables;

use std::path::Path;

pub use bpe::{Bpe, BpeSpec, MergeRule};
pub use char_level::{CharLevel, UnknownChar};
pub use codec::{SpecialTokens, Tokenizer};
pub use files::FILE_NAME;
pub use gpt2::{EOT, EOT_ID};

use crate::error::{Error, Result};

/// Reading and writing tokenizers (the formats are in `files.rs`).
impl Tokenizer {
    /// A tokenizer named on the command line: `gpt2`; `char:<file>` (a saved char tokenizer,
    /// or a text whose characters form the alphabet, or a model directory); `bpe:<file>`
    /// (our or Hugging Face's tokenizer.json, a `.tiktoken` file, or a model directory).
    pub fn from_spec(spec: &str) -> Result<Tokenizer> {
        let (kind, path) = match spec.split_once(':') {
            _ if spec == "gpt2" => return Ok(Tokenizer::gpt2()),
            Some((kind @ ("char" | "bpe"), path)) => (kind, Path::new(path)),
            _ => {
                return Err(Error::Tokenizer(format!(
                    "unknown tokenizer {spec:?}: expected gpt2, char:<file> or bpe:<file>"
                )))
            }
        };
        let tokenizer = match kind {
            "char" => files::load_char_spec(path)?,
            _ => files::load_path(path)?,
        };
        if (tokenizer.kind() == "char") != (kind == "char") {
            return Err(Error::Tokenizer(format!(
                "{spec}: holds a {} tokenizer, not {kind}",
                tokenizer.kind()
            )));
        }
        Ok(tokenizer)
    }

    /// The tokenizer saved in a model directory: our `tokenizer.json`, a Hugging Face
    /// `tokenizer.json`, or `encoder.json` + `vocab.bpe` (`vocab.json` + `merges.txt`);
    /// `Ok(None)` if the directory has none of them.
    pub fn load_dir(dir: &Path) -> Result<Option<Tokenizer>> {
        files::load_dir(dir)
    }

    /// A tokenizer file: our or Hugging Face's `tokenizer.json`, or a tiktoken `.tiktoken` file.
    pub fn load_file(path: &Path) -> Result<Tokenizer> {
        files::load_file(path)
    }

    /// Writes `dir/tokenizer.json` atomically, creating `dir`: Hugging Face's format for a
    /// byte-level BPE with merges (GPT-2's included), which `transformers` loads; ours otherwise
    /// (formats in `files.rs`).
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        files::save_in_model_dir(self, &dir.join(FILE_NAME))
    }

    /// Writes this tokenizer to the file `path` atomically, in our format (`files.rs`).
    pub fn save_file(&self, path: &Path) -> Result<()> {
        files::save(self, path)
    }

    /// Whether the file `path` holds a tokenizer JSON that we or Hugging Face wrote (what
    /// [`Tokenizer::save_file`] may replace without destroying anything else).
    pub fn is_tokenizer_json(path: &Path) -> bool {
        files::is_tokenizer_json(path)
    }
}
