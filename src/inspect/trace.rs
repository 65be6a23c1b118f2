//! One forward pass told step by step. [`trace`] runs the model on a prompt (batch of one) and
//! reads back every activation it kept for the backward pass (see
//! [`crate::model::workspace::Activations`]): the embeddings, then for every block LayerNorm 1,
//! the queries, keys and values of each head, the attention weights, the attention branch, the
//! residual stream, LayerNorm 2, the MLP hidden layer and the MLP branch; then the final
//! LayerNorm and the next-token distribution. [`logit_lens`] decodes the residual stream after
//! every block as if it were the last one.
//!
//! Shapes: T = prompt tokens, C = n_embd, NH = n_head, hs = C / NH, F = n_inner, V = vocab.

use super::token_piece;
use crate::error::{Error, Result};
use crate::model::workspace::{Activations, BlockActs};
use crate::model::{Gpt, Workspace};
use crate::ops::layernorm::layernorm_forward;
use crate::ops::matmul::{all_threads, gemm};
use crate::ops::{max, sum_exp};
use crate::runlog::param_stats::Moments;
use crate::tokenizer::Tokenizer;
use rayon::prelude::*;
use serde::Serialize;

/// Values of a row shown in a trace.
const PREVIEW: usize = 6;
/// A GELU output counts as "near zero" (the neuron is off) when |gelu(x)| is below this.
pub const GELU_NEAR_ZERO: f32 = 0.01;

/// What to trace.
#[derive(Debug, Clone)]
pub struct TraceOptions {
    /// Only this block (all blocks when `None`).
    pub layer: Option<usize>,
    /// Only this head of each traced block (all heads when `None`).
    pub head: Option<usize>,
    /// Next-token candidates to list.
    pub top_k: usize,
    /// Positions to list per head: those the last token attends to most.
    pub top_attended: usize,
}

impl Default for TraceOptions {
    fn default() -> Self {
        TraceOptions {
            layer: None,
            head: None,
            top_k: 5,
            top_attended: 3,
        }
    }
}

/// A prompt token.
#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    pub position: usize,
    pub id: u32,
    pub text: String,
}

/// An activation [T, D] (one row per prompt position): its shape, the mean and standard
/// deviation of all its values, and the last position's row — the one that predicts the next
/// token — by its L2 norm and first values.
#[derive(Debug, Clone, Serialize)]
pub struct TensorTrace {
    pub shape: Vec<usize>,
    pub mean: f32,
    pub std: f32,
    pub last_norm: f32,
    pub last_values: Vec<f32>,
}

impl TensorTrace {
    /// `data` holds `rows` rows of equal width.
    fn of(data: &[f32], rows: usize) -> TensorTrace {
        let width = data.len() / rows;
        let all = Moments::of(data.par_iter().copied());
        let last = &data[data.len() - width..];
        TensorTrace {
            shape: vec![rows, width],
            mean: all.mean,
            std: all.std,
            last_norm: norm(last),
            last_values: preview(last),
        }
    }
}

/// The embedding rows of one prompt token: wte[id] (what the token is) and wpe[position]
/// (where it is); the block input is their sum.
#[derive(Debug, Clone, Serialize)]
pub struct EmbeddingRow {
    pub position: usize,
    pub id: u32,
    pub text: String,
    pub token_norm: f32,
    pub token_values: Vec<f32>,
    pub position_norm: f32,
    pub position_values: Vec<f32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EmbeddingTrace {
    /// [V, C]: one row per vocabulary entry.
    pub wte_shape: [usize; 2],
    /// [n_positions, C]: one row per position.
    pub wpe_shape: [usize; 2],
    pub rows: Vec<EmbeddingRow>,
    /// wte[tokens] + wpe[0..T]: the residual stream entering block 0, [T, C].
    pub sum: TensorTrace,
}

/// A prompt position and the attention weight the last token gives it.
#[derive(Debug, Clone, Serialize)]
pub struct Attended {
    pub position: usize,
    pub text: String,
    pub weight: f32,
}

/// One attention head, seen from the last token.
#[derive(Debug, Clone, Serialize)]
pub struct HeadTrace {
    pub head: usize,
    /// Norms of the last token's query, key and value rows ([hs] each).
    pub q_norm: f32,
    pub k_norm: f32,
    pub v_norm: f32,
    /// The positions the last token attends to most, by weight.
    pub top: Vec<Attended>,
    /// The last token's attention weights over positions 0..T (they sum to 1).
    pub weights: Vec<f32>,
}

/// One transformer block: x → x + attn(ln_1(x)) → that + mlp(ln_2(that)).
#[derive(Debug, Clone, Serialize)]
pub struct BlockTrace {
    pub layer: usize,
    /// [T, C]
    pub ln_1: TensorTrace,
    /// The shape of each head's Q, K and V: [T, hs] (the fused c_attn output [T, 3C] split).
    pub head_qkv_shape: [usize; 2],
    pub heads: Vec<HeadTrace>,
    /// The attention branch after c_proj, [T, C] (what is added to the residual stream).
    pub attn_out: TensorTrace,
    /// The residual stream after the attention branch, [T, C].
    pub residual_attn: TensorTrace,
    /// [T, C]
    pub ln_2: TensorTrace,
    /// gelu(c_fc(ln_2)), [T, F].
    pub mlp_hidden: TensorTrace,
    /// Share of the MLP hidden values with |gelu| < [`GELU_NEAR_ZERO`] (neurons that are off).
    pub mlp_near_zero: f32,
    /// The MLP branch after c_proj, [T, C].
    pub mlp_out: TensorTrace,
    /// The residual stream leaving the block, [T, C].
    pub residual_out: TensorTrace,
}

/// A next-token candidate.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub id: u32,
    pub text: String,
    pub prob: f32,
}

/// A forward pass, step by step.
#[derive(Debug, Clone, Serialize)]
pub struct Trace {
    pub tokens: Vec<TokenInfo>,
    pub embeddings: EmbeddingTrace,
    /// The traced blocks (one with `--layer`).
    pub blocks: Vec<BlockTrace>,
    /// Final LayerNorm, [T, C].
    pub ln_f: TensorTrace,
    /// The `top_k` most likely next tokens after the prompt: softmax(ln_f[T-1] · wteᵀ).
    pub next: Vec<Prediction>,
}

/// Checks `tokens` and the options against `model` (clear errors, before any work).
pub fn check(model: &Gpt, tokens: &[u32], options: &TraceOptions) -> Result<()> {
    let cfg = &model.config;
    if tokens.is_empty() {
        return Err(Error::Input("the prompt is empty: give at least one token".into()));
    }
    if tokens.len() > cfg.n_positions {
        return Err(Error::Input(format!(
            "the prompt has {} tokens, more than the model's context of {} positions",
            tokens.len(),
            cfg.n_positions
        )));
    }
    if let Some(layer) = options.layer.filter(|&l| l >= cfg.n_layer) {
        return Err(Error::Input(format!(
            "layer {layer} is out of range: this model has layers 0..{}",
            cfg.n_layer - 1
        )));
    }
    if let Some(head) = options.head.filter(|&h| h >= cfg.n_head) {
        return Err(Error::Input(format!(
            "head {head} is out of range: this model has heads 0..{}",
            cfg.n_head - 1
        )));
    }
    if options.top_k == 0 {
        return Err(Error::Input("top-k must be at least 1".into()));
    }
    Ok(())
}

/// Runs `model` on the prompt `tokens` and traces the pass. `ws` keeps the activations for
/// [`logit_lens`] and the attention maps.
pub fn trace(
    model: &Gpt,
    ws: &mut Workspace,
    tokens: &[u32],
    tokenizer: Option<&Tokenizer>,
    options: &TraceOptions,
) -> Result<Trace> {
    check(model, tokens, options)?;
    let t = tokens.len();
    model.forward(ws, tokens, 1, t, None, None)?;
    let acts = ws.activations();
    let cfg = &model.config;
    let piece = |id: u32| token_piece(tokenizer, id);
    let token_infos: Vec<TokenInfo> = tokens
        .iter()
        .enumerate()
        .map(|(position, &id)| TokenInfo {
            position,
            id,
            text: piece(id),
        })
        .collect();
    let layers = options.layer.map_or(0..cfg.n_layer, |l| l..l + 1);
    let blocks = layers
        .map(|l| block_trace(model, acts, l, tokens, tokenizer, options))
        .collect();
    let last_logits = &acts.logits[(t - 1) * cfg.vocab_size..][..cfg.vocab_size];
    Ok(Trace {
        tokens: token_infos,
        embeddings: embedding_trace(model, acts, tokens, tokenizer),
        blocks,
        ln_f: TensorTrace::of(&acts.ln_f, t),
        next: top_predictions(last_logits, options.top_k, tokenizer),
    })
}

/// The embedding rows of each prompt token and their sum, the stream entering block 0.
fn embedding_trace(model: &Gpt, acts: &Activations, tokens: &[u32], tokenizer: Option<&Tokenizer>) -> EmbeddingTrace {
    let (cfg, w) = (&model.config, model.weights());
    let c = cfg.n_embd;
    let rows = tokens
        .iter()
        .enumerate()
        .map(|(position, &id)| {
            let token_row = &w.wte[id as usize * c..][..c];
            let position_row = &w.wpe[position * c..][..c];
            EmbeddingRow {
                position,
                id,
                text: token_piece(tokenizer, id),
                token_norm: norm(token_row),
                token_values: preview(token_row),
                position_norm: norm(position_row),
                position_values: preview(position_row),
            }
        })
        .collect();
    EmbeddingTrace {
        wte_shape: [cfg.vocab_size, c],
        wpe_shape: [cfg.n_positions, c],
        rows,
        sum: TensorTrace::of(&acts.encoded, tokens.len()),
    }
}

/// Block `l` of the pass: each step's output, and the traced heads seen from the last token.
fn block_trace(
    model: &Gpt,
    acts: &Activations,
    l: usize,
    tokens: &[u32],
    tokenizer: Option<&Tokenizer>,
    options: &TraceOptions,
) -> BlockTrace {
    let (cfg, t, a) = (&model.config, tokens.len(), &acts.blocks[l]);
    // A branch's output: what the residual add put on top of the stream.
    let branch = |after: &[f32], before: &[f32]| {
        let diff: Vec<f32> = after.iter().zip(before).map(|(a, b)| a - b).collect();
        TensorTrace::of(&diff, t)
    };
    let heads = options.head.map_or(0..cfg.n_head, |h| h..h + 1);
    let near_zero = a.fch_gelu.iter().filter(|x| x.abs() < GELU_NEAR_ZERO).count();
    let att = super::layer_attention(model, a, t); // [NH, T, T]
    BlockTrace {
        layer: l,
        ln_1: TensorTrace::of(&a.ln_1, t),
        head_qkv_shape: [t, cfg.head_size()],
        heads: heads
            .map(|h| head_trace(model, a, &att, h, tokens, tokenizer, options))
            .collect(),
        attn_out: branch(&a.residual_2, residual_in(acts, l)),
        residual_attn: TensorTrace::of(&a.residual_2, t),
        ln_2: TensorTrace::of(&a.ln_2, t),
        mlp_hidden: TensorTrace::of(&a.fch_gelu, t),
        mlp_near_zero: near_zero as f32 / a.fch_gelu.len() as f32,
        mlp_out: branch(&a.residual_3, &a.residual_2),
        residual_out: TensorTrace::of(&a.residual_3, t),
    }
}

/// Head h of a block, from the last token: its query, key and value norms and the positions
/// it attends to most (from the block's attention probabilities `att` [NH, T, T]).
#[allow(clippy::too_many_arguments)]
fn head_trace(
    model: &Gpt,
    a: &BlockActs,
    att: &[f32],
    h: usize,
    tokens: &[u32],
    tokenizer: Option<&Tokenizer>,
    options: &TraceOptions,
) -> HeadTrace {
    let (t, c, hs) = (tokens.len(), model.config.n_embd, model.config.head_size());
    let last_qkv = &a.qkv[(t - 1) * 3 * c..][..3 * c];
    // Row t-1 of head h's attention matrix P [T, T].
    let weights = att[(h * t + t - 1) * t..][..t].to_vec();
    let mut order: Vec<usize> = (0..t).collect();
    order.sort_by(|&i, &j| weights[j].total_cmp(&weights[i]));
    let top = order
        .iter()
        .take(options.top_attended)
        .map(|&position| Attended {
            position,
            text: token_piece(tokenizer, tokens[position]),
            weight: weights[position],
        })
        .collect();
    let part = |third: usize| norm(&last_qkv[third * c + h * hs..][..hs]);
    HeadTrace {
        head: h,
        q_norm: part(0),
        k_norm: part(1),
        v_norm: part(2),
        top,
        weights,
    }
}

/// The residual stream entering block `l`, [T, C].
fn residual_in(acts: &Activations, l: usize) -> &[f32] {
    match l {
        0 => &acts.encoded,
        _ => &acts.blocks[l - 1].residual_3,
    }
}

/// The logit lens: the residual stream at each depth read out as if the model ended there.
#[derive(Debug, Clone, Serialize)]
pub struct LogitLens {
    /// One row per depth: "embeddings" (the input of block 0), then "h.0" … "h.{L-1}" (the
    /// output of each block; the last row is the model's own prediction).
    pub rows: Vec<LensRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LensRow {
    pub layer: String,
    /// The top guess for the token after each position: softmax(ln_f(x_pos) · wteᵀ).
    pub guesses: Vec<Prediction>,
}

/// Reads the residual stream of the last [`trace`] (or any forward pass of one sequence), its
/// activations `acts`, through the final LayerNorm and the tied LM head at every depth.
pub fn logit_lens(model: &Gpt, acts: &Activations, tokenizer: Option<&Tokenizer>) -> Result<LogitLens> {
    if acts.b != 1 {
        return Err(Error::Input(
            "the logit lens needs a forward pass of one sequence first".into(),
        ));
    }
    let cfg = &model.config;
    let (t, c, v) = (acts.t, cfg.n_embd, cfg.vocab_size);
    let w = model.weights();
    let (mut normed, mut mean, mut rstd) = (vec![0.0; t * c], vec![0.0; t], vec![0.0; t]);
    let mut logits = vec![0.0; t * v];
    let depths = std::iter::once(("embeddings".to_string(), acts.encoded.as_slice()))
        .chain((0..cfg.n_layer).map(|l| (format!("h.{l}"), acts.blocks[l].residual_3.as_slice())));
    let rows = depths
        .map(|(layer, residual)| {
            // logits [T, V] = ln_f(residual) [T, C] · wteᵀ [C, V]
            layernorm_forward(
                &mut normed,
                &mut mean,
                &mut rstd,
                residual,
                w.ln_f_w,
                w.ln_f_b,
                c,
                cfg.layer_norm_epsilon,
            );
            gemm(&mut logits, false, &normed, false, w.wte, true, t, c, v, all_threads());
            let guesses = logits
                .chunks_exact(v)
                .map(|row| top_predictions(row, 1, tokenizer).remove(0))
                .collect();
            LensRow { layer, guesses }
        })
        .collect();
    Ok(LogitLens { rows })
}

/// The `k` most likely tokens under softmax(`logits`), most likely first.
pub fn top_predictions(logits: &[f32], k: usize, tokenizer: Option<&Tokenizer>) -> Vec<Prediction> {
    let shift = max(logits);
    let total = sum_exp(logits, shift);
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    let by_logit = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]);
    let k = k.min(ids.len());
    if k < ids.len() {
        ids.select_nth_unstable_by(k, by_logit);
        ids.truncate(k);
    }
    ids.sort_by(by_logit);
    ids.into_iter()
        .map(|id| Prediction {
            id,
            text: token_piece(tokenizer, id),
            prob: (logits[id as usize] - shift).exp() / total,
        })
        .collect()
}

fn norm(xs: &[f32]) -> f32 {
    Moments::of(xs.par_iter().copied()).norm
}

fn preview(xs: &[f32]) -> Vec<f32> {
    xs[..xs.len().min(PREVIEW)].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn tiny() -> Gpt {
        Gpt::new(Config::new(40, 16, 32, 3, 4), 7).unwrap()
    }

    #[test]
    fn a_trace_adds_up_to_the_forward_pass() {
        let (model, mut ws) = (tiny(), Workspace::new());
        let tokens = [3, 14, 15, 9, 2];
        let trace = trace(&model, &mut ws, &tokens, None, &TraceOptions::default()).unwrap();
        assert_eq!(trace.blocks.len(), 3);
        assert_eq!(trace.embeddings.sum.shape, [5, 32]);
        let block = &trace.blocks[1];
        assert_eq!(block.head_qkv_shape, [5, 8]);
        assert_eq!(block.mlp_hidden.shape, [5, 128]);
        for head in &block.heads {
            assert!((head.weights.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            assert!(head.top.windows(2).all(|p| p[0].weight >= p[1].weight));
            assert_eq!(head.top[0].weight, head.weights.iter().copied().fold(0.0, f32::max));
        }
        // The last row of the logit lens is the model's own prediction.
        let lens = logit_lens(&model, ws.activations(), None).unwrap();
        assert_eq!(lens.rows.len(), 4);
        assert_eq!(lens.rows[3].guesses[4].id, trace.next[0].id);
        assert!((lens.rows[3].guesses[4].prob - trace.next[0].prob).abs() < 1e-5);
        let probs: f32 = top_predictions(&ws.logits()[4 * 40..], 40, None)
            .iter()
            .map(|p| p.prob)
            .sum();
        assert!((probs - 1.0).abs() < 1e-5);
        assert!(trace.next.windows(2).all(|p| p[0].prob >= p[1].prob));
    }

    #[test]
    fn layer_and_head_narrow_the_trace_and_are_checked() {
        let model = tiny();
        let options = TraceOptions {
            layer: Some(2),
            head: Some(3),
            ..TraceOptions::default()
        };
        let trace = trace(&model, &mut Workspace::new(), &[1, 2], None, &options).unwrap();
        assert_eq!(trace.blocks.len(), 1);
        assert_eq!((trace.blocks[0].layer, trace.blocks[0].heads.len()), (2, 1));
        assert_eq!(trace.blocks[0].heads[0].head, 3);
        let bad = |options: TraceOptions, tokens: &[u32]| check(&model, tokens, &options).unwrap_err().to_string();
        assert!(bad(
            TraceOptions {
                layer: Some(3),
                ..options.clone()
            },
            &[1]
        )
        .contains("layer 3"));
        assert!(bad(
            TraceOptions {
                head: Some(4),
                ..options.clone()
            },
            &[1]
        )
        .contains("head 4"));
        assert!(bad(options.clone(), &[1; 17]).contains("context of 16"));
        assert!(bad(options, &[]).contains("empty"));
    }
}
