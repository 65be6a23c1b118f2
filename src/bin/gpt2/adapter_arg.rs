//! `--adapter DIR`, shared by every command that reads a model: a LoRA adapter (ours or one
//! Hugging Face PEFT wrote) merged into the `--model` it was trained on.

use anyhow::{Context, Result};
use gpt2::io::peft::merge_adapter;
use gpt2::io::Loaded;
use std::path::Path;

/// `loaded` with the adapter in `adapter` (if given) merged into its weights.
pub fn with_adapter(mut loaded: Loaded, adapter: Option<&Path>) -> Result<Loaded> {
    if let Some(dir) = adapter {
        merge_adapter(&mut loaded.model, dir)
            .with_context(|| format!("the adapter {} on {}", dir.display(), loaded.format.path().display()))?;
    }
    Ok(loaded)
}
