//! Instruction data: records of `{"instruction", "input", "output"}` (the Alpaca format that
//! Raschka's *Build a Large Language Model From Scratch*, chapter 7, fine-tunes on), rendered
//! with the Alpaca prompt template and cut into padded batches whose loss counts only the
//! response.
//!
//! A record becomes
//!
//! ```text
//! Below is an instruction that describes a task. Write a response that appropriately completes the request.
//!
//! ### Instruction:
//! {instruction}
//!
//! ### Input:            <- only when input is not empty
//! {input}
//!
//! ### Response:
//! {output}<|endoftext|>
//! ```
//!
//! The prompt (everything up to `### Response:\n`) and the output are encoded separately, so the
//! ids of the prompt are exactly what `gpt2 generate --instruction` feeds the model. A batch is
//! padded to its longest example with `<|endoftext|>`; the targets of prompt and padding
//! positions are [`IGNORE_INDEX`], so only the response and its end token are learned.

use super::Batch;
use crate::error::{Error, Result};
use crate::ops::cross_entropy::IGNORE_INDEX;
use crate::tokenizer::Tokenizer;
use serde::Serialize;
use serde_json::Value;
use std::path::Path;

/// The first paragraph of every prompt.
pub const PREAMBLE: &str =
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.";

/// The most bytes an instruction file may have.
const MAX_FILE_BYTES: u64 = 1 << 30;

/// One instruction record. `input` may be empty (or absent from the file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Instruction {
    pub instruction: String,
    pub input: String,
    pub output: String,
}

impl Instruction {
    /// The Alpaca prompt: preamble, instruction, the input if any, and the response header.
    pub fn prompt(&self) -> String {
        prompt(&self.instruction, &self.input)
    }
}

/// The Alpaca prompt of an instruction and its (possibly empty) input, ending in
/// `### Response:\n`, where the response starts.
pub fn prompt(instruction: &str, input: &str) -> String {
    let input = match input.is_empty() {
        true => String::new(),
        false => format!("\n\n### Input:\n{input}"),
    };
    format!("{PREAMBLE}\n\n### Instruction:\n{instruction}{input}\n\n### Response:\n")
}

/// Whether `path` holds instruction records rather than plain text: a `.json` or `.jsonl`
/// file, or one whose first JSON value is a record with an `instruction` (or an array whose
/// first element is one).
pub fn is_instruction_file(path: &Path) -> Result<bool> {
    if path.extension().is_some_and(|e| e == "json" || e == "jsonl") {
        return Ok(path.is_file());
    }
    if !path.is_file() {
        return Ok(false);
    }
    let text = read_text(path)?;
    let first = serde_json::Deserializer::from_str(&text).into_iter::<Value>().next();
    Ok(match first {
        Some(Ok(Value::Object(record))) => record.contains_key("instruction"),
        Some(Ok(Value::Array(records))) => records
            .first()
            .and_then(Value::as_object)
            .is_some_and(|r| r.contains_key("instruction")),
        _ => false,
    })
}

/// Reads the records of a JSON array or a JSONL file (one record per non-empty line). A record
/// that is not an object, or lacks `instruction` or `output`, or has a field that is not a
/// string, is an error naming the file, the record (from 1) and the field.
pub fn read_instructions(path: &Path) -> Result<Vec<Instruction>> {
    let text = read_text(path)?;
    let bad = |what: String| Error::Input(format!("{}: {what}", path.display()));
    let values: Vec<Value> = if text.trim_start().starts_with('[') {
        match serde_json::from_str(&text).map_err(|e| bad(format!("not a JSON array of records: {e}")))? {
            Value::Array(values) => values,
            _ => return Err(bad("not a JSON array of records".into())),
        }
    } else {
        text.lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(i, line)| serde_json::from_str(line).map_err(|e| bad(format!("line {}: not JSON: {e}", i + 1))))
            .collect::<Result<_>>()?
    };
    if values.is_empty() {
        return Err(bad("holds no instruction records".into()));
    }
    values
        .iter()
        .enumerate()
        .map(|(i, value)| record(value).map_err(|what| bad(format!("record {}: {what}", i + 1))))
        .collect()
}

fn read_text(path: &Path) -> Result<String> {
    let bytes = crate::files::read(path, MAX_FILE_BYTES)?;
    String::from_utf8(bytes).map_err(|e| Error::Input(format!("{}: not UTF-8 text: {e}", path.display())))
}

/// One record from its JSON value, or what is wrong with it.
fn record(value: &Value) -> std::result::Result<Instruction, String> {
    let Value::Object(fields) = value else {
        return Err("not a JSON object".into());
    };
    let field = |name: &str, required: bool| match fields.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        None if !required => Ok(String::new()),
        None => Err(format!("the field \"{name}\" is missing")),
        Some(other) => Err(format!("the field \"{name}\" is not a string: {other}")),
    };
    Ok(Instruction {
        instruction: field("instruction", true)?,
        input: field("input", false)?,
        output: field("output", true)?,
    })
}

/// A record encoded: the ids of the prompt, then of the output and the end token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub tokens: Vec<u32>,
    /// How many of `tokens` are the prompt's (their targets are ignored).
    pub prompt_len: usize,
}

/// The token that ends a response and pads a batch: `<|endoftext|>`. A char-level vocabulary
/// has none, so it cannot be instruction-tuned.
pub fn end_token(tokenizer: &Tokenizer) -> Result<u32> {
    tokenizer.eot_token().ok_or_else(|| {
        Error::Input(format!(
            "instruction data needs a vocabulary with <|endoftext|> to end responses and pad batches; \
             this {} tokenizer has none (use --tokenizer gpt2, or a BPE from `gpt2 bpe train`)",
            tokenizer.kind()
        ))
    })
}

/// Encodes `records` (from `path`, which errors name) for a context of `max_tokens` inputs: each
/// example, end token included, must fit in `max_tokens + 1` ids.
pub fn encode_examples(
    records: &[Instruction],
    tokenizer: &Tokenizer,
    max_tokens: usize,
    path: &Path,
) -> Result<Vec<Example>> {
    let end = end_token(tokenizer)?;
    records
        .iter()
        .enumerate()
        .map(|(i, record)| {
            let at = |e: Error| Error::Input(format!("{}: record {}: {e}", path.display(), i + 1));
            let mut tokens = tokenizer.encode(&record.prompt()).map_err(at)?;
            let prompt_len = tokens.len();
            tokens.extend(tokenizer.encode(&record.output).map_err(at)?);
            tokens.push(end);
            if tokens.len() > max_tokens + 1 {
                return Err(Error::Input(format!(
                    "{}: record {} is {} tokens with its prompt and end token, more than the {} that \
                     fit a block of {max_tokens} (raise --block-size, up to the model's context)",
                    path.display(),
                    i + 1,
                    tokens.len(),
                    max_tokens + 1
                )));
            }
            Ok(Example { tokens, prompt_len })
        })
        .collect()
}

/// Fills `batch` with `examples` padded to the longest: inputs [B, T] are each example's ids
/// but the last, targets [B, T] the ids after them, with the prompt's and the padding's
/// targets [`IGNORE_INDEX`]. Returns T (the longest example's length - 1).
pub fn fill_batch(examples: &[&Example], pad: u32, batch: &mut Batch) -> usize {
    let t = examples.iter().map(|e| e.tokens.len() - 1).max().unwrap_or(0);
    batch.inputs.clear();
    batch.targets.clear();
    for example in examples {
        let n = example.tokens.len() - 1;
        batch.inputs.extend(&example.tokens[..n]);
        batch.inputs.extend(std::iter::repeat_n(pad, t - n));
        // Target i is token i + 1: counted once it is past the prompt.
        batch.targets.extend((1..=n).map(|i| match i < example.prompt_len {
            true => IGNORE_INDEX,
            false => example.tokens[i] as i32,
        }));
        batch.targets.extend(std::iter::repeat_n(IGNORE_INDEX, t - n));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("gpt2-instructions-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn the_template_is_alpacas() {
        let with_input = prompt("Reverse the word.", "cat");
        assert_eq!(
            with_input,
            "Below is an instruction that describes a task. Write a response that appropriately completes the request.\
             \n\n### Instruction:\nReverse the word.\n\n### Input:\ncat\n\n### Response:\n"
        );
        assert!(!prompt("Say hi.", "").contains("### Input:"));
    }

    #[test]
    fn arrays_and_jsonl_read_alike_and_bad_records_are_named() {
        let array = write(
            "a.json",
            r#"[{"instruction": "i1", "input": "x", "output": "o1"}, {"instruction": "i2", "output": "o2"}]"#,
        );
        let lines = write(
            "a.txt",
            "{\"instruction\": \"i1\", \"input\": \"x\", \"output\": \"o1\"}\n\n{\"instruction\": \"i2\", \"output\": \"o2\"}\n",
        );
        let records = read_instructions(&array).unwrap();
        assert_eq!(records, read_instructions(&lines).unwrap());
        assert_eq!(records[1].input, "");
        assert!(is_instruction_file(&array).unwrap() && is_instruction_file(&lines).unwrap());
        assert!(!is_instruction_file(&write("plain.txt", "{ not json, just text")).unwrap());

        let missing = write(
            "m.jsonl",
            "{\"instruction\": \"i\", \"output\": \"o\"}\n{\"instruction\": \"i\"}\n",
        );
        let err = read_instructions(&missing).unwrap_err().to_string();
        assert!(
            err.contains("m.jsonl") && err.contains("record 2") && err.contains("\"output\" is missing"),
            "{err}"
        );
        let wrong = write("w.json", r#"[{"instruction": 3, "output": "o"}]"#);
        let err = read_instructions(&wrong).unwrap_err().to_string();
        assert!(
            err.contains("record 1") && err.contains("\"instruction\" is not a string"),
            "{err}"
        );
        let err = read_instructions(&write("e.json", "[]")).unwrap_err().to_string();
        assert!(err.contains("no instruction records"), "{err}");
        let err = read_instructions(&write("bad.jsonl", "{\"instruction\": \n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1: not JSON"), "{err}");
    }

    #[test]
    fn batches_learn_only_the_response_and_pad_with_the_end_token() {
        let tokenizer = Tokenizer::gpt2();
        let end = end_token(&tokenizer).unwrap();
        let records = [
            Instruction {
                instruction: "Uppercase the word.".into(),
                input: "cat".into(),
                output: "CAT".into(),
            },
            Instruction {
                instruction: "Say yes.".into(),
                input: String::new(),
                output: "yes, of course".into(),
            },
        ];
        let path = Path::new("mem.json");
        let examples = encode_examples(&records, &tokenizer, 1024, path).unwrap();
        let prompt_ids = tokenizer.encode(&records[0].prompt()).unwrap();
        assert_eq!(examples[0].prompt_len, prompt_ids.len());
        assert_eq!(examples[0].tokens.last(), Some(&end));
        let mut batch = Batch::default();
        let t = fill_batch(&[&examples[0], &examples[1]], end, &mut batch);
        assert_eq!(t, examples.iter().map(|e| e.tokens.len()).max().unwrap() - 1);
        for (row, example) in examples.iter().enumerate() {
            let (inputs, targets) = (&batch.inputs[row * t..][..t], &batch.targets[row * t..][..t]);
            let n = example.tokens.len() - 1;
            assert_eq!(&inputs[..n], &example.tokens[..n]);
            assert!(inputs[n..].iter().all(|&id| id == end));
            let counted: Vec<u32> = targets
                .iter()
                .filter(|&&y| y != IGNORE_INDEX)
                .map(|&y| y as u32)
                .collect();
            // The response's ids and the end token, nothing of the prompt or the padding.
            assert_eq!(counted, example.tokens[example.prompt_len..]);
        }
        let err = encode_examples(&records, &tokenizer, 10, path).unwrap_err().to_string();
        assert!(err.contains("record 1") && err.contains("--block-size"), "{err}");
        let chars = Tokenizer::char_level_from_text("abc");
        assert!(end_token(&chars).unwrap_err().to_string().contains("<|endoftext|>"));
    }
}
