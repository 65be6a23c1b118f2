//! `gpt2 tokenize` (text <-> token ids) and `gpt2 bpe train` (learn a BPE vocabulary).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use gpt2::io::atomic::check_replaceable;
use gpt2::tokenizer::{SpecialTokens, Tokenizer, UnknownChar};

#[derive(Args)]
pub struct TokenizeArgs {
    /// Tokenizer: `gpt2` (bundled GPT-2 BPE); `char:<file>` (a saved char tokenizer.json, or a
    /// text whose distinct characters are the vocabulary); `bpe:<file>` (our or Hugging Face's
    /// tokenizer.json, a tiktoken .tiktoken file, or a model directory).
    #[arg(long, default_value = "gpt2")]
    encoding: String,
    /// Input file; standard input if absent. Text to encode, or with --decode token ids
    /// (separated by spaces, newlines or commas, or JSON: [ids] or {"ids": [ids]}).
    #[arg(long)]
    file: Option<PathBuf>,
    /// Print JSON: {"ids": [...], "tokens": [...]} with each token's text (bytes that are not
    /// UTF-8 on their own written \xNN); with --decode also "text".
    #[arg(long)]
    json: bool,
    /// Decode token ids to text instead of encoding.
    #[arg(long)]
    decode: bool,
    /// What `<|endoftext|>` in the text means: an error, the special token, or plain text.
    #[arg(long, value_enum, default_value_t = Special::Reject)]
    special: Special,
    /// With a char tokenizer, leave out characters outside its vocabulary instead of failing.
    #[arg(long)]
    skip_unknown: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Special {
    Reject,
    Allow,
    Text,
}

#[derive(Subcommand)]
pub enum BpeCommand {
    /// Learn a byte-level BPE vocabulary from a text (GPT-2 pre-tokenisation, byte fallback).
    Train(BpeTrainArgs),
}

#[derive(Args)]
pub struct BpeTrainArgs {
    /// Training text (UTF-8).
    #[arg(long)]
    file: PathBuf,
    /// Vocabulary size: 256 bytes + merges + <|endoftext|>.
    #[arg(long, default_value_t = 4096)]
    vocab_size: usize,
    /// Where to write the tokenizer: a .json file, or a directory (then DIR/tokenizer.json).
    /// An existing tokenizer file is replaced; anything else there is refused. Use it with
    /// `--encoding bpe:<file>`.
    #[arg(long)]
    out: PathBuf,
}

fn read_input(file: Option<&Path>) -> Result<String> {
    match file {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display())),
        None => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading standard input")?;
            Ok(text)
        }
    }
}

/// Token ids written as a JSON list, a JSON object with "ids" (what `--json` prints), or
/// numbers separated by whitespace and/or commas. Every command that reads ids uses it.
pub(crate) fn parse_ids(input: &str) -> Result<Vec<u32>> {
    let trimmed = input.trim_start();
    if trimmed.starts_with('[') || trimmed.starts_with('{') {
        let value: serde_json::Value = serde_json::from_str(trimmed).context("reading token ids as JSON")?;
        let ids = if value.is_object() { value["ids"].clone() } else { value };
        return serde_json::from_value(ids).context("expected a list of token ids");
    }
    input
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| !w.is_empty())
        .map(|w| w.parse::<u32>().with_context(|| format!("'{w}' is not a token id")))
        .collect()
}

pub fn run(args: &TokenizeArgs) -> Result<()> {
    let mut tokenizer = Tokenizer::from_spec(&args.encoding)?;
    if args.skip_unknown {
        tokenizer = tokenizer.with_unknown_chars(UnknownChar::Skip);
    }
    let input = read_input(args.file.as_deref())?;
    let (ids, text) = if args.decode {
        let ids = parse_ids(&input)?;
        let text = tokenizer.decode(&ids)?;
        (ids, Some(text))
    } else {
        let special = match args.special {
            Special::Reject => SpecialTokens::Reject,
            Special::Allow => SpecialTokens::Allow,
            Special::Text => SpecialTokens::AsText,
        };
        (tokenizer.encode_parallel_with_special(&input, special)?, None)
    };
    // Written as they are made, not gathered first: a large input has tens of millions of ids.
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.json {
        let tokens = TokenTexts(&tokenizer, &ids);
        serde_json::to_writer(
            &mut out,
            &TokenizeJson {
                ids: &ids,
                text,
                tokens,
            },
        )?;
        writeln!(out)?;
    } else if let Some(text) = text {
        write!(out, "{text}")?;
    } else {
        for (i, id) in ids.iter().enumerate() {
            let separator = if i == 0 { "" } else { " " };
            write!(out, "{separator}{id}")?;
        }
        writeln!(out)?;
    }
    out.flush()?;
    Ok(())
}

/// `gpt2 tokenize --json`: the ids, the decoded text (with --decode) and each token's text
/// (keys in alphabetical order, as before).
#[derive(serde::Serialize)]
struct TokenizeJson<'a> {
    ids: &'a [u32],
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    tokens: TokenTexts<'a>,
}

/// The text of each id, serialized one at a time.
struct TokenTexts<'a>(&'a Tokenizer, &'a [u32]);

impl serde::Serialize for TokenTexts<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_seq(self.1.iter().map(|&id| self.0.token_text(id)))
    }
}

pub fn run_bpe(command: &BpeCommand) -> Result<()> {
    let BpeCommand::Train(args) = command;
    let text = read_input(Some(&args.file))?;
    if text.is_empty() {
        bail!("{} is empty: nothing to learn from", args.file.display());
    }
    let path = if args.out.is_dir() {
        args.out.join(gpt2::tokenizer::FILE_NAME)
    } else {
        args.out.clone()
    };
    // Checked first, so that the error names --out (not the temporary file written beside it)
    // and comes before the training.
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty() && !p.is_dir()) {
        bail!(
            "cannot write {}: {} is not a directory",
            path.display(),
            parent.display()
        );
    }
    // Before training, which can take long: only a tokenizer file may be replaced.
    check_replaceable(&path, "a tokenizer JSON file", Tokenizer::is_tokenizer_json)?;
    let start = std::time::Instant::now();
    let tokenizer = Tokenizer::train_bpe(&text, args.vocab_size)?;
    tokenizer.save_file(&path)?;
    let ids = tokenizer.encode_parallel_with_special(&text, SpecialTokens::AsText)?;
    eprintln!(
        "learned {} tokens from {} ({} bytes) in {:.2?}: {:.2} bytes per token; wrote {}",
        tokenizer.vocab_size(),
        args.file.display(),
        text.len(),
        start.elapsed(),
        text.len() as f64 / ids.len().max(1) as f64,
        path.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_ids;

    #[test]
    fn ids_are_read_as_json_or_separated_by_whitespace_and_commas() {
        for input in [
            "464 3290,318",
            " 464,\n3290\t318\n",
            "[464, 3290, 318]",
            r#"{"ids": [464, 3290, 318]}"#,
        ] {
            assert_eq!(parse_ids(input).unwrap(), [464, 3290, 318], "{input:?}");
        }
        assert!(parse_ids(" \n").unwrap().is_empty());
        let error = format!("{:#}", parse_ids("1 x2").unwrap_err());
        assert!(error.starts_with("'x2' is not a token id"), "{error}");
        assert!(parse_ids("[1, -2]").is_err() && parse_ids("{bad").is_err());
    }
}
