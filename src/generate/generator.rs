//! The decoding loop: prefill the prompt once, then sample and feed back one token per sample
//! and step, all samples side by side in one batched cached forward pass.

use super::sampling::Sampling;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::memory::{product, Need};
use crate::model::{Gpt, KvCache, KvDtype};
use crate::rng::Rng;
use serde::Serialize;
use std::collections::VecDeque;

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// New tokens per sample, at most (a sample also ends at a stop token).
    pub max_new_tokens: usize,
    /// Samples decoded side by side from the same prompt.
    pub num_samples: usize,
    pub sampling: Sampling,
    /// Token ids that end a sample, e.g. the tokenizer's `<|endoftext|>`.
    pub stop_tokens: Vec<u32>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 256,
            num_samples: 1,
            sampling: Sampling::default(),
            stop_tokens: Vec::new(),
        }
    }
}

/// The most samples one generator decodes side by side.
pub const MAX_SAMPLES: usize = 1 << 16;

/// One generated token of one sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    /// Which sample (0..num_samples) it belongs to.
    pub sample: usize,
    pub id: u32,
    /// Set on a sample's last token: why the sample ended.
    pub finish: Option<Finish>,
}

/// Why a sample ended; serialized as `stop_token`, `length` or `stop_string`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// The token is one of the stop tokens (it is still reported, like Hugging Face does).
    StopToken,
    /// The sample reached max_new_tokens.
    Length,
    /// The sample's text reached a stop string ([`super::TextGenerator`]); the text ends
    /// before it.
    StopString,
}

/// Streams generated tokens, one [`Token`] at a time, as an iterator.
///
/// Each sample draws from its own random stream, seeded from the caller's `rng` when the
/// generator is made, so sample i is the same whatever `num_samples` is and whenever other
/// samples stop.
///
/// Context overflow: when a sequence outgrows the model's n_positions, the model sees only
/// its last n_positions tokens, as nanoGPT's sample.py does. Positions then no longer line up
/// with the cache, so every such step recomputes the cache from the cropped window (a prefill
/// of n_positions tokens per step). A prompt longer than the context is cropped the same way.
pub struct Generator<'m> {
    model: &'m Gpt,
    options: GenerateOptions,
    cache: KvCache,
    rngs: Vec<Rng>,        // one per sample
    tokens: Vec<Vec<u32>>, // per sample: prompt + generated ids
    prompt_len: usize,
    rows: Vec<usize>,       // sample of each cache row: the samples still running
    logits: Vec<f32>,       // [rows, V] next-token logits of each running sample
    logits_stale: bool,     // the rows' last tokens still have to go through the model
    produced: usize,        // new tokens so far in each running sample
    queue: VecDeque<Token>, // sampled, not yet handed out
}

impl<'m> Generator<'m> {
    /// Validates the settings and prefills the prompt (in one pass, shared by all samples).
    pub fn new(model: &'m Gpt, prompt: &[u32], options: GenerateOptions, rng: &mut Rng) -> Result<Self> {
        options.sampling.validate()?;
        if !(1..=MAX_SAMPLES).contains(&options.num_samples) {
            return Err(Error::Input(format!(
                "num_samples must be between 1 and {MAX_SAMPLES}, got {}",
                options.num_samples
            )));
        }
        if prompt.is_empty() {
            return Err(Error::Input(
                "the prompt is empty: generation needs at least one token to start from".into(),
            ));
        }
        check_memory(&model.config, model.kv_dtype(), prompt.len(), &options)?;
        let n_positions = model.config.n_positions;
        let window = &prompt[prompt.len().saturating_sub(n_positions)..];
        let mut cache = model.kv_cache(1, prompt.len().saturating_add(options.max_new_tokens).min(n_positions))?;
        let prompt_logits = model.forward_cached(&mut cache, window)?.to_vec();
        cache.broadcast(options.num_samples)?;
        let logits = prompt_logits.repeat(options.num_samples);
        let samples = options.num_samples;
        Ok(Generator {
            model,
            cache,
            rngs: (0..samples).map(|_| Rng::new(rng.next_u64())).collect(),
            tokens: vec![prompt.to_vec(); samples],
            prompt_len: prompt.len(),
            rows: if options.max_new_tokens == 0 {
                Vec::new()
            } else {
                (0..samples).collect()
            },
            logits,
            logits_stale: false,
            produced: 0,
            queue: VecDeque::new(),
            options,
        })
    }

    /// Samples decoded side by side.
    pub fn num_samples(&self) -> usize {
        self.options.num_samples
    }

    /// The ids generated so far for `sample` (the prompt not included).
    pub fn new_tokens(&self, sample: usize) -> &[u32] {
        &self.tokens[sample][self.prompt_len..]
    }

    /// True once `sample` has ended (stop token, length, or [`Generator::stop_sample`]).
    pub fn is_finished(&self, sample: usize) -> bool {
        !self.rows.contains(&sample)
    }

    /// Ends `sample` now (say, because its text reached a stop string): it costs nothing more.
    pub fn stop_sample(&mut self, sample: usize) -> Result<()> {
        let keep: Vec<bool> = self.rows.iter().map(|&s| s != sample).collect();
        self.keep_rows(&keep)
    }

    /// Drops the cache rows, logits rows and running samples whose `keep` flag is false.
    fn keep_rows(&mut self, keep: &[bool]) -> Result<()> {
        if keep.iter().all(|&k| k) {
            return Ok(());
        }
        self.cache.retain(keep)?;
        let v = self.model.config.vocab_size;
        let mut kept = keep.iter();
        self.rows.retain(|_| *kept.next().expect("one flag per row"));
        let old = std::mem::take(&mut self.logits);
        self.logits = old
            .chunks_exact(v)
            .zip(keep)
            .filter(|(_, keep)| **keep)
            .flat_map(|(row, _)| row.iter().copied())
            .collect();
        Ok(())
    }

    /// Feeds each running sample's last token through the model (cropping to the context when
    /// it is full), then samples the next token of every running sample.
    fn step(&mut self) -> Result<()> {
        if self.logits_stale {
            let logits = if self.cache.len() < self.cache.capacity() {
                let last: Vec<u32> = self
                    .rows
                    .iter()
                    .map(|&s| *self.tokens[s].last().expect("prompt is not empty"))
                    .collect();
                self.model.forward_cached(&mut self.cache, &last)?
            } else {
                // Full context: keep the last n_positions tokens of each sample and recompute.
                let n = self.cache.capacity();
                let window: Vec<u32> = self
                    .rows
                    .iter()
                    .flat_map(|&s| &self.tokens[s][self.tokens[s].len() - n..])
                    .copied()
                    .collect();
                self.cache.clear();
                self.model.forward_cached(&mut self.cache, &window)?
            };
            self.logits.copy_from_slice(logits);
            self.logits_stale = false;
        }
        self.produced += 1;
        let v = self.model.config.vocab_size;
        let mut keep = Vec::with_capacity(self.rows.len());
        for (&sample, logits) in self.rows.iter().zip(self.logits.chunks_exact_mut(v)) {
            let id = self
                .options
                .sampling
                .sample(logits, &self.tokens[sample], &mut self.rngs[sample]);
            self.tokens[sample].push(id);
            let finish = if self.options.stop_tokens.contains(&id) {
                Some(Finish::StopToken)
            } else if self.produced == self.options.max_new_tokens {
                Some(Finish::Length)
            } else {
                None
            };
            keep.push(finish.is_none());
            self.queue.push_back(Token { sample, id, finish });
        }
        self.logits_stale = true;
        self.keep_rows(&keep)
    }
}

/// What generating needs up front (the cache of every sample, the largest pass over it, each
/// sample's logits), checked against the machine before any of it is allocated.
fn check_memory(cfg: &Config, kv: KvDtype, prompt_len: usize, options: &GenerateOptions) -> Result<()> {
    let samples = options.num_samples;
    let len = prompt_len.saturating_add(options.max_new_tokens);
    let capacity = len.min(cfg.n_positions);
    // Decoding feeds one token per sample, but once a sample outgrows the context each step
    // recomputes its whole window; before either, the prompt is prefilled in one row.
    let step = if len > cfg.n_positions { capacity } else { 1 };
    let passes = KvCache::pass_floats(cfg, samples, step).max(KvCache::pass_floats(cfg, 1, prompt_len.min(capacity)));
    Need::new()
        .floats("KV cache", KvCache::cache_floats(cfg, samples, capacity, kv))
        .floats("forward pass buffers", passes)
        .floats("next-token logits", product(&[samples, cfg.vocab_size]))
        .check(
            &format!("generating {samples} sample(s) with a context of {capacity} tokens"),
            "use fewer samples (--num-samples) or fewer new tokens (--max-new-tokens)",
        )
}

impl Iterator for Generator<'_> {
    type Item = Result<Token>;

    fn next(&mut self) -> Option<Result<Token>> {
        if self.queue.is_empty() && !self.rows.is_empty() {
            if let Err(e) = self.step() {
                self.rows.clear();
                return Some(Err(e));
            }
        }
        self.queue.pop_front().map(Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_beyond_the_machine_are_refused_before_anything_is_allocated() {
        let cfg = Config::preset("gpt2").unwrap();
        let options = |num_samples| GenerateOptions {
            num_samples,
            max_new_tokens: 1000,
            ..Default::default()
        };
        // 65536 caches of 1010 positions: 4.9 TB.
        let err = check_memory(&cfg, KvDtype::F32, 10, &options(MAX_SAMPLES))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("generating 65536 sample(s) with a context of 1010 tokens needs about")
                && err.contains("KV cache 4.9 TB")
                && err.contains("--num-samples"),
            "{err}"
        );
        check_memory(&cfg, KvDtype::F32, 10, &options(1)).unwrap();
    }
}
