//! The gate's decision: accept a frame as in-distribution or reject it, with the reason.
//!
//! A frame is in-distribution when its energy is finite and at most the threshold
//! (`E(x) <= threshold`, lower energy = more in-distribution), and, when calibration energies
//! are given, its conformal p-value is above `alpha`. Anything that cannot be scored is
//! rejected: the gate fails closed.

use super::health::ScoreKind;

/// The gate's decision for one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Accepted: scored, and within the threshold.
    InDistribution,
    /// Rejected, for the attached [`Reason`].
    OutOfDistribution,
}

impl Verdict {
    /// The stable lowercase name used in JSON output: `in_distribution` | `out_of_distribution`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::InDistribution => "in_distribution",
            Verdict::OutOfDistribution => "out_of_distribution",
        }
    }
}

/// Why a frame got its verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A multi-score gate rejected the frame, this score the strangest of those over the level
    /// (`<score>_p_value_at_or_below_alpha`: that score alone makes the combined p-value
    /// `<= alpha`; see [`crate::core::conformal`]).
    Score(ScoreKind),
    /// Energy at or below the threshold (and p-value above alpha, when calibrated).
    WithinThreshold,
    /// Energy above the threshold.
    EnergyAboveThreshold,
    /// Conformal p-value at or below alpha.
    PValueAtOrBelowAlpha,
    /// The energy is NaN or infinite.
    NonFiniteEnergy,
    /// The frame could not be decoded.
    DecodeError,
    /// The stream repeated the same frame too many times in a row (a frozen camera).
    FrozenFrame,
    /// The model failed on the frame, or its logits could not be scored.
    ModelError,
}

impl Reason {
    /// The stable snake_case name used in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Score(k) => match k {
                ScoreKind::Energy => "energy_p_value_at_or_below_alpha",
                ScoreKind::Sharpness => "sharpness_p_value_at_or_below_alpha",
                ScoreKind::NoiseSigma => "noise_sigma_p_value_at_or_below_alpha",
                ScoreKind::DarkFraction => "dark_fraction_p_value_at_or_below_alpha",
                ScoreKind::BrightFraction => "bright_fraction_p_value_at_or_below_alpha",
                ScoreKind::MeanLuma => "mean_luma_p_value_at_or_below_alpha",
                ScoreKind::LumaP99 => "luma_p99_p_value_at_or_below_alpha",
                ScoreKind::ColourCast => "colour_cast_p_value_at_or_below_alpha",
            },
            Reason::WithinThreshold => "within_threshold",
            Reason::EnergyAboveThreshold => "energy_above_threshold",
            Reason::PValueAtOrBelowAlpha => "p_value_at_or_below_alpha",
            Reason::NonFiniteEnergy => "non_finite_energy",
            Reason::DecodeError => "decode_error",
            Reason::FrozenFrame => "frozen_frame",
            Reason::ModelError => "model_error",
        }
    }
}

/// Decides on one frame from its energy.
///
/// Non-finite energy → `(OutOfDistribution, NonFiniteEnergy)`; `energy > threshold` →
/// `(OutOfDistribution, EnergyAboveThreshold)`; when `p_value_alpha = Some((p, alpha))` and
/// `p <= alpha` → `(OutOfDistribution, PValueAtOrBelowAlpha)`; else `(InDistribution,
/// WithinThreshold)`. A NaN threshold rejects every frame.
///
/// ```
/// use ebm_gate::core::gate::{decide, Reason, Verdict};
/// assert_eq!(decide(-7.0, -6.0, None), (Verdict::InDistribution, Reason::WithinThreshold));
/// assert_eq!(decide(-5.0, -6.0, None), (Verdict::OutOfDistribution, Reason::EnergyAboveThreshold));
/// assert_eq!(decide(f32::NAN, -6.0, None), (Verdict::OutOfDistribution, Reason::NonFiniteEnergy));
/// assert_eq!(decide(-7.0, -6.0, Some((0.01, 0.05))), (Verdict::OutOfDistribution, Reason::PValueAtOrBelowAlpha));
/// ```
pub fn decide(energy: f32, threshold: f32, p_value_alpha: Option<(f32, f32)>) -> (Verdict, Reason) {
    if !energy.is_finite() {
        return (Verdict::OutOfDistribution, Reason::NonFiniteEnergy);
    }
    if energy > threshold || threshold.is_nan() {
        return (Verdict::OutOfDistribution, Reason::EnergyAboveThreshold);
    }
    if let Some((p, alpha)) = p_value_alpha {
        if p <= alpha || p.is_nan() || alpha.is_nan() {
            return (Verdict::OutOfDistribution, Reason::PValueAtOrBelowAlpha);
        }
    }
    (Verdict::InDistribution, Reason::WithinThreshold)
}
