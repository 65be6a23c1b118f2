//! llm.c's model checkpoint (`gpt2_124M.bin`): written by `write_model` in llm.c's
//! train_gpt2.py, read by `gpt2_build_from_checkpoint` in train_gpt2.c / .cu.
//!
//! ```text
//! header   256 int32 LE: [0] magic 20240326, [1] version (3: fp32 tensors, 5: bf16),
//!          [2] maxT (n_positions), [3] V (vocab), [4] L (layers), [5] NH (heads), [6] C,
//!          [7] Vp (V padded up to a multiple of 128; rows V..Vp are zero), the rest 0
//! tensors  each for all layers before the next:
//!          wte [Vp, C], wpe [maxT, C], ln1w [L, C], ln1b [L, C], qkvw [L, 3C, C], qkvb [L, 3C],
//!          attprojw [L, C, C], attprojb [L, C], ln2w [L, C], ln2b [L, C], fcw [L, 4C, C],
//!          fcb [L, 4C], fcprojw [L, C, 4C], fcprojb [L, C], lnfw [C], lnfb [C]
//! ```
//!
//! The matrices are nn.Linear's [out, in]: the transpose of our Conv1D [in, out]. Within a
//! layer the tensors come in our order, so the file order is ours regrouped by tensor kind.

use super::atomic::{check_replaceable, write_file};
use super::mapped::MappedFile;
use super::param_buffer::ParamBuffer;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::files;
use crate::model::{num_params, param_specs, Gpt};
use crate::ops::lowp::half::f32_to_bf16;
use crate::ops::lowp::WeightDtype;
use crate::ops::matmul::transpose;
use faer::Par;
use safetensors::Dtype;
use std::collections::HashMap;
use std::path::Path;

pub const MAGIC: i32 = 20240326;
const HEADER_BYTES: usize = 256 * 4;
/// llm.c pads the vocabulary to a multiple of this (for its GPU kernels).
const VOCAB_MULTIPLE: usize = 128;

/// The per-layer tensors, in the order of the file's groups (which is also ours).
const LAYER_TENSORS: [&str; 12] = [
    "ln_1.weight",
    "ln_1.bias",
    "attn.c_attn.weight",
    "attn.c_attn.bias",
    "attn.c_proj.weight",
    "attn.c_proj.bias",
    "ln_2.weight",
    "ln_2.bias",
    "mlp.c_fc.weight",
    "mlp.c_fc.bias",
    "mlp.c_proj.weight",
    "mlp.c_proj.bias",
];

/// The tensor type of an llm.c checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LlmcDtype {
    /// Version 3.
    F32,
    /// Version 5 (bf16 rounded to nearest even, as torch converts).
    Bf16,
}

impl LlmcDtype {
    fn version(self) -> i32 {
        match self {
            LlmcDtype::F32 => 3,
            LlmcDtype::Bf16 => 5,
        }
    }

    /// The stored type, in the terms of the converters.
    fn stored(self) -> Dtype {
        match self {
            LlmcDtype::F32 => Dtype::F32,
            LlmcDtype::Bf16 => Dtype::BF16,
        }
    }

    fn width(self) -> usize {
        match self {
            LlmcDtype::F32 => 4,
            LlmcDtype::Bf16 => 2,
        }
    }
}

/// Our parameter names in file order.
fn file_order(n_layer: usize) -> Vec<String> {
    let mut names = vec!["wte.weight".to_string(), "wpe.weight".to_string()];
    for tensor in LAYER_TENSORS {
        names.extend((0..n_layer).map(|l| format!("h.{l}.{tensor}")));
    }
    names.extend(["ln_f.weight".to_string(), "ln_f.bias".to_string()]);
    names
}

/// Whether a tensor is stored transposed (the Linear weights of a block).
fn is_linear_weight(name: &str, shape: &[usize]) -> bool {
    shape.len() == 2 && name.starts_with("h.")
}

/// The padded vocabulary size llm.c uses for `vocab_size`.
pub fn padded_vocab(vocab_size: usize) -> usize {
    vocab_size.div_ceil(VOCAB_MULTIPLE) * VOCAB_MULTIPLE
}

/// The config in the header of the llm.c file at `path` (the tensors are not read).
pub fn read_config(path: &Path) -> Result<Config> {
    use std::io::Read;
    let mut header = Vec::with_capacity(HEADER_BYTES);
    files::open(path)?
        .take(HEADER_BYTES as u64)
        .read_to_end(&mut header)
        .map_err(|e| Error::io(path, e))?;
    Ok(read_header(path, &header)?.0)
}

/// Parses and checks the header: the config, the padded vocabulary and the tensor type.
fn read_header(path: &Path, bytes: &[u8]) -> Result<(Config, usize, LlmcDtype)> {
    if bytes.len() < HEADER_BYTES {
        return Err(Error::weights(
            path,
            format!("{} bytes, shorter than the llm.c header (1024 bytes)", bytes.len()),
        ));
    }
    let int = |i: usize| i32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().expect("4 bytes"));
    if int(0) != MAGIC {
        return Err(Error::weights(
            path,
            format!("not an llm.c checkpoint: magic {}, expected {MAGIC}", int(0)),
        ));
    }
    let dtype = match int(1) {
        3 => LlmcDtype::F32,
        5 => LlmcDtype::Bf16,
        v => {
            return Err(Error::weights(
                path,
                format!("llm.c checkpoint version {v} is not supported (3: fp32, 5: bf16; older versions have no padded vocabulary: re-export with llm.c's current train_gpt2.py)"),
            ))
        }
    };
    let field = |i: usize, name: &str| {
        usize::try_from(int(i))
            .map_err(|_| Error::weights(path, format!("header field {name} is negative: {}", int(i))))
    };
    let (max_t, v, l, nh, c, vp) = (
        field(2, "maxT")?,
        field(3, "V")?,
        field(4, "L")?,
        field(5, "NH")?,
        field(6, "C")?,
        field(7, "Vp")?,
    );
    let config = Config::new(v, max_t, c, l, nh);
    config
        .validate()
        .map_err(|e| Error::weights(path, format!("header: {e}")))?;
    if vp < v {
        return Err(Error::weights(
            path,
            format!("header: padded vocabulary Vp = {vp} is smaller than V = {v}"),
        ));
    }
    Ok((config, vp, dtype))
}

/// Loads an llm.c checkpoint (fp32 or bf16).
pub fn load_llmc(path: &Path) -> Result<Gpt> {
    load_llmc_as(path, WeightDtype::F32)
}

/// [`load_llmc`] with the weight matrices stored in `dtype_as` as they are read.
pub fn load_llmc_as(path: &Path, dtype_as: WeightDtype) -> Result<Gpt> {
    let file = MappedFile::open(path)?;
    let bytes = file.bytes();
    let (config, vp, dtype) = read_header(path, bytes)?;
    let width = dtype.width();
    let params = (num_params(&config) + (vp - config.vocab_size) * config.n_embd) as u64;
    let expected = HEADER_BYTES as u64 + params * width as u64;
    if bytes.len() as u64 != expected {
        return Err(Error::weights(
            path,
            format!(
                "{} bytes, but its header (V={}, Vp={vp}, maxT={}, L={}, C={}, {:?}) means {expected}{}",
                bytes.len(),
                config.vocab_size,
                config.n_positions,
                config.n_layer,
                config.n_embd,
                dtype,
                if (bytes.len() as u64) < expected {
                    " (truncated?)"
                } else {
                    ""
                }
            ),
        ));
    }
    let mut buf = ParamBuffer::new(&config, path, expected - HEADER_BYTES as u64, dtype_as)?;
    let mut scratch = Vec::new();
    let mut pos = HEADER_BYTES;
    for name in file_order(config.n_layer) {
        let i = buf.find(&name).expect("file_order lists our parameters");
        let shape = buf.specs()[i].shape.clone();
        let numel: usize = shape.iter().product();
        let stored = if name == "wte.weight" {
            vp * config.n_embd
        } else {
            numel
        };
        let data = &bytes[pos..pos + stored * width];
        pos += stored * width;
        let slot = buf.slot(i, path, &name)?;
        let used = &data[..numel * width]; // wte: the padding rows are dropped
        if is_linear_weight(&name, &shape) {
            scratch.resize(numel, 0.0);
            file.read_f32(dtype.stored(), used, &mut scratch)
                .map_err(|msg| Error::weights(path, msg))?;
            // scratch: [out, in] -> slot: [in, out]
            transpose(slot, &scratch, shape[1], shape[0], Par::rayon(0));
        } else {
            file.read_f32(dtype.stored(), used, slot)
                .map_err(|msg| Error::weights(path, msg))?;
        }
        file.release(data);
    }
    buf.finish(path, str::to_string)
}

/// Appends `values` to `out` in `dtype`, little-endian.
fn encode(values: &[f32], dtype: LlmcDtype, out: &mut Vec<u8>) {
    match dtype {
        LlmcDtype::F32 => values.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        LlmcDtype::Bf16 => values
            .iter()
            .for_each(|&x| out.extend_from_slice(&f32_to_bf16(x).to_le_bytes())),
    }
}

/// Whether the file `path` starts with the llm.c magic number.
fn has_magic(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok_and(|_| i32::from_le_bytes(magic) == MAGIC)
}

/// Writes the model as an llm.c checkpoint, atomically. The vocabulary is padded to a multiple
/// of 128 with zero rows, as llm.c's exporter does. Only an llm.c checkpoint is replaced: any
/// other thing at `path` is an error ([`check_replaceable`]).
pub fn save_llmc(model: &Gpt, path: &Path, dtype: LlmcDtype) -> Result<()> {
    check_replaceable(path, "an llm.c checkpoint", has_magic)?;
    let cfg = &model.config;
    if cfg.n_inner != 4 * cfg.n_embd {
        return Err(Error::Config(format!(
            "llm.c models have n_inner = 4 * n_embd; this one has {}",
            cfg.n_inner
        )));
    }
    let vp = padded_vocab(cfg.vocab_size);
    let int = |x: usize| i32::try_from(x).map_err(|_| Error::Config(format!("{x} does not fit llm.c's int32 header")));
    let mut header = [0i32; 256];
    header[..8].copy_from_slice(&[
        MAGIC,
        dtype.version(),
        int(cfg.n_positions)?,
        int(cfg.vocab_size)?,
        int(cfg.n_layer)?,
        int(cfg.n_head)?,
        int(cfg.n_embd)?,
        int(vp)?,
    ]);
    // Where each parameter lies in our flat buffer.
    let mut by_name = HashMap::new();
    let mut offset = 0;
    for s in param_specs(cfg) {
        let numel = s.numel();
        by_name.insert(s.name, (offset, s.shape));
        offset += numel;
    }
    write_file(path, |w| {
        header.iter().try_for_each(|h| w.write_all(&h.to_le_bytes()))?;
        let mut scratch = Vec::new();
        let mut bytes = Vec::new();
        for name in file_order(cfg.n_layer) {
            let (offset, shape) = &by_name[&name];
            let offset = *offset;
            let numel: usize = shape.iter().product();
            let mut values = &model.params[offset..offset + numel];
            if is_linear_weight(&name, shape) {
                scratch.resize(numel, 0.0);
                // [in, out] -> [out, in]
                transpose(&mut scratch, values, shape[0], shape[1], Par::rayon(0));
                values = &scratch;
            }
            for chunk in values.chunks(1 << 16) {
                bytes.clear();
                encode(chunk, dtype, &mut bytes);
                w.write_all(&bytes)?;
            }
            if name == "wte.weight" {
                w.write_all(&vec![0u8; (vp - cfg.vocab_size) * cfg.n_embd * dtype.width()])?;
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabulary_padding() {
        assert_eq!(padded_vocab(50257), 50304);
        assert_eq!(padded_vocab(96), 128);
        assert_eq!(padded_vocab(128), 128);
    }
}
