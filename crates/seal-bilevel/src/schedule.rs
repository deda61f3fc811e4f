//! Learning-rate schedules and SEAL's upper-level weight λ.
//!
//! The official scripts (<https://github.com/hanshen95/SEAL>,
//! `examples/scripts/train_selector_llama3.sh`) use a constant learning rate
//! for the ranker and the model, `transformers.get_scheduler` semantics with
//! 3% warmup for the cosine alternative, and an upper-level weight that starts
//! at 1.0 and drops by 0.03 at the start of every epoch after the first
//! (`SFTSelectorTrainer.fit`).

use crate::error::{BilevelError, Result};
use serde::{Deserialize, Serialize};

/// A learning-rate schedule: a multiplier of the base rate per step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", tag = "kind")]
#[non_exhaustive]
pub enum Schedule {
    /// The base rate throughout.
    #[default]
    Constant,
    /// Linear warmup over `ceil(warmup_ratio · total)` steps, then a cosine
    /// decay to zero at `total` (transformers' `cosine`).
    Cosine {
        /// Fraction of the run spent warming up (official: 0.03).
        warmup_ratio: f64,
    },
}

impl Schedule {
    /// The multiplier at `step` (0-based) of a run of `total` steps.
    pub fn factor(&self, step: usize, total: usize) -> f64 {
        match *self {
            Schedule::Constant => 1.0,
            Schedule::Cosine { warmup_ratio } => {
                let warmup = (warmup_ratio * total as f64).ceil() as usize;
                if step < warmup {
                    return step as f64 / warmup.max(1) as f64;
                }
                let progress =
                    (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
                (0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())).max(0.0)
            }
        }
    }
}

impl std::str::FromStr for Schedule {
    type Err = BilevelError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "constant" => Ok(Self::Constant),
            "cosine" => Ok(Self::Cosine { warmup_ratio: 0.03 }),
            other => Err(BilevelError::invalid(
                "schedule",
                format!("`{other}` (expected constant or cosine)"),
            )),
        }
    }
}

/// SEAL's upper-level weight λ per epoch: `clamp(start − decay·epoch, 0, 1)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LambdaSchedule {
    /// λ in the first epoch (official: 1.0).
    pub start: f64,
    /// Decrease per epoch (official Llama-3 script: 0.03).
    pub decay_per_epoch: f64,
}

impl Default for LambdaSchedule {
    fn default() -> Self {
        Self {
            start: 1.0,
            decay_per_epoch: 0.03,
        }
    }
}

impl LambdaSchedule {
    /// λ in `epoch` (0-based).
    pub fn at(&self, epoch: usize) -> f64 {
        (self.start - self.decay_per_epoch * epoch as f64).clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_shape() {
        let s = Schedule::Cosine { warmup_ratio: 0.1 };
        assert_eq!(s.factor(0, 100), 0.0);
        assert!((s.factor(5, 100) - 0.5).abs() < 1e-12);
        assert!((s.factor(10, 100) - 1.0).abs() < 1e-12);
        assert!((s.factor(55, 100) - 0.5).abs() < 1e-12);
        assert!(s.factor(99, 100) < 0.01);
        assert_eq!(Schedule::Constant.factor(7, 10), 1.0);
    }

    #[test]
    fn lambda_decays_per_epoch() {
        let l = LambdaSchedule::default();
        assert_eq!(l.at(0), 1.0);
        assert!((l.at(2) - 0.94).abs() < 1e-12);
        assert_eq!(
            LambdaSchedule {
                start: 0.1,
                decay_per_epoch: 0.5
            }
            .at(3),
            0.0
        );
    }
}
