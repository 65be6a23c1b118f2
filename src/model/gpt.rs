//! The whole GPT-2: forward (embeddings → blocks → final LayerNorm → tied LM head → loss) and
//! its backward pass, op by op in reverse.

use super::activations::{Activations, GradActs};
use super::params::{init_params, num_params, Weights};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::ops::attention::{attention_backward, attention_forward, AttnShape};
use crate::ops::cross_entropy::{check_targets, cross_entropy_backward_inplace, cross_entropy_forward};
use crate::ops::dropout::{apply_mask, fill_mask};
use crate::ops::embedding::{embedding_backward, embedding_forward};
use crate::ops::gelu::{gelu_backward_inplace, gelu_forward};
use crate::ops::layernorm::{layernorm_backward, layernorm_forward};
use crate::ops::matmul::{linear_backward, linear_forward, lm_head_backward, lm_head_forward};
use crate::ops::{set_zero, zeroed};
use crate::rng::Rng;

/// A GPT-2 language model: its configuration, its parameters in one flat buffer, and (once
/// used) the gradient buffer and the activation buffers of the last batch shape.
pub struct Gpt {
    pub config: Config,
    /// All parameters, laid out by [`super::params::param_specs`].
    pub params: Vec<f32>,
    /// dloss/dparams in the same layout (empty until the first backward pass).
    pub grads: Vec<f32>,
    acts: Option<Activations>,
    grad_acts: Option<GradActs>,
}

impl Gpt {
    /// A freshly initialised model (GPT-2 initialisation, deterministic from `seed`).
    pub fn new(config: Config, seed: u64) -> Result<Self> {
        config.validate()?;
        let params = init_params(&config, seed);
        Ok(Gpt::from_params(config, params))
    }

    /// Wraps existing parameters (e.g. loaded from a checkpoint); `params` must follow the layout.
    pub fn from_params(config: Config, params: Vec<f32>) -> Self {
        assert_eq!(
            params.len(),
            num_params(&config),
            "parameter buffer does not match the config"
        );
        Gpt {
            config,
            params,
            grads: Vec::new(),
            acts: None,
            grad_acts: None,
        }
    }

    /// Named views of the parameters.
    pub fn weights(&self) -> Weights<&[f32]> {
        Weights::split(self.params.as_slice(), &self.config)
    }

    /// Logits of the last forward pass: [B, T, V]. (A backward pass turns them into gradients.)
    pub fn logits(&self) -> &[f32] {
        self.acts.as_ref().map_or(&[], |a| a.logits.as_slice())
    }

    /// The activations of the last forward pass (for inspection).
    pub fn activations(&self) -> Option<&Activations> {
        self.acts.as_ref()
    }

    /// Checks a (B, T) batch of token ids, and its targets if any, against the model.
    pub(super) fn check_batch(&self, tokens: &[u32], b: usize, t: usize, targets: Option<&[i32]>) -> Result<()> {
        if b == 0 || t == 0 {
            return Err(Error::Input("empty batch: B and T must be positive".into()));
        }
        if tokens.len() != b * t {
            return Err(Error::Input(format!(
                "expected B·T = {} token ids, got {}",
                b * t,
                tokens.len()
            )));
        }
        if t > self.config.n_positions {
            return Err(Error::Input(format!(
                "sequence of {t} tokens is longer than the context of {} positions",
                self.config.n_positions
            )));
        }
        if let Some(&bad) = tokens.iter().find(|&&id| id as usize >= self.config.vocab_size) {
            return Err(Error::Input(format!(
                "token id {bad} is outside the vocabulary [0, {})",
                self.config.vocab_size
            )));
        }
        if let Some(targets) = targets.filter(|targets| targets.len() != tokens.len()) {
            return Err(Error::Input(format!(
                "{} targets for {} tokens",
                targets.len(),
                tokens.len()
            )));
        }
        targets.map_or(Ok(()), |targets| check_targets(targets, self.config.vocab_size))
    }

    /// Forward pass over a batch `tokens` [B, T]. With `targets` [B, T] (ids, or
    /// [`crate::ops::cross_entropy::IGNORE_INDEX`]) returns the mean cross-entropy loss.
    /// Dropout is applied when `dropout_rng` is given and the config's dropout is positive.
    pub fn forward(
        &mut self,
        tokens: &[u32],
        b: usize,
        t: usize,
        targets: Option<&[i32]>,
        dropout_rng: Option<&mut Rng>,
    ) -> Result<Option<f32>> {
        self.check_batch(tokens, b, t, targets)?;
        let cfg = &self.config;
        let (c, v, n, eps) = (cfg.n_embd, cfg.vocab_size, b * t, cfg.layer_norm_epsilon);
        let p_drop = cfg.dropout;
        let mut rng = dropout_rng.filter(|_| p_drop > 0.0);
        let dropout = rng.is_some();
        if !matches!(&self.acts, Some(a) if a.b == b && a.t == t && a.dropout == dropout) {
            self.acts = None; // free the old buffers before allocating new ones
            self.acts = Some(Activations::new(cfg, b, t, dropout));
        }
        let acts = self.acts.as_mut().expect("just allocated");
        let w = Weights::split(self.params.as_slice(), cfg);
        let shape = AttnShape {
            b,
            t,
            c,
            n_head: cfg.n_head,
        };
        acts.tokens.copy_from_slice(tokens);

        // Token + position embeddings: encoded [N, C]
        embedding_forward(&mut acts.encoded, tokens, w.wte, w.wpe, t, c, 0);
        if let Some(rng) = rng.as_deref_mut() {
            fill_mask(&mut acts.emb_mask, p_drop, rng);
            apply_mask(&mut acts.encoded, &acts.emb_mask);
        }

        for l in 0..cfg.n_layer {
            let (done, rest) = acts.blocks.split_at_mut(l);
            let residual = if l == 0 { &acts.encoded } else { &done[l - 1].residual_3 };
            let (a, p) = (&mut rest[0], &w.blocks[l]);
            // Attention branch: x + drop(c_proj(attn(c_attn(ln_1(x)))))
            layernorm_forward(
                &mut a.ln_1,
                &mut a.ln_1_mean,
                &mut a.ln_1_rstd,
                residual,
                p.ln_1_w,
                p.ln_1_b,
                c,
                eps,
            );
            linear_forward(&mut a.qkv, &a.ln_1, p.c_attn_w, p.c_attn_b, n, c, 3 * c);
            let att_dropped = match rng.as_deref_mut() {
                Some(rng) => {
                    fill_mask(&mut a.att_dropped, p_drop, rng);
                    Some(a.att_dropped.as_mut_slice())
                }
                None => None,
            };
            attention_forward(&mut a.atty, &mut a.att, att_dropped, &a.qkv, shape);
            linear_forward(&mut a.residual_2, &a.atty, p.attn_proj_w, p.attn_proj_b, n, c, c);
            if let Some(rng) = rng.as_deref_mut() {
                fill_mask(&mut a.attn_mask, p_drop, rng);
                apply_mask(&mut a.residual_2, &a.attn_mask);
            }
            add_inplace(&mut a.residual_2, residual);
            // MLP branch: x + drop(c_proj(gelu(c_fc(ln_2(x)))))
            layernorm_forward(
                &mut a.ln_2,
                &mut a.ln_2_mean,
                &mut a.ln_2_rstd,
                &a.residual_2,
                p.ln_2_w,
                p.ln_2_b,
                c,
                eps,
            );
            linear_forward(&mut a.fch, &a.ln_2, p.c_fc_w, p.c_fc_b, n, c, cfg.n_inner);
            gelu_forward(&mut a.fch_gelu, Some(&mut a.fch_tanh), &a.fch);
            linear_forward(
                &mut a.residual_3,
                &a.fch_gelu,
                p.mlp_proj_w,
                p.mlp_proj_b,
                n,
                cfg.n_inner,
                c,
            );
            if let Some(rng) = rng.as_deref_mut() {
                fill_mask(&mut a.mlp_mask, p_drop, rng);
                apply_mask(&mut a.residual_3, &a.mlp_mask);
            }
            add_inplace(&mut a.residual_3, &a.residual_2);
        }

        // Final LayerNorm, then the tied LM head: logits [N, V] = ln_f [N, C] · wteᵀ [C, V]
        let last = &acts.blocks[cfg.n_layer - 1].residual_3;
        layernorm_forward(
            &mut acts.ln_f,
            &mut acts.ln_f_mean,
            &mut acts.ln_f_rstd,
            last,
            w.ln_f_w,
            w.ln_f_b,
            c,
            eps,
        );
        lm_head_forward(&mut acts.logits, &acts.ln_f, w.wte, n, c, v);

        acts.targets.clear();
        acts.target_count = 0;
        let Some(targets) = targets else { return Ok(None) };
        let (loss, count) = cross_entropy_forward(&mut acts.lse, &mut acts.row_loss, &acts.logits, targets, v)?;
        acts.targets.extend_from_slice(targets);
        acts.target_count = count;
        Ok(Some(loss))
    }

    /// Sets every gradient to zero (allocating the gradient buffer on first use).
    pub fn zero_grad(&mut self) {
        if self.grads.len() != self.params.len() {
            self.grads = zeroed(self.params.len());
        } else {
            set_zero(&mut self.grads);
        }
    }

    /// Backward pass of the last forward pass (which must have had targets): adds
    /// `loss_scale · dloss/dparams` to [`Gpt::grads`]. Use `loss_scale = 1 / steps` to average
    /// over gradient-accumulation steps. The logits buffer is consumed (it holds dlogits after).
    pub fn backward(&mut self, loss_scale: f32) -> Result<()> {
        let Some(acts) = self.acts.as_mut().filter(|a| !a.targets.is_empty()) else {
            return Err(Error::Input("backward needs a forward pass with targets first".into()));
        };
        if self.grads.len() != self.params.len() {
            self.grads = zeroed(self.params.len());
        }
        let cfg = &self.config;
        let (b, t) = (acts.b, acts.t);
        let (c, v, f, n) = (cfg.n_embd, cfg.vocab_size, cfg.n_inner, b * t);
        if !matches!(&self.grad_acts, Some(g) if g.b == b && g.t == t) {
            self.grad_acts = None;
            self.grad_acts = Some(GradActs::new(cfg, b, t));
        }
        let d = self.grad_acts.as_mut().expect("just allocated");
        let w = Weights::split(self.params.as_slice(), cfg);
        let mut g = Weights::split(self.grads.as_mut_slice(), cfg);
        let shape = AttnShape {
            b,
            t,
            c,
            n_head: cfg.n_head,
        };
        let keep_scale = 1.0 / (1.0 - cfg.dropout);

        // Loss → logits: dlogits = (softmax - onehot) · loss_scale / count, in place of the logits.
        let scale = if acts.target_count == 0 {
            0.0
        } else {
            loss_scale / acts.target_count as f32
        };
        cross_entropy_backward_inplace(&mut acts.logits, &acts.lse, &acts.targets, v, scale);
        let dlogits = &acts.logits;
        // LM head: logits = ln_f · wteᵀ  ⇒  dln_f = dlogits · wte, dwte += dlogitsᵀ · ln_f
        lm_head_backward(&mut d.ln, g.wte, dlogits, &acts.ln_f, w.wte, n, c, v);
        // Final LayerNorm: the residual-stream gradient starts here.
        d.residual.fill(0.0);
        let last = &acts.blocks[cfg.n_layer - 1].residual_3;
        layernorm_backward(
            &mut d.residual,
            g.ln_f_w,
            g.ln_f_b,
            &d.ln,
            last,
            &acts.ln_f_mean,
            &acts.ln_f_rstd,
            w.ln_f_w,
            c,
        );

        for l in (0..cfg.n_layer).rev() {
            let a = &acts.blocks[l];
            let residual = if l == 0 {
                &acts.encoded
            } else {
                &acts.blocks[l - 1].residual_3
            };
            let (p, gp) = (&w.blocks[l], &mut g.blocks[l]);
            // MLP branch. residual_3 = residual_2 + drop(c_proj(gelu(fch))): the identity path
            // passes d.residual through unchanged; the branch sees d.residual ⊙ mask.
            let branch_grad = masked(&d.residual, &a.mlp_mask, &mut d.ln);
            linear_backward(
                &mut d.fch,
                gp.mlp_proj_w,
                gp.mlp_proj_b,
                branch_grad,
                &a.fch_gelu,
                p.mlp_proj_w,
                n,
                f,
                c,
            );
            gelu_backward_inplace(&mut d.fch, &a.fch, &a.fch_tanh);
            linear_backward(&mut d.ln, gp.c_fc_w, gp.c_fc_b, &d.fch, &a.ln_2, p.c_fc_w, n, c, f);
            layernorm_backward(
                &mut d.residual,
                gp.ln_2_w,
                gp.ln_2_b,
                &d.ln,
                &a.residual_2,
                &a.ln_2_mean,
                &a.ln_2_rstd,
                p.ln_2_w,
                c,
            );
            // Attention branch. residual_2 = residual + drop(attn_proj(atty)).
            let branch_grad = masked(&d.residual, &a.attn_mask, &mut d.ln);
            linear_backward(
                &mut d.atty,
                gp.attn_proj_w,
                gp.attn_proj_b,
                branch_grad,
                &a.atty,
                p.attn_proj_w,
                n,
                c,
                c,
            );
            let dropped = (!a.att_dropped.is_empty()).then_some((a.att_dropped.as_slice(), keep_scale));
            attention_backward(&mut d.qkv, &mut d.att, &d.atty, &a.qkv, &a.att, dropped, shape);
            linear_backward(
                &mut d.ln,
                gp.c_attn_w,
                gp.c_attn_b,
                &d.qkv,
                &a.ln_1,
                p.c_attn_w,
                n,
                c,
                3 * c,
            );
            layernorm_backward(
                &mut d.residual,
                gp.ln_1_w,
                gp.ln_1_b,
                &d.ln,
                residual,
                &a.ln_1_mean,
                &a.ln_1_rstd,
                p.ln_1_w,
                c,
            );
        }

        // Embeddings: encoded = drop(wte[tokens] + wpe[positions]).
        let demb = masked(&d.residual, &acts.emb_mask, &mut d.ln);
        embedding_backward(g.wte, g.wpe, demb, &acts.tokens, t, c);
        acts.targets.clear(); // the logits are spent: a second backward needs a new forward
        Ok(())
    }
}

/// x += y, elementwise (a residual connection).
pub(super) fn add_inplace(x: &mut [f32], y: &[f32]) {
    use rayon::prelude::*;
    x.par_chunks_mut(4096)
        .zip(y.par_chunks(4096))
        .for_each(|(x, y)| x.iter_mut().zip(y).for_each(|(a, &b)| *a += b));
}

/// The gradient that reaches a dropped-out branch: `grad ⊙ mask` written into `scratch`, or
/// `grad` itself when there is no dropout (empty mask).
fn masked<'a>(grad: &'a [f32], mask: &[f32], scratch: &'a mut [f32]) -> &'a [f32] {
    if mask.is_empty() {
        return grad;
    }
    scratch
        .iter_mut()
        .zip(grad.iter().zip(mask))
        .for_each(|(s, (&g, &m))| *s = g * m);
    scratch
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::cross_entropy::IGNORE_INDEX;
    use crate::ops::test_util::check_gradient;

    /// A tiny model with weights large enough that every gradient is clearly non-zero.
    fn tiny(dropout: f32) -> Gpt {
        let mut cfg = Config::new(13, 8, 8, 2, 2);
        cfg.dropout = dropout;
        let mut model = Gpt::new(cfg, 1).unwrap();
        let mut rng = Rng::new(2);
        model.params.iter_mut().for_each(|p| *p += 0.3 * rng.normal());
        model
    }

    /// Whole-model finite-difference check of every parameter's gradient.
    fn check_model_gradients(dropout: f32) {
        let mut model = tiny(dropout);
        let (b, t) = (2, 6);
        let tokens: Vec<u32> = (0..b * t).map(|i| (i * 5 % 13) as u32).collect();
        let mut targets: Vec<i32> = (0..b * t).map(|i| (i * 7 % 13) as i32).collect();
        targets[3] = IGNORE_INDEX;
        // The same seed gives the same dropout masks in every forward pass.
        let config = model.config.clone();
        let loss_at = |params: &[f32]| {
            let mut m = Gpt::from_params(config.clone(), params.to_vec());
            vec![m
                .forward(&tokens, b, t, Some(&targets), Some(&mut Rng::new(9)))
                .unwrap()
                .unwrap()]
        };
        model.zero_grad();
        model
            .forward(&tokens, b, t, Some(&targets), Some(&mut Rng::new(9)))
            .unwrap();
        model.backward(1.0).unwrap();
        check_gradient("whole model", &model.params, &model.grads, &[1.0], loss_at);
    }

    #[test]
    fn whole_model_gradients_match_finite_differences() {
        check_model_gradients(0.0);
    }

    #[test]
    fn whole_model_gradients_match_finite_differences_with_dropout() {
        check_model_gradients(0.2);
    }

    #[test]
    fn gradient_accumulation_scales_and_adds() {
        let mut model = tiny(0.0);
        let tokens = [1u32, 2, 3, 4];
        let targets = [2, 3, 4, 5];
        model.zero_grad();
        model.forward(&tokens, 1, 4, Some(&targets), None).unwrap();
        model.backward(1.0).unwrap();
        let once = model.grads.clone();
        model.zero_grad();
        for _ in 0..2 {
            model.forward(&tokens, 1, 4, Some(&targets), None).unwrap();
            model.backward(0.5).unwrap();
        }
        for (a, b) in once.iter().zip(&model.grads) {
            assert!((a - b).abs() <= 1e-6 * a.abs().max(1.0));
        }
    }

    #[test]
    fn backward_after_a_batch_of_another_shape_with_the_same_row_count() {
        // (B, T) = (4, 2) then (1, 8): same B·T, but the attention scratch [B, NH, T, T] grows.
        let mut model = tiny(0.0);
        for (b, t) in [(4, 2), (1, 8)] {
            let tokens = vec![1u32; b * t];
            let targets = vec![2i32; b * t];
            model.zero_grad();
            model.forward(&tokens, b, t, Some(&targets), None).unwrap();
            model.backward(1.0).unwrap();
        }
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let mut model = tiny(0.0);
        assert!(model
            .forward(&[1, 2, 13], 1, 3, None, None)
            .unwrap_err()
            .to_string()
            .contains("token id 13"));
        assert!(model
            .forward(&[0; 9], 1, 9, None, None)
            .unwrap_err()
            .to_string()
            .contains("longer than the context"));
        assert!(model.forward(&[0; 3], 1, 4, None, None).is_err());
        assert!(model.forward(&[0; 4], 1, 4, Some(&[0; 3]), None).is_err());
        assert!(model.forward(&[0; 4], 1, 4, Some(&[0, 1, 2, 99]), None).is_err());
        model.forward(&[0; 4], 1, 4, None, None).unwrap();
        assert!(model.backward(1.0).is_err(), "backward without targets");
        let err = Gpt::new(Config::new(10, 8, 10, 1, 3), 0).err().unwrap().to_string();
        assert!(err.contains("divisible"), "{err}");
    }
}
