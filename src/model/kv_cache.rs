//! Inference with a key/value cache.
//!
//! A token's key and value in layer l depend only on the tokens at or before it, so once
//! computed they never change. [`KvCache`] keeps them; [`Gpt::forward_cached`] then runs only
//! the new tokens through the model: a whole prompt in one batched pass (prefill), after that
//! one token per row and step (decode), each attending to the cached keys and values. Only the
//! last position of each row goes through the final LayerNorm and the LM head.
//!
//! Shapes: B = rows (sequences decoded side by side), P = cache capacity in positions
//! (at most n_positions), L = layers, NH = heads, hs = head size, C = NH·hs.

use super::gpt::{add_inplace, Gpt};
use super::params::Weights;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::ops::attention::{attention_forward_cached, AttnShape};
use crate::ops::embedding::embedding_forward;
use crate::ops::gelu::gelu_forward;
use crate::ops::layernorm::layernorm_forward;
use crate::ops::matmul::{linear_forward, lm_head_forward};

/// Cached keys and values of B sequences that all hold the same number of positions, plus
/// the scratch buffers of one cached forward pass.
pub struct KvCache {
    rows: usize,
    capacity: usize,
    len: usize,
    /// Elements of one (layer, row) block: NH·P·hs = P·C.
    block: usize,
    n_layer: usize,
    k: Vec<f32>, // [L, B, NH, P, hs]
    v: Vec<f32>, // [L, B, NH, P, hs]
    s: Scratch,
}

/// Buffers of one forward call over N = B·T new tokens, reused layer after layer (resized to
/// each call's shapes; their allocations are kept).
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,        // [N, C] residual stream
    ln: Vec<f32>,       // [N, C] LayerNorm output
    mean: Vec<f32>,     // [N]
    rstd: Vec<f32>,     // [N]
    qkv: Vec<f32>,      // [N, 3C]
    atty: Vec<f32>,     // [N, C] attention output, heads side by side
    branch: Vec<f32>,   // [N, C] output of a residual branch
    fch: Vec<f32>,      // [N, F]
    fch_gelu: Vec<f32>, // [N, F]
    scores: Vec<f32>,   // [B, NH, T, pos0 + T]
    last: Vec<f32>,     // [B, C] residual stream at the last new position of each row
    logits: Vec<f32>,   // [B, V]
}

impl KvCache {
    /// An empty cache for `rows` sequences of up to `capacity` positions each.
    pub fn new(cfg: &Config, rows: usize, capacity: usize) -> Result<Self> {
        if rows == 0 || capacity == 0 || capacity > cfg.n_positions {
            return Err(Error::Input(format!(
                "a KV cache needs rows >= 1 and a capacity in [1, {}] positions; got {rows} rows, {capacity} positions",
                cfg.n_positions
            )));
        }
        let block = capacity * cfg.n_embd;
        let size = cfg.n_layer * rows * block;
        Ok(KvCache {
            rows,
            capacity,
            len: 0,
            block,
            n_layer: cfg.n_layer,
            k: vec![0.0; size],
            v: vec![0.0; size],
            s: Scratch::default(),
        })
    }

    /// Number of sequences (batch rows).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Positions cached in every row.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions each row can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets every cached position (the buffers stay allocated).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Turns a one-row cache into `rows` copies of that row: several samples that share a
    /// prompt prefill it once.
    pub fn broadcast(&mut self, rows: usize) -> Result<()> {
        if self.rows != 1 || rows == 0 {
            return Err(Error::Input(format!(
                "broadcast needs a one-row cache and rows >= 1 (cache has {} rows)",
                self.rows
            )));
        }
        let row_len = self.k.len();
        let too_many = || {
            let bytes = 2.0 * 4.0 * row_len as f64 * rows as f64;
            Error::Input(format!(
                "{rows} rows of KV cache need {:.1} GB: more memory than this machine gives (use fewer samples)",
                bytes / 1e9
            ))
        };
        let size = row_len.checked_mul(rows).ok_or_else(too_many)?;
        for buf in [&mut self.k, &mut self.v] {
            let mut new = Vec::new();
            new.try_reserve_exact(size).map_err(|_| too_many())?;
            // old: [L, 1, ...] → new: [L, rows, ...], each layer's block repeated.
            new.extend(
                buf.chunks_exact(self.block)
                    .flat_map(|layer| std::iter::repeat_n(layer, rows).flatten().copied()),
            );
            *buf = new;
        }
        self.rows = rows;
        Ok(())
    }

    /// Keeps the rows whose `keep` entry is true (in order) and drops the others, so that
    /// finished sequences cost nothing in later steps.
    pub fn retain(&mut self, keep: &[bool]) -> Result<()> {
        if keep.len() != self.rows {
            return Err(Error::Input(format!(
                "retain: {} flags for {} rows",
                keep.len(),
                self.rows
            )));
        }
        let kept = keep.iter().filter(|&&k| k).count();
        for buf in [&mut self.k, &mut self.v] {
            // Block (l, r) moves to (l, r') with l·kept + r' <= l·rows + r: never forward.
            let mut dst = 0;
            for l in 0..self.n_layer {
                for r in (0..self.rows).filter(|&r| keep[r]) {
                    let src = (l * self.rows + r) * self.block;
                    buf.copy_within(src..src + self.block, dst * self.block);
                    dst += 1;
                }
            }
            buf.truncate(dst * self.block);
        }
        self.rows = kept;
        Ok(())
    }

    /// Writes the keys and values of N = B·T new tokens (from qkv [B, T, 3C]) into layer l at
    /// positions len..len+T: element (b, h, p, d) of a layer sits at ((b·NH + h)·P + p)·hs + d.
    fn store(&mut self, l: usize, t: usize, c: usize, hs: usize) {
        let layer = l * self.rows * self.block..(l + 1) * self.rows * self.block;
        let (k, v) = (&mut self.k[layer.clone()], &mut self.v[layer]);
        for (i, row) in self.s.qkv.chunks_exact(3 * c).enumerate() {
            let (b, pos) = (i / t, self.len + i % t);
            for h in 0..c / hs {
                let at = b * self.block + (h * self.capacity + pos) * hs;
                k[at..at + hs].copy_from_slice(&row[c + h * hs..][..hs]);
                v[at..at + hs].copy_from_slice(&row[2 * c + h * hs..][..hs]);
            }
        }
    }
}

impl Gpt {
    /// Runs T new tokens per row, `tokens` [B, T] with B = `cache.rows()`, through the model at
    /// positions `cache.len()..cache.len() + T`, appends their keys and values to the cache and
    /// returns the logits of each row's last new token: [B, V]. With an empty cache and the
    /// whole sequence as `tokens` this is a prefill; then T = 1 per step. The logits equal
    /// those of [`Gpt::forward`] over the whole sequence at that position.
    pub fn forward_cached<'c>(&self, cache: &'c mut KvCache, tokens: &[u32]) -> Result<&'c [f32]> {
        let b = cache.rows;
        if b == 0 || tokens.is_empty() || !tokens.len().is_multiple_of(b) {
            return Err(Error::Input(format!(
                "{} tokens do not split into {b} non-empty rows",
                tokens.len()
            )));
        }
        let t = tokens.len() / b;
        if cache.len + t > cache.capacity {
            return Err(Error::Input(format!(
                "KV cache overflow: {} cached + {t} new positions exceed its capacity of {}",
                cache.len, cache.capacity
            )));
        }
        self.check_batch(tokens, b, t, None)?;
        let cfg = &self.config;
        let (c, f, v, eps, pos0, n) = (
            cfg.n_embd,
            cfg.n_inner,
            cfg.vocab_size,
            cfg.layer_norm_epsilon,
            cache.len,
            b * t,
        );
        let shape = AttnShape {
            b,
            t,
            c,
            n_head: cfg.n_head,
        };
        let w = Weights::split(self.params.as_slice(), cfg);
        let s = &mut cache.s;
        for (buf, len) in [
            (&mut s.x, n * c),
            (&mut s.ln, n * c),
            (&mut s.mean, n),
            (&mut s.rstd, n),
            (&mut s.qkv, n * 3 * c),
            (&mut s.atty, n * c),
            (&mut s.branch, n * c),
            (&mut s.fch, n * f),
            (&mut s.fch_gelu, n * f),
            (&mut s.scores, b * cfg.n_head * t * (pos0 + t)),
            (&mut s.last, b * c),
            (&mut s.logits, b * v),
        ] {
            buf.resize(len, 0.0);
        }

        embedding_forward(&mut s.x, tokens, w.wte, w.wpe, t, c, pos0);
        for (l, p) in w.blocks.iter().enumerate() {
            // Attention branch: x += c_proj(attn(ln_1(x))), with this layer's cache extended first.
            let s = &mut cache.s;
            layernorm_forward(&mut s.ln, &mut s.mean, &mut s.rstd, &s.x, p.ln_1_w, p.ln_1_b, c, eps);
            linear_forward(&mut s.qkv, &s.ln, p.c_attn_w, p.c_attn_b, n, c, 3 * c);
            cache.store(l, t, c, cfg.head_size());
            let layer = l * b * cache.block..(l + 1) * b * cache.block;
            let s = &mut cache.s;
            attention_forward_cached(
                &mut s.atty,
                &mut s.scores,
                &s.qkv,
                &cache.k[layer.clone()],
                &cache.v[layer],
                shape,
                pos0,
            );
            linear_forward(&mut s.branch, &s.atty, p.attn_proj_w, p.attn_proj_b, n, c, c);
            add_inplace(&mut s.x, &s.branch);
            // MLP branch: x += c_proj(gelu(c_fc(ln_2(x))))
            layernorm_forward(&mut s.ln, &mut s.mean, &mut s.rstd, &s.x, p.ln_2_w, p.ln_2_b, c, eps);
            linear_forward(&mut s.fch, &s.ln, p.c_fc_w, p.c_fc_b, n, c, f);
            gelu_forward(&mut s.fch_gelu, None, &s.fch);
            linear_forward(&mut s.branch, &s.fch_gelu, p.mlp_proj_w, p.mlp_proj_b, n, f, c);
            add_inplace(&mut s.x, &s.branch);
        }
        cache.len += t;

        // Only each row's last position: final LayerNorm, then logits [B, V] = ln_f [B, C] · wteᵀ.
        let s = &mut cache.s;
        for (last, row) in s.last.chunks_exact_mut(c).zip(s.x.chunks_exact(t * c)) {
            last.copy_from_slice(&row[(t - 1) * c..]);
        }
        let ln_f = &mut s.ln[..b * c];
        layernorm_forward(
            ln_f,
            &mut s.mean[..b],
            &mut s.rstd[..b],
            &s.last,
            w.ln_f_w,
            w.ln_f_b,
            c,
            eps,
        );
        lm_head_forward(&mut s.logits, ln_f, w.wte, b, c, v);
        Ok(&cache.s.logits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn model() -> Gpt {
        // Wide enough that the small-M matrix kernels split their work into several blocks.
        let mut cfg = Config::new(97, 24, 48, 2, 4);
        cfg.n_inner = 200;
        Gpt::new(cfg, 5).unwrap()
    }

    fn random_tokens(n: usize, v: usize, seed: u64) -> Vec<u32> {
        let mut rng = Rng::new(seed);
        (0..n).map(|_| rng.below(v) as u32).collect()
    }

    /// Last-position logits of each row from a full forward over `seqs` [B, T]: [B, V].
    fn full_last_logits(model: &mut Gpt, seqs: &[Vec<u32>]) -> Vec<f32> {
        let (b, t, v) = (seqs.len(), seqs[0].len(), model.config.vocab_size);
        model.forward(&seqs.concat(), b, t, None, None).unwrap();
        model
            .logits()
            .chunks_exact(t * v)
            .flat_map(|row| row[(t - 1) * v..].to_vec())
            .collect()
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    #[test]
    fn cached_logits_equal_full_forward_at_every_step() {
        let mut model = model();
        let (v, prompt_len, steps) = (model.config.vocab_size, 5, 19); // fills all 24 positions
        for b in [1, 3] {
            let mut seqs: Vec<Vec<u32>> = (0..b).map(|r| random_tokens(prompt_len, v, 10 + r as u64)).collect();
            let mut cache = KvCache::new(&model.config, b, 24).unwrap();
            let logits = model.forward_cached(&mut cache, &seqs.concat()).unwrap().to_vec();
            let err = max_abs_diff(&logits, &full_last_logits(&mut model, &seqs));
            assert!(err <= 1e-4, "B={b} prefill: max error {err}");
            for step in 0..steps {
                let next = random_tokens(b, v, 100 + step);
                seqs.iter_mut().zip(&next).for_each(|(s, &id)| s.push(id));
                let logits = model.forward_cached(&mut cache, &next).unwrap().to_vec();
                let err = max_abs_diff(&logits, &full_last_logits(&mut model, &seqs));
                assert!(err <= 1e-4, "B={b} step {step}: max error {err}");
            }
            assert_eq!(cache.len(), 24);
            assert!(
                model.forward_cached(&mut cache, &random_tokens(b, v, 1)).is_err(),
                "a full cache must refuse"
            );
        }
    }

    #[test]
    fn broadcast_and_retain_keep_each_row_its_own_history() {
        let mut model = model();
        let v = model.config.vocab_size;
        let prompt = random_tokens(6, v, 3);
        let mut cache = KvCache::new(&model.config, 1, 12).unwrap();
        model.forward_cached(&mut cache, &prompt).unwrap();
        cache.broadcast(3).unwrap();
        let mut seqs = vec![prompt.clone(); 3];
        let next = [7, 8, 9];
        seqs.iter_mut().zip(&next).for_each(|(s, &id)| s.push(id));
        model.forward_cached(&mut cache, &next).unwrap();
        // Drop the middle row; the others continue as if alone.
        cache.retain(&[true, false, true]).unwrap();
        seqs.remove(1);
        seqs[0].push(1);
        seqs[1].push(2);
        let logits = model.forward_cached(&mut cache, &[1, 2]).unwrap().to_vec();
        let err = max_abs_diff(&logits, &full_last_logits(&mut model, &seqs));
        assert!(err <= 1e-4, "max error {err}");
    }

    #[test]
    fn bad_calls_are_errors() {
        let model = model();
        assert!(
            KvCache::new(&model.config, 1, 25).is_err(),
            "capacity beyond n_positions"
        );
        assert!(KvCache::new(&model.config, 0, 4).is_err());
        let mut cache = KvCache::new(&model.config, 2, 8).unwrap();
        assert!(
            model.forward_cached(&mut cache, &[1, 2, 3]).is_err(),
            "3 tokens for 2 rows"
        );
        assert!(
            model.forward_cached(&mut cache, &[1, 97]).is_err(),
            "id outside the vocabulary"
        );
        assert!(model.forward_cached(&mut cache, &[]).is_err());
        assert!(cache.is_empty(), "failed calls leave the cache as it was");
        assert!(cache.broadcast(2).is_err(), "only a one-row cache broadcasts");
    }
}
