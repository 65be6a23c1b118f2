//! Looking inside GPT-2: a forward pass told step by step ([`trace`]), the logit lens
//! ([`trace::logit_lens`]), every parameter tensor with the FLOPs per token ([`summary`]),
//! attention heatmaps ([`attention_map`]), and how a training run changed the model
//! ([`evolution`]).

pub mod attention_map;
pub mod evolution;
pub mod summary;
pub mod trace;

use crate::model::workspace::BlockActs;
use crate::model::Gpt;
use crate::ops::attention::{attention_probs, AttnShape};
use crate::tokenizer::Tokenizer;
use trace::{LogitLens, Trace};

/// Token `id` as text for a display: the tokenizer's piece (bytes that are not UTF-8 on their
/// own as `\xNN`), or `#id` for a model that has no tokenizer.
pub fn token_piece(tokenizer: Option<&Tokenizer>, id: u32) -> String {
    tokenizer.map_or_else(|| format!("#{id}"), |t| t.token_text(id))
}

/// The attention probabilities P [NH, T, T] of every head of a block, from the activations a
/// forward pass over one sequence of T tokens left (its queries, keys and log-sum-exps: the
/// pass itself keeps no [T, T] matrix).
pub fn layer_attention(model: &Gpt, block: &BlockActs, t: usize) -> Vec<f32> {
    let shape = AttnShape {
        b: 1,
        t,
        c: model.config.n_embd,
        n_head: model.config.n_head,
    };
    attention_probs(&block.qkv, &block.att_lse, shape)
}

/// A trace as `gpt2 inspect --json` prints it (and `gpt2 serve`'s /v1/inspect answers): the
/// trace's fields, with `logit_lens` when there is one.
pub fn trace_report(trace: &Trace, lens: Option<&LogitLens>) -> serde_json::Result<serde_json::Value> {
    let mut out = serde_json::to_value(trace)?;
    if let Some(lens) = lens {
        out["logit_lens"] = serde_json::to_value(lens)?;
    }
    Ok(out)
}
