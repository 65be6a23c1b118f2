//! Buffers for one forward/backward pass of a (B, T) batch, allocated once and reused across
//! steps of the same shape. N = B·T rows; C = n_embd; NH = n_head; F = n_inner; V = vocab.

use crate::config::Config;
use crate::ops::zeroed;

/// What one transformer block keeps from the forward pass for its backward pass.
pub struct BlockActs {
    pub ln_1: Vec<f32>,        // [N, C]  LayerNorm 1 output
    pub ln_1_mean: Vec<f32>,   // [N]
    pub ln_1_rstd: Vec<f32>,   // [N]
    pub qkv: Vec<f32>,         // [N, 3C] fused query, key, value
    pub att: Vec<f32>,         // [B, NH, T, T] attention probabilities P
    pub att_dropped: Vec<f32>, // [B, NH, T, T] P ⊙ dropout mask (empty without dropout)
    pub atty: Vec<f32>,        // [N, C]  attention output, heads side by side
    pub attn_mask: Vec<f32>,   // [N, C]  dropout mask of the attention branch (empty without dropout)
    pub residual_2: Vec<f32>,  // [N, C] residual stream after the attention branch
    pub ln_2: Vec<f32>,        // [N, C]
    pub ln_2_mean: Vec<f32>,   // [N]
    pub ln_2_rstd: Vec<f32>,   // [N]
    pub fch: Vec<f32>,         // [N, F]  MLP hidden, before GELU
    pub fch_tanh: Vec<f32>,    // [N, F]  tanh inside GELU, kept for its backward pass
    pub fch_gelu: Vec<f32>,    // [N, F]  MLP hidden, after GELU
    pub mlp_mask: Vec<f32>,    // [N, C]  dropout mask of the MLP branch (empty without dropout)
    pub residual_3: Vec<f32>,  // [N, C] residual stream leaving the block
}

/// Every activation of a forward pass.
pub struct Activations {
    pub b: usize,
    pub t: usize,
    pub dropout: bool,
    pub tokens: Vec<u32>,   // [N]
    pub targets: Vec<i32>,  // [N] (empty when the pass had no targets)
    pub encoded: Vec<f32>,  // [N, C] token + position embedding (after dropout)
    pub emb_mask: Vec<f32>, // [N, C] (empty without dropout)
    pub blocks: Vec<BlockActs>,
    pub ln_f: Vec<f32>,      // [N, C]
    pub ln_f_mean: Vec<f32>, // [N]
    pub ln_f_rstd: Vec<f32>, // [N]
    pub logits: Vec<f32>,    // [N, V]; becomes dloss/dlogits during backward
    pub lse: Vec<f32>,       // [N] logsumexp of each logits row
    pub row_loss: Vec<f32>,  // [N] loss of each position
    /// Rows with a counted target in the last forward pass (0: the pass had no targets).
    pub target_count: usize,
}

/// Scratch gradients of activations for the backward pass (reused layer after layer).
pub struct GradActs {
    pub b: usize,
    pub t: usize,
    pub residual: Vec<f32>, // [N, C] dloss/d(residual stream) flowing down through the blocks
    pub ln: Vec<f32>,       // [N, C] gradient at a LayerNorm output (or a dropped branch)
    pub qkv: Vec<f32>,      // [N, 3C]
    pub atty: Vec<f32>,     // [N, C]
    pub fch: Vec<f32>,      // [N, F]
    pub att: Vec<f32>,      // [B, NH, T, T]
}

impl Activations {
    pub fn new(cfg: &Config, b: usize, t: usize, dropout: bool) -> Self {
        let (n, c, f) = (b * t, cfg.n_embd, cfg.n_inner);
        let att = b * cfg.n_head * t * t;
        let if_dropout = |len: usize| zeroed(if dropout { len } else { 0 });
        let blocks = (0..cfg.n_layer)
            .map(|_| BlockActs {
                ln_1: zeroed(n * c),
                ln_1_mean: zeroed(n),
                ln_1_rstd: zeroed(n),
                qkv: zeroed(n * 3 * c),
                att: zeroed(att),
                att_dropped: if_dropout(att),
                atty: zeroed(n * c),
                attn_mask: if_dropout(n * c),
                residual_2: zeroed(n * c),
                ln_2: zeroed(n * c),
                ln_2_mean: zeroed(n),
                ln_2_rstd: zeroed(n),
                fch: zeroed(n * f),
                fch_tanh: zeroed(n * f),
                fch_gelu: zeroed(n * f),
                mlp_mask: if_dropout(n * c),
                residual_3: zeroed(n * c),
            })
            .collect();
        Activations {
            b,
            t,
            dropout,
            tokens: vec![0; n],
            targets: Vec::with_capacity(n),
            encoded: zeroed(n * c),
            emb_mask: if_dropout(n * c),
            blocks,
            ln_f: zeroed(n * c),
            ln_f_mean: zeroed(n),
            ln_f_rstd: zeroed(n),
            logits: zeroed(n * cfg.vocab_size),
            lse: zeroed(n),
            row_loss: zeroed(n),
            target_count: 0,
        }
    }
}

impl GradActs {
    pub fn new(cfg: &Config, b: usize, t: usize) -> Self {
        let (n, c) = (b * t, cfg.n_embd);
        GradActs {
            b,
            t,
            residual: zeroed(n * c),
            ln: zeroed(n * c),
            qkv: zeroed(n * 3 * c),
            atty: zeroed(n * c),
            fch: zeroed(n * cfg.n_inner),
            att: zeroed(b * cfg.n_head * t * t),
        }
    }
}
