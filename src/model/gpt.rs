//! The whole GPT-2, read-only: embeddings → blocks → final LayerNorm → tied LM head → loss,
//! the backward pass of that, op by op in reverse, and the same forward over a KV cache for
//! generation. Everything a pass writes lives in the caller's [`Workspace`] or [`KvCache`], so
//! any number of threads can run passes over one `&Gpt` at once.
//!
//! Shapes: B batch rows, T positions, N = B·T, C = n_embd, V = vocab, L = n_layer.

use super::block::{block_backward, block_forward, Keys};
use super::kv_cache::{KvCache, KvDtype, StepBuffers};
use super::lora::{split_adapter, AdapterView, Lora};
use super::lowp::{LowpBlock, LowpWeights};
use super::params::{block_len, init_params, num_params, param_specs, BlockWeights, Layout, TensorSpec, Weights};
use super::workspace::{BlockActs, Workspace};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::ops::attend_one;
use crate::ops::attention::AttnShape;
use crate::ops::cross_entropy::{check_targets, cross_entropy_backward_inplace, cross_entropy_forward};
use crate::ops::dropout::{dropout_backward, Dropout, DropoutSeed, Site};
use crate::ops::embedding::{embedding_backward, embedding_forward};
use crate::ops::layernorm::{layernorm_backward, layernorm_forward};
use crate::ops::lm_head::{lm_head_backward, lm_head_forward};
use crate::ops::lowp::{Kernels, WeightDtype};
use crate::ops::matmul::Precision;
use crate::ops::zeroed;

/// A GPT-2 language model: its configuration and its parameters in one flat buffer, or, for
/// inference in bf16 or q8_0, its weight matrices apart in that dtype and the rest in the
/// buffer; optionally a LoRA adapter on top.
pub struct Gpt {
    pub config: Config,
    /// All parameters, laid out by [`super::params::param_specs`] ([`Layout::Full`]); with
    /// `lowp`, all but the weight matrices ([`Layout::WithoutMatrices`]).
    pub params: Vec<f32>,
    /// The weight matrices in low precision, or None (f32: they are in `params`).
    pub lowp: Option<LowpWeights>,
    /// A LoRA adapter that every pass adds to the layers it targets. With one, the adapter is
    /// what trains: [`Gpt::backward`] computes its gradients only and the base `params` stay
    /// frozen (no gradients, no optimizer state).
    pub adapter: Option<Lora>,
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
            lowp: None,
            adapter: None,
        }
    }

    /// A model with low-precision weight matrices `lowp` and the other tensors in `params`
    /// ([`Layout::WithoutMatrices`]).
    pub fn from_lowp(config: Config, params: Vec<f32>, lowp: LowpWeights) -> Self {
        let expected: usize = Layout::WithoutMatrices
            .specs(&config)
            .iter()
            .map(TensorSpec::numel)
            .sum();
        assert_eq!(params.len(), expected, "parameter buffer does not match the config");
        Gpt {
            config,
            params,
            lowp: Some(lowp),
            adapter: None,
        }
    }

    /// How the weight matrices are stored.
    pub fn dtype(&self) -> WeightDtype {
        self.lowp.as_ref().map_or(WeightDtype::F32, LowpWeights::dtype)
    }

    /// How a KV cache for this model stores keys and values. f32 weights: f32 (the reference's
    /// arithmetic). Low-precision weights: IEEE half precision where decoding reads it in
    /// registers ([`attend_one::reads_in_registers`]), since reading an f32 cache holds their
    /// decoding back as the context grows; f32 elsewhere.
    pub fn kv_dtype(&self) -> KvDtype {
        if self.lowp.is_some() && attend_one::reads_in_registers(self.config.head_size()) {
            KvDtype::F16
        } else {
            KvDtype::F32
        }
    }

    /// An empty KV cache for this model ([`Gpt::kv_dtype`]): `rows` sequences of up to
    /// `capacity` positions each.
    pub fn kv_cache(&self, rows: usize, capacity: usize) -> Result<KvCache> {
        KvCache::with_dtype(&self.config, rows, capacity, self.kv_dtype())
    }

    /// Bytes of the weights as stored: the f32 buffer and the low-precision matrices.
    pub fn weight_bytes(&self) -> usize {
        4 * self.params.len() + self.lowp.as_ref().map_or(0, LowpWeights::bytes)
    }

    /// Which tensors `params` holds.
    pub fn layout(&self) -> Layout {
        match self.lowp {
            Some(_) => Layout::WithoutMatrices,
            None => Layout::Full,
        }
    }

    /// This f32 model with its weight matrices stored in `dtype` for inference (f32: as it
    /// is), its products on the kernels `GPT2_KERNEL` or the CPU picks.
    pub fn to_dtype(self, dtype: WeightDtype) -> Result<Gpt> {
        if dtype == self.dtype() {
            return Ok(self);
        }
        if self.lowp.is_some() {
            return Err(Error::Input(format!(
                "a model with {} weights cannot be stored in {dtype}: convert it from f32",
                self.dtype()
            )));
        }
        let kernels = Kernels::from_env()?;
        let (lowp, rest) = LowpWeights::split_from(&self.config, &self.params, dtype, kernels).map_err(Error::Input)?;
        drop(self.params);
        let mut model = Gpt::from_lowp(self.config, rest, lowp);
        model.adapter = self.adapter; // an adapter (f32) adds to whatever the base stores
        Ok(model)
    }

    /// An f32 copy of this f32 model whose weight matrices hold what `dtype` stores of them:
    /// the weights a `dtype` model computes with, for passes that only exist in f32 (inspect).
    pub fn rounded_to(&self, dtype: WeightDtype) -> Result<Gpt> {
        if self.lowp.is_some() {
            return Err(Error::Input(format!(
                "a model with {} weights has no f32 copy",
                self.dtype()
            )));
        }
        let mut rounded = Gpt::from_params(self.config.clone(), self.params.clone());
        if dtype != WeightDtype::F32 {
            let (lowp, _) =
                LowpWeights::split_from(&self.config, &self.params, dtype, Kernels::best()).map_err(Error::Input)?;
            lowp.dequantize_into(&mut Weights::split(rounded.params.as_mut_slice(), &self.config));
        }
        Ok(rounded)
    }

    /// Named views of the parameters (with low-precision matrices, the matrices' views are
    /// empty); `wte` is an adapter's trained one if it has one.
    pub fn weights(&self) -> Weights<&[f32]> {
        let mut weights = Weights::split_as(self.params.as_slice(), &self.config, self.layout());
        if let Some(wte) = self.adapter_wte() {
            weights.wte = wte;
        }
        weights
    }

    /// An adapter's trained token embedding [V, C], if any: the model reads it in place of its own.
    fn adapter_wte(&self) -> Option<&[f32]> {
        self.adapter.as_ref().and_then(|a| a.wte(&self.config))
    }

    /// The low-precision token embedding, unless an adapter's f32 one replaces it.
    fn lowp_wte(&self) -> Option<&LowpWeights> {
        self.lowp.as_ref().filter(|_| self.adapter_wte().is_none())
    }

    /// Block l's low-precision matrices, if the model has them.
    fn lowp_block(&self, l: usize) -> Option<&LowpBlock> {
        self.lowp.as_ref().map(|lowp| &lowp.blocks[l])
    }

    /// A zero gradient buffer in the layout of the trainable parameters (the adapter's, if
    /// any), for [`Gpt::backward`] to add into. Every gradient buffer (the trainer's, each batch
    /// shard's) is made here.
    pub fn new_gradients(&self) -> Vec<f32> {
        zeroed(self.trainable().len())
    }

    /// The parameters that train: the adapter's if there is one, else all of them.
    pub fn trainable(&self) -> &[f32] {
        self.adapter.as_ref().map_or(&self.params, |a| &a.params)
    }

    /// [`Gpt::trainable`], to update.
    pub fn trainable_mut(&mut self) -> &mut [f32] {
        match &mut self.adapter {
            Some(a) => &mut a.params,
            None => &mut self.params,
        }
    }

    /// The tensors of [`Gpt::trainable`], in buffer order.
    pub fn trainable_specs(&self) -> Vec<TensorSpec> {
        match &self.adapter {
            Some(a) => a.specs(&self.config),
            None => param_specs(&self.config),
        }
    }

    /// The adapter as the passes read it.
    fn adapter_view(&self) -> Option<AdapterView<'_>> {
        self.adapter.as_ref().map(|a| AdapterView::new(a, &self.config))
    }

    /// Block `l` (weights `p`) of an inference pass (no dropout; f32 weights multiply in f32):
    /// reads the stream `x`, leaves the block's output in `acts.residual_3`.
    #[allow(clippy::too_many_arguments)]
    fn inference_block(
        &self,
        l: usize,
        p: &BlockWeights<&[f32]>,
        shape: AttnShape,
        adapter: Option<&AdapterView>,
        x: &[f32],
        acts: &mut BlockActs,
        keys: Keys,
    ) {
        let (lowp, pass) = (self.lowp_block(l), adapter.map(|a| a.pass(l, None)));
        block_forward(&self.config, shape, Precision::F32, p, lowp, pass, x, acts, keys, None);
    }

    fn attn_shape(&self, b: usize, t: usize) -> AttnShape {
        AttnShape {
            b,
            t,
            c: self.config.n_embd,
            n_head: self.config.n_head,
        }
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

    /// Forward pass over a batch `tokens` [B, T], its activations left in `ws`. With `targets`
    /// [B, T] (ids, or [`crate::ops::cross_entropy::IGNORE_INDEX`]) returns the mean
    /// cross-entropy loss. Dropout applies when `dropout` is given and the config's dropout is
    /// positive: its masks are those of the batch rows the seed names (see [`DropoutSeed`]).
    pub fn forward(
        &self,
        ws: &mut Workspace,
        tokens: &[u32],
        b: usize,
        t: usize,
        targets: Option<&[i32]>,
        dropout: Option<DropoutSeed>,
    ) -> Result<Option<f32>> {
        self.check_batch(tokens, b, t, targets)?;
        let cfg = &self.config;
        let (v, n) = (cfg.vocab_size, b * t);
        let p_drop = cfg.dropout;
        // The adapter's dropout draws its own masks (sites of their own) from the same seed.
        let lora_p = self.adapter.as_ref().map_or(0.0, |a| a.config.dropout);
        let lora_dropout = dropout
            .filter(|_| lora_p > 0.0)
            .map(|seed| Dropout::new(lora_p, seed, t));
        let dropout = dropout
            .filter(|_| p_drop > 0.0)
            .map(|seed| Dropout::new(p_drop, seed, t));
        let adapter = self.adapter_view();
        let precision = ws.precision();
        let acts = ws.acts_for(cfg, b, t, dropout.is_some());
        let (w, shape) = (self.weights(), self.attn_shape(b, t));
        acts.tokens.copy_from_slice(tokens);

        // Token + position embeddings: encoded [N, C]
        self.embed(&mut acts.encoded, tokens, t, 0);
        if let Some(d) = dropout {
            d.forward(Site::Embedding, &mut acts.encoded, &mut acts.emb_mask, cfg.n_embd);
        }
        // The blocks: block l reads the stream block l - 1 left.
        for (l, p) in w.blocks.iter().enumerate() {
            let (done, rest) = acts.blocks.split_at_mut(l);
            let x = done.last().map_or(&acts.encoded, |prev| &prev.residual_3);
            let (lowp, layer_dropout) = (self.lowp_block(l), dropout.map(|d| d.at_layer(l)));
            let pass = adapter.as_ref().map(|a| a.pass(l, lora_dropout.map(|d| d.at_layer(l))));
            block_forward(
                cfg,
                shape,
                precision,
                p,
                lowp,
                pass,
                x,
                &mut rest[0],
                Keys::Causal,
                layer_dropout,
            );
        }
        let last = &acts.blocks[cfg.n_layer - 1].residual_3;
        let ln_f = (&mut acts.ln_f[..], &mut acts.ln_f_mean[..], &mut acts.ln_f_rstd[..]);
        self.head_forward(&mut acts.logits, ln_f, last, n, precision);

        let Some(targets) = targets else { return Ok(None) };
        let (loss, count) = cross_entropy_forward(&mut acts.lse, &mut acts.row_loss, &acts.logits, targets, v)?;
        acts.targets.extend_from_slice(targets);
        acts.target_count = count;
        Ok(Some(loss))
    }

    /// Final LayerNorm, then the tied LM head over R rows of the stream `x` [R, C]:
    /// `logits [R, V] = ln_f(x) · wteᵀ` (in `precision` for f32 weights); `ln_f` = (output [R, C],
    /// mean [R], rstd [R]).
    fn head_forward(
        &self,
        logits: &mut [f32],
        ln_f: (&mut [f32], &mut [f32], &mut [f32]),
        x: &[f32],
        rows: usize,
        precision: Precision,
    ) {
        let (cfg, w) = (&self.config, self.weights());
        let (out, mean, rstd) = ln_f;
        layernorm_forward(
            out,
            mean,
            rstd,
            x,
            w.ln_f_w,
            w.ln_f_b,
            cfg.n_embd,
            cfg.layer_norm_epsilon,
        );
        match self.lowp_wte() {
            Some(lowp) => lowp.wte.matmul(logits, out, rows, lowp.kernels),
            None => lm_head_forward(logits, out, w.wte, rows, cfg.n_embd, cfg.vocab_size, precision),
        }
    }

    /// Token + position embeddings of `tokens` [B, T] at positions pos0.., into `out` [B, T, C]
    /// (a low-precision wte: each row read back in f32).
    fn embed(&self, out: &mut [f32], tokens: &[u32], t: usize, pos0: usize) {
        let (w, c) = (self.weights(), self.config.n_embd);
        match self.lowp_wte() {
            None => embedding_forward(out, tokens, w.wte, w.wpe, t, c, pos0),
            Some(lowp) => {
                for (i, (row, &token)) in out.chunks_exact_mut(c).zip(tokens).enumerate() {
                    lowp.wte.dequantize_row(token as usize, row);
                    let pe = &w.wpe[(pos0 + i % t) * c..][..c];
                    row.iter_mut().zip(pe).for_each(|(o, &p)| *o += p);
                }
            }
        }
    }

    /// Backward pass of the last forward pass in `ws` (which must have had targets): adds
    /// `loss_scale · dloss/dparams` to `grads` (from [`Gpt::new_gradients`]: the adapter's
    /// parameters if there is one, the base frozen; else all). Use
    /// `loss_scale = 1 / steps` to average over gradient-accumulation steps. The logits are
    /// consumed (they hold dlogits after).
    pub fn backward(&self, ws: &mut Workspace, grads: &mut [f32], loss_scale: f32) -> Result<()> {
        self.backward_with(ws, grads, loss_scale, |_| {})
    }

    /// [`Gpt::backward`], handing each part of `grads` to `bucket_done` as soon as the pass is
    /// done with it, in the order of [`super::params::backward_buckets`]: the final LayerNorm,
    /// each block from the last, the embeddings. (Data parallelism sends each part to the
    /// other ranks while the pass goes on with the earlier layers.) With an adapter nothing is
    /// handed on: adapters train in one process.
    pub fn backward_with<'g>(
        &self,
        ws: &mut Workspace,
        grads: &'g mut [f32],
        loss_scale: f32,
        mut bucket_done: impl FnMut(&'g [f32]),
    ) -> Result<()> {
        if self.lowp.is_some() {
            return Err(Error::Input(format!(
                "a model with {} weights is for inference: train from f32",
                self.dtype()
            )));
        }
        if ws.activations().targets.is_empty() {
            return Err(Error::Input("backward needs a forward pass with targets first".into()));
        }
        if grads.len() != self.trainable().len() {
            return Err(Error::Input(format!(
                "a gradient buffer of {} values for {} parameters",
                grads.len(),
                self.trainable().len()
            )));
        }
        let (cfg, precision) = (&self.config, ws.precision());
        let (acts, d) = ws.for_backward(cfg);
        let (b, t) = (acts.b, acts.t);
        let (c, v, n) = (cfg.n_embd, cfg.vocab_size, b * t);
        let (w, shape) = (self.weights(), self.attn_shape(b, t));
        let adapter = self.adapter_view();
        // The gradient's parts, each handed on once done: without an adapter the model's
        // embeddings [wte, wpe], blocks and ln_f; with one the adapter's per block and its
        // trained wte if any (the base is frozen: no gradients).
        let (mut embeddings, mut blocks, mut ln_f, mut adapter_grads, mut adapter_wte) = match &self.adapter {
            None => {
                let (embeddings, rest) = grads.split_at_mut((v + cfg.n_positions) * c);
                let (blocks, ln_f) = rest.split_at_mut(cfg.n_layer * block_len(cfg));
                let blocks: Vec<&'g mut [f32]> = blocks.chunks_mut(block_len(cfg)).collect();
                (Some(embeddings), blocks, Some(ln_f), None, None)
            }
            Some(a) => {
                let (layers, wte) = split_adapter(grads, cfg, &a.config);
                (None, Vec::new(), None, Some(layers), wte)
            }
        };

        // Loss → logits: dlogits = (softmax - onehot) · loss_scale / count, in place of the logits.
        let scale = match acts.target_count {
            0 => 0.0,
            count => loss_scale / count as f32,
        };
        cross_entropy_backward_inplace(&mut acts.logits, &acts.lse, &acts.targets, v, scale);
        // LM head: logits = ln_f · wteᵀ  ⇒  dln_f = dlogits · wte, dwte += dlogitsᵀ · ln_f
        let g_wte = embeddings
            .as_mut()
            .map(|e| &mut e[..v * c])
            .or(adapter_wte.as_deref_mut());
        lm_head_backward(&mut d.ln, g_wte, &acts.logits, &acts.ln_f, w.wte, n, c, v, precision);
        // Final LayerNorm: the residual-stream gradient starts here.
        d.residual.fill(0.0);
        let last = &acts.blocks[cfg.n_layer - 1].residual_3;
        let (mean, rstd) = (&acts.ln_f_mean, &acts.ln_f_rstd);
        layernorm_backward(
            &mut d.residual,
            ln_f.as_mut().map(|g| g.split_at_mut(c)),
            &d.ln,
            last,
            mean,
            rstd,
            w.ln_f_w,
            c,
        );
        if let Some(ln_f) = ln_f {
            bucket_done(ln_f);
        }
        // The blocks in reverse, each passing dloss/d(its input) down to the one before.
        for l in (0..cfg.n_layer).rev() {
            let x = if l == 0 {
                &acts.encoded
            } else {
                &acts.blocks[l - 1].residual_3
            };
            let (p, a) = (&w.blocks[l], &acts.blocks[l]);
            let mut block_grads = blocks.pop();
            let adapter_grads = adapter
                .as_ref()
                .zip(adapter_grads.as_mut())
                .map(|(a, g)| a.grads(l, &mut g[l]));
            let mut named = block_grads.as_deref_mut().map(|g| BlockWeights::split(g, cfg));
            block_backward(cfg, shape, precision, p, named.as_mut(), adapter_grads, x, a, d);
            if let Some(g_block) = block_grads {
                bucket_done(g_block);
            }
        }
        // Embeddings: encoded = drop(wte[tokens] + wpe[positions]) (frozen with an adapter,
        // but for its trained wte).
        if let Some(embeddings) = embeddings {
            let demb = dropout_backward(&d.residual, &acts.emb_mask, &mut d.ln);
            let (g_wte, g_wpe) = embeddings.split_at_mut(v * c);
            embedding_backward(g_wte, Some(g_wpe), demb, &acts.tokens, t, c);
            bucket_done(embeddings);
        } else if let Some(g_wte) = adapter_wte {
            let demb = dropout_backward(&d.residual, &acts.emb_mask, &mut d.ln);
            embedding_backward(g_wte, None, demb, &acts.tokens, t, c);
        }
        acts.targets.clear(); // the logits are spent: a second backward needs a new forward
        Ok(())
    }

    /// The parts of the gradient [`Gpt::backward_with`] hands on, in its order
    /// ([`super::params::backward_buckets`]; none with an adapter).
    pub fn backward_buckets(&self) -> Vec<std::ops::Range<usize>> {
        match self.adapter {
            Some(_) => Vec::new(),
            None => super::params::backward_buckets(&self.config),
        }
    }

    /// Runs T new tokens per row, `tokens` [B, T] with B = `cache.rows()`, through the model at
    /// positions `cache.len()..cache.len() + T`, appends their keys and values to the cache and
    /// returns the logits of each row's last new token: [B, V]. With an empty cache and the
    /// whole sequence as `tokens` this is a prefill; then T = 1 per step. The logits equal
    /// those of [`Gpt::forward`] over the whole sequence at that position. A failed call leaves
    /// the cache as it was.
    pub fn forward_cached<'c>(&self, cache: &'c mut KvCache, tokens: &[u32]) -> Result<&'c [f32]> {
        let (b, t) = (cache.rows(), cache.check_new_tokens(tokens.len())?);
        self.check_batch(tokens, b, t, None)?;
        let (cfg, w, shape, pos0) = (&self.config, self.weights(), self.attn_shape(b, t), cache.len());
        let c = cfg.n_embd;
        let s = &mut cache.scratch;
        s.fit_rows(cfg, b * t, b);

        self.embed(&mut s.x, tokens, t, pos0);
        let adapter = self.adapter_view();
        for (l, p) in w.blocks.iter().enumerate() {
            let (keys, s) = cache.layer(l);
            self.inference_block(l, p, shape, adapter.as_ref(), &s.x, &mut s.block, Keys::Cached(keys));
            std::mem::swap(&mut s.x, &mut s.block.residual_3); // the block's output is the next one's input
        }
        cache.advance(t);

        // Only each row's last position goes through the final LayerNorm and the LM head.
        let s = &mut cache.scratch;
        for (last, row) in s.last.chunks_exact_mut(c).zip(s.x.chunks_exact(t * c)) {
            last.copy_from_slice(&row[(t - 1) * c..]);
        }
        let ln_f = (&mut s.ln_f[..], &mut s.ln_f_mean[..], &mut s.ln_f_rstd[..]);
        self.head_forward(&mut s.logits, ln_f, &s.last, b, Precision::F32);
        Ok(&cache.scratch.logits)
    }

    /// One step of R requests at once: `tokens[r]` are the new tokens of the sequence in
    /// `caches[r]` (a one-row cache, each at its own length): its next token, or its whole
    /// prompt (a prefill joining the step). Every matrix product runs once over all
    /// N = Σ tokens[r].len() rows (each weight is read once per step, not once per request or
    /// prompt); only the attention is per request, over that request's own cache. Appends the
    /// new keys and values to each cache and returns the logits after each request's last new
    /// token, [R, V]: the same as R calls of [`Gpt::forward_cached`]. A failed call leaves
    /// every cache as it was.
    pub fn decode_step<'b>(
        &self,
        bufs: &'b mut StepBuffers,
        caches: &mut [&mut KvCache],
        tokens: &[&[u32]],
    ) -> Result<&'b [f32]> {
        let r = tokens.len();
        if r == 0 || caches.len() != r {
            return Err(Error::Input(format!(
                "a step needs the new tokens of each cache and at least one cache: {r} token lists for {} caches",
                caches.len()
            )));
        }
        for (cache, new) in caches.iter().zip(tokens) {
            if cache.rows() != 1 {
                return Err(Error::Input(format!(
                    "a step takes one-row caches, got one of {} rows",
                    cache.rows()
                )));
            }
            cache.check_new_tokens(new.len())?;
        }
        let all = tokens.concat();
        let n = all.len();
        self.check_batch(&all, n, 1, None)?;
        let (cfg, w, shape) = (&self.config, self.weights(), self.attn_shape(n, 1));
        let c = cfg.n_embd;
        let s = &mut bufs.0;
        s.fit_rows(cfg, n, r);

        // x [N, C]: request r's new tokens at its own positions, after request r - 1's.
        let mut rows = s.x.chunks_exact_mut(c);
        for (new, cache) in tokens.iter().zip(caches.iter()) {
            // (new first: zip stops on it without taking a row of the next request)
            for (i, (&id, x)) in new.iter().zip(rows.by_ref()).enumerate() {
                self.embed(x, &[id], 1, cache.len() + i);
            }
        }
        let adapter = self.adapter_view();
        for (l, p) in w.blocks.iter().enumerate() {
            let keys = Keys::PerRow(
                caches
                    .iter_mut()
                    .zip(tokens)
                    .map(|(cache, new)| (cache.kv_layer(l), new.len()))
                    .collect(),
            );
            self.inference_block(l, p, shape, adapter.as_ref(), &s.x, &mut s.block, keys);
            std::mem::swap(&mut s.x, &mut s.block.residual_3);
        }
        // Only each request's last new position goes through the final LayerNorm and the LM head.
        let mut end = 0;
        for ((cache, new), last) in caches.iter_mut().zip(tokens).zip(s.last.chunks_exact_mut(c)) {
            cache.advance(new.len());
            end += new.len();
            last.copy_from_slice(&s.x[(end - 1) * c..end * c]);
        }
        let ln_f = (&mut s.ln_f[..], &mut s.ln_f_mean[..], &mut s.ln_f_rstd[..]);
        self.head_forward(&mut s.logits, ln_f, &s.last, r, Precision::F32);
        Ok(&bufs.0.logits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::cross_entropy::IGNORE_INDEX;
    use crate::ops::test_util::check_gradient;
    use crate::rng::Rng;

    /// A tiny model with weights large enough that every gradient is clearly non-zero.
    fn tiny(dropout: f32) -> Gpt {
        let mut cfg = Config::new(13, 8, 8, 2, 2);
        cfg.dropout = dropout;
        let mut model = Gpt::new(cfg, 1).unwrap();
        let mut rng = Rng::new(2);
        model.params.iter_mut().for_each(|p| *p += 0.3 * rng.normal());
        model
    }

    /// The loss of one forward pass and the gradients of its backward pass, in a fresh workspace.
    fn loss_and_gradients(
        model: &Gpt,
        tokens: &[u32],
        b: usize,
        t: usize,
        targets: &[i32],
        seed: u64,
    ) -> (f32, Vec<f32>) {
        let (mut ws, mut grads) = (Workspace::new(), model.new_gradients());
        let loss = model.forward(&mut ws, tokens, b, t, Some(targets), Some(DropoutSeed::new(seed)));
        model.backward(&mut ws, &mut grads, 1.0).unwrap();
        (loss.unwrap().unwrap(), grads)
    }

    /// Whole-model finite-difference check of every parameter's gradient.
    fn check_model_gradients(dropout: f32) {
        let model = tiny(dropout);
        let (b, t) = (2, 6);
        let tokens: Vec<u32> = (0..b * t).map(|i| (i * 5 % 13) as u32).collect();
        let mut targets: Vec<i32> = (0..b * t).map(|i| (i * 7 % 13) as i32).collect();
        targets[3] = IGNORE_INDEX;
        // The same seed gives the same dropout masks in every forward pass.
        let loss_at = |params: &[f32]| {
            let m = Gpt::from_params(model.config.clone(), params.to_vec());
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
        let (_, grads) = loss_and_gradients(&model, &tokens, b, t, &targets, 9);
        check_gradient("whole model", &model.params, &grads, &[1.0], loss_at);
    }

    #[test]
    fn bf16_products_give_the_f32_loss_and_gradients_to_bf16_accuracy() {
        let model = tiny(0.0);
        let (b, t) = (2, 8); // 16 rows: more than matvec's few-row products, so bf16 applies
        let tokens: Vec<u32> = (0..b * t).map(|i| (i * 5 % 13) as u32).collect();
        let targets: Vec<i32> = (0..b * t).map(|i| (i * 3 % 13) as i32).collect();
        let pass = |precision| {
            let (mut ws, mut grads) = (Workspace::with_precision(precision), model.new_gradients());
            let loss = model.forward(&mut ws, &tokens, b, t, Some(&targets), None).unwrap();
            model.backward(&mut ws, &mut grads, 1.0).unwrap();
            (loss.unwrap(), grads)
        };
        let ((loss, grads), (loss_bf16, grads_bf16)) = (pass(Precision::F32), pass(Precision::Bf16));
        // bf16 keeps 8 significant bits: about 0.4% per operand
        assert!((loss - loss_bf16).abs() < 1e-2 * loss, "loss {loss} vs {loss_bf16}");
        let norm = |g: &[f32]| g.iter().map(|x| x * x).sum::<f32>().sqrt();
        let diff: Vec<f32> = grads.iter().zip(&grads_bf16).map(|(a, b)| a - b).collect();
        let relative = norm(&diff) / norm(&grads);
        assert!(
            relative > 0.0 && relative < 2e-2,
            "gradients differ by {relative} of their norm"
        );
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
        let model = tiny(0.0);
        let (tokens, targets) = ([1u32, 2, 3, 4], [2, 3, 4, 5]);
        let (_, once) = loss_and_gradients(&model, &tokens, 1, 4, &targets, 0);
        let (mut ws, mut twice) = (Workspace::new(), model.new_gradients());
        for _ in 0..2 {
            model.forward(&mut ws, &tokens, 1, 4, Some(&targets), None).unwrap();
            model.backward(&mut ws, &mut twice, 0.5).unwrap();
        }
        for (a, b) in once.iter().zip(&twice) {
            assert!((a - b).abs() <= 1e-6 * a.abs().max(1.0));
        }
    }

    #[test]
    fn backward_hands_on_each_bucket_when_its_gradient_is_final() {
        let model = tiny(0.1);
        let mut ws = Workspace::new();
        let (tokens, targets) = ([1u32, 2, 3, 4, 5, 6], [2, 3, 4, 5, 6, 7]);
        model
            .forward(&mut ws, &tokens, 2, 3, Some(&targets), Some(DropoutSeed::new(4)))
            .unwrap();
        let mut grads = model.new_gradients();
        let start = grads.as_ptr() as usize;
        let mut handed = Vec::new();
        model
            .backward_with(&mut ws, &mut grads, 1.0, |bucket| {
                let offset = (bucket.as_ptr() as usize - start) / size_of::<f32>();
                handed.push((offset..offset + bucket.len(), bucket.to_vec()));
            })
            .unwrap();
        let ranges: Vec<_> = handed.iter().map(|(range, _)| range.clone()).collect();
        assert_eq!(ranges, crate::model::params::backward_buckets(&model.config));
        for (range, values) in handed {
            assert_eq!(values, grads[range.clone()], "{range:?} changed after it was handed on");
        }
    }

    #[test]
    fn a_workspace_reused_across_batch_shapes_gives_a_fresh_workspaces_results() {
        // (B, T) = (4, 2), (1, 8), (2, 3): the same B·T, then a smaller one; the buffers grow
        // and shrink. Each pass must equal one in a new workspace.
        let model = tiny(0.1);
        let mut ws = Workspace::new();
        for (i, (b, t)) in [(4, 2), (1, 8), (2, 3)].into_iter().enumerate() {
            let tokens: Vec<u32> = (0..b * t).map(|j| ((i + 3 * j) % 13) as u32).collect();
            let targets: Vec<i32> = (0..b * t).map(|j| ((2 * i + j) % 13) as i32).collect();
            let mut grads = model.new_gradients();
            let loss = model.forward(&mut ws, &tokens, b, t, Some(&targets), Some(DropoutSeed::new(5)));
            model.backward(&mut ws, &mut grads, 1.0).unwrap();
            let (fresh_loss, fresh_grads) = loss_and_gradients(&model, &tokens, b, t, &targets, 5);
            assert_eq!(loss.unwrap().unwrap(), fresh_loss, "B={b} T={t}");
            assert_eq!(grads, fresh_grads, "B={b} T={t}");
        }
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let model = tiny(0.0);
        let mut ws = Workspace::new();
        let mut forward = |tokens: &[u32], t: usize, targets: Option<&[i32]>| {
            model
                .forward(&mut ws, tokens, 1, t, targets, None)
                .map_err(|e| e.to_string())
        };
        assert!(forward(&[1, 2, 13], 3, None).unwrap_err().contains("token id 13"));
        assert!(forward(&[0; 9], 9, None)
            .unwrap_err()
            .contains("longer than the context"));
        assert!(forward(&[0; 3], 4, None).is_err());
        assert!(forward(&[0; 4], 4, Some(&[0; 3])).is_err());
        assert!(forward(&[0; 4], 4, Some(&[0, 1, 2, 99])).is_err());
        forward(&[0; 4], 4, None).unwrap();
        let mut grads = model.new_gradients();
        assert!(
            model.backward(&mut ws, &mut grads, 1.0).is_err(),
            "backward without targets"
        );
        model.forward(&mut ws, &[0; 4], 1, 4, Some(&[1; 4]), None).unwrap();
        assert!(
            model.backward(&mut ws, &mut grads[1..], 1.0).is_err(),
            "a short gradient buffer"
        );
        let err = Gpt::new(Config::new(10, 8, 10, 1, 3), 0).err().unwrap().to_string();
        assert!(err.contains("divisible"), "{err}");
    }
}
