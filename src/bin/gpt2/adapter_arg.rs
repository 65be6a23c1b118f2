//! `--adapter DIR`, shared by every command that reads a model: a LoRA adapter (ours or one
//! Hugging Face PEFT wrote) merged into the `--model` it was trained on.

use anyhow::{Context, Result};
use gpt2::io::peft::merge_adapter;
use gpt2::io::{load_model_with_tokenizer, load_model_with_tokenizer_as, Loaded};
use gpt2::ops::lowp::WeightDtype;
use std::path::Path;

/// The model at `path` for inference: with an adapter, loaded in f32, the adapter merged, then
/// stored in `dtype`; without one, converted to `dtype` as it loads.
pub fn load_for_inference(path: &Path, dtype: WeightDtype, adapter: Option<&Path>) -> Result<Loaded> {
    if adapter.is_none() {
        return Ok(load_model_with_tokenizer_as(path, dtype)?);
    }
    let mut loaded = with_adapter(load_model_with_tokenizer(path)?, adapter)?;
    loaded.model = loaded.model.to_dtype(dtype)?;
    Ok(loaded)
}

/// `loaded` with the adapter in `adapter` (if given) merged into its weights.
pub fn with_adapter(mut loaded: Loaded, adapter: Option<&Path>) -> Result<Loaded> {
    if let Some(dir) = adapter {
        merge_adapter(&mut loaded.model, dir)
            .with_context(|| format!("the adapter {} on {}", dir.display(), loaded.format.path().display()))?;
    }
    Ok(loaded)
}
