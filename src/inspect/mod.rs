//! Looking inside models and training runs.

pub mod evolution;
