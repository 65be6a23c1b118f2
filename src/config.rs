//! GPT-2 hyper-parameters, the OpenAI presets, and Hugging Face `config.json` in and out.

use crate::error::{Error, Result};
use serde_json::{json, Map, Value};
use std::path::Path;

/// The shape of a GPT-2 model. Field names follow Hugging Face's `GPT2Config`.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Number of token ids the model knows (50257 for OpenAI's GPT-2).
    pub vocab_size: usize,
    /// Longest sequence the model can read (the "block size"; 1024 for GPT-2).
    pub n_positions: usize,
    /// Width of the residual stream, C.
    pub n_embd: usize,
    /// Number of transformer blocks.
    pub n_layer: usize,
    /// Number of attention heads; head size is n_embd / n_head.
    pub n_head: usize,
    /// Hidden width of the MLP (4 * n_embd unless the config says otherwise).
    pub n_inner: usize,
    /// LayerNorm epsilon (1e-5 in GPT-2).
    pub layer_norm_epsilon: f32,
    /// Dropout probability on embeddings, attention weights and residual branches (training only).
    pub dropout: f32,
}

/// The OpenAI GPT-2 sizes, by their Hugging Face names, and nanoGPT's character-level
/// Shakespeare model.
pub const PRESETS: [&str; 5] = ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "shakespeare-char"];

impl Config {
    /// A GPT-2 configuration with the given widths and the GPT-2 defaults elsewhere.
    pub fn new(vocab_size: usize, n_positions: usize, n_embd: usize, n_layer: usize, n_head: usize) -> Self {
        Config {
            vocab_size,
            n_positions,
            n_embd,
            n_layer,
            n_head,
            n_inner: 4 * n_embd,
            layer_norm_epsilon: 1e-5,
            dropout: 0.0,
        }
    }

    /// One of OpenAI's four GPT-2 sizes: `gpt2` (124M), `gpt2-medium` (355M),
    /// `gpt2-large` (774M), `gpt2-xl` (1558M); or `shakespeare-char` (nanoGPT's 10.7M
    /// character-level model: 6 layers, 6 heads, 384 wide, 256 positions, 65 characters).
    pub fn preset(name: &str) -> Result<Self> {
        let (n_layer, n_head, n_embd) = match name {
            "gpt2" => (12, 12, 768),
            "gpt2-medium" => (24, 16, 1024),
            "gpt2-large" => (36, 20, 1280),
            "gpt2-xl" => (48, 25, 1600),
            "shakespeare-char" | "char" => return Ok(Config::new(65, 256, 384, 6, 6)),
            _ => {
                return Err(Error::Config(format!(
                    "unknown preset '{name}' (expected one of: {})",
                    PRESETS.join(", ")
                )))
            }
        };
        Ok(Config::new(50257, 1024, n_embd, n_layer, n_head))
    }

    /// Size of one attention head, C / n_head.
    pub fn head_size(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// Checks that the numbers can describe a model.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("n_positions", self.n_positions),
            ("n_embd", self.n_embd),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_inner", self.n_inner),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(Error::Config(format!("{name} must be positive")));
            }
            // Far beyond any GPT-2, and small enough that no parameter count overflows (a
            // hostile header must get an error, not an overflow or a giant allocation).
            let limit = if name == "n_layer" { 1 << 16 } else { 1 << 20 };
            if value > limit {
                return Err(Error::Config(format!(
                    "{name} = {value} is implausibly large (limit {limit})"
                )));
            }
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(Error::Config(format!(
                "n_embd ({}) must be divisible by n_head ({})",
                self.n_embd, self.n_head
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Config(format!(
                "dropout must be in [0, 1), got {}",
                self.dropout
            )));
        }
        if !(self.layer_norm_epsilon.is_finite() && self.layer_norm_epsilon > 0.0) {
            return Err(Error::Config(format!(
                "layer_norm_epsilon must be positive and finite, got {}",
                self.layer_norm_epsilon
            )));
        }
        Ok(())
    }

    /// Parses a Hugging Face `config.json`. Options that this implementation does not
    /// support (another activation, attention scaling variants, untied head) are errors.
    pub fn from_hf_json(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text).map_err(|e| Error::Config(format!("config.json: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| Error::Config("config.json: not a JSON object".into()))?;
        let int = |key: &str| -> Result<usize> {
            obj.get(key)
                .ok_or_else(|| Error::Config(format!("config.json: missing field '{key}'")))?
                .as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| Error::Config(format!("config.json: '{key}' must be a non-negative integer")))
        };
        let float_or = |key: &str, default: f64| -> Result<f64> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(x) => x
                    .as_f64()
                    .ok_or_else(|| Error::Config(format!("config.json: '{key}' must be a number"))),
            }
        };
        if let Some(model_type) = obj.get("model_type").and_then(Value::as_str) {
            if model_type != "gpt2" {
                return Err(Error::Config(format!(
                    "config.json: model_type '{model_type}' is not gpt2"
                )));
            }
        }
        // Options that change the maths: accept only GPT-2's own values.
        let activation = obj
            .get("activation_function")
            .and_then(Value::as_str)
            .unwrap_or("gelu_new");
        if !matches!(activation, "gelu_new" | "gelu_pytorch_tanh") {
            return Err(Error::Config(format!(
                "config.json: activation_function '{activation}' is not supported (only the tanh GELU, 'gelu_new')"
            )));
        }
        let flag_must_be = |key: &str, expected: bool| -> Result<()> {
            match obj.get(key).and_then(Value::as_bool) {
                Some(value) if value != expected => Err(Error::Config(format!(
                    "config.json: {key} = {value} is not supported (only {expected})"
                ))),
                _ => Ok(()),
            }
        };
        flag_must_be("scale_attn_weights", true)?;
        flag_must_be("scale_attn_by_inverse_layer_idx", false)?;
        flag_must_be("reorder_and_upcast_attn", false)?;
        flag_must_be("add_cross_attention", false)?;
        flag_must_be("tie_word_embeddings", true)?;

        let n_embd = int("n_embd")?;
        let n_inner = match obj.get("n_inner") {
            None | Some(Value::Null) => n_embd.saturating_mul(4), // an absurd n_embd fails validation
            Some(_) => int("n_inner")?,
        };
        let config = Config {
            vocab_size: int("vocab_size")?,
            n_positions: int("n_positions")?,
            n_embd,
            n_layer: int("n_layer")?,
            n_head: int("n_head")?,
            n_inner,
            layer_norm_epsilon: float_or("layer_norm_epsilon", 1e-5)? as f32,
            dropout: float_or("resid_pdrop", 0.0)? as f32,
        };
        config.validate()?;
        Ok(config)
    }

    /// Reads `config.json` from a file.
    pub fn from_hf_file(path: &Path) -> Result<Self> {
        let text = crate::files::read_to_string(path, crate::files::SETTINGS_MAX_BYTES)?;
        Config::from_hf_json(&text).map_err(|e| match e {
            // The file's path stands in for the generic "config.json: " of the text parser.
            Error::Config(msg) => Error::Config(format!(
                "{}: {}",
                path.display(),
                msg.strip_prefix("config.json: ").unwrap_or(&msg)
            )),
            other => other,
        })
    }

    /// The Hugging Face `config.json` for this model (loadable by `GPT2LMHeadModel`).
    pub fn to_hf_json(&self) -> String {
        let mut obj = Map::new();
        let fields = [
            ("architectures", json!(["GPT2LMHeadModel"])),
            ("model_type", json!("gpt2")),
            ("vocab_size", json!(self.vocab_size)),
            ("n_positions", json!(self.n_positions)),
            ("n_ctx", json!(self.n_positions)),
            ("n_embd", json!(self.n_embd)),
            ("n_layer", json!(self.n_layer)),
            ("n_head", json!(self.n_head)),
            ("n_inner", json!(self.n_inner)),
            ("activation_function", json!("gelu_new")),
            ("layer_norm_epsilon", json!(self.layer_norm_epsilon)),
            ("resid_pdrop", json!(self.dropout)),
            ("embd_pdrop", json!(self.dropout)),
            ("attn_pdrop", json!(self.dropout)),
            ("initializer_range", json!(0.02)),
            ("scale_attn_weights", json!(true)),
            ("tie_word_embeddings", json!(true)),
        ];
        for (key, value) in fields {
            obj.insert(key.to_string(), value);
        }
        // GPT-2's <|endoftext|> doubles as begin and end of text, when the vocabulary has it;
        // otherwise null, which transformers' GPT2Config would default to 50256.
        let eot = (self.vocab_size > 50256).then_some(50256);
        obj.insert("bos_token_id".into(), json!(eot));
        obj.insert("eos_token_id".into(), json!(eot));
        serde_json::to_string_pretty(&Value::Object(obj)).expect("a JSON map always serialises")
    }
}
