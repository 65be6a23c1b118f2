//! Choosing the next token from a row of logits, with Hugging Face `generate()` semantics.
//!
//! In order: repetition penalty; then greedy argmax when the temperature is 0, or else
//! logits / temperature, top-k, top-p (nucleus) and a draw from the softmax of what is left.

use crate::error::{Error, Result};
use crate::ops;
use crate::rng::Rng;

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// Softmax temperature; 0 means greedy (always the most likely token).
    pub temperature: f32,
    /// Keep only the k most likely tokens (and any tied with the k-th); `None` keeps all.
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches top_p; 1 keeps all.
    pub top_p: f32,
    /// Hugging Face's repetition penalty: the logit z of every token already in the sequence
    /// (prompt included) becomes z / penalty if z > 0, else z · penalty. 1 is no penalty.
    pub repetition_penalty: f32,
}

impl Default for Sampling {
    /// Plain sampling from the model's distribution: temperature 1, no filtering, no penalty.
    fn default() -> Self {
        Sampling {
            temperature: 1.0,
            top_k: None,
            top_p: 1.0,
            repetition_penalty: 1.0,
        }
    }
}

impl Sampling {
    /// Greedy decoding, Hugging Face's `do_sample=False`.
    pub fn greedy() -> Self {
        Sampling {
            temperature: 0.0,
            ..Sampling::default()
        }
    }

    /// Checks the settings: temperature >= 0, top_k >= 1, top_p in (0, 1], penalty > 0, each
    /// finite. The errors name the command-line flags, which users meet first.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::Input(format!(
                "--temperature must be a finite number >= 0 (0 = greedy), got {}",
                self.temperature
            )));
        }
        if self.top_k == Some(0) {
            return Err(Error::Input(
                "--top-k must be >= 1 (leave it out to keep every token)".into(),
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::Input(format!("--top-p must be in (0, 1], got {}", self.top_p)));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(Error::Input(format!(
                "--repetition-penalty must be a finite number > 0 (1: off), got {}",
                self.repetition_penalty
            )));
        }
        Ok(())
    }

    /// Picks the next token from `logits` [V] (changed in place) given the sequence so far.
    pub fn sample(&self, logits: &mut [f32], history: &[u32], rng: &mut Rng) -> u32 {
        if self.repetition_penalty != 1.0 {
            apply_repetition_penalty(logits, history, self.repetition_penalty);
        }
        if self.temperature == 0.0 {
            return argmax(logits);
        }
        // Unnormalised softmax of logits / T, in place: w = exp((z - max) / T).
        let inv_t = 1.0 / self.temperature;
        let max = ops::max(logits);
        if !(inv_t.is_finite() && max.is_finite()) {
            return argmax(logits); // a temperature so small that 1 / T overflows: greedy
        }
        logits.iter_mut().for_each(|z| *z = ops::exp((*z - max) * inv_t));
        // Top-k: the k-th largest weight is the floor (ties with it stay, as in HF).
        let floor = match self.top_k.filter(|&k| k < logits.len()) {
            Some(k) => *logits.to_vec().select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a)).1,
            None => 0.0,
        };
        let mut weighted: Vec<(u32, f32)> = (0..).zip(logits.iter().copied()).filter(|&(_, w)| w >= floor).collect();
        if self.top_p < 1.0 {
            keep_nucleus(&mut weighted, self.top_p);
        }
        draw(&weighted, rng)
    }
}

/// Top-p: keeps the most likely tokens, most likely first, up to the first whose cumulative
/// weight reaches `top_p` of the total. Sorts only as much as it needs: the top 64, then the
/// top 512, and so on.
fn keep_nucleus(weighted: &mut Vec<(u32, f32)>, top_p: f32) {
    let target = top_p * weighted.iter().map(|w| w.1).sum::<f32>();
    let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let mut block = 64;
    loop {
        let k = block.min(weighted.len());
        block *= 8;
        if k < weighted.len() {
            weighted.select_nth_unstable_by(k - 1, order); // the top k first, in any order
        }
        weighted[..k].sort_unstable_by(order);
        let mut cumulative = 0.0;
        let reached = weighted[..k].iter().position(|w| {
            cumulative += w.1;
            cumulative >= target
        });
        if let Some(i) = reached {
            weighted.truncate(i + 1);
            return;
        }
        if k == weighted.len() {
            return; // rounding kept the total just below the target: keep everything
        }
    }
}

/// HF's `RepetitionPenaltyLogitsProcessor`: each distinct token in `history` has its logit
/// divided by `penalty` when positive, multiplied when negative (both make it less likely).
pub fn apply_repetition_penalty(logits: &mut [f32], history: &[u32], penalty: f32) {
    let mut seen = vec![false; logits.len()];
    for &id in history {
        let id = id as usize;
        if id < logits.len() && !std::mem::replace(&mut seen[id], true) {
            let z = &mut logits[id];
            *z = if *z < 0.0 { *z * penalty } else { *z / penalty };
        }
    }
}

/// Index of the largest logit; the first one on ties (as `torch.argmax`).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &z) in logits.iter().enumerate() {
        if z > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Draws a token with probability proportional to its weight.
fn draw(weighted: &[(u32, f32)], rng: &mut Rng) -> u32 {
    let total: f32 = weighted.iter().map(|w| w.1).sum();
    let mut u = rng.uniform() * total;
    for &(id, w) in weighted {
        if u < w {
            return id;
        }
        u -= w;
    }
    // Rounding left u just above the last weight: that token it is.
    weighted.iter().rev().find(|w| w.1 > 0.0).unwrap_or(&weighted[0]).0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frequencies(s: &Sampling, logits: &[f32], draws: usize) -> Vec<f64> {
        let mut rng = Rng::new(1);
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..draws {
            counts[s.sample(&mut logits.to_vec(), &[], &mut rng) as usize] += 1;
        }
        counts.iter().map(|&c| c as f64 / draws as f64).collect()
    }

    fn softmax(z: &[f32]) -> Vec<f64> {
        let e: Vec<f64> = z.iter().map(|&x| (x as f64).exp()).collect();
        let sum: f64 = e.iter().sum();
        e.iter().map(|x| x / sum).collect()
    }

    const LOGITS: [f32; 6] = [1.0, 3.0, -2.0, 2.5, 0.0, 2.9];

    #[test]
    fn greedy_takes_the_first_maximum() {
        let s = Sampling::greedy();
        assert_eq!(s.sample(&mut LOGITS.to_vec(), &[], &mut Rng::new(0)), 1);
        assert_eq!(argmax(&[0.5, 2.0, 2.0, 1.0]), 1);
    }

    #[test]
    fn a_vanishing_temperature_is_greedy() {
        // 1e-38 keeps 1/T finite but sends every other z/T to -inf; 1e-45 overflows 1/T.
        for t in [1e-38f32, 1e-45] {
            let s = Sampling {
                temperature: t,
                ..Sampling::default()
            };
            for seed in 0..20 {
                assert_eq!(s.sample(&mut LOGITS.to_vec(), &[], &mut Rng::new(seed)), 1, "T={t}");
            }
        }
    }

    #[test]
    fn temperature_one_draws_from_the_softmax_and_temperature_scales_it() {
        for t in [1.0f32, 0.5] {
            let s = Sampling {
                temperature: t,
                ..Sampling::default()
            };
            let freq = frequencies(&s, &LOGITS, 200_000);
            let scaled: Vec<f32> = LOGITS.iter().map(|z| z / t).collect();
            for (f, p) in freq.iter().zip(softmax(&scaled)) {
                assert!((f - p).abs() < 0.005, "T={t}: frequency {f} vs probability {p}");
            }
        }
    }

    #[test]
    fn top_k_keeps_the_k_most_likely_and_their_ties() {
        let s = Sampling {
            top_k: Some(2),
            ..Sampling::default()
        };
        let freq = frequencies(&s, &LOGITS, 50_000);
        let p = softmax(&[3.0, 2.9]);
        assert!(
            (freq[1] - p[0]).abs() < 0.01 && (freq[5] - p[1]).abs() < 0.01,
            "{freq:?}"
        );
        assert_eq!(freq[1] + freq[5], 1.0);
        let tied = Sampling {
            top_k: Some(1),
            ..Sampling::default()
        };
        let freq = frequencies(&tied, &[1.0, 2.0, 2.0, 0.0], 10_000);
        assert!(freq[1] > 0.4 && freq[2] > 0.4 && freq[0] == 0.0, "{freq:?}");
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        // Probabilities of LOGITS, most likely first: 0.37 (id 1), 0.33 (id 5), 0.22 (id 3), ...
        let p = softmax(&LOGITS);
        let s = Sampling {
            top_p: 0.6,
            ..Sampling::default()
        };
        let freq = frequencies(&s, &LOGITS, 50_000);
        // 0.37 < 0.6, 0.37 + 0.33 >= 0.6: ids 1 and 5 stay, renormalised.
        let kept = p[1] + p[5];
        assert!(
            (freq[1] - p[1] / kept).abs() < 0.01 && (freq[5] - p[5] / kept).abs() < 0.01,
            "{freq:?}"
        );
        assert_eq!(freq[1] + freq[5], 1.0);
        // A tiny top_p keeps only the most likely token.
        let s = Sampling {
            top_p: 1e-6,
            ..Sampling::default()
        };
        assert_eq!(frequencies(&s, &LOGITS, 1000)[1], 1.0);
    }

    #[test]
    fn a_nucleus_wider_than_the_first_sorted_block_is_found() {
        // 1000 equally likely tokens: top_p 0.5 keeps 500 of them (ties: lower ids first).
        let s = Sampling {
            top_p: 0.5,
            ..Sampling::default()
        };
        let freq = frequencies(&s, &[0.0; 1000], 20_000);
        assert!(freq[..500].iter().all(|&f| f > 0.0) && freq[500..].iter().all(|&f| f == 0.0));
    }

    #[test]
    fn repetition_penalty_follows_hugging_face() {
        let mut z = vec![2.0, -1.0, 0.5, 3.0];
        // Repeated ids are penalised once.
        apply_repetition_penalty(&mut z, &[0, 1, 1, 0], 2.0);
        assert_eq!(z, vec![1.0, -2.0, 0.5, 3.0]);
        let s = Sampling {
            repetition_penalty: 10.0,
            ..Sampling::greedy()
        };
        assert_eq!(s.sample(&mut LOGITS.to_vec(), &[1], &mut Rng::new(0)), 5);
    }

    #[test]
    fn invalid_settings_are_errors() {
        let bad = [
            Sampling {
                temperature: -0.1,
                ..Sampling::default()
            },
            Sampling {
                temperature: f32::NAN,
                ..Sampling::default()
            },
            Sampling {
                top_k: Some(0),
                ..Sampling::default()
            },
            Sampling {
                top_p: 0.0,
                ..Sampling::default()
            },
            Sampling {
                top_p: 1.5,
                ..Sampling::default()
            },
            Sampling {
                top_p: f32::NAN,
                ..Sampling::default()
            },
            Sampling {
                repetition_penalty: 0.0,
                ..Sampling::default()
            },
        ];
        for s in bad {
            assert!(s.validate().is_err(), "{s:?}");
        }
        assert!(Sampling::default().validate().is_ok() && Sampling::greedy().validate().is_ok());
        assert!(Sampling {
            top_k: Some(1),
            top_p: 1.0,
            ..Sampling::default()
        }
        .validate()
        .is_ok());
    }
}
