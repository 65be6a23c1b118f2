//! The metrics log `metrics.jsonl`: one JSON object per line, per training step and per
//! evaluation (the lines with `val_loss`).

use crate::error::{Error, Result};
use crate::io::atomic::write_file;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One optimizer step. `step` counts from 0; the loss is that of the step's batch before the
/// update, as nanoGPT logs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: usize,
    pub train_loss: f32,
    pub lr: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// Tokens trained on before this step.
    pub tokens: u64,
    pub tokens_per_s: f64,
    /// Training time so far (over all sessions of a resumed run).
    pub elapsed_s: f64,
}

/// One evaluation of the model after `step` updates: mean losses over the fixed evaluation
/// batches of each split, their perplexities, and a sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    pub step: usize,
    pub train_loss: f32,
    pub val_loss: f32,
    pub train_perplexity: f32,
    pub val_perplexity: f32,
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

impl Record {
    pub fn step(&self) -> usize {
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

/// The open log of a run.
pub struct MetricsLog {
    path: PathBuf,
    file: File,
    pub history: History,
}

impl MetricsLog {
    /// Opens `path` for appending. Lines of steps at or after `from_step` (written after the
    /// checkpoint being resumed from) are dropped first, so the log continues the checkpoint.
    pub fn open(path: &Path, from_step: usize) -> Result<MetricsLog> {
        let mut history = History::default();
        if path.exists() {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            let mut kept = String::new();
            // A last line without its newline is a write cut short by a crash: it is dropped.
            let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
            for (i, line) in complete.lines().enumerate() {
                let record: Record = serde_json::from_str(line).map_err(|e| {
                    Error::Input(format!("{}: line {}: not a metrics record: {e}", path.display(), i + 1))
                })?;
                if record.step() < from_step {
                    kept.push_str(line);
                    kept.push('\n');
                    match record {
                        Record::Eval(e) => history.evals.push(e),
                        Record::Step(s) => history.steps.push(s),
                    }
                }
            }
            if kept.len() != text.len() {
                write_file(path, |w| w.write_all(kept.as_bytes()))?;
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            file,
            history,
        })
    }

    /// Appends a record (one write, so a line is never split by a crash between records).
    pub fn append(&mut self, record: Record) -> Result<()> {
        let mut line = serde_json::to_string(&record).map_err(|e| Error::Input(e.to_string()))?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(|e| Error::io(&self.path, e))?;
        match record {
            Record::Eval(e) => self.history.evals.push(e),
            Record::Step(s) => self.history.steps.push(s),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
