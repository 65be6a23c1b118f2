//! The metrics log `metrics.jsonl`: one JSON object per line, per training step and per
//! evaluation (the lines with `val_loss`). A loss, norm or perplexity that overflowed is written
//! as `null` and read back as NaN.

use crate::error::Result;
use crate::runlog::jsonl::{null_as_nan, JsonLines, LogRecord};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The file name of the metrics log in a run directory.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// One optimizer step. `step` counts from 0; the loss is that of the step's batch before the
/// update, as nanoGPT logs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: usize,
    #[serde(deserialize_with = "null_as_nan")]
    pub train_loss: f32,
    #[serde(deserialize_with = "null_as_nan")]
    pub lr: f32,
    /// Global gradient norm before clipping.
    #[serde(deserialize_with = "null_as_nan")]
    pub grad_norm: f32,
    /// Tokens trained on before this step.
    pub tokens: u64,
    /// The step's tokens (padding not counted) over its wall time.
    pub tokens_per_s: f64,
    /// Wall time of this step (0 in logs written before it was recorded).
    #[serde(default)]
    pub step_s: f64,
    /// Training time so far (over all sessions of a resumed run).
    pub elapsed_s: f64,
}

/// One evaluation of the model after `step` updates: mean losses over the fixed evaluation
/// batches of each split, their perplexities, and a sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    pub step: usize,
    #[serde(deserialize_with = "null_as_nan")]
    pub train_loss: f32,
    #[serde(deserialize_with = "null_as_nan")]
    pub val_loss: f32,
    #[serde(deserialize_with = "null_as_nan")]
    pub train_perplexity: f32,
    #[serde(deserialize_with = "null_as_nan")]
    pub val_perplexity: f32,
    #[serde(deserialize_with = "null_as_nan")]
    pub lr: f32,
    pub tokens: u64,
    pub elapsed_s: f64,
    pub sample: String,
}

/// A line of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Record {
    Eval(EvalRecord),
    Step(StepRecord),
}

impl LogRecord for Record {
    const WHAT: &'static str = "metrics record";

    fn step(&self) -> usize {
        match self {
            Record::Eval(e) => e.step,
            Record::Step(s) => s.step,
        }
    }
}

/// Everything logged so far (for the plots).
#[derive(Debug, Clone, Default)]
pub struct History {
    pub steps: Vec<StepRecord>,
    pub evals: Vec<EvalRecord>,
}

impl History {
    fn push(&mut self, record: Record) {
        match record {
            Record::Eval(e) => self.evals.push(e),
            Record::Step(s) => self.steps.push(s),
        }
    }
}

/// The open log of a run, and what it holds.
pub struct MetricsLog {
    lines: JsonLines<Record>,
    pub history: History,
}

impl MetricsLog {
    /// Opens `path` for appending, dropping the lines of steps at or after `from_step` (see
    /// [`JsonLines::open`]).
    pub fn open(path: &Path, from_step: usize) -> Result<MetricsLog> {
        let (lines, kept) = JsonLines::open(path, from_step)?;
        let mut history = History::default();
        kept.into_iter().for_each(|record| history.push(record));
        Ok(MetricsLog { lines, history })
    }

    pub fn append(&mut self, record: Record) -> Result<()> {
        self.lines.append(&record)?;
        self.history.push(record);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reopening_drops_the_lines_after_the_checkpoint_and_a_torn_last_line() {
        let dir = std::env::temp_dir().join(format!("gpt2-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("metrics.jsonl");
        let _ = std::fs::remove_file(&path);
        let step = |step| {
            Record::Step(StepRecord {
                step,
                train_loss: 1.0,
                lr: 0.1,
                grad_norm: 2.0,
                tokens: 0,
                tokens_per_s: 1.0,
                step_s: 1.0,
                elapsed_s: 0.0,
            })
        };
        let eval = Record::Eval(EvalRecord {
            step: 2,
            train_loss: 1.0,
            val_loss: 1.5,
            train_perplexity: 1.0f32.exp(),
            val_perplexity: 1.5f32.exp(),
            lr: 0.1,
            tokens: 8,
            elapsed_s: 0.5,
            sample: "hi".into(),
        });
        let mut log = MetricsLog::open(&path, 0).unwrap();
        for record in [step(0), step(1), eval.clone(), step(2), step(3)] {
            log.append(record).unwrap();
        }
        drop(log);
        let mut torn = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        torn.write_all(b"{\"step\": 4, \"train_lo").unwrap();
        let log = MetricsLog::open(&path, 2).unwrap();
        assert_eq!(log.history.steps.len(), 2);
        assert!(log.history.evals.is_empty());
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2);
        let line = serde_json::to_string(&eval).unwrap();
        assert!(line.contains("\"val_loss\":1.5") && line.contains("\"train_loss\":1.0"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_step_line_from_before_step_s_still_reads() {
        let line = r#"{"step":1,"train_loss":9.7,"lr":0.1,"grad_norm":2.0,"tokens":3072,"tokens_per_s":41549.8,"elapsed_s":0.93}"#;
        match serde_json::from_str::<Record>(line).unwrap() {
            Record::Step(step) => assert_eq!((step.tokens, step.step_s), (3072, 0.0)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn overflowed_values_are_read_back_as_nan() {
        let dir = std::env::temp_dir().join(format!("gpt2-metrics-nan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("metrics.jsonl");
        let _ = std::fs::remove_file(&path);
        let mut log = MetricsLog::open(&path, 0).unwrap();
        log.append(Record::Step(StepRecord {
            step: 0,
            train_loss: 90.0,
            lr: 0.1,
            grad_norm: f32::INFINITY,
            tokens: 0,
            tokens_per_s: 1.0,
            step_s: 1.0,
            elapsed_s: 0.0,
        }))
        .unwrap();
        log.append(Record::Eval(EvalRecord {
            step: 1,
            train_loss: 90.0,
            val_loss: f32::NAN,
            train_perplexity: 90.0f32.exp(), // overflows to infinity
            val_perplexity: f32::NAN,
            lr: 0.1,
            tokens: 8,
            elapsed_s: 0.5,
            sample: String::new(),
        }))
        .unwrap();
        drop(log);
        let log = MetricsLog::open(&path, 2).unwrap();
        assert!(log.history.steps[0].grad_norm.is_nan());
        let eval = &log.history.evals[0];
        assert!(eval.train_perplexity.is_nan() && eval.val_loss.is_nan() && eval.val_perplexity.is_nan());
        assert_eq!(eval.train_loss, 90.0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
