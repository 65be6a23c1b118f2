//! Training settings: nanoGPT's config names, from defaults, a TOML file and flags.
//!
//! The defaults are nanoGPT's CPU "baby GPT" on the bundled Tiny Shakespeare at the character
//! level. A TOML file and command-line flags set the same keys (flags in kebab-case); each layer
//! is a map of the keys it sets ([`Overrides`]) laid over the one below.

use crate::error::{Error, Result};
use crate::model::lora::{parse_targets, LoraConfig};
use crate::ops::matmul::Precision;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// Keys set by the user (TOML file, flags) with their values, as JSON.
pub type Overrides = Map<String, Value>;

/// Every setting of a training run. `None` means "derived": from the preset, the `--init` model
/// or the corpus; a started run records the derived values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    // --- data ---
    /// Text files or directories of text (default: the bundled Tiny Shakespeare).
    pub data: Vec<PathBuf>,
    /// `char` (the corpus's characters), `char:<file>`, `gpt2` or `bpe:<file>`; default `char`,
    /// or the `--init` model's own tokenizer.
    pub tokenizer: Option<String>,
    /// Where tokenised corpora are cached (default: `tokens/` in the model cache: `$GPT2_CACHE_DIR`,
    /// else `$XDG_CACHE_HOME/gpt2`, else `~/.cache/gpt2`).
    pub cache_dir: Option<PathBuf>,
    /// Fraction of the corpus (its end) held out for validation.
    pub val_fraction: f64,
    /// Instruction data: validate on the records of this file instead of the last val_fraction
    /// of the --data file's.
    pub val_data: Option<PathBuf>,
    /// Train on sliding windows with this stride instead of random windows.
    pub stride: Option<usize>,
    /// Seed of the initialisation, the batches, dropout and the samples.
    pub seed: u64,
    // --- model ---
    /// Model shape from a preset (gpt2, gpt2-medium, gpt2-large, gpt2-xl, shakespeare-char).
    pub preset: Option<String>,
    /// Start from this model (fine-tuning): a checkpoint, run directory, Hugging Face, OpenAI or
    /// llm.c GPT-2, or the name of a downloaded one (`gpt2`).
    pub init: Option<PathBuf>,
    pub n_layer: Option<usize>,
    pub n_head: Option<usize>,
    pub n_embd: Option<usize>,
    /// Context length T of the training windows (and of a new model).
    pub block_size: Option<usize>,
    pub dropout: f32,
    // --- LoRA (with `init`) ---
    /// Train a LoRA adapter of this rank on the frozen `init` model instead of every weight.
    pub lora_r: Option<usize>,
    /// The adapter's alpha: its output is scaled by alpha / r (default: PEFT's 8).
    pub lora_alpha: Option<f32>,
    /// Dropout on the adapter's input.
    pub lora_dropout: f32,
    /// The layers adapted, comma-separated: c_attn, attn.c_proj, c_fc, mlp.c_proj (default:
    /// c_attn, as PEFT's default for GPT-2).
    pub lora_targets: Option<String>,
    /// Train the token embedding (and the tied LM head) too, as a full copy in the adapter
    /// (PEFT's `modules_to_save`).
    pub lora_train_wte: bool,
    // --- optimisation ---
    pub batch_size: usize,
    /// Micro-batches per optimizer step (nanoGPT's gradient_accumulation_steps).
    #[serde(alias = "gradient_accumulation_steps")]
    pub grad_accum: usize,
    pub max_iters: usize,
    /// Peak learning rate (nanoGPT's learning_rate).
    #[serde(alias = "learning_rate")]
    pub lr: f32,
    pub min_lr: f32,
    pub warmup_iters: usize,
    /// End of the cosine decay (default: max_iters).
    pub lr_decay_iters: Option<usize>,
    /// false: constant learning rate.
    pub decay_lr: bool,
    pub weight_decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    /// Clip the global gradient norm to this (0: no clipping).
    pub grad_clip: f32,
    /// Batch shards run side by side, each on its own thread with its own workspace, all reading
    /// the one model (see [`crate::model::data_parallel`]). Default: one per thread for models up
    /// to 32M parameters, else 1. The run records it, so it resumes bit for bit on any machine.
    pub data_parallel: Option<usize>,
    /// The matrix products' precision: f32, or bf16 operands with f32 sums (master weights,
    /// gradients and moments stay f32; a CPU without AVX512-BF16 runs f32, with a note).
    pub precision: Precision,
    // --- evaluation and output ---
    pub eval_interval: usize,
    pub eval_iters: usize,
    /// Prompt of the sample printed at each evaluation.
    pub prompt: String,
    /// Length of that sample, in tokens.
    pub sample_tokens: usize,
    /// Softmax temperature of that sample (0: greedy).
    pub temperature: f32,
    /// Sample among the k most likely tokens (0: all).
    pub top_k: usize,
    /// Run directory (default: runs/<timestamp>, with runs/latest pointing at it).
    pub out_dir: Option<PathBuf>,
    /// Keep the last K checkpoints as step-NNNNNN/ besides latest/ and best/ (0: none).
    pub keep_checkpoints: usize,
}

/// The bundled corpus.
pub fn bundled_corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join("tinyshakespeare.txt")
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            data: vec![bundled_corpus()],
            tokenizer: None,
            cache_dir: None,
            val_fraction: 0.1,
            val_data: None,
            stride: None,
            seed: 1337,
            preset: None,
            init: None,
            n_layer: None,
            n_head: None,
            n_embd: None,
            block_size: None,
            dropout: 0.0,
            lora_r: None,
            lora_alpha: None,
            lora_dropout: 0.0,
            lora_targets: None,
            lora_train_wte: false,
            batch_size: 12,
            grad_accum: 1,
            max_iters: 2000,
            lr: 1e-3,
            min_lr: 1e-4,
            warmup_iters: 100,
            lr_decay_iters: None,
            decay_lr: true,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.99,
            grad_clip: 1.0,
            data_parallel: None,
            precision: Precision::F32,
            eval_interval: 500,
            eval_iters: 20,
            prompt: "\n".into(),
            sample_tokens: 200,
            temperature: 0.8,
            top_k: 200,
            out_dir: None,
            keep_checkpoints: 0,
        }
    }
}

/// The model of `gpt2 train` without a preset: nanoGPT's baby GPT (0.8M parameters).
pub const DEFAULT_SHAPE: (usize, usize, usize, usize) = (4, 4, 128, 64); // n_layer, n_head, n_embd, block_size

/// The most optimizer steps (and the largest step count of any kind: warm-up, decay,
/// evaluation interval and batches) a run may ask for: 2^40, decades of steps at a millisecond
/// each, and far enough below usize::MAX that no step arithmetic overflows.
pub const MAX_ITERS: usize = 1 << 40;

/// The most batch shards (`data_parallel`) a run may have: each is a thread with its own
/// gradient buffer. (Shards beyond the batch size would get no rows; a run caps them at it.)
pub const MAX_SHARDS: usize = 1024;

/// Settings a resumed run may change: they do not alter the path of the training itself.
pub const RESUMABLE_KEYS: [&str; 9] = [
    "keep_checkpoints",
    "max_iters",
    "eval_interval",
    "eval_iters",
    "prompt",
    "sample_tokens",
    "temperature",
    "top_k",
    "cache_dir",
];

impl TrainConfig {
    /// Reads a TOML file of settings. Unknown keys and wrong types are errors naming the line.
    pub fn overrides_from_toml(path: &Path) -> Result<Overrides> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let bad = |e: toml::de::Error| Error::Config(format!("{}: {}", path.display(), e.to_string().trim_end()));
        toml::from_str::<TrainConfig>(&text).map_err(bad)?;
        let table: toml::Table = toml::from_str(&text).map_err(bad)?;
        let mut map = Overrides::new();
        for (key, value) in table {
            let key = match key.as_str() {
                "learning_rate" => "lr".to_string(),
                "gradient_accumulation_steps" => "grad_accum".to_string(),
                _ => key,
            };
            // JSON has no NaN or infinity: serde_json would turn them into null, "not set".
            if let toml::Value::Float(x) = &value {
                if !x.is_finite() {
                    return Err(Error::Config(format!(
                        "{}: {key} = {x} is not a finite number",
                        path.display()
                    )));
                }
            }
            let mut value =
                serde_json::to_value(value).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
            // Relative paths in the file are relative to the file; all are made absolute, so that
            // a run records paths that still hold when it is resumed from elsewhere. (`init` may
            // name a downloaded model, so it is taken as written.)
            if matches!(key.as_str(), "data" | "val_data" | "cache_dir" | "out_dir") {
                let dir = std::path::absolute(path).map_err(|e| Error::io(path, e))?;
                value = resolve_paths(value, dir.parent().unwrap_or(Path::new("/")));
            }
            map.insert(key, value);
        }
        Ok(map)
    }

    /// This config with `overrides` laid over it.
    pub fn with_overrides(&self, overrides: &Overrides) -> Result<TrainConfig> {
        let mut value = serde_json::to_value(self).map_err(|e| Error::Config(e.to_string()))?;
        let map = value.as_object_mut().expect("a struct serialises to an object");
        for (key, v) in overrides {
            map.insert(key.clone(), v.clone());
        }
        serde_json::from_value(value).map_err(|e| Error::Config(e.to_string()))
    }

    /// The keys of `overrides` whose values differ from this config's, ignoring `allowed`.
    pub fn conflicts(&self, overrides: &Overrides, allowed: &[&str]) -> Result<Vec<String>> {
        let ours = serde_json::to_value(self).map_err(|e| Error::Config(e.to_string()))?;
        let theirs = serde_json::to_value(self.with_overrides(overrides)?).map_err(|e| Error::Config(e.to_string()))?;
        Ok(overrides
            .keys()
            .filter(|k| !allowed.contains(&k.as_str()) && ours[k.as_str()] != theirs[k.as_str()])
            .map(|k| {
                format!(
                    "{k} = {} (the run has {})",
                    shown(&theirs[k.as_str()]),
                    shown(&ours[k.as_str()])
                )
            })
            .collect())
    }

    /// Checks the numbers that do not depend on the model or the corpus.
    pub fn validate(&self) -> Result<()> {
        self.validate_counts()?;
        self.validate_rates()?;
        if self.init.is_some() && self.preset.is_some() {
            return Err(Error::Config(
                "give either --init (start from a model) or --preset (a new model), not both".into(),
            ));
        }
        self.lora().map(|_| ())
    }

    /// The LoRA adapter to train (with `--init`), if `lora_r` is set.
    pub fn lora(&self) -> Result<Option<LoraConfig>> {
        let Some(r) = self.lora_r else {
            let given = [
                ("lora_alpha", self.lora_alpha.is_some()),
                ("lora_dropout", self.lora_dropout != 0.0),
                ("lora_targets", self.lora_targets.is_some()),
                ("lora_train_wte", self.lora_train_wte),
            ];
            return match given.iter().find(|(_, set)| *set) {
                Some((name, _)) => Err(Error::Config(format!("{name} is for LoRA: give lora_r (--lora-r) too"))),
                None => Ok(None),
            };
        };
        if self.init.is_none() {
            return Err(Error::Config(
                "LoRA adapts an existing model: give it with --init".into(),
            ));
        }
        let config = LoraConfig {
            r,
            alpha: self.lora_alpha.unwrap_or(8.0),
            dropout: self.lora_dropout,
            targets: parse_targets(self.lora_targets.as_deref().unwrap_or("c_attn"))?,
            train_wte: self.lora_train_wte,
        };
        config.validate()?;
        Ok(Some(config))
    }

    /// Sizes and step counts: positive where zero means nothing, and bounded.
    fn validate_counts(&self) -> Result<()> {
        let positive = [
            ("batch_size", self.batch_size),
            ("grad_accum", self.grad_accum),
            ("eval_interval", self.eval_interval),
            ("eval_iters", self.eval_iters),
            ("data_parallel", self.data_parallel.unwrap_or(1)),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(Error::Config(format!("{name} must be positive")));
            }
        }
        for (name, value) in [
            ("max_iters", self.max_iters),
            ("warmup_iters", self.warmup_iters),
            ("lr_decay_iters", self.lr_decay_iters.unwrap_or(0)),
            ("eval_interval", self.eval_interval),
            ("eval_iters", self.eval_iters),
            ("sample_tokens", self.sample_tokens),
        ] {
            if value > MAX_ITERS {
                return Err(Error::Config(format!(
                    "{name} must be at most {MAX_ITERS}, got {value}"
                )));
            }
        }
        if let Some(shards) = self.data_parallel.filter(|&s| s > MAX_SHARDS) {
            return Err(Error::Config(format!(
                "data_parallel must be at most {MAX_SHARDS} batch shards, got {shards}"
            )));
        }
        for (name, value) in [
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_embd", self.n_embd),
            ("block_size", self.block_size),
            ("stride", self.stride),
        ] {
            if value == Some(0) {
                return Err(Error::Config(format!("{name} must be positive")));
            }
        }
        Ok(())
    }

    /// Fractions, rates and coefficients: finite and in their ranges.
    fn validate_rates(&self) -> Result<()> {
        if !(self.val_fraction > 0.0 && self.val_fraction < 1.0) {
            return Err(Error::Config(format!(
                "val_fraction must be between 0 and 1, got {}",
                self.val_fraction
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Config(format!(
                "dropout must be in [0, 1), got {}",
                self.dropout
            )));
        }
        for (name, value) in [
            ("lr", self.lr),
            ("min_lr", self.min_lr),
            ("weight_decay", self.weight_decay),
            ("grad_clip", self.grad_clip),
        ] {
            if !(value >= 0.0 && value.is_finite()) {
                return Err(Error::Config(format!(
                    "{name} must be a non-negative number, got {value}"
                )));
            }
        }
        for (name, value) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&value) {
                return Err(Error::Config(format!("{name} must be in [0, 1), got {value}")));
            }
        }
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::Config(format!(
                "temperature must be 0 (greedy) or positive, got {}",
                self.temperature
            )));
        }
        Ok(())
    }
}

/// A path or list of paths in a TOML file, made relative to the file's directory.
fn resolve_paths(value: Value, base: &Path) -> Value {
    match value {
        Value::String(s) => Value::String(base.join(s).to_string_lossy().into_owned()),
        Value::Array(items) => Value::Array(items.into_iter().map(|v| resolve_paths(v, base)).collect()),
        other => other,
    }
}

/// A setting's value as the user wrote it: an f32 setting is widened to f64 in JSON
/// (0.001 becomes 0.0010000000474974513), so a float that is exactly an f32 prints as the f32.
fn shown(value: &Value) -> String {
    match value.as_f64() {
        Some(x) if value.is_f64() && f64::from(x as f32) == x => (x as f32).to_string(),
        _ => value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_keys_and_flags_override_in_order_and_bad_keys_name_the_line() {
        let dir = std::env::temp_dir().join(format!("gpt2-trainconfig-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "learning_rate = 0.01\nn_layer = 2\ndata = [\"a.txt\"]\n").unwrap();
        let file = TrainConfig::overrides_from_toml(&path).unwrap();
        let mut flags = Overrides::new();
        flags.insert("n_layer".into(), 3.into());
        let config = TrainConfig::default()
            .with_overrides(&file)
            .unwrap()
            .with_overrides(&flags)
            .unwrap();
        assert_eq!((config.lr, config.n_layer, config.batch_size), (0.01, Some(3), 12));
        assert_eq!(config.data, [dir.join("a.txt")]);
        assert_eq!(config.conflicts(&flags, &[]).unwrap(), Vec::<String>::new());
        flags.insert("n_layer".into(), 4.into());
        flags.insert("max_iters".into(), 9.into());
        assert_eq!(
            config.conflicts(&flags, &RESUMABLE_KEYS).unwrap(),
            ["n_layer = 4 (the run has 3)"]
        );
        // f32 settings print as written, not widened to f64.
        let mut lr = Overrides::new();
        lr.insert("lr".into(), 0.5.into());
        assert_eq!(config.conflicts(&lr, &[]).unwrap(), ["lr = 0.5 (the run has 0.01)"]);

        std::fs::write(&path, "lr = 0.01\n\nn_layers = 2\n").unwrap();
        let err = TrainConfig::overrides_from_toml(&path).unwrap_err().to_string();
        assert!(err.contains("line 3") && err.contains("n_layers"), "{err}");
        std::fs::write(&path, "batch_size = \"big\"\n").unwrap();
        let err = TrainConfig::overrides_from_toml(&path).unwrap_err().to_string();
        assert!(err.contains("line 1") && err.contains("batch_size"), "{err}");
        std::fs::write(&path, "learning_rate = nan\n").unwrap();
        let err = TrainConfig::overrides_from_toml(&path).unwrap_err().to_string();
        assert!(err.ends_with("lr = NaN is not a finite number"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_bundled_configs_are_valid_and_find_the_bundled_corpus() {
        for name in ["shakespeare-char", "finetune-gpt2"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("configs")
                .join(format!("{name}.toml"));
            let config = TrainConfig::default()
                .with_overrides(&TrainConfig::overrides_from_toml(&path).unwrap())
                .unwrap();
            config.validate().unwrap();
            assert!(config.data.iter().all(|p| p.is_file()), "{name}: {:?}", config.data);
        }
    }

    #[test]
    fn validation_rejects_impossible_settings() {
        let bad = [
            TrainConfig {
                batch_size: 0,
                ..Default::default()
            },
            TrainConfig {
                val_fraction: 1.0,
                ..Default::default()
            },
            TrainConfig {
                beta2: 1.0,
                ..Default::default()
            },
            TrainConfig {
                stride: Some(0),
                ..Default::default()
            },
            TrainConfig {
                warmup_iters: usize::MAX,
                ..Default::default()
            },
            TrainConfig {
                data_parallel: Some(MAX_SHARDS + 1),
                ..Default::default()
            },
            TrainConfig {
                lr: f32::NAN,
                ..Default::default()
            },
            TrainConfig {
                dropout: f32::NAN,
                ..Default::default()
            },
            TrainConfig {
                val_fraction: f64::NAN,
                ..Default::default()
            },
            TrainConfig {
                beta2: f32::INFINITY,
                ..Default::default()
            },
            TrainConfig {
                init: Some("x".into()),
                preset: Some("gpt2".into()),
                ..Default::default()
            },
        ];
        for config in bad {
            assert!(config.validate().is_err(), "{config:?}");
        }
        TrainConfig::default().validate().unwrap();
    }
}
