//! Several rounds of a step benchmark, each ours then PyTorch's back to back, summarized by
//! medians: a shared host drifts by tens of percent from minute to minute, and the ratio within
//! a round drifts far less than either time.

use super::pytorch::PytorchResult;
use super::{median, peak_rss_mb, BenchResult};
use crate::error::{Error, Result};
use serde::Serialize;

/// One round: our measurement, and the PyTorch peer's when it ran too.
#[derive(Debug, Clone)]
pub struct Round {
    pub ours: BenchResult,
    pub pytorch: Option<PytorchResult>,
}

/// What the rounds come to. It serializes as `gpt2 bench train|forward --json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct RoundsSummary {
    /// The last round's result with the median step time over the rounds (tokens/s follows
    /// from it) and the peak memory of the whole run.
    #[serde(flatten)]
    pub ours: BenchResult,
    pub rounds: usize,
    /// Against PyTorch, over the rounds in which it ran.
    #[serde(flatten)]
    pub versus_pytorch: Option<Comparison>,
}

/// Our step time against PyTorch's over several rounds.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// PyTorch's result in the last round it ran.
    pub pytorch: PytorchResult,
    /// The median of PyTorch's step times, in milliseconds.
    pub pytorch_step_ms_median: f64,
    /// The median of the rounds' own speed-ups (see [`PytorchResult::step_speedup`]).
    #[serde(rename = "speedup_vs_pytorch")]
    pub speedup: f64,
    /// Each round's speed-up, in order.
    #[serde(rename = "speedup_per_round")]
    pub per_round: Vec<f64>,
}

impl Comparison {
    /// The smallest of the rounds' speed-ups.
    pub fn lowest(&self) -> f64 {
        self.per_round
            .iter()
            .copied()
            .min_by(f64::total_cmp)
            .expect("at least one round")
    }

    /// The largest of the rounds' speed-ups.
    pub fn highest(&self) -> f64 {
        self.per_round
            .iter()
            .copied()
            .max_by(f64::total_cmp)
            .expect("at least one round")
    }
}

/// Medians over `rounds` (at least one); the speed-up is the median of the rounds' ratios, not
/// the ratio of the medians.
pub fn summarize_rounds(rounds: &[Round]) -> Result<RoundsSummary> {
    let last = rounds
        .last()
        .ok_or_else(|| Error::Input("a summary needs at least one round".into()))?;
    let mut step_ms: Vec<f64> = rounds.iter().map(|r| r.ours.step_ms_median).collect();
    let step_ms = median(&mut step_ms);
    let mut ours = last.ours.clone();
    ours.tokens_per_s *= ours.step_ms_median / step_ms;
    ours.step_ms_median = step_ms;
    ours.peak_rss_mb = peak_rss_mb();
    Ok(RoundsSummary {
        ours,
        rounds: rounds.len(),
        versus_pytorch: compare(rounds),
    })
}

/// Our rounds against PyTorch's, over those in which it ran; `None` if it never did.
fn compare(rounds: &[Round]) -> Option<Comparison> {
    let peers: Vec<(&BenchResult, &PytorchResult)> = rounds
        .iter()
        .filter_map(|r| Some((&r.ours, r.pytorch.as_ref()?)))
        .collect();
    let pytorch = peers.last()?.1.clone();
    let per_round: Vec<f64> = peers.iter().map(|(ours, peer)| peer.step_speedup(ours)).collect();
    let mut peer_ms: Vec<f64> = peers.iter().map(|(_, peer)| peer.step_ms_median).collect();
    Some(Comparison {
        pytorch,
        pytorch_step_ms_median: median(&mut peer_ms),
        speedup: median(&mut per_round.clone()),
        per_round,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours(step_ms_median: f64) -> BenchResult {
        BenchResult {
            step_ms_median,
            tokens_per_s: 1000.0 / step_ms_median, // one token per step
            peak_rss_mb: 1.0,
            steps: 3,
            batch_size: 1,
            block_size: 1,
            params: 10,
            threads: 1,
            shards: 1,
            precision: crate::ops::matmul::Precision::F32,
        }
    }

    fn pytorch(step_ms_median: f64) -> PytorchResult {
        serde_json::from_value(serde_json::json!({
            "step_ms_median": step_ms_median, "tokens_per_s": 1.0, "peak_rss_mb": 2.0, "mode": "train"
        }))
        .unwrap()
    }

    #[test]
    fn rounds_give_median_times_and_the_median_of_the_rounds_ratios() {
        let rounds: Vec<Round> = [(10.0, 40.0), (20.0, 30.0), (12.0, 60.0)]
            .into_iter()
            .map(|(ours_ms, peer_ms)| Round {
                ours: ours(ours_ms),
                pytorch: Some(pytorch(peer_ms)),
            })
            .collect();
        let summary = summarize_rounds(&rounds).unwrap();
        assert_eq!((summary.rounds, summary.ours.step_ms_median), (3, 12.0));
        assert!((summary.ours.tokens_per_s - 1000.0 / 12.0).abs() < 1e-9);
        let versus = summary.versus_pytorch.as_ref().unwrap();
        assert_eq!(versus.per_round, [4.0, 1.5, 5.0]);
        // The median ratio (4) is not the ratio of the medians (40 / 12).
        assert_eq!((versus.speedup, versus.lowest(), versus.highest()), (4.0, 1.5, 5.0));
        assert_eq!((versus.pytorch_step_ms_median, &versus.pytorch), (40.0, &pytorch(60.0)));
        let json = serde_json::to_value(&summary).unwrap();
        assert_eq!((&json["rounds"], &json["speedup_vs_pytorch"]), (&3.into(), &4.0.into()));
        assert_eq!(json["speedup_per_round"], serde_json::json!([4.0, 1.5, 5.0]));
        assert_eq!(
            (&json["pytorch"]["mode"], &json["step_ms_median"]),
            (&"train".into(), &12.0.into())
        );
    }

    #[test]
    fn without_pytorch_there_is_no_comparison_and_no_rounds_is_an_error() {
        let rounds = [10.0, 30.0].map(|ms| Round {
            ours: ours(ms),
            pytorch: None,
        });
        let summary = summarize_rounds(&rounds).unwrap();
        assert_eq!(summary.ours.step_ms_median, 20.0);
        assert!(summary.versus_pytorch.is_none());
        let json = serde_json::to_value(&summary).unwrap();
        assert!(json.get("pytorch").is_none() && json.get("speedup_vs_pytorch").is_none());
        assert!(matches!(summarize_rounds(&[]), Err(Error::Input(_))));
    }
}
