//! Exact-match accuracy of greedy responses on instruction records: each record's Alpaca
//! prompt is continued greedily until `<|endoftext|>` (or `max_new_tokens`), and the response
//! counts as right when it equals the record's output, leading and trailing whitespace aside.

use super::within;
use crate::data::instructions::{end_token, Instruction};
use crate::error::{Error, Result};
use crate::generate::{generate_ids_until, Sampling};
use crate::model::Gpt;
use crate::rng::Rng;
use crate::tokenizer::Tokenizer;
use serde::Serialize;

/// One record's greedy response.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Response {
    pub instruction: String,
    pub input: String,
    pub expected: String,
    pub response: String,
    pub correct: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExactMatch {
    pub items: usize,
    pub correct: usize,
    /// correct / items.
    pub exact_match: f64,
    pub responses: Vec<Response>,
}

/// The greedy response to `record`'s prompt: the text before `<|endoftext|>`.
pub fn respond(model: &Gpt, tokenizer: &Tokenizer, record: &Instruction, max_new_tokens: usize) -> Result<String> {
    let end = end_token(tokenizer)?;
    let prompt = tokenizer.encode(&record.prompt())?;
    let n = model.config.n_positions;
    if prompt.len() >= n {
        return Err(Error::Input(format!(
            "the prompt is {} tokens, longer than the model's context of {n} leaves room for",
            prompt.len()
        )));
    }
    let mut new = generate_ids_until(
        model,
        &prompt,
        max_new_tokens,
        &Sampling::greedy(),
        &[end],
        &mut Rng::new(0),
    )?;
    if new.last() == Some(&end) {
        new.pop();
    }
    Ok(String::from_utf8_lossy(&tokenizer.decode_bytes_lossy(&new)).into_owned())
}

/// Greedy responses to every record, and the fraction that match their outputs exactly.
pub fn exact_match(
    model: &Gpt,
    tokenizer: &Tokenizer,
    records: &[Instruction],
    max_new_tokens: usize,
) -> Result<ExactMatch> {
    let responses = records
        .iter()
        .enumerate()
        .map(|(i, record)| {
            let response = respond(model, tokenizer, record, max_new_tokens)
                .map_err(|e| within(&format!("record {}", i + 1), e))?;
            Ok(Response {
                instruction: record.instruction.clone(),
                input: record.input.clone(),
                expected: record.output.clone(),
                correct: response.trim() == record.output.trim(),
                response,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let correct = responses.iter().filter(|r| r.correct).count();
    Ok(ExactMatch {
        items: records.len(),
        correct,
        exact_match: correct as f64 / records.len().max(1) as f64,
        responses,
    })
}
