//! Text generation: sampling strategies ([`Sampling`]), the decoding loop with a KV cache
//! ([`Generator`], an iterator of tokens for streaming), and [`TextGenerator`], which decodes
//! the streamed tokens into text, ends samples at stop strings and says why each ended, with
//! [`TextStream`] turning one sample's token bytes into printable text.

pub mod generator;
pub mod sampling;
pub mod stream;
pub mod text;

pub use generator::{Finish, GenerateOptions, Generator, Token, MAX_SAMPLES};
pub use sampling::Sampling;
pub use stream::TextStream;
pub use text::{TextGenerator, TextToken};

use crate::error::Result;
use crate::model::Gpt;
use crate::rng::Rng;

/// Generates `max_new_tokens` ids after `prompt` (one sample, no stop token) and returns only
/// the new ids. `rng` advances by one draw, so successive calls give different samples.
pub fn generate_ids(
    model: &Gpt,
    prompt: &[u32],
    max_new_tokens: usize,
    sampling: &Sampling,
    rng: &mut Rng,
) -> Result<Vec<u32>> {
    generate_ids_until(model, prompt, max_new_tokens, sampling, &[], rng)
}

/// [`generate_ids`] ending the sample at one of `stop_tokens` too (kept as its last id).
pub fn generate_ids_until(
    model: &Gpt,
    prompt: &[u32],
    max_new_tokens: usize,
    sampling: &Sampling,
    stop_tokens: &[u32],
    rng: &mut Rng,
) -> Result<Vec<u32>> {
    let options = GenerateOptions {
        max_new_tokens,
        num_samples: 1,
        sampling: sampling.clone(),
        stop_tokens: stop_tokens.to_vec(),
    };
    let mut generator = Generator::new(model, prompt, options, rng)?;
    for token in generator.by_ref() {
        token?;
    }
    Ok(generator.new_tokens(0).to_vec())
}
