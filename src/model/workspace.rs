//! What a pass over the model writes, owned by its caller so that one read-only [`super::Gpt`]
//! serves any number of passes at once: the activations of a forward pass (kept for the
//! backward pass and for inspection) and the gradients of activations of a backward pass.
//! Buffers are sized for a (B, T) batch on first use and reused while the shape stays.
//!
//! N = B·T rows; C = n_embd; NH = n_head; F = n_inner; V = vocab.

use crate::config::Config;
use crate::ops::zeroed;

/// The buffers of one transformer block's forward pass. Training and full forward passes keep
/// one per layer (the backward pass reads them); cached inference reuses one for every layer.
#[derive(Default)]
pub struct BlockActs {
    pub ln_1: Vec<f32>,        // [N, C]  LayerNorm 1 output
    pub ln_1_mean: Vec<f32>,   // [N]
    pub ln_1_rstd: Vec<f32>,   // [N]
    pub qkv: Vec<f32>,         // [N, 3C] fused query, key, value
    pub att: Vec<f32>,         // [B, NH, T, K] attention probabilities P over K keys (K = T without a cache)
    pub att_dropped: Vec<f32>, // [B, NH, T, T] P ⊙ dropout mask (empty without dropout)
    pub atty: Vec<f32>,        // [N, C]  attention output, heads side by side
    pub attn_mask: Vec<f32>,   // [N, C]  dropout mask of the attention branch (empty without dropout)
    pub residual_2: Vec<f32>,  // [N, C]  residual stream after the attention branch
    pub ln_2: Vec<f32>,        // [N, C]
    pub ln_2_mean: Vec<f32>,   // [N]
    pub ln_2_rstd: Vec<f32>,   // [N]
    pub fch: Vec<f32>,         // [N, F]  MLP hidden, before GELU
    pub fch_tanh: Vec<f32>,    // [N, F]  tanh inside GELU, kept for the backward pass (empty without one)
    pub fch_gelu: Vec<f32>,    // [N, F]  MLP hidden, after GELU
    pub mlp_mask: Vec<f32>,    // [N, C]  dropout mask of the MLP branch (empty without dropout)
    pub residual_3: Vec<f32>,  // [N, C]  residual stream leaving the block
}

/// What a block's buffers are sized for.
#[derive(Clone, Copy)]
pub struct BlockShape {
    /// N = B·T rows.
    pub rows: usize,
    /// B·NH·T·K attention probabilities.
    pub att: usize,
    pub dropout: bool,
    /// Keep what only the backward pass reads (GELU's tanh).
    pub for_backward: bool,
}

impl BlockActs {
    /// Sizes every buffer for `shape` (a no-op when it already is).
    pub fn fit(&mut self, cfg: &Config, shape: BlockShape) {
        let (n, c, f) = (shape.rows, cfg.n_embd, cfg.n_inner);
        let if_dropout = |len: usize| if shape.dropout { len } else { 0 };
        fit(&mut self.ln_1, n * c);
        fit(&mut self.ln_1_mean, n);
        fit(&mut self.ln_1_rstd, n);
        fit(&mut self.qkv, n * 3 * c);
        fit(&mut self.att, shape.att);
        fit(&mut self.att_dropped, if_dropout(shape.att));
        fit(&mut self.atty, n * c);
        fit(&mut self.attn_mask, if_dropout(n * c));
        fit(&mut self.residual_2, n * c);
        fit(&mut self.ln_2, n * c);
        fit(&mut self.ln_2_mean, n);
        fit(&mut self.ln_2_rstd, n);
        fit(&mut self.fch, n * f);
        fit(&mut self.fch_tanh, if shape.for_backward { n * f } else { 0 });
        fit(&mut self.fch_gelu, n * f);
        fit(&mut self.mlp_mask, if_dropout(n * c));
        fit(&mut self.residual_3, n * c);
    }
}

/// Gives `buf` length `len`, all zeros when the length changes (ops may leave entries unwritten,
/// such as the masked half of an attention matrix, and those read as 0): within its allocation
/// when it fits (decoding grows and shrinks its buffers every step), else in a fresh buffer that
/// is written first ([`zeroed`]).
pub fn fit(buf: &mut Vec<f32>, len: usize) {
    if buf.len() == len {
        return;
    }
    if len <= buf.capacity() {
        buf.clear();
        buf.resize(len, 0.0);
    } else {
        *buf = Vec::new(); // free the old buffer before allocating the new one
        *buf = zeroed(len);
    }
}

/// Every activation of a forward pass over a (B, T) batch.
#[derive(Default)]
pub struct Activations {
    pub b: usize,
    pub t: usize,
    pub tokens: Vec<u32>,   // [N]
    pub targets: Vec<i32>,  // [N] (empty when the pass had no targets, or its backward ran)
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

impl Activations {
    /// Sizes every buffer for a (B, T) batch, with dropout masks or without.
    fn fit(&mut self, cfg: &Config, b: usize, t: usize, dropout: bool) {
        let (n, c) = (b * t, cfg.n_embd);
        (self.b, self.t) = (b, t);
        self.tokens.resize(n, 0);
        self.targets.clear();
        fit(&mut self.encoded, n * c);
        fit(&mut self.emb_mask, if dropout { n * c } else { 0 });
        let shape = BlockShape {
            rows: n,
            att: b * cfg.n_head * t * t,
            dropout,
            for_backward: true,
        };
        self.blocks.resize_with(cfg.n_layer, BlockActs::default);
        self.blocks.iter_mut().for_each(|block| block.fit(cfg, shape));
        fit(&mut self.ln_f, n * c);
        fit(&mut self.ln_f_mean, n);
        fit(&mut self.ln_f_rstd, n);
        fit(&mut self.logits, n * cfg.vocab_size);
        fit(&mut self.lse, n);
        fit(&mut self.row_loss, n);
        self.target_count = 0;
    }
}

/// Gradients of activations in the backward pass, reused layer after layer.
#[derive(Default)]
pub struct GradActs {
    pub residual: Vec<f32>, // [N, C] dloss/d(residual stream) flowing down through the blocks
    pub ln: Vec<f32>,       // [N, C] gradient at a LayerNorm output (or a dropped branch)
    pub qkv: Vec<f32>,      // [N, 3C]
    pub atty: Vec<f32>,     // [N, C]
    pub fch: Vec<f32>,      // [N, F]
    pub att: Vec<f32>,      // [B, NH, T, T]
}

impl GradActs {
    fn fit(&mut self, cfg: &Config, b: usize, t: usize) {
        let (n, c) = (b * t, cfg.n_embd);
        fit(&mut self.residual, n * c);
        fit(&mut self.ln, n * c);
        fit(&mut self.qkv, n * 3 * c);
        fit(&mut self.atty, n * c);
        fit(&mut self.fch, n * cfg.n_inner);
        fit(&mut self.att, b * cfg.n_head * t * t);
    }
}

/// The buffers of [`super::Gpt::forward`] and [`super::Gpt::backward`]: one per thread or task
/// that runs passes (a trainer, each batch shard, an inspection).
#[derive(Default)]
pub struct Workspace {
    acts: Activations,
    grad_acts: GradActs,
}

impl Workspace {
    pub fn new() -> Self {
        Self::default()
    }

    /// The activations of the last forward pass (empty before the first).
    pub fn activations(&self) -> &Activations {
        &self.acts
    }

    /// Logits of the last forward pass: [B, T, V]. (A backward pass turns them into gradients.)
    pub fn logits(&self) -> &[f32] {
        &self.acts.logits
    }

    /// The activations, sized for a forward pass over a (B, T) batch.
    pub(super) fn acts_for(&mut self, cfg: &Config, b: usize, t: usize, dropout: bool) -> &mut Activations {
        self.acts.fit(cfg, b, t, dropout);
        &mut self.acts
    }

    /// The last forward pass's activations and the gradient buffers sized for its backward pass.
    pub(super) fn for_backward(&mut self, cfg: &Config) -> (&mut Activations, &mut GradActs) {
        self.grad_acts.fit(cfg, self.acts.b, self.acts.t);
        (&mut self.acts, &mut self.grad_acts)
    }
}
