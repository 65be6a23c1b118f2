//! Inverted dropout: in training each activation is kept with probability 1-p and scaled by
//! 1/(1-p), so evaluation (no dropout) sees the same expected values.
//!
//! The masks are counter-based: whether an element is dropped is a hash of (the pass's seed,
//! the site in the model, the element's row in the whole batch, its column). Nothing is drawn
//! in order, so a mask is the same however the batch is cut (threads, MPI ranks) and an
//! element's mask can be recomputed wherever it is needed (inside an attention tile).

/// The seed of one forward pass's masks and where its rows sit in the whole batch: a shard
/// that starts at batch row `first_seq` draws exactly the masks of those rows in an uncut pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropoutSeed {
    pub seed: u64,
    pub first_seq: usize,
}

impl DropoutSeed {
    /// The masks of a whole batch (its rows from 0).
    pub fn new(seed: u64) -> Self {
        DropoutSeed { seed, first_seq: 0 }
    }

    /// The same masks for the rows of a shard that starts `rows` batch rows further on.
    pub fn skip(self, rows: usize) -> Self {
        DropoutSeed {
            first_seq: self.first_seq + rows,
            ..self
        }
    }
}

/// Where in the model a mask is drawn: every site (in every layer) gets its own masks.
#[derive(Debug, Clone, Copy)]
pub enum Site {
    /// The embeddings, `drop(wte[tokens] + wpe[positions])`.
    Embedding,
    /// The attention probabilities P of a block, [B, NH, T, T].
    Attention,
    /// The output of a block's attention branch, [N, C].
    AttentionOutput,
    /// The output of a block's MLP branch, [N, C].
    MlpOutput,
}

/// Dropout with probability `p` in one pass over a (B, T) batch (or a shard of one).
#[derive(Debug, Clone, Copy)]
pub struct Dropout {
    pub p: f32,
    seed: DropoutSeed,
    /// T, the positions of every batch row.
    t: usize,
    /// The block whose sites [`Site::Attention`], ... name (see [`Dropout::at_layer`]).
    layer: usize,
}

/// splitmix64's finaliser: a bijective mix of 64 bits in which every output bit depends on
/// every input bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

impl Dropout {
    pub fn new(p: f32, seed: DropoutSeed, t: usize) -> Self {
        Dropout { p, seed, t, layer: 0 }
    }

    /// The same dropout, its block sites in block `layer`.
    pub fn at_layer(self, layer: usize) -> Self {
        Dropout { layer, ..self }
    }

    /// 1/(1-p), the scale of a kept element.
    pub fn keep_scale(&self) -> f32 {
        1.0 / (1.0 - self.p)
    }

    /// The key of one mask row: `row` counts rows over the whole batch at that site.
    fn row_key(&self, site: Site, row: u64) -> u64 {
        let site = match site {
            Site::Embedding => 0,
            Site::Attention => 3 * self.layer as u64 + 1,
            Site::AttentionOutput => 3 * self.layer as u64 + 2,
            Site::MlpOutput => 3 * self.layer as u64 + 3,
        };
        mix(self.seed.seed ^ mix((site << 48) ^ row))
    }

    /// The mask value, 0 (dropped, probability p) or 1/(1-p) (kept), of column `col` of the
    /// row whose key is `row_key`: 24 bits of the element's hash against p.
    pub fn mask_value(&self, row_key: u64, col: usize) -> f32 {
        let bits = mix(row_key.wrapping_add((col as u64 + 1).wrapping_mul(GOLDEN))) >> 40;
        let uniform = bits as f32 / (1u64 << 24) as f32;
        if uniform < self.p {
            0.0
        } else {
            self.keep_scale()
        }
    }

    /// The key of the attention-probability row of query `tq`, head `h` of `n_head`, in local
    /// batch row `b`: [`Dropout::mask_value`] of it at key position j masks P[b, h, tq, j].
    pub fn attention_row_key(&self, b: usize, h: usize, n_head: usize, tq: usize) -> u64 {
        let row = ((self.seed.first_seq + b) * n_head + h) * self.t + tq;
        self.row_key(Site::Attention, row as u64)
    }

    /// Fills `mask` [N, C] (N = local B·T token rows) with the masks of `site`.
    pub fn fill_tokens(&self, site: Site, mask: &mut [f32], c: usize) {
        let first_row = self.seed.first_seq * self.t;
        for (n, row) in mask.chunks_exact_mut(c).enumerate() {
            let key = self.row_key(site, (first_row + n) as u64);
            row.iter_mut()
                .enumerate()
                .for_each(|(j, m)| *m = self.mask_value(key, j));
        }
    }

    /// Fills `mask` [B, NH, T, T] with the masks of the attention probabilities.
    pub fn fill_attention(&self, mask: &mut [f32], n_head: usize) {
        let t = self.t;
        for (r, row) in mask.chunks_exact_mut(t).enumerate() {
            let (bh, tq) = (r / t, r % t);
            let key = self.attention_row_key(bh / n_head, bh % n_head, n_head, tq);
            row.iter_mut()
                .enumerate()
                .for_each(|(j, m)| *m = self.mask_value(key, j));
        }
    }

    /// Forward at a token site: fills `mask` [N, C] and applies it, `x ← x ⊙ mask`.
    pub fn forward(&self, site: Site, x: &mut [f32], mask: &mut [f32], c: usize) {
        self.fill_tokens(site, mask, c);
        x.iter_mut().zip(mask.iter()).for_each(|(v, &m)| *v *= m);
    }
}

/// Backward of `y = x ⊙ mask`: dx = dy ⊙ mask, written into `scratch`; with no dropout (an
/// empty mask) y = x, and the gradient is `dy` itself.
pub fn dropout_backward<'a>(dy: &'a [f32], mask: &[f32], scratch: &'a mut [f32]) -> &'a [f32] {
    if mask.is_empty() {
        return dy;
    }
    scratch
        .iter_mut()
        .zip(dy.iter().zip(mask))
        .for_each(|(s, (&g, &m))| *s = g * m);
    scratch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_about_one_minus_p_and_preserves_the_mean() {
        let mut mask = vec![0.0; 100_000];
        Dropout::new(0.2, DropoutSeed::new(1), 10).fill_tokens(Site::Embedding, &mut mask, 100);
        let kept = mask.iter().filter(|&&m| m > 0.0).count() as f32 / mask.len() as f32;
        let mean = mask.iter().sum::<f32>() / mask.len() as f32;
        assert!(
            (kept - 0.8).abs() < 0.01 && (mean - 1.0).abs() < 0.01,
            "kept {kept} mean {mean}"
        );
    }

    #[test]
    fn a_shard_draws_the_masks_of_its_rows_in_the_whole_batch() {
        let (b, t, c, n_head) = (5, 3, 4, 2);
        let whole = Dropout::new(0.5, DropoutSeed::new(7), t).at_layer(2);
        let mut tokens = vec![0.0; b * t * c];
        let mut att = vec![0.0; b * n_head * t * t];
        whole.fill_tokens(Site::MlpOutput, &mut tokens, c);
        whole.fill_attention(&mut att, n_head);
        // Rows 2..5 as a shard of their own.
        let shard = Dropout::new(0.5, DropoutSeed::new(7).skip(2), t).at_layer(2);
        let mut shard_tokens = vec![0.0; 3 * t * c];
        let mut shard_att = vec![0.0; 3 * n_head * t * t];
        shard.fill_tokens(Site::MlpOutput, &mut shard_tokens, c);
        shard.fill_attention(&mut shard_att, n_head);
        assert_eq!(shard_tokens, tokens[2 * t * c..]);
        assert_eq!(shard_att, att[2 * n_head * t * t..]);
    }

    #[test]
    fn sites_layers_and_seeds_draw_different_masks() {
        let fill = |seed: u64, layer: usize, site: Site| {
            let mut mask = vec![0.0; 256];
            Dropout::new(0.5, DropoutSeed::new(seed), 4)
                .at_layer(layer)
                .fill_tokens(site, &mut mask, 16);
            mask
        };
        let base = fill(1, 0, Site::AttentionOutput);
        assert_eq!(base, fill(1, 0, Site::AttentionOutput));
        for other in [
            fill(2, 0, Site::AttentionOutput),
            fill(1, 1, Site::AttentionOutput),
            fill(1, 0, Site::MlpOutput),
            fill(1, 0, Site::Embedding),
        ] {
            let same = base.iter().zip(&other).filter(|(a, b)| a == b).count();
            assert!(same < 170, "{same} of 256 equal: masks look correlated");
        }
    }

    #[test]
    fn backward_multiplies_by_the_forward_mask() {
        let (mut x, mut mask) = (vec![1.0f32; 64], vec![0.0; 64]);
        Dropout::new(0.5, DropoutSeed::new(3), 4).forward(Site::Embedding, &mut x, &mut mask, 16);
        let mut scratch = vec![0.0; 64];
        let dx = dropout_backward(&[2.0; 64], &mask, &mut scratch);
        for ((&dx, &y), &m) in dx.iter().zip(&x).zip(&mask) {
            assert_eq!((dx, y), (2.0 * m, m));
        }
        assert_eq!(dropout_backward(&[2.0; 4], &[], &mut []), &[2.0; 4]);
    }
}
