//! Weight formats on disk, and writing files so that a crash never leaves a broken one.
//!
//! Every place that takes a model takes any format; [`detect`] tells them apart by their
//! contents (magic numbers, headers, the files in a directory), never by a file extension:
//!
//! | format | on disk | module |
//! |---|---|---|
//! | Hugging Face | directory: `config.json` + `model.safetensors` (or sharded) | [`hf`] |
//! | OpenAI | directory: `hparams.json` + TensorFlow checkpoint (`*.index` + `*.data-*`) | [`tf_checkpoint`] |
//! | llm.c | one file starting with the int32 magic 20240326 | [`llmc`] |
//!
//! A training run directory stands for its `latest/` checkpoint, and a model name from
//! [`cache::MODELS`] (`gpt2`, ...) for its downloaded copy when no such path exists.

pub mod atomic;
pub mod cache;
pub mod crc32c;
pub mod download;
pub mod dtype;
pub mod hf;
pub mod llmc;
pub mod lock;
pub mod mapped;
mod param_buffer;
pub mod peft;
pub mod protobuf;
pub mod safetensors;
pub mod sstable;
pub mod tf_checkpoint;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::model::Gpt;
use crate::ops::lowp::WeightDtype;
use crate::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};

/// A model on disk: its format and the path to read it from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// A Hugging Face directory.
    HuggingFace(PathBuf),
    /// An OpenAI GPT-2 checkpoint directory.
    OpenAi(PathBuf),
    /// An llm.c checkpoint file.
    Llmc(PathBuf),
}

impl Format {
    /// A short name for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Format::HuggingFace(_) => "Hugging Face safetensors",
            Format::OpenAi(_) => "OpenAI TensorFlow checkpoint",
            Format::Llmc(_) => "llm.c checkpoint",
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            Format::HuggingFace(p) | Format::OpenAi(p) | Format::Llmc(p) => p,
        }
    }

    /// Reads only the model's shape (config.json, hparams.json or the llm.c header).
    pub fn config(&self) -> Result<Config> {
        match self {
            Format::HuggingFace(dir) => Config::from_hf_file(&dir.join("config.json")),
            Format::OpenAi(dir) => tf_checkpoint::read_hparams(&dir.join("hparams.json")),
            Format::Llmc(file) => llmc::read_config(file),
        }
    }

    /// Reads the model with its weight matrices in `dtype`.
    /// (converted as they are read, a chunk of rows at a time for wte).
    pub fn load_as(&self, dtype: WeightDtype) -> Result<Gpt> {
        match self {
            Format::HuggingFace(dir) => hf::load_hf_dir_as(dir, dtype),
            Format::OpenAi(dir) => tf_checkpoint::load_openai_dir_as(dir, dtype),
            Format::Llmc(file) => llmc::load_llmc_as(file, dtype),
        }
    }

    /// Reads the model.
    pub fn load(&self) -> Result<Gpt> {
        self.load_as(WeightDtype::F32)
    }

    /// The tokenizer that comes with a model of shape `config`: a directory's vocabulary files
    /// (tokenizer.json, encoder.json + vocab.bpe, vocab.json + merges.txt); without them (an
    /// llm.c file never has any), GPT-2's when the vocabulary is GPT-2's (50257 tokens, or 50304
    /// padded).
    pub fn tokenizer(&self, config: &Config) -> Result<Option<Tokenizer>> {
        let saved = match self {
            Format::HuggingFace(dir) | Format::OpenAi(dir) => Tokenizer::load_dir(dir)?,
            Format::Llmc(_) => None,
        };
        let tokenizer = saved.or_else(|| matches!(config.vocab_size, 50257 | 50304).then(Tokenizer::gpt2));
        if let Some(t) = &tokenizer {
            if t.vocab_size() > config.vocab_size {
                return Err(Error::weights(
                    self.path(),
                    format!(
                        "the tokenizer has {} tokens, the model only {}",
                        t.vocab_size(),
                        config.vocab_size
                    ),
                ));
            }
        }
        Ok(tokenizer)
    }
}

/// A model and, where its files have one, its tokenizer.
pub struct Loaded {
    pub model: Gpt,
    pub tokenizer: Option<Tokenizer>,
    pub format: Format,
}

/// Finds what `path` holds: a model directory or file, a run directory (its `latest/`), a file
/// inside a model directory (the directory), or a downloaded model's name.
pub fn detect(path: &Path) -> Result<Format> {
    if path.is_dir() {
        if path.join("config.json").is_file() {
            return Ok(Format::HuggingFace(path.to_path_buf()));
        }
        if path.join("hparams.json").is_file() {
            return Ok(Format::OpenAi(path.to_path_buf()));
        }
        let latest = path.join("latest");
        if latest.is_dir() {
            return detect(&latest);
        }
        if peft::is_adapter_dir(path) {
            return Err(Error::weights(
                path,
                "a LoRA adapter, not a whole model: give the model it was trained on, and this directory with --adapter",
            ));
        }
        return Err(Error::weights(
            path,
            format!(
                "not a model: expected a Hugging Face directory (config.json + model.safetensors), an OpenAI \
                 checkpoint directory (hparams.json + model.ckpt.*), or a run directory with latest/{}",
                name_clash(path)
            ),
        ));
    }
    if path.is_file() {
        return detect_file(path);
    }
    let name = path.to_string_lossy();
    if cache::MODELS.contains(&name.as_ref()) {
        return match cache::default_cache_dir()
            .ok()
            .and_then(|c| cache::cached_model(&c, &name))
        {
            Some(dir) => detect(&dir),
            None => Err(Error::weights(
                path,
                format!("no such file or directory, and no downloaded '{name}': run `gpt2 download {name}` first"),
            )),
        };
    }
    match path.exists() {
        true => Err(Error::weights(path, "not a regular file or a directory")),
        false => Err(Error::weights(path, "no such file or directory")),
    }
}

/// [`detect`] for a file: an llm.c file, or the weights file of a model directory (standing
/// for the directory).
fn detect_file(path: &Path) -> Result<Format> {
    let file = mapped::MappedFile::open(path)?;
    let bytes = file.bytes();
    if bytes.len() >= 4 && i32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) == llmc::MAGIC {
        return Ok(Format::Llmc(path.to_path_buf()));
    }
    // A file of a model directory stands for the directory, if it is the file that the
    // directory's format reads (not, say, a checkpoint's optimizer.safetensors).
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if self::safetensors::has_header(bytes) {
        let read_by_dir = name == "model.safetensors"
            || (name.starts_with("model-") && dir.join("model.safetensors.index.json").is_file());
        return match read_by_dir {
            true => detect(dir),
            false => Err(Error::weights(
                path,
                "a safetensors file, but not the model.safetensors (or a listed shard) of a Hugging Face \
                 directory: a model is the directory holding config.json and model.safetensors",
            )),
        };
    }
    if sstable::has_magic(bytes) {
        return match name.ends_with(".index") && dir.join("hparams.json").is_file() {
            true => Ok(Format::OpenAi(dir.to_path_buf())),
            false => Err(Error::weights(
                path,
                "a TensorFlow index, but not the .index of an OpenAI checkpoint directory (with hparams.json)",
            )),
        };
    }
    if bytes.len() > 8 && bytes[8] == b'{' {
        // A safetensors start whose header runs past the end: a truncated file.
        let declared = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        return Err(Error::weights(
            path,
            format!(
                "a safetensors file cut short: its header alone is {declared} bytes, but only {} bytes follow \
                 its length",
                bytes.len() - 8
            ),
        ));
    }
    Err(Error::weights(
        path,
        "not a model file: no llm.c magic (20240326), safetensors header or TensorFlow index magic",
    ))
}

/// For a directory named like a downloadable model (`gpt2`): that the name was read as the
/// directory, and how to name the downloaded model instead.
fn name_clash(path: &Path) -> String {
    let name = path.to_string_lossy();
    if !cache::MODELS.contains(&name.as_ref()) {
        return String::new();
    }
    let cache = cache::default_cache_dir().ok();
    match cache.as_deref().and_then(|c| cache::cached_model(c, &name)) {
        Some(dir) => format!(
            ". '{name}' also names the downloaded model, but a path {name} exists here and is read first: for the \
             downloaded one give its path, {}",
            dir.display()
        ),
        None => format!(
            ". '{name}' also names a downloadable model, but a path {name} exists here and is read first: run \
             `gpt2 download {name}`, then give the path it prints"
        ),
    }
}

/// Loads a model from any supported format (see [`detect`]). Weights that are NaN or
/// infinite are an error naming the tensor.
pub fn load_model(path: &Path) -> Result<Gpt> {
    let format = detect(path)?;
    let model = format.load()?;
    finite(&model, format.path())?;
    Ok(model)
}

/// Loads a model and its tokenizer (see [`Format::tokenizer`]). Weights that are NaN or
/// infinite are an error naming the tensor.
pub fn load_model_with_tokenizer(path: &Path) -> Result<Loaded> {
    load_model_with_tokenizer_as(path, WeightDtype::F32)
}

/// [`load_model_with_tokenizer`] with the weight matrices stored in `dtype` for inference.
pub fn load_model_with_tokenizer_as(path: &Path, dtype: WeightDtype) -> Result<Loaded> {
    let format = detect(path)?;
    let model = format.load_as(dtype)?;
    finite(&model, format.path())?;
    let tokenizer = format.tokenizer(&model.config)?;
    Ok(Loaded {
        model,
        tokenizer,
        format,
    })
}

/// [`load_model_with_tokenizer`] for a model that may hold NaN or infinite weights (to look
/// inside a run that diverged); check them with [`non_finite_weights`].
pub fn load_model_with_tokenizer_as_is(path: &Path) -> Result<Loaded> {
    let format = detect(path)?;
    let model = format.load()?;
    let tokenizer = format.tokenizer(&model.config)?;
    Ok(Loaded {
        model,
        tokenizer,
        format,
    })
}

/// What is wrong when some of `model`'s weights are NaN or infinite: the first such tensor,
/// how many of its values, and how many other tensors have some.
pub fn non_finite_weights(model: &Gpt) -> Option<String> {
    let bad = crate::model::non_finite_tensors(&model.config, model.layout(), &model.params);
    let (name, count) = bad.first()?;
    let others = match bad.len() {
        1 => String::new(),
        n => format!(
            ", and {} more tensor{} some",
            n - 1,
            if n == 2 { " holds" } else { "s hold" }
        ),
    };
    Some(format!(
        "tensor '{name}' holds {count} NaN or infinite value{}{others} (the run diverged, or the file is damaged)",
        if *count == 1 { "" } else { "s" }
    ))
}

/// An error naming the weights of `model` (read from `path`) that are NaN or infinite.
fn finite(model: &Gpt, path: &Path) -> Result<()> {
    match non_finite_weights(model) {
        Some(msg) => Err(Error::weights(path, msg)),
        None => Ok(()),
    }
}

/// The formats a model can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// A Hugging Face directory (`transformers` loads it).
    HuggingFace,
    /// An llm.c checkpoint file.
    Llmc(llmc::LlmcDtype),
}

/// Writes `model` to `out` (a directory for Hugging Face, a file for llm.c), atomically. A
/// Hugging Face directory also gets the tokenizer (as `tokenizer.json`); an llm.c file has no
/// room for one.
pub fn save_model(model: &Gpt, tokenizer: Option<&Tokenizer>, format: ExportFormat, out: &Path) -> Result<()> {
    match format {
        ExportFormat::HuggingFace => {
            check_replaceable_by_model_dir(out)?;
            atomic::write_dir(out, |tmp| {
                hf::write_hf_files(model, tmp)?;
                tokenizer.map_or(Ok(()), |t| t.save(tmp))
            })
        }
        ExportFormat::Llmc(dtype) => {
            if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
            }
            llmc::save_llmc(model, out, dtype)
        }
    }
}

/// A model directory replaces `out` whole, so `out` must not exist, or be a model directory
/// already: only the files of a model and its tokenizer (as we or the hub write them), which
/// the new directory stands in for. Anything else in it would be deleted with it.
fn check_replaceable_by_model_dir(out: &Path) -> Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(out) else {
        return Ok(());
    };
    if meta.is_symlink() {
        let target = std::fs::read_link(out).map_err(|e| Error::io(out, e))?;
        return Err(Error::Input(format!(
            "{}: is a symbolic link (to {}), which would be replaced, not written through; give a new \
             directory for the model",
            out.display(),
            target.display()
        )));
    }
    if !meta.is_dir() {
        return Err(Error::Input(format!(
            "{}: exists and is not a directory; give a new directory for the model",
            out.display()
        )));
    }
    let is_model_file = |name: &str| {
        matches!(
            name,
            "config.json"
                | "generation_config.json"
                | "model.safetensors"
                | "model.safetensors.index.json"
                | "tokenizer.json"
                | "tokenizer_config.json"
                | "special_tokens_map.json"
                | "vocab.json"
                | "merges.txt"
                | "encoder.json"
                | "vocab.bpe"
        ) || (name.starts_with("model-") && name.ends_with(".safetensors"))
    };
    for entry in std::fs::read_dir(out).map_err(|e| Error::io(out, e))? {
        let entry = entry.map_err(|e| Error::io(out, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(is_model_file(&name) && entry.file_type().is_ok_and(|t| t.is_file())) {
            return Err(Error::Input(format!(
                "{}: holds {name:?}, which is not part of a model; writing the model there would delete it. \
                 Give a new or empty directory",
                out.display()
            )));
        }
    }
    Ok(())
}
