//! The PyTorch peer's figures: `scripts/bench_pytorch.py --json` prints one JSON object, read
//! into a [`PytorchResult`]; how many times faster ours is; the generation benchmark with
//! PyTorch's figures beside ours ([`GenerateSummary`]).

use super::{BenchResult, GenerateBenchResult};
use serde::{Deserialize, Serialize};

/// What `scripts/bench_pytorch.py --json` measured. The figures that comparisons use are typed;
/// everything else it prints (its settings, each step's time, the torch version) is kept as it
/// came, so that the result serializes to the same object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PytorchResult {
    /// Median wall time of one step in milliseconds (generate: of one decoded token).
    pub step_ms_median: f64,
    /// Tokens per second at the median step time (generate: the decode speed).
    pub tokens_per_s: f64,
    /// Peak resident memory of the Python process, in MiB.
    pub peak_rss_mb: f64,
    /// Generate only: the median time of a one-token `generate()`, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefill_ms: Option<f64>,
    /// The rest of the object.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

impl PytorchResult {
    /// How many times faster our step is: PyTorch's median step time over ours.
    pub fn step_speedup(&self, ours: &BenchResult) -> f64 {
        self.step_ms_median / ours.step_ms_median
    }

    /// How many times faster our decoding is: our decode tokens/s over PyTorch's.
    pub fn decode_speedup(&self, ours: &GenerateBenchResult) -> f64 {
        ours.tokens_per_s / self.tokens_per_s
    }
}

/// The generation benchmark: ours, and PyTorch's beside it when it ran. It serializes as
/// `gpt2 bench generate --json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct GenerateSummary {
    #[serde(flatten)]
    pub ours: GenerateBenchResult,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pytorch: Option<PytorchResult>,
    /// See [`PytorchResult::decode_speedup`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speedup_vs_pytorch: Option<f64>,
}

impl GenerateSummary {
    pub fn new(ours: GenerateBenchResult, pytorch: Option<PytorchResult>) -> Self {
        GenerateSummary {
            speedup_vs_pytorch: pytorch.as_ref().map(|peer| peer.decode_speedup(&ours)),
            ours,
            pytorch,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line as the script prints it for `--mode generate`.
    const GENERATE: &str = r#"{"tokens_per_s": 40.0, "step_ms_median": 25.0, "prefill_ms": 12.5, "step_ms": [25.0, 24.0], "n_params": 124439808, "prompt_tokens": 16, "new_tokens": 128, "peak_rss_mb": 700.5, "mode": "generate", "preset": null, "threads": 2, "torch": "2.5.1"}"#;

    #[test]
    fn the_scripts_object_reads_into_typed_figures_and_serializes_back_the_same() {
        let result: PytorchResult = serde_json::from_str(GENERATE).unwrap();
        assert_eq!(
            (
                result.step_ms_median,
                result.tokens_per_s,
                result.peak_rss_mb,
                result.prefill_ms
            ),
            (25.0, 40.0, 700.5, Some(12.5))
        );
        assert_eq!(result.other["torch"], "2.5.1");
        let original: serde_json::Value = serde_json::from_str(GENERATE).unwrap();
        assert_eq!(serde_json::to_value(&result).unwrap().to_string(), original.to_string());
        // Train and forward results have no prefill time, and keep none.
        let train = r#"{"step_ms_median": 250.0, "tokens_per_s": 64.0, "peak_rss_mb": 1.0, "batch_size": 4}"#;
        let result: PytorchResult = serde_json::from_str(train).unwrap();
        assert_eq!(result.prefill_ms, None);
        assert_eq!(
            serde_json::to_value(&result).unwrap().to_string(),
            serde_json::from_str::<serde_json::Value>(train).unwrap().to_string()
        );
        assert!(serde_json::from_str::<PytorchResult>(r#"{"tokens_per_s": 1.0}"#).is_err());
    }
}
