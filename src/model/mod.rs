//! The GPT-2 model: parameters with named views, the activations of a forward pass, and the
//! forward and backward passes that read like the GPT-2 diagram.

pub mod activations;
pub mod gpt;
pub mod params;

pub use gpt::Gpt;
pub use params::{param_specs, TensorSpec, Weights};
