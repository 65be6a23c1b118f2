//! Weight formats on disk, and writing files so that a crash never leaves a broken one.

pub mod atomic;
pub mod hf;
pub mod safetensors;
