//! How fast the ranks of an mpirun exchange gradients: the median time of an all-reduce, a
//! reduce-scatter and an all-gather of f32 buffers, from one GPT-2 block's parameters to the
//! whole of GPT-2 124M, and the bandwidth they reach ("bus" bandwidth: the bytes each rank sends
//! in a ring, 2(N-1)/N · size for an all-reduce and (N-1)/N · size for the others, per second).
//!
//! ```text
//! cargo build --release --features mpi --example mpi_bandwidth
//! mpirun -np 2 target/release/examples/mpi_bandwidth
//! ```

use gpt2::bench::median;
use gpt2::config::Config;
use gpt2::dist::mpi::MpiRanks;
use gpt2::dist::Collective;
use gpt2::model::num_params;
use gpt2::model::params::block_len;
use std::time::Instant;

const ROUNDS: usize = 5;

fn main() -> gpt2::Result<()> {
    let ranks = MpiRanks::init()?;
    let n = ranks.ranks();
    let gpt2 = Config::preset("gpt2")?;
    let sizes = [("one GPT-2 block", block_len(&gpt2)), ("GPT-2 124M", num_params(&gpt2))];
    if ranks.rank() == 0 {
        println!("{n} ranks; medians of {ROUNDS} rounds");
    }
    for (name, len) in sizes {
        let len = len / n * n;
        let send = vec![1.0f32; len];
        let (mut whole, mut part) = (vec![0.0f32; len], vec![0.0f32; len / n]);
        let time = |op: &mut dyn FnMut()| {
            let mut seconds: Vec<f64> = (0..ROUNDS)
                .map(|_| {
                    let start = Instant::now();
                    op();
                    start.elapsed().as_secs_f64()
                })
                .collect();
            median(&mut seconds)
        };
        let all_reduce = time(&mut || drop(ranks.start_all_sum(&send, &mut whole)));
        let reduce_scatter = time(&mut || drop(ranks.start_reduce_scatter(&send, &mut part)));
        let all_gather = time(&mut || ranks.all_gather(&send[..len / n], &mut whole));
        if ranks.rank() == 0 {
            let bytes = 4.0 * len as f64;
            let ring = (n - 1) as f64 / n as f64;
            for (op, seconds, sent) in [
                ("all-reduce", all_reduce, 2.0 * ring * bytes),
                ("reduce-scatter", reduce_scatter, ring * bytes),
                ("all-gather", all_gather, ring * bytes),
            ] {
                println!(
                    "{name} ({:.1} MB): {op:<14} {:8.1} ms  {:6.2} GB/s",
                    bytes / 1e6,
                    seconds * 1e3,
                    sent / seconds / 1e9
                );
            }
        }
    }
    Ok(())
}
