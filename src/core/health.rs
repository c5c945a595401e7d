//! The scores a gate can combine, each with the tail that counts as strange, and the
//! frozen-frame comparison of two luma summaries: the allocation-free part of
//! [`crate::health`](../../health/index.html) (which computes the scores from a decoded frame).
//!
//! ```
//! use ebm_gate::core::health::{summary_difference, ScoreKind, Tail};
//! assert_eq!(ScoreKind::from_name("noise_sigma"), Some(ScoreKind::NoiseSigma));
//! assert_eq!(ScoreKind::Sharpness.tail(), Tail::Lower); // blur lowers it
//! assert_eq!(summary_difference(&[1.0, 2.0], &[1.0, 4.0]), 1.0);
//! ```

/// Which end of a score's calibration distribution is strange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tail {
    /// High values are strange (energy, noise, clipping, colour cast).
    Upper,
    /// Low values are strange (sharpness: blur lowers it).
    Lower,
    /// Both ends are strange (mean luma: under- and over-exposure).
    Both,
}

/// One score of a multi-score gate: the free energy of the model, or a frame-health score of
/// the full-resolution frame (formulas in `ebm_gate::health`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScoreKind {
    /// Free energy `E(x) = -T logsumexp(f(x) / T)` of the model's logits.
    Energy,
    /// Variance of the Laplacian of luma, levels².
    Sharpness,
    /// Immerkaer's noise standard deviation of luma, levels.
    NoiseSigma,
    /// Fraction of clipped-dark pixels.
    DarkFraction,
    /// Fraction of clipped-bright pixels.
    BrightFraction,
    /// Mean luma, levels.
    MeanLuma,
    /// Distance of the mean chromaticity from neutral gray.
    ColourCast,
}

impl ScoreKind {
    /// Every score, in the order records list them.
    pub const ALL: [ScoreKind; 7] = [
        ScoreKind::Energy,
        ScoreKind::Sharpness,
        ScoreKind::NoiseSigma,
        ScoreKind::DarkFraction,
        ScoreKind::BrightFraction,
        ScoreKind::MeanLuma,
        ScoreKind::ColourCast,
    ];

    /// The health scores (every score but the energy), in record order.
    pub const HEALTH: &'static [ScoreKind] = ScoreKind::ALL.split_at(1).1;

    /// The stable snake_case name used in `gate.json`, records and `--scores`.
    pub fn name(self) -> &'static str {
        match self {
            ScoreKind::Energy => "energy",
            ScoreKind::Sharpness => "sharpness",
            ScoreKind::NoiseSigma => "noise_sigma",
            ScoreKind::DarkFraction => "dark_fraction",
            ScoreKind::BrightFraction => "bright_fraction",
            ScoreKind::MeanLuma => "mean_luma",
            ScoreKind::ColourCast => "colour_cast",
        }
    }

    /// The score named `name` ([`ScoreKind::name`]), if any.
    pub fn from_name(name: &str) -> Option<ScoreKind> {
        ScoreKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Which end is strange: energy, noise, clipping and colour cast `Upper`; sharpness `Lower`
    /// (blur lowers it; noise raises it, and `noise_sigma` sees that); mean luma `Both`.
    pub fn tail(self) -> Tail {
        match self {
            ScoreKind::Sharpness => Tail::Lower,
            ScoreKind::MeanLuma => Tail::Both,
            _ => Tail::Upper,
        }
    }
}

/// Mean absolute difference of two equally long summaries (block means of luma, levels):
/// `sum |a_i - b_i| / n`; 0 for a repeated frame, 0 for empty slices. Extra values of the
/// longer slice are ignored.
pub fn summary_difference(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    if n == 0 {
        return 0.0;
    }
    let s: f32 = a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum();
    s / n as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_distinct() {
        for k in ScoreKind::ALL {
            assert_eq!(ScoreKind::from_name(k.name()), Some(k));
        }
        assert_eq!(ScoreKind::from_name("noise"), None);
        assert!(!ScoreKind::HEALTH.contains(&ScoreKind::Energy) && ScoreKind::HEALTH.len() == 6);
    }
}
