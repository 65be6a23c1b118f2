//! The ranks of an `mpirun`, through Open MPI (the `mpi` crate, rsmpi): [`Collective`] over
//! MPI's world communicator, and the communicator of the ranks on this machine.

use super::Collective;
use crate::error::{Error, Result};
use mpi::collective::SystemOperation;
use mpi::datatype::PartitionMut;
use mpi::environment::Universe;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;
use mpi::{Count, Threading};

/// MPI, started for this process: the world and this machine's ranks. MPI ends when it drops.
pub struct MpiRanks {
    world: SimpleCommunicator,
    machine: SimpleCommunicator,
    // Declared last: dropped (MPI_Finalize) after the communicators.
    _universe: Universe,
}

impl MpiRanks {
    /// Starts MPI. Every MPI call must come from this thread (MPI_THREAD_FUNNELED).
    pub fn init() -> Result<Self> {
        let (universe, _) = mpi::initialize_with_threading(Threading::Funneled)
            .ok_or_else(|| Error::Input("MPI was already started in this process".into()))?;
        let world = universe.world();
        let machine = world.split_shared(world.rank());
        Ok(MpiRanks {
            world,
            machine,
            _universe: universe,
        })
    }
}

/// Ends every rank of the run at once (MPI_Abort): a rank that stops alone would leave the
/// others waiting in their next collective operation. MPI must have been started.
pub fn abort(code: i32) -> ! {
    SimpleCommunicator::world().abort(code)
}

impl Collective for MpiRanks {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn ranks(&self) -> usize {
        self.world.size() as usize
    }

    fn machine_rank(&self) -> usize {
        self.machine.rank() as usize
    }

    fn machine_barrier(&self) {
        self.machine.barrier();
    }

    fn broadcast_bytes(&self, bytes: &mut Vec<u8>) {
        let root = self.world.process_at_rank(0);
        let mut len = bytes.len() as u64;
        root.broadcast_into(&mut len);
        bytes.resize(len as usize, 0);
        root.broadcast_into(&mut bytes[..]);
    }

    fn broadcast(&self, values: &mut [f32]) {
        self.world.process_at_rank(0).broadcast_into(values);
    }

    fn gather_bytes(&self, bytes: &[u8]) -> Option<Vec<Vec<u8>>> {
        // Each message goes with a leading byte: the address of an empty one (1, as Rust makes
        // it) would be Open MPI's MPI_IN_PLACE.
        let bytes = &[&[0u8], bytes].concat()[..];
        let root = self.world.process_at_rank(0);
        let len = bytes.len() as Count;
        if self.rank() != 0 {
            root.gather_into(&len);
            root.gather_varcount_into(bytes);
            return None;
        }
        let mut lens = vec![0 as Count; self.ranks()];
        root.gather_into_root(&len, &mut lens[..]);
        let starts: Vec<Count> = lens
            .iter()
            .scan(0, |start, &len| {
                *start += len;
                Some(*start - len)
            })
            .collect();
        let mut all = vec![0u8; lens.iter().sum::<Count>() as usize];
        let mut parts = PartitionMut::new(&mut all[..], &lens[..], &starts[..]);
        root.gather_varcount_into_root(bytes, &mut parts);
        Some(
            lens.iter()
                .zip(&starts)
                .map(|(&len, &start)| all[start as usize + 1..(start + len) as usize].to_vec())
                .collect(),
        )
    }

    fn all_gather_u64(&self, value: u64) -> Vec<u64> {
        let mut all = vec![0u64; self.ranks()];
        self.world.all_gather_into(&value, &mut all[..]);
        all
    }

    fn all_sum_f64(&self, values: &[f64]) -> Vec<f64> {
        let mut sums = vec![0.0; values.len()];
        self.world
            .all_reduce_into(values, &mut sums[..], SystemOperation::sum());
        sums
    }

    fn all_sum(&self, send: &[f32], recv: &mut [f32]) {
        self.world.all_reduce_into(send, recv, SystemOperation::sum());
    }

    fn reduce_scatter(&self, send: &[f32], recv: &mut [f32]) {
        self.world.reduce_scatter_block_into(send, recv, SystemOperation::sum());
    }

    fn all_gather(&self, send: &[f32], recv: &mut [f32]) {
        self.world.all_gather_into(send, recv);
    }

    fn gather(&self, send: &[f32], recv: Option<&mut [f32]>) {
        let root = self.world.process_at_rank(0);
        match recv {
            Some(recv) => root.gather_into_root(send, recv),
            None => root.gather_into(send),
        }
    }

    fn scatter(&self, send: Option<&[f32]>, recv: &mut [f32]) {
        let root = self.world.process_at_rank(0);
        match send {
            Some(send) => root.scatter_into_root(send, recv),
            None => root.scatter_into(recv),
        }
    }
}
