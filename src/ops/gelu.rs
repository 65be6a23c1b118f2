//! GELU, tanh approximation (GPT-2's "gelu_new"):
//! `gelu(x) = 0.5 x (1 + tanh(k (x + 0.044715 x³)))`, k = sqrt(2/π).

use rayon::prelude::*;

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const CHUNK: usize = 4096;

/// Forward, elementwise: out = gelu(inp).
pub fn gelu_forward(out: &mut [f32], inp: &[f32]) {
    out.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK))
        .for_each(|(out, inp)| {
            for (o, &x) in out.iter_mut().zip(inp) {
                *o = 0.5 * x * (1.0 + super::tanh(SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)));
            }
        });
}

/// Backward, in place: `dout` (the gradient w.r.t. gelu's output) becomes the gradient w.r.t.
/// its input. With u = k (x + 0.044715 x³):
/// `gelu'(x) = 0.5 (1 + tanh u) + 0.5 x (1 - tanh² u) · k (1 + 3 · 0.044715 x²)`.
pub fn gelu_backward_inplace(dout: &mut [f32], inp: &[f32]) {
    dout.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK))
        .for_each(|(d, inp)| {
            for (d, &x) in d.iter_mut().zip(inp) {
                let t = super::tanh(SQRT_2_OVER_PI * (x + 0.044715 * x * x * x));
                let du_dx = SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * x * x);
                *d *= 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du_dx;
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_util::{check_gradient, random_vec};

    #[test]
    fn gelu_gradient_matches_finite_differences() {
        let x: Vec<f32> = random_vec(50, 1).iter().map(|v| v * 3.0).collect();
        let dout = random_vec(50, 2);
        let mut grad = dout.clone();
        gelu_backward_inplace(&mut grad, &x);
        check_gradient("gelu", &x, &grad, &dout, |x| {
            let mut out = vec![0.0; x.len()];
            gelu_forward(&mut out, x);
            out
        });
    }

    #[test]
    fn gelu_known_values() {
        let mut out = [0.0; 3];
        gelu_forward(&mut out, &[0.0, 1.0, -1.0]);
        // torch.nn.functional.gelu(x, approximate="tanh")
        assert!((out[0] - 0.0).abs() < 1e-7 && (out[1] - 0.841_192).abs() < 1e-5 && (out[2] + 0.158_808).abs() < 1e-5);
    }
}
