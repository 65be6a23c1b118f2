//! `gpt2 score`: mean next-token loss and perplexity of a text.

use crate::adapter_arg::InferenceModel;
use anyhow::{bail, Context, Result};
use clap::Args;
use gpt2::eval::score_tokens;
use gpt2::tokenizer::UnknownChar;
use std::path::{Path, PathBuf};

use crate::tokenize_cmd::parse_ids;

#[derive(Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    model: InferenceModel,
    /// Text file to score, tokenized with the model's own tokenizer.
    #[arg(long, conflicts_with = "tokens")]
    text: Option<PathBuf>,
    /// File of whitespace-separated token ids to score (instead of --text).
    #[arg(long)]
    tokens: Option<PathBuf>,
    /// Print one JSON object: {"tokens", "predictions", "loss", "perplexity"}.
    #[arg(long)]
    json: bool,
    /// With a char-level model, leave out characters of --text outside its vocabulary instead
    /// of failing.
    #[arg(long)]
    skip_unknown: bool,
}

pub fn run(args: &ScoreArgs) -> Result<()> {
    let loaded = args.model.load()?;
    let model = loaded.model;
    let tokenizer = match args.skip_unknown {
        true => loaded.tokenizer.map(|t| t.with_unknown_chars(UnknownChar::Skip)),
        false => loaded.tokenizer,
    };
    let read = |path: &PathBuf| std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()));
    let ids = match (&args.text, &args.tokens) {
        (Some(path), _) => match &tokenizer {
            Some(tokenizer) => tokenizer
                .encode_parallel(&read(path)?)
                .with_context(|| tokenizing_context(path, tokenizer.kind(), args.skip_unknown))?,
            None => bail!(
                "{} has no tokenizer file and its vocabulary ({}) is not GPT-2's: score token ids with --tokens",
                args.model.model.display(),
                model.config.vocab_size
            ),
        },
        (None, Some(path)) => parse_ids(&read(path)?).with_context(|| path.display().to_string())?,
        (None, None) => bail!("give the text to score with --text <file> (or token ids with --tokens <file>)"),
    };
    let score = score_tokens(&model, &ids)?;
    if args.json {
        println!("{}", serde_json::to_string(&score)?);
    } else {
        println!(
            "{} tokens, {} predictions: loss {:.4} nats/token, perplexity {:.3}",
            score.tokens, score.predictions, score.loss, score.perplexity
        );
    }
    Ok(())
}

/// What an encoding error happened in; for a char-level model, the flag that skips characters
/// outside its vocabulary.
fn tokenizing_context(path: &Path, kind: &str, skip_unknown: bool) -> String {
    match kind == "char" && !skip_unknown {
        true => format!(
            "tokenizing {} (--skip-unknown leaves out characters outside the model's vocabulary)",
            path.display()
        ),
        false => format!("tokenizing {}", path.display()),
    }
}
