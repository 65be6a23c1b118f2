//! `gpt2 eval`: perplexity in sliding windows, multiple choice (HellaSwag), decoding strategies
//! compared over a prompt set, and exact-match accuracy on instruction records.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use gpt2::data::instructions::read_instructions;
use gpt2::eval::choice::{read_choices, score_choices};
use gpt2::eval::exact::exact_match;
use gpt2::eval::perplexity;
use gpt2::eval::prompts::{compare_strategies, parse_strategies, DEFAULT_STRATEGIES};
use std::path::{Path, PathBuf};

use crate::adapter_arg::InferenceModel;
use crate::generate_cmd::unescape;

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Loss and perplexity of a text in sliding windows of the model's context advancing by
    /// --stride (Hugging Face's perplexity guide); the default stride is the context, as score.
    Perplexity(PerplexityArgs),
    /// Multiple-choice accuracy on HellaSwag-style JSONL (ctx, endings, label): acc by least
    /// summed loss of the ending, acc_norm by least mean loss, as Karpathy's hellaswag.py.
    Choice(ChoiceArgs),
    /// Continue every prompt of a file with each decoding strategy and compare them: tokens,
    /// distinct-1/2, repeated 4-grams and the model's own mean loss on the continuation.
    Prompts(PromptsArgs),
    /// Exact-match accuracy of greedy responses to instruction records (JSON array or JSONL of
    /// instruction, input, output), prompted with the Alpaca template.
    Exact(ExactArgs),
}

#[derive(Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    model: InferenceModel,
    /// Text file to score, tokenized with the model's own tokenizer.
    #[arg(long)]
    text: PathBuf,
    /// Tokens each window advances, 1 to the model's context (default: the context, windows
    /// that do not overlap). Smaller gives each token more context, at context/stride the work.
    #[arg(long)]
    stride: Option<usize>,
    /// Print one JSON object: {"tokens", "predictions", "loss", "perplexity"}, as score does.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ChoiceArgs {
    #[command(flatten)]
    model: InferenceModel,
    /// JSONL file, one item per line: {"ctx", "endings": [...], "label"}.
    #[arg(long)]
    file: PathBuf,
    /// Print {"items", "acc", "acc_norm", "predictions": [{"label", "pred", "pred_norm"}]}.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct PromptsArgs {
    #[command(flatten)]
    model: InferenceModel,
    /// Prompts, one per non-empty line (\n, \t and \\ are understood).
    #[arg(long, default_value = "data/prompts.txt")]
    file: PathBuf,
    /// Comma-separated strategies: greedy, or settings joined by ':' among top-k=K, top-p=P,
    /// t=T (temperature) and rep=R (repetition penalty).
    #[arg(long, default_value = DEFAULT_STRATEGIES)]
    strategies: String,
    /// New tokens per continuation, at most (a continuation also ends at <|endoftext|>).
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Random seed: prompt i (from 0) is sampled with seed + i under every strategy.
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Print {"seed", "max_new_tokens", "summary": [...], "continuations": [...]}.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ExactArgs {
    #[command(flatten)]
    model: InferenceModel,
    /// Instruction records (JSON array or JSONL of instruction, input, output): a test split.
    #[arg(long)]
    file: PathBuf,
    /// New tokens per response, at most (a response ends at <|endoftext|>).
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Print {"items", "correct", "exact_match", "responses": [...]}.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: &EvalCommand) -> Result<()> {
    match cmd {
        EvalCommand::Perplexity(args) => run_perplexity(args),
        EvalCommand::Choice(args) => run_choice(args),
        EvalCommand::Prompts(args) => run_prompts(args),
        EvalCommand::Exact(args) => run_exact(args),
    }
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn run_perplexity(args: &PerplexityArgs) -> Result<()> {
    let (model, tokenizer) = args.model.load_with_tokenizer("it cannot read text")?;
    let ids = tokenizer
        .encode_parallel(&read_text(&args.text)?)
        .with_context(|| format!("tokenizing {}", args.text.display()))?;
    let stride = args.stride.unwrap_or(model.config.n_positions);
    let score = perplexity(&model, &ids, stride)?;
    if args.json {
        println!("{}", serde_json::to_string(&score)?);
    } else {
        println!(
            "{} tokens, {} predictions (stride {stride} of {}): loss {:.4} nats/token, perplexity {:.3}",
            score.tokens, score.predictions, model.config.n_positions, score.loss, score.perplexity
        );
    }
    Ok(())
}

fn run_choice(args: &ChoiceArgs) -> Result<()> {
    let items = read_choices(&args.file)?;
    let (model, tokenizer) = args.model.load_with_tokenizer("it cannot read text")?;
    let score = score_choices(&model, &tokenizer, &items).with_context(|| args.file.display().to_string())?;
    if args.json {
        println!("{}", serde_json::to_string(&score)?);
    } else {
        println!(
            "{} items: acc {:.4}, acc_norm {:.4}",
            score.items, score.acc, score.acc_norm
        );
    }
    Ok(())
}

fn run_prompts(args: &PromptsArgs) -> Result<()> {
    let strategies = parse_strategies(&args.strategies).context("--strategies")?;
    let prompts: Vec<String> = read_text(&args.file)?
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(unescape)
        .collect();
    if prompts.is_empty() {
        bail!("{}: no prompts (one per non-empty line)", args.file.display());
    }
    let (model, tokenizer) = args.model.load_with_tokenizer("it cannot read text")?;
    let report = compare_strategies(
        &model,
        &tokenizer,
        &prompts,
        &strategies,
        args.max_new_tokens,
        args.seed,
    )
    .with_context(|| args.file.display().to_string())?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    for c in &report.continuations {
        println!("--- {:?} [{}]\n{}{}\n", c.prompt, c.strategy, c.prompt, c.text);
    }
    println!(
        "{:<28} {:>7} {:>10} {:>10} {:>14} {:>9}",
        "strategy", "tokens", "distinct-1", "distinct-2", "repeated-4gram", "own loss"
    );
    for s in &report.summary {
        let m = &s.mean;
        println!(
            "{:<28} {:>7.1} {:>10.3} {:>10.3} {:>14.3} {:>9.3}",
            s.strategy, m.tokens, m.distinct_1, m.distinct_2, m.repeated_4gram, m.mean_loss
        );
    }
    println!(
        "(means over {} prompts; seed {}; up to {} new tokens)",
        report.continuations.len() / report.summary.len().max(1),
        report.seed,
        report.max_new_tokens
    );
    Ok(())
}

fn run_exact(args: &ExactArgs) -> Result<()> {
    let records = read_instructions(&args.file)?;
    let (model, tokenizer) = args.model.load_with_tokenizer("it cannot read text")?;
    let result = exact_match(&model, &tokenizer, &records, args.max_new_tokens)
        .with_context(|| args.file.display().to_string())?;
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        println!(
            "exact match {}/{} = {:.1}%",
            result.correct,
            result.items,
            100.0 * result.exact_match
        );
    }
    Ok(())
}
