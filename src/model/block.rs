//! The transformer block, as in the GPT-2 diagram: two residual branches, each behind a
//! LayerNorm (pre-LN), each output dropped out during training and added to the stream.
//!
//! ```text
//! attention layer:  residual_2 = x          + drop(c_proj(attention(c_attn(ln_1(x)))))
//! MLP:              residual_3 = residual_2 + drop(c_proj(gelu(c_fc(ln_2(residual_2)))))
//! ```
//!
//! One code path serves training, scoring and generation: the attention step attends either
//! over the batch's own causal window or over a KV cache of the positions before the new tokens.
//! Shapes: N = B·T rows, C = n_embd, F = n_inner, NH = n_head.

use super::kv_cache::KvLayer;
use super::lora::{AdapterGrads, AdapterPass, Target};
use super::lowp::LowpBlock;
use super::params::BlockWeights;
use super::workspace::{BlockActs, GradActs};
use crate::config::Config;
use crate::ops::attention::{attention_backward, attention_forward, attention_forward_cached, AttnShape};
use crate::ops::dropout::{dropout_backward, Dropout, Site};
use crate::ops::gelu::{gelu_backward_inplace, gelu_forward};
use crate::ops::layernorm::{layernorm_backward, layernorm_forward};
use crate::ops::lowp::{Kernels, LowpMatrix};
use crate::ops::matmul::{linear_backward, linear_forward, Precision};
use crate::ops::residual::residual_forward;

/// Where a block's attention finds the keys and values its queries look at.
pub enum Keys<'a> {
    /// The batch's own T positions: position i sees positions 0..=i.
    Causal,
    /// A KV cache holding the positions before the new tokens; the new tokens' keys and values
    /// are appended to it first, then new token i (at position pos0 + i) sees 0..=pos0 + i.
    Cached(KvLayer<'a>),
    /// Requests side by side, each with a one-row cache of its own holding its positions
    /// before its T_r new tokens (requests sit at different positions), the rows of request r
    /// after those of request r - 1: (its cache, T_r). Its keys and values are appended to its
    /// cache, then its new token i sees that cache's 0..=pos0 + i.
    PerRow(Vec<(KvLayer<'a>, usize)>),
}

/// A linear layer's weight: f32 [K, N] in the flat buffer (Conv1D layout), its products in a
/// training [`Precision`], or the same weight in low precision, stored [N, K].
#[derive(Clone, Copy)]
enum Weight<'a> {
    F32(&'a [f32], Precision),
    Lowp(&'a LowpMatrix, Kernels),
}

impl<'a> Weight<'a> {
    /// The f32 weight `w` (products in `precision`), or its low-precision copy in `lowp`
    /// (`matrix` picks it).
    fn pick(
        w: &'a [f32],
        precision: Precision,
        lowp: Option<&'a LowpBlock>,
        matrix: fn(&LowpBlock) -> &LowpMatrix,
    ) -> Self {
        match lowp {
            Some(l) => Weight::Lowp(matrix(l), l.kernels),
            None => Weight::F32(w, precision),
        }
    }
}

/// `out [N, M] = x [N, K] · W + b [M]`, on the weight's own kernels.
#[allow(clippy::too_many_arguments)]
fn linear(out: &mut [f32], x: &[f32], w: Weight, b: &[f32], n: usize, k: usize, m: usize) {
    match w {
        Weight::F32(w, precision) => linear_forward(out, x, w, b, n, k, m, precision),
        Weight::Lowp(w, kernels) => {
            w.matmul(out, x, n, kernels);
            out.chunks_exact_mut(m)
                .for_each(|row| row.iter_mut().zip(b).for_each(|(o, &b)| *o += b));
        }
    }
}

/// Forward through one block: reads the stream `x` [N, C], leaves every step's output in `a`
/// (the block's output in `a.residual_3`). Dropout applies when `dropout` is given (its
/// masks those of this block: [`Dropout::at_layer`]). With `lowp`, the linear layers use its
/// low-precision weights (those of `p` are empty), else f32 weights with products in
/// `precision`; a LoRA `adapter` adds its low-rank product to the layers it targets.
#[allow(clippy::too_many_arguments)]
pub fn block_forward(
    cfg: &Config,
    shape: AttnShape,
    precision: Precision,
    p: &BlockWeights<&[f32]>,
    lowp: Option<&LowpBlock>,
    mut adapter: Option<AdapterPass>,
    x: &[f32],
    a: &mut BlockActs,
    keys: Keys,
    dropout: Option<Dropout>,
) {
    attention_layer_forward(cfg, shape, precision, p, lowp, adapter.as_mut(), x, a, keys, dropout);
    mlp_forward(cfg, shape, precision, p, lowp, adapter.as_mut(), a, dropout);
}

/// Backward through one block whose forward pass read `x` and left `a`: `d.residual` arrives
/// as dloss/d(residual_3) and leaves as dloss/dx; the block's parameter gradients are added to
/// `g`, or with a LoRA adapter (`g` None: the block is frozen) the adapter's gradients to its
/// own. The products run in `precision`.
#[allow(clippy::too_many_arguments)]
pub fn block_backward(
    cfg: &Config,
    shape: AttnShape,
    precision: Precision,
    p: &BlockWeights<&[f32]>,
    mut g: Option<&mut BlockWeights<&mut [f32]>>,
    mut adapter: Option<AdapterGrads>,
    x: &[f32],
    a: &BlockActs,
    d: &mut GradActs,
) {
    mlp_backward(cfg, shape, precision, p, g.as_deref_mut(), adapter.as_mut(), a, d);
    attention_layer_backward(cfg, shape, precision, p, g, adapter.as_mut(), x, a, d);
}

/// Attention layer: `residual_2 = x + drop(c_proj(attention(c_attn(ln_1(x)))))`.
#[allow(clippy::too_many_arguments)]
fn attention_layer_forward(
    cfg: &Config,
    shape: AttnShape,
    precision: Precision,
    p: &BlockWeights<&[f32]>,
    lowp: Option<&LowpBlock>,
    mut adapter: Option<&mut AdapterPass>,
    x: &[f32],
    a: &mut BlockActs,
    keys: Keys,
    dropout: Option<Dropout>,
) {
    let (n, c, eps) = (shape.b * shape.t, cfg.n_embd, cfg.layer_norm_epsilon);
    layernorm_forward(
        &mut a.ln_1,
        &mut a.ln_1_mean,
        &mut a.ln_1_rstd,
        x,
        p.ln_1_w,
        p.ln_1_b,
        c,
        eps,
    );
    let c_attn = Weight::pick(p.attn.c_attn_w, precision, lowp, |l| &l.c_attn);
    linear(&mut a.qkv, &a.ln_1, c_attn, p.attn.c_attn_b, n, c, 3 * c);
    if let Some(ad) = adapter.as_deref_mut() {
        ad.forward(Target::CAttn, cfg, &mut a.qkv, &a.ln_1, &mut a.lora);
    }
    match keys {
        Keys::Causal => {
            // The backward pass recomputes the attention weights' dropout mask from the same seed.
            a.att_dropout = dropout;
            attention_forward(&mut a.atty, &mut a.att_lse, &a.qkv, shape, a.att_dropout);
        }
        Keys::Cached(mut cache) => {
            cache.store(&a.qkv, shape.t, c, cfg.head_size());
            let (k, v) = cache.keys_values();
            attention_forward_cached(&mut a.atty, &mut a.att_lse, &a.qkv, k, v, shape, cache.pos0);
        }
        Keys::PerRow(caches) => {
            // Request r: its T_r queries against its own cache; its log-sum-exps [NH, T_r]
            // follow request r - 1's.
            let (mut qkv, mut out, mut lse) = (&a.qkv[..], &mut a.atty[..], &mut a.att_lse[..]);
            for (mut cache, t) in caches {
                let (qkv_r, out_r, lse_r);
                (qkv_r, qkv) = qkv.split_at(t * 3 * c);
                (out_r, out) = std::mem::take(&mut out).split_at_mut(t * c);
                (lse_r, lse) = std::mem::take(&mut lse).split_at_mut(t * shape.n_head);
                cache.store(qkv_r, t, c, cfg.head_size());
                let (k, v) = cache.keys_values();
                let one = AttnShape { b: 1, t, ..shape };
                attention_forward_cached(out_r, lse_r, qkv_r, k, v, one, cache.pos0);
            }
        }
    }
    let c_proj = Weight::pick(p.attn.c_proj_w, precision, lowp, |l| &l.attn_proj);
    linear(&mut a.residual_2, &a.atty, c_proj, p.attn.c_proj_b, n, c, c);
    if let Some(ad) = adapter {
        ad.forward(Target::AttnCProj, cfg, &mut a.residual_2, &a.atty, &mut a.lora);
    }
    if let Some(d) = dropout {
        d.forward(Site::AttentionOutput, &mut a.residual_2, &mut a.attn_mask, c);
    }
    residual_forward(&mut a.residual_2, x);
}

/// Backward of the attention layer. The identity path of the residual passes `d.residual`
/// through unchanged; the branch sees `d.residual ⊙ mask`, and what it gives back for x (through
/// ln_1) is added to the stream's gradient.
#[allow(clippy::too_many_arguments)]
fn attention_layer_backward(
    cfg: &Config,
    shape: AttnShape,
    precision: Precision,
    p: &BlockWeights<&[f32]>,
    mut g: Option<&mut BlockWeights<&mut [f32]>>,
    mut adapter: Option<&mut AdapterGrads>,
    x: &[f32],
    a: &BlockActs,
    d: &mut GradActs,
) {
    let (n, c) = (shape.b * shape.t, cfg.n_embd);
    let branch_grad = dropout_backward(&d.residual, &a.attn_mask, &mut d.ln);
    let grads = g.as_deref_mut().map(|g| (&mut *g.attn.c_proj_w, &mut *g.attn.c_proj_b));
    linear_backward(
        &mut d.atty,
        grads,
        branch_grad,
        &a.atty,
        p.attn.c_proj_w,
        n,
        c,
        c,
        precision,
    );
    if let Some(ad) = adapter.as_deref_mut() {
        ad.backward(Target::AttnCProj, cfg, &mut d.atty, branch_grad, &a.atty, &a.lora);
    }
    attention_backward(&mut d.qkv, &d.atty, &a.qkv, &a.atty, &a.att_lse, shape, a.att_dropout);
    let grads = g.as_deref_mut().map(|g| (&mut *g.attn.c_attn_w, &mut *g.attn.c_attn_b));
    linear_backward(
        &mut d.ln,
        grads,
        &d.qkv,
        &a.ln_1,
        p.attn.c_attn_w,
        n,
        c,
        3 * c,
        precision,
    );
    if let Some(ad) = adapter {
        ad.backward(Target::CAttn, cfg, &mut d.ln, &d.qkv, &a.ln_1, &a.lora);
    }
    layernorm_backward(
        &mut d.residual,
        g.map(|g| (&mut *g.ln_1_w, &mut *g.ln_1_b)),
        &d.ln,
        x,
        &a.ln_1_mean,
        &a.ln_1_rstd,
        p.ln_1_w,
        c,
    );
}

/// MLP: `residual_3 = residual_2 + drop(c_proj(gelu(c_fc(ln_2(residual_2)))))`.
#[allow(clippy::too_many_arguments)]
fn mlp_forward(
    cfg: &Config,
    shape: AttnShape,
    precision: Precision,
    p: &BlockWeights<&[f32]>,
    lowp: Option<&LowpBlock>,
    mut adapter: Option<&mut AdapterPass>,
    a: &mut BlockActs,
    dropout: Option<Dropout>,
) {
    let (n, c, f, eps) = (shape.b * shape.t, cfg.n_embd, cfg.n_inner, cfg.layer_norm_epsilon);
    layernorm_forward(
        &mut a.ln_2,
        &mut a.ln_2_mean,
        &mut a.ln_2_rstd,
        &a.residual_2,
        p.ln_2_w,
        p.ln_2_b,
        c,
        eps,
    );
    let c_fc = Weight::pick(p.mlp.c_fc_w, precision, lowp, |l| &l.c_fc);
    linear(&mut a.fch, &a.ln_2, c_fc, p.mlp.c_fc_b, n, c, f);
    if let Some(ad) = adapter.as_deref_mut() {
        ad.forward(Target::CFc, cfg, &mut a.fch, &a.ln_2, &mut a.lora);
    }
    let keep_tanh = (!a.fch_tanh.is_empty()).then_some(a.fch_tanh.as_mut_slice());
    gelu_forward(&mut a.fch_gelu, keep_tanh, &a.fch);
    let c_proj = Weight::pick(p.mlp.c_proj_w, precision, lowp, |l| &l.mlp_proj);
    linear(&mut a.residual_3, &a.fch_gelu, c_proj, p.mlp.c_proj_b, n, f, c);
    if let Some(ad) = adapter {
        ad.forward(Target::MlpCProj, cfg, &mut a.residual_3, &a.fch_gelu, &mut a.lora);
    }
    if let Some(d) = dropout {
        d.forward(Site::MlpOutput, &mut a.residual_3, &mut a.mlp_mask, c);
    }
    residual_forward(&mut a.residual_3, &a.residual_2);
}

/// Backward of the MLP: as for the attention layer, the branch sees `d.residual ⊙ mask` and
/// its gradient for residual_2 (through ln_2) is added to the stream's.
#[allow(clippy::too_many_arguments)]
fn mlp_backward(
    cfg: &Config,
    shape: AttnShape,
    precision: Precision,
    p: &BlockWeights<&[f32]>,
    mut g: Option<&mut BlockWeights<&mut [f32]>>,
    mut adapter: Option<&mut AdapterGrads>,
    a: &BlockActs,
    d: &mut GradActs,
) {
    let (n, c, f) = (shape.b * shape.t, cfg.n_embd, cfg.n_inner);
    let branch_grad = dropout_backward(&d.residual, &a.mlp_mask, &mut d.ln);
    let grads = g.as_deref_mut().map(|g| (&mut *g.mlp.c_proj_w, &mut *g.mlp.c_proj_b));
    linear_backward(
        &mut d.fch,
        grads,
        branch_grad,
        &a.fch_gelu,
        p.mlp.c_proj_w,
        n,
        f,
        c,
        precision,
    );
    if let Some(ad) = adapter.as_deref_mut() {
        ad.backward(Target::MlpCProj, cfg, &mut d.fch, branch_grad, &a.fch_gelu, &a.lora);
    }
    gelu_backward_inplace(&mut d.fch, &a.fch, &a.fch_tanh);
    let grads = g.as_deref_mut().map(|g| (&mut *g.mlp.c_fc_w, &mut *g.mlp.c_fc_b));
    linear_backward(&mut d.ln, grads, &d.fch, &a.ln_2, p.mlp.c_fc_w, n, c, f, precision);
    if let Some(ad) = adapter {
        ad.backward(Target::CFc, cfg, &mut d.ln, &d.fch, &a.ln_2, &a.lora);
    }
    layernorm_backward(
        &mut d.residual,
        g.map(|g| (&mut *g.ln_2_w, &mut *g.ln_2_b)),
        &d.ln,
        &a.residual_2,
        &a.ln_2_mean,
        &a.ln_2_rstd,
        p.ln_2_w,
        c,
    );
}
