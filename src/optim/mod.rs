//! The optimiser: AdamW with its weight-decay groups, global gradient-norm clipping, and the
//! learning-rate schedule. It sits above the model's parameter layout (it groups tensors by
//! their shapes) and below the trainer; the numeric kernels it uses are in [`crate::ops`].

pub mod adamw;
pub mod schedule;

pub use adamw::{clip_factor, AdamW, AdamWConfig, StepScalars};
pub use schedule::LrSchedule;
