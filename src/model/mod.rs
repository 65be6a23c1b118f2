//! The GPT-2 model: parameters with named views, the activations of a forward pass, and the
//! forward and backward passes that read like the GPT-2 diagram, and the KV-cached
//! inference forward used for generation.

pub mod activations;
pub mod data_parallel;
pub mod gpt;
pub mod kv_cache;
pub mod params;

pub use data_parallel::DataParallel;
pub use gpt::Gpt;
pub use kv_cache::KvCache;
pub use params::{num_params, param_specs, TensorSpec, Weights};
