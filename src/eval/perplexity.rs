//! Loss and perplexity of a text, in sliding windows as Hugging Face's perplexity guide
//! computes them.
//!
//! The model sees at most n_positions tokens at once. Windows of n_positions tokens start at
//! 0, S, 2S, ... (S the stride); each window scores only the tokens the previous window did not
//! reach, each predicted from everything before it in the window, and the first window scores
//! all but its first token. With S = n_positions the windows do not overlap (each predicts its
//! tokens 2..n, as `gpt2 score` does); a smaller S gives every scored token more context, at
//! n_positions / S times the work.

use crate::error::{Error, Result};
use crate::model::{Gpt, Workspace};
use crate::ops::cross_entropy::IGNORE_INDEX;
use serde::Serialize;

/// Loss and perplexity of a token sequence under a model.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Score {
    /// Number of tokens in the text.
    pub tokens: usize,
    /// Number of next-token predictions scored.
    pub predictions: usize,
    /// Mean cross-entropy per prediction, in nats.
    pub loss: f64,
    /// exp(loss).
    pub perplexity: f64,
}

/// Non-overlapping windows of n_positions tokens; in each window, token i+1 is predicted from
/// tokens 0..=i ([`perplexity`] with stride n_positions).
pub fn score_tokens(model: &Gpt, tokens: &[u32]) -> Result<Score> {
    perplexity(model, tokens, model.config.n_positions)
}

/// Sliding-window loss with windows of n_positions tokens advancing by `stride` (1..=n_positions).
pub fn perplexity(model: &Gpt, tokens: &[u32], stride: usize) -> Result<Score> {
    let n = model.config.n_positions;
    if !(1..=n).contains(&stride) {
        return Err(Error::Input(format!(
            "the stride must be between 1 and the model's context of {n} tokens, got {stride}"
        )));
    }
    if tokens.len() < 2 {
        return Err(Error::Input(format!(
            "scoring needs at least 2 tokens, got {}",
            tokens.len()
        )));
    }
    let (mut total, mut predictions) = (0.0f64, 0usize);
    let mut ws = Workspace::new();
    // Tokens before `scored_to` were scored by an earlier window.
    let mut scored_to = 1;
    for begin in (0..tokens.len()).step_by(stride) {
        let end = (begin + n).min(tokens.len());
        let window = &tokens[begin..end];
        // Input i predicts token begin + i + 1, scored once past what earlier windows scored.
        let targets: Vec<i32> = (0..window.len())
            .map(|i| match begin + i + 1 {
                at if at >= scored_to && at < end => tokens[at] as i32,
                _ => IGNORE_INDEX,
            })
            .collect();
        let count = targets.iter().filter(|&&y| y != IGNORE_INDEX).count();
        if count > 0 {
            let loss = model
                .forward(&mut ws, window, 1, window.len(), Some(&targets), None)?
                .expect("targets given");
            total += loss as f64 * count as f64;
            predictions += count;
        }
        scored_to = end;
        if end == tokens.len() {
            break;
        }
    }
    let loss = total / predictions as f64;
    Ok(Score {
        tokens: tokens.len(),
        predictions,
        loss,
        perplexity: loss.exp(),
    })
}
