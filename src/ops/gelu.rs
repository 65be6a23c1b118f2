//! GELU, tanh approximation (GPT-2's "gelu_new"):
//! `gelu(x) = 0.5 x (1 + tanh(k (x + 0.044715 x³)))`, k = sqrt(2/π).

use rayon::prelude::*;

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const CHUNK: usize = super::MIN_TASK_ELEMENTS;

/// u = k (x + 0.044715 x³), the argument of tanh.
#[inline(always)]
fn tanh_arg(x: f32) -> f32 {
    SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)
}

/// Forward, elementwise: out = gelu(inp). When training, `tanh_u` [same shape] receives
/// tanh(u) of every entry, so that the backward pass needs no second tanh (the costly part).
pub fn gelu_forward(out: &mut [f32], tanh_u: Option<&mut [f32]>, inp: &[f32]) {
    let out = out.par_chunks_mut(CHUNK).zip(inp.par_chunks(CHUNK));
    match tanh_u {
        Some(tanh_u) => out.zip(tanh_u.par_chunks_mut(CHUNK)).for_each(|((out, inp), tanh_u)| {
            for ((o, t), &x) in out.iter_mut().zip(tanh_u).zip(inp) {
                *t = super::tanh(tanh_arg(x));
                *o = 0.5 * x * (1.0 + *t);
            }
        }),
        None => out.for_each(|(out, inp)| {
            for (o, &x) in out.iter_mut().zip(inp) {
                *o = 0.5 * x * (1.0 + super::tanh(tanh_arg(x)));
            }
        }),
    }
}

/// Backward, in place: `dout` (the gradient w.r.t. gelu's output) becomes the gradient w.r.t.
/// its input `inp`, given `tanh_u` from the forward pass. With t = tanh(u):
/// `gelu'(x) = 0.5 (1 + t) + 0.5 x (1 - t²) · k (1 + 3 · 0.044715 x²)`.
pub fn gelu_backward_inplace(dout: &mut [f32], inp: &[f32], tanh_u: &[f32]) {
    dout.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK).zip(tanh_u.par_chunks(CHUNK)))
        .for_each(|(d, (inp, tanh_u))| {
            for ((d, &x), &t) in d.iter_mut().zip(inp).zip(tanh_u) {
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
        let (mut out, mut tanh_u) = (vec![0.0; x.len()], vec![0.0; x.len()]);
        gelu_forward(&mut out, Some(&mut tanh_u), &x);
        let mut grad = dout.clone();
        gelu_backward_inplace(&mut grad, &x, &tanh_u);
        check_gradient("gelu", &x, &grad, &dout, |x| {
            let mut out = vec![0.0; x.len()];
            gelu_forward(&mut out, None, x);
            out
        });
    }

    #[test]
    fn gelu_known_values() {
        let mut out = [0.0; 3];
        gelu_forward(&mut out, None, &[0.0, 1.0, -1.0]);
        // torch.nn.functional.gelu(x, approximate="tanh")
        assert!((out[0] - 0.0).abs() < 1e-7 && (out[1] - 0.841_192).abs() < 1e-5 && (out[2] + 0.158_808).abs() < 1e-5);
    }
}
