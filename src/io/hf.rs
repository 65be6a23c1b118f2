//! Hugging Face model directories: `config.json` + `model.safetensors` (or sharded
//! `model.safetensors.index.json` + shards), with the tensor names `GPT2LMHeadModel` uses.

use super::atomic::{write_dir, write_synced};
use super::mapped::MappedFile;
use super::param_buffer::{check_shape, ParamBuffer};
use super::safetensors::{write_safetensors, TensorOut};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::files;
use crate::model::{param_specs, Gpt};
use crate::ops::lowp::WeightDtype;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Names in a Hugging Face file that are not parameters of ours: the causal-mask buffers that
/// older `transformers` saved, and the LM head, which is tied to (a copy of) `wte.weight`.
fn is_ignored(name: &str) -> bool {
    name == "lm_head.weight" || name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias")
}

/// The safetensors files of a model directory.
fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = files::read_to_string(&index, files::SETTINGS_MAX_BYTES)?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::weights(&index, format!("invalid JSON: {e}")))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::weights(&index, "missing 'weight_map' object"))?;
        let mut files = BTreeSet::new();
        for file in map.values() {
            let file = file
                .as_str()
                .ok_or_else(|| Error::weights(&index, "weight_map values must be file names"))?;
            if file.contains('/') || file.contains('\\') || matches!(file, "" | "." | "..") {
                return Err(Error::weights(
                    &index,
                    format!("shard name '{file}' must be a plain file name"),
                ));
            }
            files.insert(dir.join(file));
        }
        return Ok(files.into_iter().collect());
    }
    if dir.join("pytorch_model.bin").is_file() {
        return Err(Error::weights(
            dir,
            "only pytorch_model.bin found: it is a Python pickle, and unpickling can run code, so it is never loaded. \
             Use the model's model.safetensors instead (on the Hugging Face hub every GPT-2 has one)",
        ));
    }
    Err(Error::weights(
        dir,
        "no model.safetensors (or model.safetensors.index.json) in this directory",
    ))
}

/// Loads a Hugging Face GPT-2 directory. Tensor names may carry the `transformer.` prefix
/// (current `save_pretrained`) or not (the hub's gpt2 file).
pub fn load_hf_dir(dir: &Path) -> Result<Gpt> {
    load_hf_dir_as(dir, WeightDtype::F32)
}

/// [`load_hf_dir`] with the weight matrices stored in `dtype` as they are read.
pub fn load_hf_dir_as(dir: &Path, dtype: WeightDtype) -> Result<Gpt> {
    if !dir.is_dir() {
        return Err(Error::weights(dir, "not a directory"));
    }
    let config = Config::from_hf_file(&dir.join("config.json"))?;
    let files = safetensors_files(dir)?
        .iter()
        .map(|path| MappedFile::open(path))
        .collect::<Result<Vec<_>>>()?;
    let headers = files.iter().map(MappedFile::tensors).collect::<Result<Vec<_>>>()?;
    let data_bytes = files.iter().map(|f| f.bytes().len() as u64).sum();
    let mut buf = ParamBuffer::new(&config, dir, data_bytes, dtype)?;
    for (file, tensors) in files.iter().zip(&headers) {
        let path = file.path();
        for (name, view) in tensors.iter() {
            let key = name.strip_prefix("transformer.").unwrap_or(name);
            if is_ignored(key) {
                continue;
            }
            let i = buf.find(key).ok_or_else(|| {
                Error::weights(
                    path,
                    format!("unexpected tensor '{name}': not part of a GPT-2 with this config.json"),
                )
            })?;
            check_shape(path, name, view.shape(), &buf.specs()[i].shape, "config.json")?;
            buf.read(i, file, view.dtype(), view.data(), name)?;
        }
    }
    buf.finish(dir, str::to_string)
}

/// Writes the model files (`config.json`, `model.safetensors`) into an existing directory.
/// Names follow the hub's gpt2 file (no prefix, no separate LM head), which
/// `GPT2LMHeadModel.from_pretrained` loads.
pub fn write_hf_files(model: &Gpt, dir: &Path) -> Result<()> {
    let config_json = model.config.to_hf_json();
    write_synced(&dir.join("config.json"), |w| {
        std::io::Write::write_all(w, config_json.as_bytes())
    })?;
    let specs = param_specs(&model.config);
    let tensors = TensorOut::all_of(&specs, &model.params);
    write_synced(&dir.join("model.safetensors"), |w| write_safetensors(w, &tensors))
}

/// Saves the model as a Hugging Face directory, atomically (an existing `dir` is replaced only
/// once the new one is complete).
pub fn save_hf_dir(model: &Gpt, dir: &Path) -> Result<()> {
    write_dir(dir, |tmp| write_hf_files(model, tmp))
}
