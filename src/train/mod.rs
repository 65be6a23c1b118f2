//! Training: the loop around forward → backward → AdamW, with warm-up + cosine learning rate,
//! gradient accumulation and clipping, evaluation and samples, the metrics log and loss plots,
//! and checkpoints that a run resumes from bit for bit.
//!
//! ```text
//! run dir/
//!   metrics.jsonl          one JSON object per step and per evaluation
//!   param_stats.jsonl      per-tensor statistics of the weights and their updates, per evaluation
//!   loss.png, loss.svg     loss curves, redrawn at every evaluation
//!   init/                  the model before training (model and tokenizer, no optimizer state)
//!   latest/                the last checkpoint (at each evaluation, at the end, on Ctrl-C)
//!   best/                  the checkpoint with the lowest validation loss
//! ```

pub mod checkpoint;
pub mod config;
pub mod metrics;
pub mod plot;
pub mod stats;

pub use config::{Overrides, TrainConfig};
pub use metrics::{EvalRecord, StepRecord};

use crate::config::Config;
use crate::data::{
    corpus_key, eval_starts, read_corpus, tokenize_cached, Batch, BatchStream, Dataset, Document, Split, Windows,
};
use crate::error::{Error, Result};
use crate::generate::{generate_ids, Sampling};
use crate::io::{atomic, cache, load_model_with_tokenizer, save_model, ExportFormat, Loaded};
use crate::model::data_parallel::auto_shards;
use crate::model::{param_specs, DataParallel, Gpt};
use crate::optim::{clip_factor, AdamW, AdamWConfig, LrSchedule};
use crate::rng::Rng;
use crate::runlog::jsonl::JsonLines;
use crate::runlog::param_stats::{self, ParamStatsRecord};
use crate::runlog::INIT_DIR;
use crate::tokenizer::{CharLevel, Tokenizer};
use checkpoint::{Checkpoint, TrainerState};
use metrics::{MetricsLog, Record};
use std::collections::BTreeSet;
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
    /// Whether the token shard came from the cache.
    pub cached: bool,
    pub shard: PathBuf,
    pub tokenizer: String,
    pub vocab_size: usize,
    pub params: usize,
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
    /// The batch shards and the model's replicas (one shard: the model alone).
    parallel: DataParallel,
    optimizer: AdamW,
    tokenizer: Tokenizer,
    data: Dataset,
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
}

/// Seeds of the separate random streams, derived from the run's seed.
const DROPOUT_STREAM: u64 = 0xD50F_0000_0000_0001;
const SAMPLE_STREAM: u64 = 0x5A3F_0000_0000_0001;

impl Trainer {
    /// Prepares a new run: reads and tokenises the corpus (or takes it from the cache), builds
    /// or loads the model, creates the run directory and saves the model there as `init/`.
    /// Every check on the user's input runs before the run directory is made.
    pub fn new(config: TrainConfig) -> Result<Trainer> {
        config.validate()?;
        let docs = read_corpus(&config.data)?;
        let init = config.init.as_deref().map(load_model_with_tokenizer).transpose()?;
        let (tokenizer, tokenizer_spec) = resolve_tokenizer(config.tokenizer.as_deref(), &docs, init.as_ref())?;
        let (model_config, block_size) =
            model_config(&config, tokenizer.vocab_size(), init.as_ref().map(|i| &i.model.config))?;
        let cache_dir = shard_cache_dir(&config)?;
        let (shard, cached) = tokenize_cached(&docs, &tokenizer, &cache_dir)?;
        let data = Dataset::new(shard, config.val_fraction, block_size)?;
        let prompt = encode_prompt(&config.prompt, &tokenizer, &model_config)?;
        let model = match init {
            Some(Loaded { mut model, .. }) => {
                model.config.dropout = config.dropout;
                model
            }
            None => Gpt::new(model_config.clone(), config.seed)?,
        };
        let run_dir = create_run_dir(config.out_dir.as_deref())?;
        let config = TrainConfig {
            tokenizer: Some(tokenizer_spec),
            n_layer: Some(model_config.n_layer),
            n_head: Some(model_config.n_head),
            n_embd: Some(model_config.n_embd),
            block_size: Some(block_size),
            lr_decay_iters: Some(config.lr_decay_iters.unwrap_or(config.max_iters)),
            data_parallel: Some(
                config
                    .data_parallel
                    .unwrap_or_else(|| auto_shards(model.params.len(), config.batch_size)),
            ),
            out_dir: Some(run_dir.clone()),
            ..config
        };
        save_model(
            &model,
            Some(&tokenizer),
            ExportFormat::HuggingFace,
            &run_dir.join(INIT_DIR),
        )?;
        let optimizer = AdamW::new(adamw_config(&config), &param_specs(&model.config));
        let parts = Parts {
            stream: BatchStream::new(windows(&config), config.seed),
            dropout_rng: Rng::new(config.seed ^ DROPOUT_STREAM),
            step: 0,
            best_val_loss: None,
            elapsed_s: 0.0,
            checkpoint_step: None,
            resumed: false,
            cached,
            files: docs.len(),
        };
        Trainer::assemble(config, run_dir, model, optimizer, tokenizer, data, prompt, parts)
    }

    /// Continues the run in `run_dir` from its `latest/` checkpoint. `overrides` are the settings
    /// the user gave again: only [`config::RESUMABLE_KEYS`] may differ from the run's.
    pub fn resume(run_dir: &Path, overrides: &Overrides) -> Result<Trainer> {
        // Accept the run directory or its latest/ checkpoint; another checkpoint (best/) is
        // not where the run stopped.
        let run_dir = if run_dir.join(checkpoint::TRAINER_FILE).is_file() {
            if run_dir.file_name() != Some("latest".as_ref()) {
                return Err(Error::Input(format!(
                    "{0}: --resume continues a run from where it stopped, its latest/ checkpoint; \
                     give the run directory, or fine-tune from this checkpoint with --init {0}",
                    run_dir.display()
                )));
            }
            run_dir.parent().unwrap_or(Path::new("."))
        } else {
            run_dir
        };
        atomic::recover_dir(&run_dir.join("latest"))?;
        let dir = run_dir.join("latest");
        if !dir.join(checkpoint::TRAINER_FILE).is_file() {
            return Err(Error::Input(format!(
                "{}: not a training run (no latest/{})",
                run_dir.display(),
                checkpoint::TRAINER_FILE
            )));
        }
        let Checkpoint {
            mut model,
            optimizer_m,
            optimizer_v,
            tokenizer,
            state,
        } = checkpoint::load(&dir)?;
        let conflicts = state.config.conflicts(overrides, &config::RESUMABLE_KEYS)?;
        if !conflicts.is_empty() {
            return Err(Error::Config(format!(
                "{}: a resumed run keeps its settings, but these differ: {}. Start a new run instead, or fine-tune from this one with --init {}",
                run_dir.display(),
                conflicts.join(", "),
                dir.display()
            )));
        }
        let block_size = state.config.block_size.unwrap_or(model.config.n_positions);
        let config = TrainConfig {
            out_dir: Some(run_dir.to_path_buf()),
            block_size: Some(block_size),
            // Runs recorded before this setting existed trained unsharded.
            data_parallel: Some(state.config.data_parallel.unwrap_or(1)),
            ..state.config.with_overrides(overrides)?
        };
        config.validate()?;
        let expected = (config.n_layer, config.n_head, config.n_embd);
        let found = (
            Some(model.config.n_layer),
            Some(model.config.n_head),
            Some(model.config.n_embd),
        );
        if expected != found || block_size > model.config.n_positions {
            return Err(Error::weights(
                &dir,
                "config.json does not match the settings in trainer.json",
            ));
        }
        model.config.dropout = config.dropout;
        let prompt = encode_prompt(&config.prompt, &tokenizer, &model.config)?;
        let docs = read_corpus(&config.data)?;
        let cache_dir = shard_cache_dir(&config)?;
        if corpus_key(&docs, &tokenizer, &cache_dir)? != state.corpus_key {
            return Err(Error::Input(format!(
                "{}: the corpus ({}) is not the one this run was trained on: its text or tokenizer changed",
                run_dir.display(),
                config
                    .data
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let (shard, cached) = tokenize_cached(&docs, &tokenizer, &cache_dir)?;
        let data = Dataset::new(shard, config.val_fraction, block_size)?;
        let mut optimizer = AdamW::new(adamw_config(&config), &param_specs(&model.config));
        (optimizer.m, optimizer.v, optimizer.t) = (optimizer_m, optimizer_v, state.optimizer_step);
        let parts = Parts {
            stream: BatchStream::resume(windows(&config), config.seed, state.data_position)?,
            dropout_rng: state.dropout_rng,
            step: state.step,
            best_val_loss: state.best_val_loss,
            elapsed_s: state.elapsed_s,
            checkpoint_step: Some(state.step),
            resumed: true,
            cached,
            files: docs.len(),
        };
        Trainer::assemble(
            config,
            run_dir.to_path_buf(),
            model,
            optimizer,
            tokenizer,
            data,
            prompt,
            parts,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        config: TrainConfig,
        run_dir: PathBuf,
        model: Gpt,
        optimizer: AdamW,
        tokenizer: Tokenizer,
        data: Dataset,
        prompt: Vec<u32>,
        parts: Parts,
    ) -> Result<Trainer> {
        let block_size = config.block_size.expect("resolved when the run started");
        let shards = config.data_parallel.expect("resolved when the run started");
        let (b, iters, w) = (config.batch_size, config.eval_iters, windows(&config));
        let eval_batches = [
            eval_starts(w, config.seed, data.train.len(), block_size, b, iters),
            eval_starts(w, config.seed, data.val.len(), block_size, b, iters),
        ];
        let schedule = LrSchedule {
            lr: config.lr,
            min_lr: config.min_lr,
            warmup_iters: config.warmup_iters,
            lr_decay_iters: config.lr_decay_iters.unwrap_or(config.max_iters),
            decay_lr: config.decay_lr,
        };
        let log = MetricsLog::open(&run_dir.join("metrics.jsonl"), parts.step)?;
        let (param_log, _) = JsonLines::open(&run_dir.join(param_stats::FILE), parts.step)?;
        let info = RunInfo {
            run_dir: run_dir.clone(),
            resumed: parts.resumed,
            start_step: parts.step,
            max_iters: config.max_iters,
            files: parts.files,
            tokens: data.shard.len(),
            train_tokens: data.train.len(),
            val_tokens: data.val.len(),
            cached: parts.cached,
            shard: data.shard.path().to_path_buf(),
            tokenizer: config.tokenizer.clone().unwrap_or_default(),
            vocab_size: tokenizer.vocab_size(),
            params: model.params.len(),
            model: model.config.clone(),
            tokens_per_step: b * block_size * config.grad_accum,
            shards,
        };
        Ok(Trainer {
            parallel: DataParallel::new(&model, shards)?,
            corpus_key: shard_key(&data.shard),
            config,
            run_dir,
            model,
            optimizer,
            tokenizer,
            data,
            stream: parts.stream,
            dropout_rng: parts.dropout_rng,
            schedule,
            eval_batches,
            prompt,
            block_size,
            step: parts.step,
            best_val_loss: parts.best_val_loss,
            elapsed_s: parts.elapsed_s,
            checkpoint_step: parts.checkpoint_step,
            log,
            param_log,
            info,
        })
    }

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
        self.model.zero_grad();
        let mut loss = 0.0f32;
        for _ in 0..accum {
            let starts = self.stream.next_starts(self.data.train.len(), t, b);
            self.data.fill(Split::Train, &starts, t, batch);
            loss += self.parallel.forward_backward(
                &mut self.model,
                &batch.inputs,
                b,
                t,
                &batch.targets,
                Some(&mut self.dropout_rng),
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
        let grad_norm = self.optimizer.grad_norm(&self.model.grads);
        let scale = clip_factor(grad_norm, max_norm);
        self.optimizer
            .step(&mut self.model.params, &self.model.grads, scale, lr);
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
                self.data.fill(split, batch_starts, t, batch);
                sum += self
                    .parallel
                    .loss(&mut self.model, &batch.inputs, b, t, &batch.targets)? as f64;
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
            &param_specs(&self.model.config),
            &self.model.params,
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
            &mut self.model,
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
        Error::Input(format!(
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
        };
        checkpoint::save(&dir, &self.model, &self.optimizer, &self.tokenizer, &state)?;
        if name == "latest" {
            self.checkpoint_step = Some(self.step);
        }
        Ok(dir)
    }
}

/// The state that differs between a new run and a resumed one.
struct Parts {
    stream: BatchStream,
    dropout_rng: Rng,
    step: usize,
    best_val_loss: Option<f32>,
    elapsed_s: f64,
    checkpoint_step: Option<usize>,
    resumed: bool,
    cached: bool,
    files: usize,
}

fn adamw_config(config: &TrainConfig) -> AdamWConfig {
    AdamWConfig {
        lr: config.lr,
        beta1: config.beta1,
        beta2: config.beta2,
        eps: 1e-8,
        weight_decay: config.weight_decay,
    }
}

fn windows(config: &TrainConfig) -> Windows {
    config.stride.map_or(Windows::Random, Windows::Stride)
}

/// The cache key a shard is named by.
fn shard_key(shard: &crate::data::Shard) -> String {
    shard
        .path()
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The tokenizer of a new run, and its spec as recorded: `char` (the corpus's characters) by
/// default, a spec given by the user, or the `--init` model's own.
fn resolve_tokenizer(spec: Option<&str>, docs: &[Document], init: Option<&Loaded>) -> Result<(Tokenizer, String)> {
    match (spec, init) {
        (Some("char"), _) | (None, None) => {
            let chars: BTreeSet<char> = docs
                .iter()
                .flat_map(|d| CharLevel::from_text(&d.text).chars().to_vec())
                .collect();
            Ok((Tokenizer::char_level(chars.into_iter().collect())?, "char".into()))
        }
        (Some(spec), _) if spec == "gpt2" || spec.starts_with("char:") || spec.starts_with("bpe:") => {
            Ok((Tokenizer::from_spec(spec)?, spec.into()))
        }
        (Some(spec), _) => Err(Error::Input(format!(
            "unknown --tokenizer {spec:?}: expected char, char:<file>, gpt2 or bpe:<file>"
        ))),
        (None, Some(init)) => {
            let path = init.format.path();
            let tokenizer = init.tokenizer.clone().ok_or_else(|| {
                Error::Input(format!(
                    "{}: the --init model has no tokenizer files; name one with --tokenizer",
                    path.display()
                ))
            })?;
            let spec = match tokenizer.kind() {
                "gpt2" => "gpt2".into(),
                kind => format!("{kind}:{}", path.display()),
            };
            Ok((tokenizer, spec))
        }
    }
}

/// The model's shape and the training block size: from the `--init` model (whose shape the
/// flags may not change), else from the preset or the default, with the flags on top.
fn model_config(config: &TrainConfig, vocab_size: usize, init: Option<&Config>) -> Result<(Config, usize)> {
    if let Some(init) = init {
        for (name, given, has) in [
            ("n_layer", config.n_layer, init.n_layer),
            ("n_head", config.n_head, init.n_head),
            ("n_embd", config.n_embd, init.n_embd),
        ] {
            if given.is_some_and(|g| g != has) {
                return Err(Error::Config(format!(
                    "{name} = {} does not match the --init model's {has}",
                    given.unwrap_or(has)
                )));
            }
        }
        if vocab_size > init.vocab_size {
            return Err(Error::Config(format!(
                "the tokenizer has {vocab_size} ids but the --init model only knows {}",
                init.vocab_size
            )));
        }
        let block_size = config.block_size.unwrap_or(init.n_positions);
        if block_size > init.n_positions {
            return Err(Error::Config(format!(
                "block_size {block_size} exceeds the --init model's {} positions",
                init.n_positions
            )));
        }
        return Ok((
            Config {
                dropout: config.dropout,
                ..init.clone()
            },
            block_size,
        ));
    }
    let (n_layer, n_head, n_embd, block_size) = match &config.preset {
        Some(name) => {
            let c = Config::preset(name)?;
            (c.n_layer, c.n_head, c.n_embd, c.n_positions)
        }
        None => config::DEFAULT_SHAPE,
    };
    let block_size = config.block_size.unwrap_or(block_size);
    let mut model = Config::new(
        vocab_size,
        block_size,
        config.n_embd.unwrap_or(n_embd),
        config.n_layer.unwrap_or(n_layer),
        config.n_head.unwrap_or(n_head),
    );
    model.dropout = config.dropout;
    model.validate()?;
    Ok((model, block_size))
}

/// The sample prompt's ids; each character must be in the vocabulary, and the prompt must
/// leave room in the context.
fn encode_prompt(prompt: &str, tokenizer: &Tokenizer, model: &Config) -> Result<Vec<u32>> {
    let ids = tokenizer.encode(prompt).map_err(|e| {
        Error::Input(format!(
            "the sample prompt {prompt:?}: {e} (choose another with --prompt)"
        ))
    })?;
    let ids = if ids.is_empty() {
        tokenizer.eot_token().into_iter().collect()
    } else {
        ids
    };
    if ids.is_empty() {
        return Err(Error::Input(
            "the sample prompt is empty (and this vocabulary has no <|endoftext|> to start from)".into(),
        ));
    }
    if ids.len() >= model.n_positions {
        return Err(Error::Input(format!(
            "the sample prompt is {} tokens long: it must be shorter than the model's context of {}",
            ids.len(),
            model.n_positions
        )));
    }
    Ok(ids)
}

/// Where token shards are cached: `--cache-dir`, else `tokens/` in the model cache.
fn shard_cache_dir(config: &TrainConfig) -> Result<PathBuf> {
    match &config.cache_dir {
        Some(dir) => Ok(dir.clone()),
        None => Ok(cache::default_cache_dir()?.join("tokens")),
    }
}

/// Makes the run directory: `out_dir` (which must not hold a run already), or
/// `runs/<UTC timestamp>` with the symbolic link `runs/latest` pointing at it.
fn create_run_dir(out_dir: Option<&Path>) -> Result<PathBuf> {
    if let Some(dir) = out_dir {
        // A run that stopped before its first checkpoint left only logs: a new run replaces them.
        if dir.join("latest").join(checkpoint::TRAINER_FILE).exists() {
            return Err(Error::Input(format!(
                "{} already holds a training run: continue it with --resume {0}, or choose another --out-dir",
                dir.display()
            )));
        }
        if dir.exists() && !dir.is_dir() {
            return Err(Error::Input(format!(
                "--out-dir {}: a file, not a directory",
                dir.display()
            )));
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Input(format!("cannot create the run directory {}: {e}", dir.display())))?;
        return Ok(dir.to_path_buf());
    }
    let runs = Path::new("runs");
    std::fs::create_dir_all(runs).map_err(|e| Error::io(runs, e))?;
    let stamp = utc_timestamp(std::time::SystemTime::now());
    let (mut name, mut n) = (stamp.clone(), 1);
    loop {
        match std::fs::create_dir(runs.join(&name)) {
            Ok(()) => break,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                n += 1;
                name = format!("{stamp}-{n}");
            }
            Err(e) => return Err(Error::io(runs.join(&name), e)),
        }
    }
    point_latest_at(runs, &name)?;
    Ok(runs.join(name))
}

/// Replaces the link `runs/latest` by one to `name`, atomically (a new link renamed over it).
#[cfg(unix)]
fn point_latest_at(runs: &Path, name: &str) -> Result<()> {
    let tmp = runs.join(format!(".latest-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(name, &tmp).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, runs.join("latest")).map_err(|e| Error::io(runs.join("latest"), e))
}

#[cfg(not(unix))]
fn point_latest_at(_runs: &Path, _name: &str) -> Result<()> {
    Ok(())
}

/// `YYYYMMDD-HHMMSS` in UTC.
fn utc_timestamp(time: std::time::SystemTime) -> String {
    let secs = time.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        let at = |secs| utc_timestamp(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs));
        assert_eq!(at(0), "19700101-000000");
        assert_eq!(at(951_782_400 + 3_723), "20000229-010203"); // a leap day
        assert_eq!(at(1_700_000_000), "20231114-221320");
    }
}
