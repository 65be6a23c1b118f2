//! `gpt2 bench`: throughput figures, and the same shapes in PyTorch for a ratio.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use gpt2::bench::{
    bench_generate, bench_steps, peak_rss_mb, summarize_rounds, BenchKind, BenchResult, GenerateBenchResult,
    GenerateSummary, PytorchResult, Round, RoundsSummary,
};
use gpt2::io::detect;
use gpt2::model::num_params;
use gpt2::ops::lowp::WeightDtype;
use gpt2::ops::matmul::Precision;
use gpt2::Config;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Training step: forward + loss + backward + grad clip + AdamW, on random tokens.
    Train(BenchArgs),
    /// Forward pass with loss only.
    Forward(BenchArgs),
    /// Greedy generation at batch 1 with the KV cache: prefill time and decode tokens/s.
    Generate(GenerateBenchArgs),
    /// Loading a model: wall time, and peak memory against the size of its weights.
    Load(LoadArgs),
    /// `gpt2 serve` under load on loopback: tokens/s and latency with 1, 4, 16, 64 streaming clients.
    Serve(crate::bench_serve::ServeBenchArgs),
}

#[derive(Args)]
pub struct GenerateBenchArgs {
    /// Model size: gpt2, gpt2-medium, gpt2-large, gpt2-xl, shakespeare-char (random weights).
    #[arg(long, default_value = "gpt2")]
    preset: String,
    /// Length of the (random) prompt, in tokens.
    #[arg(long, default_value_t = 16)]
    prompt_tokens: usize,
    /// Tokens generated per run.
    #[arg(long, default_value_t = 128)]
    new_tokens: usize,
    /// Timed runs (medians are reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Untimed runs first (warming caches and page tables).
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Weights in f32, bf16 (half the bytes, read twice as fast) or q8_0 (34 bytes per 32
    /// weights): the random weight matrices are stored so, products accumulate in
    /// f32; `gpt2 info` shows the kernels.
    #[arg(long, default_value = "f32")]
    dtype: WeightDtype,
    /// Also run scripts/bench_pytorch.py --mode generate (Hugging Face generate) with this
    /// Python and print the ratio.
    #[arg(long, value_name = "PYTHON")]
    pytorch: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct LoadArgs {
    /// The model (any format, detected from its contents).
    #[arg(long)]
    model: PathBuf,
    /// Weights in f32, bf16 (half the bytes, read twice as fast) or q8_0 (34 bytes per 32
    /// weights): the weight matrices are converted as the model loads, products accumulate in
    /// f32; `gpt2 info` shows the kernels.
    #[arg(long, default_value = "f32")]
    dtype: WeightDtype,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct BenchArgs {
    /// Model size: gpt2, gpt2-medium, gpt2-large, gpt2-xl, shakespeare-char.
    #[arg(long, default_value = "gpt2")]
    preset: String,
    /// Transformer blocks [default: the preset's].
    #[arg(long)]
    n_layer: Option<usize>,
    /// Attention heads per block; must divide --n-embd [default: the preset's].
    #[arg(long)]
    n_head: Option<usize>,
    /// Width of the embeddings and the residual stream; the MLP is 4x as wide [default: the preset's].
    #[arg(long)]
    n_embd: Option<usize>,
    /// Vocabulary size in tokens [default: the preset's].
    #[arg(long)]
    vocab_size: Option<usize>,
    /// Batch size B: sequences per step.
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    /// Sequence length T of each batch row, in tokens (at most the preset's positions).
    #[arg(long, default_value_t = 64)]
    block_size: usize,
    /// Timed steps per round (the median is reported).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Untimed steps first, per round.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// The matrix products in f32, or bf16 with f32 sums (PyTorch's peer: bf16 autocast);
    /// bf16 needs AVX512-BF16, else the products run in f32 (said).
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// Also run scripts/bench_pytorch.py with this Python (one with torch) and print the ratio.
    #[arg(long, value_name = "PYTHON")]
    pytorch: Option<PathBuf>,
    /// Repeat the measurement this many times (ours, then PyTorch's, in each round) and report
    /// medians: a shared host drifts by tens of percent from minute to minute, and the ratio
    /// within a round, measured back to back, drifts far less than either time.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

impl BenchArgs {
    fn config(&self) -> Result<Config> {
        let mut c = Config::preset(&self.preset)?;
        c.n_layer = self.n_layer.unwrap_or(c.n_layer);
        c.n_head = self.n_head.unwrap_or(c.n_head);
        c.vocab_size = self.vocab_size.unwrap_or(c.vocab_size);
        if let Some(n_embd) = self.n_embd {
            c.n_embd = n_embd;
            c.n_inner = 4 * n_embd;
        }
        if self.block_size > c.n_positions {
            bail!(
                "--block-size {} exceeds the model's {} positions",
                self.block_size,
                c.n_positions
            );
        }
        c.validate()?;
        Ok(c)
    }
}

pub fn run(cmd: &BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Train(args) => run_steps(args, BenchKind::Train, "train"),
        BenchCommand::Forward(args) => run_steps(args, BenchKind::Forward, "forward"),
        BenchCommand::Generate(args) => run_generate(args),
        BenchCommand::Load(args) => run_load(args),
        BenchCommand::Serve(args) => crate::bench_serve::run(args),
    }
}

/// `gpt2 bench train|forward`: each round ours then PyTorch's (with --pytorch), printed as it
/// ends; then the medians over the rounds.
fn run_steps(args: &BenchArgs, kind: BenchKind, mode: &str) -> Result<()> {
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let config = args.config()?;
    if let (_, Some(note)) = args.precision.on_this_cpu() {
        eprintln!("note: {note}");
    }
    let mut rounds = Vec::with_capacity(args.rounds);
    for _ in 0..args.rounds {
        let round = run_round(args, &config, kind, mode)?;
        if !args.json {
            print_round(mode, &round);
        }
        rounds.push(round);
    }
    let summary = summarize_rounds(&rounds)?;
    if args.json {
        println!("{}", serde_json::to_value(&summary)?); // (a Value prints its keys sorted)
    } else {
        print_summary(&summary);
    }
    Ok(())
}

/// One round: our steps, then PyTorch's with the same shapes when --pytorch is given.
fn run_round(args: &BenchArgs, config: &Config, kind: BenchKind, mode: &str) -> Result<Round> {
    let ours = bench_steps(
        config.clone(),
        kind,
        args.batch_size,
        args.block_size,
        args.steps,
        args.warmup,
        args.precision,
    )?;
    let pytorch = match &args.pytorch {
        Some(python) => {
            let shape = [("--batch-size", args.batch_size), ("--block-size", args.block_size)];
            let runs = [("--steps", args.steps), ("--warmup", args.warmup)];
            Some(run_pytorch(
                python,
                mode,
                config,
                &[&shape[..], &runs[..]].concat(),
                ours.precision.name(),
            )?)
        }
        None => None,
    };
    Ok(Round { ours, pytorch })
}

fn print_round(mode: &str, round: &Round) {
    print_result("gpt2 (rust)", mode, &round.ours);
    if let Some(peer) = &round.pytorch {
        println!(
            "pytorch     {mode}: {:.1} ms/step (median), {:.1} tokens/s, peak RSS {:.0} MiB; speed-up {:.2}x",
            peer.step_ms_median,
            peer.tokens_per_s,
            peer.peak_rss_mb,
            peer.step_speedup(&round.ours)
        );
    }
}

fn print_summary(summary: &RoundsSummary) {
    if summary.rounds > 1 {
        println!(
            "median of {} rounds: {:.1} ms/step, {:.1} tokens/s",
            summary.rounds, summary.ours.step_ms_median, summary.ours.tokens_per_s
        );
    }
    match &summary.versus_pytorch {
        Some(versus) if summary.rounds == 1 => println!("speed-up vs PyTorch: {:.2}x", versus.speedup),
        Some(versus) => println!(
            "speed-up vs PyTorch: {:.2}x (median of the rounds' ratios, {:.2}x to {:.2}x; \
             PyTorch's median {:.1} ms/step)",
            versus.speedup,
            versus.lowest(),
            versus.highest(),
            versus.pytorch_step_ms_median
        ),
        None => {}
    }
}

fn run_load(args: &LoadArgs) -> Result<()> {
    let format = detect(&args.model)?;
    let start = Instant::now();
    let model = format.load_as(args.dtype)?;
    let load_s = start.elapsed().as_secs_f64();
    let params = num_params(&model.config);
    let mib = |bytes: usize| bytes as f64 / (1 << 20) as f64;
    let (weights_mb, f32_mb) = (mib(model.weight_bytes()), mib(4 * params));
    let peak_rss_mb = peak_rss_mb();
    let result = serde_json::json!({
        "format": format.name(),
        "dtype": args.dtype.name(),
        "params": params,
        "load_s": load_s,
        "weights_mb": weights_mb,
        "f32_weights_mb": f32_mb,
        "peak_rss_mb": peak_rss_mb,
        "peak_over_weights": peak_rss_mb / weights_mb,
        "peak_over_f32_weights": peak_rss_mb / f32_mb,
    });
    if args.json {
        println!("{result}");
    } else {
        println!(
            "{}: {params} params loaded in {load_s:.3} s as {}; weights {weights_mb:.0} MiB, peak RSS {peak_rss_mb:.0} MiB \
             ({:.2}x the weights, {:.2}x their {f32_mb:.0} MiB in f32)",
            format.name(),
            args.dtype,
            peak_rss_mb / weights_mb,
            peak_rss_mb / f32_mb
        );
    }
    Ok(())
}

fn print_result(who: &str, mode: &str, r: &BenchResult) {
    println!(
        "{who} {mode}: {:.1} ms/step (median of {}), {:.1} tokens/s, peak RSS {:.0} MiB  [{} params, B={} T={}, {} threads, {} batch shards, {} products]",
        r.step_ms_median,
        r.steps,
        r.tokens_per_s,
        r.peak_rss_mb,
        r.params,
        r.batch_size,
        r.block_size,
        r.threads,
        r.shards,
        r.precision
    );
}

fn run_generate(args: &GenerateBenchArgs) -> Result<()> {
    let config = Config::preset(&args.preset)?;
    let ours = bench_generate(
        config.clone(),
        args.dtype,
        args.prompt_tokens,
        args.new_tokens,
        args.runs,
        args.warmup,
    )?;
    let pytorch = match &args.pytorch {
        Some(python) => {
            let shape = [
                ("--prompt-tokens", args.prompt_tokens),
                ("--new-tokens", args.new_tokens),
            ];
            let runs = [("--steps", args.runs), ("--warmup", args.warmup)];
            Some(run_pytorch(
                python,
                "generate",
                &config,
                &[&shape[..], &runs[..]].concat(),
                peer_dtype(args.dtype),
            )?)
        }
        None => None,
    };
    let summary = GenerateSummary::new(ours, pytorch);
    if args.json {
        println!("{}", serde_json::to_value(&summary)?); // (a Value prints its keys sorted)
        return Ok(());
    }
    print_generate("gpt2 (rust)", &summary.ours);
    if let (Some(peer), Some(speedup)) = (&summary.pytorch, summary.speedup_vs_pytorch) {
        println!(
            "pytorch     generate: prefill {:.1} ms, decode {:.1} tokens/s, peak RSS {:.0} MiB  [Hugging Face generate(), \
             {} weights]",
            peer.prefill_ms.unwrap_or(f64::NAN),
            peer.tokens_per_s,
            peer.peak_rss_mb,
            peer_dtype(args.dtype)
        );
        println!("speed-up vs PyTorch: {speedup:.2}x");
    }
    Ok(())
}

fn print_generate(who: &str, r: &GenerateBenchResult) {
    println!(
        "{who} generate: prefill {:.1} ms, decode {:.1} tokens/s (medians of {}), peak RSS {:.0} MiB  \
         [{} params in {}, prompt {} + {} new tokens, batch 1, {} threads]",
        r.prefill_ms,
        r.tokens_per_s,
        r.runs,
        r.peak_rss_mb,
        r.params,
        r.dtype,
        r.prompt_tokens,
        r.new_tokens,
        r.threads
    );
    println!(
        "memory reads at {:.1} GB/s now: reading every weight once per token caps decoding at {:.1} tokens/s; \
         this is {:.0}% of that",
        r.read_gb_per_s,
        r.bandwidth_bound_tokens_per_s,
        100.0 * r.share_of_bound
    );
}

/// The weights PyTorch's peer of a `dtype` generation runs with: bf16 for bf16, else f32
/// (PyTorch has no q8_0; Hugging Face's f32 generate is what q8_0 is measured against).
fn peer_dtype(dtype: WeightDtype) -> &'static str {
    match dtype {
        WeightDtype::Bf16 => "bf16",
        _ => "f32",
    }
}

/// Runs the PyTorch peer with the model's sizes, the thread count, the given shape flags and
/// `dtype` (f32, or bf16: bf16 weights for generate, autocast for train and forward); returns
/// the result it prints as JSON on its last line.
fn run_pytorch(
    python: &PathBuf,
    mode: &str,
    c: &Config,
    flags: &[(&str, usize)],
    dtype: &str,
) -> Result<PytorchResult> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/bench_pytorch.py");
    let output = Command::new(python)
        .arg(script)
        .args(["--mode", mode, "--json", "--dtype", dtype])
        .args(["--n-layer", &c.n_layer.to_string(), "--n-head", &c.n_head.to_string()])
        .args([
            "--n-embd",
            &c.n_embd.to_string(),
            "--vocab-size",
            &c.vocab_size.to_string(),
        ])
        .args(
            flags
                .iter()
                .flat_map(|(flag, value)| [flag.to_string(), value.to_string()]),
        )
        .args(["--threads", &rayon::current_num_threads().to_string()])
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !output.status.success() {
        bail!("{script} failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("parsing the PyTorch result: {line}"))
}
