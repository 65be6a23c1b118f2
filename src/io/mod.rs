//! Weight formats on disk, and writing files so that a crash never leaves a broken one.

pub mod atomic;
pub mod hf;
pub mod safetensors;

use crate::error::{Error, Result};
use crate::model::Gpt;
use std::path::{Path, PathBuf};

/// Resolves what a user passes as `--model`: a model or checkpoint directory (it has a
/// config.json), or a training run directory (its `latest/` checkpoint is used).
pub fn resolve_model_dir(path: &Path) -> Result<PathBuf> {
    if path.join("config.json").is_file() {
        return Ok(path.to_path_buf());
    }
    let latest = path.join("latest");
    if latest.join("config.json").is_file() {
        return Ok(latest);
    }
    if !path.exists() {
        return Err(Error::weights(path, "no such file or directory"));
    }
    Err(Error::weights(
        path,
        "not a model: expected a directory with config.json + model.safetensors, or a run directory with latest/",
    ))
}

/// Loads a model from a model, checkpoint or run directory.
pub fn load_model(path: &Path) -> Result<Gpt> {
    hf::load_hf_dir(&resolve_model_dir(path)?)
}
