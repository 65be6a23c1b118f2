//! `gpt2 score`: mean next-token loss and perplexity of a text.

use anyhow::{bail, Context, Result};
use clap::Args;
use gpt2::eval::score_tokens;
use gpt2::io::{load_model, resolve_model_dir};
use gpt2::tokenizer::Tokenizer;
use gpt2::Gpt;
use std::path::Path;
use std::path::PathBuf;

#[derive(Args)]
pub struct ScoreArgs {
    /// Model: a Hugging Face directory (config.json + model.safetensors), a checkpoint or a run directory.
    #[arg(long)]
    model: PathBuf,
    /// Text file to score, tokenized with the model's own tokenizer.
    #[arg(long, conflicts_with = "tokens")]
    text: Option<PathBuf>,
    /// File of whitespace-separated token ids to score (instead of --text).
    #[arg(long)]
    tokens: Option<PathBuf>,
    /// Print one JSON object: {"tokens", "predictions", "loss", "perplexity"}.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &ScoreArgs) -> Result<()> {
    let mut model = load_model(&args.model)?;
    let read = |path: &PathBuf| std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()));
    let ids = match (&args.text, &args.tokens) {
        (Some(path), _) => model_tokenizer(&args.model, &model)?
            .with_context(|| {
                format!(
                    "{} has no tokenizer file and its vocabulary ({}) is not GPT-2's",
                    args.model.display(),
                    model.config.vocab_size
                )
            })?
            .encode_parallel(&read(path)?)?,
        (None, Some(path)) => read(path)?
            .split_whitespace()
            .map(|w| {
                w.parse::<u32>()
                    .with_context(|| format!("{}: '{w}' is not a token id", path.display()))
            })
            .collect::<Result<Vec<u32>>>()?,
        (None, None) => bail!("give the text to score with --text <file> (or token ids with --tokens <file>)"),
    };
    let score = score_tokens(&mut model, &ids)?;
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

/// The tokenizer a model was trained with: the one saved beside it, else GPT-2's BPE for a
/// model with GPT-2's vocabulary; `None` when there is neither.
pub fn model_tokenizer(path: &Path, model: &Gpt) -> Result<Option<Tokenizer>> {
    if let Some(tokenizer) = Tokenizer::load_dir(&resolve_model_dir(path)?)? {
        return Ok(Some(tokenizer));
    }
    Ok((model.config.vocab_size == 50257).then(Tokenizer::gpt2))
}
