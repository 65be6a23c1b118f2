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
use super::params::BlockWeights;
use super::workspace::{BlockActs, GradActs};
use crate::config::Config;
use crate::ops::attention::{attention_backward, attention_forward, attention_forward_cached, AttnShape};
use crate::ops::dropout::{dropout_backward, Dropout, Site};
use crate::ops::gelu::{gelu_backward_inplace, gelu_forward};
use crate::ops::layernorm::{layernorm_backward, layernorm_forward};
use crate::ops::matmul::{linear_backward, linear_forward};
use crate::ops::residual::residual_forward;

/// Where a block's attention finds the keys and values its queries look at.
pub enum Keys<'a> {
    /// The batch's own T positions: position i sees positions 0..=i.
    Causal,
    /// A KV cache holding the positions before the new tokens; the new tokens' keys and values
    /// are appended to it first, then new token i (at position pos0 + i) sees 0..=pos0 + i.
    Cached(KvLayer<'a>),
}

/// Forward through one block: reads the stream `x` [N, C], leaves every step's output in `a`
/// (the block's output in `a.residual_3`). Dropout applies when `dropout` is given (its
/// masks those of this block: [`Dropout::at_layer`]).
pub fn block_forward(
    cfg: &Config,
    shape: AttnShape,
    p: &BlockWeights<&[f32]>,
    x: &[f32],
    a: &mut BlockActs,
    keys: Keys,
    dropout: Option<Dropout>,
) {
    attention_layer_forward(cfg, shape, p, x, a, keys, dropout);
    mlp_forward(cfg, shape, p, a, dropout);
}

/// Backward through one block whose forward pass read `x` and left `a`: `d.residual` arrives
/// as dloss/d(residual_3) and leaves as dloss/dx; the block's parameter gradients are added to
/// `g`. `keep_scale` = 1/(1-p) of the attention dropout.
#[allow(clippy::too_many_arguments)]
pub fn block_backward(
    cfg: &Config,
    shape: AttnShape,
    p: &BlockWeights<&[f32]>,
    g: &mut BlockWeights<&mut [f32]>,
    x: &[f32],
    a: &BlockActs,
    d: &mut GradActs,
    keep_scale: f32,
) {
    mlp_backward(cfg, shape, p, g, a, d);
    attention_layer_backward(cfg, shape, p, g, x, a, d, keep_scale);
}

/// Attention layer: `residual_2 = x + drop(c_proj(attention(c_attn(ln_1(x)))))`.
fn attention_layer_forward(
    cfg: &Config,
    shape: AttnShape,
    p: &BlockWeights<&[f32]>,
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
    linear_forward(&mut a.qkv, &a.ln_1, p.attn.c_attn_w, p.attn.c_attn_b, n, c, 3 * c);
    match keys {
        Keys::Causal => {
            let dropped = dropout.map(|d| {
                d.fill_attention(&mut a.att_dropped, cfg.n_head);
                a.att_dropped.as_mut_slice()
            });
            attention_forward(&mut a.atty, &mut a.att, dropped, &a.qkv, shape);
        }
        Keys::Cached(mut cache) => {
            cache.store(&a.qkv, shape.t, c, cfg.head_size());
            let (k, v) = cache.keys_values();
            attention_forward_cached(&mut a.atty, &mut a.att, &a.qkv, k, v, shape, cache.pos0);
        }
    }
    linear_forward(&mut a.residual_2, &a.atty, p.attn.c_proj_w, p.attn.c_proj_b, n, c, c);
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
    p: &BlockWeights<&[f32]>,
    g: &mut BlockWeights<&mut [f32]>,
    x: &[f32],
    a: &BlockActs,
    d: &mut GradActs,
    keep_scale: f32,
) {
    let (n, c) = (shape.b * shape.t, cfg.n_embd);
    let branch_grad = dropout_backward(&d.residual, &a.attn_mask, &mut d.ln);
    linear_backward(
        &mut d.atty,
        g.attn.c_proj_w,
        g.attn.c_proj_b,
        branch_grad,
        &a.atty,
        p.attn.c_proj_w,
        n,
        c,
        c,
    );
    let dropped = (!a.att_dropped.is_empty()).then_some((a.att_dropped.as_slice(), keep_scale));
    attention_backward(&mut d.qkv, &mut d.att, &d.atty, &a.qkv, &a.att, dropped, shape);
    linear_backward(
        &mut d.ln,
        g.attn.c_attn_w,
        g.attn.c_attn_b,
        &d.qkv,
        &a.ln_1,
        p.attn.c_attn_w,
        n,
        c,
        3 * c,
    );
    layernorm_backward(
        &mut d.residual,
        g.ln_1_w,
        g.ln_1_b,
        &d.ln,
        x,
        &a.ln_1_mean,
        &a.ln_1_rstd,
        p.ln_1_w,
        c,
    );
}

/// MLP: `residual_3 = residual_2 + drop(c_proj(gelu(c_fc(ln_2(residual_2)))))`.
fn mlp_forward(cfg: &Config, shape: AttnShape, p: &BlockWeights<&[f32]>, a: &mut BlockActs, dropout: Option<Dropout>) {
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
    linear_forward(&mut a.fch, &a.ln_2, p.mlp.c_fc_w, p.mlp.c_fc_b, n, c, f);
    let keep_tanh = (!a.fch_tanh.is_empty()).then_some(a.fch_tanh.as_mut_slice());
    gelu_forward(&mut a.fch_gelu, keep_tanh, &a.fch);
    linear_forward(&mut a.residual_3, &a.fch_gelu, p.mlp.c_proj_w, p.mlp.c_proj_b, n, f, c);
    if let Some(d) = dropout {
        d.forward(Site::MlpOutput, &mut a.residual_3, &mut a.mlp_mask, c);
    }
    residual_forward(&mut a.residual_3, &a.residual_2);
}

/// Backward of the MLP: as for the attention layer, the branch sees `d.residual ⊙ mask` and
/// its gradient for residual_2 (through ln_2) is added to the stream's.
fn mlp_backward(
    cfg: &Config,
    shape: AttnShape,
    p: &BlockWeights<&[f32]>,
    g: &mut BlockWeights<&mut [f32]>,
    a: &BlockActs,
    d: &mut GradActs,
) {
    let (n, c, f) = (shape.b * shape.t, cfg.n_embd, cfg.n_inner);
    let branch_grad = dropout_backward(&d.residual, &a.mlp_mask, &mut d.ln);
    linear_backward(
        &mut d.fch,
        g.mlp.c_proj_w,
        g.mlp.c_proj_b,
        branch_grad,
        &a.fch_gelu,
        p.mlp.c_proj_w,
        n,
        f,
        c,
    );
    gelu_backward_inplace(&mut d.fch, &a.fch, &a.fch_tanh);
    linear_backward(
        &mut d.ln,
        g.mlp.c_fc_w,
        g.mlp.c_fc_b,
        &d.fch,
        &a.ln_2,
        p.mlp.c_fc_w,
        n,
        c,
        f,
    );
    layernorm_backward(
        &mut d.residual,
        g.ln_2_w,
        g.ln_2_b,
        &d.ln,
        &a.residual_2,
        &a.ln_2_mean,
        &a.ln_2_rstd,
        p.ln_2_w,
        c,
    );
}
