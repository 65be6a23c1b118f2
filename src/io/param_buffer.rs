//! The flat parameter buffer as a loader fills it, tensor by tensor: every format checks shapes,
//! duplicates and missing tensors the same way, and names tensors in the file's own terms.
//!
//! Loading in bf16 or q8_0, the weight matrices are stored in that dtype as they are read and
//! only the other tensors go to the f32 buffer: [`ParamBuffer::read`] converts a row-major
//! matrix (wte) a chunk of rows at a time, handing the file's pages back as it goes; a matrix
//! written through [`ParamBuffer::slot`] waits in an f32 scratch buffer until the next call.

use super::dtype::dtype_width;
use super::mapped::MappedFile;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::model::lowp::{store_matrix, LowpWeights};
use crate::model::params::{is_matrix, Layout};
use crate::model::{num_params, param_specs, Gpt, TensorSpec};
use crate::ops::lowp::{Kernels, LowpMatrix, WeightDtype};
use safetensors::Dtype;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Rows of wte converted at a time when loading in low precision (12 MiB of f32 for GPT-2).
const CHUNK_ROWS: usize = 4096;

pub struct ParamBuffer {
    config: Config,
    specs: Vec<TensorSpec>,
    /// Where each tensor starts in `params`; None for a matrix stored in low precision.
    offsets: Vec<Option<usize>>,
    by_name: HashMap<String, usize>,
    filled: Vec<bool>,
    params: Vec<f32>,
    /// The low-precision dtype and kernels, or None for f32.
    lowp: Option<(WeightDtype, Kernels)>,
    matrices: HashMap<String, LowpMatrix>,
    /// A matrix handed out by `slot` in f32 (its index, the path for errors), stored at the next call.
    pending: Option<(usize, PathBuf)>,
    scratch: Vec<f32>,
}

impl ParamBuffer {
    /// A zeroed buffer for `config`, whose tensors are read from `path`, which holds
    /// `data_bytes` bytes of tensors; the weight matrices in `dtype`. Every format stores at
    /// least 2 bytes a parameter, so a config that needs more is refused before anything is
    /// allocated. (The pages are only touched as tensors are written: a load peaks at the
    /// buffer plus what the reader holds.)
    pub fn new(config: &Config, path: &Path, data_bytes: u64, dtype: WeightDtype) -> Result<Self> {
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
        let lowp = match dtype {
            WeightDtype::F32 => None,
            _ => Some((dtype, Kernels::from_env()?)),
        };
        let specs = param_specs(config);
        let mut offsets = Vec::with_capacity(specs.len());
        let mut total = 0;
        for s in &specs {
            match lowp.is_some() && is_matrix(&s.name) {
                true => offsets.push(None),
                false => {
                    offsets.push(Some(total));
                    total += s.numel();
                }
            }
        }
        let by_name = specs.iter().enumerate().map(|(i, s)| (s.name.clone(), i)).collect();
        Ok(ParamBuffer {
            config: config.clone(),
            filled: vec![false; specs.len()],
            specs,
            offsets,
            by_name,
            params: vec![0.0; total],
            lowp,
            matrices: HashMap::new(),
            pending: None,
            scratch: Vec::new(),
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
        self.store_pending()?;
        if std::mem::replace(&mut self.filled[i], true) {
            return Err(Error::weights(path, format!("tensor '{file_name}' appears twice")));
        }
        let numel = self.specs[i].numel();
        match self.offsets[i] {
            Some(start) => Ok(&mut self.params[start..start + numel]),
            None => {
                self.pending = Some((i, path.to_path_buf()));
                self.scratch.resize(numel, 0.0);
                Ok(&mut self.scratch)
            }
        }
    }

    /// Reads parameter `i` from `data`, a tensor of `file` stored as `dtype` (the file's order
    /// is ours), handing the file's pages back as it goes.
    pub fn read(&mut self, i: usize, file: &MappedFile, dtype: Dtype, data: &[u8], file_name: &str) -> Result<()> {
        let path = file.path();
        let read_err = |msg: String| Error::weights(path, format!("tensor '{file_name}': {msg}"));
        match (self.lowp, self.specs[i].name == "wte.weight") {
            (Some((lowp_dtype, _)), true) => {
                self.store_pending()?;
                if std::mem::replace(&mut self.filled[i], true) {
                    return Err(Error::weights(path, format!("tensor '{file_name}' appears twice")));
                }
                let (n, k) = (self.specs[i].shape[0], self.specs[i].shape[1]);
                let width = dtype_width(dtype).map_err(read_err)?;
                if data.len() != n * k * width {
                    return Err(read_err(format!(
                        "holds {} bytes, expected {}",
                        data.len(),
                        n * k * width
                    )));
                }
                let matrix = LowpMatrix::from_row_chunks(n, k, lowp_dtype, CHUNK_ROWS, |rows, out| {
                    file.read_f32(dtype, &data[rows.start * k * width..rows.end * k * width], out)
                })
                .map_err(|msg| Error::weights(path, format!("tensor '{file_name}' {msg}")))?;
                self.matrices.insert(self.specs[i].name.clone(), matrix);
                Ok(())
            }
            _ => {
                let slot = self.slot(i, path, file_name)?;
                file.read_f32(dtype, data, slot).map_err(read_err)
            }
        }
    }

    /// Stores the matrix waiting in f32 in the low-precision dtype.
    fn store_pending(&mut self) -> Result<()> {
        let (Some((i, path)), Some((dtype, _))) = (self.pending.take(), self.lowp) else {
            return Ok(());
        };
        let spec = &self.specs[i];
        let matrix = store_matrix(spec, &self.scratch, dtype).map_err(|msg| Error::weights(path, msg))?;
        self.matrices.insert(spec.name.clone(), matrix);
        Ok(())
    }

    /// The model, once every parameter has been written; otherwise names the first missing one
    /// as the file would (`file_name` maps our name to the format's).
    pub fn finish(mut self, path: &Path, file_name: impl Fn(&str) -> String) -> Result<Gpt> {
        self.store_pending()?;
        if let Some(i) = self.filled.iter().position(|&f| !f) {
            return Err(Error::weights(
                path,
                format!("missing tensor '{}'", file_name(&self.specs[i].name)),
            ));
        }
        Ok(match self.lowp {
            None => Gpt::from_params(self.config, self.params),
            Some((_, kernels)) => {
                debug_assert_eq!(
                    self.params.len(),
                    Layout::WithoutMatrices
                        .specs(&self.config)
                        .iter()
                        .map(TensorSpec::numel)
                        .sum::<usize>()
                );
                let lowp = LowpWeights::assemble(&self.config, self.matrices, kernels);
                Gpt::from_lowp(self.config, self.params, lowp)
            }
        })
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
