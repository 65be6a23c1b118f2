//! `gpt2 score`: mean next-token loss and perplexity of a text.

use anyhow::{bail, Context, Result};
use clap::Args;
use gpt2::eval::score_tokens;
use gpt2::io::load_model;
use std::path::PathBuf;

#[derive(Args)]
pub struct ScoreArgs {
    /// Model: a Hugging Face directory (config.json + model.safetensors), a checkpoint or a run directory.
    #[arg(long)]
    model: PathBuf,
    /// File of whitespace-separated token ids to score.
    #[arg(long)]
    tokens: Option<PathBuf>,
    /// Print one JSON object: {"tokens", "predictions", "loss", "perplexity"}.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &ScoreArgs) -> Result<()> {
    let mut model = load_model(&args.model)?;
    let Some(path) = &args.tokens else {
        bail!("give the text to score with --tokens <file>")
    };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let ids = text
        .split_whitespace()
        .map(|w| {
            w.parse::<u32>()
                .with_context(|| format!("{}: '{w}' is not a token id", path.display()))
        })
        .collect::<Result<Vec<u32>>>()?;
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
