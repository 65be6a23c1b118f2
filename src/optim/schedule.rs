//! The learning-rate schedule of nanoGPT: linear warm-up, cosine decay, then a floor.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub lr: f32,
    pub min_lr: f32,
    pub warmup_iters: usize,
    pub lr_decay_iters: usize,
    /// false: `lr` at every step.
    pub decay_lr: bool,
}

impl LrSchedule {
    /// The learning rate of step `it` (0-based):
    /// `lr·(it+1)/(warmup+1)` while warming up, then `min_lr + ½(1 + cos(π·r))(lr - min_lr)` with
    /// r going from 0 to 1 until `lr_decay_iters`, then `min_lr`.
    pub fn at(&self, it: usize) -> f32 {
        if !self.decay_lr {
            return self.lr;
        }
        if it < self.warmup_iters {
            // it < warmup_iters, so only warmup_iters + 1 can overflow (saturating: the same f32).
            return self.lr * (it + 1) as f32 / self.warmup_iters.saturating_add(1) as f32;
        }
        if it > self.lr_decay_iters {
            return self.min_lr;
        }
        let ratio =
            (it - self.warmup_iters) as f64 / (self.lr_decay_iters.saturating_sub(self.warmup_iters)).max(1) as f64;
        let coeff = 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos());
        (self.min_lr as f64 + coeff * (self.lr - self.min_lr) as f64) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_linearly_then_decays_to_the_floor() {
        let s = LrSchedule {
            lr: 1.0,
            min_lr: 0.1,
            warmup_iters: 9,
            lr_decay_iters: 109,
            decay_lr: true,
        };
        assert_eq!(s.at(0), 0.1);
        assert_eq!(s.at(8), 0.9);
        assert_eq!(s.at(9), 1.0);
        assert!((s.at(59) - 0.55).abs() < 1e-6, "half way down the cosine");
        assert!((s.at(109) - 0.1).abs() < 1e-7);
        assert_eq!(s.at(1000), 0.1);
        assert_eq!(LrSchedule { decay_lr: false, ..s }.at(3), 1.0);
        let endless = LrSchedule {
            warmup_iters: usize::MAX,
            ..s
        };
        assert!(
            endless.at(0) > 0.0 && endless.at(0).is_finite(),
            "no overflow into 0 or NaN"
        );
    }
}
