//! Batches of (input, target) windows from a token shard.
//!
//! The shard is split by position: the first `1 - val_fraction` of the ids train, the rest
//! validate (nanoGPT). A window is `block_size + 1` consecutive ids: the inputs are its first
//! `block_size`, the targets the same shifted by one. Training windows are drawn at random
//! (nanoGPT's `get_batch`) or walk the split with a stride in a shuffled order per epoch (the
//! LLMs-from-scratch data loader); both are deterministic from the seed, and the stream's
//! position is saved in checkpoints so a resumed run draws the same batches.

use super::shard::Shard;
use crate::error::{Error, Result};
use crate::rng::Rng;
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// The corpus shard and its train/validation split.
pub struct Dataset {
    pub shard: Shard,
    pub train: Range<usize>,
    pub val: Range<usize>,
}

/// Which part of the corpus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Val,
}

/// One batch: `inputs` [B, T] ids and `targets` [B, T] (the next id after each input).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    pub inputs: Vec<u32>,
    pub targets: Vec<i32>,
}

impl Dataset {
    /// Splits `shard`; each split must hold at least one window of `block_size + 1` ids.
    pub fn new(shard: Shard, val_fraction: f64, block_size: usize) -> Result<Dataset> {
        let n = shard.len();
        let window = block_size + 1;
        if n < window {
            return Err(Error::Input(format!(
                "the corpus is {n} tokens long, shorter than one block: training needs at least block_size + 1 = {window} tokens (give more text or a smaller --block-size)"
            )));
        }
        let n_train = (n as f64 * (1.0 - val_fraction)) as usize;
        let (train, val) = (0..n_train, n_train..n);
        if train.len() < window {
            return Err(Error::Input(format!(
                "the train split ({} tokens) is shorter than one block of {window} tokens (give more text, a smaller --val-fraction or a smaller --block-size)",
                train.len()
            )));
        }
        if val.len() < window {
            return Err(Error::Input(format!(
                "the validation split (the last {}% of the corpus: {} tokens) is too small to evaluate: it needs at least block_size + 1 = {window} tokens (give more text, a larger --val-fraction or a smaller --block-size)",
                // As many digits as the fraction has: 0.001 is 0.1%, not 0%.
                (val_fraction * 100.0) as f32,
                val.len()
            )));
        }
        Ok(Dataset { shard, train, val })
    }

    pub fn split(&self, split: Split) -> Range<usize> {
        match split {
            Split::Train => self.train.clone(),
            Split::Val => self.val.clone(),
        }
    }

    /// Fills `batch` with the windows of `t + 1` ids starting at `starts` (offsets in `split`).
    pub fn fill(&self, split: Split, starts: &[usize], t: usize, batch: &mut Batch) {
        let base = self.split(split).start;
        batch.inputs.clear();
        batch.targets.clear();
        for &start in starts {
            let at = base + start;
            batch.inputs.extend((at..at + t).map(|i| self.shard.get(i)));
            batch
                .targets
                .extend((at + 1..at + t + 1).map(|i| self.shard.get(i) as i32));
        }
    }
}

/// How training windows are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Windows {
    /// Uniformly random start offsets (nanoGPT).
    Random,
    /// Start offsets 0, s, 2s, ... visited in a new random order each epoch.
    Stride(usize),
}

/// Where the training stream stands: what a checkpoint needs to continue it exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DataPosition {
    Random { rng: Rng },
    Stride { stride: usize, epoch: u64, next: usize },
}

/// The stream of training windows.
pub struct BatchStream {
    seed: u64,
    position: DataPosition,
    /// Stride mode: this epoch's order of window indices (rebuilt from seed and epoch).
    order: Vec<usize>,
}

/// Number of stride windows of `t + 1` ids in `len` ids: starts 0, s, ... up to len - t - 1.
fn stride_windows(len: usize, t: usize, stride: usize) -> usize {
    (len - t - 1) / stride + 1
}

impl BatchStream {
    pub fn new(windows: Windows, seed: u64) -> BatchStream {
        let position = match windows {
            Windows::Random => DataPosition::Random { rng: Rng::new(seed) },
            Windows::Stride(stride) => DataPosition::Stride {
                stride,
                epoch: 0,
                next: 0,
            },
        };
        BatchStream {
            seed,
            position,
            order: Vec::new(),
        }
    }

    /// Continues a stream from a saved position.
    pub fn resume(windows: Windows, seed: u64, position: DataPosition) -> Result<BatchStream> {
        let matches = match (windows, &position) {
            (Windows::Random, DataPosition::Random { .. }) => true,
            (Windows::Stride(s), DataPosition::Stride { stride, .. }) => s == *stride,
            _ => false,
        };
        if !matches {
            return Err(Error::Input(format!(
                "the saved data position ({position:?}) does not fit {windows:?} batches (--stride)"
            )));
        }
        Ok(BatchStream {
            seed,
            position,
            order: Vec::new(),
        })
    }

    pub fn position(&self) -> &DataPosition {
        &self.position
    }

    /// Start offsets of the next `b` windows of `t + 1` ids in a split of `len` ids.
    pub fn next_starts(&mut self, len: usize, t: usize, b: usize) -> Vec<usize> {
        match &mut self.position {
            DataPosition::Random { rng } => (0..b).map(|_| rng.below(len - t)).collect(),
            DataPosition::Stride { stride, epoch, next } => {
                let (stride, n) = (*stride, stride_windows(len, t, *stride));
                (0..b)
                    .map(|_| {
                        if *next == n {
                            *epoch += 1;
                            *next = 0;
                        }
                        if *next == 0 || self.order.len() != n {
                            self.order = epoch_order(n, self.seed, *epoch);
                        }
                        *next += 1;
                        self.order[*next - 1] * stride
                    })
                    .collect()
            }
        }
    }
}

/// A shuffled order of `n` window indices, the same for the same seed and epoch (Fisher–Yates).
fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = Rng::new(seed ^ epoch.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.below(i + 1));
    }
    order
}

/// The fixed evaluation batches of a split: `iters` batches of `b` start offsets, the same at
/// every evaluation so the curves compare like with like. Random windows from a seed of their
/// own, or with a stride the first windows in order (cycling if the split has fewer).
pub fn eval_starts(windows: Windows, seed: u64, len: usize, t: usize, b: usize, iters: usize) -> Vec<Vec<usize>> {
    let mut rng = Rng::new(seed ^ 0xE7A1_0000_0000_0001);
    let mut k = 0;
    (0..iters)
        .map(|_| {
            (0..b)
                .map(|_| match windows {
                    Windows::Random => rng.below(len - t),
                    Windows::Stride(stride) => {
                        let start = (k % stride_windows(len, t, stride)) * stride;
                        k += 1;
                        start
                    }
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stride_epochs_visit_every_window_once_in_a_seeded_order() {
        // len 23, t 4, stride 3: starts 0, 3, ..., 18 (7 windows).
        let mut stream = BatchStream::new(Windows::Stride(3), 5);
        let first: Vec<usize> = (0..7).flat_map(|_| stream.next_starts(23, 4, 1)).collect();
        let mut sorted = first.clone();
        sorted.sort();
        assert_eq!(sorted, [0, 3, 6, 9, 12, 15, 18]);
        assert_eq!(
            stream.position(),
            &DataPosition::Stride {
                stride: 3,
                epoch: 0,
                next: 7
            }
        );
        let second = stream.next_starts(23, 4, 7);
        assert_ne!(first, second, "a new order each epoch");
        // Resuming from a saved position gives the same continuation.
        let saved = stream.position().clone();
        let mut resumed = BatchStream::resume(Windows::Stride(3), 5, saved).unwrap();
        assert_eq!(resumed.next_starts(23, 4, 5), stream.next_starts(23, 4, 5));
        assert!(BatchStream::resume(Windows::Random, 5, stream.position().clone()).is_err());
        assert!(BatchStream::resume(Windows::Stride(2), 5, stream.position().clone()).is_err());
    }

    #[test]
    fn random_windows_stay_inside_the_split_and_resume_exactly() {
        let mut stream = BatchStream::new(Windows::Random, 1);
        let starts = stream.next_starts(10, 4, 1000);
        assert!(starts.iter().all(|&s| s + 4 < 10) && starts.contains(&0) && starts.contains(&5));
        let mut resumed = BatchStream::resume(Windows::Random, 1, stream.position().clone()).unwrap();
        assert_eq!(resumed.next_starts(10, 4, 8), stream.next_starts(10, 4, 8));
        assert_eq!(
            eval_starts(Windows::Random, 1, 10, 4, 2, 3),
            eval_starts(Windows::Random, 1, 10, 4, 2, 3)
        );
        assert_eq!(eval_starts(Windows::Stride(4), 1, 10, 4, 2, 2), [[0, 4], [0, 4]]);
    }
}
