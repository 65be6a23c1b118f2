//! `gpt2 train`: train a GPT on text, with a progress bar, evaluations, samples and checkpoints.

use anyhow::{bail, Context, Result};
use clap::Args;
use gpt2::ops::matmul::Precision;
use gpt2::train::config::MAX_ITERS;
use gpt2::train::{Event, Overrides, RunInfo, RunOptions, Summary, TrainConfig, Trainer};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Every setting is optional here: what is not given comes from --config, else the default.
/// In a TOML file the keys are the flag names with '_' (nanoGPT's names; `learning_rate` and
/// `gradient_accumulation_steps` are accepted too).
#[derive(Args, Serialize)]
pub struct TrainArgs {
    /// TOML file of settings; flags override it. See configs/.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Continue the run in RUN_DIR from its latest checkpoint, exactly as if it had not stopped
    /// (only --max-iters, --eval-*, --cache-dir and the sample settings may change).
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "out_dir")]
    #[serde(skip)]
    resume: Option<PathBuf>,

    /// Text files or directories of text files, or one instruction file (a JSON array or JSONL of
    /// {"instruction", "input", "output"}: the loss on the responses only) [default: the bundled
    /// data/tinyshakespeare.txt].
    #[arg(long, num_args = 1.., value_name = "PATH", value_parser = absolute, help_heading = "Data")]
    data: Option<Vec<PathBuf>>,
    /// char (one token per character of the corpus), char:<file>, gpt2 or bpe:<file>
    /// [default: char, or the --init model's tokenizer].
    #[arg(long, value_name = "SPEC", help_heading = "Data")]
    tokenizer: Option<String>,
    /// Where tokenised corpora are cached [default: tokens/ in the model cache: $GPT2_CACHE_DIR, else $XDG_CACHE_HOME/gpt2, else ~/.cache/gpt2].
    #[arg(long, value_name = "DIR", value_parser = absolute, help_heading = "Data")]
    cache_dir: Option<PathBuf>,
    /// Fraction of the corpus, at its end, held out for validation [default: 0.1].
    #[arg(long, value_parser = finite::<f64>, help_heading = "Data")]
    val_fraction: Option<f64>,
    /// With an instruction file as --data: validate on this file's records instead of the last
    /// --val-fraction of it.
    #[arg(long, value_name = "PATH", value_parser = absolute, help_heading = "Data")]
    val_data: Option<PathBuf>,
    /// Train on sliding windows with this stride, in a shuffled order per epoch [default: random windows].
    #[arg(long, help_heading = "Data")]
    stride: Option<usize>,
    /// Seed of initialisation, batches, dropout and samples [default: 1337].
    #[arg(long, help_heading = "Data")]
    seed: Option<u64>,

    /// Model shape: gpt2, gpt2-medium, gpt2-large, gpt2-xl or shakespeare-char
    /// [default: 4 layers, 4 heads, 128 wide, block 64].
    #[arg(long, help_heading = "Model")]
    preset: Option<String>,
    /// Fine-tune: start from this model (a checkpoint or run directory, a Hugging Face, OpenAI or
    /// llm.c GPT-2, or a downloaded model's name such as gpt2) and its tokenizer.
    #[arg(long, value_name = "MODEL", help_heading = "Model")]
    init: Option<PathBuf>,
    /// Transformer blocks of a new model [default: 4, or the preset's].
    #[arg(long, help_heading = "Model")]
    n_layer: Option<usize>,
    /// Attention heads per block; must divide --n-embd [default: 4, or the preset's].
    #[arg(long, help_heading = "Model")]
    n_head: Option<usize>,
    /// Width of the embeddings and the residual stream [default: 128, or the preset's].
    #[arg(long, help_heading = "Model")]
    n_embd: Option<usize>,
    /// Context length in tokens of the training windows (and of a new model) [default: 64, or the preset's].
    #[arg(long, help_heading = "Model")]
    block_size: Option<usize>,
    /// Dropout probability while training [default: 0].
    #[arg(long, value_parser = finite::<f32>, help_heading = "Model")]
    dropout: Option<f32>,

    /// Train a LoRA adapter of rank R on the frozen --init model (no gradients or optimizer
    /// state for its weights); checkpoints hold the adapter in PEFT's format.
    #[arg(long, value_name = "R", help_heading = "LoRA")]
    lora_r: Option<usize>,
    /// The adapter's scale is alpha / r [default: 8, as PEFT].
    #[arg(long, value_parser = finite::<f32>, help_heading = "LoRA")]
    lora_alpha: Option<f32>,
    /// Dropout on the adapter's input while training [default: 0].
    #[arg(long, value_parser = finite::<f32>, help_heading = "LoRA")]
    lora_dropout: Option<f32>,
    /// Layers to adapt, comma-separated: c_attn, attn.c_proj, c_fc, mlp.c_proj (c_proj: both
    /// projections) [default: c_attn].
    #[arg(long, value_name = "LIST", help_heading = "LoRA")]
    lora_targets: Option<String>,
    /// Train the token embedding too (also the tied LM head): a full copy of it in the adapter,
    /// saved as PEFT's modules_to_save wte and lm_head [default: false].
    #[arg(long, num_args = 0..=1, default_missing_value = "true", help_heading = "LoRA")]
    lora_train_wte: Option<bool>,

    /// Training windows (sequences of --block-size tokens) per micro-batch [default: 12].
    #[arg(long, help_heading = "Optimisation")]
    batch_size: Option<usize>,
    /// Micro-batches whose gradients are summed into one optimizer step [default: 1].
    #[arg(long, visible_alias = "gradient-accumulation-steps", help_heading = "Optimisation")]
    grad_accum: Option<usize>,
    /// Optimizer steps to train to, counted from the start of the run [default: 2000].
    #[arg(long, value_parser = step_count, help_heading = "Optimisation")]
    max_iters: Option<usize>,
    /// Peak learning rate, reached after --warmup-iters [default: 1e-3].
    #[arg(long, value_parser = finite::<f32>, visible_alias = "learning-rate", help_heading = "Optimisation")]
    lr: Option<f32>,
    /// Learning rate at the end of the cosine decay [default: 1e-4].
    #[arg(long, value_parser = finite::<f32>, help_heading = "Optimisation")]
    min_lr: Option<f32>,
    /// Steps of linear warm-up [default: 100].
    #[arg(long, value_parser = step_count, help_heading = "Optimisation")]
    warmup_iters: Option<usize>,
    /// Step where the cosine decay reaches --min-lr [default: --max-iters].
    #[arg(long, value_parser = step_count, help_heading = "Optimisation")]
    lr_decay_iters: Option<usize>,
    /// false: constant learning rate [default: true].
    #[arg(long, help_heading = "Optimisation")]
    decay_lr: Option<bool>,
    /// AdamW weight decay of the matrices and embeddings [default: 0.1].
    #[arg(long, value_parser = finite::<f32>, help_heading = "Optimisation")]
    weight_decay: Option<f32>,
    /// AdamW's decay rate of the first moment (the gradient's running mean) [default: 0.9].
    #[arg(long, value_parser = finite::<f32>, help_heading = "Optimisation")]
    beta1: Option<f32>,
    /// AdamW's decay rate of the second moment (the squared gradient's running mean) [default: 0.99].
    #[arg(long, value_parser = finite::<f32>, help_heading = "Optimisation")]
    beta2: Option<f32>,
    /// Clip the global gradient norm to this; 0: no clipping [default: 1].
    #[arg(long, value_parser = finite::<f32>, help_heading = "Optimisation")]
    grad_clip: Option<f32>,
    /// Batch shards trained side by side, each on its own thread with its own workspace
    /// (fast for small models) [default: one per thread up to 32M parameters, else 1].
    #[arg(long, help_heading = "Optimisation")]
    data_parallel: Option<usize>,
    /// The matrix products in f32, or in bf16 with f32 sums (mixed precision: the weights,
    /// gradients, AdamW moments and checkpoints stay f32); bf16 needs AVX512-BF16, else f32 (said)
    /// [default: f32].
    #[arg(long, help_heading = "Optimisation")]
    precision: Option<Precision>,

    /// Evaluate (and checkpoint) every N optimizer steps [default: 500].
    #[arg(long, value_parser = step_count, help_heading = "Evaluation and output")]
    eval_interval: Option<usize>,
    /// Batches of each split per evaluation [default: 20].
    #[arg(long, value_parser = step_count, help_heading = "Evaluation and output")]
    eval_iters: Option<usize>,
    /// Prompt of the sample at each evaluation [default: a newline].
    #[arg(long, help_heading = "Evaluation and output")]
    prompt: Option<String>,
    /// New tokens of that sample [default: 200].
    #[arg(long, value_parser = step_count, help_heading = "Evaluation and output")]
    sample_tokens: Option<usize>,
    /// Softmax temperature of the sample; 0: greedy [default: 0.8].
    #[arg(long, value_parser = finite::<f32>, help_heading = "Evaluation and output")]
    temperature: Option<f32>,
    /// Sample among the k most likely tokens; 0: all [default: 200].
    #[arg(long, help_heading = "Evaluation and output")]
    top_k: Option<usize>,
    /// Run directory [default: runs/<UTC time>, linked from runs/latest].
    #[arg(long, value_name = "DIR", help_heading = "Evaluation and output")]
    out_dir: Option<PathBuf>,
    /// Keep the last K checkpoints as step-NNNNNN/ directories besides latest/ and best/ [default: 0].
    #[arg(long, value_name = "K", help_heading = "Evaluation and output")]
    keep_checkpoints: Option<usize>,
    /// When standard output is not a terminal (no progress bar), print a line (step, loss, lr,
    /// ms/step, tokens/s) every N steps; 0: none. Not a setting of the run.
    #[arg(long, value_name = "N", default_value_t = 10, help_heading = "Evaluation and output")]
    #[serde(skip)]
    log_interval: usize,
}

/// A number that must be finite. NaN and infinities cannot be left to the range checks of the
/// settings: on their way there (as JSON) they would become null, "not set".
fn finite<T>(text: &str) -> std::result::Result<T, String>
where
    T: std::str::FromStr + Copy + Into<f64>,
    T::Err: std::fmt::Display,
{
    let x: T = text.parse().map_err(|e| format!("{e}"))?;
    match x.into().is_finite() {
        true => Ok(x),
        false => Err(format!("{text} is not a finite number")),
    }
}

/// A count of steps (or of tokens, or batches) up to [`MAX_ITERS`].
fn step_count(text: &str) -> std::result::Result<usize, String> {
    let n: usize = text.parse().map_err(|e| format!("{e}"))?;
    match n <= MAX_ITERS {
        true => Ok(n),
        false => Err(format!("{n} is more than the maximum of {MAX_ITERS}")),
    }
}

/// A path made absolute (against the current directory), as the run records it.
fn absolute(path: &str) -> std::io::Result<PathBuf> {
    std::path::absolute(path)
}

pub fn run(args: &TrainArgs) -> Result<()> {
    match gpt2::dist::launched_ranks() {
        Some(ranks) if ranks > 1 => run_ranked(args, ranks),
        _ => {
            let mut trainer = trainer(args)?;
            let interrupt = interrupt_on_ctrl_c(OnStop::Alone)?;
            train(args, &mut trainer, interrupt, None)
        }
    }
}

/// This process's part of a run over the ranks that mpirun started: rank 0 reports as a
/// process training alone does; the others print only their own errors. An error during
/// training ends every rank (MPI_Abort), since the others would wait for this one forever.
#[cfg(feature = "mpi")]
fn run_ranked(args: &TrainArgs, _: usize) -> Result<()> {
    use gpt2::dist::mpi::{abort, MpiRanks};
    use gpt2::dist::Collective;
    let ranks = MpiRanks::init()?;
    let rank = ranks.rank();
    let overrides = settings(args)?;
    if args.resume.is_none() {
        // Before rank 0 makes the run directory.
        let batch_size = TrainConfig::default().with_overrides(&overrides)?.batch_size;
        if let Err(e) = gpt2::dist::rank_rows(batch_size, ranks.ranks(), rank) {
            match rank {
                0 => return Err(e.into()),
                _ => return Ok(()), // rank 0 says why, and exits with an error
            }
        }
    }
    let settings = serde_json::to_vec(&(overrides, &args.resume))?;
    let started = gpt2::dist::identity(&settings)
        .map_err(anyhow::Error::from)
        .and_then(|identity| {
            Ok(Trainer::ranked(Box::new(ranks), identity, || {
                trainer(args).map_err(|e| match e.downcast::<gpt2::Error>() {
                    Ok(e) => e,
                    Err(e) => gpt2::Error::Input(format!("{e:#}")),
                })
            })?)
        });
    let mut trainer = match started {
        Ok(trainer) => trainer,
        // Every rank returns from a failed start, and rank 0 says why (and exits with an
        // error): the others end without one, as mpirun would end the run at once, before rank
        // 0 could say anything.
        Err(e) if rank != 0 && matches!(e.downcast_ref(), Some(gpt2::Error::Stopped(_))) => return Ok(()),
        Err(e) if rank != 0 => bail!("rank {rank}: {e:#}"),
        Err(e) => return Err(e),
    };
    let last_checkpoint = Arc::new(std::sync::Mutex::new(None));
    let on_stop = match rank {
        0 => OnStop::RankZero(last_checkpoint.clone()),
        _ => OnStop::OtherRank,
    };
    let interrupt = interrupt_on_ctrl_c(on_stop)?;
    if let Err(e) = train(args, &mut trainer, interrupt, Some(last_checkpoint)) {
        match rank {
            0 => eprintln!("error: {e:#}"),
            _ => eprintln!("error: rank {rank}: {e:#}"),
        }
        abort(1);
    }
    Ok(())
}

#[cfg(not(feature = "mpi"))]
fn run_ranked(_: &TrainArgs, ranks: usize) -> Result<()> {
    bail!(
        "started by mpirun as one of {ranks} ranks, but this gpt2 was built without MPI: each rank \
         would train alone. Rebuild with `cargo build --release --features mpi` (see docs/distributed.md)"
    )
}

/// Trains to the end (or a stop), reporting on the terminal unless this is a rank other than
/// 0. `last_checkpoint` (a run over several ranks) is kept up to date for the Ctrl-C message.
fn train(
    args: &TrainArgs,
    trainer: &mut Trainer,
    interrupt: Arc<AtomicBool>,
    last_checkpoint: Option<LastCheckpoint>,
) -> Result<()> {
    let options = RunOptions {
        stop_at: None,
        interrupt: Some(interrupt),
    };
    let info = trainer.info();
    if info.rank != 0 {
        let summary = trainer.run(&options, &mut |_| {})?;
        if summary.stopped {
            std::process::exit(130);
        }
        return Ok(());
    }
    let max_iters = info.max_iters;
    let bar = progress_bar(max_iters);
    let log_interval = if bar.is_hidden() { args.log_interval } else { 0 };
    let summary = trainer.run(&options, &mut |event| match event {
        Event::Started(info) => {
            print_start(info);
            if let Some(note) = &info.precision_note {
                println!("note: {note}");
            }
            if let Some(asked) = args.data_parallel.filter(|&s| s > info.shards) {
                println!(
                    "note: --data-parallel {asked} is more shards than the batch has rows; using {}",
                    info.shards
                );
            }
            bar.set_position(info.start_step as u64);
            bar.reset_eta();
        }
        Event::Step(s) => {
            if log_interval > 0 && s.step % log_interval == 0 {
                println!(
                    "step {}: loss {:.4}, lr {:.2e}, {:.2} ms/step, {:.0} tokens/s",
                    s.step,
                    s.train_loss,
                    s.lr,
                    s.step_s * 1e3,
                    s.tokens_per_s
                );
            }
            bar.set_position(s.step as u64 + 1);
            bar.set_message(format!(
                "loss {:.4} lr {:.2e} {:.0} tok/s",
                s.train_loss, s.lr, s.tokens_per_s
            ));
        }
        Event::Eval(e) => bar.suspend(|| {
            println!(
                "step {}: train loss {:.4} (perplexity {:.2}), val loss {:.4} (perplexity {:.2}) [{:.0} s]",
                e.step, e.train_loss, e.train_perplexity, e.val_loss, e.val_perplexity, e.elapsed_s
            );
            println!("  sample: {}", e.sample.replace('\n', "\n          "));
        }),
        Event::Checkpoint(dir) => {
            bar.suspend(|| println!("  saved {}", dir.display()));
            if let Some(last) = last_checkpoint.as_ref().filter(|_| dir.ends_with("latest")) {
                *last.lock().unwrap_or_else(|e| e.into_inner()) = Some(dir.to_path_buf());
            }
        }
    })?;
    bar.finish_and_clear();
    print_summary(&summary, max_iters);
    if let Some(c) = trainer.communication() {
        println!(
            "ranks:      per step (median of {}), {:.1} ms waiting for the gradient's sums after the backward pass \
             (communication it did not hide), {:.1} ms gathering the parameters",
            c.steps,
            c.waiting_s * 1e3,
            c.gathering_s * 1e3
        );
    }
    if args.resume.is_none() && args.out_dir.is_none() && summary.latest.is_some() && !summary.stopped {
        // "ROMEO:" suits the bundled Tiny Shakespeare; another corpus may lack its characters.
        let bundled = args.data.is_none() && args.config.is_none();
        println!("next, try:  {}", next_command(if bundled { "ROMEO:" } else { "\\n" }));
    }
    if summary.stopped {
        std::process::exit(130);
    }
    Ok(())
}

/// The settings of --config and the flags (flags win).
fn settings(args: &TrainArgs) -> Result<Overrides> {
    let mut overrides = match &args.config {
        Some(path) => TrainConfig::overrides_from_toml(path)?,
        None => Overrides::new(),
    };
    let serde_json::Value::Object(flags) = serde_json::to_value(args)? else {
        bail!("flags are an object")
    };
    overrides.extend(flags.into_iter().filter(|(_, v)| !v.is_null()));
    Ok(overrides)
}

/// The trainer of a new run, or of the run to resume, with [`settings`].
fn trainer(args: &TrainArgs) -> Result<Trainer> {
    let overrides = settings(args)?;
    Ok(match &args.resume {
        Some(dir) => Trainer::resume(dir, &overrides)?,
        None => Trainer::new(TrainConfig::default().with_overrides(&overrides)?)?,
    })
}

/// The checkpoint a run over several ranks wrote last (rank 0's), for the message on a stop.
type LastCheckpoint = Arc<std::sync::Mutex<Option<PathBuf>>>;

/// What the process says when stopped.
#[cfg_attr(not(feature = "mpi"), allow(dead_code))] // only MPI builds have ranks
enum OnStop {
    /// Training alone: Ctrl-C saves a checkpoint after the step.
    Alone,
    /// Rank 0 of a run over MPI ranks: mpirun stops the ranks (on Ctrl-C, or when one of them
    /// died) with SIGTERM and soon SIGKILL, so rank 0 names the checkpoint left.
    RankZero(LastCheckpoint),
    /// The other ranks say nothing.
    OtherRank,
}

/// A flag that the first Ctrl-C sets (the run then saves a checkpoint after the current step
/// and stops); a second Ctrl-C quits at once. Built with MPI, a SIGTERM does the same.
fn interrupt_on_ctrl_c(on_stop: OnStop) -> Result<Arc<AtomicBool>> {
    let interrupt = Arc::new(AtomicBool::new(false));
    let flag = interrupt.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        match &on_stop {
            OnStop::Alone => {
                eprintln!("\nCtrl-C: saving a checkpoint after this step (press Ctrl-C again to quit without saving)")
            }
            OnStop::RankZero(last) => {
                let kept = match &*last.lock().unwrap_or_else(|e| e.into_inner()) {
                    Some(dir) => format!("the last checkpoint, {}, is intact", dir.display()),
                    None => "no checkpoint was written yet".into(),
                };
                eprintln!("\nrank 0: stopped by mpirun (Ctrl-C, or a rank that failed); {kept}");
            }
            OnStop::OtherRank => {}
        }
    })
    .context("installing the Ctrl-C handler")?;
    Ok(interrupt)
}

/// The step counter, drawn only on a terminal (piped output gets the printed lines alone).
fn progress_bar(max_iters: usize) -> ProgressBar {
    let bar = if std::io::stdout().is_terminal() {
        ProgressBar::new(max_iters as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30.cyan/blue} step {pos}/{len} {msg} ETA {eta}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar
}

/// What the run trains on and what it trains.
fn print_start(info: &RunInfo) {
    let m = &info.model;
    let source = if info.cached {
        "from the cache"
    } else {
        "tokenised into"
    };
    if info.resumed {
        println!("resuming {} at step {}", info.run_dir.display(), info.start_step);
    }
    match info.records {
        Some([train, val]) => println!(
            "data: instruction records in {}: train {train} / val {val} ({} / {} tokens, the loss on responses only); tokenizer {} ({} ids)",
            info.shard.display(),
            info.train_tokens,
            info.val_tokens,
            info.tokenizer,
            info.vocab_size
        ),
        None => println!(
            "data: {} file{}, {} tokens ({source} {}); tokenizer {} ({} ids); train {} / val {} tokens",
            info.files,
            if info.files == 1 { "" } else { "s" },
            info.tokens,
            info.shard.display(),
            info.tokenizer,
            info.vocab_size,
            info.train_tokens,
            info.val_tokens
        ),
    }
    println!(
        "model: {:.2}M parameters ({} layers, {} heads, {} wide, context {}); {}{} tokens per step in {} batch shard{}, {} products; run dir {}",
        info.params as f64 / 1e6,
        m.n_layer,
        m.n_head,
        m.n_embd,
        m.n_positions,
        if info.records.is_some() { "up to " } else { "" },
        info.tokens_per_step,
        info.shards,
        if info.shards == 1 { "" } else { "s" },
        info.precision,
        info.run_dir.display()
    );
    if info.trainable < info.params {
        println!(
            "LoRA: training {} adapter parameters ({:.3}% of the model's); the base is frozen",
            info.trainable,
            100.0 * info.trainable as f64 / info.params as f64
        );
    }
    if info.ranks > 1 {
        println!(
            "ranks: {} processes started by mpirun train together, each on 1/{} of every batch and {} thread{}",
            info.ranks,
            info.ranks,
            rayon::current_num_threads(),
            if rayon::current_num_threads() == 1 { "" } else { "s" }
        );
    }
}

/// The command that samples from the run just trained, as the user can type it: through cargo
/// when this binary was started by `cargo run` (cargo sets CARGO) or lies in a target/
/// directory, else the binary itself.
fn next_command(prompt: &str) -> String {
    let args = format!("generate --model runs/latest --prompt \"{prompt}\"");
    let exe = std::env::current_exe().unwrap_or_default();
    let in_target = exe
        .ancestors()
        .any(|dir| dir.file_name().is_some_and(|n| n == "target"));
    match std::env::var_os("CARGO").is_some() || in_target {
        true => format!("cargo run --release -- {args}"),
        false => format!("gpt2 {args}"),
    }
}

/// Where the run ended and what it left: the last sample, the checkpoints, the plot and log.
fn print_summary(s: &Summary, max_iters: usize) {
    let dir = s.run_dir.display();
    if let Some(eval) = &s.last_eval {
        println!("\nsample at step {}:\n{}\n", eval.step, eval.sample);
    }
    match &s.latest {
        Some(latest) => println!("checkpoint: {} (step {})", latest.display(), s.step),
        None if s.step == 0 && max_iters == 0 => println!("no checkpoint: --max-iters is 0, so nothing was trained"),
        None if s.step >= max_iters => println!(
            "no new checkpoint: the run is already at step {} and --max-iters is {max_iters}; to train further, \
             raise it: gpt2 train --resume {dir} --max-iters N (N > {})",
            s.step, s.step
        ),
        None => println!("no new checkpoint (nothing trained since the last one)"),
    }
    if let Some(best) = s.best_val_loss {
        println!("best:       {} (val loss {best:.4})", s.run_dir.join("best").display());
    }
    if let Some([png, svg]) = &s.plots {
        println!("loss plot:  {} and {}", png.display(), svg.display());
    }
    println!("metrics:    {}", s.run_dir.join("metrics.jsonl").display());
    match (s.stopped, s.run_dir.join("latest").is_dir()) {
        (true, true) => println!("stopped at step {}; continue with: gpt2 train --resume {dir}", s.step),
        (true, false) => println!("stopped at step {}, before the first checkpoint", s.step),
        _ => {}
    }
}
