//! The flat parameter buffer as a loader fills it, tensor by tensor: every format checks shapes,
//! duplicates and missing tensors the same way, and names tensors in the file's own terms.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::model::{num_params, param_specs, TensorSpec};
use std::collections::HashMap;
use std::path::Path;

pub struct ParamBuffer {
    specs: Vec<TensorSpec>,
    offsets: Vec<usize>,
    by_name: HashMap<String, usize>,
    filled: Vec<bool>,
    params: Vec<f32>,
}

impl ParamBuffer {
    /// A zeroed buffer for `config`, whose tensors are read from `path`, which holds
    /// `data_bytes` bytes of tensors. Every format stores at least 2 bytes a parameter, so a
    /// config that needs more is refused before anything is allocated. (The pages are only
    /// touched as tensors are written: a load peaks at the buffer plus what the reader holds.)
    pub fn new(config: &Config, path: &Path, data_bytes: u64) -> Result<Self> {
        let needed = 2 * num_params(config) as u64;
        if needed > data_bytes {
            return Err(Error::weights(
                path,
                format!(
                    "the hyper-parameters ({} layers, n_embd {}, vocab {}) need at least {needed} bytes of tensors, \
                     but the weights hold only {data_bytes}: a truncated file, or the hyper-parameters of another model",
                    config.n_layer, config.n_embd, config.vocab_size
                ),
            ));
        }
        let specs = param_specs(config);
        let mut offsets = Vec::with_capacity(specs.len());
        let mut total = 0;
        for s in &specs {
            offsets.push(total);
            total += s.numel();
        }
        let by_name = specs.iter().enumerate().map(|(i, s)| (s.name.clone(), i)).collect();
        Ok(ParamBuffer {
            filled: vec![false; specs.len()],
            specs,
            offsets,
            by_name,
            params: vec![0.0; total],
        })
    }

    /// The parameters in buffer order.
    pub fn specs(&self) -> &[TensorSpec] {
        &self.specs
    }

    /// The index of the parameter with this Hugging Face name.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// The slice of parameter `i`, to be written once; `file_name` names the tensor in `path`.
    pub fn slot(&mut self, i: usize, path: &Path, file_name: &str) -> Result<&mut [f32]> {
        if std::mem::replace(&mut self.filled[i], true) {
            return Err(Error::weights(path, format!("tensor '{file_name}' appears twice")));
        }
        let start = self.offsets[i];
        Ok(&mut self.params[start..start + self.specs[i].numel()])
    }

    /// The buffer, once every parameter has been written; otherwise names the first missing one
    /// as the file would (`file_name` maps our name to the format's).
    pub fn finish(self, path: &Path, file_name: impl Fn(&str) -> String) -> Result<Vec<f32>> {
        match self.filled.iter().position(|&f| !f) {
            Some(i) => Err(Error::weights(
                path,
                format!("missing tensor '{}'", file_name(&self.specs[i].name)),
            )),
            None => Ok(self.params),
        }
    }
}

/// The error for a tensor whose shape is not the one the hyper-parameters imply.
pub fn check_shape(path: &Path, name: &str, found: &[usize], expected: &[usize], source: &str) -> Result<()> {
    if found == expected {
        return Ok(());
    }
    Err(Error::weights(
        path,
        format!("tensor '{name}' has shape {found:?}, expected {expected:?} from {source}"),
    ))
}
