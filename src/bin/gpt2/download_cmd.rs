//! `gpt2 download`: fetch OpenAI's GPT-2 into the model cache, with a progress bar.

use anyhow::Result;
use clap::{Args, ValueEnum};
use gpt2::io::cache::{default_cache_dir, Source};
use gpt2::io::download::{download, Event, Request};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

/// Where a model comes from. (Described in --source's help: a described value makes clap switch
/// --help to its long layout, unlike the other commands.)
#[derive(Clone, Copy, ValueEnum)]
enum From {
    Hf,
    Openai,
}

#[derive(Args)]
pub struct DownloadArgs {
    /// gpt2 (124M), gpt2-medium (355M), gpt2-large (774M) or gpt2-xl (1.5B).
    #[arg(value_parser = ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"])]
    model: String,
    /// hf: the Hugging Face hub (safetensors; sizes and sha256 verified); openai: OpenAI's
    /// original TensorFlow checkpoint (sizes and every tensor's crc32c verified).
    #[arg(long, value_enum, default_value = "hf")]
    source: From,
    /// The model cache [default: $GPT2_CACHE_DIR, else $XDG_CACHE_HOME/gpt2, else ~/.cache/gpt2];
    /// `--model gpt2` finds the default cache's copy.
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Fetch from this server instead of huggingface.co or openaipublic.blob.core.windows.net
    /// (a mirror with the same paths).
    #[arg(long, value_name = "URL")]
    base_url: Option<String>,
}

pub fn run(args: &DownloadArgs) -> Result<()> {
    let cache_dir = match &args.cache_dir {
        Some(dir) => dir.clone(),
        None => default_cache_dir()?,
    };
    let req = Request {
        model: &args.model,
        source: match args.source {
            From::Hf => Source::HuggingFace,
            From::Openai => Source::OpenAi,
        },
        cache_dir: &cache_dir,
        base_url: args.base_url.as_deref(),
    };
    let style =
        ProgressStyle::with_template("{msg:32} {bar:30} {bytes:>10}/{total_bytes:10} {bytes_per_sec:>12} {eta:>4}")
            .expect("a valid template");
    let mut bar: Option<ProgressBar> = None;
    let dir = download(&req, &mut |event| match event {
        Event::Cached => eprintln!("{} is already downloaded", args.model),
        Event::Start {
            file,
            size,
            resumed_from,
        } => {
            let b = ProgressBar::new(size.unwrap_or(0))
                .with_style(style.clone())
                .with_message(file.to_string());
            b.set_position(resumed_from);
            bar = Some(b);
        }
        Event::Progress { bytes } => {
            if let Some(b) = &bar {
                b.inc(bytes);
            }
        }
        Event::Verified { file, check } => {
            if let Some(b) = bar.take() {
                b.finish_and_clear();
            }
            eprintln!("{file:32} ok ({check})");
        }
    })?;
    println!("{}", dir.display());
    Ok(())
}
