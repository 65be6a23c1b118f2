//! The model cache: `gpt2 download` stores models here and `--model gpt2` finds them.
//!
//! ```text
//! {cache}/hf/gpt2-medium/          a Hugging Face directory, complete and verified
//! {cache}/openai/gpt2-medium/      OpenAI's checkpoint directory, complete and verified
//! {cache}/.partial/hf/gpt2-medium/ a download in progress (resumed by the next download)
//! ```
//!
//! The cache is `$GPT2_CACHE_DIR`, else `$XDG_CACHE_HOME/gpt2`, else `~/.cache/gpt2`.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// The models that can be downloaded, by their Hugging Face names.
pub const MODELS: [&str; 4] = ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"];

/// Where a model comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The Hugging Face hub: config.json + model.safetensors + vocab.json + merges.txt.
    HuggingFace,
    /// OpenAI's original release: hparams.json + TensorFlow checkpoint + encoder.json + vocab.bpe.
    OpenAi,
}

impl Source {
    /// The name of the source's folder in the cache (and on the command line).
    pub fn name(self) -> &'static str {
        match self {
            Source::HuggingFace => "hf",
            Source::OpenAi => "openai",
        }
    }
}

/// The default cache directory (see the module docs).
pub fn default_cache_dir() -> Result<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("GPT2_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("gpt2")))
        .or_else(|| var("HOME").map(|d| d.join(".cache").join("gpt2")))
        .ok_or_else(|| Error::Input("no cache directory: set GPT2_CACHE_DIR (or HOME)".into()))
}

/// The folder of a model from a source in the cache.
pub fn model_dir(cache: &Path, source: Source, model: &str) -> PathBuf {
    cache.join(source.name()).join(model)
}

/// The folder of a download in progress.
pub fn partial_dir(cache: &Path, source: Source, model: &str) -> PathBuf {
    cache.join(".partial").join(source.name()).join(model)
}

/// The cached copy of `model` (a name from [`MODELS`]), Hugging Face's first.
pub fn cached_model(cache: &Path, model: &str) -> Option<PathBuf> {
    if !MODELS.contains(&model) {
        return None;
    }
    [Source::HuggingFace, Source::OpenAi]
        .into_iter()
        .map(|s| model_dir(cache, s, model))
        .find(|d| d.is_dir())
}
