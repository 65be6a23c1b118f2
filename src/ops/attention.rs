//! Causal multi-head self-attention on a fused qkv buffer, tiled as in FlashAttention-2.
//!
//! For each batch row b and head h, with Q, K, V the head's [T, hs] slices of qkv:
//! `S = Q Kᵀ / sqrt(hs)`, `P = softmax(S)` over the keys j ≤ t of each query t (causal mask),
//! `O = P V`, written into the head's columns of out.
//!
//! No [T, T] matrix is kept. The forward pass goes over tiles of [`QUERY_TILE`] query rows
//! (in parallel over (batch, head, query tile)); each tile goes over the keys up to its last
//! row in tiles of [`KEY_TILE`], keeping for each row the running maximum m of its scores, the
//! running sum l of e^(s - m) and the running sum of e^(s - m) v, rescaled by e^(m_old - m_new)
//! whenever the maximum grows (the online softmax). It keeps only O and each row's
//! log-sum-exp `lse = m + ln l` [B, NH, T]; the backward pass recomputes each tile of P as
//! `e^(S - lse)` from Q, K and lse. Tiles above the causal diagonal are never computed.
//!
//! Against a KV cache the keys and values may be stored in f32 or IEEE half precision
//! ([`KvRows`]); a tile widens a block of f16 rows to f32 before its products, and a decoding
//! step's single query per head goes to [`super::attend_one`], which reads the cache as stored.

pub use super::attend_one::KvRows;
use super::attend_one::{attend_one, reads_in_registers};
use super::dropout::Dropout;
use super::lowp::half::widen_f16;
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

/// Shapes of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub b: usize,
    pub t: usize,
    pub c: usize,
    pub n_head: usize,
}

impl AttnShape {
    fn hs(&self) -> usize {
        self.c / self.n_head
    }
    /// Offsets of head h's q, k, v columns within a qkv row [3C].
    fn qkv_offsets(&self, h: usize) -> (usize, usize, usize) {
        let hs = self.hs();
        (h * hs, self.c + h * hs, 2 * self.c + h * hs)
    }

    /// Head h of batch row b (bh = b·NH + h): its Q, K, V as [T, hs] views into qkv [B, T, 3C].
    fn head_qkv<'a>(&self, qkv: &'a [f32], bh: usize) -> [MatRef<'a, f32>; 3] {
        let (t, c, hs) = (self.t, self.c, self.hs());
        let (q_off, k_off, v_off) = self.qkv_offsets(bh % self.n_head);
        let row0 = bh / self.n_head * t * 3 * c;
        [q_off, k_off, v_off].map(|off| strided(qkv, row0 + off, t, hs, 3 * c))
    }

    /// Head h of batch row b as a [T, hs] view into a [B, T, C] buffer (out, dout).
    fn head_rows<'a>(&self, x: &'a [f32], bh: usize) -> MatRef<'a, f32> {
        let (b, h) = (bh / self.n_head, bh % self.n_head);
        strided(x, b * self.t * self.c + h * self.hs(), self.t, self.hs(), self.c)
    }

    fn scale(&self) -> f32 {
        1.0 / (self.hs() as f32).sqrt()
    }
}

/// Attention dropout of the weights in row i (the query at position i) of head bh = b·NH + h,
/// keys k0..k0 + row.len(): each is kept with probability 1-p and scaled by 1/(1-p), or dropped
/// (0), before it multiplies V. The mask is a hash of its position (see [`Dropout`]), so the
/// backward pass recomputes it tile by tile instead of storing a [T, T] matrix per head.
fn drop_row(d: &Dropout, s: AttnShape, row: &mut [f32], bh: usize, i: usize, k0: usize) {
    let key = d.attention_row_key(bh / s.n_head, bh % s.n_head, s.n_head, i);
    for (j, w) in row.iter_mut().enumerate() {
        *w *= d.mask_value(key, k0 + j);
    }
}

/// Query rows per tile: a task of the forward pass.
const QUERY_TILE: usize = 64;
/// Keys per tile: the width of each block of scores of a full query tile. A tile of fewer
/// queries (the last of a prompt, or decoding where [`super::attend_one`] does not take it)
/// takes keys QUERY_TILE·KEY_TILE / rows at a time, the same block of scores, in fewer and
/// larger products.
const KEY_TILE: usize = 128;

/// The tiles (start, end) of 0..n, `size` at a time.
fn tiles(n: usize, size: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..n).step_by(size).map(move |start| (start, (start + size).min(n)))
}

/// How many keys of the tile starting at k0 (`width` keys) the query at position `pos` sees
/// (keys 0..=pos).
fn visible_keys(pos: usize, k0: usize, width: usize) -> usize {
    (pos + 1).saturating_sub(k0).min(width)
}

/// A raw pointer that rayon tasks may share: each task writes only its own head's columns
/// (in the forward pass, only its own query tile's rows of them).
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: the tasks that hold copies write disjoint elements (one (batch, head) or one
// (batch, head, query tile) each).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The [rows, cols] matrix at `offset` with the given row stride.
    ///
    /// SAFETY: the caller guarantees the region is in bounds and that no other task writes it.
    unsafe fn view(self, offset: usize, rows: usize, cols: usize, row_stride: usize) -> MatMut<'static, f32> {
        MatMut::from_raw_parts_mut(self.0.add(offset), rows, cols, row_stride as isize, 1)
    }
}

/// A [rows, cols] view into `data` at `offset` with the given row stride.
fn strided(data: &[f32], offset: usize, rows: usize, cols: usize, row_stride: usize) -> MatRef<'_, f32> {
    MatRef::from_row_major_slice_with_stride(
        &data[offset..offset + (rows - 1) * row_stride + cols],
        rows,
        cols,
        row_stride,
    )
}

/// `s [R, W] = q kᵀ · scale` for R queries q [R, hs] and W keys k [W, hs].
fn scores(s: &mut [f32], q: MatRef<'_, f32>, k: MatRef<'_, f32>, scale: f32) {
    let s = MatMut::from_row_major_slice_mut(s, q.nrows(), k.nrows());
    matmul(s, Accum::Replace, q, k.transpose(), scale, Par::Seq);
}

/// Forward. qkv: [B, T, 3C]; out: [B, T, C] receives O; lse: [B, NH, T] receives each query
/// row's log-sum-exp of its visible scores (what the backward pass needs to recompute P).
pub fn attention_forward(out: &mut [f32], lse: &mut [f32], qkv: &[f32], s: AttnShape, dropout: Option<Dropout>) {
    assert!(out.len() == s.b * s.t * s.c && qkv.len() == 3 * out.len() && lse.len() == s.b * s.n_head * s.t);
    let head = |bh| {
        let [q, k, v] = s.head_qkv(qkv, bh);
        (q, HeadRows::View(k), HeadRows::View(v))
    };
    forward_tiles(out, lse, s, 0, head, dropout);
}

/// One head's keys or values [positions, hs]: a view of f32 rows anywhere (in qkv), or the
/// rows of a KV cache (hs apart), in f32 or half precision, the latter widened to f32 a block
/// of keys at a time.
#[derive(Clone, Copy)]
enum HeadRows<'a> {
    View(MatRef<'a, f32>),
    Cached(KvRows<'a>),
}

impl<'a> HeadRows<'a> {
    /// Rows k0..k0 + width as f32 [width, hs]: a view of f32 rows, or f16 rows widened into `buf`.
    fn block<'b>(self, k0: usize, width: usize, hs: usize, buf: &'b mut Vec<f32>) -> MatRef<'b, f32>
    where
        'a: 'b,
    {
        match self {
            HeadRows::View(rows) => rows.subrows(k0, width),
            HeadRows::Cached(KvRows::F32(rows)) => {
                MatRef::from_row_major_slice(&rows[k0 * hs..][..width * hs], width, hs)
            }
            HeadRows::Cached(KvRows::F16(rows)) => {
                let n = width * hs;
                if buf.len() < n {
                    buf.resize(n, 0.0);
                }
                widen_f16(&rows[k0 * hs..][..n], &mut buf[..n]);
                MatRef::from_row_major_slice(&buf[..n], width, hs)
            }
        }
    }
}

/// Forward against a key/value cache (inference): the T new tokens of each batch row attend
/// to every cached position before them and to themselves. qkv: [B, T, 3C] of the new tokens
/// (only the query third is read); k_cache, v_cache: [B, NH, P, hs] with positions
/// 0..pos0+T filled (the new tokens' own keys and values included), in f32 or f16 (widened
/// to f32 for the products: the arithmetic is that of an f32 cache holding the same values);
/// out: [B, T, C]; lse: [B, NH, T]. New token i sits at position pos0 + i and sees keys
/// 0..=pos0+i. With pos0 = 0 and an f32 cache this is [`attention_forward`] without dropout.
pub fn attention_forward_cached(
    out: &mut [f32],
    lse: &mut [f32],
    qkv: &[f32],
    k_cache: KvRows,
    v_cache: KvRows,
    s: AttnShape,
    pos0: usize,
) {
    let (t, c, hs, ctx) = (s.t, s.c, s.hs(), pos0 + s.t);
    let p = k_cache.len() / (s.b * c); // cache positions per row: B·NH·P·hs = B·P·C
    assert!(out.len() == s.b * t * c && qkv.len() == 3 * out.len() && lse.len() == s.b * s.n_head * t);
    assert!(ctx <= p && v_cache.len() == k_cache.len());
    let head = |bh: usize| {
        let q = strided(
            qkv,
            bh / s.n_head * t * 3 * c + s.qkv_offsets(bh % s.n_head).0,
            t,
            hs,
            3 * c,
        );
        let (k, v) = (k_cache.part(bh * p * hs, ctx * hs), v_cache.part(bh * p * hs, ctx * hs));
        (q, HeadRows::Cached(k), HeadRows::Cached(v))
    };
    forward_tiles(out, lse, s, pos0, head, None);
}

/// A forward task's buffers, grown as needed and never zeroed: one block of scores (no wider
/// than the keys its tile sees) followed by the tile's O, and a block of keys or values
/// widened from f16. Zeroing a full tile's 48 KiB for each head cost a q8_0 decoding step
/// 0.24 ms of attention against 0.21 (Zen 5, 16-token prompt, 128 new; within noise in whole
/// runs).
#[derive(Default)]
struct TileScratch {
    scores_o: Vec<f32>,
    widened: Vec<f32>,
}

/// The forward pass over every (batch, head, query tile), in parallel. `head(bh)` gives the
/// head's queries [T, hs] (at positions pos0..pos0+T) and its keys and values [pos0+T, hs].
fn forward_tiles<'a>(
    out: &mut [f32],
    lse: &mut [f32],
    s: AttnShape,
    pos0: usize,
    head: impl Fn(usize) -> (MatRef<'a, f32>, HeadRows<'a>, HeadRows<'a>) + Sync,
    dropout: Option<Dropout>,
) {
    let (t, c, hs) = (s.t, s.c, s.hs());
    let out = SharedOut(out.as_mut_ptr());
    lse.par_chunks_mut(t)
        .enumerate()
        .flat_map(|(bh, lse)| {
            let tiles = lse.par_chunks_mut(QUERY_TILE).enumerate();
            tiles.map(move |(i, lse)| (bh, i * QUERY_TILE, lse))
        })
        .for_each_init(TileScratch::default, |scratch, (bh, r0, lse)| {
            let (b, h) = (bh / s.n_head, bh % s.n_head);
            let (q, k, v) = head(bh);
            let rows = lse.len();
            // one query: all its scores at once (attend_one)
            let widest = match rows {
                1 => pos0 + r0 + 1,
                _ => (QUERY_TILE * KEY_TILE / rows).min(pos0 + r0 + rows),
            };
            let (s_len, o_len) = (rows * widest, rows * hs);
            if scratch.scores_o.len() < s_len + o_len {
                scratch.scores_o.resize(s_len + o_len, 0.0);
            }
            let (s_tile, o) = scratch.scores_o.split_at_mut(s_len);
            let o = &mut o[..o_len];
            let drop = dropout.map(|d| move |row: &mut [f32], i: usize, k0: usize| drop_row(&d, s, row, bh, i, k0));
            let q = q.subrows(r0, rows);
            match (k, v, q.try_as_row_major(), &drop) {
                // a decoding step's query: the cache read once, as it is stored
                (HeadRows::Cached(k), HeadRows::Cached(v), Some(q), None) if rows == 1 && reads_in_registers(hs) => {
                    lse[0] = attend_one(o, q.row(0).as_slice(), k, v, pos0 + r0 + 1, s.scale(), s_tile);
                }
                _ => {
                    let o_tile = MatMut::from_row_major_slice_mut(o, rows, hs);
                    let widened = &mut scratch.widened;
                    tile_forward(o_tile, lse, q, [k, v], pos0 + r0, s.scale(), s_tile, widened, drop);
                }
            }
            // SAFETY: head h of batch row b alone writes columns [h*hs, (h+1)*hs) of its rows;
            // this tile alone writes rows r0..r0+rows of them.
            let mut out_tile = unsafe { out.view((b * t + r0) * c + h * hs, rows, hs, c) };
            out_tile.copy_from(MatRef::from_row_major_slice(o, rows, hs));
        });
}

/// The online softmax over one tile of R queries q [R, hs] at positions first..first+R
/// against keys and values `[k, v]` [≥ first+R, hs]: o [R, hs] receives O, lse [R] each row's
/// log-sum-exp; s_tile is scratch for R rows of scores as wide as the widest block of keys
/// (QUERY_TILE·KEY_TILE / R, at most first + R), `widened` for a block of keys, then of values,
/// widened from f16. `drop(row, i, k0)`, if given, multiplies row i of a block of
/// weights (keys k0..) by its dropout mask.
#[allow(clippy::too_many_arguments)]
fn tile_forward(
    mut o: MatMut<'_, f32>,
    lse: &mut [f32],
    q: MatRef<'_, f32>,
    [k, v]: [HeadRows; 2],
    first: usize,
    scale: f32,
    s_tile: &mut [f32],
    widened: &mut Vec<f32>,
    drop: Option<impl Fn(&mut [f32], usize, usize)>,
) {
    let (rows, hs) = (q.nrows(), q.ncols());
    // Per row: m the largest score so far, l = Σ e^(s - m) over the keys so far.
    let (mut m, mut l) = ([f32::NEG_INFINITY; QUERY_TILE], [0.0f32; QUERY_TILE]);
    o.fill(0.0);
    for (k0, k1) in tiles(first + rows, QUERY_TILE * KEY_TILE / rows) {
        let width = k1 - k0;
        let s_tile = &mut s_tile[..rows * width];
        scores(s_tile, q, k.block(k0, width, hs, widened), scale);
        for (i, row) in s_tile.chunks_exact_mut(width).enumerate() {
            let (visible, masked) = row.split_at_mut(visible_keys(first + i, k0, width));
            masked.fill(0.0);
            if visible.is_empty() {
                continue;
            }
            // New maximum; the sums so far were taken against the old one: rescale them.
            let m_new = m[i].max(super::max(visible));
            let rescale = super::exp(m[i] - m_new);
            visible.iter_mut().for_each(|x| *x = super::exp(*x - m_new));
            l[i] = l[i] * rescale + super::sum(visible);
            m[i] = m_new;
            o.as_mut().row_mut(i).iter_mut().for_each(|x| *x *= rescale);
            if let Some(drop) = &drop {
                drop(visible, first + i, k0);
            }
        }
        // O += e^(S - m) V over this tile's keys.
        let weights = MatRef::from_row_major_slice(s_tile, rows, width);
        let values = v.block(k0, width, hs, widened);
        matmul(o.as_mut(), Accum::Add, weights, values, 1.0, Par::Seq);
    }
    for i in 0..rows {
        o.as_mut().row_mut(i).iter_mut().for_each(|x| *x /= l[i]);
        lse[i] = m[i] + l[i].ln();
    }
}

/// P = e^(S - lse) for a tile of R queries q [R, hs] at positions first..first+R, lse [R],
/// and W keys k [W, hs] at positions k0..k0+W: p [R, W], zero where a key is masked.
#[allow(clippy::too_many_arguments)]
fn recompute_probs(
    p: &mut [f32],
    q: MatRef<'_, f32>,
    k: MatRef<'_, f32>,
    lse: &[f32],
    first: usize,
    k0: usize,
    scale: f32,
) {
    let width = k.nrows();
    scores(p, q, k, scale);
    for (i, row) in p.chunks_exact_mut(width).enumerate() {
        let (visible, masked) = row.split_at_mut(visible_keys(first + i, k0, width));
        visible.iter_mut().for_each(|x| *x = super::exp(*x - lse[i]));
        masked.fill(0.0);
    }
}

/// The attention probabilities P [B, NH, T, T] of a forward pass (zero above the diagonal),
/// from its qkv [B, T, 3C] and lse [B, NH, T]: for looking at, not for training.
pub fn attention_probs(qkv: &[f32], lse: &[f32], s: AttnShape) -> Vec<f32> {
    let tt = s.t * s.t;
    let mut probs = vec![0.0; s.b * s.n_head * tt];
    probs.par_chunks_mut(tt).enumerate().for_each(|(bh, p)| {
        let [q, k, _] = s.head_qkv(qkv, bh);
        recompute_probs(p, q, k, &lse[bh * s.t..][..s.t], 0, 0, s.scale());
    });
    probs
}

/// Backward. dout: [B, T, C]; dqkv: [B, T, 3C] (overwritten); out and lse: O and the
/// log-sum-exp from the forward pass; `dropout` as in the forward pass. Per head, with
/// P' = P ⊙ mask (P' = P without dropout) and D = rowsum(dO ⊙ O) = Σ_j P'_ij dP'_ij:
/// `dV = P'ᵀ dO`, `dP' = dO Vᵀ`, `dP = dP' ⊙ mask`,
/// softmax: `dS = P ⊙ (dP - D)`, scores: `dQ = dS K / √hs`, `dK = dSᵀ Q / √hs`,
/// each product tile by tile with P recomputed from Q, K and lse. In parallel over heads.
pub fn attention_backward(
    dqkv: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    out: &[f32],
    lse: &[f32],
    s: AttnShape,
    dropout: Option<Dropout>,
) {
    assert!(dout.len() == s.b * s.t * s.c && qkv.len() == 3 * dout.len() && dqkv.len() == qkv.len());
    assert!(out.len() == dout.len() && lse.len() == s.b * s.n_head * s.t);
    let dqkv = SharedOut(dqkv.as_mut_ptr());
    lse.par_chunks(s.t)
        .enumerate()
        .for_each(|(bh, lse)| head_backward(s, bh, dqkv, dout, qkv, out, lse, dropout));
}

/// One (batch, head) pair of the backward pass, query tile by query tile, each against the
/// key tiles up to its diagonal.
#[allow(clippy::too_many_arguments)]
fn head_backward(
    s: AttnShape,
    bh: usize,
    dqkv: SharedOut,
    dout: &[f32],
    qkv: &[f32],
    out: &[f32],
    lse: &[f32],
    dropout: Option<Dropout>,
) {
    let (t, c, hs, scale) = (s.t, s.c, s.hs(), s.scale());
    let (q_off, k_off, v_off) = s.qkv_offsets(bh % s.n_head);
    let row0 = bh / s.n_head * t * 3 * c;
    let [q, k, v] = s.head_qkv(qkv, bh);
    let (d_o, o) = (s.head_rows(dout, bh), s.head_rows(out, bh));
    // SAFETY: head h of batch row b alone writes its q, k, v columns of rows b*T..(b+1)*T.
    let [mut dq, mut dk, mut dv] = [q_off, k_off, v_off].map(|off| unsafe { dqkv.view(row0 + off, t, hs, 3 * c) });
    [&mut dq, &mut dk, &mut dv].into_iter().for_each(|m| m.fill(0.0));
    // p: P (then dS) of a tile; dp: P' (then dP') of a tile.
    let (mut p, mut dp) = (vec![0.0; QUERY_TILE * KEY_TILE], vec![0.0; QUERY_TILE * KEY_TILE]);
    for (r0, r1) in tiles(t, QUERY_TILE) {
        let rows = r1 - r0;
        let (q_i, do_i) = (q.subrows(r0, rows), d_o.subrows(r0, rows));
        // D = rowsum(dO ⊙ O) of the tile's rows.
        let d: Vec<f32> = (r0..r1)
            .map(|i| do_i.row(i - r0).iter().zip(o.row(i).iter()).map(|(a, b)| a * b).sum())
            .collect();
        for (k0, k1) in tiles(r1, KEY_TILE) {
            let width = k1 - k0;
            let (p, dp) = (&mut p[..rows * width], &mut dp[..rows * width]);
            let (k_j, v_j) = (k.subrows(k0, width), v.subrows(k0, width));
            recompute_probs(p, q_i, k_j, &lse[r0..r1], r0, k0, scale);
            // dV += P'ᵀ dO
            let weights = match dropout {
                Some(drop) => {
                    dp.copy_from_slice(p);
                    for (i, row) in dp.chunks_exact_mut(width).enumerate() {
                        drop_row(&drop, s, row, bh, r0 + i, k0);
                    }
                    &*dp
                }
                None => &*p,
            };
            let weights = MatRef::from_row_major_slice(weights, rows, width);
            matmul(
                dv.as_mut().subrows_mut(k0, width),
                Accum::Add,
                weights.transpose(),
                do_i,
                1.0,
                Par::Seq,
            );
            // dP' = dO Vᵀ
            scores(dp, do_i, v_j, 1.0);
            // dS = P ⊙ (dP' ⊙ mask - D), in place of P.
            for (i, (ds, dp)) in p.chunks_exact_mut(width).zip(dp.chunks_exact_mut(width)).enumerate() {
                if let Some(drop) = dropout {
                    drop_row(&drop, s, dp, bh, r0 + i, k0);
                }
                ds.iter_mut().zip(dp.iter()).for_each(|(ds, &g)| *ds *= g - d[i]);
            }
            let ds = MatRef::from_row_major_slice(p, rows, width);
            // dQ += dS K · scale; dK += dSᵀ Q · scale
            matmul(dq.as_mut().subrows_mut(r0, rows), Accum::Add, ds, k_j, scale, Par::Seq);
            matmul(
                dk.as_mut().subrows_mut(k0, width),
                Accum::Add,
                ds.transpose(),
                q_i,
                scale,
                Par::Seq,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::dropout::DropoutSeed;
    use crate::ops::test_util::{check_gradient, random_vec};

    fn dropout(p: f32, seed: u64, s: AttnShape) -> Option<Dropout> {
        Some(Dropout::new(p, DropoutSeed::new(seed), s.t))
    }

    /// The mask value of weight (i, j) of head h in batch row b.
    fn factor(d: &Dropout, s: AttnShape, b: usize, h: usize, i: usize, j: usize) -> f32 {
        d.mask_value(d.attention_row_key(b, h, s.n_head, i), j)
    }

    /// Naive attention, every (batch, head, query) row on its own: P [B, NH, T, T] (after
    /// dropout) and O [B, T, C].
    fn naive(qkv: &[f32], s: AttnShape, dropout: Option<Dropout>) -> (Vec<f32>, Vec<f32>) {
        let (t, c, hs) = (s.t, s.c, s.hs());
        let mut probs = vec![0.0; s.b * s.n_head * t * t];
        let mut out = vec![0.0; s.b * t * c];
        for (b, h, i) in (0..s.b * s.n_head * t).map(|x| (x / (s.n_head * t), x / t % s.n_head, x % t)) {
            let at = |tok: usize, part: usize, d: usize| qkv[(b * t + tok) * 3 * c + part * c + h * hs + d] as f64;
            let scores: Vec<f64> = (0..=i)
                .map(|j| (0..hs).map(|d| at(i, 0, d) * at(j, 1, d)).sum::<f64>() / (hs as f64).sqrt())
                .collect();
            let max = scores.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = scores.iter().map(|x| (x - max).exp()).sum();
            let p_row = &mut probs[((b * s.n_head + h) * t + i) * t..][..t];
            for j in 0..=i {
                let factor = dropout.map_or(1.0, |d| factor(&d, s, b, h, i, j));
                p_row[j] = ((scores[j] - max).exp() / z) as f32 * factor;
            }
            for d in 0..hs {
                out[(b * t + i) * c + h * hs + d] = (0..=i).map(|j| p_row[j] as f64 * at(j, 2, d)).sum::<f64>() as f32;
            }
        }
        (probs, out)
    }

    fn run_forward(qkv: &[f32], s: AttnShape, dropout: Option<Dropout>) -> (Vec<f32>, Vec<f32>) {
        // NaN where nothing should be read before it is written.
        let mut out = vec![f32::NAN; s.b * s.t * s.c];
        let mut lse = vec![f32::NAN; s.b * s.n_head * s.t];
        attention_forward(&mut out, &mut lse, qkv, s, dropout);
        (out, lse)
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    /// Odd lengths: one row, less than a tile, a query tile and one more, two key tiles and
    /// two more; head sizes 1, 3, 8 and 64.
    fn shapes() -> Vec<AttnShape> {
        let shape = |b, t, c, n_head| AttnShape { b, t, c, n_head };
        vec![
            shape(2, 1, 6, 2),
            shape(1, 7, 3, 3),
            shape(2, 65, 16, 2),
            shape(1, 130, 128, 2),
            shape(1, 257, 24, 3),
        ]
    }

    #[test]
    fn forward_and_probabilities_match_naive_attention() {
        for s in shapes() {
            let qkv = random_vec(s.b * s.t * 3 * s.c, 1);
            for dropout in [None, dropout(0.3, 7, s)] {
                let (probs, expected) = naive(&qkv, s, dropout);
                let (out, lse) = run_forward(&qkv, s, dropout);
                let err = max_abs_diff(&out, &expected);
                assert!(err < 1e-5, "{s:?} dropout {dropout:?}: max error {err}");
                if dropout.is_none() {
                    let err = max_abs_diff(&attention_probs(&qkv, &lse, s), &probs);
                    assert!(err < 1e-6, "{s:?}: probabilities, max error {err}");
                }
            }
        }
    }

    #[test]
    fn cached_attention_matches_full_attention_on_the_new_rows() {
        for s in [
            AttnShape {
                b: 2,
                t: 7,
                c: 6,
                n_head: 3,
            },
            AttnShape {
                b: 1,
                t: 200,
                c: 8,
                n_head: 2,
            },
        ] {
            let (hs, p) = (s.c / s.n_head, s.t + 2); // a cache of T + 2 positions, T used
            let qkv = random_vec(s.b * s.t * 3 * s.c, 5);
            let (full, _) = run_forward(&qkv, s, None);
            // Keys and values of all T positions into the cache layout [B, NH, P, hs].
            let (mut k, mut v) = (vec![0.0; s.b * s.n_head * p * hs], vec![0.0; s.b * s.n_head * p * hs]);
            for (b, h, i, d) in (0..s.b * s.n_head * s.t * hs).map(|x| {
                (
                    x / (s.n_head * s.t * hs),
                    x / (s.t * hs) % s.n_head,
                    x / hs % s.t,
                    x % hs,
                )
            }) {
                let row = (b * s.t + i) * 3 * s.c;
                k[((b * s.n_head + h) * p + i) * hs + d] = qkv[row + s.c + h * hs + d];
                v[((b * s.n_head + h) * p + i) * hs + d] = qkv[row + 2 * s.c + h * hs + d];
            }
            for pos0 in [0, 4, 6, s.t - 1] {
                // Only the new tokens pos0..T as queries.
                let t = s.t - pos0;
                let new_qkv: Vec<f32> = (0..s.b)
                    .flat_map(|b| qkv[(b * s.t + pos0) * 3 * s.c..(b + 1) * s.t * 3 * s.c].to_vec())
                    .collect();
                let mut out = vec![0.0; s.b * t * s.c];
                let mut lse = vec![0.0; s.b * s.n_head * t];
                attention_forward_cached(
                    &mut out,
                    &mut lse,
                    &new_qkv,
                    KvRows::F32(&k),
                    KvRows::F32(&v),
                    AttnShape { t, ..s },
                    pos0,
                );
                let expected: Vec<f32> = (0..s.b)
                    .flat_map(|b| full[(b * s.t + pos0) * s.c..(b + 1) * s.t * s.c].to_vec())
                    .collect();
                let err = max_abs_diff(&out, &expected);
                assert!(err < 1e-6, "{s:?} pos0 {pos0}: max error {err}");
            }
        }
    }

    /// Keys and values widened from f16 give the f32 arithmetic on the same values, bit for
    /// bit: a cache in half precision changes what is stored, not how attention computes.
    #[test]
    fn an_f16_cache_attends_as_an_f32_cache_of_the_same_values() {
        use crate::ops::lowp::half::{f16_to_f32, f32_to_f16};
        let s = AttnShape {
            b: 2,
            t: 1,
            c: 24,
            n_head: 3,
        };
        let (hs, p) = (s.c / s.n_head, 300);
        let half: Vec<u16> = random_vec(2 * s.b * s.n_head * p * hs, 7)
            .into_iter()
            .map(f32_to_f16)
            .collect();
        let (k16, v16) = half.split_at(half.len() / 2);
        let (k32, v32): (Vec<f32>, Vec<f32>) = (
            k16.iter().map(|&h| f16_to_f32(h)).collect(),
            v16.iter().map(|&h| f16_to_f32(h)).collect(),
        );
        // one query (decoding) and several, after a cache longer than one tile of several rows
        for (t, pos0) in [(1, 0), (1, 299), (3, 0), (3, 290), (70, 200)] {
            let s = AttnShape { t, ..s };
            let qkv = random_vec(s.b * t * 3 * s.c, 8);
            let run = |k: KvRows, v: KvRows| {
                let (mut out, mut lse) = (vec![0.0; s.b * t * s.c], vec![0.0; s.b * s.n_head * t]);
                attention_forward_cached(&mut out, &mut lse, &qkv, k, v, s, pos0);
                (out, lse)
            };
            let wide = run(KvRows::F32(&k32), KvRows::F32(&v32));
            assert_eq!(run(KvRows::F16(k16), KvRows::F16(v16)), wide, "T {t} pos0 {pos0}");
        }
    }

    /// dqkv from the tiled backward pass.
    fn run_backward(qkv: &[f32], dout: &[f32], s: AttnShape, dropout: Option<Dropout>) -> Vec<f32> {
        let (out, lse) = run_forward(qkv, s, dropout);
        let mut dqkv = vec![f32::NAN; qkv.len()];
        attention_backward(&mut dqkv, dout, qkv, &out, &lse, s, dropout);
        dqkv
    }

    #[test]
    fn gradients_match_finite_differences_with_and_without_dropout() {
        // One tile, and a query tile and two key tiles past the first.
        for s in [
            AttnShape {
                b: 2,
                t: 4,
                c: 6,
                n_head: 2,
            },
            AttnShape {
                b: 1,
                t: 130,
                c: 4,
                n_head: 2,
            },
        ] {
            let qkv = random_vec(s.b * s.t * 3 * s.c, 2);
            let dout = random_vec(s.b * s.t * s.c, 3);
            for dropout in [None, dropout(0.25, 11, s)] {
                let dqkv = run_backward(&qkv, &dout, s, dropout);
                check_gradient("attention dqkv", &qkv, &dqkv, &dout, |x| run_forward(x, s, dropout).0);
            }
        }
    }

    /// The backward pass against the gradient of naive attention, in f64, on larger shapes
    /// than finite differences can afford: dqkv = ∂/∂qkv Σ dout ⊙ O.
    #[test]
    fn gradients_match_the_naive_gradient_on_odd_shapes() {
        for s in shapes() {
            let qkv = random_vec(s.b * s.t * 3 * s.c, 4);
            let dout = random_vec(s.b * s.t * s.c, 5);
            let dropout = dropout(0.1, 2, s);
            let dqkv = run_backward(&qkv, &dout, s, dropout);
            let expected = naive_backward(&qkv, &dout, s, dropout);
            let err = max_abs_diff(&dqkv, &expected);
            assert!(err < 2e-5, "{s:?}: max error {err}");
        }
    }

    /// The gradient of naive attention, row by row (the derivation of `attention_backward`
    /// without tiles): dV_j += P'_ij dO_i, dP'_ij = dO_i · V_j, dS_ij = P_ij (mask_ij dP'_ij - D_i).
    fn naive_backward(qkv: &[f32], dout: &[f32], s: AttnShape, dropout: Option<Dropout>) -> Vec<f32> {
        let (t, c, hs) = (s.t, s.c, s.hs());
        let (dropped, _) = naive(qkv, s, dropout);
        let (probs, _) = naive(qkv, s, None);
        let mut dqkv = vec![0.0f64; qkv.len()];
        let scale = 1.0 / (hs as f64).sqrt();
        for (b, h, i) in (0..s.b * s.n_head * t).map(|x| (x / (s.n_head * t), x / t % s.n_head, x % t)) {
            let bh = b * s.n_head + h;
            let at = |tok: usize, part: usize, d: usize| (b * t + tok) * 3 * c + part * c + h * hs + d;
            let d_o = |d: usize| dout[(b * t + i) * c + h * hs + d] as f64;
            let row = (bh * t + i) * t;
            let dp: Vec<f64> = (0..=i)
                .map(|j| (0..hs).map(|d| d_o(d) * qkv[at(j, 2, d)] as f64).sum())
                .collect();
            let big_d: f64 = (0..=i).map(|j| dropped[row + j] as f64 * dp[j]).sum();
            for j in 0..=i {
                let factor = dropout.map_or(1.0, |d| factor(&d, s, b, h, i, j)) as f64;
                let ds = probs[row + j] as f64 * (factor * dp[j] - big_d);
                for d in 0..hs {
                    dqkv[at(j, 2, d)] += dropped[row + j] as f64 * d_o(d);
                    dqkv[at(i, 0, d)] += ds * qkv[at(j, 1, d)] as f64 * scale;
                    dqkv[at(j, 1, d)] += ds * qkv[at(i, 0, d)] as f64 * scale;
                }
            }
        }
        dqkv.into_iter().map(|x| x as f32).collect()
    }
}
