//! Data parallelism for small models. The ops of a small model are too small to share between
//! threads well: every matrix multiply and every elementwise pass is a rendezvous of all
//! threads, and at 128 channels the waiting costs as much as the work. So the batch is cut
//! along B into S shards; shard s runs the whole forward and backward pass on its own replica
//! of the model, on thread s of an S-thread pool, its matrix multiplies on that thread alone
//! (a thread that finishes early helps the others with their elementwise ops); then the
//! replicas' gradients are summed into the model's. One rendezvous for the passes of a step
//! instead of a few hundred.
//!
//! The mean loss over the batch is `Σ_s count_s · loss_s / Σ_s count_s` (count_s: the shard's
//! counted targets), so shard s's backward is scaled by `count_s / Σ count`. The result depends
//! on S (sums are split differently) but not on the number of threads that run the shards, so
//! a run that records S resumes bit for bit on any machine.

use super::gpt::Gpt;
use crate::error::{Error, Result};
use crate::ops::cross_entropy::counted_targets;
use crate::ops::matmul::sequential;
use crate::ops::zeroed;
use crate::rng::Rng;
use rayon::prelude::*;
use rayon::{ThreadPool, ThreadPoolBuilder};
use std::sync::Mutex;

/// Models up to this many parameters get one shard per thread by default ([`auto_shards`]);
/// larger ones are split op by op (their matrix multiplies are large enough) and are not
/// replicated (a replica costs its parameters and gradients again).
const SMALL_MODEL_PARAMS: usize = 32_000_000;

/// The default number of shards: one per thread for a small model (at most one per batch
/// row), else 1.
pub fn auto_shards(num_params: usize, batch_size: usize) -> usize {
    match num_params <= SMALL_MODEL_PARAMS {
        true => rayon::current_num_threads().clamp(1, batch_size.max(1)),
        false => 1,
    }
}

/// The replicas and threads of S shards. Shard 0 runs on the model itself.
pub struct DataParallel {
    shards: usize,
    /// Replicas for shards 1..S: their parameters are copied from the model at every call.
    replicas: Vec<Gpt>,
    /// S threads, one per shard (none for one shard). A shard's products stay on its thread;
    /// a thread done with its shard helps with the elementwise ops of the others.
    pool: Option<ThreadPool>,
}

impl DataParallel {
    /// S = `shards` shards for `model` (1: every call goes straight to the model, its ops
    /// using all threads).
    pub fn new(model: &Gpt, shards: usize) -> Result<Self> {
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
        let replicas = (1..shards)
            .map(|_| Gpt::from_params(model.config.clone(), model.params.clone()))
            .collect();
        Ok(DataParallel { shards, replicas, pool })
    }

    pub fn shards(&self) -> usize {
        self.shards
    }

    /// Forward with `targets`, then backward: adds `loss_scale · dloss/dparams` to the model's
    /// gradients, as [`Gpt::forward`] + [`Gpt::backward`] would; returns the mean loss.
    /// Dropout masks come from per-shard streams seeded from `dropout_rng`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_backward(
        &mut self,
        model: &mut Gpt,
        tokens: &[u32],
        b: usize,
        t: usize,
        targets: &[i32],
        dropout_rng: Option<&mut Rng>,
        loss_scale: f32,
    ) -> Result<f32> {
        self.run(model, tokens, b, t, targets, dropout_rng, Some(loss_scale))
    }

    /// The mean loss of a batch (forward only, no dropout).
    pub fn loss(&mut self, model: &mut Gpt, tokens: &[u32], b: usize, t: usize, targets: &[i32]) -> Result<f32> {
        self.run(model, tokens, b, t, targets, None, None)
    }

    /// The pass, sharded unless S = 1; `loss_scale` None: forward only.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &mut self,
        model: &mut Gpt,
        tokens: &[u32],
        b: usize,
        t: usize,
        targets: &[i32],
        dropout_rng: Option<&mut Rng>,
        loss_scale: Option<f32>,
    ) -> Result<f32> {
        if self.shards == 1 {
            let loss = model.forward(tokens, b, t, Some(targets), dropout_rng)?;
            if let Some(loss_scale) = loss_scale {
                model.backward(loss_scale)?;
            }
            return Ok(loss.expect("forward with targets returns a loss"));
        }
        model.check_batch(tokens, b, t, Some(targets))?;
        for replica in &mut self.replicas {
            replica
                .params
                .par_chunks_mut(1 << 16)
                .zip(model.params.par_chunks(1 << 16))
                .for_each(|(r, m)| r.copy_from_slice(m));
        }
        // Shard s takes batch rows rows[s]..rows[s + 1] (the first b % S shards one more).
        let rows: Vec<usize> = (0..=self.shards)
            .map(|s| s * (b / self.shards) + s.min(b % self.shards))
            .collect();
        let seeds: Vec<Option<u64>> = match dropout_rng {
            Some(rng) => (0..self.shards).map(|_| Some(rng.next_u64())).collect(),
            None => vec![None; self.shards],
        };
        let workers: Vec<Mutex<&mut Gpt>> = std::iter::once(model)
            .chain(self.replicas.iter_mut())
            .map(Mutex::new)
            .collect();
        let pool = self.pool.as_ref().expect("a pool for more than one shard");

        // Each shard's counted targets are known before its forward pass, so its backward
        // weight count_s / Σ count is too: forward and backward run in one go per shard, and
        // the threads meet once.
        let counts: Vec<usize> = (0..self.shards)
            .map(|s| counted_targets(&targets[rows[s] * t..rows[s + 1] * t]))
            .collect();
        let total: usize = counts.iter().sum();
        let losses = on_shards(&workers, pool, |s, gpt| {
            let (r0, r1) = (rows[s], rows[s + 1]);
            if r0 == r1 {
                return Ok(0.0);
            }
            let mut rng = seeds[s].map(Rng::new);
            let range = r0 * t..r1 * t;
            let loss = gpt.forward(&tokens[range.clone()], r1 - r0, t, Some(&targets[range]), rng.as_mut())?;
            if let Some(loss_scale) = loss_scale {
                if s > 0 {
                    gpt.zero_grad();
                }
                let share = if total == 0 {
                    0.0
                } else {
                    counts[s] as f32 / total as f32
                };
                gpt.backward(loss_scale * share)?;
            }
            Ok(loss.expect("targets given"))
        })?;
        let loss = match total {
            0 => 0.0,
            _ => {
                (losses
                    .iter()
                    .zip(&counts)
                    .map(|(&loss, &count)| loss as f64 * count as f64)
                    .sum::<f64>()
                    / total as f64) as f32
            }
        };
        if loss_scale.is_none() {
            return Ok(loss);
        }
        let mut workers: Vec<&mut Gpt> = workers
            .into_iter()
            .map(|w| w.into_inner().unwrap_or_else(|e| e.into_inner()))
            .collect();
        let (model, replicas) = workers.split_first_mut().expect("at least one shard");
        if model.grads.len() != model.params.len() {
            model.grads = zeroed(model.params.len());
        }
        for (s, replica) in replicas.iter().enumerate() {
            if rows[s + 1] < rows[s + 2] {
                model
                    .grads
                    .par_chunks_mut(1 << 16)
                    .zip(replica.grads.par_chunks(1 << 16))
                    .for_each(|(g, r)| {
                        g.iter_mut().zip(r).for_each(|(g, r)| *g += r);
                    });
            }
        }
        Ok(loss)
    }
}

/// Runs `work(s, worker_s)` for every shard at once, shard s on thread s of `pool`, its
/// products kept on that thread.
fn on_shards<R: Send>(
    workers: &[Mutex<&mut Gpt>],
    pool: &ThreadPool,
    work: impl Fn(usize, &mut Gpt) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    pool.broadcast(|ctx| {
        let mut gpt = workers[ctx.index()].lock().unwrap_or_else(|e| e.into_inner());
        sequential(|| work(ctx.index(), &mut gpt))
    })
    .into_iter()
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::ops::cross_entropy::IGNORE_INDEX;

    #[test]
    fn shards_give_the_loss_and_gradients_of_the_whole_batch() {
        let mut whole = Gpt::new(Config::new(11, 8, 16, 2, 2), 3).unwrap();
        let mut sharded = Gpt::from_params(whole.config.clone(), whole.params.clone());
        let (b, t) = (5, 6); // 5 rows in 2 or 3 shards: uneven shards
        let mut rng = Rng::new(9);
        let tokens: Vec<u32> = (0..b * t).map(|_| rng.below(11) as u32).collect();
        let mut targets: Vec<i32> = (0..b * t).map(|_| rng.below(11) as i32).collect();
        targets[..t + 2].fill(IGNORE_INDEX); // shards count different numbers of targets
        whole.zero_grad();
        let expected = whole.forward(&tokens, b, t, Some(&targets), None).unwrap().unwrap();
        whole.backward(0.5).unwrap();
        for shards in [1, 2, 3, 7] {
            let mut parallel = DataParallel::new(&sharded, shards).unwrap();
            sharded.zero_grad();
            let loss = parallel
                .forward_backward(&mut sharded, &tokens, b, t, &targets, None, 0.5)
                .unwrap();
            assert!((loss - expected).abs() < 1e-6, "{shards} shards: {loss} vs {expected}");
            let max = whole.grads.iter().fold(0.0f32, |m, g| m.max(g.abs()));
            for (i, (g, e)) in sharded.grads.iter().zip(&whole.grads).enumerate() {
                assert!((g - e).abs() <= 1e-5 * max, "{shards} shards, gradient {i}: {g} vs {e}");
            }
            let eval = parallel.loss(&mut sharded, &tokens, b, t, &targets).unwrap();
            assert!((eval - expected).abs() < 1e-6);
        }
    }

    #[test]
    fn a_bad_target_in_any_shard_is_an_error_before_any_pass() {
        let mut model = Gpt::new(Config::new(11, 8, 16, 2, 2), 3).unwrap();
        let mut parallel = DataParallel::new(&model, 2).unwrap();
        model.zero_grad();
        let (b, t) = (4, 6);
        let tokens = vec![1u32; b * t];
        let mut targets = vec![2i32; b * t];
        targets[b * t - 1] = 11; // in the last shard
        let err = parallel
            .forward_backward(&mut model, &tokens, b, t, &targets, None, 1.0)
            .unwrap_err();
        assert!(err.to_string().contains("target id 11"), "{err}");
        assert!(model.grads.iter().all(|&g| g == 0.0), "no shard's backward ran");
    }

    #[test]
    fn the_default_is_one_shard_per_thread_for_small_models_only() {
        assert_eq!(auto_shards(124_439_808, 8), 1);
        assert_eq!(auto_shards(1_000, 1), 1);
        assert_eq!(auto_shards(1_000, 64), rayon::current_num_threads());
    }
}
