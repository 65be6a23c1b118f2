//! What a model is made of: every parameter tensor (name, shape, count), totals per module,
//! memory, and the arithmetic one token costs.

use crate::config::Config;
use crate::model::param_specs;
use serde::Serialize;

/// One parameter tensor.
#[derive(Debug, Clone, Serialize)]
pub struct TensorRow {
    pub name: String,
    pub shape: Vec<usize>,
    pub count: usize,
}

/// Parameters of one module (`wte`, `h.3.attn`, `h.3`, `ln_f`, ...).
#[derive(Debug, Clone, Serialize)]
pub struct ModuleTotal {
    pub module: String,
    pub count: usize,
}

/// The model's parameters and costs.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    pub n_inner: usize,
    pub vocab_size: usize,
    pub n_positions: usize,
    pub tensors: Vec<TensorRow>,
    /// Per module, in buffer order: `wte`, `wpe`, then for each block its `ln_1`, `attn`,
    /// `ln_2`, `mlp` and the block's total `h.{i}`, then `ln_f`.
    pub modules: Vec<ModuleTotal>,
    /// All parameters (the LM head is tied to `wte` and adds none).
    pub total_params: usize,
    /// Parameters without the position embedding (how nanoGPT counts).
    pub non_embedding_params: usize,
    /// Bytes of the parameters in f32.
    pub bytes_f32: usize,
    /// Sequence length the FLOPs are counted at (the full context).
    pub context: usize,
    /// Floating-point operations (a multiply-add is two) of one token's forward pass; see
    /// [`forward_flops_per_token`].
    pub forward_flops_per_token: u64,
    /// Forward + backward: three times the forward (the backward of a matrix multiply is two
    /// of the same size: one for the input's gradient, one for the weight's).
    pub train_flops_per_token: u64,
}

/// Summarises a model of shape `cfg`.
pub fn summarize(cfg: &Config) -> Summary {
    let tensors: Vec<TensorRow> = param_specs(cfg)
        .into_iter()
        .map(|s| TensorRow {
            count: s.numel(),
            name: s.name,
            shape: s.shape,
        })
        .collect();
    let mut modules: Vec<ModuleTotal> = Vec::new();
    let mut block: Option<ModuleTotal> = None; // the block being summed
    for tensor in &tensors {
        let module = module_of(&tensor.name);
        let in_block = block_of(module);
        if block.as_ref().is_some_and(|b| Some(b.module.as_str()) != in_block) {
            modules.extend(block.take());
        }
        if let Some(name) = in_block {
            block.get_or_insert_with(|| total(name)).count += tensor.count;
        }
        match modules.last_mut() {
            Some(last) if last.module == module => last.count += tensor.count,
            _ => modules.push(ModuleTotal {
                count: tensor.count,
                ..total(module)
            }),
        }
    }
    modules.extend(block);
    let total_params: usize = tensors.iter().map(|t| t.count).sum();
    let forward = forward_flops_per_token(cfg, cfg.n_positions);
    Summary {
        n_layer: cfg.n_layer,
        n_head: cfg.n_head,
        n_embd: cfg.n_embd,
        n_inner: cfg.n_inner,
        vocab_size: cfg.vocab_size,
        n_positions: cfg.n_positions,
        tensors,
        modules,
        total_params,
        non_embedding_params: total_params - cfg.n_positions * cfg.n_embd,
        bytes_f32: total_params * std::mem::size_of::<f32>(),
        context: cfg.n_positions,
        forward_flops_per_token: forward,
        train_flops_per_token: 3 * forward,
    }
}

/// FLOPs of one token's forward pass in a sequence of `context` tokens, counting the matrix
/// multiplies (2 per multiply-add), which are all but a fraction of a percent:
/// per block, the projections 2·(C·3C + C·C + C·F + F·C) and attention 2·2·context·C
/// (S = QKᵀ and P·V over every key; this implementation computes the full square, masked
/// after), then the LM head 2·C·V. LayerNorm, GELU, softmax and the adds are left out.
pub fn forward_flops_per_token(cfg: &Config, context: usize) -> u64 {
    let (c, f, v, l) = (
        cfg.n_embd as u64,
        cfg.n_inner as u64,
        cfg.vocab_size as u64,
        cfg.n_layer as u64,
    );
    let projections = 2 * (3 * c * c + c * c + 2 * c * f);
    let attention = 4 * context as u64 * c;
    l * (projections + attention) + 2 * c * v
}

/// `wte.weight` → `wte`; `h.3.attn.c_attn.bias` → `h.3.attn`; `h.3.ln_1.weight` → `h.3.ln_1`.
fn module_of(name: &str) -> &str {
    let parts: Vec<&str> = name.split('.').collect();
    let depth = if parts[0] == "h" { 3 } else { 1 };
    let end = parts[..depth].iter().map(|p| p.len() + 1).sum::<usize>() - 1;
    &name[..end]
}

/// `h.3.attn` → `h.3`; `wte` → None.
fn block_of(module: &str) -> Option<&str> {
    let mut parts = module.splitn(3, '.');
    match (parts.next(), parts.next()) {
        (Some("h"), Some(layer)) => Some(&module[..2 + layer.len()]),
        _ => None,
    }
}

fn total(module: &str) -> ModuleTotal {
    ModuleTotal {
        module: module.to_string(),
        count: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_small_has_124m_parameters_and_the_known_flops() {
        let s = summarize(&Config::preset("gpt2").unwrap());
        assert_eq!(s.total_params, 124_439_808);
        assert_eq!(s.non_embedding_params, 124_439_808 - 1024 * 768);
        assert_eq!(s.bytes_f32, 4 * 124_439_808);
        assert_eq!(s.tensors.len(), 2 + 12 * 12 + 2);
        assert_eq!(s.tensors[0].shape, [50257, 768]);
        let module = |name: &str| s.modules.iter().find(|m| m.module == name).unwrap().count;
        assert_eq!(module("h.0.attn"), 768 * 2304 + 2304 + 768 * 768 + 768);
        assert_eq!(module("h.0.mlp"), 768 * 3072 + 3072 + 3072 * 768 + 768);
        assert_eq!(module("h.11"), 7_087_872);
        assert_eq!(module("ln_f"), 2 * 768);
        // Each module once, each block's total after its parts.
        let parts: usize = s
            .modules
            .iter()
            .filter(|m| block_of(&m.module) != Some(&m.module))
            .map(|m| m.count)
            .sum();
        assert_eq!(parts, s.total_params);
        let names: Vec<&str> = s.modules.iter().take(8).map(|m| m.module.as_str()).collect();
        assert_eq!(
            names,
            ["wte", "wpe", "h.0.ln_1", "h.0.attn", "h.0.ln_2", "h.0.mlp", "h.0", "h.1.ln_1"]
        );
        assert_eq!(s.modules.last().unwrap().module, "ln_f");
        // 2·(non-embedding matmul weights + LM head) + attention: 2·(84,934,656 + 38,597,376) + 12·4·1024·768
        assert_eq!(s.forward_flops_per_token, 247_064_064 + 37_748_736);
        assert_eq!(s.train_flops_per_token, 3 * s.forward_flops_per_token);
    }

    #[test]
    fn module_names() {
        assert_eq!(module_of("wte.weight"), "wte");
        assert_eq!(module_of("h.10.attn.c_proj.bias"), "h.10.attn");
        assert_eq!(module_of("h.0.ln_2.weight"), "h.0.ln_2");
        assert_eq!(block_of("h.10.attn"), Some("h.10"));
        assert_eq!(block_of("ln_f"), None);
    }
}
