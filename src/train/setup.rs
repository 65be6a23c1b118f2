//! Setting a run up: a new run (corpus, tokenizer, model, run directory, `init/`) or a resumed
//! one (its `latest/` checkpoint, its recorded settings, the same corpus), both assembled into
//! a [`Trainer`].

use super::checkpoint::{self, weights_sha256, Checkpoint, TrainerState};
use super::config::{self, Overrides, TrainConfig};
use super::data::TrainData;
use super::metrics::{MetricsLog, METRICS_FILE};
use super::run_dir::{self, create_run_dir};
use super::{Outputs, RunInfo, Trainer, DROPOUT_STREAM};
use crate::config::Config;
use crate::data::instructions::is_instruction_file;
use crate::data::{
    corpus_key, eval_starts, read_corpus, tokenize_cached, BatchStream, Dataset, Document, Split, Windows,
};
use crate::error::{Error, Result};
use crate::io::lock::DirLock;
use crate::io::peft::{write_adapter_files, ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use crate::io::{atomic, cache, load_model_with_tokenizer, save_model, ExportFormat, Loaded};
use crate::memory::{product, sum, Need};
use crate::model::data_parallel::{auto_shards, shard_rows};
use crate::model::lora::{lora_specs, Lora};
use crate::model::{num_params, DataParallel, Gpt, KvCache, KvDtype, TensorSpec, Workspace};
use crate::optim::{AdamW, AdamWConfig, LrSchedule};
use crate::rng::Rng;
use crate::runlog::jsonl::JsonLines;
use crate::runlog::param_stats;
use crate::runlog::INIT_DIR;
use crate::tokenizer::{CharLevel, Tokenizer};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

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
        // More shards than batch rows would get no rows: the same run, with idle threads and
        // gradient buffers.
        let shards = config
            .data_parallel
            .unwrap_or_else(|| auto_shards(num_params(&model_config), config.batch_size))
            .min(config.batch_size);
        let held = if init.is_some() {
            Held::Parameters
        } else {
            Held::Nothing
        };
        let lora = config.lora()?;
        let trainable = lora.as_ref().map_or(num_params(&model_config), |l| {
            lora_specs(&model_config, l).iter().map(TensorSpec::numel).sum()
        });
        check_memory(&config, &model_config, trainable, block_size, shards, held)?;
        let (data, corpus_key, cached) = train_data(&config, &docs, &tokenizer, block_size)?;
        let prompt = encode_prompt(&config.prompt, &tokenizer, &model_config)?;
        let mut model = match init {
            Some(Loaded { mut model, .. }) => {
                model.config.dropout = config.dropout;
                model
            }
            None => Gpt::new(model_config.clone(), config.seed)?,
        };
        let base_sha256 = lora.as_ref().map(|_| weights_sha256(&model.params));
        if let Some(lora) = lora {
            model.adapter = Some(Lora::new(&model, lora, config.seed)?);
        }
        let (run_dir, lock) = create_run_dir(config.out_dir.as_deref())?;
        let config = TrainConfig {
            tokenizer: Some(tokenizer_spec),
            n_layer: Some(model_config.n_layer),
            n_head: Some(model_config.n_head),
            n_embd: Some(model_config.n_embd),
            block_size: Some(block_size),
            lr_decay_iters: Some(config.lr_decay_iters.unwrap_or(config.max_iters)),
            data_parallel: Some(shards),
            out_dir: Some(run_dir.clone()),
            ..config
        };
        save_init(&model, &tokenizer, &config, &run_dir.join(INIT_DIR))?;
        let optimizer = AdamW::new(adamw_config(&config), &model.trainable_specs());
        let parts = Parts {
            stream: BatchStream::new(windows(&config), config.seed),
            dropout_rng: Rng::new(config.seed ^ DROPOUT_STREAM),
            step: 0,
            tokens_seen: 0,
            best_val_loss: None,
            elapsed_s: 0.0,
            checkpoint_step: None,
            base_sha256,
            resumed: false,
            cached,
            files: docs.len(),
            corpus_key,
            lock: Some(lock),
        };
        Trainer::assemble(config, run_dir, model, optimizer, tokenizer, data, prompt, parts)
    }

    /// Continues the run in `run_dir` from its `latest/` checkpoint. `overrides` are the settings
    /// the user gave again: only [`config::RESUMABLE_KEYS`] may differ from the run's.
    pub fn resume(run_dir: &Path, overrides: &Overrides) -> Result<Trainer> {
        let run_dir = run_of(run_dir)?;
        let (dir, lock) = latest_checkpoint(run_dir)?;
        let Checkpoint {
            mut model,
            optimizer_m,
            optimizer_v,
            tokenizer,
            state,
        } = checkpoint::load(&dir)?;
        let config = resumed_config(run_dir, &dir, &state.config, overrides, model.config.n_positions)?;
        let block_size = config.block_size.expect("resolved by resumed_config");
        let expected = (config.n_layer, config.n_head, config.n_embd);
        let cfg = &model.config;
        if expected != (Some(cfg.n_layer), Some(cfg.n_head), Some(cfg.n_embd)) || block_size > cfg.n_positions {
            return Err(Error::weights(
                &dir,
                "config.json does not match the settings in trainer.json",
            ));
        }
        model.config.dropout = config.dropout;
        let shards = config
            .data_parallel
            .expect("resolved by resumed_config")
            .min(config.batch_size);
        let trainable = model.trainable().len();
        check_memory(
            &config,
            &model.config,
            trainable,
            block_size,
            shards,
            Held::ParametersAndMoments,
        )?;
        let prompt = encode_prompt(&config.prompt, &tokenizer, &model.config)?;
        let docs = read_corpus(&config.data)?;
        let cache_dir = shard_cache_dir(&config)?;
        if data_key(&config, &docs, &tokenizer, &cache_dir)? != state.corpus_key {
            return Err(Error::Input(format!(
                "{}: the corpus ({}) is not the one this run was trained on: its text or tokenizer changed",
                run_dir.display(),
                data_paths(&config)
            )));
        }
        let (data, corpus_key, cached) = train_data(&config, &docs, &tokenizer, block_size)?;
        let mut optimizer = AdamW::new(adamw_config(&config), &model.trainable_specs());
        (optimizer.m, optimizer.v, optimizer.t) = (optimizer_m, optimizer_v, state.optimizer_step);
        let parts = Parts {
            stream: BatchStream::resume(windows(&config), config.seed, state.data_position)?,
            dropout_rng: state.dropout_rng,
            step: state.step,
            tokens_seen: state.tokens_seen,
            best_val_loss: state.best_val_loss,
            elapsed_s: state.elapsed_s,
            checkpoint_step: Some(state.step),
            base_sha256: state.base_sha256,
            resumed: true,
            cached,
            files: docs.len(),
            corpus_key,
            lock: Some(lock),
        };
        let run_dir = run_dir.to_path_buf();
        Trainer::assemble(config, run_dir, model, optimizer, tokenizer, data, prompt, parts)
    }

    /// The trainer of a rank other than 0 in a run over several: rank 0 made or resumed the run
    /// (`state`, `run_dir`, the model's `config` and `params`); this rank reads the corpus and
    /// checks that it is the one rank 0 read. It writes nothing but the token cache.
    pub(super) fn follow(
        state: &TrainerState,
        run_dir: PathBuf,
        resumed: bool,
        mut model_config: Config,
        params: Vec<f32>,
    ) -> Result<Trainer> {
        let config = state.config.clone();
        if config.lora()?.is_some() {
            return Err(Error::Config(
                "LoRA training over MPI ranks is not supported yet: train the adapter in one process".into(),
            ));
        }
        let docs = read_corpus(&config.data)?;
        let (tokenizer, _) = resolve_tokenizer(config.tokenizer.as_deref(), &docs, None)?;
        let block_size = config.block_size.expect("resolved by rank 0");
        let (data, corpus_key, cached) = train_data(&config, &docs, &tokenizer, block_size)?;
        if corpus_key != state.corpus_key {
            return Err(Error::Input(format!(
                "the corpus ({}) or tokenizer this rank read is not the one rank 0 read: every \
                 machine needs the same files at the same paths",
                data_paths(&config)
            )));
        }
        model_config.dropout = config.dropout;
        let model = Gpt::from_params(model_config, params);
        let prompt = encode_prompt(&config.prompt, &tokenizer, &model.config)?;
        // The moments come from rank 0 once every rank is set up.
        let optimizer = AdamW::shard(adamw_config(&config), &model.trainable_specs(), &[]);
        let parts = Parts {
            stream: BatchStream::resume(windows(&config), config.seed, state.data_position.clone())?,
            dropout_rng: state.dropout_rng.clone(),
            step: state.step,
            tokens_seen: state.tokens_seen,
            best_val_loss: state.best_val_loss,
            elapsed_s: state.elapsed_s,
            checkpoint_step: resumed.then_some(state.step),
            resumed,
            cached,
            files: docs.len(),
            corpus_key,
            base_sha256: None,
            lock: None,
        };
        Trainer::assemble(config, run_dir, model, optimizer, tokenizer, data, prompt, parts)
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        config: TrainConfig,
        run_dir: PathBuf,
        model: Gpt,
        optimizer: AdamW,
        tokenizer: Tokenizer,
        data: TrainData,
        prompt: Vec<u32>,
        parts: Parts,
    ) -> Result<Trainer> {
        let block_size = config.block_size.expect("resolved when the run started");
        // Runs recorded before shards were capped at the batch size: the same run (the shards
        // beyond the batch had no rows).
        let shards = config
            .data_parallel
            .expect("resolved when the run started")
            .min(config.batch_size);
        let (b, iters, w) = (config.batch_size, config.eval_iters, windows(&config));
        let eval_batches = [
            eval_starts(
                w,
                config.seed,
                data.span(Split::Train, block_size),
                block_size,
                b,
                iters,
            ),
            eval_starts(w, config.seed, data.span(Split::Val, block_size), block_size, b, iters),
        ];
        let schedule = LrSchedule {
            lr: config.lr,
            min_lr: config.min_lr,
            warmup_iters: config.warmup_iters,
            lr_decay_iters: config.lr_decay_iters.unwrap_or(config.max_iters),
            decay_lr: config.decay_lr,
        };
        let outputs = match parts.lock {
            Some(lock) => Some(Outputs {
                log: MetricsLog::open(&run_dir.join(METRICS_FILE), parts.step)?,
                param_log: JsonLines::open(&run_dir.join(param_stats::FILE), parts.step)?.0,
                _lock: lock,
            }),
            None => None,
        };
        let (precision, precision_note) = config.precision.on_this_cpu();
        let info = RunInfo {
            run_dir: run_dir.clone(),
            resumed: parts.resumed,
            start_step: parts.step,
            max_iters: config.max_iters,
            files: parts.files,
            tokens: data.split_tokens().iter().sum(),
            train_tokens: data.split_tokens()[0],
            val_tokens: data.split_tokens()[1],
            records: data.records(),
            cached: parts.cached,
            shard: match &data {
                TrainData::Tokens(tokens) => tokens.shard.path().to_path_buf(),
                TrainData::Instructions { .. } => config.data[0].clone(),
            },
            tokenizer: config.tokenizer.clone().unwrap_or_default(),
            vocab_size: tokenizer.vocab_size(),
            params: model.params.len(),
            trainable: model.trainable().len(),
            model: model.config.clone(),
            tokens_per_step: b * block_size * config.grad_accum,
            shards,
            precision,
            precision_note,
            ranks: 1,
            rank: 0,
        };
        Ok(Trainer {
            parallel: DataParallel::new(&model, shards, precision)?,
            grads: model.new_gradients(),
            corpus_key: parts.corpus_key,
            config,
            run_dir,
            model,
            optimizer,
            ranks: None,
            tokenizer,
            data,
            stream: parts.stream,
            dropout_rng: parts.dropout_rng,
            schedule,
            eval_batches,
            prompt,
            block_size,
            step: parts.step,
            tokens_seen: parts.tokens_seen,
            best_val_loss: parts.best_val_loss,
            elapsed_s: parts.elapsed_s,
            checkpoint_step: parts.checkpoint_step,
            base_sha256: parts.base_sha256,
            outputs,
            info,
        })
    }
}

/// The state that differs between a new run and a resumed one.
struct Parts {
    stream: BatchStream,
    dropout_rng: Rng,
    step: usize,
    tokens_seen: u64,
    best_val_loss: Option<f32>,
    elapsed_s: f64,
    checkpoint_step: Option<usize>,
    /// A LoRA run: the SHA-256 of its base's weights.
    base_sha256: Option<String>,
    resumed: bool,
    cached: bool,
    files: usize,
    /// The key of the corpus and tokenizer ([`corpus_key`]), which a resumed run must match.
    corpus_key: String,
    /// The lock on the run directory; None on the ranks other than 0, which write nothing there.
    lock: Option<DirLock>,
}

/// The corpus files and directories of a run, for a message.
fn data_paths(config: &TrainConfig) -> String {
    let paths: Vec<String> = config.data.iter().map(|p| p.display().to_string()).collect();
    paths.join(", ")
}

/// What a run has in memory before its memory is checked.
#[derive(Clone, Copy, PartialEq, PartialOrd)]
enum Held {
    Nothing,
    /// The --init model's parameters.
    Parameters,
    /// A checkpoint's parameters and AdamW moments (a resumed run).
    ParametersAndMoments,
}

/// What training will allocate, checked against the machine before it does: the parameters
/// (unless `held`), AdamW's two moments of the `trainable` parameters (unless `held`), one
/// gradient buffer of those per batch shard, the
/// activations of a batch split over the shards, the positions of the evaluation batches and
/// the evaluation sample's pass (a KV cache of the whole context, recomputed when it fills).
fn check_memory(
    config: &TrainConfig,
    model: &Config,
    trainable: usize,
    t: usize,
    shards: usize,
    held: Held,
) -> Result<()> {
    let (p, b, shards) = (num_params(model), config.batch_size, shards.max(1));
    let dropout = config.dropout > 0.0;
    let per_shard: Vec<u64> = shard_rows(b, shards)
        .map(|rows| Workspace::floats(model, rows, t, dropout))
        .collect();
    let activations = sum(&per_shard);
    let n = model.n_positions;
    let sample = KvCache::cache_floats(model, 1, n, KvDtype::F32).saturating_add(KvCache::pass_floats(model, 1, n));
    Need::new()
        .floats("parameters", if held < Held::Parameters { p as u64 } else { 0 })
        .floats(
            "AdamW moments",
            if held < Held::ParametersAndMoments {
                product(&[2, trainable])
            } else {
                0
            },
        )
        .floats("gradients", product(&[shards, trainable]))
        .floats(format!("activations of {b} × {t} tokens"), activations)
        .floats("evaluation batches", product(&[4, b, config.eval_iters])) // 2 splits of usize
        .floats("evaluation sample", sample)
        .check(
            "training",
            &format!(
                "lower --batch-size (now {b}) or --block-size (now {t}), use fewer --data-parallel shards \
                 (now {shards}), or choose a smaller model"
            ),
        )
}

/// Writes `init/`, the model before training: the whole model, or for a LoRA run the new
/// adapter alone (its base is the run's `--init`); with the tokenizer.
fn save_init(model: &Gpt, tokenizer: &Tokenizer, config: &TrainConfig, dir: &Path) -> Result<()> {
    let Some(adapter) = &model.adapter else {
        return save_model(model, Some(tokenizer), ExportFormat::HuggingFace, dir);
    };
    let base = config.init.as_ref().map(|p| p.to_string_lossy());
    // Only an adapter's init/ (of a run stopped before its first checkpoint) may be replaced.
    atomic::check_replaceable(dir, "the init/ adapter of a training run", |p| {
        std::fs::read_dir(p).is_ok_and(|entries| {
            entries.flatten().all(|e| {
                let name = e.file_name();
                [ADAPTER_CONFIG, ADAPTER_WEIGHTS, "tokenizer.json"].contains(&name.to_string_lossy().as_ref())
            })
        })
    })?;
    atomic::write_dir(dir, |tmp| {
        write_adapter_files(adapter, &model.config, base.as_deref(), tmp)?;
        tokenizer.save(tmp)
    })
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

/// The run's data: one instruction file ([`is_instruction_file`]) as examples, else the corpus
/// tokenized into a shard (from the cache when it is there); its corpus key, and whether the
/// shard was cached.
fn train_data(
    config: &TrainConfig,
    docs: &[Document],
    tokenizer: &Tokenizer,
    block_size: usize,
) -> Result<(TrainData, String, bool)> {
    let cache_dir = shard_cache_dir(config)?;
    if let [path] = config.data.as_slice() {
        if is_instruction_file(path)? {
            let val = config.val_data.as_deref();
            let data = TrainData::instructions(path, val, tokenizer, block_size, config.val_fraction)?;
            return Ok((data, data_key(config, docs, tokenizer, &cache_dir)?, false));
        }
    }
    if let Some(val) = &config.val_data {
        return Err(Error::Input(format!(
            "--val-data {} is for instruction data: give one instruction file as --data (a text corpus validates on its last --val-fraction)",
            val.display()
        )));
    }
    let (shard, cached) = tokenize_cached(docs, tokenizer, &cache_dir)?;
    let key = shard_key(&shard);
    Ok((
        TrainData::Tokens(Dataset::new(shard, config.val_fraction, block_size)?),
        key,
        cached,
    ))
}

/// The key a run's data is known by, which a resumed run must match: the corpus and the
/// tokenizer ([`corpus_key`]), with the --val-data file's text after the corpus's when given.
fn data_key(config: &TrainConfig, docs: &[Document], tokenizer: &Tokenizer, cache_dir: &Path) -> Result<String> {
    match &config.val_data {
        None => corpus_key(docs, tokenizer, cache_dir),
        Some(val) => corpus_key(
            &[docs, &read_corpus(std::slice::from_ref(val))?].concat(),
            tokenizer,
            cache_dir,
        ),
    }
}

/// Where token shards are cached: `--cache-dir`, else `tokens/` in the model cache.
fn shard_cache_dir(config: &TrainConfig) -> Result<PathBuf> {
    match &config.cache_dir {
        Some(dir) => Ok(dir.clone()),
        None => Ok(cache::default_cache_dir()?.join("tokens")),
    }
}

/// The run directory that `--resume PATH` names: PATH itself, or the run of PATH when it is
/// the run's latest/ checkpoint (another checkpoint, best/, is not where the run stopped).
fn run_of(path: &Path) -> Result<&Path> {
    if !path.join(checkpoint::TRAINER_FILE).is_file() {
        return Ok(path);
    }
    if path.file_name() != Some("latest".as_ref()) {
        return Err(Error::Input(format!(
            "{0}: --resume continues a run from where it stopped, its latest/ checkpoint; \
             give the run directory, or fine-tune from this checkpoint with --init {0}",
            path.display()
        )));
    }
    Ok(path.parent().unwrap_or(Path::new(".")))
}

/// The run's latest/ checkpoint, with the run directory locked ([`run_dir::lock`]) and checked
/// ([`run_dir::check_entries`]), and the temporaries of killed runs removed from it.
fn latest_checkpoint(run_dir: &Path) -> Result<(PathBuf, DirLock)> {
    let dir = run_dir.join("latest");
    let not_a_run = || {
        Error::Input(format!(
            "{}: not a training run (no latest/{})",
            run_dir.display(),
            checkpoint::TRAINER_FILE
        ))
    };
    // Locking makes the lock file: not in a directory that holds no run.
    if !atomic::exists_or_recoverable(&dir) {
        return Err(not_a_run());
    }
    let lock = run_dir::lock(run_dir)?;
    if !dir.join(checkpoint::TRAINER_FILE).is_file() {
        return Err(not_a_run());
    }
    run_dir::check_entries(run_dir, true)?;
    atomic::remove_stale_temps(run_dir);
    Ok((dir, lock))
}

/// The settings of a resumed run: the recorded ones with the user's `overrides`, which may only
/// change [`config::RESUMABLE_KEYS`]; `n_positions`: the checkpoint's context.
fn resumed_config(
    run_dir: &Path,
    dir: &Path,
    recorded: &TrainConfig,
    overrides: &Overrides,
    n_positions: usize,
) -> Result<TrainConfig> {
    let conflicts = recorded.conflicts(overrides, &config::RESUMABLE_KEYS)?;
    if !conflicts.is_empty() {
        return Err(Error::Config(format!(
            "{}: a resumed run keeps its settings, but these differ: {}. Start a new run instead, or fine-tune from this one with --init {}",
            run_dir.display(),
            conflicts.join(", "),
            dir.display()
        )));
    }
    let config = TrainConfig {
        out_dir: Some(run_dir.to_path_buf()),
        // Runs recorded before these settings existed trained on whole contexts, unsharded.
        block_size: Some(recorded.block_size.unwrap_or(n_positions)),
        data_parallel: Some(recorded.data_parallel.unwrap_or(1)),
        ..recorded.with_overrides(overrides)?
    };
    config.validate()?;
    Ok(config)
}
