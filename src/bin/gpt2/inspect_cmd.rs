//! `gpt2 inspect`: a forward pass told step by step, the logit lens, attention heatmaps, a
//! summary of the parameters, and (inspect_evolution.rs) how a training run changed them.

use crate::adapter_arg::{load_merged, model_config};
use crate::generate_cmd::unescape;
use crate::inspect_evolution::{self, EvolutionArgs};
use crate::tokenize_cmd::parse_ids;
use anyhow::{bail, Context, Result};
use clap::Args;
use gpt2::config::Config;
use gpt2::inspect::attention_map::write_attention_maps;
use gpt2::inspect::summary::{summarize, Summary};
use gpt2::inspect::trace::{self, logit_lens, LogitLens, TensorTrace, Trace, TraceOptions, GELU_NEAR_ZERO};
use gpt2::inspect::{token_piece, trace_report};
use gpt2::io::{load_model_with_tokenizer_as_is, non_finite_weights, Loaded};
use gpt2::model::Workspace;
use gpt2::ops::lowp::WeightDtype;
use gpt2::plot::ImageFormat;
use gpt2::tokenizer::{SpecialTokens, Tokenizer};
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct InspectArgs {
    /// Model, in any format: a Hugging Face or OpenAI checkpoint directory, an llm.c file, a
    /// training run or checkpoint directory, or a downloaded model's name (gpt2, ...).
    #[arg(long, required_unless_present_any = ["preset", "evolution"])]
    model: Option<PathBuf>,
    /// A LoRA adapter directory (adapter_config.json + adapter_model.safetensors, ours or
    /// Hugging Face PEFT's), merged into the model before use.
    #[arg(long, value_name = "DIR", requires = "model", conflicts_with = "summary")]
    adapter: Option<PathBuf>,
    /// With --summary: a preset's shape instead of a model (gpt2, gpt2-medium, gpt2-large,
    /// gpt2-xl, shakespeare-char); no weights needed.
    #[arg(long, conflicts_with = "model", requires = "summary")]
    preset: Option<String>,
    /// Follow the prompt with the weight matrices as bf16 or q8_0 store them (read back in
    /// f32; the activations stay f32).
    #[arg(long, default_value = "f32", conflicts_with_all = ["summary", "evolution"])]
    dtype: WeightDtype,
    /// The text to follow through the model (`\n` for a line break; <|endoftext|> is the special token).
    #[arg(long)]
    prompt: Option<String>,
    /// The prompt as token ids ("464 3290 318" or "464,3290,318"), skipping the tokenizer.
    #[arg(long, conflicts_with = "prompt")]
    prompt_ids: Option<String>,
    /// Every parameter tensor (name, shape, count), totals per module, memory and FLOPs per token.
    #[arg(long, conflicts_with_all = ["prompt", "prompt_ids"])]
    summary: bool,
    /// Trace (and draw the attention map of) only this block (0-based).
    #[arg(long, conflicts_with = "summary")]
    layer: Option<usize>,
    /// Trace only this attention head (0-based) of each block.
    #[arg(long, conflicts_with = "summary")]
    head: Option<usize>,
    /// Next-token candidates to list.
    #[arg(long, default_value_t = 5, conflicts_with = "summary")]
    top_k: usize,
    /// Also read the residual stream after every block through ln_f and the LM head: the
    /// model's top guess per layer and position.
    #[arg(long)]
    logit_lens: bool,
    /// Write one attention heatmap per layer (all heads) as PNG files into this directory.
    #[arg(long)]
    attention_png: Option<PathBuf>,
    /// Write one attention heatmap per layer (all heads) as SVG files into this directory.
    #[arg(long)]
    attention_svg: Option<PathBuf>,
    /// Print the same as one JSON object: {"tokens", "embeddings", "blocks", "ln_f", "next",
    /// "logit_lens"?, "attention_maps"?}; with --summary {"total_params", "tensors", ...}.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    evolution: EvolutionArgs,
}

pub fn run(args: &InspectArgs) -> Result<()> {
    if args.evolution.evolution.is_some() {
        if args.summary || args.prompt.is_some() || args.prompt_ids.is_some() {
            bail!("--evolution looks at a training run: it does not take --summary or a prompt");
        }
        return inspect_evolution::run(&args.evolution, args.json);
    }
    if args.summary {
        return run_summary(args);
    }
    run_trace(args)
}

/// --summary: the parameter tensors of a model's or a preset's shape.
fn run_summary(args: &InspectArgs) -> Result<()> {
    let config = match (&args.preset, &args.model) {
        (Some(preset), _) => Config::preset(preset)?,
        (None, Some(model)) => model_config(model)?,
        (None, None) => bail!("give --model or --preset"),
    };
    let summary = summarize(&config);
    match args.json {
        true => println!("{}", serde_json::to_string_pretty(&summary)?),
        false => print_summary(&summary),
    }
    Ok(())
}

/// A prompt followed through the model, with the logit lens and attention heatmaps when asked.
fn run_trace(args: &InspectArgs) -> Result<()> {
    let model_path = args.model.as_ref().expect("clap requires --model without --preset");
    // A diverged model is what one may want to look inside: its bad weights are a warning.
    let loaded = load_merged(model_path, args.adapter.as_deref(), load_model_with_tokenizer_as_is)?;
    let Loaded { model, tokenizer, .. } = loaded;
    if let Some(problem) = non_finite_weights(&model) {
        eprintln!("warning: {}: {problem}", model_path.display());
    }
    let model = model.rounded_to(args.dtype)?;
    let ids = prompt_ids(args, model_path, tokenizer.as_ref())?;
    let options = TraceOptions {
        layer: args.layer,
        head: args.head,
        top_k: args.top_k,
        ..TraceOptions::default()
    };
    trace::check(&model, &ids, &options)?;
    let outputs = [
        (&args.attention_png, ImageFormat::Png),
        (&args.attention_svg, ImageFormat::Svg),
    ];
    for (dir, _) in &outputs {
        if let Some(dir) = dir {
            check_writable_dir(dir)?;
        }
    }

    let mut ws = Workspace::new();
    let trace = trace::trace(&model, &mut ws, &ids, tokenizer.as_ref(), &options)?;
    let lens = match args.logit_lens {
        true => Some(logit_lens(&model, ws.activations(), tokenizer.as_ref())?),
        false => None,
    };
    let pieces: Vec<String> = ids.iter().map(|&id| token_piece(tokenizer.as_ref(), id)).collect();
    let mut maps = Vec::new();
    for (dir, format) in outputs {
        if let Some(dir) = dir {
            maps.extend(write_attention_maps(
                &model,
                ws.activations(),
                &pieces,
                args.layer,
                dir,
                format,
            )?);
        }
    }

    if args.json {
        return print_json(&trace, lens.as_ref(), &maps);
    }
    let cfg = &model.config;
    println!(
        "GPT-2 forward pass: {} layers, {} heads, n_embd {}, vocab {}; prompt of {} tokens",
        cfg.n_layer,
        cfg.n_head,
        cfg.n_embd,
        cfg.vocab_size,
        ids.len()
    );
    print_trace(&trace, cfg.n_head);
    if let Some(lens) = &lens {
        print_lens(lens, &pieces);
    }
    for path in &maps {
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// The ids of --prompt (with the model's tokenizer) or of --prompt-ids.
fn prompt_ids(args: &InspectArgs, model_path: &Path, tokenizer: Option<&Tokenizer>) -> Result<Vec<u32>> {
    Ok(match (&args.prompt, &args.prompt_ids, tokenizer) {
        (Some(text), _, Some(tokenizer)) => tokenizer.encode_with_special(&unescape(text), SpecialTokens::Allow)?,
        (Some(_), _, None) => bail!(
            "{} has no tokenizer (no tokenizer files, vocabulary is not GPT-2's): give --prompt-ids",
            model_path.display()
        ),
        (None, Some(ids), _) => parse_ids(ids).context("--prompt-ids")?,
        (None, None, _) => bail!("give a --prompt to follow through the model (or --summary)"),
    })
}

/// The trace as one JSON object, with the logit lens and the heatmaps' files when there are.
fn print_json(trace: &Trace, lens: Option<&LogitLens>, maps: &[PathBuf]) -> Result<()> {
    let mut out = trace_report(trace, lens)?;
    if !maps.is_empty() {
        out["attention_maps"] = json!(maps);
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// Fails early (before the forward pass) when `dir` cannot be created or written.
fn check_writable_dir(dir: &Path) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        bail!(
            "cannot write the attention maps into {}: it is a file, not a directory (give a directory, new or existing)",
            dir.display()
        );
    }
    let probe = dir.join(".gpt2-write-test");
    let result = std::fs::create_dir_all(dir)
        .and_then(|_| std::fs::write(&probe, b""))
        .and_then(|_| std::fs::remove_file(&probe));
    match result {
        Ok(()) => Ok(()),
        Err(e) => bail!("cannot write the attention maps into {}: {e}", dir.display()),
    }
}

/// `"The"` with control characters escaped.
fn quoted(text: &str) -> String {
    format!("{text:?}")
}

fn values(xs: &[f32]) -> String {
    let shown: Vec<String> = xs.iter().map(|x| format!("{x:+.3}")).collect();
    format!("[{}, …]", shown.join(", "))
}

fn shape(dims: &[usize]) -> String {
    let dims: Vec<String> = dims.iter().map(usize::to_string).collect();
    format!("[{}]", dims.join(", "))
}

/// One line for an activation: what it is, shape, mean and std, the last row.
fn tensor_line(name: &str, t: &TensorTrace) {
    println!(
        "  {name:<26} {:<12} mean {:+.4}  std {:.4}  last token: ‖x‖ {:>8.3}  {}",
        shape(&t.shape),
        t.mean,
        t.std,
        t.last_norm,
        values(&t.last_values)
    );
}

fn print_trace(trace: &Trace, n_head: usize) {
    println!("\n1. Tokens (text → ids with the model's tokenizer)");
    for token in &trace.tokens {
        println!("  {:>4}  {:>6}  {}", token.position, token.id, quoted(&token.text));
    }

    let e = &trace.embeddings;
    println!(
        "\n2. Embeddings: token rows wte[id] of wte {} and position rows wpe[pos] of wpe {}",
        shape(&e.wte_shape),
        shape(&e.wpe_shape)
    );
    for row in &e.rows {
        println!(
            "  {:>4} {:<12} ‖wte[{}]‖ {:>7.3} {}   ‖wpe[{}]‖ {:>7.3} {}",
            row.position,
            quoted(&row.text),
            row.id,
            row.token_norm,
            values(&row.token_values),
            row.position,
            row.position_norm,
            values(&row.position_values)
        );
    }
    tensor_line("x = wte[ids] + wpe[pos]", &e.sum);

    for (i, b) in trace.blocks.iter().enumerate() {
        println!(
            "\n{}. Block {}: x → x + attn(ln_1(x)) → x + mlp(ln_2(x))",
            3 + i,
            b.layer
        );
        tensor_line("ln_1(x)", &b.ln_1);
        println!(
            "  q, k, v = split(ln_1 · c_attn): {n_head} heads × {} each; P = softmax(q·kᵀ/√hs, causal)",
            shape(&b.head_qkv_shape)
        );
        for h in &b.heads {
            let top: Vec<String> = h
                .top
                .iter()
                .map(|a| format!("{}@{} {:.3}", quoted(&a.text), a.position, a.weight))
                .collect();
            println!(
                "    head {:>2}  last token ‖q‖ {:>6.2} ‖k‖ {:>6.2} ‖v‖ {:>6.2}  attends to {}",
                h.head,
                h.q_norm,
                h.k_norm,
                h.v_norm,
                top.join(", ")
            );
        }
        tensor_line("attn = (P·v) · c_proj", &b.attn_out);
        tensor_line("x + attn (residual)", &b.residual_attn);
        tensor_line("ln_2(x)", &b.ln_2);
        tensor_line("gelu(ln_2 · c_fc)", &b.mlp_hidden);
        println!(
            "  {:<26} {:.1}% of the MLP hidden values have |gelu| < {GELU_NEAR_ZERO}",
            "",
            100.0 * b.mlp_near_zero
        );
        tensor_line("mlp = hidden · c_proj", &b.mlp_out);
        tensor_line("x + mlp (residual)", &b.residual_out);
    }

    let n = 3 + trace.blocks.len();
    println!("\n{n}. Final LayerNorm");
    tensor_line("ln_f(x)", &trace.ln_f);
    println!(
        "\n{}. Next token: softmax(ln_f(x)[last] · wteᵀ) (the LM head is wte, tied)",
        n + 1
    );
    for p in &trace.next {
        println!("  {:>7.2}%  {:>6}  {}", 100.0 * p.prob, p.id, quoted(&p.text));
    }
}

/// The logit lens as a table: one row per depth, one column per prompt position.
fn print_lens(lens: &LogitLens, pieces: &[String]) {
    const WIDTH: usize = 16;
    let cell = |s: String| -> String {
        let s: String = s.chars().take(WIDTH - 1).collect();
        format!("{s:<WIDTH$}")
    };
    println!("\nLogit lens: the top guess for the next token, read from the residual stream after each layer");
    let header: String = pieces.iter().map(|p| cell(quoted(p))).collect();
    println!("  {:<11} {}", "position →", header.trim_end());
    for row in &lens.rows {
        let guesses: String = row
            .guesses
            .iter()
            .map(|g| cell(format!("{} {:.2}", quoted(&g.text), g.prob)))
            .collect();
        println!("  {:<11} {}", row.layer, guesses.trim_end());
    }
}

fn print_summary(s: &Summary) {
    println!(
        "GPT-2: {} layers, {} heads, n_embd {}, n_inner {}, vocab {}, context {}",
        s.n_layer, s.n_head, s.n_embd, s.n_inner, s.vocab_size, s.n_positions
    );
    println!("\n  {:<28} {:<14} {:>13}", "tensor", "shape", "parameters");
    for t in &s.tensors {
        println!("  {:<28} {:<14} {:>13}", t.name, shape(&t.shape), group_digits(t.count));
    }
    println!("\n  {:<28} {:>13}", "module", "parameters");
    for m in &s.modules {
        println!("  {:<28} {:>13}", m.module, group_digits(m.count));
    }
    println!(
        "\ntotal parameters: {} ({} without wpe; the LM head is wte, tied)",
        group_digits(s.total_params),
        group_digits(s.non_embedding_params)
    );
    println!("memory in f32: {:.1} MiB", s.bytes_f32 as f64 / (1 << 20) as f64);
    println!(
        "FLOPs per token at context {}: forward {}, training step (forward + backward) {}",
        s.context,
        with_unit(s.forward_flops_per_token),
        with_unit(s.train_flops_per_token)
    );
}

/// 284812800 → "284.8 M".
fn with_unit(n: u64) -> String {
    let units = [(1e9, "G"), (1e6, "M"), (1e3, "K")];
    match units.iter().find(|(scale, _)| n as f64 >= *scale) {
        Some((scale, unit)) => format!("{:.1} {unit}", n as f64 / scale),
        None => n.to_string(),
    }
}

/// 124439808 → "124,439,808".
fn group_digits(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}
