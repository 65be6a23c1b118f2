//! Data parallelism for small models. The ops of a small model are too small to share between
//! threads well: every matrix multiply and every elementwise pass is a rendezvous of all
//! threads, and at 128 channels the waiting costs as much as the work. So the batch is cut
//! along B into S shards; shard s runs the whole forward and backward pass over the one shared
//! model with its own workspace, on thread s of an S-thread pool, its matrix multiplies on that
//! thread alone (a thread that finishes early helps the others with their elementwise ops);
//! then the shards' gradients are summed into the caller's. One rendezvous for the passes of a
//! step instead of a few hundred.
//!
//! The mean loss over the batch is `Σ_s count_s · loss_s / Σ_s count_s` (count_s: the shard's
//! counted targets), so shard s's backward is scaled by `count_s / Σ count`. The result depends
//! on S (sums are split differently) but not on the number of threads that run the shards, so
//! a run that records S resumes bit for bit on any machine.

use super::gpt::Gpt;
use super::workspace::Workspace;
use crate::error::{Error, Result};
use crate::ops::cross_entropy::counted_targets;
use crate::ops::dropout::DropoutSeed;
use crate::ops::matmul::{sequential, Precision};
use crate::ops::set_zero;
use rayon::prelude::*;
use rayon::{ThreadPool, ThreadPoolBuilder};
use std::sync::Mutex;

/// Models up to this many parameters get one shard per thread by default ([`auto_shards`]);
/// larger ones are split op by op (their matrix multiplies are large enough) and keep a single
/// gradient buffer (each further shard costs one more).
const SMALL_MODEL_PARAMS: usize = 32_000_000;

/// The default number of shards: one per thread for a small model (at most one per batch
/// row), else 1.
pub fn auto_shards(num_params: usize, batch_size: usize) -> usize {
    match num_params <= SMALL_MODEL_PARAMS {
        true => rayon::current_num_threads().clamp(1, batch_size.max(1)),
        false => 1,
    }
}

/// The batch rows of each of S shards: b / S each, the first b % S shards one more.
pub fn shard_rows(b: usize, shards: usize) -> impl Iterator<Item = usize> {
    (0..shards).map(move |s| b / shards + usize::from(s < b % shards))
}

/// The workspaces, gradient buffers and threads of S shards.
pub struct DataParallel {
    /// One workspace per shard.
    workspaces: Vec<Workspace>,
    /// Gradients of shards 1..S; shard 0 adds into the caller's buffer, and the others' are
    /// added to it after each pass.
    shard_grads: Vec<Vec<f32>>,
    /// S threads, one per shard (none for one shard). A shard's products stay on its thread;
    /// a thread done with its shard helps with the elementwise ops of the others.
    pool: Option<ThreadPool>,
}

/// What one shard works on: its workspace and, for a backward pass, its gradient buffer.
struct Shard<'a> {
    ws: &'a mut Workspace,
    grads: Option<&'a mut [f32]>,
}

/// A (B, T) batch with its targets.
#[derive(Clone, Copy)]
struct Batch<'a> {
    tokens: &'a [u32],
    b: usize,
    t: usize,
    targets: &'a [i32],
}

/// How a batch is cut into S shards.
struct Plan {
    /// Shard s takes batch rows rows[s]..rows[s + 1] (the first b % S shards one more).
    rows: Vec<usize>,
    /// Counted targets of each shard, known before any pass, and their sum.
    counts: Vec<usize>,
    total: usize,
}

impl Plan {
    fn new(shards: usize, batch: Batch) -> Self {
        let (b, t) = (batch.b, batch.t);
        let rows: Vec<usize> = std::iter::once(0)
            .chain(shard_rows(b, shards).scan(0, |end, rows| {
                *end += rows;
                Some(*end)
            }))
            .collect();
        let counts: Vec<usize> = (0..shards)
            .map(|s| counted_targets(&batch.targets[rows[s] * t..rows[s + 1] * t]))
            .collect();
        let total = counts.iter().sum();
        Plan { rows, counts, total }
    }

    /// Shard s's weight in the mean loss: count_s / Σ count.
    fn share(&self, s: usize) -> f32 {
        match self.total {
            0 => 0.0,
            total => self.counts[s] as f32 / total as f32,
        }
    }

    /// The mean loss over the batch from each shard's mean loss.
    fn mean_loss(&self, losses: &[f32]) -> f32 {
        let weighted: f64 = losses
            .iter()
            .zip(&self.counts)
            .map(|(&l, &n)| l as f64 * n as f64)
            .sum();
        match self.total {
            0 => 0.0,
            total => (weighted / total as f64) as f32,
        }
    }
}

impl DataParallel {
    /// S = `shards` shards over `model` (1: every call goes straight to the model, its ops
    /// using all threads), their matrix products in `precision`.
    pub fn new(model: &Gpt, shards: usize, precision: Precision) -> Result<Self> {
        if shards == 0 {
            return Err(Error::Input("data parallelism needs at least 1 shard".into()));
        }
        let pool = match shards {
            1 => None,
            _ => Some(
                ThreadPoolBuilder::new()
                    .num_threads(shards)
                    .build()
                    .map_err(|e| Error::Input(format!("cannot start the shard threads: {e}")))?,
            ),
        };
        Ok(DataParallel {
            workspaces: (0..shards).map(|_| Workspace::with_precision(precision)).collect(),
            shard_grads: (1..shards).map(|_| model.new_gradients()).collect(),
            pool,
        })
    }

    pub fn shards(&self) -> usize {
        self.workspaces.len()
    }

    /// Forward with `targets`, then backward: adds `loss_scale · dloss/dparams` to `grads`, as
    /// [`Gpt::forward`] + [`Gpt::backward`] would; returns the mean loss. Each shard draws the
    /// dropout masks of its own rows of the whole batch, so the masks do not depend on S.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_backward(
        &mut self,
        model: &Gpt,
        grads: &mut [f32],
        tokens: &[u32],
        b: usize,
        t: usize,
        targets: &[i32],
        dropout: Option<DropoutSeed>,
        loss_scale: f32,
    ) -> Result<f32> {
        self.forward_backward_with(model, grads, tokens, b, t, targets, dropout, loss_scale, |_| {})
    }

    /// [`DataParallel::forward_backward`], handing each part of `grads` to `bucket_done` once
    /// it holds its final gradient, as [`Gpt::backward_with`] does: during the backward pass
    /// with one shard, after the shards' gradients are added with several.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_backward_with<'g>(
        &mut self,
        model: &Gpt,
        grads: &'g mut [f32],
        tokens: &[u32],
        b: usize,
        t: usize,
        targets: &[i32],
        dropout: Option<DropoutSeed>,
        loss_scale: f32,
        mut bucket_done: impl FnMut(&'g [f32]),
    ) -> Result<f32> {
        let batch = Batch { tokens, b, t, targets };
        if self.pool.is_none() {
            let ws = &mut self.workspaces[0];
            let loss = model.forward(ws, tokens, b, t, Some(targets), dropout)?;
            model.backward_with(ws, grads, loss_scale, bucket_done)?;
            return Ok(loss.expect("forward with targets returns a loss"));
        }
        let loss = self.run(model, batch, dropout, Some((&mut *grads, loss_scale)))?;
        let grads: &'g [f32] = grads;
        model
            .backward_buckets()
            .into_iter()
            .for_each(|range| bucket_done(&grads[range]));
        Ok(loss)
    }

    /// The mean loss of a batch (forward only, no dropout).
    pub fn loss(&mut self, model: &Gpt, tokens: &[u32], b: usize, t: usize, targets: &[i32]) -> Result<f32> {
        self.run(model, Batch { tokens, b, t, targets }, None, None)
    }

    /// The pass, sharded unless S = 1; `backward` (gradients, loss scale) None: forward only.
    fn run(
        &mut self,
        model: &Gpt,
        batch: Batch,
        dropout: Option<DropoutSeed>,
        mut backward: Option<(&mut [f32], f32)>,
    ) -> Result<f32> {
        let Batch { tokens, b, t, targets } = batch;
        if self.pool.is_none() {
            let ws = &mut self.workspaces[0];
            let loss = model.forward(ws, tokens, b, t, Some(targets), dropout)?;
            if let Some((grads, loss_scale)) = backward {
                model.backward(ws, grads, loss_scale)?;
            }
            return Ok(loss.expect("forward with targets returns a loss"));
        }
        model.check_batch(tokens, b, t, Some(targets))?;
        let plan = Plan::new(self.shards(), batch);
        let losses = self.run_shards(
            model,
            batch,
            &plan,
            dropout,
            backward.as_mut().map(|(g, s)| (&mut **g, *s)),
        )?;
        if let Some((grads, _)) = backward {
            // The caller's buffer holds shard 0's gradients; add those of the other shards.
            let ran = |s: &usize| plan.rows[s + 1] < plan.rows[s + 2];
            for (_, shard) in self.shard_grads.iter().enumerate().filter(|(s, _)| ran(s)) {
                add_into(grads, shard);
            }
        }
        Ok(plan.mean_loss(&losses))
    }

    /// Every shard's forward (and backward) pass at once; returns each shard's mean loss.
    fn run_shards(
        &mut self,
        model: &Gpt,
        batch: Batch,
        plan: &Plan,
        dropout: Option<DropoutSeed>,
        backward: Option<(&mut [f32], f32)>,
    ) -> Result<Vec<f32>> {
        let loss_scale = backward.as_ref().map(|&(_, scale)| scale);
        let caller_grads = backward.map(|(grads, _)| grads);
        let own_grads = self
            .shard_grads
            .iter_mut()
            .map(|g| loss_scale.map(|_| g.as_mut_slice()));
        let workers: Vec<Mutex<Shard>> = self
            .workspaces
            .iter_mut()
            .zip(std::iter::once(caller_grads).chain(own_grads))
            .map(|(ws, grads)| Mutex::new(Shard { ws, grads }))
            .collect();
        let pool = self.pool.as_ref().expect("a pool for more than one shard");
        let t = batch.t;
        on_shards(&workers, pool, |s, shard| {
            let (r0, r1) = (plan.rows[s], plan.rows[s + 1]);
            if r0 == r1 {
                return Ok(0.0);
            }
            let (tokens, targets) = (&batch.tokens[r0 * t..r1 * t], &batch.targets[r0 * t..r1 * t]);
            let shard_dropout = dropout.map(|d| d.skip(r0));
            let loss = model.forward(shard.ws, tokens, r1 - r0, t, Some(targets), shard_dropout)?;
            if let (Some(grads), Some(loss_scale)) = (shard.grads.as_deref_mut(), loss_scale) {
                if s > 0 {
                    set_zero(grads);
                }
                model.backward(shard.ws, grads, loss_scale * plan.share(s))?;
            }
            Ok(loss.expect("targets given"))
        })
    }
}

/// `acc += x`, elementwise, in parallel blocks.
fn add_into(acc: &mut [f32], x: &[f32]) {
    acc.par_chunks_mut(1 << 16)
        .zip(x.par_chunks(1 << 16))
        .for_each(|(acc, x)| acc.iter_mut().zip(x).for_each(|(a, &x)| *a += x));
}

/// Runs `work(s, shard_s)` for every shard at once, shard s on thread s of `pool`, its
/// products kept on that thread.
fn on_shards<R: Send>(
    workers: &[Mutex<Shard>],
    pool: &ThreadPool,
    work: impl Fn(usize, &mut Shard) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    pool.broadcast(|ctx| {
        let mut shard = workers[ctx.index()].lock().unwrap_or_else(|e| e.into_inner());
        sequential(|| work(ctx.index(), &mut shard))
    })
    .into_iter()
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::model::lora::{parse_targets, Lora, LoraConfig};
    use crate::ops::cross_entropy::IGNORE_INDEX;
    use crate::rng::Rng;

    /// With dropout too: each shard draws its own rows' masks of the whole batch.
    #[test]
    fn shards_give_the_loss_and_gradients_of_the_whole_batch() {
        let mut cfg = Config::new(11, 8, 16, 2, 2);
        cfg.dropout = 0.2;
        let model = Gpt::new(cfg, 3).unwrap();
        let dropout = Some(DropoutSeed::new(4));
        let (b, t) = (5, 6); // 5 rows in 2 or 3 shards: uneven shards
        let mut rng = Rng::new(9);
        let tokens: Vec<u32> = (0..b * t).map(|_| rng.below(11) as u32).collect();
        let mut targets: Vec<i32> = (0..b * t).map(|_| rng.below(11) as i32).collect();
        targets[..t + 2].fill(IGNORE_INDEX); // shards count different numbers of targets
        let (mut ws, mut whole) = (Workspace::new(), model.new_gradients());
        let expected = model
            .forward(&mut ws, &tokens, b, t, Some(&targets), dropout)
            .unwrap()
            .unwrap();
        model.backward(&mut ws, &mut whole, 0.5).unwrap();
        let expected_eval = model
            .forward(&mut Workspace::new(), &tokens, b, t, Some(&targets), None)
            .unwrap()
            .unwrap();
        let max = whole.iter().fold(0.0f32, |m, g| m.max(g.abs()));
        for shards in [1, 2, 3, 7] {
            let mut parallel = DataParallel::new(&model, shards, Precision::F32).unwrap();
            for step in 0..2 {
                // A second step: the shards' own buffers start again from zero.
                let mut grads = model.new_gradients();
                let loss = parallel
                    .forward_backward(&model, &mut grads, &tokens, b, t, &targets, dropout, 0.5)
                    .unwrap();
                assert!((loss - expected).abs() < 1e-6, "{shards} shards: {loss} vs {expected}");
                for (i, (g, e)) in grads.iter().zip(&whole).enumerate() {
                    assert!(
                        (g - e).abs() <= 1e-5 * max,
                        "{shards} shards, step {step}, gradient {i}: {g} vs {e}"
                    );
                }
            }
            let eval = parallel.loss(&model, &tokens, b, t, &targets).unwrap();
            assert!(
                (eval - expected_eval).abs() < 1e-6,
                "{shards} shards: {eval} vs {expected_eval}"
            );
        }
    }

    /// With an adapter the gradient is the adapter's (not in the layout of the model's
    /// buckets): shards give it as one pass does and hand nothing on.
    #[test]
    fn shards_train_an_adapter_and_hand_no_buckets_on() {
        let cfg = Config::new(11, 8, 16, 2, 2);
        let mut model = Gpt::new(cfg.clone(), 3).unwrap();
        let lora = LoraConfig {
            r: 2,
            alpha: 4.0,
            dropout: 0.0,
            targets: parse_targets("c_attn,c_fc").unwrap(),
            train_wte: true,
        };
        let mut adapter = Lora::new(&model, lora, 5).unwrap();
        let mut rng = Rng::new(9);
        adapter.params.iter_mut().for_each(|p| *p += 0.3 * rng.normal()); // B not zero
        model.adapter = Some(adapter);
        let (b, t) = (4, 6);
        let tokens: Vec<u32> = (0..b * t).map(|_| rng.below(11) as u32).collect();
        let targets: Vec<i32> = (0..b * t).map(|_| rng.below(11) as i32).collect();
        let (mut ws, mut whole) = (Workspace::new(), model.new_gradients());
        let expected = model
            .forward(&mut ws, &tokens, b, t, Some(&targets), None)
            .unwrap()
            .unwrap();
        model.backward(&mut ws, &mut whole, 1.0).unwrap();
        let max = whole.iter().fold(0.0f32, |m, g| m.max(g.abs()));
        let mut parallel = DataParallel::new(&model, 2, Precision::F32).unwrap();
        let (mut grads, mut handed_on) = (model.new_gradients(), 0);
        let loss = parallel
            .forward_backward_with(&model, &mut grads, &tokens, b, t, &targets, None, 1.0, |_| {
                handed_on += 1
            })
            .unwrap();
        assert_eq!(handed_on, 0);
        assert!((loss - expected).abs() < 1e-6, "{loss} vs {expected}");
        assert_eq!(grads.len(), whole.len());
        for (i, (g, e)) in grads.iter().zip(&whole).enumerate() {
            assert!((g - e).abs() <= 1e-5 * max, "adapter gradient {i}: {g} vs {e}");
        }
    }

    #[test]
    fn a_bad_target_in_any_shard_is_an_error_before_any_pass() {
        let model = Gpt::new(Config::new(11, 8, 16, 2, 2), 3).unwrap();
        let mut parallel = DataParallel::new(&model, 2, Precision::F32).unwrap();
        let mut grads = model.new_gradients();
        let (b, t) = (4, 6);
        let tokens = vec![1u32; b * t];
        let mut targets = vec![2i32; b * t];
        targets[b * t - 1] = 11; // in the last shard
        let err = parallel
            .forward_backward(&model, &mut grads, &tokens, b, t, &targets, None, 1.0)
            .unwrap_err();
        assert!(err.to_string().contains("target id 11"), "{err}");
        assert!(grads.iter().all(|&g| g == 0.0), "no shard's backward ran");
    }

    #[test]
    fn the_default_is_one_shard_per_thread_for_small_models_only() {
        assert_eq!(auto_shards(124_439_808, 8), 1);
        assert_eq!(auto_shards(1_000, 1), 1);
        assert_eq!(auto_shards(1_000, 64), rayon::current_num_threads());
    }
}
