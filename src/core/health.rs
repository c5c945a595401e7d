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
    /// 99th percentile of luma, levels.
    LumaP99,
    /// Distance of the mean chromaticity from neutral gray.
    ColourCast,
}

impl ScoreKind {
    /// Every score, in the order records list them.
    pub const ALL: [ScoreKind; 8] = [
        ScoreKind::Energy,
        ScoreKind::Sharpness,
        ScoreKind::NoiseSigma,
        ScoreKind::DarkFraction,
        ScoreKind::BrightFraction,
        ScoreKind::MeanLuma,
        ScoreKind::LumaP99,
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
            ScoreKind::LumaP99 => "luma_p99",
            ScoreKind::ColourCast => "colour_cast",
        }
    }

    /// The score named `name` ([`ScoreKind::name`]), if any.
    pub fn from_name(name: &str) -> Option<ScoreKind> {
        ScoreKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Which end is strange: energy, noise, clipping and colour cast `Upper`; sharpness and
    /// the luma percentile `Lower` (blur lowers sharpness, and noise raises it, which
    /// `noise_sigma` sees; under-exposure lowers the percentile); mean luma `Both`.
    pub fn tail(self) -> Tail {
        match self {
            ScoreKind::Sharpness | ScoreKind::LumaP99 => Tail::Lower,
            ScoreKind::MeanLuma => Tail::Both,
            _ => Tail::Upper,
        }
    }
}

impl ScoreKind {
    /// The value a score's tails are extrapolated in (see
    /// [`crate::core::conformal::strangeness`]): `ln(1 + x)` for `sharpness`, a variance that
    /// blur shrinks by factors and that is bounded by 0 (a linear tail past the calibration
    /// minimum would reach 0 within a few scales), and `x` itself for the others. Increasing,
    /// so ranks and p-values are the same in either.
    ///
    /// ```
    /// use ebm_gate::core::health::ScoreKind;
    /// assert_eq!(ScoreKind::Sharpness.tail_domain(0.0), 0.0);
    /// assert_eq!(ScoreKind::NoiseSigma.tail_domain(3.5), 3.5);
    /// ```
    pub fn tail_domain(self, x: f32) -> f32 {
        match self {
            ScoreKind::Sharpness => libm::log1pf(x.max(0.0)),
            _ => x,
        }
    }

    /// The smallest scale of an exponential tail, in [`ScoreKind::tail_domain`] units: about
    /// the score's resolution, so that calibration values that are all equal (no clipped
    /// pixel in any clean frame, say) do not make a change of one pixel look infinitely
    /// strange: 0.001 for the fractions and the colour cast, 1 level for the luma percentile (an
    /// integer), 0.5 level for the mean, 0.05 level for the noise, 0.01 for `ln(1 + sharpness)`,
    /// and 0.001 for the energy.
    pub fn tail_scale_floor(self) -> f32 {
        match self {
            ScoreKind::Energy => 1e-3,
            ScoreKind::Sharpness => 0.01,
            ScoreKind::NoiseSigma => 0.05,
            ScoreKind::DarkFraction | ScoreKind::BrightFraction | ScoreKind::ColourCast => 1e-3,
            ScoreKind::MeanLuma => 0.5,
            ScoreKind::LumaP99 => 1.0,
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
        assert!(!ScoreKind::HEALTH.contains(&ScoreKind::Energy) && ScoreKind::HEALTH.len() == 7);
    }
}
