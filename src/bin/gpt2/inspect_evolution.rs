//! `gpt2 inspect --evolution`: how a training run's weights moved (the per-tensor statistics the
//! trainer logs, drawn over the steps) and how its token embedding changed between two models.

use crate::adapter_arg::{load_merged, lora_run_base};
use anyhow::{bail, Context, Result};
use clap::Args;
use gpt2::inspect::evolution::{evolution, model_paths, read_param_stats, Evolution, EvolutionOptions, TokenCosine};
use gpt2::io::load_model_with_tokenizer;
use gpt2::plot::ImageFormat;
use std::path::PathBuf;

#[derive(Args)]
#[command(next_help_heading = "Training evolution")]
pub struct EvolutionArgs {
    /// Show how a run's weights evolved: per-tensor statistics over the steps (evolution.png)
    /// and the change of the token embedding between two models (embedding_change.png).
    /// `--evolution RUN` is `--evolution --run RUN`.
    #[arg(long, value_name = "RUN", num_args = 0..=1)]
    pub evolution: Option<Option<PathBuf>>,
    /// The training run: its param_stats.jsonl, and the default --from and --to.
    #[arg(long, value_name = "DIR", requires = "evolution")]
    pub run: Option<PathBuf>,
    /// The model before, in any format --model takes [default: RUN/init, the model before
    /// training; for a LoRA run, its base].
    #[arg(long, value_name = "MODEL", requires = "evolution")]
    pub from: Option<PathBuf>,
    /// The model after [default: RUN/latest; for a LoRA run, its base with the adapter merged].
    #[arg(long, value_name = "MODEL", requires = "evolution")]
    pub to: Option<PathBuf>,
    /// Tokens whose nearest neighbours to show, comma-separated, each one token of the
    /// vocabulary; escapes: \n \t \, \\ [default: a few frequent tokens, e.g. e,t, ,\n,A].
    #[arg(long, value_name = "LIST", requires = "evolution")]
    pub tokens: Option<String>,
    /// Directory for the charts [default: RUN, else the current directory].
    #[arg(long, value_name = "DIR", requires = "evolution")]
    pub out: Option<PathBuf>,
    /// Write the charts as SVG instead of PNG.
    #[arg(long, requires = "evolution")]
    pub svg: bool,
}

pub fn run(args: &EvolutionArgs, json: bool) -> Result<()> {
    let run = match (&args.evolution, &args.run) {
        (Some(Some(a)), Some(b)) if a != b => bail!("two runs: --evolution {} and --run {}", a.display(), b.display()),
        (Some(Some(run)), _) | (_, Some(run)) => Some(run.clone()),
        _ => None,
    };
    let mut options = EvolutionOptions {
        run,
        from: args.from.clone(),
        to: args.to.clone(),
        tokens: args.tokens.as_deref().map(split_tokens).transpose()?,
        out: args.out.clone(),
        format: if args.svg { ImageFormat::Svg } else { ImageFormat::Png },
    };
    // A LoRA run's init/ is its adapter before training, which changes nothing (B = 0): the
    // model before is the run's base. Either model may be a LoRA run, its adapter merged.
    let records = options.run.as_deref().map(read_param_stats).transpose()?;
    let mut base_of = None;
    if let (None, Some(run)) = (&options.from, &options.run) {
        options.from = lora_run_base(run)?;
        base_of = options.from.is_some().then(|| run.clone());
    }
    let (from, to) = model_paths(&options)?;
    let before = load_merged(&from, None, load_model_with_tokenizer);
    let before = match &base_of {
        Some(run) => before.with_context(|| {
            format!(
                "the base of the LoRA run {} (its --init, found from the current directory if relative)",
                run.display()
            )
        })?,
        None => before?,
    };
    let after = load_merged(&to, None, load_model_with_tokenizer)?;
    let found = evolution(&options, records.as_deref(), (from, &before), (to, &after))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&found)?);
    } else {
        print_text(&found);
    }
    Ok(())
}

/// `a,b,c` split at the commas, with the escapes `\n`, `\t`, `\,` and `\\`.
fn split_tokens(list: &str) -> Result<Vec<String>> {
    let mut tokens = vec![String::new()];
    let mut chars = list.chars();
    while let Some(c) = chars.next() {
        let token = tokens.last_mut().expect("never empty");
        match (c, c == '\\') {
            (',', _) => tokens.push(String::new()),
            (_, true) => match chars.next() {
                Some('n') => token.push('\n'),
                Some('t') => token.push('\t'),
                Some(c @ (',' | '\\')) => token.push(c),
                Some(c) => bail!("--tokens: unknown escape \\{c} (the escapes are \\n \\t \\, \\\\)"),
                None => bail!("--tokens: a \\ at the end (write \\\\ for a backslash)"),
            },
            (c, false) => token.push(c),
        }
    }
    Ok(tokens)
}

/// `"e" 0.912, "a" 0.874`
fn token_list(tokens: &[TokenCosine]) -> String {
    tokens
        .iter()
        .map(|t| format!("{:?} {:.3}", t.token, t.cosine))
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_text(found: &Evolution) {
    if let (Some(run), Some(stats)) = (&found.run, &found.stats) {
        println!(
            "run {}: {} evaluations, steps {} to {}\n",
            run.display(),
            stats.evaluations,
            stats.first_step,
            stats.last_step
        );
        let name_width = stats.tensors.iter().map(|t| t.name.len()).max().unwrap_or(0).max(6);
        let steps = format!("step {} → {}", stats.first_step, stats.last_step);
        println!(
            "{:name_width$}  {:>21}  {:>10}  {:>10}  {:>13}",
            "tensor", "weight norm", "weight std", "update std", "update/weight"
        );
        println!(
            "{:name_width$}  {steps:>21}  {:>10}  {:>10}  {:>13}",
            "",
            format!("step {}", stats.last_step),
            "last step",
            "log10"
        );
        for t in &stats.tensors {
            let norms = format!("{:.4} → {:.4}", t.first.norm, t.last.norm);
            let update_std = t.update.map_or("-".into(), |u| format!("{:.3e}", u.std));
            let ratio = t.update_ratio.map_or("-".into(), |r| format!("{:.2}", r.log10()));
            println!(
                "{:name_width$}  {norms:>21}  {:>10.4}  {update_std:>10}  {ratio:>13}",
                t.name, t.last.std
            );
        }
        println!();
    }
    let e = &found.embedding;
    println!(
        "token embedding: {} → {} ({} rows of width {})",
        found.from.display(),
        found.to.display(),
        e.rows,
        e.width
    );
    println!(
        "  cosine similarity of each row before and after: mean {:.3}, min {:.3}, max {:.3}",
        e.mean_cosine, e.min_cosine, e.max_cosine
    );
    let quantiles: Vec<String> = e
        .quantiles
        .iter()
        .map(|q| format!("{}% {:.3}", q.q * 100.0, q.cosine))
        .collect();
    println!("  quantiles: {}", quantiles.join(", "));
    println!("  most changed: {}", token_list(&e.most_changed));
    if !found.neighbours.is_empty() {
        println!("\nnearest neighbours (cosine similarity):");
        let width = found
            .neighbours
            .iter()
            .map(|n| format!("{:?}", n.token).chars().count())
            .max()
            .unwrap_or(0);
        for n in &found.neighbours {
            let token = format!("{:?}", n.token);
            println!("  {token:width$}  before: {}", token_list(&n.before));
            println!("  {:width$}  after:  {}", "", token_list(&n.after));
        }
    }
    println!();
    for chart in &found.charts {
        println!("chart: {}", chart.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_lists_split_at_commas_with_escapes() {
        assert_eq!(split_tokens("e,t, ,\\n,A").unwrap(), ["e", "t", " ", "\n", "A"]);
        assert_eq!(split_tokens("\\,,\\\\,\\t").unwrap(), [",", "\\", "\t"]);
        assert_eq!(split_tokens(" the").unwrap(), [" the"]);
        assert!(split_tokens("a\\x")
            .unwrap_err()
            .to_string()
            .contains("unknown escape \\x"));
        assert!(split_tokens("a\\").is_err());
    }
}
