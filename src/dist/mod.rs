//! Training over N processes (ranks), on one machine or several: what each rank computes and
//! owns, independent of the transport. With the `mpi` feature, [`mpi::MpiRanks`] is the
//! transport (Open MPI through the `mpi` crate); see docs/distributed.md.
//!
//! - Data: rank r trains on rows `r·B/N .. (r+1)·B/N` of every batch ([`rank_rows`]), the batch
//!   one process would draw, so the same flags give the same run whatever N is.
//! - Gradients: the gradient is cut into buckets in the order the backward pass finishes them:
//!   the final LayerNorm, each transformer block from the last, the embeddings. Each bucket is
//!   reduce-scattered: rank r receives the sum over ranks of its own piece of the bucket
//!   ([`Layout`]).
//! - ZeRO-1: rank r keeps AdamW's moments of, and updates, only its pieces (1/N of the
//!   parameters); then every bucket's pieces are all-gathered into every rank's parameters.

#[cfg(feature = "mpi")]
pub mod mpi;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::model::params::backward_buckets;
use std::ops::Range;

/// The launchers' variables that give a process its rank count: Open MPI's, then MPICH's and
/// PMIx's (Slurm).
const WORLD_SIZE_VARS: [&str; 3] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"];
/// The same for the ranks on this machine.
const LOCAL_SIZE_VARS: [&str; 2] = ["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"];

/// The number of ranks this process was started among by `mpirun` (or srun), from the
/// launcher's environment; None when it was started on its own.
pub fn launched_ranks() -> Option<usize> {
    env_count(&WORLD_SIZE_VARS)
}

/// The number of ranks started on this machine (1 when started on its own).
pub fn ranks_on_this_machine() -> usize {
    env_count(&LOCAL_SIZE_VARS).or_else(launched_ranks).unwrap_or(1)
}

fn env_count(vars: &[&str]) -> Option<usize> {
    vars.iter()
        .find_map(|var| std::env::var(var).ok()?.parse().ok())
        .filter(|&n| n > 0)
}

/// A fingerprint of how this process was started: its binary's bytes and `settings` (what the
/// user asked for). Ranks started alike have the same.
pub fn identity(settings: &[u8]) -> Result<u64> {
    use sha2::{Digest, Sha256};
    let exe = std::env::current_exe().map_err(|e| Error::io("the running binary", e))?;
    let binary = std::fs::read(&exe).map_err(|e| Error::io(&exe, e))?;
    let digest = Sha256::new().chain_update(&binary).chain_update(settings).finalize();
    Ok(u64::from_le_bytes(digest[..8].try_into().expect("8 bytes")))
}

/// The batch rows of rank `rank` of `ranks`: an equal, disjoint 1/N of the B rows, in order.
pub fn rank_rows(batch_size: usize, ranks: usize, rank: usize) -> Result<Range<usize>> {
    if ranks > batch_size {
        return Err(Error::Config(format!(
            "{ranks} ranks for a batch of {batch_size} rows: each rank trains on at least one row; \
             start at most {batch_size} ranks or raise --batch-size"
        )));
    }
    if !batch_size.is_multiple_of(ranks) {
        return Err(Error::Config(format!(
            "--batch-size {batch_size} is not divisible by the {ranks} ranks: each rank trains on \
             an equal share of the batch; choose a multiple of {ranks}"
        )));
    }
    let rows = batch_size / ranks;
    Ok(rank * rows..(rank + 1) * rows)
}

/// One bucket of the gradient: a range of the flat parameters that the backward pass finishes
/// at once. Rank r owns `piece` elements from `range.start + r·piece`; the last
/// `range.len() - N·piece` (fewer than N) are owned by every rank alike.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    pub range: Range<usize>,
    pub piece: usize,
}

impl Bucket {
    /// The part cut into the ranks' pieces.
    pub fn pieces(&self, ranks: usize) -> Range<usize> {
        self.range.start..self.range.start + ranks * self.piece
    }

    /// The few elements after the pieces, which every rank owns.
    pub fn rest(&self, ranks: usize) -> Range<usize> {
        self.range.start + ranks * self.piece..self.range.end
    }
}

/// How N ranks share the parameters of a model: the buckets, in the order the backward pass
/// finishes them, and which part of each a rank owns. A rank's shard (its gradient, its AdamW
/// moments) is, bucket after bucket, its piece and then the bucket's rest: the same length
/// on every rank.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub ranks: usize,
    pub buckets: Vec<Bucket>,
}

impl Layout {
    pub fn new(config: &Config, ranks: usize) -> Self {
        let buckets = backward_buckets(config)
            .into_iter()
            .map(|range| Bucket {
                piece: range.len() / ranks,
                range,
            })
            .collect();
        Layout { ranks, buckets }
    }

    /// The ranges of the parameters rank `rank` owns, in the order of its shard.
    pub fn owned(&self, rank: usize) -> Vec<Range<usize>> {
        self.buckets
            .iter()
            .flat_map(|b| {
                let start = b.range.start + rank * b.piece;
                [start..start + b.piece, b.rest(self.ranks)]
            })
            .filter(|r| !r.is_empty())
            .collect()
    }

    /// Elements in a rank's shard.
    pub fn shard_len(&self) -> usize {
        self.buckets.iter().map(|b| b.piece + b.rest(self.ranks).len()).sum()
    }

    /// For each bucket: where its piece and its rest lie in a rank's shard.
    pub fn in_shard(&self) -> impl Iterator<Item = (&Bucket, Range<usize>, Range<usize>)> + '_ {
        let mut offset = 0;
        self.buckets.iter().map(move |b| {
            let piece = offset..offset + b.piece;
            let rest = piece.end..piece.end + b.rest(self.ranks).len();
            offset = rest.end;
            (b, piece, rest)
        })
    }
}

/// An operation under way; dropping it waits for it to end (its buffers are borrowed till then).
pub trait Pending {
    /// Lets the operation progress; whether it has ended.
    fn done(&mut self) -> bool;
}

/// The collective operations the trainer needs between ranks (sums are elementwise). Every
/// rank calls each one in the same order; rank 0 is the root.
pub trait Collective {
    fn rank(&self) -> usize;
    fn ranks(&self) -> usize;
    /// This rank's place among the ranks on its machine.
    fn machine_rank(&self) -> usize;
    /// Waits until every rank on this machine has called it.
    fn machine_barrier(&self);
    /// Rank 0's bytes to every rank (`bytes` is replaced on the others).
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>);
    fn broadcast(&self, values: &mut [f32]);
    /// Every rank's bytes, in rank order, at rank 0 (None elsewhere).
    fn gather_bytes(&self, bytes: &[u8]) -> Option<Vec<Vec<u8>>>;
    /// Every rank's value, in rank order.
    fn all_gather_u64(&self, value: u64) -> Vec<u64>;
    fn all_sum_f64(&self, values: &[f64]) -> Vec<f64>;
    /// Starts summing `send` over ranks into `recv`, and returns without waiting.
    fn start_all_sum<'a>(&'a self, send: &'a [f32], recv: &'a mut [f32]) -> Box<dyn Pending + 'a>;
    /// Starts a reduce-scatter: rank r receives part r of the sum (`recv.len()` = `send.len()`
    /// / N). Returns without waiting.
    fn start_reduce_scatter<'a>(&'a self, send: &'a [f32], recv: &'a mut [f32]) -> Box<dyn Pending + 'a>;
    /// Every rank's `send`, one after another: `recv.len()` = N · `send.len()`.
    fn all_gather(&self, send: &[f32], recv: &mut [f32]);
    /// As [`Collective::all_gather`], into rank 0's `recv` only (None elsewhere).
    fn gather(&self, send: &[f32], recv: Option<&mut [f32]>);
    /// Part r of rank 0's `send` (None elsewhere) to rank r.
    fn scatter(&self, send: Option<&[f32]>, recv: &mut [f32]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::num_params;

    #[test]
    fn buckets_cover_the_parameters_last_block_first() {
        let config = Config::new(13, 8, 16, 3, 2);
        let total = num_params(&config);
        for ranks in 1..=5 {
            let layout = Layout::new(&config, ranks);
            assert_eq!(layout.buckets.len(), 5, "ln_f, 3 blocks, embeddings");
            assert_eq!(layout.buckets[0].range, total - 32..total);
            assert_eq!(layout.buckets[4].range, 0..(13 + 8) * 16);
            for pair in layout.buckets.windows(2) {
                assert_eq!(pair[1].range.end, pair[0].range.start);
            }
            // Every parameter is owned by exactly one rank, or (a bucket's rest) by all.
            let mut owners = vec![0; total];
            for rank in 0..ranks {
                let owned = layout.owned(rank);
                assert_eq!(owned.iter().map(|r| r.len()).sum::<usize>(), layout.shard_len());
                owned.into_iter().flatten().for_each(|i| owners[i] += 1);
            }
            for b in &layout.buckets {
                assert!(b.rest(ranks).len() < ranks);
                assert!(owners[b.pieces(ranks)].iter().all(|&n| n == 1));
                assert!(owners[b.rest(ranks)].iter().all(|&n| n == ranks));
            }
        }
    }

    #[test]
    fn each_rank_takes_an_equal_share_of_the_rows() {
        assert_eq!(rank_rows(8, 2, 1).unwrap(), 4..8);
        assert_eq!(rank_rows(3, 1, 0).unwrap(), 0..3);
        let uneven = rank_rows(6, 4, 0).unwrap_err().to_string();
        assert!(uneven.contains("not divisible by the 4 ranks"), "{uneven}");
        let too_many = rank_rows(2, 4, 0).unwrap_err().to_string();
        assert!(too_many.contains("4 ranks for a batch of 2 rows"), "{too_many}");
    }
}
