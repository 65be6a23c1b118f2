//! The matrix products of a GPT-2 124M training step (B·T = 2048 rows), in f32 (faer) and in
//! bf16 with f32 sums (`gemm_bf16`), measured in the same run:
//!
//!     cargo bench --bench matmul [-- --rows N --runs R --only TEXT]
//!
//! Each product in the layouts training uses: forward `x·W`, backward `dy·Wᵀ` and `xᵀ·dy`;
//! the LM head `x·wteᵀ`, `dlogits·wte`, `dlogitsᵀ·x`. f32 and bf16 run in turn, R times after
//! a warm-up: GFLOP/s = 2·m·k·n / median time, and the median of the R ratios; all threads of
//! the machine.

use faer::Par;
use gpt2::ops::matmul::gemm;
use gpt2::ops::matmul_bf16::{gemm_bf16, TileKernel};
use std::time::Instant;

/// Times `f32_product` and `bf16_product` in turn, `runs` times after a warm-up of each: the
/// median of each one's times and the median of the runs' ratios f32 / bf16 (on a shared
/// machine the ratio of two neighbouring runs drifts far less than either time).
fn paired_medians(runs: usize, mut f32_product: impl FnMut(), mut bf16_product: impl FnMut()) -> (f64, f64, f64) {
    let time = |f: &mut dyn FnMut()| {
        let start = Instant::now();
        f();
        start.elapsed().as_secs_f64()
    };
    time(&mut f32_product);
    time(&mut bf16_product);
    let (mut f32_s, mut bf16_s, mut ratios) = (vec![], vec![], vec![]);
    for _ in 0..runs {
        f32_s.push(time(&mut f32_product));
        bf16_s.push(time(&mut bf16_product));
        ratios.push(f32_s.last().unwrap() / bf16_s.last().unwrap());
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    (median(f32_s), median(bf16_s), median(ratios))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1)?.parse().ok())
            .unwrap_or(default)
    };
    let (rows, runs) = (flag("--rows", 2048), flag("--runs", 5));
    // --only TEXT: the products whose name contains TEXT
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let (c, v) = (768, 50257);
    let kernel = TileKernel::best();
    println!(
        "bf16 micro-kernel: {kernel:?}; {} threads; {rows} rows",
        rayon::current_num_threads()
    );
    // (name, m, k, n, a_t, b_t)
    let products = [
        ("c_attn x·W", rows, c, 3 * c, false, false),
        ("c_attn dy·Wᵀ", rows, 3 * c, c, false, true),
        ("c_attn xᵀ·dy", c, rows, 3 * c, true, false),
        ("c_fc x·W", rows, c, 4 * c, false, false),
        ("mlp.c_proj x·W", rows, 4 * c, c, false, false),
        ("attn.c_proj x·W", rows, c, c, false, false),
        ("lm head x·wteᵀ", rows, c, v, false, true),
        ("lm head dlogits·wte", rows, v, c, false, false),
        ("lm head dlogitsᵀ·x", v, rows, c, true, false),
    ];
    let (mut total_f32, mut total_bf16) = (0.0, 0.0);
    println!(
        "{:<22} {:>6} {:>6} {:>6} {:>12} {:>12} {:>7}",
        "product", "m", "k", "n", "f32 GFLOP/s", "bf16 GFLOP/s", "ratio"
    );
    for (name, m, k, n, a_t, b_t) in products {
        if only.as_ref().is_some_and(|only| !name.contains(only.as_str())) {
            continue;
        }
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3).collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 104729 % 1000) as f32 - 500.0) * 1e-3)
            .collect();
        let (mut out_f32, mut out_bf16) = (vec![0.0f32; m * n], vec![0.0f32; m * n]);
        let (f32_s, bf16_s, ratio) = paired_medians(
            runs,
            || gemm(&mut out_f32, false, &a, a_t, &b, b_t, m, k, n, Par::rayon(0)),
            || gemm_bf16(&mut out_bf16, false, &a, a_t, &b, b_t, m, k, n, Par::rayon(0), kernel),
        );
        let gflop = 2.0 * (m * k * n) as f64 / 1e9;
        total_f32 += f32_s;
        total_bf16 += bf16_s;
        println!(
            "{name:<22} {m:>6} {k:>6} {n:>6} {:>12.1} {:>12.1} {ratio:>6.2}x",
            gflop / f32_s,
            gflop / bf16_s
        );
    }
    println!(
        "all products: f32 {total_f32:.3} s, bf16 {total_bf16:.3} s, {:.2}x",
        total_f32 / total_bf16
    );
}
