//! `--adapter DIR`, shared by every command that reads a model: a LoRA adapter (ours or one
//! Hugging Face PEFT wrote) merged into the `--model` it was trained on; and `InferenceModel`,
//! the `--model`, `--dtype` and `--adapter` flags of the commands that run a model.

use anyhow::{bail, Context, Result};
use clap::Args;
use gpt2::config::Config;
use gpt2::io::peft::{is_adapter_dir, merge_adapter};
use gpt2::io::{detect, load_model_with_tokenizer, load_model_with_tokenizer_as, Loaded};
use gpt2::ops::lowp::WeightDtype;
use gpt2::tokenizer::Tokenizer;
use gpt2::train::checkpoint::{self, TrainerState, TRAINER_FILE};
use gpt2::Gpt;
use std::path::{Path, PathBuf};

/// The model an inference command runs (generate, score, eval, serve).
#[derive(Args)]
pub struct InferenceModel {
    /// The model: a Hugging Face, OpenAI or llm.c GPT-2, a checkpoint or training run directory,
    /// or a downloaded model's name (gpt2, gpt2-medium, ...).
    #[arg(long)]
    pub model: PathBuf,
    /// Weights in f32, bf16 (half the bytes, read twice as fast) or q8_0 (34 bytes per 32
    /// weights): the weight matrices are converted as the model loads, products accumulate in
    /// f32; `gpt2 info` shows the kernels.
    #[arg(long, default_value = "f32")]
    pub dtype: WeightDtype,
    /// A LoRA adapter directory (adapter_config.json + adapter_model.safetensors, ours or
    /// Hugging Face PEFT's), merged into the model before use.
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
}

impl InferenceModel {
    /// The model (adapter merged, in `--dtype`) and its tokenizer, if it has one.
    pub fn load(&self) -> Result<Loaded> {
        load_for_inference(&self.model, self.dtype, self.adapter.as_deref())
    }

    /// The model and its tokenizer, for a command that reads text; `purpose` ends the error
    /// when the model has none ("it cannot read text").
    pub fn load_with_tokenizer(&self, purpose: &str) -> Result<(Gpt, Tokenizer)> {
        let Loaded { model, tokenizer, .. } = self.load()?;
        let Some(tokenizer) = tokenizer else {
            bail!(
                "{} has no tokenizer file and its vocabulary ({}) is not GPT-2's: {purpose}",
                self.model.display(),
                model.config.vocab_size
            )
        };
        Ok((model, tokenizer))
    }
}

/// The model at `path` for inference: with an adapter (given, or a LoRA run's as the model),
/// loaded in f32, the adapter merged, then stored in `dtype`; without one, converted to `dtype`
/// as it loads.
pub fn load_for_inference(path: &Path, dtype: WeightDtype, adapter: Option<&Path>) -> Result<Loaded> {
    if adapter.is_none() && lora_checkpoint(path).is_none() {
        return Ok(load_model_with_tokenizer_as(path, dtype)?);
    }
    let mut loaded = load_merged(path, adapter, load_model_with_tokenizer)?;
    loaded.model = loaded.model.to_dtype(dtype)?;
    Ok(loaded)
}

/// The model at `path` in f32 (read by `load`) with its tokenizer, the adapter in `adapter`
/// (if given) merged into its weights. A LoRA run of ours, or one of its checkpoints, given as
/// the model is its base (the run's `--init`, which must still hold the weights it was trained
/// on, read as training reads it, not by `load`) with the checkpoint's adapter merged; the
/// returned format is then the base's.
pub fn load_merged(
    path: &Path,
    adapter: Option<&Path>,
    load: fn(&Path) -> gpt2::error::Result<Loaded>,
) -> Result<Loaded> {
    if let Some(dir) = lora_checkpoint(path) {
        if adapter.is_some() {
            bail!(
                "{} is a LoRA run, which brings its own adapter: give its base as --model with --adapter, or drop --adapter",
                path.display()
            );
        }
        let (mut model, tokenizer, state) =
            checkpoint::load_without_optimizer(&dir).with_context(|| lora_checkpoint_context(&dir))?;
        let lora = model
            .adapter
            .take()
            .context("a LoRA checkpoint loads with its adapter")?;
        lora.merge_into(&mut model);
        return Ok(Loaded {
            model,
            tokenizer: Some(tokenizer),
            format: detect(&lora_base(&state)?)?,
        });
    }
    let mut loaded = load(path)?;
    if let Some(dir) = adapter {
        merge_adapter(&mut loaded.model, dir)
            .with_context(|| format!("the adapter {} on {}", dir.display(), loaded.format.path().display()))?;
    }
    Ok(loaded)
}

/// The shape of the model at `path`, read from its files alone (a LoRA run's: its base's).
pub fn model_config(path: &Path) -> Result<Config> {
    let Some(dir) = lora_checkpoint(path) else {
        return Ok(detect(path)?.config()?);
    };
    let config = named_base(&dir).and_then(|base| detect(&base)?.config());
    config.with_context(|| lora_checkpoint_context(&dir))
}

/// The base of the LoRA run (or checkpoint) at `path`, its `--init`; None if `path` is not one.
pub fn lora_run_base(path: &Path) -> Result<Option<PathBuf>> {
    let Some(dir) = lora_checkpoint(path) else {
        return Ok(None);
    };
    Ok(Some(named_base(&dir).with_context(|| lora_checkpoint_context(&dir))?))
}

/// The base the LoRA checkpoint `dir` names in its trainer.json.
fn named_base(dir: &Path) -> gpt2::error::Result<PathBuf> {
    checkpoint::read_state(dir).and_then(|state| lora_base(&state))
}

/// The base a LoRA run was trained on: its `--init`.
fn lora_base(state: &TrainerState) -> gpt2::error::Result<PathBuf> {
    state
        .config
        .init
        .clone()
        .ok_or_else(|| gpt2::error::Error::Input("a LoRA checkpoint names no --init base".into()))
}

/// What an error in reading the LoRA checkpoint `dir` or its base is about.
fn lora_checkpoint_context(dir: &Path) -> String {
    format!(
        "the LoRA checkpoint {} (its base, the run's --init, found from the current directory if relative)",
        dir.display()
    )
}

/// The checkpoint `path` stands for if it is a LoRA run of ours (its `latest/`) or one of its
/// checkpoints: the adapter's files beside a trainer.json that names the base.
fn lora_checkpoint(path: &Path) -> Option<PathBuf> {
    [path.join("latest"), path.to_path_buf()]
        .into_iter()
        .find(|dir| is_adapter_dir(dir) && dir.join(TRAINER_FILE).is_file())
}
