//! Checkpoints: one directory, written atomically (temporary directory, fsync, rename), with
//!
//! - `config.json` + `model.safetensors`: the model, loadable by Hugging Face `transformers`;
//!   or, for a LoRA run, `adapter_config.json` + `adapter_model.safetensors`: the adapter in
//!   PEFT's format, with no copy of the base (the `--init` model, named in `trainer.json` with
//!   the SHA-256 of its weights, which a resumed run checks);
//! - `optimizer.safetensors`: AdamW's moments `exp_avg` (m) and `exp_avg_sq` (v), each one F32
//!   tensor [trainable parameters] in their layout (the adapter's for a LoRA run);
//! - `trainer.json`: [`TrainerState`] (step, RNG states, data position, schedule, settings);
//! - `tokenizer.json`: the tokenizer.

use super::config::TrainConfig;
use crate::data::DataPosition;
use crate::error::{Error, Result};
use crate::io::atomic::{write_dir, write_synced};
use crate::io::dtype::to_f32;
use crate::io::hf::{load_hf_dir, write_hf_files};
use crate::io::load_model;
use crate::io::mapped::MappedFile;
use crate::io::peft::{is_adapter_dir, load_adapter, write_adapter_files};
use crate::io::safetensors::{write_safetensors, TensorOut};
use crate::model::Gpt;
use crate::optim::{AdamW, LrSchedule};
use crate::rng::Rng;
use crate::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const TRAINER_FILE: &str = "trainer.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// `format` and `version` of trainer.json.
pub const FORMAT: &str = "gpt2-trainer";
pub const VERSION: u32 = 1;

/// The training state besides the tensors: all a resumed run needs to continue bit for bit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    pub format: String,
    pub version: u32,
    /// Optimizer updates done.
    pub step: usize,
    /// AdamW's step count t (bias corrections).
    pub optimizer_step: u64,
    pub tokens_seen: u64,
    /// Learning rate of the next step, and the schedule.
    pub next_lr: f32,
    pub lr_schedule: LrSchedule,
    /// SHA-256 key of the tokenised corpus (a resumed run must train on the same ids).
    pub corpus_key: String,
    /// The training batch stream (its RNG, or its epoch and index).
    pub data_position: DataPosition,
    pub dropout_rng: Rng,
    pub best_val_loss: Option<f32>,
    /// Training time so far.
    pub elapsed_s: f64,
    /// The run's settings, with the derived values filled in.
    pub config: TrainConfig,
    /// A LoRA run: the SHA-256 of its frozen base's weights ([`weights_sha256`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_sha256: Option<String>,
}

/// The SHA-256 of a model's weights (f32, little-endian, in the parameter layout): the same for
/// the same weights in any file format.
pub fn weights_sha256(params: &[f32]) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    let mut bytes = Vec::with_capacity(1 << 16);
    for chunk in params.chunks(1 << 14) {
        bytes.clear();
        chunk.iter().for_each(|x| bytes.extend_from_slice(&x.to_le_bytes()));
        hash.update(&bytes);
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A loaded checkpoint.
pub struct Checkpoint {
    pub model: Gpt,
    pub optimizer_m: Vec<f32>,
    pub optimizer_v: Vec<f32>,
    pub tokenizer: Tokenizer,
    pub state: TrainerState,
}

/// Writes a checkpoint directory atomically: `dir` is replaced only once the new one is complete.
pub fn save(dir: &Path, model: &Gpt, optimizer: &AdamW, tokenizer: &Tokenizer, state: &TrainerState) -> Result<()> {
    write_dir(dir, |tmp| {
        match &model.adapter {
            Some(adapter) => {
                let base = state.config.init.as_ref().map(|p| p.to_string_lossy());
                write_adapter_files(adapter, &model.config, base.as_deref(), tmp)?
            }
            None => write_hf_files(model, tmp)?,
        }
        let n = [optimizer.m.len()];
        let tensors = [
            TensorOut {
                name: "exp_avg",
                shape: &n,
                data: &optimizer.m,
            },
            TensorOut {
                name: "exp_avg_sq",
                shape: &n,
                data: &optimizer.v,
            },
        ];
        write_synced(&tmp.join(OPTIMIZER_FILE), |w| write_safetensors(w, &tensors))?;
        let json = serde_json::to_vec_pretty(state).map_err(|e| Error::Input(e.to_string()))?;
        write_synced(&tmp.join(TRAINER_FILE), |w| w.write_all(&json))?;
        tokenizer.save(tmp)
    })
}

/// Reads a checkpoint directory, checking that its parts fit together.
pub fn load(dir: &Path) -> Result<Checkpoint> {
    let (model, tokenizer, state) = load_without_optimizer(dir)?;
    let path = dir.join(OPTIMIZER_FILE);
    let file = MappedFile::open(&path)?;
    let tensors = file.tensors()?;
    let moment = |name: &str| -> Result<Vec<f32>> {
        let view = tensors
            .tensor(name)
            .map_err(|_| Error::weights(&path, format!("missing tensor '{name}'")))?;
        let mut out = vec![0.0; model.trainable().len()];
        if view.shape() != [out.len()] {
            return Err(Error::weights(
                &path,
                format!("tensor '{name}' has shape {:?}, expected [{}]", view.shape(), out.len()),
            ));
        }
        to_f32(view.dtype(), view.data(), &mut out)
            .map_err(|msg| Error::weights(&path, format!("tensor '{name}': {msg}")))?;
        Ok(out)
    };
    let (optimizer_m, optimizer_v) = (moment("exp_avg")?, moment("exp_avg_sq")?);
    Ok(Checkpoint {
        model,
        optimizer_m,
        optimizer_v,
        tokenizer,
        state,
    })
}

/// A checkpoint's trainer state (trainer.json), checked to be one this version reads.
pub fn read_state(dir: &Path) -> Result<TrainerState> {
    let state_path = dir.join(TRAINER_FILE);
    let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
    let state: TrainerState =
        serde_json::from_str(&text).map_err(|e| Error::weights(&state_path, format!("not a trainer state: {e}")))?;
    if (state.format.as_str(), state.version) != (FORMAT, VERSION) {
        return Err(Error::weights(
            &state_path,
            format!(
                "format {} v{} (expected {FORMAT} v{VERSION})",
                state.format, state.version
            ),
        ));
    }
    Ok(state)
}

/// A checkpoint's model (for a LoRA checkpoint, its base with the adapter attached), its
/// tokenizer and its trainer state, without the optimizer's moments: what running the
/// checkpoint needs.
pub fn load_without_optimizer(dir: &Path) -> Result<(Gpt, Tokenizer, TrainerState)> {
    let state = read_state(dir)?;
    let model = match is_adapter_dir(dir) {
        true => load_base_with_adapter(dir, &state)?,
        false => load_hf_dir(dir)?,
    };
    let tokenizer =
        Tokenizer::load_dir(dir)?.ok_or_else(|| Error::weights(dir, "the checkpoint has no tokenizer.json"))?;
    if tokenizer.vocab_size() > model.config.vocab_size {
        return Err(Error::weights(
            dir,
            format!(
                "tokenizer.json has {} ids, more than the model's {}",
                tokenizer.vocab_size(),
                model.config.vocab_size
            ),
        ));
    }
    Ok((model, tokenizer, state))
}

/// A LoRA checkpoint's model: its base (the run's `--init`, which must be the model it started
/// from) with the checkpoint's adapter.
fn load_base_with_adapter(dir: &Path, state: &TrainerState) -> Result<Gpt> {
    let base = state.config.init.as_ref().ok_or_else(|| {
        Error::weights(
            dir.join(TRAINER_FILE),
            "a LoRA checkpoint whose run names no --init base model",
        )
    })?;
    let mut model = load_model(base)?;
    if state.base_sha256.as_deref() != Some(weights_sha256(&model.params).as_str()) {
        return Err(Error::weights(
            base,
            format!(
                "not the base model the LoRA run in {} was trained on: its weights changed (a LoRA checkpoint holds \
                 only the adapter, so it needs the same base)",
                dir.display()
            ),
        ));
    }
    model.adapter = Some(load_adapter(dir, &model.config)?);
    Ok(model)
}
