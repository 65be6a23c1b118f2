//! Text → token ids on disk → training batches.
//!
//! [`corpus`] reads the text files, [`shard`] stores their token ids in a memory-mapped binary
//! file cached by content, and [`batches`] cuts the ids into (input, target) windows.

pub mod batches;
pub mod corpus;
pub mod instructions;
pub mod shard;

pub use batches::{eval_starts, Batch, BatchStream, DataPosition, Dataset, Split, Windows};
pub use corpus::{read_corpus, Document};
pub use shard::{corpus_key, tokenize_cached, Shard};
