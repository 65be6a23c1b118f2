//! `gpt2 convert`: read a model in any supported format, write it as a Hugging Face directory or
//! an llm.c checkpoint.

use crate::adapter_arg::load_merged;
use anyhow::Result;
use clap::{Args, ValueEnum};
use gpt2::io::llmc::LlmcDtype;
use gpt2::io::{load_model_with_tokenizer, save_model, ExportFormat};
use std::path::PathBuf;
use std::time::Instant;

/// The formats written. (Described in the flag's help, not here: a described value makes clap
/// switch --help to its long layout, unlike the other commands.)
#[derive(Clone, Copy, ValueEnum)]
enum To {
    Hf,
    Llmc,
}

#[derive(Clone, Copy, ValueEnum)]
enum Dtype {
    F32,
    Bf16,
}

#[derive(Args)]
pub struct ConvertArgs {
    /// The model to read: a Hugging Face or OpenAI checkpoint directory, an llm.c file, a run
    /// directory, or a downloaded model's name (gpt2, gpt2-medium, ...). The format is detected
    /// from the contents.
    #[arg(long)]
    from: PathBuf,
    /// A LoRA adapter directory (ours or Hugging Face PEFT's) trained on --from: the output is
    /// the merged model (as PEFT's merge_and_unload).
    #[arg(long, value_name = "DIR")]
    adapter: Option<PathBuf>,
    /// The format to write: hf (a Hugging Face directory: config.json + model.safetensors, which
    /// transformers loads) or llmc (an llm.c checkpoint file, gpt2_124M.bin's layout).
    #[arg(long, value_enum)]
    to: To,
    /// Where to write: a directory for `hf`, a file for `llmc`. An existing model directory or
    /// llm.c file is replaced atomically; anything else there is refused.
    #[arg(long)]
    out: PathBuf,
    /// Tensor type of an llm.c file: f32 (version 3) or bf16 (version 5).
    #[arg(long, value_enum, default_value = "f32")]
    dtype: Dtype,
}

pub fn run(args: &ConvertArgs) -> Result<()> {
    let format = match (args.to, args.dtype) {
        (To::Hf, Dtype::F32) => ExportFormat::HuggingFace,
        (To::Hf, Dtype::Bf16) => anyhow::bail!("--dtype bf16 is for llm.c files; Hugging Face output is f32"),
        (To::Llmc, Dtype::F32) => ExportFormat::Llmc(LlmcDtype::F32),
        (To::Llmc, Dtype::Bf16) => ExportFormat::Llmc(LlmcDtype::Bf16),
    };
    let start = Instant::now();
    let loaded = load_merged(&args.from, args.adapter.as_deref(), load_model_with_tokenizer)?;
    let cfg = &loaded.model.config;
    eprintln!(
        "read {} {} ({} layers, n_embd {}, vocab {}; tokenizer: {}) in {:.2} s",
        loaded.format.name(),
        loaded.format.path().display(),
        cfg.n_layer,
        cfg.n_embd,
        cfg.vocab_size,
        loaded.tokenizer.as_ref().map_or("none", |t| t.kind()),
        start.elapsed().as_secs_f64()
    );
    if matches!(format, ExportFormat::Llmc(_)) && loaded.tokenizer.as_ref().is_some_and(|t| t.kind() != "gpt2") {
        eprintln!("note: an llm.c file holds no tokenizer, and this model's is not GPT-2's; keep its vocabulary files");
    }
    save_model(&loaded.model, loaded.tokenizer.as_ref(), format, &args.out)?;
    println!("{}", args.out.display());
    Ok(())
}
