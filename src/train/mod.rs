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
mod ranked;
pub mod run_dir;
mod setup;
pub mod stats;

pub use config::{Overrides, TrainConfig};
pub use metrics::{EvalRecord, StepRecord};

use crate::bench::median;
use crate::config::Config;
use crate::data::{Batch, BatchStream, Split};
use crate::error::{Error, Result};
use crate::generate::{generate_ids, Sampling};
use crate::io::lock::DirLock;
use crate::model::{DataParallel, Gpt};
use crate::ops::cross_entropy::counted_targets;
use crate::ops::dropout::DropoutSeed;
use crate::ops::matmul::Precision;
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
use ranked::Ranked;
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
    /// B·T·grad_accum: the tokens of a step, or for instruction records (padded to the
    /// batch's longest) the most it can hold.
    pub tokens_per_step: usize,
    /// Batch shards trained side by side (by each rank).
    pub shards: usize,
    /// The precision of the matrix products, and why it is not the one asked for.
    pub precision: Precision,
    pub precision_note: Option<String>,
    /// Processes training together (started by mpirun), and this one's rank.
    pub ranks: usize,
    pub rank: usize,
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

/// The communication between ranks that a step waited for, in seconds: medians over the
/// steps this process trained.
#[derive(Debug, Clone, Copy)]
pub struct Communication {
    /// Waiting for the gradient's sums once the backward pass was done (what it did not hide).
    pub waiting_s: f64,
    /// Gathering the updated parameters from every rank.
    pub gathering_s: f64,
    pub steps: usize,
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
    /// AdamW over all the parameters, or over this rank's shard of them.
    optimizer: AdamW,
    /// The other ranks, when several processes train together.
    ranks: Option<Ranked>,
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
    /// Tokens trained on so far, padding not counted (over all sessions of a resumed run).
    tokens_seen: u64,
    best_val_loss: Option<f32>,
    elapsed_s: f64,
    /// The step of the run's `latest/` checkpoint (None before the first).
    checkpoint_step: Option<usize>,
    /// What the run writes: None on the ranks other than 0.
    outputs: Option<Outputs>,
    info: RunInfo,
    /// A LoRA run: the SHA-256 of its frozen base's weights, recorded in its checkpoints.
    base_sha256: Option<String>,
}

/// The logs a run appends to, and the lock on its directory.
struct Outputs {
    log: MetricsLog,
    param_log: JsonLines<ParamStatsRecord>,
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

    /// How long the steps waited for the other ranks (None when training alone, or before a step).
    pub fn communication(&self) -> Option<Communication> {
        let ranks = self.ranks.as_ref().filter(|r| !r.waits.is_empty())?;
        let median = |values: &[f32]| median(&mut values.iter().map(|&v| v as f64).collect::<Vec<_>>());
        Some(Communication {
            waiting_s: median(&ranks.waits),
            gathering_s: median(&ranks.gathers),
            steps: ranks.waits.len(),
        })
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
                // Rank 0 holds the whole optimizer state until the checkpoints are written (at
                // step 0 there is neither a checkpoint nor a last update to measure).
                let ranks = self.ranks.as_ref().filter(|_| self.step > 0);
                let gathered = ranks.map(|r| r.gather_optimizer(&self.optimizer));
                let optimizer = gathered.as_ref().map_or(Some(&self.optimizer), Option::as_ref);
                if let (Some(out), Some(optimizer)) = (self.outputs.as_mut(), optimizer) {
                    out.log.append(Record::Eval(record.clone()))?;
                    out.param_log
                        .append(&param_stats(self.step, &self.model, optimizer, &self.schedule))?;
                    plots = Some(plot::write_plots(&out.log.history, &self.run_dir)?);
                    on_event(Event::Eval(&record));
                }
                if self.step > session_start {
                    // latest/ first: it is what a resume needs, and it records the new best.
                    let improved = self.best_val_loss.is_none_or(|best| record.val_loss < best);
                    if improved {
                        self.best_val_loss = Some(record.val_loss);
                    }
                    if let Some(optimizer) = optimizer {
                        latest = Some(self.save("latest", optimizer)?);
                        on_event(Event::Checkpoint(latest.as_deref().expect("just saved")));
                        if improved {
                            on_event(Event::Checkpoint(&self.save("best", optimizer)?));
                        }
                        if self.config.keep_checkpoints > 0 {
                            on_event(Event::Checkpoint(&self.save_step(optimizer)?));
                        }
                    }
                    self.checkpoint_step = Some(self.step);
                    saved_at = Some(self.step);
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
            let interrupted = match &self.ranks {
                Some(ranks) => ranks.any(interrupted),
                None => interrupted,
            };
            if interrupted || options.stop_at == Some(self.step) {
                if self.step > session_start && saved_at != Some(self.step) {
                    let gathered = self.ranks.as_ref().map(|r| r.gather_optimizer(&self.optimizer));
                    if let Some(optimizer) = gathered.as_ref().map_or(Some(&self.optimizer), Option::as_ref) {
                        latest = Some(self.save("latest", optimizer)?);
                        on_event(Event::Checkpoint(latest.as_deref().expect("just saved")));
                    }
                    self.checkpoint_step = Some(self.step);
                }
                break;
            }
            let record = self.train_step(&mut batch, elapsed_before, clock)?;
            if let Some(out) = self.outputs.as_mut() {
                out.log.append(Record::Step(record.clone()))?;
            }
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
        let lr = self.schedule.at(self.step);
        let grad_norm;
        set_zero(&mut self.grads);
        // The ranks are taken out while the gradient is summed into their shard.
        let mut ranks = self.ranks.take();
        let accumulated = self.accumulate(batch, ranks.as_mut());
        self.ranks = ranks;
        let (mut loss, step_tokens) = accumulated?;
        if let Some(ranks) = &self.ranks {
            loss = ranks.sum(loss);
        }
        if !loss.is_finite() {
            return Err(self.diverged(format!("the training loss became {loss}")));
        }
        let max_norm = if self.config.grad_clip > 0.0 {
            self.config.grad_clip
        } else {
            f32::INFINITY
        };
        match self.ranks.as_mut() {
            Some(ranks) => {
                grad_norm = ranks.grad_norm();
                let scale = clip_factor(grad_norm, max_norm);
                self.optimizer.step(self.model.trainable_mut(), &ranks.shard, scale, lr);
                ranks.gather_parameters(self.model.trainable_mut());
            }
            None => {
                grad_norm = self.optimizer.grad_norm(&self.grads);
                let scale = clip_factor(grad_norm, max_norm);
                self.optimizer.step(self.model.trainable_mut(), &self.grads, scale, lr);
            }
        }
        let step_s = start.elapsed().as_secs_f64();
        let tokens = self.tokens_seen;
        self.tokens_seen += step_tokens as u64;
        Ok(StepRecord {
            step: self.step,
            train_loss: loss,
            lr,
            grad_norm,
            tokens,
            tokens_per_s: step_tokens as f64 / step_s,
            step_s,
            elapsed_s: elapsed_before + clock.elapsed().as_secs_f64(),
        })
    }

    /// The gradient of one optimizer step over grad_accum micro-batches, into `grads`, its
    /// mean loss over this process's rows, and the tokens of the whole step's batches (padding
    /// not counted). With `ranks`, each rank trains on its rows, and the last micro-batch's
    /// backward pass sums the gradient over ranks as it goes.
    fn accumulate(&mut self, batch: &mut Batch, mut ranks: Option<&mut Ranked>) -> Result<(f32, usize)> {
        let (b, block, accum) = (self.config.batch_size, self.block_size, self.config.grad_accum);
        let rows = ranks.as_ref().map_or(0..b, |r| r.rows.clone());
        let (mut loss, mut step_tokens) = (0.0f32, 0);
        for micro in 0..accum {
            // Every rank draws the whole batch, and trains on its rows of it (T: the batch's
            // length, the block size or, for instruction records, the longest record's).
            let starts = self.stream.next_starts(self.data.span(Split::Train, block), block, b);
            let (t, tokens) = self.data.fill(Split::Train, &starts, block, batch);
            step_tokens += tokens;
            let mine = rows.start * t..rows.end * t;
            let (tokens, targets) = (&batch.inputs[mine.clone()], &batch.targets[mine.clone()]);
            // These rows' share of the batch's mean loss: their counted targets over all.
            let share = match ranks {
                Some(_) => share(targets, &batch.targets),
                None => 1.0,
            };
            // The masks of these rows in the whole batch's.
            let dropout = Some(DropoutSeed::new(self.dropout_rng.next_u64()).skip(rows.start));
            let (model, scale) = (&self.model, share / accum as f32);
            let rows_loss = match ranks.as_mut().filter(|_| micro + 1 == accum) {
                None => {
                    let grads = &mut self.grads;
                    self.parallel
                        .forward_backward(model, grads, tokens, rows.len(), t, targets, dropout, scale)?
                }
                Some(ranks) => {
                    let mut reducer = ranks.reducer();
                    let rows_loss = self.parallel.forward_backward_with(
                        model,
                        &mut self.grads,
                        tokens,
                        rows.len(),
                        t,
                        targets,
                        dropout,
                        scale,
                        |bucket| reducer.bucket_done(bucket),
                    );
                    let waited = reducer.finish();
                    ranks.waits.push(waited.as_secs_f32());
                    rows_loss?
                }
            };
            loss += share * rows_loss;
        }
        Ok((loss / accum as f32, step_tokens))
    }

    /// Mean loss over the fixed evaluation batches of each split (no dropout), and a sample
    /// (rank 0's; empty on the others). Each rank evaluates its rows of every batch.
    fn evaluate(&mut self, batch: &mut Batch) -> Result<EvalRecord> {
        let (b, block) = (self.config.batch_size, self.block_size);
        let rows = self.ranks.as_ref().map_or(0..b, |r| r.rows.clone());
        // Each batch's loss: the sum over ranks of their rows' mean loss times their share.
        let mut batch_losses = [vec![], vec![]];
        for (losses, (split, starts)) in batch_losses
            .iter_mut()
            .zip([Split::Train, Split::Val].into_iter().zip(&self.eval_batches))
        {
            for batch_starts in starts {
                let (t, _) = self.data.fill(split, batch_starts, block, batch);
                let mine = rows.start * t..rows.end * t;
                let (tokens, targets) = (&batch.inputs[mine.clone()], &batch.targets[mine.clone()]);
                let rows_loss = self.parallel.loss(&self.model, tokens, rows.len(), t, targets)?;
                losses.push(match &self.ranks {
                    Some(_) => rows_loss as f64 * share(targets, &batch.targets) as f64,
                    None => rows_loss as f64,
                });
            }
        }
        let [train, val] = batch_losses;
        let all = [train.as_slice(), &val].concat();
        let all = match &self.ranks {
            Some(ranks) => ranks.comm.all_sum_f64(&all),
            None => all,
        };
        let (train, val) = all.split_at(train.len());
        let losses = [train, val].map(|split| {
            let sum: f64 = split.iter().map(|&l| l as f32 as f64).sum();
            (sum / split.len() as f64) as f32
        });
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
            tokens: self.tokens_seen,
            elapsed_s: self.elapsed_s,
            sample: match self.outputs {
                Some(_) => self.sample()?,
                None => String::new(),
            },
        })
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

    /// Writes the checkpoint `run_dir/<name>` atomically, with `optimizer` (all parameters');
    /// returns its path.
    fn save(&self, name: &str, optimizer: &AdamW) -> Result<PathBuf> {
        let dir = self.run_dir.join(name);
        checkpoint::save(&dir, &self.model, optimizer, &self.tokenizer, &self.state())?;
        Ok(dir)
    }

    /// Writes the checkpoint `step-NNNNNN/` of this step, then removes the step checkpoints
    /// beyond the last `keep_checkpoints`; returns its path.
    fn save_step(&self, optimizer: &AdamW) -> Result<PathBuf> {
        let name = run_dir::step_checkpoint_name(self.step);
        run_dir::check_step_checkpoint(&self.run_dir.join(&name))?;
        let dir = self.save(&name, optimizer)?;
        run_dir::prune_step_checkpoints(&self.run_dir, self.config.keep_checkpoints)?;
        Ok(dir)
    }

    /// The training state besides the tensors, as a checkpoint records it.
    fn state(&self) -> TrainerState {
        TrainerState {
            format: checkpoint::FORMAT.into(),
            version: checkpoint::VERSION,
            step: self.step,
            optimizer_step: self.optimizer.t,
            tokens_seen: self.tokens_seen,
            next_lr: self.schedule.at(self.step),
            lr_schedule: self.schedule,
            corpus_key: self.corpus_key.clone(),
            data_position: self.stream.position().clone(),
            dropout_rng: self.dropout_rng.clone(),
            best_val_loss: self.best_val_loss,
            elapsed_s: self.elapsed_s,
            config: self.config.clone(),
            base_sha256: self.base_sha256.clone(),
        }
    }
}

/// The statistics of the weights after `step` updates and of the last update, which was made
/// at the previous step's learning rate (`optimizer`: all parameters').
fn param_stats(step: usize, model: &Gpt, optimizer: &AdamW, schedule: &LrSchedule) -> ParamStatsRecord {
    let last_update = step.checked_sub(1).map(|last| (optimizer, schedule.at(last)));
    stats::measure(step, &model.trainable_specs(), model.trainable(), last_update)
}

/// The share of `rows` in the mean loss over `batch`: their counted targets over all.
fn share(rows: &[i32], batch: &[i32]) -> f32 {
    match counted_targets(batch) {
        0 => 0.0,
        total => counted_targets(rows) as f32 / total as f32,
    }
}
