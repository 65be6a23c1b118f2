//! A model's weight matrices in bf16 or q8_0, for inference: the tied token embedding / LM
//! head and each block's four linear layers. LayerNorms, biases and the position embedding stay
//! f32 in the flat buffer (a few percent of the weights), laid out as [`Layout::WithoutMatrices`].

use super::params::{is_matrix, param_specs, Layout, TensorSpec, Weights};
use crate::config::Config;
use crate::ops::lowp::{Kernels, LowpMatrix, WeightDtype};
use std::collections::HashMap;

/// One block's linear layers, stored [out, in].
pub struct LowpBlock {
    pub c_attn: LowpMatrix,    // [3C, C]
    pub attn_proj: LowpMatrix, // [C, C]
    pub c_fc: LowpMatrix,      // [F, C]
    pub mlp_proj: LowpMatrix,  // [C, F]
    /// The kernels the products run on (chosen once for the model).
    pub kernels: Kernels,
}

/// Every weight matrix of a model, in one low-precision dtype.
pub struct LowpWeights {
    pub wte: LowpMatrix, // [V, C]: a row per token, for the embedding and the LM head
    pub blocks: Vec<LowpBlock>,
    pub kernels: Kernels,
}

/// Stores the weight matrix `name` (an [`is_matrix`] parameter of shape `shape`, values `w`)
/// in `dtype`: wte as it is ([V, C], a row per output), a Conv1D weight [in, out] by columns.
pub fn store_matrix(spec: &TensorSpec, w: &[f32], dtype: WeightDtype) -> Result<LowpMatrix, String> {
    let (a, b) = (spec.shape[0], spec.shape[1]);
    match spec.name.as_str() {
        "wte.weight" => LowpMatrix::from_rows(w, a, b, dtype),
        _ => LowpMatrix::from_columns(w, a, b, dtype),
    }
    .map_err(|msg| format!("tensor '{}' {msg}", spec.name))
}

impl LowpWeights {
    /// The matrices of `cfg` from their stored forms, by parameter name; each must be there.
    pub fn assemble(cfg: &Config, mut matrices: HashMap<String, LowpMatrix>, kernels: Kernels) -> Self {
        let mut take = |name: String| matrices.remove(&name).expect("every matrix stored");
        LowpWeights {
            wte: take("wte.weight".into()),
            blocks: (0..cfg.n_layer)
                .map(|l| LowpBlock {
                    c_attn: take(format!("h.{l}.attn.c_attn.weight")),
                    attn_proj: take(format!("h.{l}.attn.c_proj.weight")),
                    c_fc: take(format!("h.{l}.mlp.c_fc.weight")),
                    mlp_proj: take(format!("h.{l}.mlp.c_proj.weight")),
                    kernels,
                })
                .collect(),
            kernels,
        }
    }

    /// The matrices of the f32 buffer `params` ([`Layout::Full`]) in `dtype`, and the buffer
    /// of the other tensors ([`Layout::WithoutMatrices`]).
    pub fn split_from(
        cfg: &Config,
        params: &[f32],
        dtype: WeightDtype,
        kernels: Kernels,
    ) -> Result<(Self, Vec<f32>), String> {
        let mut rest = Vec::with_capacity(Layout::WithoutMatrices.specs(cfg).iter().map(TensorSpec::numel).sum());
        let mut matrices = HashMap::new();
        let mut offset = 0;
        for spec in param_specs(cfg) {
            let w = &params[offset..offset + spec.numel()];
            offset += spec.numel();
            match is_matrix(&spec.name) {
                true => {
                    let stored = store_matrix(&spec, w, dtype)?;
                    matrices.insert(spec.name, stored);
                }
                false => rest.extend_from_slice(w),
            }
        }
        Ok((LowpWeights::assemble(cfg, matrices, kernels), rest))
    }

    pub fn dtype(&self) -> WeightDtype {
        self.wte.dtype()
    }

    /// Bytes of the matrices as stored.
    pub fn bytes(&self) -> usize {
        let blocks = self.blocks.iter();
        self.wte.bytes()
            + blocks
                .map(|b| b.c_attn.bytes() + b.attn_proj.bytes() + b.c_fc.bytes() + b.mlp_proj.bytes())
                .sum::<usize>()
    }

    /// The stored bytes of every matrix.
    pub fn stored(&self) -> Vec<&[u8]> {
        let blocks = self.blocks.iter();
        let matrices = blocks.flat_map(|b| [&b.c_attn, &b.attn_proj, &b.c_fc, &b.mlp_proj]);
        std::iter::once(&self.wte)
            .chain(matrices)
            .map(LowpMatrix::as_bytes)
            .collect()
    }

    /// Writes the matrices, as their stored values read back in f32, into `w` (views of a
    /// [`Layout::Full`] buffer).
    pub fn dequantize_into(&self, w: &mut Weights<&mut [f32]>) {
        let rows = |m: &LowpMatrix, out: &mut [f32]| {
            out.chunks_exact_mut(m.cols())
                .enumerate()
                .for_each(|(i, row)| m.dequantize_row(i, row))
        };
        // a Conv1D weight [in, out]: stored row i is column i
        let columns = |m: &LowpMatrix, out: &mut [f32]| {
            let mut row = vec![0.0; m.cols()];
            for i in 0..m.rows() {
                m.dequantize_row(i, &mut row);
                out[i..]
                    .iter_mut()
                    .step_by(m.rows())
                    .zip(&row)
                    .for_each(|(o, &r)| *o = r);
            }
        };
        rows(&self.wte, w.wte);
        for (b, l) in w.blocks.iter_mut().zip(&self.blocks) {
            columns(&l.c_attn, b.attn.c_attn_w);
            columns(&l.attn_proj, b.attn.c_proj_w);
            columns(&l.c_fc, b.mlp.c_fc_w);
            columns(&l.mlp_proj, b.mlp.c_proj_w);
        }
    }
}
