//! GPT-2 from scratch: a model you can read, train, run and look inside.
//!
//! Data flows one way: text → [`tokenizer`] → token ids → [`model::Gpt`] → logits, then either
//! loss → backward → [`optim`] (training) or logits → sampler (generation).

pub mod bench;
pub mod config;
pub mod data;
pub mod dist;
pub mod error;
pub mod eval;
pub mod files;
pub mod generate;
pub mod inspect;
pub mod io;
pub mod memory;
pub mod model;
pub mod ops;
pub mod optim;
pub mod plot;
pub mod rng;
pub mod runlog;
pub mod serve;
pub mod tokenizer;
pub mod train;

pub use config::Config;
pub use error::{Error, Result};
pub use generate::{generate_ids, Generator, Sampling};
pub use model::{Gpt, KvCache, KvDtype, Workspace};
