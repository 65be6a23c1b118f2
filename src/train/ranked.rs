//! The trainer over N ranks (processes started together by `mpirun`; see [`crate::dist`]):
//! how they start as one run, sum their gradients, share the optimizer (ZeRO-1) and gather
//! its state for rank 0's checkpoints.
//!
//! Start: every rank checks that all were started alike (the same binary, the same settings);
//! rank 0 makes or resumes the run as one process would and sends the others its state and
//! parameters; each of them reads the corpus itself, the first rank of each machine before the
//! others, so that the token cache of a machine is written once; then each rank takes its
//! part of the AdamW moments.

use super::checkpoint::TrainerState;
use super::Trainer;
use crate::config::Config;
use crate::dist::{rank_rows, Collective, Layout, Pending};
use crate::error::{Error, Result};
use crate::model::param_specs;
use crate::model::params::TensorSpec;
use crate::ops::{sum_squares_f64, zeroed};
use crate::optim::AdamW;
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// This rank's place in a run of several.
pub(super) struct Ranked {
    pub comm: Box<dyn Collective>,
    pub layout: Layout,
    /// This rank's rows of every batch.
    pub rows: Range<usize>,
    /// This rank's shard ([`Layout`]'s order) of the gradient summed over ranks; during the
    /// gathering of the parameters, of the updated parameters.
    pub shard: Vec<f32>,
    /// The parameter tensors.
    specs: Vec<TensorSpec>,
    /// Per step, the seconds spent waiting for the gradient's sums after the backward pass
    /// (communication it did not hide), and gathering the updated parameters.
    pub waits: Vec<f32>,
    pub gathers: Vec<f32>,
}

impl Ranked {
    /// Whether `flag` is set on any rank.
    pub fn any(&self, flag: bool) -> bool {
        self.comm.all_sum_f64(&[f64::from(u8::from(flag))])[0] > 0.0
    }

    /// The sum of `value` over ranks.
    pub fn sum(&self, value: f32) -> f32 {
        self.comm.all_sum_f64(&[value as f64])[0] as f32
    }

    /// What sums the ranks' gradients into this rank's shard, bucket by bucket, as the
    /// backward pass hands them on ([`crate::model::DataParallel::forward_backward_with`]).
    pub fn reducer(&mut self) -> Reducer<'_> {
        let Ranked {
            comm, layout, shard, ..
        } = self;
        let mut rest = shard.as_mut_slice();
        let mut into = Vec::new();
        for (_, piece, tail) in layout.in_shard() {
            let (bucket, after) = std::mem::take(&mut rest).split_at_mut(piece.len() + tail.len());
            into.push(bucket.split_at_mut(piece.len()));
            rest = after;
        }
        Reducer {
            comm: &**comm,
            ranks: layout.ranks,
            into: into.into_iter(),
            pending: Vec::new(),
        }
    }

    /// The global norm of the gradient summed over ranks (each rank has its part in its shard).
    pub fn grad_norm(&self) -> f32 {
        let mut squares = 0.0f64;
        for (_, piece, rest) in self.layout.in_shard() {
            squares += sum_squares_f64(&self.shard[piece]);
            // Every rank holds the rests: counted once, by rank 0.
            if self.comm.rank() == 0 {
                squares += sum_squares_f64(&self.shard[rest]);
            }
        }
        self.comm.all_sum_f64(&[squares])[0].sqrt() as f32
    }

    /// After each rank updated its pieces of `params`: every rank's pieces into every rank's
    /// parameters (the rests were updated alike on every rank).
    pub fn gather_parameters(&mut self, params: &mut [f32]) {
        let gathering = Instant::now();
        let (n, rank) = (self.layout.ranks, self.comm.rank());
        for (bucket, piece, _) in self.layout.in_shard() {
            let mine = bucket.range.start + rank * bucket.piece;
            self.shard[piece.clone()].copy_from_slice(&params[mine..mine + bucket.piece]);
            self.comm.all_gather(&self.shard[piece], &mut params[bucket.pieces(n)]);
        }
        self.gathers.push(gathering.elapsed().as_secs_f32());
    }

    /// The optimizer of all the parameters, its moments gathered from every rank's shard: at
    /// rank 0, None on the others.
    pub fn gather_optimizer(&self, optimizer: &AdamW) -> Option<AdamW> {
        let root = self.comm.rank() == 0;
        let total = self.layout.buckets.first().map_or(0, |b| b.range.end);
        let mut full = root.then(|| (zeroed(total), zeroed(total)));
        for (shard, index) in [(&optimizer.m, 0), (&optimizer.v, 1)] {
            let mut out = full.as_mut().map(|(m, v)| if index == 0 { m } else { v });
            for (bucket, piece, rest) in self.layout.in_shard() {
                let into = out.as_mut().map(|o| &mut o[bucket.pieces(self.layout.ranks)]);
                self.comm.gather(&shard[piece], into);
                if let Some(o) = out.as_mut() {
                    o[bucket.rest(self.layout.ranks)].copy_from_slice(&shard[rest]);
                }
            }
        }
        full.map(|(m, v)| {
            let mut whole = AdamW::new(optimizer.config, &self.specs);
            (whole.m, whole.v, whole.t) = (m, v, optimizer.t);
            whole
        })
    }

    /// This rank's shard of rank 0's `full` moments (None on the others).
    fn scatter_moments(&self, full: Option<&[f32]>) -> Vec<f32> {
        let n = self.layout.ranks;
        let mut shard = zeroed(self.layout.shard_len());
        for (bucket, piece, rest) in self.layout.in_shard() {
            self.comm.scatter(full.map(|f| &f[bucket.pieces(n)]), &mut shard[piece]);
            if let Some(full) = full {
                shard[rest.clone()].copy_from_slice(&full[bucket.rest(n)]);
            }
            self.comm.broadcast(&mut shard[rest]);
        }
        shard
    }
}

/// Sums each bucket of the gradient over ranks as soon as the backward pass is done with it,
/// while the pass goes on with the layers before: rank r receives its piece of the sum, and
/// every rank the bucket's rest.
pub(super) struct Reducer<'a> {
    comm: &'a dyn Collective,
    ranks: usize,
    /// Where each bucket's sum goes in the shard (its piece, its rest), in bucket order.
    into: std::vec::IntoIter<(&'a mut [f32], &'a mut [f32])>,
    pending: Vec<Box<dyn Pending + 'a>>,
}

impl<'a> Reducer<'a> {
    /// Starts summing `bucket`, the next bucket of this rank's gradient.
    pub fn bucket_done(&mut self, bucket: &'a [f32]) {
        let (piece, rest) = self.into.next().expect("no more buckets than the layout's");
        let (pieces, tail) = bucket.split_at(self.ranks * piece.len());
        self.pending.push(self.comm.start_reduce_scatter(pieces, piece));
        if !tail.is_empty() {
            self.pending.push(self.comm.start_all_sum(tail, rest));
        }
        // MPI moves the operations under way only inside its calls: let them progress.
        self.pending.retain_mut(|p| !p.done());
    }

    /// Waits for the sums still under way; returns how long that took (the communication
    /// that the backward pass did not hide).
    pub fn finish(self) -> Duration {
        let waiting = Instant::now();
        drop(self.pending);
        waiting.elapsed()
    }
}

/// What rank 0 sends the others once the run is set up.
#[derive(Serialize, Deserialize)]
struct Start {
    state: TrainerState,
    run_dir: PathBuf,
    resumed: bool,
    /// The model's config.json.
    model: String,
}

impl Trainer {
    /// Starts this rank's part of a run over `comm`'s ranks. `identity` tells how the process
    /// was started (its binary and settings): every rank must give the same. On rank 0,
    /// `start` makes or resumes the run as one process would; the others follow it.
    pub fn ranked(
        comm: Box<dyn Collective>,
        identity: u64,
        start: impl FnOnce() -> Result<Trainer>,
    ) -> Result<Trainer> {
        let (rank, ranks) = (comm.rank(), comm.ranks());
        let identities = comm.all_gather_u64(identity);
        let others: Vec<String> = (0..ranks)
            .filter(|&r| identities[r] != identities[0])
            .map(|r| r.to_string())
            .collect();
        // An error every rank finds alike is told by rank 0; the others just stop.
        let agreed = |e: Error| match rank {
            0 => e,
            _ => Error::Stopped(e.to_string()),
        };
        if !others.is_empty() {
            return Err(agreed(Error::Config(format!(
                "rank(s) {} were started with other settings or another binary than rank 0: \
                 every rank must run the same gpt2 with the same flags and files",
                others.join(", ")
            ))));
        }
        // Rank 0 sets the run up, and tells the others how it went.
        let mut leader = if rank == 0 { Some(start()) } else { None };
        let mut message = match &leader {
            Some(Ok(trainer)) => serde_json::to_vec(&Start {
                state: trainer.state(),
                run_dir: trainer.run_dir.clone(),
                resumed: trainer.info.resumed,
                model: trainer.model.config.to_hf_json(),
            })
            .map_err(|e| Error::Input(format!("the run's state: {e}")))?,
            _ => Vec::new(),
        };
        comm.broadcast_bytes(&mut message);
        if message.is_empty() {
            return Err(leader
                .and_then(Result::err)
                .unwrap_or_else(|| Error::Stopped("rank 0 could not start the run".into())));
        }
        let start: Start =
            serde_json::from_slice(&message).map_err(|e| Error::Input(format!("rank 0's message: {e}")))?;
        let model = Config::from_hf_json(&start.model)?;
        let mut params = None;
        match leader.as_mut() {
            Some(Ok(trainer)) => comm.broadcast(&mut trainer.model.params),
            _ => comm.broadcast(params.insert(zeroed(crate::model::num_params(&model)))),
        }
        // The first rank of each machine reads the corpus (and fills its token cache) before
        // the others do.
        let first_on_machine = comm.machine_rank() == 0;
        for turn in [true, false] {
            if let Some(params) = params.take_if(|_| first_on_machine == turn) {
                let (run_dir, model) = (start.run_dir.clone(), model.clone());
                leader = Some(Trainer::follow(&start.state, run_dir, start.resumed, model, params));
            }
            comm.machine_barrier();
        }
        let outcome = leader.expect("every rank has set up");
        // Rank 0 tells why the others that failed did: a rank that stopped on its own would
        // make mpirun end the run before rank 0 could say anything.
        let failure = outcome.as_ref().err().map_or(String::new(), |e| e.to_string());
        let failures = comm.gather_bytes(failure.as_bytes());
        let failed = comm.all_gather_u64(u64::from(outcome.is_err())).contains(&1);
        let mut trainer = match (outcome, failures) {
            (Ok(trainer), _) if !failed => trainer,
            (_, Some(failures)) => {
                let said: Vec<String> = failures
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| !f.is_empty())
                    .map(|(r, f)| format!("rank {r}: {}", String::from_utf8_lossy(f)))
                    .collect();
                return Err(Error::Input(said.join("\n")));
            }
            _ => return Err(Error::Stopped("a rank could not start".into())),
        };
        let rows = rank_rows(trainer.config.batch_size, ranks, rank).map_err(agreed)?;
        let layout = Layout::new(&trainer.model.config, ranks);
        let specs = param_specs(&trainer.model.config);
        let ranked = Ranked {
            comm,
            shard: zeroed(layout.shard_len()),
            layout,
            rows,
            specs,
            waits: Vec::new(),
            gathers: Vec::new(),
        };
        // Rank 0's optimizer holds all the moments (zero, or the checkpoint's): each rank
        // keeps its shard of them.
        let full = &trainer.optimizer;
        let mut shard = AdamW::shard(full.config, &ranked.specs, &ranked.layout.owned(rank));
        let root = rank == 0;
        shard.m = ranked.scatter_moments(root.then_some(full.m.as_slice()));
        shard.v = ranked.scatter_moments(root.then_some(full.v.as_slice()));
        shard.t = start.state.optimizer_step;
        trainer.optimizer = shard;
        (trainer.info.ranks, trainer.info.rank) = (ranks, rank);
        trainer.ranks = Some(ranked);
        Ok(trainer)
    }
}
