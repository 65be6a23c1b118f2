//! Causal multi-head self-attention on a fused qkv buffer.
//!
//! For each batch row b and head h, with Q, K, V the head's [T, hs] slices of qkv:
//! `S = Q Kᵀ / sqrt(hs)`, `P = softmax(S)` over the keys j ≤ t of each query t (causal mask),
//! `O = P V`, written into the head's columns of out. Work is split over (batch, head) pairs;
//! within a head, the products go in blocks of query rows that stop at the causal diagonal, so
//! the masked upper triangle is mostly never computed.

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
}

/// A raw pointer that rayon tasks may share: each task writes only its own head's columns.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: the tasks that hold copies write disjoint elements (one (batch, head) each).
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

fn square_mut(data: &mut [f32], n: usize) -> MatMut<'_, f32> {
    MatMut::from_row_major_slice_mut(data, n, n)
}

fn square(data: &[f32], n: usize) -> MatRef<'_, f32> {
    MatRef::from_row_major_slice(data, n, n)
}

/// Forward. qkv: [B, T, 3C]; out: [B, T, C]; att: [B, NH, T, T] receives P (kept for backward).
/// With dropout, `dropped` [B, NH, T, T] arrives holding the dropout mask (0 or 1/(1-p)) and
/// leaves holding `P ⊙ mask`, which is what multiplies V; its zeros mark the dropped entries.
pub fn attention_forward(out: &mut [f32], att: &mut [f32], dropped: Option<&mut [f32]>, qkv: &[f32], s: AttnShape) {
    let tt = s.t * s.t;
    assert!(out.len() == s.b * s.t * s.c && qkv.len() == 3 * out.len() && att.len() == s.b * s.n_head * tt);
    let out = SharedOut(out.as_mut_ptr());
    let heads = att.par_chunks_mut(tt).enumerate();
    match dropped {
        Some(dropped) => heads
            .zip(dropped.par_chunks_mut(tt))
            .for_each(|((bh, p), pd)| head_forward(s, bh, qkv, p, Some(pd), out)),
        None => heads.for_each(|(bh, p)| head_forward(s, bh, qkv, p, None, out)),
    }
}

/// One (batch, head) pair of the forward pass; p: [T, T], pd: [T, T].
fn head_forward(s: AttnShape, bh: usize, qkv: &[f32], p: &mut [f32], pd: Option<&mut [f32]>, out: SharedOut) {
    let (t, c, hs) = (s.t, s.c, s.hs());
    let (b, h) = (bh / s.n_head, bh % s.n_head);
    let [q, k, v] = s.head_qkv(qkv, bh);
    // S = Q Kᵀ / sqrt(hs), block by block: rows r0..r1 against keys 0..r1 only. The softmax
    // zeroes the masked entries (and the unwritten ones beyond r1).
    causal_product_t(p, t, q, k, 1.0 / (hs as f32).sqrt());
    for (i, row) in p.chunks_exact_mut(t).enumerate() {
        softmax_causal_row(row, i);
    }
    // O = P V (or (P ⊙ mask) V under dropout), again rows r0..r1 against keys 0..r1.
    let weights = match pd {
        Some(pd) => {
            pd.iter_mut().zip(p.iter()).for_each(|(m, &pi)| *m *= pi);
            pd
        }
        None => p,
    };
    // SAFETY: head h of batch row b alone writes columns [h*hs, (h+1)*hs) of rows b*T..(b+1)*T.
    let out_rows = |r0: usize, rows: usize| unsafe { out.view((b * t + r0) * c + h * hs, rows, hs, c) };
    causal_product(out_rows, weights, false, t, v, 1.0);
}

/// Rows per causal block. Query rows r0..r1 see keys 0..r1 at most, so each product of a
/// row block stops at column r1: the masked upper triangle is skipped block by block, which
/// saves close to half the work at long contexts.
const CAUSAL_BLOCK: usize = 64;

/// `out [T, T] = x yᵀ · scale` (x, y: [T, hs]) on and below the diagonal, block by block: rows
/// r0..r1 get columns 0..r1; the rest of each row is left unwritten (masked).
fn causal_product_t(out: &mut [f32], t: usize, x: MatRef<'_, f32>, y: MatRef<'_, f32>, scale: f32) {
    for (r0, r1) in causal_blocks(t) {
        matmul(
            square_mut(out, t).submatrix_mut(r0, 0, r1 - r0, r1),
            Accum::Replace,
            x.subrows(r0, r1 - r0),
            y.subrows(0, r1).transpose(),
            scale,
            Par::Seq,
        );
    }
}

/// `out [T, hs] = op(m) y · scale` for m [T, T] zero above the diagonal (y: [T, hs]), where
/// op(m) is m or, when `transposed`, mᵀ. Block by block, rows r0..r1 of the result need:
/// - op(m) = m: columns 0..r1 of m's rows r0..r1, and rows 0..r1 of y;
/// - op(m) = mᵀ: m's columns r0..r1, nonzero only in rows r0..T, and rows r0..T of y.
///
/// `out_rows(r0, rows)` is the view of the result's rows r0..r0+rows.
fn causal_product(
    out_rows: impl Fn(usize, usize) -> MatMut<'static, f32>,
    m: &[f32],
    transposed: bool,
    t: usize,
    y: MatRef<'_, f32>,
    scale: f32,
) {
    for (r0, r1) in causal_blocks(t) {
        let (m_block, y_rows) = match transposed {
            false => (square(m, t).submatrix(r0, 0, r1 - r0, r1), y.subrows(0, r1)),
            true => (
                square(m, t).submatrix(r0, r0, t - r0, r1 - r0).transpose(),
                y.subrows(r0, t - r0),
            ),
        };
        matmul(out_rows(r0, r1 - r0), Accum::Replace, m_block, y_rows, scale, Par::Seq);
    }
}

/// The row blocks (r0, r1) of a [T, T] attention matrix.
fn causal_blocks(t: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..t)
        .step_by(CAUSAL_BLOCK)
        .map(move |r0| (r0, (r0 + CAUSAL_BLOCK).min(t)))
}

/// Forward against a key/value cache (inference): the T new tokens of each batch row attend
/// to every cached position before them and to themselves. qkv: [B, T, 3C] of the new tokens
/// (only the query third is read); k_cache, v_cache: [B, NH, P, hs] with positions
/// 0..pos0+T filled (the new tokens' own keys and values included); out: [B, T, C];
/// scores: [B, NH, T, pos0+T] scratch. New token i sits at position pos0 + i and sees keys
/// 0..=pos0+i. With pos0 = 0 this is [`attention_forward`] without dropout.
pub fn attention_forward_cached(
    out: &mut [f32],
    scores: &mut [f32],
    qkv: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    s: AttnShape,
    pos0: usize,
) {
    let (t, c, hs, ctx) = (s.t, s.c, s.hs(), pos0 + s.t);
    let p = k_cache.len() / (s.b * c); // cache positions per row: B·NH·P·hs = B·P·C
    assert!(out.len() == s.b * t * c && qkv.len() == 3 * out.len() && scores.len() == s.b * s.n_head * t * ctx);
    assert!(ctx <= p && v_cache.len() == k_cache.len());
    let out = SharedOut(out.as_mut_ptr());
    scores.par_chunks_mut(t * ctx).enumerate().for_each(|(bh, sc)| {
        let (b, h) = (bh / s.n_head, bh % s.n_head);
        let q = strided(qkv, b * t * 3 * c + s.qkv_offsets(h).0, t, hs, 3 * c);
        let k = strided(k_cache, bh * p * hs, ctx, hs, hs);
        let v = strided(v_cache, bh * p * hs, ctx, hs, hs);
        // S = Q Kᵀ / sqrt(hs): [T, ctx]; query i is masked beyond key pos0 + i.
        matmul(
            MatMut::from_row_major_slice_mut(sc, t, ctx),
            Accum::Replace,
            q,
            k.transpose(),
            1.0 / (hs as f32).sqrt(),
            Par::Seq,
        );
        for (i, row) in sc.chunks_exact_mut(ctx).enumerate() {
            softmax_causal_row(row, pos0 + i);
        }
        // SAFETY: head h of batch row b alone writes columns [h*hs, (h+1)*hs) of rows b*T..(b+1)*T.
        let o = unsafe { out.view(b * t * c + h * hs, t, hs, c) };
        matmul(
            o,
            Accum::Replace,
            MatRef::from_row_major_slice(sc, t, ctx),
            v,
            1.0,
            Par::Seq,
        );
    });
}

/// Backward. dout: [B, T, C]; dqkv: [B, T, 3C] (overwritten); att: P from the forward pass;
/// dropped: `P ⊙ mask` from the forward pass under dropout, with its keep scale 1/(1-p);
/// scratch: [B, NH, T, T]. Per head, with P' = P ⊙ mask (P' = P without dropout):
/// `dV = P'ᵀ dO`, `dP' = dO Vᵀ`, `dP = dP' ⊙ mask`,
/// softmax: `dS_tj = P_tj (dP_tj - Σ_k P_tk dP_tk)`, scores: `dQ = dS K / √hs`, `dK = dSᵀ Q / √hs`.
pub fn attention_backward(
    dqkv: &mut [f32],
    scratch: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    att: &[f32],
    dropped: Option<(&[f32], f32)>,
    s: AttnShape,
) {
    let tt = s.t * s.t;
    assert!(dout.len() == s.b * s.t * s.c && qkv.len() == 3 * dout.len() && dqkv.len() == qkv.len());
    let dqkv = SharedOut(dqkv.as_mut_ptr());
    scratch[..s.b * s.n_head * tt]
        .par_chunks_mut(tt)
        .enumerate()
        .for_each(|(bh, dp)| {
            let p = &att[bh * tt..(bh + 1) * tt];
            let pd = dropped.map(|(pd, keep_scale)| (&pd[bh * tt..(bh + 1) * tt], keep_scale));
            head_backward(s, bh, dqkv, dp, dout, qkv, p, pd);
        });
}

/// One (batch, head) pair of the backward pass; dp: [T, T] scratch.
#[allow(clippy::too_many_arguments)]
fn head_backward(
    s: AttnShape,
    bh: usize,
    dqkv: SharedOut,
    dp: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    p: &[f32],
    dropped: Option<(&[f32], f32)>,
) {
    let (t, c, hs) = (s.t, s.c, s.hs());
    let (b, h) = (bh / s.n_head, bh % s.n_head);
    let (q_off, k_off, v_off) = s.qkv_offsets(h);
    let row0 = b * t * 3 * c;
    let [q, k, v] = s.head_qkv(qkv, bh);
    let d_o = strided(dout, b * t * c + h * hs, t, hs, c);
    // Rows r0..r0+rows of the q, k or v columns (at `offset`) of dqkv.
    // SAFETY: head h of batch row b alone writes its q, k, v columns of rows b*T..(b+1)*T.
    let rows_of =
        |offset: usize, r0: usize, rows: usize| unsafe { dqkv.view(row0 + offset + r0 * 3 * c, rows, hs, 3 * c) };
    let weights = dropped.map_or(p, |(pd, _)| pd);
    // Every product below skips the masked upper triangle block by block.
    // dV = P'ᵀ dO
    causal_product(|r0, rows| rows_of(v_off, r0, rows), weights, true, t, d_o, 1.0);
    // dP' = dO Vᵀ
    causal_product_t(dp, t, d_o, v, 1.0);
    // dP = dP' ⊙ mask (the mask is keep_scale where P' ≠ 0, else 0; where P itself is 0 the
    // softmax gradient below is 0 whatever the mask says)
    if let Some((pd, keep_scale)) = dropped {
        dp.iter_mut()
            .zip(pd)
            .for_each(|(g, &m)| *g = if m != 0.0 { *g * keep_scale } else { 0.0 });
    }
    // Softmax backward, row by row, in place (dP becomes dS).
    for (i, (ds, pr)) in dp.chunks_exact_mut(t).zip(p.chunks_exact(t)).enumerate() {
        softmax_causal_row_backward(ds, pr, i);
    }
    let scale = 1.0 / (hs as f32).sqrt();
    // dQ = dS K · scale
    causal_product(|r0, rows| rows_of(q_off, r0, rows), dp, false, t, k, scale);
    // dK = dSᵀ Q · scale
    causal_product(|r0, rows| rows_of(k_off, r0, rows), dp, true, t, q, scale);
}

/// In-place causal softmax of row i of the scores: entries j ≤ i become probabilities, j > i
/// become 0.
fn softmax_causal_row(row: &mut [f32], i: usize) {
    let (visible, masked) = row.split_at_mut(i + 1);
    let max = super::max(visible);
    visible.iter_mut().for_each(|x| *x = super::exp(*x - max));
    let inv = 1.0 / super::sum(visible);
    visible.iter_mut().for_each(|x| *x *= inv);
    masked.fill(0.0);
}

/// Backward of [`softmax_causal_row`], in place: with p = softmax(s) over j ≤ i,
/// ∂p_j/∂s_k = p_j (δ_jk - p_k), so dS = P ⊙ (dP - Σ_j p_j dp_j). Entries j > i become 0
/// (the scores there were masked; this also clears what the causal blocks did not write).
fn softmax_causal_row_backward(grad: &mut [f32], p: &[f32], i: usize) {
    let (visible, masked) = grad.split_at_mut(i + 1);
    let dot: f32 = visible.iter().zip(p).map(|(g, pj)| g * pj).sum();
    for (g, &pj) in visible.iter_mut().zip(p) {
        *g = pj * (*g - dot);
    }
    masked.fill(0.0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::{check_gradient, random_vec};

    fn run_forward(qkv: &[f32], s: AttnShape, mask: Option<&[f32]>) -> (Vec<f32>, Vec<f32>, Option<Vec<f32>>) {
        // NaN where nothing should be read before it is written.
        let mut out = vec![f32::NAN; s.b * s.t * s.c];
        let mut att = vec![f32::NAN; s.b * s.n_head * s.t * s.t];
        let mut dropped = mask.map(<[f32]>::to_vec);
        attention_forward(&mut out, &mut att, dropped.as_deref_mut(), qkv, s);
        (out, att, dropped)
    }

    #[test]
    fn matches_naive_causal_attention() {
        // 150 positions: causal blocks of 64, 64 and 22.
        let s = AttnShape {
            b: 2,
            t: 150,
            c: 6,
            n_head: 2,
        };
        let qkv = random_vec(s.b * s.t * 3 * s.c, 1);
        let (out, _, _) = run_forward(&qkv, s, None);
        let hs = s.c / s.n_head;
        for b in 0..s.b {
            for h in 0..s.n_head {
                for i in 0..s.t {
                    let at =
                        |tok: usize, part: usize, d: usize| qkv[(b * s.t + tok) * 3 * s.c + part * s.c + h * hs + d];
                    let scores: Vec<f32> = (0..=i)
                        .map(|j| (0..hs).map(|d| at(i, 0, d) * at(j, 1, d)).sum::<f32>() / (hs as f32).sqrt())
                        .collect();
                    let max = scores.iter().cloned().fold(f32::MIN, f32::max);
                    let z: f32 = scores.iter().map(|x| (x - max).exp()).sum();
                    for d in 0..hs {
                        let expected: f32 = (0..=i).map(|j| (scores[j] - max).exp() / z * at(j, 2, d)).sum();
                        let got = out[(b * s.t + i) * s.c + h * hs + d];
                        assert!(
                            (expected - got).abs() < 1e-5,
                            "b{b} h{h} t{i} d{d}: {expected} vs {got}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn cached_attention_matches_full_attention_on_the_new_rows() {
        let s = AttnShape {
            b: 2,
            t: 7,
            c: 6,
            n_head: 3,
        };
        let (hs, p) = (s.c / s.n_head, 9); // a cache of 9 positions, 7 used
        let qkv = random_vec(s.b * s.t * 3 * s.c, 5);
        let (full, _, _) = run_forward(&qkv, s, None);
        // Keys and values of all 7 positions into the cache layout [B, NH, P, hs].
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
        for pos0 in [0, 4, 6] {
            // Only the new tokens pos0..7 as queries.
            let t = s.t - pos0;
            let new_qkv: Vec<f32> = (0..s.b)
                .flat_map(|b| qkv[(b * s.t + pos0) * 3 * s.c..(b + 1) * s.t * 3 * s.c].to_vec())
                .collect();
            let mut out = vec![0.0; s.b * t * s.c];
            let mut scores = vec![0.0; s.b * s.n_head * t * s.t];
            attention_forward_cached(&mut out, &mut scores, &new_qkv, &k, &v, AttnShape { t, ..s }, pos0);
            let expected: Vec<f32> = (0..s.b)
                .flat_map(|b| full[(b * s.t + pos0) * s.c..(b + 1) * s.t * s.c].to_vec())
                .collect();
            let err = out
                .iter()
                .zip(&expected)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(err < 1e-6, "pos0 {pos0}: max error {err}");
        }
    }

    #[test]
    fn gradients_match_finite_differences_with_and_without_dropout() {
        // One causal block, and two (64 + 6 positions).
        for s in [
            AttnShape {
                b: 2,
                t: 4,
                c: 6,
                n_head: 2,
            },
            AttnShape {
                b: 1,
                t: 70,
                c: 4,
                n_head: 2,
            },
        ] {
            let qkv = random_vec(s.b * s.t * 3 * s.c, 2);
            let dout = random_vec(s.b * s.t * s.c, 3);
            let keep_scale = 1.0 / (1.0 - 0.25);
            let mask: Vec<f32> = random_vec(s.b * s.n_head * s.t * s.t, 4)
                .iter()
                .map(|&r| if r > -0.67 { keep_scale } else { 0.0 })
                .collect();
            for mask in [None, Some(mask.as_slice())] {
                let (_, att, dropped) = run_forward(&qkv, s, mask);
                let mut dqkv = vec![f32::NAN; qkv.len()];
                let mut scratch = vec![f32::NAN; att.len()];
                attention_backward(
                    &mut dqkv,
                    &mut scratch,
                    &dout,
                    &qkv,
                    &att,
                    dropped.as_deref().map(|d| (d, keep_scale)),
                    s,
                );
                check_gradient("attention dqkv", &qkv, &dqkv, &dout, |x| run_forward(x, s, mask).0);
            }
        }
    }
}
