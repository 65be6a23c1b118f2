//! Multiple choice in HellaSwag's JSONL, scored as Karpathy's `hellaswag.py` scores it.
//!
//! Each line is `{"ctx": ..., "endings": [...], "label": i}`. Every ending is encoded as
//! `" " + ending` after the context's ids, and the pair is one sequence; the ending's tokens are
//! scored by their next-token losses given everything before them. `acc` picks the ending of
//! least summed loss, `acc_norm` the one of least mean loss per token (which does not favour
//! short endings).

use super::within;
use crate::error::{Error, Result};
use crate::model::{Gpt, Workspace};
use crate::ops::cross_entropy::IGNORE_INDEX;
use crate::tokenizer::Tokenizer;
use serde::Serialize;
use serde_json::Value;
use std::path::Path;

/// The most bytes a choice file may have.
const MAX_FILE_BYTES: u64 = 1 << 30;

/// One multiple-choice item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChoiceItem {
    pub ctx: String,
    pub endings: Vec<String>,
    /// The index of the right ending.
    pub label: usize,
}

/// The answer to one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Prediction {
    pub label: usize,
    /// The ending of least summed loss.
    pub pred: usize,
    /// The ending of least mean loss.
    pub pred_norm: usize,
}

/// Accuracy over a file of items.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChoiceScore {
    pub items: usize,
    pub acc: f64,
    pub acc_norm: f64,
    pub predictions: Vec<Prediction>,
}

/// Reads the items of a HellaSwag-style JSONL file (one object per non-empty line). A line that
/// is not an item (no `ctx`, fewer than two `endings`, a `label` that is not an index into
/// them) is an error naming the file and the line; a file without items is one too. The label
/// may be a number or a string of digits (as some HellaSwag exports write it).
pub fn read_choices(path: &Path) -> Result<Vec<ChoiceItem>> {
    let bytes = crate::files::read(path, MAX_FILE_BYTES)?;
    let text =
        String::from_utf8(bytes).map_err(|e| Error::Input(format!("{}: not UTF-8 text: {e}", path.display())))?;
    let items = text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| item(line).map_err(|what| Error::Input(format!("{}: line {}: {what}", path.display(), i + 1))))
        .collect::<Result<Vec<_>>>()?;
    if items.is_empty() {
        return Err(Error::Input(format!(
            "{}: the file holds no items (one JSON object per line: ctx, endings, label)",
            path.display()
        )));
    }
    Ok(items)
}

fn item(line: &str) -> std::result::Result<ChoiceItem, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let ctx = value
        .get("ctx")
        .and_then(Value::as_str)
        .ok_or("no \"ctx\" string")?
        .to_string();
    let endings: Vec<String> = value
        .get("endings")
        .and_then(Value::as_array)
        .and_then(|e| e.iter().map(|s| s.as_str().map(str::to_string)).collect())
        .ok_or("no \"endings\" array of strings")?;
    if endings.len() < 2 {
        return Err(format!("{} ending(s): a choice needs at least 2", endings.len()));
    }
    let label = match value.get("label") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => return Err("no \"label\"".into()),
    }
    .ok_or_else(|| format!("the label {} is not an index", value["label"]))?;
    if label >= endings.len() as u64 {
        return Err(format!(
            "the label {label} is out of range: there are {} endings (0 to {})",
            endings.len(),
            endings.len() - 1
        ));
    }
    Ok(ChoiceItem {
        ctx,
        endings,
        label: label as usize,
    })
}

/// The summed and the mean loss of each ending of `item` given its context.
pub fn ending_losses(
    model: &Gpt,
    tokenizer: &Tokenizer,
    item: &ChoiceItem,
    ws: &mut Workspace,
) -> Result<Vec<(f64, f64)>> {
    let ctx = tokenizer.encode(&item.ctx)?;
    let endings = item
        .endings
        .iter()
        .map(|ending| tokenizer.encode(&format!(" {ending}")))
        .collect::<Result<Vec<_>>>()?;
    let n = model.config.n_positions;
    let t = ctx.len() + endings.iter().map(Vec::len).max().unwrap_or(0);
    if t > n {
        return Err(Error::Input(format!(
            "context and ending are {t} tokens, more than the model's context of {n}"
        )));
    }
    if ctx.is_empty() || endings.iter().any(Vec::is_empty) {
        return Err(Error::Input(
            "the context and every ending need at least one token".into(),
        ));
    }
    // One row per ending, padded with id 0: [E, T]. Input i predicts token i + 1, counted when
    // that token belongs to the ending.
    let (mut inputs, mut targets) = (Vec::new(), Vec::new());
    for ending in &endings {
        let row: Vec<u32> = ctx.iter().chain(ending).copied().collect();
        inputs.extend(row.iter().copied().chain(std::iter::repeat_n(0, t - row.len())));
        targets.extend((1..=t).map(|i| match i >= ctx.len() && i < row.len() {
            true => row[i] as i32,
            false => IGNORE_INDEX,
        }));
    }
    model.forward(ws, &inputs, endings.len(), t, Some(&targets), None)?;
    let row_loss = &ws.activations().row_loss;
    Ok(endings
        .iter()
        .enumerate()
        .map(|(e, ending)| {
            let sum: f64 = row_loss[e * t..][..t].iter().map(|&l| l as f64).sum();
            (sum, sum / ending.len() as f64)
        })
        .collect())
}

/// Scores every item: acc by least summed loss, acc_norm by least mean loss (the first ending
/// wins a tie, as argmin does).
pub fn score_choices(model: &Gpt, tokenizer: &Tokenizer, items: &[ChoiceItem]) -> Result<ChoiceScore> {
    let mut ws = Workspace::new();
    let predictions = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let losses =
                ending_losses(model, tokenizer, item, &mut ws).map_err(|e| within(&format!("item {}", i + 1), e))?;
            let argmin = |key: fn(&(f64, f64)) -> f64| {
                (0..losses.len()).fold(0, |best, e| if key(&losses[e]) < key(&losses[best]) { e } else { best })
            };
            Ok(Prediction {
                label: item.label,
                pred: argmin(|l| l.0),
                pred_norm: argmin(|l| l.1),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let fraction = |right: usize| right as f64 / items.len().max(1) as f64;
    Ok(ChoiceScore {
        items: items.len(),
        acc: fraction(predictions.iter().filter(|p| p.pred == p.label).count()),
        acc_norm: fraction(predictions.iter().filter(|p| p.pred_norm == p.label).count()),
        predictions,
    })
}
