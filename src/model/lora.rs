//! LoRA adapters for GPT-2 (Hu et al., 2021), laid out as Hugging Face PEFT lays them out: for
//! each block and each targeted linear layer, A [r, in] (random, as PEFT initialises it) and
//! B [out, r] (zero, so a new adapter leaves the model unchanged), scaled by s = alpha / r.
//!
//! A [`Gpt`] that carries an adapter adds it in every pass (see [`crate::ops::lora`]) and, in
//! training, computes the adapter's gradients only: the base weights stay frozen and shared,
//! with no gradients and no optimizer state. [`Lora::merge_into`] folds an adapter into the base
//! weights (`W += s · Aᵀ Bᵀ` in GPT-2's [in, out] layout), as PEFT's `merge_and_unload` does.
//!
//! An adapter may also train the token embedding `wte` in full (PEFT's `modules_to_save`): a
//! copy of the base's, which the model then reads in place of the base's both as its input
//! embedding and as its tied LM head. A small model's embedding, fit to its pretraining text,
//! can limit what the low-rank pairs learn on a new task.

use super::params::{BlockWeights, Splittable, TensorSpec, Weights};
use super::Gpt;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::ops::dropout::{Dropout, Site};
use crate::ops::lora::{lora_backward, lora_forward, LoraShape, LowRank};
use crate::ops::matmul::{all_threads, gemm};
use crate::rng::Rng;
use std::cell::Cell;

/// A linear layer of a block that an adapter can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// `attn.c_attn`: the fused query, key, value projection, C → 3C.
    CAttn,
    /// `attn.c_proj`: the attention output projection, C → C.
    AttnCProj,
    /// `mlp.c_fc`: the MLP's first layer, C → F.
    CFc,
    /// `mlp.c_proj`: the MLP's second layer, F → C.
    MlpCProj,
}

impl Target {
    pub const ALL: [Target; 4] = [Target::CAttn, Target::AttnCProj, Target::CFc, Target::MlpCProj];

    /// The name in `--lora-targets` and PEFT's `target_modules`.
    pub fn name(self) -> &'static str {
        ["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"][self as usize]
    }

    /// The layer's path inside a block, as tensor names spell it.
    pub fn module(self) -> &'static str {
        ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"][self as usize]
    }

    /// (in, out) features of the layer.
    pub fn dims(self, cfg: &Config) -> (usize, usize) {
        let (c, f) = (cfg.n_embd, cfg.n_inner);
        [(c, 3 * c), (c, c), (c, f), (f, c)][self as usize]
    }

    /// The layer's weight [in, out] among a block's weights.
    fn weight<'a>(self, block: &'a mut BlockWeights<&mut [f32]>) -> &'a mut [f32] {
        match self {
            Target::CAttn => block.attn.c_attn_w,
            Target::AttnCProj => block.attn.c_proj_w,
            Target::CFc => block.mlp.c_fc_w,
            Target::MlpCProj => block.mlp.c_proj_w,
        }
    }
}

/// Targets from a comma-separated list of names (`c_proj` alone means both projections, as in
/// PEFT, where a name matches every module whose path ends with it); sorted, without repeats.
pub fn parse_targets(text: &str) -> Result<Vec<Target>> {
    let mut targets = Vec::new();
    for name in text.split(',').map(str::trim) {
        match name {
            "c_proj" => targets.extend([Target::AttnCProj, Target::MlpCProj]),
            _ => targets.push(
                Target::ALL
                    .into_iter()
                    .find(|t| name == t.name() || name == t.module())
                    .ok_or_else(|| {
                        let valid: Vec<&str> = Target::ALL.iter().map(|t| t.name()).collect();
                        Error::Config(format!(
                            "unknown LoRA target {name:?}: the valid ones are {} (and c_proj for both projections)",
                            valid.join(", ")
                        ))
                    })?,
            ),
        }
    }
    targets.sort();
    targets.dedup();
    Ok(targets)
}

/// An adapter's hyper-parameters (PEFT's `r`, `lora_alpha`, `lora_dropout`, `target_modules`,
/// `modules_to_save`).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f32,
    /// Dropout on the adapter's input, in training.
    pub dropout: f32,
    /// Sorted, without repeats.
    pub targets: Vec<Target>,
    /// The adapter holds a trained copy of the token embedding `wte` [V, C] (the tied LM head
    /// too), after the blocks' pairs.
    pub train_wte: bool,
}

impl LoraConfig {
    pub fn validate(&self) -> Result<()> {
        if self.r == 0 {
            return Err(Error::Config("LoRA rank r must be at least 1, got 0".into()));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(Error::Config(format!(
                "lora_alpha must be positive, got {}",
                self.alpha
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Config(format!(
                "lora_dropout must be in [0, 1), got {}",
                self.dropout
            )));
        }
        if self.targets.is_empty() {
            return Err(Error::Config("a LoRA adapter needs at least one target layer".into()));
        }
        Ok(())
    }

    /// s = alpha / r.
    pub fn scale(&self) -> f32 {
        self.alpha / self.r as f32
    }
}

/// The name PEFT saves a `modules_to_save` copy of the token embedding under.
pub const WTE_NAME: &str = "base_model.model.transformer.wte.weight";

/// The tensors of an adapter on a model shaped `cfg`, in buffer order (block by block, each
/// target's A then B; then the trained `wte`, if any), with the names PEFT saves:
/// `base_model.model.transformer.h.{l}.<module>.lora_A.weight`, [`WTE_NAME`].
pub fn lora_specs(cfg: &Config, lora: &LoraConfig) -> Vec<TensorSpec> {
    let mut specs = Vec::new();
    for l in 0..cfg.n_layer {
        for &t in &lora.targets {
            let (i, o) = t.dims(cfg);
            let name = |m: &str| format!("base_model.model.transformer.h.{l}.{}.lora_{m}.weight", t.module());
            specs.push(TensorSpec {
                name: name("A"),
                shape: vec![lora.r, i],
            });
            specs.push(TensorSpec {
                name: name("B"),
                shape: vec![o, lora.r],
            });
        }
    }
    if lora.train_wte {
        specs.push(TensorSpec {
            name: WTE_NAME.into(),
            shape: vec![cfg.vocab_size, cfg.n_embd],
        });
    }
    specs
}

/// One block's adapter pairs, by target (None for a layer left alone).
pub type LayerAdapter<S> = [Option<LowRank<S>>; 4];

/// An adapter buffer (or a gradient buffer of the same layout) cut into its blocks' pairs and
/// its trained `wte` [V, C] (None without one).
pub fn split_adapter<S: Splittable>(buf: S, cfg: &Config, lora: &LoraConfig) -> (Vec<LayerAdapter<S>>, Option<S>) {
    let mut rest = Some(buf);
    let mut take = |len: usize| {
        let (head, tail) = rest.take().expect("buffer consumed").split(len);
        rest = Some(tail);
        head
    };
    let layers = (0..cfg.n_layer)
        .map(|_| {
            let mut layer: LayerAdapter<S> = Default::default();
            for &t in &lora.targets {
                let (i, o) = t.dims(cfg);
                let a = take(lora.r * i);
                layer[t as usize] = Some(LowRank { a, b: take(o * lora.r) });
            }
            layer
        })
        .collect();
    let wte = lora.train_wte.then(|| take(cfg.vocab_size * cfg.n_embd));
    (layers, wte)
}

/// A LoRA adapter: its hyper-parameters and its A and B matrices in one flat buffer.
#[derive(Debug, Clone)]
pub struct Lora {
    pub config: LoraConfig,
    /// Laid out by [`lora_specs`].
    pub params: Vec<f32>,
}

impl Lora {
    /// A fresh adapter for `base`: each A uniform in ±1/sqrt(in) (PyTorch's
    /// `kaiming_uniform_(a=√5)`, PEFT's default), each B zero, a trained `wte` a copy of the
    /// base's. Deterministic from `seed`.
    pub fn new(base: &Gpt, config: LoraConfig, seed: u64) -> Result<Lora> {
        config.validate()?;
        let mut rng = Rng::new(seed);
        let mut params = Vec::new();
        for spec in lora_specs(&base.config, &config) {
            if spec.name == WTE_NAME {
                params.extend_from_slice(base.weights().wte);
            } else if spec.name.ends_with("lora_A.weight") {
                let bound = 1.0 / (spec.shape[1] as f32).sqrt();
                params.extend((0..spec.numel()).map(|_| (2.0 * rng.uniform() - 1.0) * bound));
            } else {
                params.extend(std::iter::repeat_n(0.0, spec.numel()));
            }
        }
        Ok(Lora { config, params })
    }

    /// The parameter tensors, as [`lora_specs`].
    pub fn specs(&self, cfg: &Config) -> Vec<TensorSpec> {
        lora_specs(cfg, &self.config)
    }

    /// Each block's pairs, as views of the buffer.
    pub fn layers(&self, cfg: &Config) -> Vec<LayerAdapter<&[f32]>> {
        split_adapter(self.params.as_slice(), cfg, &self.config).0
    }

    /// The trained token embedding [V, C], if the adapter has one.
    pub fn wte(&self, cfg: &Config) -> Option<&[f32]> {
        split_adapter(self.params.as_slice(), cfg, &self.config).1
    }

    /// Folds the adapter into `model`'s weights: `W [in, out] += s · Aᵀ Bᵀ` for every targeted
    /// layer, and its trained `wte` in place of the model's. The merged model computes what the
    /// base with the adapter does.
    pub fn merge_into(&self, model: &mut Gpt) {
        let (cfg, r, scale) = (model.config.clone(), self.config.r, self.config.scale());
        let mut weights = Weights::split(model.params.as_mut_slice(), &cfg);
        if let Some(wte) = self.wte(&cfg) {
            weights.wte.copy_from_slice(wte);
        }
        for (block, layer) in weights.blocks.iter_mut().zip(self.layers(&cfg)) {
            for (t, pair) in Target::ALL.into_iter().zip(&layer) {
                let Some(pair) = pair else { continue };
                let (i, o) = t.dims(&cfg);
                let scaled_b: Vec<f32> = pair.b.iter().map(|x| x * scale).collect();
                // W [in, out] += Aᵀ [in, r] · (s B)ᵀ [r, out]
                gemm(
                    t.weight(block),
                    true,
                    pair.a,
                    true,
                    &scaled_b,
                    true,
                    i,
                    r,
                    o,
                    all_threads(),
                );
            }
        }
    }
}

/// What an adapted layer keeps between its forward and backward passes.
#[derive(Default)]
pub struct LoraSlot {
    /// h = s · x̃ Aᵀ [N, r].
    h: Vec<f32>,
    /// The dropout of the layer's input, its mask redrawn in the backward pass rather than kept
    /// (it is [N, in]); None without dropout.
    dropout: Option<Dropout>,
}

/// The adapter's buffers in one block's activations (empty without an adapter).
#[derive(Default)]
pub struct LoraActs {
    slots: [LoraSlot; 4],
}

/// Scratch of this thread for the adapted layers' passes: the dropout mask [N, in], the dropped
/// input [N, in], dh [N, r], and the adapter's part of dx before the mask [N, in].
#[derive(Default)]
struct Scratch {
    mask: Vec<f32>,
    dropped: Vec<f32>,
    dh: Vec<f32>,
    dx: Vec<f32>,
}

thread_local! {
    static SCRATCH: Cell<Scratch> = Cell::new(Scratch::default());
}

/// Runs `work` with this thread's scratch.
fn with_scratch<R>(work: impl FnOnce(&mut Scratch) -> R) -> R {
    let mut scratch = SCRATCH.take();
    let result = work(&mut scratch);
    SCRATCH.set(scratch);
    result
}

/// The dropout mask of target `t`'s input `x` [N, in], into `s.mask`, and `x ⊙ mask` into
/// `s.dropped`: the same in the forward pass and, redrawn, in the backward pass.
fn drop_input(s: &mut Scratch, x: &[f32], dropout: Dropout, t: Target, ic: usize) {
    s.mask.resize(x.len(), 0.0);
    dropout.fill_tokens(Site::LoraInput(t as usize), &mut s.mask, ic);
    s.dropped.clear();
    s.dropped.extend(x.iter().zip(&s.mask).map(|(x, m)| x * m));
}

/// An adapter's blocks as the passes read them, with its rank and scale.
pub struct AdapterView<'a> {
    layers: Vec<LayerAdapter<&'a [f32]>>,
    r: usize,
    scale: f32,
}

impl<'a> AdapterView<'a> {
    pub fn new(lora: &'a Lora, cfg: &Config) -> Self {
        AdapterView {
            layers: lora.layers(cfg),
            r: lora.config.r,
            scale: lora.config.scale(),
        }
    }

    /// Block `l`'s adapter for a forward pass, with the adapter's dropout (that of block l) if
    /// training.
    pub fn pass(&self, l: usize, dropout: Option<Dropout>) -> AdapterPass<'_> {
        AdapterPass {
            layer: &self.layers[l],
            r: self.r,
            scale: self.scale,
            dropout,
        }
    }

    /// Block `l`'s adapter for a backward pass, adding into `grads` (that block's part of a
    /// gradient buffer cut by [`split_adapter`]).
    pub fn grads<'s, 'g, 'b>(
        &'s self,
        l: usize,
        grads: &'g mut LayerAdapter<&'b mut [f32]>,
    ) -> AdapterGrads<'s, 'g, 'b> {
        AdapterGrads {
            layer: &self.layers[l],
            grads,
            r: self.r,
            scale: self.scale,
        }
    }
}

/// One block's adapter as a forward pass uses it.
pub struct AdapterPass<'a> {
    layer: &'a LayerAdapter<&'a [f32]>,
    r: usize,
    scale: f32,
    /// The adapter's dropout on each adapted layer's input (training only).
    dropout: Option<Dropout>,
}

/// The shape of target `t`'s adapter over the input `x` [N, in], of rank `r`, scaled by `scale`.
fn layer_shape(t: Target, cfg: &Config, x: &[f32], r: usize, scale: f32) -> LoraShape {
    let (ic, oc) = t.dims(cfg);
    LoraShape {
        n: x.len() / ic,
        ic,
        oc,
        r,
        scale,
    }
}

impl AdapterPass<'_> {
    /// Adds target `t`'s adapter to the layer's output `out` [N, out], from its input `x` [N, in].
    pub fn forward(&mut self, t: Target, cfg: &Config, out: &mut [f32], x: &[f32], acts: &mut LoraActs) {
        let Some(pair) = &self.layer[t as usize] else { return };
        let shape = layer_shape(t, cfg, x, self.r, self.scale);
        let (n, ic) = (shape.n, shape.ic);
        let slot = &mut acts.slots[t as usize];
        slot.h.resize(n * self.r, 0.0);
        slot.dropout = self.dropout;
        match slot.dropout {
            None => lora_forward(out, &mut slot.h, x, pair, shape),
            Some(dropout) => with_scratch(|s| {
                drop_input(s, x, dropout, t, ic);
                lora_forward(out, &mut slot.h, &s.dropped, pair, shape);
            }),
        }
    }
}

/// One block's adapter as a backward pass uses it: its weights and its gradients.
pub struct AdapterGrads<'w, 'g, 'b> {
    layer: &'w LayerAdapter<&'w [f32]>,
    grads: &'g mut LayerAdapter<&'b mut [f32]>,
    r: usize,
    scale: f32,
}

impl AdapterGrads<'_, '_, '_> {
    /// Backward of target `t`'s adapter: adds dA and dB to the gradients and the adapter's
    /// part of dx to `dx` [N, in], which holds the frozen layer's `dout Wᵀ`.
    pub fn backward(&mut self, t: Target, cfg: &Config, dx: &mut [f32], dout: &[f32], x: &[f32], acts: &LoraActs) {
        let (Some(pair), Some(grads)) = (&self.layer[t as usize], &mut self.grads[t as usize]) else {
            return;
        };
        let shape = layer_shape(t, cfg, x, self.r, self.scale);
        let (n, ic) = (shape.n, shape.ic);
        let slot = &acts.slots[t as usize];
        with_scratch(|s| {
            s.dh.resize(n * self.r, 0.0);
            match slot.dropout {
                None => lora_backward(dx, grads, &mut s.dh, None, dout, x, &slot.h, pair, shape),
                Some(dropout) => {
                    drop_input(s, x, dropout, t, ic);
                    s.dx.resize(x.len(), 0.0);
                    let mask = Some((s.mask.as_slice(), s.dx.as_mut_slice()));
                    lora_backward(dx, grads, &mut s.dh, mask, dout, &s.dropped, &slot.h, pair, shape);
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{KvCache, Workspace};
    use crate::ops::dropout::DropoutSeed;
    use crate::ops::test_util::check_gradient;

    fn config(targets: &str, dropout: f32) -> LoraConfig {
        LoraConfig {
            r: 2,
            alpha: 3.0,
            dropout,
            targets: parse_targets(targets).unwrap(),
            train_wte: false,
        }
    }

    /// [`config`] with the token embedding trained too.
    fn with_wte(lora: LoraConfig) -> LoraConfig {
        LoraConfig {
            train_wte: true,
            ..lora
        }
    }

    /// A tiny model (n_inner 20, so every target has its own shape) with an adapter whose B is
    /// not zero, so that every adapter gradient is non-zero.
    fn adapted(lora: LoraConfig, dropout: f32) -> Gpt {
        let mut cfg = Config::new(13, 8, 8, 2, 2);
        (cfg.n_inner, cfg.dropout) = (20, dropout);
        let mut model = Gpt::new(cfg, 1).unwrap();
        let mut adapter = Lora::new(&model, lora, 2).unwrap();
        let mut rng = Rng::new(3);
        adapter.params.iter_mut().for_each(|p| *p += 0.3 * rng.normal());
        model.adapter = Some(adapter);
        model
    }

    #[test]
    fn targets_parse_by_name_and_unknown_ones_list_the_valid_ones() {
        assert_eq!(
            parse_targets("c_fc, c_attn,c_attn").unwrap(),
            [Target::CAttn, Target::CFc]
        );
        assert_eq!(parse_targets("c_proj").unwrap(), [Target::AttnCProj, Target::MlpCProj]);
        assert_eq!(parse_targets("mlp.c_fc").unwrap(), [Target::CFc]);
        let err = parse_targets("c_attn,q_proj").unwrap_err().to_string();
        assert!(
            err.contains("\"q_proj\"") && err.contains("c_attn, attn.c_proj, c_fc, mlp.c_proj"),
            "{err}"
        );
    }

    #[test]
    fn rank_zero_and_no_targets_are_errors() {
        let base = Gpt::new(Config::new(13, 8, 8, 2, 2), 1).unwrap();
        let err = Lora::new(
            &base,
            LoraConfig {
                r: 0,
                ..config("c_attn", 0.0)
            },
            1,
        )
        .unwrap_err();
        assert!(err.to_string().contains("rank r must be at least 1"), "{err}");
        let err = Lora::new(
            &base,
            LoraConfig {
                targets: vec![],
                ..config("c_attn", 0.0)
            },
            1,
        )
        .unwrap_err();
        assert!(err.to_string().contains("at least one target"), "{err}");
    }

    #[test]
    fn a_new_adapter_changes_nothing_and_has_peft_names_and_shapes() {
        let base = Gpt::new(Config::new(13, 8, 8, 2, 2), 1).unwrap();
        let cfg = &base.config;
        let lora = Lora::new(&base, config("c_attn,mlp.c_proj", 0.0), 1).unwrap();
        let specs = lora.specs(cfg);
        assert_eq!(
            specs[0].name,
            "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"
        );
        assert_eq!(
            (specs[0].shape.clone(), specs[1].shape.clone()),
            (vec![2, 8], vec![24, 2])
        );
        assert_eq!(
            specs[3].name,
            "base_model.model.transformer.h.0.mlp.c_proj.lora_B.weight"
        );
        assert_eq!(
            (specs[2].shape.clone(), specs[3].shape.clone()),
            (vec![2, 32], vec![8, 2])
        );
        let (a, b) = lora.params.split_at(16);
        assert!(a.iter().all(|&x| x != 0.0 && x.abs() <= 1.0 / 8f32.sqrt()));
        assert!(b[..48].iter().all(|&x| x == 0.0));
        // A trained wte comes last, a copy of the base's, under PEFT's modules_to_save name.
        let lora = Lora::new(&base, with_wte(config("c_attn,mlp.c_proj", 0.0)), 1).unwrap();
        let last = lora.specs(cfg).pop().unwrap();
        assert_eq!((last.name.as_str(), last.shape), (WTE_NAME, vec![13, 8]));
        assert_eq!(lora.wte(cfg).unwrap(), base.weights().wte);
        assert_eq!(
            lora.params.len(),
            specs.iter().map(TensorSpec::numel).sum::<usize>() + 13 * 8
        );
    }

    /// Whole-model finite-difference check of every adapter gradient: the base frozen, the
    /// gradient buffer the adapter's.
    fn check_adapter_gradients(lora: LoraConfig, dropout: f32) {
        let lora_dropout = lora.dropout;
        let model = adapted(lora, dropout);
        let (b, t) = (2, 5);
        let tokens: Vec<u32> = (0..b * t).map(|i| (i * 5 % 13) as u32).collect();
        let targets: Vec<i32> = (0..b * t).map(|i| (i * 7 % 13) as i32).collect();
        let loss_at = |adapter: &[f32]| {
            let mut m = Gpt::from_params(model.config.clone(), model.params.clone());
            let config = model.adapter.as_ref().unwrap().config.clone();
            m.adapter = Some(Lora {
                config,
                params: adapter.to_vec(),
            });
            let loss = m.forward(
                &mut Workspace::new(),
                &tokens,
                b,
                t,
                Some(&targets),
                Some(DropoutSeed::new(9)),
            );
            vec![loss.unwrap().unwrap()]
        };
        let (mut ws, mut grads) = (Workspace::new(), model.new_gradients());
        assert_eq!(grads.len(), model.adapter.as_ref().unwrap().params.len());
        model
            .forward(&mut ws, &tokens, b, t, Some(&targets), Some(DropoutSeed::new(9)))
            .unwrap();
        model.backward(&mut ws, &mut grads, 1.0).unwrap();
        assert!(
            grads.iter().all(|&g| g != 0.0) || lora_dropout > 0.0,
            "every gradient is used"
        );
        check_gradient("adapter", model.trainable(), &grads, &[1.0], loss_at);
    }

    #[test]
    fn adapter_gradients_match_finite_differences() {
        check_adapter_gradients(config("c_attn,attn.c_proj,c_fc,mlp.c_proj", 0.0), 0.0);
        check_adapter_gradients(config("c_fc", 0.0), 0.0);
    }

    #[test]
    fn adapter_gradients_match_finite_differences_with_dropout() {
        check_adapter_gradients(config("c_attn,attn.c_proj,c_fc,mlp.c_proj", 0.3), 0.1);
    }

    /// The trained wte's gradient: the LM head's and the input embedding's, both tied to it.
    #[test]
    fn trained_wte_gradients_match_finite_differences() {
        check_adapter_gradients(with_wte(config("c_attn,attn.c_proj,c_fc,mlp.c_proj", 0.0)), 0.0);
        check_adapter_gradients(with_wte(config("c_fc", 0.3)), 0.1);
    }

    #[test]
    fn the_merged_model_computes_what_the_adapter_does() {
        let model = adapted(with_wte(config("c_attn,attn.c_proj,c_fc,mlp.c_proj", 0.1)), 0.0);
        let mut merged = Gpt::from_params(model.config.clone(), model.params.clone());
        model.adapter.as_ref().unwrap().merge_into(&mut merged);
        let tokens: Vec<u32> = (0..8).map(|i| (i * 3 % 13) as u32).collect();
        let logits = |m: &Gpt| {
            let mut ws = Workspace::new();
            m.forward(&mut ws, &tokens, 1, 8, None, None).unwrap();
            ws.logits().to_vec()
        };
        let (unmerged, folded) = (logits(&model), logits(&merged));
        assert!(unmerged.iter().zip(&folded).all(|(a, b)| (a - b).abs() < 1e-5));
        assert!(unmerged != logits(&Gpt::from_params(model.config.clone(), model.params.clone())));
        // Decoding over a KV cache adds the adapter too.
        let mut cache = KvCache::new(&model.config, 1, 8).unwrap();
        let cached = model.forward_cached(&mut cache, &tokens).unwrap();
        let last = &folded[7 * 13..];
        assert!(cached.iter().zip(last).all(|(a, b)| (a - b).abs() < 1e-5));
    }
}
