//! What a training run leaves in its run directory for others to read: the directory's layout,
//! the append-only JSON-lines logs, and the parameter-statistics records. The trainer writes
//! them and `inspect` reads them; this module sits below both, so neither imports the other.

pub mod jsonl;
pub mod param_stats;

/// The run directory's copy of the model before training, written when a run starts.
pub const INIT_DIR: &str = "init";
