//! Measuring a model: the loss and perplexity of a text in sliding windows ([`perplexity`]),
//! multiple choice as HellaSwag is scored ([`choice`]), decoding strategies compared over a
//! prompt set ([`prompts`]) and exact-match accuracy on instruction records ([`exact`]).

pub mod choice;
pub mod exact;
pub mod perplexity;
pub mod prompts;

pub use perplexity::{perplexity, score_tokens, Score};

use crate::error::{Error, Result};
use crate::model::{Gpt, Workspace};
use crate::ops::cross_entropy::IGNORE_INDEX;

/// `e` as an input error that says where it happened (`what`: "item 3", "record 2", ...).
pub fn within(what: &str, e: Error) -> Error {
    match e {
        Error::Input(msg) => Error::Input(format!("{what}: {msg}")),
        other => Error::Input(format!("{what}: {other}")),
    }
}

/// The model's mean next-token loss on `continuation` given `prompt` (both non-empty), read as
/// one sequence; of a sequence longer than the context, the last n_positions tokens (the
/// continuation tokens among them, but the first, are scored).
pub fn continuation_loss(model: &Gpt, prompt: &[u32], continuation: &[u32]) -> Result<f64> {
    let all: Vec<u32> = prompt.iter().chain(continuation).copied().collect();
    let skipped = all.len().saturating_sub(model.config.n_positions);
    let (tokens, prompt_len) = (&all[skipped..], prompt.len().saturating_sub(skipped).max(1));
    // Input i predicts token i + 1, counted when that is a continuation token.
    let targets: Vec<i32> = (1..=tokens.len())
        .map(|i| match i >= prompt_len && i < tokens.len() {
            true => tokens[i] as i32,
            false => IGNORE_INDEX,
        })
        .collect();
    let loss = model.forward(&mut Workspace::new(), tokens, 1, tokens.len(), Some(&targets), None)?;
    Ok(loss.expect("targets given") as f64)
}
