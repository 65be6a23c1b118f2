//! `gpt2 generate`: continue a prompt, streaming each token to the terminal as it is made.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::adapter_arg::InferenceModel;
use anyhow::{bail, Context, Result};
use clap::{ArgGroup, Args};
use gpt2::data::instructions;
use gpt2::generate::{GenerateOptions, Generator, Sampling, TextGenerator, MAX_SAMPLES};
use gpt2::io::Loaded;
use gpt2::rng::Rng;
use gpt2::tokenizer::{SpecialTokens, Tokenizer, UnknownChar};
use gpt2::Gpt;
use serde_json::json;

use crate::tokenize_cmd::parse_ids;

#[derive(Args)]
#[command(group(ArgGroup::new("input").required(true).args(["prompt", "prompt_file", "prompt_ids", "instruction", "interactive"])))]
pub struct GenerateArgs {
    #[command(flatten)]
    model: InferenceModel,
    /// The text to continue (\n, \t and \\ are understood; <|endoftext|> is the special token,
    /// as Hugging Face's tokenizer reads it).
    #[arg(long)]
    prompt: Option<String>,
    /// Read the text to continue from this file.
    #[arg(long)]
    prompt_file: Option<PathBuf>,
    /// The prompt as token ids ("464 3290 318" or "464,3290,318"), skipping the tokenizer.
    #[arg(long)]
    prompt_ids: Option<String>,
    /// An instruction, put into the Alpaca prompt template that instruction tuning trains on
    /// ("Below is an instruction that describes a task. ... ### Response:"); \n, \t and \\ are
    /// understood. The response ends at <|endoftext|>.
    #[arg(long)]
    instruction: Option<String>,
    /// The input the --instruction works on (the template's "### Input:" section).
    #[arg(long = "input")]
    instruction_input: Option<String>,
    /// Read one prompt per line from standard input and answer each; the model stays loaded.
    /// The i-th prompt (from 0) is sampled with seed + i, the seed it reports. When standard
    /// input is not a terminal, each answer starts with its prompt, and the exit status is 1 if
    /// any prompt failed.
    #[arg(long)]
    interactive: bool,
    /// New tokens per sample, at most. When prompt + new tokens exceed the model's context,
    /// the model sees only the last n_positions tokens (as nanoGPT does).
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Always take the most likely token (Hugging Face do_sample=False); same as --temperature 0.
    #[arg(long, conflicts_with_all = ["temperature", "top_k", "top_p"])]
    greedy: bool,
    /// Softmax temperature: below 1 is more conservative, above 1 more random; 0 is greedy.
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Sample only among the k most likely tokens (k >= 1).
    #[arg(long)]
    top_k: Option<usize>,
    /// Nucleus sampling: only among the most likely tokens that together reach probability p, in (0, 1].
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Hugging Face's repetition penalty (> 0; 1 is none, 1.2 is common): tokens already in the
    /// text have their logit divided by it (multiplied when negative).
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Random seed: the same seed and settings give the same output (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Samples generated side by side from the same prompt (batched; the prompt is read once).
    #[arg(long, default_value_t = 1)]
    num_samples: usize,
    /// End a sample at this text (repeatable; \n, \t and \\ are understood). The text is cut
    /// before it. Samples also end at the tokenizer's <|endoftext|>.
    #[arg(long)]
    stop: Vec<String>,
    /// Print one JSON object per prompt instead of streaming text:
    /// {"prompt_ids", "samples": [{"ids", "text", "finish"}], "tokens_per_s", "seed"}.
    #[arg(long)]
    json: bool,
    /// With a char-level model, leave out characters of the prompt outside its vocabulary
    /// instead of failing.
    #[arg(long)]
    skip_unknown: bool,
}

impl GenerateArgs {
    /// The validated settings, before the model is loaded; `stop_tokens` is filled later.
    fn options(&self) -> Result<GenerateOptions> {
        let sampling = Sampling {
            temperature: if self.greedy { 0.0 } else { self.temperature },
            top_k: self.top_k,
            top_p: self.top_p,
            repetition_penalty: self.repetition_penalty,
        };
        sampling.validate()?;
        if !(1..=MAX_SAMPLES).contains(&self.num_samples) {
            bail!(
                "--num-samples must be between 1 and {MAX_SAMPLES}, got {}",
                self.num_samples
            );
        }
        Ok(GenerateOptions {
            max_new_tokens: self.max_new_tokens,
            num_samples: self.num_samples,
            sampling,
            stop_tokens: Vec::new(),
        })
    }
}

pub fn run(args: &GenerateArgs) -> Result<()> {
    let mut options = args.options()?;
    if args.instruction_input.is_some() && args.instruction.is_none() {
        bail!("--input is the input of an --instruction: give the instruction too");
    }
    if args.stop.iter().any(String::is_empty) {
        bail!("--stop \"\" would end every sample before its first token: give the text to stop at");
    }
    let stops: Vec<String> = args.stop.iter().map(|s| unescape(s)).collect();
    let Loaded {
        model, mut tokenizer, ..
    } = args.model.load()?;
    if args.skip_unknown {
        tokenizer = tokenizer.map(|t| t.with_unknown_chars(UnknownChar::Skip));
    }
    options.stop_tokens = tokenizer.as_ref().and_then(Tokenizer::eot_token).into_iter().collect();
    if tokenizer.is_none() && !stops.is_empty() {
        bail!(
            "--stop needs a tokenizer to see text, and {} has none",
            args.model.model.display()
        );
    }
    if args.interactive && tokenizer.is_none() {
        bail!(
            "--interactive reads prompts as text, and {} has no tokenizer (no tokenizer files, vocabulary is not \
             GPT-2's): give --prompt-ids instead",
            args.model.model.display()
        );
    }
    let seed = args.seed.unwrap_or_else(clock_seed);
    let run = Run {
        model: &model,
        tokenizer: tokenizer.as_ref(),
        options,
        stops,
        json: args.json,
    };
    if !args.interactive {
        let prompt = match (&args.prompt, &args.prompt_file, &args.prompt_ids, &args.instruction) {
            (Some(text), _, _, _) => Prompt::Text(unescape(text)),
            (_, Some(file), _, _) => Prompt::Text(
                std::fs::read_to_string(file).with_context(|| format!("reading the prompt from {}", file.display()))?,
            ),
            (_, _, Some(ids), _) => Prompt::Ids(parse_ids(ids).context("--prompt-ids")?),
            (_, _, _, Some(instruction)) => Prompt::Text(instructions::prompt(
                &unescape(instruction),
                &unescape(args.instruction_input.as_deref().unwrap_or_default()),
            )),
            _ => unreachable!("clap requires one prompt source"),
        };
        return run.generate(&prompt, seed, true);
    }
    run.interactive(seed)
}

enum Prompt {
    Text(String),
    Ids(Vec<u32>),
}

/// Everything one prompt's generation needs.
struct Run<'a> {
    model: &'a Gpt,
    tokenizer: Option<&'a Tokenizer>,
    options: GenerateOptions,
    stops: Vec<String>,
    json: bool,
}

impl Run<'_> {
    /// --interactive: answers each line of standard input, the i-th (from 0) with seed + i. On a
    /// terminal the answer follows the typed prompt; read from a pipe or file, it starts with its
    /// prompt, so that a log shows what each answer continues. A failed prompt is reported and
    /// the session goes on; the session then ends with an error.
    fn interactive(&self, seed: u64) -> Result<()> {
        let stdin = std::io::stdin();
        let terminal = stdin.is_terminal();
        let (mut prompts, mut failed) = (0u64, 0u64);
        for number in 1.. {
            if terminal {
                eprint!("> ");
            }
            let mut line = String::new();
            let read = stdin.lock().read_line(&mut line);
            match read.with_context(|| format!("reading line {number} of standard input")) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    // Not UTF-8: the line was consumed; report it and go on.
                    eprintln!("error: {e:#}");
                    failed += 1;
                    continue;
                }
            }
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                continue;
            }
            let prompt_seed = seed.wrapping_add(prompts);
            prompts += 1;
            if let Err(e) = self.generate(&Prompt::Text(line.to_string()), prompt_seed, !terminal) {
                eprintln!("error: line {number}: {e:#}");
                failed += 1;
            }
        }
        if failed > 0 {
            bail!(
                "{failed} line{} of standard input failed (see the errors above)",
                if failed == 1 { "" } else { "s" }
            );
        }
        Ok(())
    }

    /// Generates the samples of one prompt from `seed`, streaming them (or printing JSON at the
    /// end). `echo` prints the prompt text before each sample.
    fn generate(&self, prompt: &Prompt, seed: u64, echo: bool) -> Result<()> {
        let ids = self.prompt_ids(prompt)?;
        let start = Instant::now();
        let tokens = Generator::new(self.model, &ids, self.options.clone(), &mut Rng::new(seed))?;
        let mut generator = TextGenerator::new(tokens, self.tokenizer, &self.stops)?;
        let head = match (echo && !self.json, self.tokenizer) {
            (true, Some(tokenizer)) => String::from_utf8_lossy(&tokenizer.decode_bytes_lossy(&ids)).into_owned(),
            _ => String::new(),
        };
        self.stream(&mut generator, &head)?;
        self.report(&generator, &ids, seed, start.elapsed().as_secs_f64())
    }

    /// The prompt's token ids, with a note when the context cannot hold all that is to come.
    fn prompt_ids(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        let ids = match (prompt, self.tokenizer) {
            (Prompt::Ids(ids), _) => ids.clone(),
            (Prompt::Text(text), Some(tokenizer)) => tokenizer.encode_with_special(text, SpecialTokens::Allow)?,
            (Prompt::Text(_), None) => {
                bail!("this model has no tokenizer (no tokenizer files, vocabulary is not GPT-2's); give --prompt-ids")
            }
        };
        if ids.is_empty() {
            bail!("the prompt is empty after tokenization: give at least one token to continue from");
        }
        let n_positions = self.model.config.n_positions;
        if ids.len().saturating_add(self.options.max_new_tokens) > n_positions {
            eprintln!(
                "note: prompt ({} tokens) + {} new tokens exceed the {n_positions}-token context: the model will \
                 see only the last {n_positions} tokens",
                ids.len(),
                self.options.max_new_tokens
            );
        }
        Ok(ids)
    }

    /// Runs the generator to the end, printing each sample (after `head`) as its text comes:
    /// the text, or the ids when the model has no tokenizer. Prints nothing with --json.
    fn stream(&self, generator: &mut TextGenerator, head: &str) -> Result<()> {
        let mut out = Printer::new(self.options.num_samples, !self.json);
        out.start(head);
        for token in generator {
            let token = token?;
            let piece = match self.tokenizer {
                Some(_) => token.text,
                None => format!("{} ", token.id),
            };
            out.write(token.sample, &piece)?;
            if token.finish.is_some() {
                out.end(token.sample)?;
            }
        }
        // Samples that made no token at all (--max-new-tokens 0) end here; ending the others
        // again changes nothing.
        (0..self.options.num_samples).try_for_each(|s| out.end(s))
    }

    /// Prints the JSON object of the finished generation, or the speed line on stderr.
    fn report(&self, generator: &TextGenerator, ids: &[u32], seed: u64, seconds: f64) -> Result<()> {
        let samples = self.options.num_samples;
        let new_tokens: usize = (0..samples).map(|s| generator.new_tokens(s).len()).sum();
        let tokens_per_s = new_tokens as f64 / seconds;
        if !self.json {
            eprintln!("[{new_tokens} tokens in {seconds:.2} s: {tokens_per_s:.1} tokens/s; seed {seed}]");
            return Ok(());
        }
        let samples: Vec<_> = (0..samples)
            .map(|s| json!({"ids": generator.new_tokens(s), "text": generator.text(s), "finish": generator.finish(s)}))
            .collect();
        let out = json!({"prompt_ids": ids, "samples": samples, "tokens_per_s": tokens_per_s, "seed": seed});
        writeln!(std::io::stdout().lock(), "{out}")?; // an error, not a panic, on a closed pipe
        Ok(())
    }
}

/// Prints samples one after another, in order, while they are generated side by side: the
/// current sample streams straight to stdout; the others are buffered until their turn.
struct Printer {
    live: bool,
    current: usize,
    pending: Vec<String>,
    done: Vec<bool>,
}

impl Printer {
    fn new(samples: usize, live: bool) -> Self {
        Printer {
            live,
            current: 0,
            pending: vec![String::new(); samples],
            done: vec![false; samples],
        }
    }

    fn start(&mut self, head: &str) {
        self.pending.iter_mut().for_each(|p| p.push_str(head));
    }

    fn write(&mut self, sample: usize, text: &str) -> Result<()> {
        self.pending[sample].push_str(text);
        self.flush()
    }

    /// Marks `sample` as complete; later samples get their turn.
    fn end(&mut self, sample: usize) -> Result<()> {
        self.done[sample] = true;
        self.flush()
    }

    fn flush(&mut self) -> Result<()> {
        if !self.live {
            return Ok(());
        }
        let mut stdout = std::io::stdout().lock();
        while self.current < self.pending.len() {
            stdout.write_all(std::mem::take(&mut self.pending[self.current]).as_bytes())?;
            if !self.done[self.current] {
                break;
            }
            stdout.write_all(if self.current + 1 < self.pending.len() {
                b"\n---------------\n"
            } else {
                b"\n"
            })?;
            self.current += 1;
        }
        stdout.flush()?;
        Ok(())
    }
}

/// `\n`, `\t` and `\\` in a command-line string.
pub(crate) fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (c, chars.clone().next()) {
            ('\\', Some(e @ ('n' | 't' | '\\'))) => {
                out.push(match e {
                    'n' => '\n',
                    't' => '\t',
                    _ => '\\',
                });
                chars.next();
            }
            _ => out.push(c),
        }
    }
    out
}

fn clock_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
