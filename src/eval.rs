//! Scoring text with a model: mean next-token cross-entropy and perplexity.

use crate::error::{Error, Result};
use crate::model::{Gpt, Workspace};
use crate::ops::cross_entropy::IGNORE_INDEX;
use serde::Serialize;

/// Loss and perplexity of a token sequence under a model.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Score {
    /// Number of tokens scored.
    pub tokens: usize,
    /// Number of next-token predictions (each window predicts all its tokens but the first).
    pub predictions: usize,
    /// Mean cross-entropy per prediction, in nats.
    pub loss: f64,
    /// exp(loss).
    pub perplexity: f64,
}

/// Splits `tokens` into consecutive, non-overlapping windows of at most n_positions tokens;
/// in each window, token i+1 is predicted from tokens 0..=i.
pub fn score_tokens(model: &Gpt, tokens: &[u32]) -> Result<Score> {
    if tokens.len() < 2 {
        return Err(Error::Input(format!(
            "scoring needs at least 2 tokens, got {}",
            tokens.len()
        )));
    }
    let (mut total, mut predictions) = (0.0f64, 0usize);
    let mut ws = Workspace::new();
    for window in tokens.chunks(model.config.n_positions) {
        if window.len() < 2 {
            continue; // a last window of one token predicts nothing
        }
        let targets: Vec<i32> = window[1..].iter().map(|&id| id as i32).chain([IGNORE_INDEX]).collect();
        let loss = model
            .forward(&mut ws, window, 1, window.len(), Some(&targets), None)?
            .expect("targets given");
        total += loss as f64 * (window.len() - 1) as f64;
        predictions += window.len() - 1;
    }
    let loss = total / predictions as f64;
    Ok(Score {
        tokens: tokens.len(),
        predictions,
        loss,
        perplexity: loss.exp(),
    })
}
