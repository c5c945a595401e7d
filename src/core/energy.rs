//! Energy and softmax scores from one frame's logits.
//!
//! A classifier with logits `z = f(x)` in `R^K` defines the joint energy-based model of JEM
//! (Grathwohl et al. 2019, arXiv:1912.03263): `E(x, y) = -z[y]`, and the free energy
//! `E(x) = -T * logsumexp(z / T)`. **Lower energy means more in-distribution.** The class
//! probabilities at the same temperature are `p(y|x) = softmax(z / T)`. The energy score of
//! Liu et al. 2020 (arXiv:2010.03759) is `-E(x)`; MSP (max softmax probability, Hendrycks &
//! Gimpel 2017) and MaxLogit (Hendrycks et al. 2022) come from the same logits.
//!
//! Sums run in `f64` so that large logits neither overflow nor lose precision; results are `f32`.

/// Why scores could not be computed from a logit vector.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ScoreError {
    /// The logit vector is empty (`K = 0`).
    NoLogits,
    /// The temperature is not a finite number greater than 0.
    BadTemperature(f32),
    /// A logit is NaN or infinite; holds its index and value.
    NonFiniteLogit {
        /// Index of the first non-finite logit.
        index: usize,
        /// Its value.
        value: f32,
    },
    /// The output slice does not have one slot per logit.
    LengthMismatch {
        /// Number of logits `K`.
        logits: usize,
        /// Length of the output slice.
        out: usize,
    },
}

impl ::core::fmt::Display for ScoreError {
    fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
        match self {
            ScoreError::NoLogits => write!(f, "empty logit vector"),
            ScoreError::BadTemperature(t) => super::check::SettingError::Temperature(*t).fmt(f),
            ScoreError::NonFiniteLogit { index, value } => {
                write!(f, "logit {index} is not finite ({value})")
            }
            ScoreError::LengthMismatch { logits, out } => {
                write!(f, "{logits} logits but an output slice of {out}")
            }
        }
    }
}

impl ::core::error::Error for ScoreError {}

fn check(logits: &[f32], temperature: f32) -> Result<f32, ScoreError> {
    if logits.is_empty() {
        return Err(ScoreError::NoLogits);
    }
    super::check::temperature(temperature).map_err(|_| ScoreError::BadTemperature(temperature))?;
    let mut max = f32::NEG_INFINITY;
    for (index, &value) in logits.iter().enumerate() {
        if !value.is_finite() {
            return Err(ScoreError::NonFiniteLogit { index, value });
        }
        if value > max {
            max = value;
        }
    }
    Ok(max)
}

/// `logsumexp(z / T) = m / T + ln(sum_k exp((z_k - m) / T))` with `m = max_k z_k`.
///
/// # Errors
/// [`ScoreError`] for an empty slice, a non-finite logit or a temperature that is not `> 0`.
pub fn logsumexp(logits: &[f32], temperature: f32) -> Result<f64, ScoreError> {
    let max = check(logits, temperature)? as f64;
    let t = temperature as f64;
    let sum: f64 = logits.iter().map(|&z| libm::exp((z as f64 - max) / t)).sum();
    Ok(max / t + libm::log(sum))
}

/// Free energy `E(x) = -T * logsumexp(z / T)` of logits `z` (shape `[K]`), in logit units.
///
/// Lower is more in-distribution. At `T -> 0` it tends to `-max_k z_k` (minus MaxLogit).
///
/// ```
/// use ebm_gate::core::energy::free_energy;
/// // -2 * ln(e^(1/2) + e^(3/2)) = -3.6265233...
/// let e = free_energy(&[1.0, 3.0], 2.0).unwrap();
/// assert!((e - (-3.626_523_3)).abs() < 1e-5);
/// ```
///
/// # Errors
/// [`ScoreError`] as for [`logsumexp`].
pub fn free_energy(logits: &[f32], temperature: f32) -> Result<f32, ScoreError> {
    Ok((-(temperature as f64) * logsumexp(logits, temperature)?) as f32)
}

/// Writes `softmax(z / T)` (shape `[K]`) into `out`.
///
/// # Errors
/// [`ScoreError`] as for [`logsumexp`], or [`ScoreError::LengthMismatch`] when
/// `out.len() != logits.len()`.
pub fn softmax(logits: &[f32], temperature: f32, out: &mut [f32]) -> Result<(), ScoreError> {
    if out.len() != logits.len() {
        return Err(ScoreError::LengthMismatch { logits: logits.len(), out: out.len() });
    }
    let lse = logsumexp(logits, temperature)?;
    let t = temperature as f64;
    for (o, &z) in out.iter_mut().zip(logits) {
        *o = libm::exp(z as f64 / t - lse) as f32;
    }
    Ok(())
}

/// The scores of one frame, all from one logit vector at one temperature.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scores {
    /// Index of the largest logit (ties: the lowest index), the predicted class.
    pub class: usize,
    /// `softmax(z / T)[class]`: the (temperature-scaled) probability of the predicted class.
    /// This is also MSP at temperature `T`.
    pub probability: f32,
    /// Free energy `-T * logsumexp(z / T)`; lower = more in-distribution.
    pub energy: f32,
    /// Max softmax probability at `T = 1`, `max_k softmax(z)_k` (Hendrycks & Gimpel 2017).
    pub msp: f32,
    /// MaxLogit, `max_k z_k` (Hendrycks et al. 2022).
    pub max_logit: f32,
}

impl Scores {
    /// Computes every score from logits `z` (shape `[K]`) at temperature `T`.
    ///
    /// ```
    /// use ebm_gate::core::energy::Scores;
    /// let s = Scores::from_logits(&[0.0, 2.0, 0.0], 1.0).unwrap();
    /// assert_eq!(s.class, 1);
    /// assert_eq!(s.max_logit, 2.0);
    /// // e^2 / (e^2 + 2) = 0.786986...
    /// assert!((s.msp - 0.786_986).abs() < 1e-5);
    /// ```
    ///
    /// # Errors
    /// [`ScoreError`] as for [`logsumexp`].
    pub fn from_logits(logits: &[f32], temperature: f32) -> Result<Scores, ScoreError> {
        let max_logit = check(logits, temperature)?;
        let class = logits.iter().position(|&z| z == max_logit).unwrap_or(0);
        let lse_t = logsumexp(logits, temperature)?;
        let lse_1 = logsumexp(logits, 1.0)?;
        let t = temperature as f64;
        Ok(Scores {
            class,
            probability: libm::exp(max_logit as f64 / t - lse_t) as f32,
            energy: (-t * lse_t) as f32,
            msp: libm::exp(max_logit as f64 - lse_1) as f32,
            max_logit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn energy_of_uniform_logits_is_minus_t_ln_k_minus_z() {
        // z_k = c for all K: E = -T * (c/T + ln K) = -c - T ln K.
        let z = [1.5f32; 10];
        for t in [0.5f32, 1.0, 2.0] {
            let e = free_energy(&z, t).unwrap() as f64;
            let want = -1.5 - t as f64 * 10f64.ln();
            assert!((e - want).abs() < 1e-6, "{e} vs {want}");
        }
    }

    #[test]
    fn large_logits_do_not_overflow() {
        let e = free_energy(&[1000.0, 1000.0], 1.0).unwrap() as f64;
        assert!((e - (-1000.0 - 2f64.ln())).abs() < 1e-3);
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(free_energy(&[], 1.0), Err(ScoreError::NoLogits));
        assert_eq!(free_energy(&[1.0], 0.0), Err(ScoreError::BadTemperature(0.0)));
        assert!(matches!(free_energy(&[1.0, f32::NAN], 1.0), Err(ScoreError::NonFiniteLogit { index: 1, .. })));
        let mut out = [0.0; 1];
        assert_eq!(softmax(&[1.0, 2.0], 1.0, &mut out), Err(ScoreError::LengthMismatch { logits: 2, out: 1 }));
    }

    #[test]
    fn softmax_sums_to_one_and_matches_closed_form() {
        let mut p = [0.0f32; 3];
        softmax(&[0.0, 1.0, 2.0], 1.0, &mut p).unwrap();
        let d = 1.0 + 1f64.exp() + 2f64.exp();
        for (k, &pk) in p.iter().enumerate() {
            assert!((pk as f64 - (k as f64).exp() / d).abs() < 1e-7);
        }
    }
}
