//! An evaluation prompt set decoded with several strategies side by side (greedy against
//! top-k or top-p with a temperature), each continuation measured:
//!
//! - `tokens`: new tokens (up to, not counting, `<|endoftext|>`);
//! - `distinct_1`, `distinct_2`: distinct token ids, and distinct pairs of consecutive ids, over
//!   all of them (Li et al. 2016); low values mean repetitive text;
//! - `repeated_4gram`: the fraction of the continuation's 4-grams of ids that already occurred
//!   earlier in it (degenerate loops drive it to 1);
//! - `mean_loss`: the model's own mean next-token loss on the continuation given the prompt
//!   (low for greedy text, which the model finds likely; higher for sampled text).

use super::{continuation_loss, within};
use crate::error::{Error, Result};
use crate::generate::{generate_ids_until, Sampling};
use crate::model::Gpt;
use crate::rng::Rng;
use crate::tokenizer::Tokenizer;
use serde::Serialize;
use std::collections::HashSet;

/// The strategies compared by default.
pub const DEFAULT_STRATEGIES: &str = "greedy,top-k=40:t=0.8,top-p=0.9:t=1.0";

/// A named decoding strategy.
#[derive(Debug, Clone, PartialEq)]
pub struct Strategy {
    /// As written, e.g. `top-k=40:t=0.8`.
    pub name: String,
    pub sampling: Sampling,
}

/// Parses a comma-separated list of strategies; each is `greedy`, or settings joined by `:`
/// among `top-k=K`, `top-p=P`, `t=T` (temperature, default 1) and `rep=R` (repetition penalty).
pub fn parse_strategies(text: &str) -> Result<Vec<Strategy>> {
    let strategies = text
        .split(',')
        .map(|name| {
            let name = name.trim();
            let bad = |what: String| Error::Input(format!("strategy {name:?}: {what}"));
            let mut sampling = Sampling::default();
            if name != "greedy" {
                for setting in name.split(':') {
                    let (key, value) = setting.split_once('=').ok_or_else(|| {
                        bad(format!(
                            "{setting:?} is not KEY=VALUE (greedy, or top-k=K, top-p=P, t=T, rep=R joined by ':')"
                        ))
                    })?;
                    let number = |v: &str| v.parse::<f32>().map_err(|e| bad(format!("{setting}: {e}")));
                    match key {
                        "top-k" => sampling.top_k = Some(value.parse().map_err(|e| bad(format!("{setting}: {e}")))?),
                        "top-p" => sampling.top_p = number(value)?,
                        "t" => sampling.temperature = number(value)?,
                        "rep" => sampling.repetition_penalty = number(value)?,
                        _ => return Err(bad(format!("unknown setting {key:?} (top-k, top-p, t, rep)"))),
                    }
                }
            } else {
                sampling = Sampling::greedy();
            }
            sampling.validate().map_err(|e| bad(e.to_string()))?;
            Ok(Strategy {
                name: name.to_string(),
                sampling,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(strategies)
}

/// The measures of one continuation (or, in a summary, their means over the prompts).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Measures {
    pub tokens: f64,
    pub distinct_1: f64,
    pub distinct_2: f64,
    pub repeated_4gram: f64,
    pub mean_loss: f64,
}

impl Measures {
    /// The diversity measures of `ids` (the loss is filled in by the caller).
    pub fn of(ids: &[u32]) -> Measures {
        let distinct = |n: usize| {
            let grams: Vec<&[u32]> = ids.windows(n).collect();
            match grams.len() {
                0 => 0.0,
                total => grams.iter().collect::<HashSet<_>>().len() as f64 / total as f64,
            }
        };
        let mut seen = HashSet::new();
        let fours: Vec<&[u32]> = ids.windows(4).collect();
        let repeated = fours.iter().filter(|gram| !seen.insert(**gram)).count();
        Measures {
            tokens: ids.len() as f64,
            distinct_1: distinct(1),
            distinct_2: distinct(2),
            repeated_4gram: if fours.is_empty() {
                0.0
            } else {
                repeated as f64 / fours.len() as f64
            },
            mean_loss: 0.0,
        }
    }

    fn mean(all: &[&Measures]) -> Measures {
        let n = all.len().max(1) as f64;
        let mean = |f: fn(&Measures) -> f64| all.iter().map(|m| f(m)).sum::<f64>() / n;
        Measures {
            tokens: mean(|m| m.tokens),
            distinct_1: mean(|m| m.distinct_1),
            distinct_2: mean(|m| m.distinct_2),
            repeated_4gram: mean(|m| m.repeated_4gram),
            mean_loss: mean(|m| m.mean_loss),
        }
    }
}

/// One prompt continued with one strategy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Continuation {
    pub prompt: String,
    pub strategy: String,
    pub text: String,
    #[serde(flatten)]
    pub measures: Measures,
}

/// A strategy's measures averaged over the prompts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StrategySummary {
    pub strategy: String,
    #[serde(flatten)]
    pub mean: Measures,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PromptsReport {
    pub seed: u64,
    pub max_new_tokens: usize,
    pub summary: Vec<StrategySummary>,
    pub continuations: Vec<Continuation>,
}

/// Continues every prompt with every strategy: the i-th prompt (from 0) with a random stream
/// seeded by seed + i for each strategy, so a strategy's text does not depend on the others.
/// A prompt must be shorter than the model's context; prompt and continuation beyond it are
/// cropped as `gpt2 generate` crops them (the model sees the last n_positions tokens).
pub fn compare_strategies(
    model: &Gpt,
    tokenizer: &Tokenizer,
    prompts: &[String],
    strategies: &[Strategy],
    max_new_tokens: usize,
    seed: u64,
) -> Result<PromptsReport> {
    let n = model.config.n_positions;
    let stop: Vec<u32> = tokenizer.eot_token().into_iter().collect();
    let mut continuations = Vec::new();
    for (i, prompt) in prompts.iter().enumerate() {
        let ids = tokenizer
            .encode(prompt)
            .map_err(|e| within(&format!("prompt {} ({prompt:?})", i + 1), e))?;
        if ids.is_empty() || ids.len() >= n {
            return Err(Error::Input(format!(
                "prompt {} ({prompt:?}) is {} tokens: it must be at least one and shorter than the model's context of {n}",
                i + 1,
                ids.len()
            )));
        }
        for strategy in strategies {
            let mut rng = Rng::new(seed.wrapping_add(i as u64));
            let mut new = generate_ids_until(model, &ids, max_new_tokens, &strategy.sampling, &stop, &mut rng)?;
            if new.last().is_some_and(|id| stop.contains(id)) {
                new.pop();
            }
            let mut measures = Measures::of(&new);
            if !new.is_empty() {
                measures.mean_loss = continuation_loss(model, &ids, &new)?;
            }
            continuations.push(Continuation {
                prompt: prompt.clone(),
                strategy: strategy.name.clone(),
                text: String::from_utf8_lossy(&tokenizer.decode_bytes_lossy(&new)).into_owned(),
                measures,
            });
        }
    }
    let summary = strategies
        .iter()
        .map(|s| StrategySummary {
            strategy: s.name.clone(),
            mean: Measures::mean(
                &continuations
                    .iter()
                    .filter(|c| c.strategy == s.name)
                    .map(|c| &c.measures)
                    .collect::<Vec<_>>(),
            ),
        })
        .collect();
    Ok(PromptsReport {
        seed,
        max_new_tokens,
        summary,
        continuations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategies_parse_and_bad_ones_are_named() {
        let s = parse_strategies(DEFAULT_STRATEGIES).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].sampling, Sampling::greedy());
        assert_eq!((s[1].sampling.top_k, s[1].sampling.temperature), (Some(40), 0.8));
        assert_eq!((s[2].sampling.top_p, s[2].sampling.temperature), (0.9, 1.0));
        for (bad, says) in [
            ("top-k", "KEY=VALUE"),
            ("beam=4", "unknown setting"),
            ("top-p=2", "--top-p"),
            ("t=x", "t=x"),
        ] {
            let err = parse_strategies(bad).unwrap_err().to_string();
            assert!(err.contains(bad) && err.contains(says), "{err}");
        }
    }

    #[test]
    fn diversity_measures_count_ids() {
        let m = Measures::of(&[1, 2, 3, 4, 1, 2, 3, 4]);
        assert_eq!(m.tokens, 8.0);
        assert_eq!(m.distinct_1, 0.5);
        assert_eq!(m.distinct_2, 4.0 / 7.0); // 12 23 34 41 12 23 34
        assert_eq!(m.repeated_4gram, 1.0 / 5.0); // 1234 2341 3412 4123 1234
        assert_eq!(Measures::of(&[]), Measures::default());
    }
}
