//! Text generation: sampling strategies ([`Sampling`]), the decoding loop with a KV cache
//! ([`Generator`], an iterator of tokens for streaming), and [`TextStream`], which turns the
//! bytes of streamed tokens into printable text and watches for stop strings.

pub mod generator;
pub mod sampling;
pub mod stream;

pub use generator::{Finish, GenerateOptions, Generator, Token};
pub use sampling::Sampling;
pub use stream::TextStream;

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
    let options = GenerateOptions {
        max_new_tokens,
        num_samples: 1,
        sampling: sampling.clone(),
        stop_tokens: Vec::new(),
    };
    let mut generator = Generator::new(model, prompt, options, rng)?;
    for token in generator.by_ref() {
        token?;
    }
    Ok(generator.new_tokens(0).to_vec())
}
