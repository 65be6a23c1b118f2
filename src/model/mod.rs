//! The GPT-2 model: parameters with named views, the transformer block (one code path for
//! training and cached inference), the whole model's forward and backward passes, and the
//! buffers those passes write (a workspace, a KV cache), which their callers own.

pub mod block;
pub mod data_parallel;
pub mod gpt;
pub mod kv_cache;
pub mod lora;
pub mod lowp;
pub mod params;
pub mod workspace;

pub use data_parallel::DataParallel;
pub use gpt::Gpt;
pub use kv_cache::{KvCache, KvDtype, StepBuffers};
pub use params::{non_finite_tensors, num_params, param_specs, TensorSpec, Weights};
pub use workspace::Workspace;
