//! Training: the loop around forward → backward → AdamW, with warm-up + cosine learning rate,
//! gradient accumulation and clipping, evaluation and samples, the metrics log and loss plots,
//! and checkpoints that a run resumes from bit for bit. This file is the loop; [`setup`] makes a
//! new run or resumes one, [`run_dir`] makes the run directory.
//!
//! ```text
//! run dir/
//!   metrics.jsonl          one JSON object per step and per evaluation
//!   param_stats.jsonl      per-tensor statistics of the weights and their updates, per evaluation
//!   loss.png, loss.svg     loss curves, redrawn at every evaluation
//!   init/                  the model before training (model and tokenizer, no optimizer state)
//!   latest/                the last checkpoint (at each evaluation, at the end, on Ctrl-C)
//!   best/                  the checkpoint with the lowest validation loss
//!   step-000500/ ...       with --keep-checkpoints K: the checkpoints of the last K evaluations
//!   .gpt2.lock             locked while a run trains here; holds its PID
//! ```

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod metrics;
pub mod plot;
pub mod run_dir;
mod setup;
pub mod stats;

pub use config::{Overrides, TrainConfig};
pub use metrics::{EvalRecord, StepRecord};

use crate::config::Config;
use crate::data::{Batch, BatchStream, Split};
use crate::error::{Error, Result};
use crate::generate::{generate_ids, Sampling};
use crate::io::lock::DirLock;
use crate::model::{DataParallel, Gpt};
use crate::ops::dropout::DropoutSeed;
use crate::ops::set_zero;
use crate::optim::{clip_factor, AdamW, LrSchedule};
use crate::rng::Rng;
use crate::runlog::jsonl::JsonLines;
use crate::runlog::param_stats::ParamStatsRecord;
use crate::runlog::INIT_DIR;
use crate::tokenizer::Tokenizer;
use checkpoint::TrainerState;
use data::TrainData;
use metrics::{MetricsLog, Record};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// What the trainer reports as it goes; the CLI turns these into a progress bar and lines.
pub enum Event<'a> {
    /// Data and model are ready.
    Started(&'a RunInfo),
    Step(&'a StepRecord),
    Eval(&'a EvalRecord),
    /// A checkpoint was written to this directory.
    Checkpoint(&'a Path),
}

/// A description of the run, for the user.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub run_dir: PathBuf,
    pub resumed: bool,
    pub start_step: usize,
    pub max_iters: usize,
    pub files: usize,
    pub tokens: usize,
    pub train_tokens: usize,
    pub val_tokens: usize,
    /// Instruction records in the train and the validation split (None: a text corpus).
    pub records: Option<[usize; 2]>,
    /// Whether the token shard came from the cache.
    pub cached: bool,
    pub shard: PathBuf,
    pub tokenizer: String,
    pub vocab_size: usize,
    pub params: usize,
    /// The parameters that train: all, or a LoRA adapter's.
    pub trainable: usize,
    pub model: Config,
    pub tokens_per_step: usize,
    /// Batch shards trained side by side.
    pub shards: usize,
}

/// How to run: stop early (as a kill or Ctrl-C would) at a step, or when a flag is raised.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Save a checkpoint and return when this many steps are done.
    pub stop_at: Option<usize>,
    /// Save a checkpoint and return at the next step once this is set (Ctrl-C).
    pub interrupt: Option<Arc<AtomicBool>>,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct Summary {
    pub step: usize,
    /// Stopped before max_iters (Ctrl-C or [`RunOptions::stop_at`]).
    pub stopped: bool,
    pub last_eval: Option<EvalRecord>,
    pub best_val_loss: Option<f32>,
    pub run_dir: PathBuf,
    /// The latest checkpoint, if one was written.
    pub latest: Option<PathBuf>,
    pub plots: Option<[PathBuf; 2]>,
}

/// A training run in progress.
pub struct Trainer {
    config: TrainConfig,
    run_dir: PathBuf,
    model: Gpt,
    /// dloss/dparams of the current step, in the parameter layout.
    grads: Vec<f32>,
    /// The batch shards, their workspaces and threads (one shard: the whole batch at once).
    parallel: DataParallel,
    optimizer: AdamW,
    tokenizer: Tokenizer,
    data: TrainData,
    corpus_key: String,
    stream: BatchStream,
    dropout_rng: Rng,
    schedule: LrSchedule,
    /// Fixed evaluation windows of the train and val splits.
    eval_batches: [Vec<Vec<usize>>; 2],
    prompt: Vec<u32>,
    block_size: usize,
    step: usize,
    best_val_loss: Option<f32>,
    elapsed_s: f64,
    /// The step of the run's `latest/` checkpoint (None before the first).
    checkpoint_step: Option<usize>,
    log: MetricsLog,
    param_log: JsonLines<ParamStatsRecord>,
    info: RunInfo,
    /// A LoRA run: the SHA-256 of its frozen base's weights, recorded in its checkpoints.
    base_sha256: Option<String>,
    /// The run directory's lock, held for the trainer's life: one run at a time writes there.
    _lock: DirLock,
}

/// Seeds of the separate random streams, derived from the run's seed.
const DROPOUT_STREAM: u64 = 0xD50F_0000_0000_0001;
const SAMPLE_STREAM: u64 = 0x5A3F_0000_0000_0001;

impl Trainer {
    pub fn info(&self) -> &RunInfo {
        &self.info
    }

    pub fn model(&self) -> &Gpt {
        &self.model
    }

    /// Trains until max_iters (or a stop), evaluating every eval_interval steps and after the
    /// last one, writing `latest/` at each evaluation and `best/` when validation improves.
    pub fn run(&mut self, options: &RunOptions, on_event: &mut dyn FnMut(Event)) -> Result<Summary> {
        on_event(Event::Started(&self.info));
        let session_start = self.step;
        let clock = Instant::now();
        let elapsed_before = self.elapsed_s;
        let mut batch = Batch::default();
        let (mut last_eval, mut plots, mut latest) = (None, None, None);
        let mut saved_at = None;
        loop {
            self.elapsed_s = elapsed_before + clock.elapsed().as_secs_f64();
            if self.step.is_multiple_of(self.config.eval_interval) || self.step == self.config.max_iters {
                let record = self.evaluate(&mut batch)?;
                self.log.append(Record::Eval(record.clone()))?;
                self.param_log.append(&self.param_stats())?;
                plots = Some(plot::write_plots(&self.log.history, &self.run_dir)?);
                on_event(Event::Eval(&record));
                if self.step > session_start {
                    // latest/ first: it is what a resume needs, and it records the new best.
                    let improved = self.best_val_loss.is_none_or(|best| record.val_loss < best);
                    if improved {
                        self.best_val_loss = Some(record.val_loss);
                    }
                    latest = Some(self.save("latest")?);
                    on_event(Event::Checkpoint(latest.as_deref().expect("just saved")));
                    saved_at = Some(self.step);
                    if improved {
                        on_event(Event::Checkpoint(&self.save("best")?));
                    }
                    if self.config.keep_checkpoints > 0 {
                        on_event(Event::Checkpoint(&self.save_step()?));
                    }
                }
                last_eval = Some(record);
            }
            if self.step >= self.config.max_iters {
                break;
            }
            let interrupted = options
                .interrupt
                .as_ref()
                .is_some_and(|flag| flag.load(Ordering::SeqCst));
            if interrupted || options.stop_at == Some(self.step) {
                if self.step > session_start && saved_at != Some(self.step) {
                    latest = Some(self.save("latest")?);
                    on_event(Event::Checkpoint(latest.as_deref().expect("just saved")));
                }
                break;
            }
            let record = self.train_step(&mut batch, elapsed_before, clock)?;
            self.log.append(Record::Step(record.clone()))?;
            on_event(Event::Step(&record));
            self.step += 1;
        }
        Ok(Summary {
            step: self.step,
            stopped: self.step < self.config.max_iters,
            last_eval,
            best_val_loss: self.best_val_loss,
            run_dir: self.run_dir.clone(),
            latest,
            plots,
        })
    }

    /// One optimizer step over grad_accum micro-batches.
    fn train_step(&mut self, batch: &mut Batch, elapsed_before: f64, clock: Instant) -> Result<StepRecord> {
        let start = Instant::now();
        let (b, t, accum) = (self.config.batch_size, self.block_size, self.config.grad_accum);
        let lr = self.schedule.at(self.step);
        set_zero(&mut self.grads);
        let mut loss = 0.0f32;
        for _ in 0..accum {
            let starts = self.stream.next_starts(self.data.span(Split::Train, t), t, b);
            let t = self.data.fill(Split::Train, &starts, t, batch);
            loss += self.parallel.forward_backward(
                &self.model,
                &mut self.grads,
                &batch.inputs,
                b,
                t,
                &batch.targets,
                Some(DropoutSeed::new(self.dropout_rng.next_u64())),
                1.0 / accum as f32,
            )?;
        }
        loss /= accum as f32;
        if !loss.is_finite() {
            return Err(self.diverged(format!("the training loss became {loss}")));
        }
        let max_norm = if self.config.grad_clip > 0.0 {
            self.config.grad_clip
        } else {
            f32::INFINITY
        };
        let grad_norm = self.optimizer.grad_norm(&self.grads);
        let scale = clip_factor(grad_norm, max_norm);
        self.optimizer.step(self.model.trainable_mut(), &self.grads, scale, lr);
        let tokens = self.info.tokens_per_step as u64;
        Ok(StepRecord {
            step: self.step,
            train_loss: loss,
            lr,
            grad_norm,
            tokens: self.step as u64 * tokens,
            tokens_per_s: tokens as f64 / start.elapsed().as_secs_f64(),
            elapsed_s: elapsed_before + clock.elapsed().as_secs_f64(),
        })
    }

    /// Mean loss over the fixed evaluation batches of each split (no dropout), and a sample.
    fn evaluate(&mut self, batch: &mut Batch) -> Result<EvalRecord> {
        let (b, t) = (self.config.batch_size, self.block_size);
        let mut losses = [0.0f32; 2];
        for (loss, (split, starts)) in losses
            .iter_mut()
            .zip([Split::Train, Split::Val].into_iter().zip(&self.eval_batches))
        {
            let mut sum = 0.0f64;
            for batch_starts in starts {
                let t = self.data.fill(split, batch_starts, t, batch);
                sum += self.parallel.loss(&self.model, &batch.inputs, b, t, &batch.targets)? as f64;
            }
            *loss = (sum / starts.len() as f64) as f32;
        }
        if !losses.iter().all(|l| l.is_finite()) {
            return Err(self.diverged(format!(
                "the evaluation loss became {} (train) and {} (val)",
                losses[0], losses[1]
            )));
        }
        Ok(EvalRecord {
            step: self.step,
            train_loss: losses[0],
            val_loss: losses[1],
            train_perplexity: losses[0].exp(),
            val_perplexity: losses[1].exp(),
            lr: self.schedule.at(self.step),
            tokens: (self.step * self.info.tokens_per_step) as u64,
            elapsed_s: self.elapsed_s,
            sample: self.sample()?,
        })
    }

    /// The statistics of the weights now and of the last update, which was made at the
    /// previous step's learning rate.
    fn param_stats(&self) -> ParamStatsRecord {
        let last_update = self
            .step
            .checked_sub(1)
            .map(|last| (&self.optimizer, self.schedule.at(last)));
        stats::measure(
            self.step,
            &self.model.trainable_specs(),
            self.model.trainable(),
            last_update,
        )
    }

    /// A sample of the model now: the prompt and sample_tokens tokens after it, drawn with the
    /// run's temperature and top-k from a stream seeded by the step (the training is untouched).
    fn sample(&mut self) -> Result<String> {
        let sampling = Sampling {
            temperature: self.config.temperature,
            top_k: (self.config.top_k > 0).then_some(self.config.top_k),
            ..Sampling::default()
        };
        let mut rng = Rng::new(self.config.seed ^ SAMPLE_STREAM ^ self.step as u64);
        let new = generate_ids(
            &self.model,
            &self.prompt,
            self.config.sample_tokens,
            &sampling,
            &mut rng,
        )?;
        self.tokenizer.decode(&[self.prompt.as_slice(), &new].concat())
    }

    /// The error of a loss that is no longer finite, saying which checkpoint is left (nothing
    /// is saved after it: a diverged model never replaces a checkpoint).
    fn diverged(&self, what: String) -> Error {
        let kept = match self.checkpoint_step {
            Some(step) => format!(
                "the checkpoint of step {step} in {} is kept",
                self.run_dir.join("latest").display()
            ),
            None => format!(
                "no checkpoint was written; the model before training is in {}",
                self.run_dir.join(INIT_DIR).display()
            ),
        };
        Error::Training(format!(
            "{what} at step {}: training diverged (try a lower --lr, or --grad-clip 1); {kept}",
            self.step
        ))
    }

    /// Writes the checkpoint `run_dir/<name>` atomically; returns its path.
    fn save(&mut self, name: &str) -> Result<PathBuf> {
        let dir = self.run_dir.join(name);
        let state = TrainerState {
            format: checkpoint::FORMAT.into(),
            version: checkpoint::VERSION,
            step: self.step,
            optimizer_step: self.optimizer.t,
            tokens_seen: (self.step * self.info.tokens_per_step) as u64,
            next_lr: self.schedule.at(self.step),
            lr_schedule: self.schedule,
            corpus_key: self.corpus_key.clone(),
            data_position: self.stream.position().clone(),
            dropout_rng: self.dropout_rng.clone(),
            best_val_loss: self.best_val_loss,
            elapsed_s: self.elapsed_s,
            config: self.config.clone(),
            base_sha256: self.base_sha256.clone(),
        };
        checkpoint::save(&dir, &self.model, &self.optimizer, &self.tokenizer, &state)?;
        if name == "latest" {
            self.checkpoint_step = Some(self.step);
        }
        Ok(dir)
    }

    /// Writes the checkpoint `step-NNNNNN/` of this step, then removes the step checkpoints
    /// beyond the last `keep_checkpoints`; returns its path.
    fn save_step(&mut self) -> Result<PathBuf> {
        let name = run_dir::step_checkpoint_name(self.step);
        run_dir::check_step_checkpoint(&self.run_dir.join(&name))?;
        let dir = self.save(&name)?;
        run_dir::prune_step_checkpoints(&self.run_dir, self.config.keep_checkpoints)?;
        Ok(dir)
    }
}
