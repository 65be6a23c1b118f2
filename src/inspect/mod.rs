//! Looking inside GPT-2: a forward pass told step by step ([`trace`]), the logit lens
//! ([`trace::logit_lens`]), every parameter tensor with the FLOPs per token ([`summary`]),
//! attention heatmaps ([`attention_map`]), and how a training run changed the model
//! ([`evolution`]).

pub mod attention_map;
pub mod evolution;
pub mod summary;
pub mod trace;

use crate::tokenizer::Tokenizer;
use trace::{LogitLens, Trace};

/// Token `id` as text for a display: the tokenizer's piece (bytes that are not UTF-8 on their
/// own as `\xNN`), or `#id` for a model that has no tokenizer.
pub fn token_piece(tokenizer: Option<&Tokenizer>, id: u32) -> String {
    tokenizer.map_or_else(|| format!("#{id}"), |t| t.token_text(id))
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
