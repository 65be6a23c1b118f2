//! The numeric kernels of GPT-2. Each op's forward and backward sit side by side, with the
//! maths and the tensor shapes in comments; all buffers are row-major flat `f32` slices.
//!
//! Backward functions *accumulate* (`+=`) into parameter gradients, so gradient accumulation
//! over micro-batches is free; gradients of activations are written as the op documents.

pub mod adamw;
pub mod attention;
pub mod cross_entropy;
pub mod dropout;
pub mod embedding;
pub mod gelu;
pub mod layernorm;
pub mod matmul;
pub mod matvec;

/// Rows handled per rayon task in row-parallel loops: large enough to amortise scheduling,
/// small enough to balance two to a few dozen cores.
pub(crate) const ROWS_PER_TASK: usize = 8;

#[cfg(test)]
pub(crate) mod test_util {
    use crate::rng::Rng;

    pub fn random_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        (0..n).map(|_| rng.normal()).collect()
    }

    /// Finite-difference check of a backward pass. With L(x) = Σ dout ⊙ f(x), the analytic
    /// gradient `grad` must equal (L(x + h e_i) - L(x - h e_i)) / 2h for every coordinate i.
    pub fn check_gradient(name: &str, x: &[f32], grad: &[f32], dout: &[f32], f: impl Fn(&[f32]) -> Vec<f32>) {
        assert_eq!(x.len(), grad.len(), "{name}: gradient length");
        let loss = |x: &[f32]| -> f64 { f(x).iter().zip(dout).map(|(&y, &d)| y as f64 * d as f64).sum() };
        let h = 1e-2f32;
        let mut x = x.to_vec();
        for i in 0..x.len() {
            let saved = x[i];
            x[i] = saved + h;
            let plus = loss(&x);
            x[i] = saved - h;
            let minus = loss(&x);
            x[i] = saved;
            let numeric = (plus - minus) / (2.0 * h as f64);
            let analytic = grad[i] as f64;
            let tolerance = 2e-3 + 1e-2 * analytic.abs().max(numeric.abs());
            assert!(
                (numeric - analytic).abs() <= tolerance,
                "{name}[{i}]: analytic {analytic} vs finite difference {numeric}"
            );
        }
    }
}
