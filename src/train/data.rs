//! What a run trains on: windows of a token corpus, or whole instruction examples.

use crate::data::instructions::{encode_examples, end_token, fill_batch, read_instructions, Example};
use crate::data::{Batch, Dataset, Split};
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;
use std::path::Path;

pub enum TrainData {
    /// A token corpus: every batch row is a window of block_size + 1 consecutive ids.
    Tokens(Dataset),
    /// Instruction records ([`crate::data::instructions`]): every batch row is one example,
    /// the batch padded to its longest, the loss on the responses only.
    Instructions {
        train: Vec<Example>,
        val: Vec<Example>,
        /// `<|endoftext|>`, which pads.
        pad: u32,
    },
}

impl TrainData {
    /// The records of the instruction file `path`, encoded; those of `val_path` validate, or
    /// without it the last `val_fraction` of `path`'s (at least one), the rest train.
    pub fn instructions(
        path: &Path,
        val_path: Option<&Path>,
        tokenizer: &Tokenizer,
        block_size: usize,
        val_fraction: f64,
    ) -> Result<TrainData> {
        let records = read_instructions(path)?;
        let pad = end_token(tokenizer)?;
        let mut train = encode_examples(&records, tokenizer, block_size, path)?;
        if let Some(val_path) = val_path {
            let val = encode_examples(&read_instructions(val_path)?, tokenizer, block_size, val_path)?;
            return Ok(TrainData::Instructions { train, val, pad });
        }
        let n_val = ((records.len() as f64 * val_fraction) as usize).max(1);
        if n_val >= records.len() {
            return Err(Error::Input(format!(
                "{}: {} record(s) leave none to train on once {n_val} validate (give more records or a smaller --val-fraction)",
                path.display(),
                records.len()
            )));
        }
        let val = train.split_off(records.len() - n_val);
        Ok(TrainData::Instructions { train, val, pad })
    }

    /// The length that the batch stream and the evaluation windows take for `split`, with
    /// windows of `t + 1`: a corpus split's tokens, or for examples n + t, so that the window
    /// starts they draw (0..=len - t - 1) are the example indices 0..n.
    pub fn span(&self, split: Split, t: usize) -> usize {
        match self {
            TrainData::Tokens(data) => data.split(split).len(),
            TrainData::Instructions { train, val, .. } => {
                t + match split {
                    Split::Train => train.len(),
                    Split::Val => val.len(),
                }
            }
        }
    }

    /// Fills `batch` from the window starts (example indices) `starts`; returns its T (`t` for
    /// corpus windows, the longest example's for instructions) and the tokens it trains on:
    /// B·T for windows, the examples' own without their padding.
    pub fn fill(&self, split: Split, starts: &[usize], t: usize, batch: &mut Batch) -> (usize, usize) {
        match self {
            TrainData::Tokens(data) => {
                data.fill(split, starts, t, batch);
                (t, starts.len() * t)
            }
            TrainData::Instructions { train, val, pad } => {
                let examples = if split == Split::Train { train } else { val };
                let rows: Vec<&Example> = starts.iter().map(|&i| &examples[i]).collect();
                let tokens = rows.iter().map(|e| e.tokens.len() - 1).sum();
                (fill_batch(&rows, *pad, batch), tokens)
            }
        }
    }

    /// Tokens in the train and the validation split.
    pub fn split_tokens(&self) -> [usize; 2] {
        match self {
            TrainData::Tokens(data) => [data.train.len(), data.val.len()],
            TrainData::Instructions { train, val, .. } => {
                let tokens = |examples: &[Example]| examples.iter().map(|e| e.tokens.len()).sum();
                [tokens(train), tokens(val)]
            }
        }
    }

    /// Examples in the train and the validation split (None for a corpus).
    pub fn records(&self) -> Option<[usize; 2]> {
        match self {
            TrainData::Tokens(_) => None,
            TrainData::Instructions { train, val, .. } => Some([train.len(), val.len()]),
        }
    }
}
