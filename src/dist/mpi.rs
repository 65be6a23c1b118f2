//! The ranks of an `mpirun`, through Open MPI (the `mpi` crate, rsmpi): [`Collective`] over
//! MPI's world communicator, and the communicator of the ranks on this machine.

use super::{Collective, Pending};
use crate::error::{Error, Result};
use mpi::collective::SystemOperation;
use mpi::datatype::PartitionMut;
use mpi::environment::Universe;
use mpi::raw::AsRaw;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;
use mpi::{ffi, Count, Threading};
use std::marker::PhantomData;

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

/// A non-blocking operation of MPI, with the lifetime of the buffers it uses.
struct Request<'a> {
    raw: ffi::MPI_Request,
    buffers: PhantomData<&'a mut [f32]>,
}

impl Request<'_> {
    fn new() -> Self {
        Request {
            // SAFETY: reads a constant of the MPI library.
            raw: unsafe { ffi::RSMPI_REQUEST_NULL },
            buffers: PhantomData,
        }
    }
}

impl Pending for Request<'_> {
    fn done(&mut self) -> bool {
        let mut flag = 0;
        // SAFETY: `raw` is a request that MPI started (or MPI_REQUEST_NULL once it ended).
        unsafe { ffi::MPI_Test(&mut self.raw, &mut flag, ffi::RSMPI_STATUS_IGNORE) };
        flag != 0
    }
}

impl Drop for Request<'_> {
    fn drop(&mut self) {
        // SAFETY: as in done; MPI_Wait returns at once for MPI_REQUEST_NULL.
        unsafe { ffi::MPI_Wait(&mut self.raw, ffi::RSMPI_STATUS_IGNORE) };
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

    fn start_all_sum<'a>(&'a self, send: &'a [f32], recv: &'a mut [f32]) -> Box<dyn Pending + 'a> {
        assert_eq!(send.len(), recv.len(), "a sum's buffers");
        let mut request = Request::new();
        // SAFETY: the buffers are valid for their lengths and stay borrowed by the returned
        // request until it has ended (its drop waits); the datatype and operation are f32 and
        // a sum, on the world communicator.
        unsafe {
            ffi::MPI_Iallreduce(
                send.as_ptr().cast(),
                recv.as_mut_ptr().cast(),
                send.len() as Count,
                f32::equivalent_datatype().as_raw(),
                SystemOperation::sum().as_raw(),
                self.world.as_raw(),
                &mut request.raw,
            );
        }
        Box::new(request)
    }

    fn start_reduce_scatter<'a>(&'a self, send: &'a [f32], recv: &'a mut [f32]) -> Box<dyn Pending + 'a> {
        assert_eq!(send.len(), recv.len() * self.ranks(), "a reduce-scatter's buffers");
        let mut request = Request::new();
        // SAFETY: as in start_all_sum.
        unsafe {
            ffi::MPI_Ireduce_scatter_block(
                send.as_ptr().cast(),
                recv.as_mut_ptr().cast(),
                recv.len() as Count,
                f32::equivalent_datatype().as_raw(),
                SystemOperation::sum().as_raw(),
                self.world.as_raw(),
                &mut request.raw,
            );
        }
        Box::new(request)
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
