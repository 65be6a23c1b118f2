//! LoRA adapters in Hugging Face PEFT's files, both ways: `adapter_config.json` (peft_type LORA,
//! task_type CAUSAL_LM, r, lora_alpha, target_modules, fan_in_fan_out true for GPT-2's Conv1D)
//! and `adapter_model.safetensors` with the tensors
//! `base_model.model.transformer.h.{l}.<module>.lora_A.weight` [r, in] and `...lora_B.weight`
//! [out, r]. `PeftModel.from_pretrained(GPT2LMHeadModel..., dir)` loads what we write, and we
//! load what PEFT writes: unknown configuration keys are ignored, options that change the
//! computation in ways we do not implement (DoRA, rsLoRA, biases, ...) are refused by name.
//!
//! An adapter that trains the token embedding is saved with `modules_to_save = ["wte",
//! "lm_head"]` and both copies, `base_model.model.transformer.wte.weight` and
//! `base_model.model.lm_head.weight` [V, C], equal: PEFT keeps a copy per module (it does not
//! tie GPT-2's `wte` to its `lm_head`), so both are needed for it to compute what our tied
//! model does, and we load only that pair, equal.

use super::atomic::write_synced;
use super::mapped::MappedFile;
use super::param_buffer::check_shape;
use super::safetensors::{write_safetensors, TensorOut};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::files;
use crate::model::lora::{lora_specs, Lora, LoraConfig, Target, WTE_NAME};
use crate::model::TensorSpec;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
/// The name PEFT saves a `modules_to_save` copy of the LM head under: our trained wte again.
const LM_HEAD_NAME: &str = "base_model.model.lm_head.weight";
/// `modules_to_save` of an adapter with a trained wte.
const MODULES_TO_SAVE: [&str; 2] = ["wte", "lm_head"];

/// Whether `dir` holds an adapter (its `adapter_config.json`).
pub fn is_adapter_dir(dir: &Path) -> bool {
    dir.join(ADAPTER_CONFIG).is_file()
}

/// `x` in JSON as Python writes the float it stands for: the shortest decimal that reads back
/// as x (0.1, where the f32 widened to f64 would print 0.10000000149011612).
fn decimal(x: f32) -> Value {
    json!(x.to_string().parse::<f64>().expect("an f32 prints as a decimal number"))
}

/// Writes `adapter_config.json` and `adapter_model.safetensors` into the existing directory
/// `dir`, as PEFT's `save_pretrained` does; `base` is recorded as `base_model_name_or_path`.
pub fn write_adapter_files(lora: &Lora, cfg: &Config, base: Option<&str>, dir: &Path) -> Result<()> {
    let c = &lora.config;
    // lora_alpha as PEFT writes it: an integer when it is one.
    let alpha = match c.alpha.fract() == 0.0 {
        true => json!(c.alpha as i64),
        false => decimal(c.alpha),
    };
    let config = json!({
        "alpha_pattern": {},
        "auto_mapping": null,
        "base_model_name_or_path": base,
        "bias": "none",
        "fan_in_fan_out": true,
        "inference_mode": true,
        "init_lora_weights": true,
        "layers_pattern": null,
        "layers_to_transform": null,
        "lora_alpha": alpha,
        "lora_dropout": decimal(c.dropout),
        "modules_to_save": c.train_wte.then_some(MODULES_TO_SAVE),
        "peft_type": "LORA",
        "r": c.r,
        "rank_pattern": {},
        "revision": null,
        "target_modules": c.targets.iter().map(|t| t.name()).collect::<Vec<_>>(),
        "task_type": "CAUSAL_LM",
        "use_dora": false,
        "use_rslora": false,
    });
    let text = serde_json::to_string_pretty(&config).map_err(|e| Error::Input(e.to_string()))?;
    write_synced(&dir.join(ADAPTER_CONFIG), |w| w.write_all(text.as_bytes()))?;
    let specs = lora.specs(cfg);
    let mut tensors = TensorOut::all_of(&specs, &lora.params);
    if let Some(wte) = tensors.iter().find(|t| t.name == WTE_NAME) {
        tensors.push(TensorOut {
            name: LM_HEAD_NAME,
            ..*wte
        });
    }
    write_synced(&dir.join(ADAPTER_WEIGHTS), |w| write_safetensors(w, &tensors))
}

/// Whether a configuration value asks for an option.
type Asks = fn(&Value) -> bool;

/// PEFT options that change what the adapter computes, which we do not implement: (key, whether
/// the value asks for it, what it is).
const UNSUPPORTED: [(&str, Asks, &str); 9] = [
    ("use_dora", is_true, "DoRA (weight-decomposed LoRA)"),
    ("use_rslora", is_true, "rank-stabilised LoRA (scale alpha/sqrt(r))"),
    ("lora_bias", is_true, "trained biases in lora_B"),
    ("use_qalora", is_true, "QA-LoRA"),
    (
        "bias",
        |v| !(v.is_null() || v == "none"),
        "trained biases (only bias \"none\" is supported)",
    ),
    ("rank_pattern", is_set, "per-layer ranks"),
    ("alpha_pattern", is_set, "per-layer alphas"),
    ("layers_to_transform", is_set, "adapters on some layers only"),
    ("layer_replication", is_set, "replicated layers"),
];

fn is_true(v: &Value) -> bool {
    v == true
}

/// Set to something: not null, an empty list or an empty map.
fn is_set(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => true,
    }
}

/// Reads an adapter directory (ours or PEFT's) for a base model shaped `cfg`. The targets are
/// the layers its tensors adapt; each must be adapted in every block, with the shapes the base
/// and r give.
pub fn load_adapter(dir: &Path, cfg: &Config) -> Result<Lora> {
    let config_path = dir.join(ADAPTER_CONFIG);
    if !config_path.is_file() {
        return Err(Error::weights(
            dir,
            format!(
                "not a LoRA adapter: no {ADAPTER_CONFIG} (an adapter directory as PEFT's save_pretrained writes it)"
            ),
        ));
    }
    let text = files::read_to_string(&config_path, files::SETTINGS_MAX_BYTES)?;
    let json: Value =
        serde_json::from_str(&text).map_err(|e| Error::weights(&config_path, format!("invalid JSON: {e}")))?;
    let bad = |msg: String| Error::weights(&config_path, msg);
    let obj = json.as_object().ok_or_else(|| bad("expected a JSON object".into()))?;
    match obj.get("peft_type").and_then(Value::as_str) {
        Some("LORA") => {}
        other => return Err(bad(format!("peft_type is {other:?}: only LORA adapters are supported"))),
    }
    for (key, asks, what) in UNSUPPORTED {
        if let Some(value) = obj.get(key).filter(|v| asks(v)) {
            return Err(bad(format!("{key} = {value}: {what} is not supported")));
        }
    }
    let r = match obj.get("r").map(|v| (v.as_u64(), v)) {
        Some((Some(r), _)) => r as usize,
        Some((None, v)) => return Err(bad(format!("r = {v}: expected a whole number"))),
        None => return Err(bad("missing r (the rank)".into())),
    };
    let number = |key: &str, default: f64| match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_f64().ok_or_else(|| bad(format!("{key} = {v}: expected a number"))),
    };
    // PEFT's defaults: lora_alpha 8, lora_dropout 0.
    let (alpha, dropout) = (number("lora_alpha", 8.0)? as f32, number("lora_dropout", 0.0)? as f32);
    let train_wte = match obj.get("modules_to_save").filter(|v| is_set(v)) {
        None => false,
        Some(v) if is_trained_wte(v) => true,
        Some(v) => {
            return Err(bad(format!(
                "modules_to_save = {v}: of fully trained modules only the token embedding is supported, \
                 as [\"wte\", \"lm_head\"] (this model ties the two)"
            )))
        }
    };

    let path = dir.join(ADAPTER_WEIGHTS);
    let file = MappedFile::open(&path)?;
    let tensors = file.tensors()?;
    let mut targets = BTreeSet::new();
    for (name, _) in tensors.iter() {
        if train_wte && (name == WTE_NAME || name == LM_HEAD_NAME) {
            continue;
        }
        let (l, target) = parse_tensor_name(name).ok_or_else(|| {
            Error::weights(
                &path,
                format!("unexpected tensor '{name}': not a LoRA tensor of a GPT-2 block (base_model.model.transformer.h.<l>.<module>.lora_A.weight or lora_B.weight)"),
            )
        })?;
        if l >= cfg.n_layer {
            return Err(Error::weights(
                &path,
                format!(
                    "tensor '{name}' adapts block {l}, but the base model has {} blocks",
                    cfg.n_layer
                ),
            ));
        }
        targets.insert(target);
    }
    let config = LoraConfig {
        r,
        alpha,
        dropout,
        targets: targets.into_iter().collect(),
        train_wte,
    };
    config.validate().map_err(|e| bad(e.to_string()))?;
    let found: HashMap<&str, _> = tensors.iter().collect();
    let source = format!(
        "r = {r} and the base model (n_embd {}, n_inner {})",
        cfg.n_embd, cfg.n_inner
    );
    let specs = lora_specs(cfg, &config);
    // Every tensor present with its shape before anything is allocated: the sizes are then
    // those of the file, not of a rank read from the configuration.
    let mut views = Vec::with_capacity(specs.len());
    for spec in &specs {
        let view = found
            .get(spec.name.as_str())
            .ok_or_else(|| Error::weights(&path, format!("missing tensor '{}'", spec.name)))?;
        check_shape(&path, &spec.name, view.shape(), &spec.shape, &source)?;
        views.push(view);
    }
    let mut params = vec![0.0; specs.iter().map(TensorSpec::numel).sum()];
    let mut offset = 0;
    for (spec, view) in specs.iter().zip(views) {
        let slot = &mut params[offset..offset + spec.numel()];
        file.read_f32(view.dtype(), view.data(), slot)
            .map_err(|msg| Error::weights(&path, format!("tensor '{}': {msg}", spec.name)))?;
        if let Some(bad) = slot.iter().find(|x| !x.is_finite()) {
            return Err(Error::weights(&path, format!("tensor '{}' holds {bad}", spec.name)));
        }
        offset += spec.numel();
    }
    let lora = Lora { config, params };
    if let Some(wte) = lora.wte(cfg) {
        let head = found
            .get(LM_HEAD_NAME)
            .ok_or_else(|| Error::weights(&path, format!("missing tensor '{LM_HEAD_NAME}'")))?;
        check_shape(
            &path,
            LM_HEAD_NAME,
            head.shape(),
            &[cfg.vocab_size, cfg.n_embd],
            &source,
        )?;
        let mut values = vec![0.0; wte.len()];
        file.read_f32(head.dtype(), head.data(), &mut values)
            .map_err(|msg| Error::weights(&path, format!("tensor '{LM_HEAD_NAME}': {msg}")))?;
        if values != wte {
            return Err(Error::weights(
                &path,
                format!(
                    "'{LM_HEAD_NAME}' differs from '{WTE_NAME}': this model ties its LM head to its token embedding"
                ),
            ));
        }
    }
    Ok(lora)
}

/// Whether `modules_to_save` names the token embedding and the LM head, and nothing else
/// (PEFT matches a name against the end of a module's path).
fn is_trained_wte(modules: &Value) -> bool {
    let Some(list) = modules.as_array() else { return false };
    let names: BTreeSet<&str> = list
        .iter()
        .filter_map(Value::as_str)
        .map(|m| m.strip_prefix("transformer.").unwrap_or(m))
        .collect();
    list.len() == names.len() && names == BTreeSet::from(MODULES_TO_SAVE)
}

/// (block, target) of a PEFT tensor name `base_model.model.transformer.h.{l}.<module>.lora_{A,B}.weight`.
fn parse_tensor_name(name: &str) -> Option<(usize, Target)> {
    let rest = name.strip_prefix("base_model.model.transformer.h.")?;
    let (l, rest) = rest.split_once('.')?;
    let module = rest
        .strip_suffix(".lora_A.weight")
        .or_else(|| rest.strip_suffix(".lora_B.weight"))?;
    let target = Target::ALL.into_iter().find(|t| t.module() == module)?;
    Some((l.parse().ok()?, target))
}

/// Loads the adapter in `dir` for `model` and folds it into the model's weights (as PEFT's
/// `merge_and_unload`): the model then computes what the base with the adapter does.
pub fn merge_adapter(model: &mut crate::model::Gpt, dir: &Path) -> Result<()> {
    load_adapter(dir, &model.config)?.merge_into(model);
    Ok(())
}
