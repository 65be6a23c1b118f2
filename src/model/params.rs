//! All parameters in one contiguous f32 buffer, with named views in Hugging Face order.
//!
//! The same layout serves the gradients and the two AdamW moments, so the optimizer, gradient
//! clipping and checkpointing are each one loop over one slice.

use crate::config::Config;
use crate::rng::Rng;
use std::ops::Range;

/// Name and shape of one parameter tensor (Hugging Face name, Conv1D layout: weights are [in, out]).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

impl TensorSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The parameter tensors of a GPT-2, in the order they sit in the flat buffer.
pub fn param_specs(cfg: &Config) -> Vec<TensorSpec> {
    let (c, v, max_t, f) = (cfg.n_embd, cfg.vocab_size, cfg.n_positions, cfg.n_inner);
    let spec = |name: String, shape: &[usize]| TensorSpec {
        name,
        shape: shape.to_vec(),
    };
    let mut specs = vec![
        spec("wte.weight".into(), &[v, c]),
        spec("wpe.weight".into(), &[max_t, c]),
    ];
    for l in 0..cfg.n_layer {
        let h = |s: &str| format!("h.{l}.{s}");
        specs.extend([
            spec(h("ln_1.weight"), &[c]),
            spec(h("ln_1.bias"), &[c]),
            spec(h("attn.c_attn.weight"), &[c, 3 * c]),
            spec(h("attn.c_attn.bias"), &[3 * c]),
            spec(h("attn.c_proj.weight"), &[c, c]),
            spec(h("attn.c_proj.bias"), &[c]),
            spec(h("ln_2.weight"), &[c]),
            spec(h("ln_2.bias"), &[c]),
            spec(h("mlp.c_fc.weight"), &[c, f]),
            spec(h("mlp.c_fc.bias"), &[f]),
            spec(h("mlp.c_proj.weight"), &[f, c]),
            spec(h("mlp.c_proj.bias"), &[c]),
        ]);
    }
    specs.extend([spec("ln_f.weight".into(), &[c]), spec("ln_f.bias".into(), &[c])]);
    specs
}

/// Which tensors of [`param_specs`] a flat buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// All of them.
    Full,
    /// All but the weight matrices (`wte.weight` and each block's four Conv1D weights), which a
    /// model with low-precision weights stores apart ([`super::lowp::LowpWeights`]); their
    /// views are empty.
    WithoutMatrices,
}

/// Whether the parameter `name` is a weight matrix: the token embedding (also the LM head) or
/// the weight of a linear layer.
pub fn is_matrix(name: &str) -> bool {
    name == "wte.weight" || (name.starts_with("h.") && name.ends_with(".weight") && !name.contains(".ln_"))
}

impl Layout {
    /// How many of a weight matrix's `size` values a buffer of this layout holds.
    fn matrix(self, size: usize) -> usize {
        match self {
            Layout::Full => size,
            Layout::WithoutMatrices => 0,
        }
    }

    /// The values of one block in a buffer of this layout.
    fn block_len(self, cfg: &Config) -> usize {
        block_sizes(cfg, self).iter().sum()
    }

    /// The parameters a buffer of this layout holds, in buffer order.
    pub fn specs(self, cfg: &Config) -> Vec<TensorSpec> {
        let mut specs = param_specs(cfg);
        if self == Layout::WithoutMatrices {
            specs.retain(|s| !is_matrix(&s.name));
        }
        specs
    }
}

/// Number of parameters: the sizes of [`param_specs`] added (the LM head is tied to the token
/// embedding, so it adds none).
pub fn num_params(cfg: &Config) -> usize {
    param_specs(cfg).iter().map(TensorSpec::numel).sum()
}

/// The tensors of `params` (laid out for `cfg` and `layout`) that hold NaN or infinite values,
/// each with how many, in buffer order.
pub fn non_finite_tensors(cfg: &Config, layout: Layout, params: &[f32]) -> Vec<(String, usize)> {
    let mut offset = 0;
    layout
        .specs(cfg)
        .into_iter()
        .filter_map(|spec| {
            let tensor = &params[offset..offset + spec.numel()];
            offset += spec.numel();
            let bad = tensor.iter().filter(|x| !x.is_finite()).count();
            (bad > 0).then_some((spec.name, bad))
        })
        .collect()
}

/// The tensors of one transformer block, as slices of the flat buffer, named as Hugging Face
/// names them (`h.{l}.ln_1.weight`, `h.{l}.attn.c_attn.weight`, `h.{l}.mlp.c_proj.bias`, ...).
pub struct BlockWeights<S> {
    pub ln_1_w: S, // [C]
    pub ln_1_b: S, // [C]
    pub attn: AttnWeights<S>,
    pub ln_2_w: S, // [C]
    pub ln_2_b: S, // [C]
    pub mlp: MlpWeights<S>,
}

/// The causal self-attention layer's projections (`attn.*`).
pub struct AttnWeights<S> {
    pub c_attn_w: S, // [C, 3C]  fused q, k, v projection
    pub c_attn_b: S, // [3C]
    pub c_proj_w: S, // [C, C]   output projection, heads side by side in
    pub c_proj_b: S, // [C]
}

/// The MLP's two linear layers (`mlp.*`).
pub struct MlpWeights<S> {
    pub c_fc_w: S,   // [C, F]  F = n_inner (4C in GPT-2)
    pub c_fc_b: S,   // [F]
    pub c_proj_w: S, // [F, C]
    pub c_proj_b: S, // [C]
}

/// Every parameter of the model, as slices of the flat buffer (`&[f32]` or `&mut [f32]`).
pub struct Weights<S> {
    pub wte: S, // [V, C] token embedding, also the (tied) LM head
    pub wpe: S, // [n_positions, C] position embedding: one row per position the model can see
    pub blocks: Vec<BlockWeights<S>>,
    pub ln_f_w: S, // [C]
    pub ln_f_b: S, // [C]
}

/// A slice that can be cut in two, shared (`&[f32]`) or exclusive (`&mut [f32]`).
pub trait Splittable: Sized {
    fn split(self, mid: usize) -> (Self, Self);
}
impl Splittable for &[f32] {
    fn split(self, mid: usize) -> (Self, Self) {
        self.split_at(mid)
    }
}
impl Splittable for &mut [f32] {
    fn split(self, mid: usize) -> (Self, Self) {
        self.split_at_mut(mid)
    }
}

/// Takes consecutive pieces off the front of a buffer.
struct Pieces<S>(Option<S>);

impl<S: Splittable> Pieces<S> {
    fn take(&mut self, len: usize) -> S {
        let (head, tail) = self.0.take().expect("buffer consumed").split(len);
        self.0 = Some(tail);
        head
    }
}

/// The sizes of one block's tensors in a buffer of `layout`, in the order of [`param_specs`].
fn block_sizes(cfg: &Config, layout: Layout) -> [usize; 12] {
    let (c, f) = (cfg.n_embd, cfg.n_inner);
    let matrix = |size| layout.matrix(size);
    [
        c,
        c,
        matrix(c * 3 * c),
        3 * c,
        matrix(c * c),
        c,
        c,
        c,
        matrix(c * f),
        f,
        matrix(f * c),
        c,
    ]
}

/// The number of parameters of one transformer block.
pub fn block_len(cfg: &Config) -> usize {
    Layout::Full.block_len(cfg)
}

/// The ranges of the flat buffer that the backward pass finishes one after another: the final
/// LayerNorm, each block from the last, the embeddings ([`crate::model::Gpt::backward_with`]).
pub fn backward_buckets(cfg: &Config) -> Vec<Range<usize>> {
    let (c, block) = (cfg.n_embd, block_len(cfg));
    let blocks_start = (cfg.vocab_size + cfg.n_positions) * c;
    let ln_f = blocks_start + cfg.n_layer * block;
    let blocks = (0..cfg.n_layer).rev().map(|l| {
        let start = blocks_start + l * block;
        start..start + block
    });
    std::iter::once(ln_f..ln_f + 2 * c)
        .chain(blocks)
        .chain(std::iter::once(0..blocks_start))
        .collect()
}

impl<S: Splittable> BlockWeights<S> {
    /// Cuts one block's part of a flat buffer ([`block_len`] values) into named views.
    pub fn split(buf: S, cfg: &Config) -> Self {
        Self::split_as(buf, cfg, Layout::Full)
    }

    /// [`BlockWeights::split`] for a block of a buffer of `layout`.
    fn split_as(buf: S, cfg: &Config, layout: Layout) -> Self {
        let (mut pieces, mut sizes) = (Pieces(Some(buf)), block_sizes(cfg, layout).into_iter());
        let mut take = || pieces.take(sizes.next().expect("spec left"));
        BlockWeights {
            ln_1_w: take(),
            ln_1_b: take(),
            attn: AttnWeights {
                c_attn_w: take(),
                c_attn_b: take(),
                c_proj_w: take(),
                c_proj_b: take(),
            },
            ln_2_w: take(),
            ln_2_b: take(),
            mlp: MlpWeights {
                c_fc_w: take(),
                c_fc_b: take(),
                c_proj_w: take(),
                c_proj_b: take(),
            },
        }
    }
}

impl<S: Splittable> Weights<S> {
    /// Cuts a flat buffer laid out by [`param_specs`] into named views. The struct fields
    /// are taken in the same order as `param_specs` lists them (checked by a test).
    pub fn split(buf: S, cfg: &Config) -> Self {
        Self::split_as(buf, cfg, Layout::Full)
    }

    /// [`Weights::split`] for a buffer of `layout`.
    pub fn split_as(buf: S, cfg: &Config, layout: Layout) -> Self {
        let (c, v, max_t) = (cfg.n_embd, cfg.vocab_size, cfg.n_positions);
        let mut pieces = Pieces(Some(buf));
        let wte = pieces.take(layout.matrix(v * c));
        let wpe = pieces.take(max_t * c);
        let blocks = (0..cfg.n_layer)
            .map(|_| BlockWeights::split_as(pieces.take(layout.block_len(cfg)), cfg, layout))
            .collect();
        Weights {
            wte,
            wpe,
            blocks,
            ln_f_w: pieces.take(c),
            ln_f_b: pieces.take(c),
        }
    }
}

/// Fills a fresh parameter buffer as GPT-2 / nanoGPT do: weights and embeddings ~ N(0, 0.02),
/// the two residual projections per block ~ N(0, 0.02 / sqrt(2 * n_layer)) so the residual
/// stream's variance does not grow with depth, biases 0, LayerNorm gains 1.
pub fn init_params(cfg: &Config, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let residual_std = 0.02 / (2.0 * cfg.n_layer as f32).sqrt();
    let mut buf = Vec::with_capacity(num_params(cfg));
    for spec in param_specs(cfg) {
        let name = spec.name.as_str();
        let n = spec.numel();
        if name.ends_with("c_proj.weight") {
            buf.extend((0..n).map(|_| rng.normal() * residual_std));
        } else if spec.shape.len() == 2 {
            buf.extend((0..n).map(|_| rng.normal() * 0.02));
        } else if name.contains("ln_") && name.ends_with(".weight") {
            buf.extend(std::iter::repeat_n(1.0, n));
        } else {
            buf.extend(std::iter::repeat_n(0.0, n));
        }
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_small_has_124_439_808_parameters() {
        assert_eq!(num_params(&Config::preset("gpt2").unwrap()), 124_439_808);
    }

    #[test]
    fn the_backward_buckets_cover_the_buffer_once() {
        let cfg = Config::new(11, 7, 8, 3, 2);
        let mut covered = vec![0; num_params(&cfg)];
        let buckets = backward_buckets(&cfg);
        assert_eq!(buckets.len(), 3 + 2, "ln_f, 3 blocks, the embeddings");
        assert_eq!(buckets[0].len(), 2 * 8);
        buckets.into_iter().flatten().for_each(|i| covered[i] += 1);
        assert!(covered.iter().all(|&n| n == 1));
    }

    #[test]
    fn views_follow_the_spec_order() {
        let cfg = Config::new(11, 7, 8, 2, 2);
        // Fill each tensor with its index in the spec list, then check each view holds its index.
        let specs = param_specs(&cfg);
        let buf: Vec<f32> = specs
            .iter()
            .enumerate()
            .flat_map(|(i, s)| std::iter::repeat_n(i as f32, s.numel()))
            .collect();
        let w = Weights::split(buf.as_slice(), &cfg);
        let mut views: Vec<&[f32]> = vec![w.wte, w.wpe];
        for b in &w.blocks {
            views.extend([
                b.ln_1_w,
                b.ln_1_b,
                b.attn.c_attn_w,
                b.attn.c_attn_b,
                b.attn.c_proj_w,
                b.attn.c_proj_b,
                b.ln_2_w,
                b.ln_2_b,
                b.mlp.c_fc_w,
                b.mlp.c_fc_b,
                b.mlp.c_proj_w,
                b.mlp.c_proj_b,
            ]);
        }
        views.extend([w.ln_f_w, w.ln_f_b]);
        assert_eq!(views.len(), specs.len());
        for (i, (view, spec)) in views.iter().zip(&specs).enumerate() {
            assert_eq!(view.len(), spec.numel(), "{}", spec.name);
            assert!(view.iter().all(|&x| x == i as f32), "{}", spec.name);
        }
        // Without the matrices: the same views of the other tensors, empty matrices.
        let rest: Vec<f32> = buf
            .iter()
            .zip(
                specs
                    .iter()
                    .flat_map(|s| std::iter::repeat_n(is_matrix(&s.name), s.numel())),
            )
            .filter_map(|(&x, matrix)| (!matrix).then_some(x))
            .collect();
        assert_eq!(
            Layout::WithoutMatrices
                .specs(&cfg)
                .iter()
                .map(TensorSpec::numel)
                .sum::<usize>(),
            rest.len()
        );
        let w = Weights::split_as(rest.as_slice(), &cfg, Layout::WithoutMatrices);
        assert!(w.wte.is_empty() && w.ln_f_b.iter().all(|&x| x == (specs.len() - 1) as f32));
        for b in &w.blocks {
            assert!(b.attn.c_attn_w.is_empty() && b.attn.c_proj_w.is_empty());
            assert!(b.mlp.c_fc_w.is_empty() && b.mlp.c_proj_w.is_empty() && !b.mlp.c_proj_b.is_empty());
        }
        let matrices = specs.iter().filter(|s| is_matrix(&s.name)).count();
        assert_eq!(matrices, 1 + 4 * cfg.n_layer);
    }
}
