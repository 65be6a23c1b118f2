//! What a pass over the model writes, owned by its caller so that one read-only [`super::Gpt`]
//! serves any number of passes at once: the activations of a forward pass (kept for the
//! backward pass and for inspection) and the gradients of activations of a backward pass.
//! Buffers are sized for a (B, T) batch on first use and reused while the shape stays.
//!
//! N = B·T rows; C = n_embd; NH = n_head; F = n_inner; V = vocab.

use super::lora::LoraActs;
use crate::config::Config;
use crate::memory::{product, sum};
use crate::ops::dropout::Dropout;
use crate::ops::matmul::Precision;
use crate::ops::zeroed;

/// The buffers of one transformer block's forward pass. Training and full forward passes keep
/// one per layer (the backward pass reads them); cached inference reuses one for every layer.
#[derive(Default)]
pub struct BlockActs {
    pub ln_1: Vec<f32>,      // [N, C]  LayerNorm 1 output
    pub ln_1_mean: Vec<f32>, // [N]
    pub ln_1_rstd: Vec<f32>, // [N]
    pub qkv: Vec<f32>,       // [N, 3C] fused query, key, value
    pub att_lse: Vec<f32>,   // [B, NH, T] log-sum-exp of each query's attention scores
    /// The attention dropout of the last forward pass (None without dropout).
    pub att_dropout: Option<Dropout>,
    pub atty: Vec<f32>,       // [N, C]  attention output, heads side by side
    pub attn_mask: Vec<f32>,  // [N, C]  dropout mask of the attention branch (empty without dropout)
    pub residual_2: Vec<f32>, // [N, C]  residual stream after the attention branch
    pub ln_2: Vec<f32>,       // [N, C]
    pub ln_2_mean: Vec<f32>,  // [N]
    pub ln_2_rstd: Vec<f32>,  // [N]
    pub fch: Vec<f32>,        // [N, F]  MLP hidden, before GELU
    pub fch_tanh: Vec<f32>,   // [N, F]  tanh inside GELU, kept for the backward pass (empty without one)
    pub fch_gelu: Vec<f32>,   // [N, F]  MLP hidden, after GELU
    pub mlp_mask: Vec<f32>,   // [N, C]  dropout mask of the MLP branch (empty without dropout)
    pub residual_3: Vec<f32>, // [N, C]  residual stream leaving the block
    /// A LoRA adapter's buffers (empty without one): [N, r] per adapted layer, sized by the
    /// adapter's forward pass.
    pub lora: LoraActs,
}

/// What a block's buffers are sized for.
#[derive(Clone, Copy)]
pub struct BlockShape {
    /// N = B·T rows.
    pub rows: usize,
    pub dropout: bool,
    /// Keep what only the backward pass reads (GELU's tanh).
    pub for_backward: bool,
}

impl BlockShape {
    /// A forward pass over a (B, T) batch: each position attends to the batch's own T.
    pub fn full(b: usize, t: usize, dropout: bool) -> Self {
        BlockShape {
            rows: b.saturating_mul(t),
            dropout,
            for_backward: true,
        }
    }

    /// A cached pass: B rows of T new tokens (attending to any number of cached positions).
    pub fn cached(b: usize, t: usize) -> Self {
        BlockShape {
            rows: b.saturating_mul(t),
            dropout: false,
            for_backward: false,
        }
    }
}

impl BlockActs {
    /// The length of each buffer for `shape`, in field order, saturating: what
    /// [`BlockActs::fit`] allocates and [`BlockActs::floats`] counts.
    fn sizes(cfg: &Config, shape: BlockShape) -> [u64; 16] {
        let (n, c, f) = (shape.rows, cfg.n_embd, cfg.n_inner);
        let if_dropout = |len: u64| if shape.dropout { len } else { 0 };
        let (nc, nf) = (product(&[n, c]), product(&[n, f]));
        [
            nc,                                      // ln_1
            n as u64,                                // ln_1_mean
            n as u64,                                // ln_1_rstd
            product(&[n, 3, c]),                     // qkv
            product(&[n, cfg.n_head]),               // att_lse
            nc,                                      // atty
            if_dropout(nc),                          // attn_mask
            nc,                                      // residual_2
            nc,                                      // ln_2
            n as u64,                                // ln_2_mean
            n as u64,                                // ln_2_rstd
            nf,                                      // fch
            if shape.for_backward { nf } else { 0 }, // fch_tanh
            nf,                                      // fch_gelu
            if_dropout(nc),                          // mlp_mask
            nc,                                      // residual_3
        ]
    }

    /// Sizes every buffer for `shape` (a no-op when it already is).
    pub fn fit(&mut self, cfg: &Config, shape: BlockShape) {
        let buffers = [
            &mut self.ln_1,
            &mut self.ln_1_mean,
            &mut self.ln_1_rstd,
            &mut self.qkv,
            &mut self.att_lse,
            &mut self.atty,
            &mut self.attn_mask,
            &mut self.residual_2,
            &mut self.ln_2,
            &mut self.ln_2_mean,
            &mut self.ln_2_rstd,
            &mut self.fch,
            &mut self.fch_tanh,
            &mut self.fch_gelu,
            &mut self.mlp_mask,
            &mut self.residual_3,
        ];
        fit_all(buffers, Self::sizes(cfg, shape));
    }

    /// The values (f32, 4 bytes each) [`BlockActs::fit`] allocates for `shape`, saturating.
    pub fn floats(cfg: &Config, shape: BlockShape) -> u64 {
        sum(&Self::sizes(cfg, shape))
    }
}

/// [`fit`] for each buffer and its length.
pub(super) fn fit_all<const K: usize>(buffers: [&mut Vec<f32>; K], lens: [u64; K]) {
    for (buf, len) in buffers.into_iter().zip(lens) {
        fit(buf, len as usize);
    }
}

/// Gives `buf` length `len`, all zeros when the length changes (an op that leaves entries
/// unwritten can count on them reading as 0): within its allocation
/// when it fits (decoding grows and shrinks its buffers every step), else in a fresh buffer that
/// is written first ([`zeroed`]).
fn fit(buf: &mut Vec<f32>, len: usize) {
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
    /// The length of each f32 buffer outside the blocks for a (B, T) batch, in field order
    /// (encoded, emb_mask, ln_f, ln_f_mean, ln_f_rstd, logits, lse, row_loss), saturating.
    fn sizes(cfg: &Config, b: usize, t: usize, dropout: bool) -> [u64; 8] {
        let n = b.saturating_mul(t);
        let nc = product(&[n, cfg.n_embd]);
        let n = n as u64;
        let v = product(&[b, t, cfg.vocab_size]);
        [nc, if dropout { nc } else { 0 }, nc, n, n, v, n, n]
    }

    /// Sizes every buffer for a (B, T) batch, with dropout masks or without.
    fn fit(&mut self, cfg: &Config, b: usize, t: usize, dropout: bool) {
        (self.b, self.t) = (b, t);
        self.tokens.resize(b * t, 0);
        self.targets.clear();
        let buffers = [
            &mut self.encoded,
            &mut self.emb_mask,
            &mut self.ln_f,
            &mut self.ln_f_mean,
            &mut self.ln_f_rstd,
            &mut self.logits,
            &mut self.lse,
            &mut self.row_loss,
        ];
        fit_all(buffers, Self::sizes(cfg, b, t, dropout));
        let shape = BlockShape::full(b, t, dropout);
        self.blocks.resize_with(cfg.n_layer, BlockActs::default);
        self.blocks.iter_mut().for_each(|block| block.fit(cfg, shape));
        self.target_count = 0;
    }

    /// The values (f32 or ids, 4 bytes each) [`Activations::fit`] allocates, saturating: its
    /// buffers, the ids and targets [N], and the blocks'.
    fn floats(cfg: &Config, b: usize, t: usize, dropout: bool) -> u64 {
        let blocks = BlockActs::floats(cfg, BlockShape::full(b, t, dropout));
        sum(&[
            sum(&Self::sizes(cfg, b, t, dropout)),
            product(&[b, t, 2]),
            blocks.saturating_mul(cfg.n_layer as u64),
        ])
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
}

impl GradActs {
    /// The length of each buffer for a (B, T) batch, in field order, saturating.
    fn sizes(cfg: &Config, b: usize, t: usize) -> [u64; 5] {
        let nc = product(&[b, t, cfg.n_embd]);
        [nc, nc, nc.saturating_mul(3), nc, product(&[b, t, cfg.n_inner])]
    }

    fn fit(&mut self, cfg: &Config, b: usize, t: usize) {
        let buffers = [
            &mut self.residual,
            &mut self.ln,
            &mut self.qkv,
            &mut self.atty,
            &mut self.fch,
        ];
        fit_all(buffers, Self::sizes(cfg, b, t));
    }

    /// The values [`GradActs::fit`] allocates, saturating.
    fn floats(cfg: &Config, b: usize, t: usize) -> u64 {
        sum(&Self::sizes(cfg, b, t))
    }
}

/// The buffers of [`super::Gpt::forward`] and [`super::Gpt::backward`]: one per thread or task
/// that runs passes (a trainer, each batch shard, an inspection), and the precision of the
/// passes' matrix products (f32 unless [`Workspace::with_precision`]).
#[derive(Default)]
pub struct Workspace {
    acts: Activations,
    grad_acts: GradActs,
    precision: Precision,
}

impl Workspace {
    pub fn new() -> Self {
        Self::default()
    }

    /// A workspace whose passes multiply in `precision` (bf16: mixed-precision training).
    pub fn with_precision(precision: Precision) -> Self {
        Workspace {
            precision,
            ..Self::default()
        }
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The values (4 bytes each) a workspace holds after a forward and a backward pass over a
    /// (B, T) batch, saturating: what to check against the machine before such a pass.
    pub fn floats(cfg: &Config, b: usize, t: usize, dropout: bool) -> u64 {
        Activations::floats(cfg, b, t, dropout).saturating_add(GradActs::floats(cfg, b, t))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Gpt;
    use crate::ops::dropout::DropoutSeed;

    fn lens(bufs: &[&Vec<f32>]) -> usize {
        bufs.iter().map(|b| b.len()).sum()
    }

    fn block_len(a: &BlockActs) -> usize {
        lens(&[
            &a.ln_1,
            &a.ln_1_mean,
            &a.ln_1_rstd,
            &a.qkv,
            &a.att_lse,
            &a.atty,
            &a.attn_mask,
            &a.residual_2,
            &a.ln_2,
            &a.ln_2_mean,
            &a.ln_2_rstd,
            &a.fch,
            &a.fch_tanh,
            &a.fch_gelu,
            &a.mlp_mask,
            &a.residual_3,
        ])
    }

    /// The memory check is only as good as this count: it must match what a pass allocates.
    #[test]
    fn floats_counts_every_buffer_of_a_training_pass() {
        let mut cfg = Config::new(37, 16, 24, 2, 4);
        cfg.n_inner = 40;
        cfg.dropout = 0.1;
        let model = Gpt::new(cfg.clone(), 1).unwrap();
        let (b, t) = (3, 7);
        let tokens: Vec<u32> = (0..b * t).map(|i| (i % 37) as u32).collect();
        let targets: Vec<i32> = tokens.iter().map(|&x| x as i32).collect();
        for dropout in [false, true] {
            let mut ws = Workspace::new();
            model
                .forward(
                    &mut ws,
                    &tokens,
                    b,
                    t,
                    Some(&targets),
                    dropout.then_some(DropoutSeed::new(1)),
                )
                .unwrap();
            let a = &ws.acts;
            let acts = a.tokens.len()
                + a.targets.len()
                + lens(&[&a.encoded, &a.emb_mask, &a.ln_f, &a.ln_f_mean, &a.ln_f_rstd])
                + lens(&[&a.logits, &a.lse, &a.row_loss])
                + a.blocks.iter().map(block_len).sum::<usize>();
            model.backward(&mut ws, &mut model.new_gradients(), 1.0).unwrap();
            let g = &ws.grad_acts;
            let grad_acts = lens(&[&g.residual, &g.ln, &g.qkv, &g.atty, &g.fch]);
            assert_eq!(
                (acts + grad_acts) as u64,
                Workspace::floats(&cfg, b, t, dropout),
                "dropout {dropout}"
            );
        }
    }
}
