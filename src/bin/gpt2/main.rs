//! `gpt2`: the command-line shell over the library. It parses flags, calls the library and
//! prints; all the work lives in the `gpt2` crate.

mod adapter_arg;
mod bench_cmd;
mod bench_serve;
mod convert_cmd;
mod download_cmd;
mod eval_cmd;
mod generate_cmd;
mod info_cmd;
mod inspect_cmd;
mod inspect_evolution;
mod score_cmd;
mod serve_cmd;
mod tokenize_cmd;
mod train_cmd;

/// Large buffers (weights, caches, activations) on 2 MiB pages: see `gpt2::memory::HugePageAlloc`.
#[global_allocator]
static ALLOC: gpt2::memory::HugePageAlloc = gpt2::memory::HugePageAlloc;

use clap::{ArgAction, CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "gpt2", version, about = "GPT-2 from scratch: train, run and look inside", long_about = None)]
struct Cli {
    /// Worker threads for matrix multiplies and the parallel ops, at most 4 per core
    /// (default: all cores; under mpirun, the cores shared among the ranks on this machine).
    #[arg(long, global = true, value_parser = thread_count)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a GPT on text: from scratch or from a checkpoint, with evaluations, samples, a loss
    /// plot and checkpoints that resume exactly. With no flags: Tiny Shakespeare, char-level.
    Train(Box<train_cmd::TrainArgs>),
    /// Loss and perplexity of a text under a model.
    Score(score_cmd::ScoreArgs),
    /// Evaluate a model: sliding-window perplexity, multiple choice (HellaSwag), decoding
    /// strategies compared over prompts, exact match on instruction records.
    #[command(subcommand)]
    Eval(eval_cmd::EvalCommand),
    /// Text to token ids and back (GPT-2 BPE, char-level, or a trained BPE).
    Tokenize(tokenize_cmd::TokenizeArgs),
    /// Byte-level BPE vocabularies: `gpt2 bpe train`.
    #[command(subcommand)]
    Bpe(tokenize_cmd::BpeCommand),
    /// Continue a prompt: sampling (greedy, temperature, top-k, top-p, repetition penalty),
    /// several samples at once, streaming to the terminal, or an interactive session.
    Generate(generate_cmd::GenerateArgs),
    /// Look inside: a forward pass step by step (shapes and values), the logit lens,
    /// attention heatmaps, every parameter tensor with the FLOPs per token, and how a training
    /// run changed the weights (--evolution).
    Inspect(Box<inspect_cmd::InspectArgs>),
    /// Read a model in any format (Hugging Face, OpenAI TensorFlow, llm.c) and write it as a
    /// Hugging Face directory or an llm.c file.
    Convert(convert_cmd::ConvertArgs),
    /// Download OpenAI's GPT-2 (from Hugging Face or OpenAI) into the model cache.
    Download(download_cmd::DownloadArgs),
    /// An OpenAI-compatible HTTP API (completions, streaming, many clients batched together)
    /// and a web page that shows each token's probability, attention and logit lens.
    Serve(serve_cmd::ServeArgs),
    /// Throughput benchmarks (training step, forward pass, generation, model loading), optionally against PyTorch.
    #[command(subcommand)]
    Bench(bench_cmd::BenchCommand),
    /// The CPU features found and the kernel each weight dtype's products run on (GPT2_KERNEL
    /// forces one).
    Info(info_cmd::InfoArgs),
}

/// The command line: the derived one, where a flag's value may be a negative number
/// (`--lr -1` is the value -1, which the flag's range check then rejects, rather than an
/// unknown flag `-1`).
fn command() -> clap::Command {
    negative_numbers(Cli::command())
}

fn negative_numbers(cmd: clap::Command) -> clap::Command {
    cmd.mut_args(|arg| match arg.get_action() {
        ArgAction::Set | ArgAction::Append => arg.allow_negative_numbers(true),
        _ => arg,
    })
    .mut_subcommands(negative_numbers)
}

/// A --threads value: at least 1, at most 4 per core of this machine (more only add waiting,
/// and thousands of threads can make the machine unusable).
fn thread_count(text: &str) -> Result<usize, String> {
    let n: usize = text.parse().map_err(|e| format!("{e}"))?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    match n {
        0 => Err("must be at least 1".into()),
        n if n > 4 * cores => Err(format!(
            "{n} is more than the maximum of {} (4 per core; this machine has {cores})",
            4 * cores
        )),
        n => Ok(n),
    }
}

fn main() {
    // Rust ignores SIGPIPE, so printing into a closed pipe (`gpt2 inspect ... | head`) would
    // panic; restore the default, which ends the process quietly.
    #[cfg(unix)]
    // SAFETY: called first, before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|e| e.exit());
    // Ranks started together on one machine share its cores.
    let ranks_here = gpt2::dist::ranks_on_this_machine();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = cli.threads.or((ranks_here > 1).then(|| (cores / ranks_here).max(1)));
    if let Some(threads) = threads {
        if let Err(e) = rayon::ThreadPoolBuilder::new().num_threads(threads).build_global() {
            eprintln!("error: cannot start {threads} threads: {e}");
            std::process::exit(2);
        }
    }
    // The whole command runs on a worker of the thread pool: a parallel loop started from a
    // worker runs its one-task case inline, where one started from outside the pool hands every
    // loop to the pool and waits for it (tens of microseconds each, which for small models and
    // one-token decoding steps is as long as the work).
    let result = rayon::scope(|_| match &cli.command {
        Command::Train(args) => train_cmd::run(args),
        Command::Score(args) => score_cmd::run(args),
        Command::Eval(cmd) => eval_cmd::run(cmd),
        Command::Generate(args) => generate_cmd::run(args),
        Command::Inspect(args) => inspect_cmd::run(args),
        Command::Convert(args) => convert_cmd::run(args),
        Command::Download(args) => download_cmd::run(args),
        Command::Serve(args) => serve_cmd::run(args),
        Command::Bench(cmd) => bench_cmd::run(cmd),
        Command::Tokenize(args) => tokenize_cmd::run(args),
        Command::Bpe(cmd) => tokenize_cmd::run_bpe(cmd),
        Command::Info(args) => info_cmd::run(args),
    });
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every flag of every command, subcommands included, and every subcommand has a description
    /// in --help, in the one layout: a flag and its one-paragraph description per line (a long
    /// help or a described value would switch that command's --help to clap's long layout).
    #[test]
    fn every_flag_is_described() {
        fn check(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                if arg.get_help().is_none() {
                    missing.push(format!("{path} --{}", arg.get_id()));
                }
                if arg.get_long_help().is_some() || arg.get_possible_values().iter().any(|v| v.get_help().is_some()) {
                    missing.push(format!("{path} --{} (long layout)", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                let sub_path = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() {
                    missing.push(sub_path.clone());
                }
                check(sub, &sub_path, missing);
            }
        }
        let mut missing = Vec::new();
        check(&command(), "gpt2", &mut missing);
        assert!(missing.is_empty(), "without a description in --help: {missing:?}");
    }

    #[test]
    fn negative_numbers_are_values() {
        let cli = Cli::from_arg_matches(&command().get_matches_from(["gpt2", "train", "--lr", "-1"])).unwrap();
        let Command::Train(args) = cli.command else {
            panic!("train")
        };
        assert_eq!(serde_json::to_value(&*args).unwrap()["lr"], -1.0);
    }
}
