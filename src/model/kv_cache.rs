//! The key/value cache of inference.
//!
//! A token's key and value in layer l depend only on the tokens at or before it, so once
//! computed they never change. [`KvCache`] keeps them; [`super::Gpt::forward_cached`] then runs
//! only the new tokens through the model: a whole prompt in one batched pass (prefill), after
//! that one token per row and step (decode), each attending to the cached keys and values.
//! The cache also holds the buffers of those passes, so each sequence (or request) owns its
//! own and any number of them share one model.
//!
//! Keys and values are kept in f32, or in IEEE half precision ([`KvDtype::F16`], as llama.cpp
//! keeps them by default): a model with low-precision weights decodes with a half-precision
//! cache ([`super::Gpt::kv_dtype`]), since past a few hundred positions reading the cache costs
//! as much as reading the weights; an f32 model keeps f32, matching the reference exactly.
//!
//! Shapes: B = rows (sequences decoded side by side), P = cache capacity in positions
//! (at most n_positions), L = layers, NH = heads, hs = head size, C = NH·hs.

use super::workspace::{fit_all, BlockActs, BlockShape};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::memory::{human, product, sum, Need};
use crate::ops::attention::KvRows;
use crate::ops::lowp::half::narrow_f16_saturating;

/// How a [`KvCache`] stores its keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvDtype {
    F32,
    /// IEEE half precision: rounded to nearest even, beyond ±65504 (the largest f16) held
    /// there, widened back exactly when read.
    F16,
}

impl KvDtype {
    /// Bytes of one stored key or value element.
    pub fn bytes(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::F16 => 2,
        }
    }
}

/// The keys or the values of every layer, [L, B, NH, P, hs], in the cache's dtype.
enum KvBuffer {
    F32(Vec<f32>),
    F16(Vec<u16>),
}

impl KvBuffer {
    fn zeros(dtype: KvDtype, len: usize) -> Self {
        match dtype {
            KvDtype::F32 => KvBuffer::F32(vec![0.0; len]),
            KvDtype::F16 => KvBuffer::F16(vec![0; len]),
        }
    }

    fn len(&self) -> usize {
        match self {
            KvBuffer::F32(b) => b.len(),
            KvBuffer::F16(b) => b.len(),
        }
    }

    fn dtype(&self) -> KvDtype {
        match self {
            KvBuffer::F32(_) => KvDtype::F32,
            KvBuffer::F16(_) => KvDtype::F16,
        }
    }

    /// [L, 1, block] as [L, rows, block], each layer's block repeated; None if the memory
    /// cannot be allocated.
    fn repeated(&self, block: usize, rows: usize) -> Option<Self> {
        Some(match self {
            KvBuffer::F32(b) => KvBuffer::F32(repeat_blocks(b, block, rows)?),
            KvBuffer::F16(b) => KvBuffer::F16(repeat_blocks(b, block, rows)?),
        })
    }

    /// Elements `range` (one layer's block of every row), to store into.
    fn part(&mut self, range: std::ops::Range<usize>) -> KvRowsMut<'_> {
        match self {
            KvBuffer::F32(b) => KvRowsMut::F32(&mut b[range]),
            KvBuffer::F16(b) => KvRowsMut::F16(&mut b[range]),
        }
    }
}

/// Layer l's keys or values, [B, NH, P, hs], to store new positions into.
enum KvRowsMut<'a> {
    F32(&'a mut [f32]),
    F16(&'a mut [u16]),
}

impl KvRowsMut<'_> {
    /// Elements at..at + x.len() = x (rounded to the cache's dtype).
    fn put(&mut self, at: usize, x: &[f32]) {
        match self {
            KvRowsMut::F32(b) => b[at..at + x.len()].copy_from_slice(x),
            KvRowsMut::F16(b) => narrow_f16_saturating(x, &mut b[at..at + x.len()]),
        }
    }

    fn rows(&self) -> KvRows<'_> {
        match self {
            KvRowsMut::F32(b) => KvRows::F32(b),
            KvRowsMut::F16(b) => KvRows::F16(b),
        }
    }
}

/// Cached keys and values of B sequences that all hold the same number of positions, plus
/// the buffers of one cached forward pass.
pub struct KvCache {
    rows: usize,
    capacity: usize,
    len: usize,
    /// Elements of one (layer, row) block: NH·P·hs = P·C.
    block: usize,
    n_layer: usize,
    k: KvBuffer, // [L, B, NH, P, hs]
    v: KvBuffer, // [L, B, NH, P, hs]
    pub(super) scratch: CachedActs,
}

/// Buffers of one forward call over N = B·T new tokens, resized to each call's shapes (their
/// allocations are kept).
#[derive(Default)]
pub(super) struct CachedActs {
    /// [N, C] residual stream entering the next block.
    pub x: Vec<f32>,
    /// One block's buffers, reused by every layer.
    pub block: BlockActs,
    pub last: Vec<f32>,      // [B, C] residual stream at the last new position of each row
    pub ln_f: Vec<f32>,      // [B, C]
    pub ln_f_mean: Vec<f32>, // [B]
    pub ln_f_rstd: Vec<f32>, // [B]
    pub logits: Vec<f32>,    // [B, V]
}

impl CachedActs {
    /// The length of each buffer outside the block for N new tokens of B sequences, in field
    /// order (x, last, ln_f, ln_f_mean, ln_f_rstd, logits), saturating.
    fn sizes(cfg: &Config, n: usize, b: usize) -> [u64; 6] {
        let bc = product(&[b, cfg.n_embd]);
        [
            product(&[n, cfg.n_embd]),
            bc,
            bc,
            b as u64,
            b as u64,
            product(&[b, cfg.vocab_size]),
        ]
    }

    /// The values (f32) of every buffer for N new tokens of B sequences, saturating.
    fn floats(cfg: &Config, n: usize, b: usize) -> u64 {
        let block = BlockActs::floats(cfg, BlockShape::cached(n, 1));
        sum(&Self::sizes(cfg, n, b)).saturating_add(block)
    }

    /// Sizes every buffer for N new tokens of B sequences (B rows of T tokens: N = B·T).
    pub fn fit_rows(&mut self, cfg: &Config, n: usize, b: usize) {
        let buffers = [
            &mut self.x,
            &mut self.last,
            &mut self.ln_f,
            &mut self.ln_f_mean,
            &mut self.ln_f_rstd,
            &mut self.logits,
        ];
        fit_all(buffers, Self::sizes(cfg, n, b));
        self.block.fit(cfg, BlockShape::cached(n, 1));
    }
}

/// The buffers of [`super::Gpt::decode_step`], which runs the new tokens of several caches
/// (requests) through the model at once; owned by its caller, like a [`KvCache`]'s.
#[derive(Default)]
pub struct StepBuffers(pub(super) CachedActs);

impl StepBuffers {
    pub fn new() -> Self {
        Self::default()
    }

    /// The values (f32) these buffers hold for a step of N new tokens of B requests, saturating.
    pub fn floats(cfg: &Config, n: usize, b: usize) -> u64 {
        CachedActs::floats(cfg, n, b)
    }
}

/// Layer l's part of a cache, as the attention step of a block sees it.
pub struct KvLayer<'a> {
    k: KvRowsMut<'a>, // [B, NH, P, hs]
    v: KvRowsMut<'a>, // [B, NH, P, hs]
    capacity: usize,
    /// Positions already cached: the new tokens sit at pos0, pos0 + 1, ...
    pub pos0: usize,
}

impl KvLayer<'_> {
    /// Writes the keys and values of N = B·T new tokens (from qkv [B, T, 3C]) at positions
    /// pos0..pos0+T: element (b, h, p, d) sits at ((b·NH + h)·P + p)·hs + d.
    pub fn store(&mut self, qkv: &[f32], t: usize, c: usize, hs: usize) {
        let row_block = self.capacity * c;
        for (i, row) in qkv.chunks_exact(3 * c).enumerate() {
            let (b, pos) = (i / t, self.pos0 + i % t);
            for h in 0..c / hs {
                let at = b * row_block + (h * self.capacity + pos) * hs;
                self.k.put(at, &row[c + h * hs..][..hs]);
                self.v.put(at, &row[2 * c + h * hs..][..hs]);
            }
        }
    }

    /// The cached keys and values, [B, NH, P, hs] each.
    pub fn keys_values(&self) -> (KvRows<'_>, KvRows<'_>) {
        (self.k.rows(), self.v.rows())
    }
}

impl KvCache {
    /// An empty f32 cache for `rows` sequences of up to `capacity` positions each.
    pub fn new(cfg: &Config, rows: usize, capacity: usize) -> Result<Self> {
        Self::with_dtype(cfg, rows, capacity, KvDtype::F32)
    }

    /// An empty cache for `rows` sequences of up to `capacity` positions each, its keys and
    /// values stored in `dtype`.
    pub fn with_dtype(cfg: &Config, rows: usize, capacity: usize, dtype: KvDtype) -> Result<Self> {
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
            k: KvBuffer::zeros(dtype, size),
            v: KvBuffer::zeros(dtype, size),
            scratch: CachedActs::default(),
        })
    }

    /// The memory of the keys and values of a cache of `rows` rows × `capacity` positions in
    /// `dtype`, in f32s (4 bytes), saturating.
    pub fn cache_floats(cfg: &Config, rows: usize, capacity: usize, dtype: KvDtype) -> u64 {
        product(&[2, cfg.n_layer, rows, capacity, cfg.n_embd, dtype.bytes()]) / 4
    }

    /// How the keys and values are stored.
    pub fn dtype(&self) -> KvDtype {
        self.k.dtype()
    }

    /// The values (f32) of the buffers of one cached pass over `t` new tokens in each of `rows`
    /// rows, saturating (what [`CachedActs::fit`] allocates): the attention keeps nothing per
    /// cached position, so it does not depend on how many there are.
    pub fn pass_floats(cfg: &Config, rows: usize, t: usize) -> u64 {
        CachedActs::floats(cfg, rows.saturating_mul(t), rows)
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

    /// Frees the buffers of the last pass (a prefill's grow with the prompt), keeping the keys
    /// and values: for a cache that later steps of [`super::Gpt::decode_step`] extend, which
    /// bring buffers of their own.
    pub fn free_pass_buffers(&mut self) {
        self.scratch = CachedActs::default();
    }

    /// Turns a one-row cache into `rows` copies of that row: several samples that share a
    /// prompt prefill it once. One row is the cache as it is (copying it would touch every
    /// page of its whole capacity before the first token).
    pub fn broadcast(&mut self, rows: usize) -> Result<()> {
        if self.rows != 1 || rows == 0 {
            return Err(Error::Input(format!(
                "broadcast needs a one-row cache and rows >= 1 (cache has {} rows)",
                self.rows
            )));
        }
        if rows == 1 {
            return Ok(());
        }
        let row_len = self.k.len();
        let need = Need::new().floats(
            "keys and values",
            product(&[2, row_len, rows, self.dtype().bytes()]) / 4,
        );
        need.check(&format!("a KV cache of {rows} rows"), "use fewer samples")?;
        let too_many = || {
            Error::Input(format!(
                "a KV cache of {rows} rows needs {}: more than can be allocated (use fewer samples)",
                human(need.total())
            ))
        };
        // both made before either replaces its buffer: a failure leaves the cache as it was
        let k = self.k.repeated(self.block, rows).ok_or_else(too_many)?;
        let v = self.v.repeated(self.block, rows).ok_or_else(too_many)?;
        (self.k, self.v, self.rows) = (k, v, rows);
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
            match buf {
                KvBuffer::F32(b) => keep_blocks(b, self.block, self.n_layer, keep),
                KvBuffer::F16(b) => keep_blocks(b, self.block, self.n_layer, keep),
            }
        }
        self.rows = kept;
        Ok(())
    }

    /// Checks that T = `tokens / rows` new tokens fit into every row; returns T.
    pub(super) fn check_new_tokens(&self, tokens: usize) -> Result<usize> {
        let b = self.rows;
        if tokens == 0 || !tokens.is_multiple_of(b) {
            return Err(Error::Input(format!(
                "{tokens} tokens do not split into {b} non-empty rows"
            )));
        }
        let t = tokens / b;
        if self.len + t > self.capacity {
            return Err(Error::Input(format!(
                "KV cache overflow: {} cached + {t} new positions exceed its capacity of {}",
                self.len, self.capacity
            )));
        }
        Ok(t)
    }

    /// Layer l of the cache and the buffers of a pass, borrowed together.
    pub(super) fn layer(&mut self, l: usize) -> (KvLayer<'_>, &mut CachedActs) {
        let layer = l * self.rows * self.block..(l + 1) * self.rows * self.block;
        let kv = KvLayer {
            k: self.k.part(layer.clone()),
            v: self.v.part(layer),
            capacity: self.capacity,
            pos0: self.len,
        };
        (kv, &mut self.scratch)
    }

    /// Layer l of the cache alone.
    pub(super) fn kv_layer(&mut self, l: usize) -> KvLayer<'_> {
        self.layer(l).0
    }

    /// Counts T new positions as cached (once every layer has stored them).
    pub(super) fn advance(&mut self, t: usize) {
        self.len += t;
    }
}

/// buf [L, 1, block] as [L, rows, block], each layer's block repeated; None if the memory cannot
/// be allocated.
fn repeat_blocks<T: Copy>(buf: &[T], block: usize, rows: usize) -> Option<Vec<T>> {
    let mut new = Vec::new();
    new.try_reserve_exact(buf.len().saturating_mul(rows)).ok()?;
    new.extend(
        buf.chunks_exact(block)
            .flat_map(|layer| std::iter::repeat_n(layer, rows).flatten().copied()),
    );
    Some(new)
}

/// buf [L, R, block] keeps the blocks of the rows r whose `keep[r]` is true, in order.
fn keep_blocks<T: Copy>(buf: &mut Vec<T>, block: usize, n_layer: usize, keep: &[bool]) {
    // Block (l, r) moves to (l, r') with l·kept + r' <= l·rows + r: never forward.
    let mut dst = 0;
    for l in 0..n_layer {
        for r in (0..keep.len()).filter(|&r| keep[r]) {
            let src = (l * keep.len() + r) * block;
            buf.copy_within(src..src + block, dst * block);
            dst += 1;
        }
    }
    buf.truncate(dst * block);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Gpt, Workspace};
    use crate::rng::Rng;

    fn model() -> Gpt {
        // Wide enough that the small-M matrix kernels split their work into several blocks; heads
        // of 16, which a decoding step's one-query kernel takes where the CPU has AVX-512.
        let mut cfg = Config::new(97, 24, 48, 2, 3);
        cfg.n_inner = 200;
        Gpt::new(cfg, 5).unwrap()
    }

    fn random_tokens(n: usize, v: usize, seed: u64) -> Vec<u32> {
        let mut rng = Rng::new(seed);
        (0..n).map(|_| rng.below(v) as u32).collect()
    }

    /// Last-position logits of each row from a full forward over `seqs` [B, T]: [B, V].
    fn full_last_logits(model: &Gpt, seqs: &[Vec<u32>]) -> Vec<f32> {
        let (b, t, v) = (seqs.len(), seqs[0].len(), model.config.vocab_size);
        let mut ws = Workspace::new();
        model.forward(&mut ws, &seqs.concat(), b, t, None, None).unwrap();
        ws.logits()
            .chunks_exact(t * v)
            .flat_map(|row| row[(t - 1) * v..].to_vec())
            .collect()
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    /// The largest logit error a cache may add: an f32 one only sums in another order (errors
    /// of 2e-7 in the test below), an f16 one also rounds every key and value to 11 significant
    /// bits (1.6e-5).
    const TOLERANCE: f32 = 1e-4;

    #[test]
    fn cached_logits_equal_full_forward_at_every_step() {
        let model = model();
        let (v, prompt_len, steps) = (model.config.vocab_size, 5, 19); // fills all 24 positions
        for (b, dtype) in [
            (1, KvDtype::F32),
            (3, KvDtype::F32),
            (1, KvDtype::F16),
            (3, KvDtype::F16),
        ] {
            let mut seqs: Vec<Vec<u32>> = (0..b).map(|r| random_tokens(prompt_len, v, 10 + r as u64)).collect();
            let mut cache = KvCache::with_dtype(&model.config, b, 24, dtype).unwrap();
            let logits = model.forward_cached(&mut cache, &seqs.concat()).unwrap().to_vec();
            let err = max_abs_diff(&logits, &full_last_logits(&model, &seqs));
            assert!(err <= TOLERANCE, "B={b} {dtype:?} prefill: max error {err}");
            for step in 0..steps {
                let next = random_tokens(b, v, 100 + step);
                seqs.iter_mut().zip(&next).for_each(|(s, &id)| s.push(id));
                let logits = model.forward_cached(&mut cache, &next).unwrap().to_vec();
                let err = max_abs_diff(&logits, &full_last_logits(&model, &seqs));
                assert!(err <= TOLERANCE, "B={b} {dtype:?} step {step}: max error {err}");
            }
            assert_eq!(cache.len(), 24);
            assert!(
                model.forward_cached(&mut cache, &random_tokens(b, v, 1)).is_err(),
                "a full cache must refuse"
            );
        }
    }

    /// A model with low-precision weights gets a half-precision cache where the CPU reads one
    /// in registers, and decodes with it as its full forward pass computes.
    #[test]
    fn a_low_precision_model_decodes_with_a_half_precision_cache() {
        let model = model();
        assert_eq!(model.kv_dtype(), KvDtype::F32);
        let lowp = model.to_dtype(crate::ops::lowp::WeightDtype::Bf16).unwrap();
        let half = if crate::ops::attend_one::reads_in_registers(16) {
            KvDtype::F16
        } else {
            KvDtype::F32
        };
        assert_eq!(lowp.kv_dtype(), half);
        let mut cache = lowp.kv_cache(1, 12).unwrap();
        assert_eq!(cache.dtype(), half);
        // The products round their inputs to bf16, where the cache's rounding of a key in the
        // fifth digit can move an activation by one bf16 step (2^-8).
        let tolerance = 2e-3;
        let mut seq = random_tokens(4, lowp.config.vocab_size, 6);
        let mut logits = lowp.forward_cached(&mut cache, &seq).unwrap().to_vec();
        for id in [5, 9, 1, 30] {
            let err = max_abs_diff(&logits, &full_last_logits(&lowp, std::slice::from_ref(&seq)));
            assert!(err <= tolerance, "{} positions: max error {err}", seq.len());
            seq.push(id);
            logits = lowp.forward_cached(&mut cache, &[id]).unwrap().to_vec();
        }
    }

    /// A key or value beyond the largest f16 is held at it, not made infinite (an infinite key
    /// would make every score of its queries NaN).
    #[test]
    fn a_half_precision_cache_saturates_what_f16_cannot_hold() {
        let cfg = &model().config;
        let mut cache = KvCache::with_dtype(cfg, 1, 4, KvDtype::F16).unwrap();
        let c = cfg.n_embd;
        let qkv: Vec<f32> = (0..3 * c).map(|i| if i % 2 == 0 { 1e6 } else { -7e4 }).collect();
        let mut layer = cache.kv_layer(0);
        layer.store(&qkv, 1, c, cfg.head_size());
        let (KvRows::F16(k), KvRows::F16(v)) = layer.keys_values() else {
            panic!("an f16 cache");
        };
        // position 0 of each head: its hs values
        for h in 0..cfg.n_head {
            for x in [k, v] {
                let stored = &x[h * 4 * cfg.head_size()..][..cfg.head_size()];
                assert!(stored.iter().all(|&b| b == 0x7bff || b == 0xfbff), "{stored:x?}");
            }
        }
    }

    #[test]
    fn broadcast_and_retain_keep_each_row_its_own_history() {
        let model = model();
        let v = model.config.vocab_size;
        let prompt = random_tokens(6, v, 3);
        for dtype in [KvDtype::F32, KvDtype::F16] {
            let mut cache = KvCache::with_dtype(&model.config, 1, 12, dtype).unwrap();
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
            let err = max_abs_diff(&logits, &full_last_logits(&model, &seqs));
            assert!(err <= TOLERANCE, "{dtype:?}: max error {err}");
        }
    }

    /// R requests at different positions decoded in one step give each the logits it gets
    /// alone, and their caches continue as if each had been decoded alone.
    #[test]
    fn a_decoding_step_over_several_caches_equals_each_decoded_alone() {
        let model = model();
        let v = model.config.vocab_size;
        let prompts: Vec<Vec<u32>> = [3, 7, 1, 12].iter().map(|&n| random_tokens(n, v, n as u64)).collect();
        let prefilled = |dtype| -> Vec<KvCache> {
            prompts
                .iter()
                .map(|prompt| {
                    let mut cache = KvCache::with_dtype(&model.config, 1, 24, dtype).unwrap();
                    model.forward_cached(&mut cache, prompt).unwrap();
                    cache
                })
                .collect()
        };
        for dtype in [KvDtype::F32, KvDtype::F16] {
            decode_steps_match(&model, prefilled(dtype), prefilled(dtype));
        }
    }

    /// Five decoding steps of the caches `together` in one step each, and of `alone` one by one,
    /// give the same logits; then bad steps are refused.
    fn decode_steps_match(model: &Gpt, mut together: Vec<KvCache>, mut alone: Vec<KvCache>) {
        let v = model.config.vocab_size;
        // The decoding step keeps nothing in the caches' own pass buffers.
        together.iter_mut().for_each(KvCache::free_pass_buffers);
        assert!(together.iter().all(|cache| cache.scratch.x.is_empty()));
        let mut bufs = StepBuffers::new();
        for step in 0..5 {
            let next = random_tokens(together.len(), v, 50 + step);
            let mut refs: Vec<&mut KvCache> = together.iter_mut().collect();
            let new: Vec<&[u32]> = next.chunks(1).collect();
            let batched = model.decode_step(&mut bufs, &mut refs, &new).unwrap().to_vec();
            for (r, cache) in alone.iter_mut().enumerate() {
                let single = model.forward_cached(cache, &next[r..r + 1]).unwrap();
                let err = max_abs_diff(&batched[r * v..(r + 1) * v], single);
                assert!(err <= 1e-5, "step {step} row {r}: max error {err}");
            }
        }
        for (a, b) in together.iter().zip(&alone) {
            assert_eq!(a.len(), b.len());
        }
        // Bad calls: token lists that do not match the caches, no new token, a full cache, a
        // many-row cache, a token outside the vocabulary; none changes a cache.
        let mut refs: Vec<&mut KvCache> = together.iter_mut().collect();
        assert!(model.decode_step(&mut bufs, &mut refs, &[&[1], &[2]]).is_err());
        assert!(model
            .decode_step(&mut bufs, &mut refs, &[&[1], &[], &[2], &[3]])
            .is_err());
        let bad = [&[1][..], &[2], &[v as u32], &[3]];
        assert!(model.decode_step(&mut bufs, &mut refs, &bad).is_err());
        assert_eq!(refs[0].len(), alone[0].len());
        let mut full = KvCache::new(&model.config, 1, 2).unwrap();
        model.forward_cached(&mut full, &[1, 2]).unwrap();
        assert!(model.decode_step(&mut bufs, &mut [&mut full], &[&[3]]).is_err());
        let mut wide = KvCache::new(&model.config, 2, 4).unwrap();
        assert!(model.decode_step(&mut bufs, &mut [&mut wide], &[&[3]]).is_err());
    }

    /// Prompts that join a step beside requests that decode (chunked prefill) get the logits of
    /// their own prefill, and every cache then continues as if alone.
    #[test]
    fn prompts_prefilled_within_a_step_equal_each_prefilled_alone() {
        let model = model();
        let v = model.config.vocab_size;
        let decoding = random_tokens(7, v, 1);
        let prompts = [random_tokens(5, v, 2), random_tokens(1, v, 3), random_tokens(9, v, 4)];
        let mut caches: Vec<KvCache> = (0..4).map(|_| KvCache::new(&model.config, 1, 16).unwrap()).collect();
        let mut alone: Vec<KvCache> = (0..4).map(|_| KvCache::new(&model.config, 1, 16).unwrap()).collect();
        model.forward_cached(&mut caches[1], &decoding).unwrap();
        model.forward_cached(&mut alone[1], &decoding).unwrap();
        caches[1].free_pass_buffers();
        // Step 1: three prompts around one request's next token; step 2: every request decodes.
        let step_1: Vec<&[u32]> = vec![&prompts[0], &[11], &prompts[1], &prompts[2]];
        let step_2: Vec<&[u32]> = vec![&[12], &[13], &[14], &[15]];
        let mut bufs = StepBuffers::new();
        for (step, new) in [step_1, step_2].iter().enumerate() {
            let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
            let together = model.decode_step(&mut bufs, &mut refs, new).unwrap().to_vec();
            for (r, cache) in alone.iter_mut().enumerate() {
                let single = model.forward_cached(cache, new[r]).unwrap();
                let err = max_abs_diff(&together[r * v..(r + 1) * v], single);
                assert!(err <= 1e-5, "step {step} request {r}: max error {err}");
            }
        }
        for (a, b) in caches.iter().zip(&alone) {
            assert_eq!(a.len(), b.len());
        }
    }

    /// The memory check of generation counts what a cache and its passes allocate.
    #[test]
    fn cache_and_pass_floats_count_what_a_cached_pass_allocates() {
        let model = model();
        let cfg = &model.config;
        let held = |cache: &KvCache| {
            let s = &cache.scratch;
            let bufs = [&s.x, &s.last, &s.ln_f, &s.ln_f_mean, &s.ln_f_rstd, &s.logits];
            let block = &s.block;
            let block_bufs = [
                &block.ln_1,
                &block.ln_1_mean,
                &block.ln_1_rstd,
                &block.qkv,
                &block.att_lse,
                &block.atty,
                &block.residual_2,
                &block.ln_2,
                &block.ln_2_mean,
                &block.ln_2_rstd,
                &block.fch,
                &block.fch_gelu,
                &block.residual_3,
            ];
            bufs.iter().chain(&block_bufs).map(|b| b.len() as u64).sum::<u64>()
        };
        for dtype in [KvDtype::F32, KvDtype::F16] {
            // the keys' and values' memory in f32s
            let kv_floats = |cache: &KvCache| ((cache.k.len() + cache.v.len()) * dtype.bytes() / 4) as u64;
            let mut cache = KvCache::with_dtype(cfg, 1, 12, dtype).unwrap();
            assert_eq!(kv_floats(&cache), KvCache::cache_floats(cfg, 1, 12, dtype));
            model.forward_cached(&mut cache, &random_tokens(5, 97, 1)).unwrap();
            assert_eq!(held(&cache), KvCache::pass_floats(cfg, 1, 5), "prefill");
            cache.broadcast(3).unwrap();
            assert_eq!(kv_floats(&cache), KvCache::cache_floats(cfg, 3, 12, dtype));
            model.forward_cached(&mut cache, &[1, 2, 3]).unwrap();
            assert_eq!(held(&cache), KvCache::pass_floats(cfg, 3, 1), "decoding step");
        }
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
