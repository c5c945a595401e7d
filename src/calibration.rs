//! Fitting the gate on in-distribution data: temperature scaling, the conformal threshold,
//! conformal prediction sets, and the checks that they hold on held-out frames.
//!
//! - **Temperature scaling** (Guo et al. 2017): `T* = argmin_T mean_i -ln softmax(z_i / T)[y_i]`
//!   on labelled calibration logits, by Brent's method (argmin's `BrentOpt`) over `ln T` in
//!   `[ln 0.01, ln 100]`. One `T` serves both the class probabilities and the energy
//!   `E(x) = -T * logsumexp(z / T)`.
//! - **Conformal gate** (split conformal; Vovk et al. 2005, Angelopoulos & Bates 2021): the
//!   sorted energies `s_i` of the calibration frames at `T*`; a frame is rejected when
//!   `p(x) = (1 + #{i : s_i >= E(x)}) / (n + 1) <= alpha`, equivalently when `E(x)` is above
//!   [`conformal_quantile`]. Under exchangeability this rejects an ID frame with probability at
//!   most `alpha` (and at least `alpha - 1 / (n + 1)`).
//! - **Prediction sets** (LAC, Sadinle et al. 2019): scores `1 - p(y_i | x_i)` of the true class
//!   on the same calibration frames; the set `{y : 1 - p(y|x) <= q}` with `q` the conformal
//!   quantile at `alpha` covers the true class with probability at least `1 - alpha`.
//! - **Checks**: the false-rejection rate on held-out frames with a Wilson 95% interval, and
//!   averaged over random calibration/held-out splits ([`split_conformal_check`]).
//!
//! The calibration/held-out split of a folder is a function of each frame's path relative to
//! the folder and a seed ([`is_held_out`]), so `eval` can leave out the frames `calibrate` used.

use std::fmt;

use argmin::core::{CostFunction, Executor, State};
use argmin::solver::brent::BrentOpt;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use sha2::{Digest, Sha256};

pub use crate::core::conformal::conformal_quantile;
use crate::core::conformal::{conformal_rank, p_value};
use crate::core::energy::free_energy;
use crate::metrics::{for_each_softmax, MetricsError};

/// The levels whose false-rejection rate `calibrate` and `eval` report.
pub const CHECK_ALPHAS: [f32; 3] = [0.01, 0.05, 0.1];

/// Lowest temperature the fit searches.
pub const T_MIN: f64 = 0.01;
/// Highest temperature the fit searches.
pub const T_MAX: f64 = 100.0;

/// Why calibration could not proceed.
#[derive(Debug, Clone, PartialEq)]
pub enum CalibrationError {
    /// Logits or labels are unusable (shape, label range, non-finite values).
    Metrics(MetricsError),
    /// `alpha` is not in `(0, 1)`.
    BadAlpha(f32),
    /// Too few calibration frames for `alpha`: `n + 1 < 1 / alpha`.
    TooFewForAlpha {
        /// Calibration frames.
        n: usize,
        /// The level asked for.
        alpha: f32,
    },
    /// A calibration frame's energy is NaN or infinite.
    NonFiniteEnergy {
        /// Its index among the calibration frames.
        index: usize,
    },
    /// The NLL is still falling at the edge of the searched range.
    TemperatureAtBound {
        /// The temperature reached.
        temperature: f64,
    },
    /// The optimiser failed.
    Optimiser(String),
}

impl fmt::Display for CalibrationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CalibrationError::Metrics(e) => write!(f, "{e}"),
            CalibrationError::BadAlpha(a) => crate::core::check::SettingError::Alpha(*a).fmt(f),
            CalibrationError::TooFewForAlpha { n, alpha } => write!(
                f,
                "{n} calibration frames are too few for alpha = {alpha}: split conformal needs n + 1 >= 1 / alpha, \
                 that is at least {} frames (use more data, a larger alpha, or a smaller --holdout)",
                min_frames(*alpha)
            ),
            CalibrationError::NonFiniteEnergy { index } => {
                write!(f, "calibration frame {index} has a non-finite energy; calibration data must score cleanly")
            }
            CalibrationError::TemperatureAtBound { temperature } => write!(
                f,
                "the NLL is still falling at T = {temperature} (searched [{T_MIN}, {T_MAX}]): the calibration \
                 split is too small or too easy to fit a temperature"
            ),
            CalibrationError::Optimiser(e) => write!(f, "temperature fit failed: {e}"),
        }
    }
}

impl std::error::Error for CalibrationError {}

impl From<MetricsError> for CalibrationError {
    fn from(e: MetricsError) -> Self {
        CalibrationError::Metrics(e)
    }
}

/// The smallest `n` for which level `alpha` can reject anything (`n + 1 >= 1 / alpha`).
fn min_frames(alpha: f32) -> usize {
    let guess = ((1.0 / alpha as f64).floor() as usize).saturating_sub(2);
    (guess..guess + 4).find(|&n| conformal_rank(n, alpha).is_some()).unwrap_or(guess + 4)
}

/// Checks that `n` calibration scores allow level `alpha`: `alpha` in `(0, 1)` and
/// `n + 1 >= 1 / alpha` (otherwise the conformal quantile is infinite and nothing is rejected).
///
/// ```
/// use ebm_gate::calibration::check_alpha;
/// assert!(check_alpha(19, 0.05).is_ok());
/// assert!(check_alpha(18, 0.05).is_err());
/// assert!(check_alpha(1000, 0.0).is_err());
/// ```
///
/// # Errors
/// [`CalibrationError::BadAlpha`], [`CalibrationError::TooFewForAlpha`].
pub fn check_alpha(n: usize, alpha: f32) -> Result<(), CalibrationError> {
    crate::core::check::alpha(alpha).map_err(|_| CalibrationError::BadAlpha(alpha))?;
    if conformal_rank(n, alpha).is_none() {
        return Err(CalibrationError::TooFewForAlpha { n, alpha });
    }
    Ok(())
}

/// Mean negative log-likelihood `mean_i (logsumexp(z_i / T) - z_i[y_i] / T)` of row-major
/// logits `[N, K]` at temperature `T`, nats.
///
/// ```
/// use ebm_gate::calibration::nll;
/// // One frame, logits [0, 0]: -ln(1/2) at any T.
/// assert!((nll(&[0.0, 0.0], 2, &[1], 3.0).unwrap() - 2f64.ln()).abs() < 1e-12);
/// ```
///
/// # Errors
/// [`MetricsError`] for bad shapes, labels or non-finite values.
pub fn nll(logits: &[f32], k: usize, labels: &[usize], temperature: f64) -> Result<f64, MetricsError> {
    let mut sum = 0.0;
    for_each_softmax(logits, k, labels, temperature, |row, y, _, lse| sum += lse - row[y] as f64 / temperature)?;
    Ok(sum / labels.len() as f64)
}

/// The result of [`fit_temperature`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TemperatureFit {
    /// The fitted temperature `T*`.
    pub temperature: f64,
    /// NLL at `T = 1` on the fitting set, nats.
    pub nll_before: f64,
    /// NLL at `T*` on the fitting set, nats.
    pub nll_after: f64,
    /// Brent iterations used.
    pub iterations: u64,
}

struct NllOfLogT<'a> {
    logits: &'a [f32],
    k: usize,
    labels: &'a [usize],
}

impl CostFunction for NllOfLogT<'_> {
    type Param = f64;
    type Output = f64;

    fn cost(&self, log_t: &f64) -> Result<f64, argmin::core::Error> {
        nll(self.logits, self.k, self.labels, log_t.exp()).map_err(|e| argmin::core::Error::msg(e.to_string()))
    }
}

/// Fits the temperature of temperature scaling (Guo et al. 2017) by minimising the NLL of
/// labelled logits `[N, K]` over `T` in `[T_MIN, T_MAX]`.
///
/// The NLL is convex in `1 / T`, so it has one minimum; Brent's method (argmin's `BrentOpt`,
/// relative tolerance `1e-8` in `ln T`) finds it.
///
/// ```
/// use ebm_gate::calibration::fit_temperature;
/// // Over-confident logits: every frame says class 0 with margin 4, but only 3 of 4 are class 0.
/// // The NLL-optimal softmax probability of class 0 is 3/4: 1 / (1 + e^(-4/T)) = 3/4, T = 4 / ln 3.
/// let logits = [4.0, 0.0, 4.0, 0.0, 4.0, 0.0, 4.0, 0.0];
/// let fit = fit_temperature(&logits, 2, &[0, 0, 0, 1]).unwrap();
/// assert!((fit.temperature - 4.0 / 3f64.ln()).abs() < 1e-6);
/// assert!(fit.nll_after < fit.nll_before);
/// ```
///
/// # Errors
/// [`CalibrationError::Metrics`] for bad input, [`CalibrationError::TemperatureAtBound`] when
/// the minimum is at the edge of the range (for example, every frame right with a margin).
pub fn fit_temperature(logits: &[f32], k: usize, labels: &[usize]) -> Result<TemperatureFit, CalibrationError> {
    let nll_before = nll(logits, k, labels, 1.0)?;
    let problem = NllOfLogT { logits, k, labels };
    let (lo, hi) = (T_MIN.ln(), T_MAX.ln());
    let solver = BrentOpt::new(lo, hi).set_tolerance(1e-8, 1e-10);
    let res = Executor::new(problem, solver)
        .configure(|s| s.max_iters(200))
        .run()
        .map_err(|e| CalibrationError::Optimiser(e.to_string()))?;
    let state = res.state();
    let log_t = *state.get_best_param().ok_or_else(|| CalibrationError::Optimiser("no best point".into()))?;
    let temperature = log_t.exp();
    if (log_t - lo).abs() < 1e-4 || (hi - log_t).abs() < 1e-4 {
        return Err(CalibrationError::TemperatureAtBound { temperature });
    }
    Ok(TemperatureFit {
        temperature,
        nll_before,
        nll_after: nll(logits, k, labels, temperature)?,
        iterations: state.get_iter(),
    })
}

/// Free energies `E = -T * logsumexp(z / T)` of row-major logits `[N, K]`, sorted ascending:
/// the calibration energies of the conformal gate.
///
/// # Errors
/// [`CalibrationError::NonFiniteEnergy`] naming the first row whose energy is not finite.
pub fn sorted_energies(logits: &[f32], k: usize, temperature: f32) -> Result<Vec<f32>, CalibrationError> {
    let mut e = Vec::with_capacity(logits.len() / k.max(1));
    for (index, row) in logits.chunks_exact(k.max(1)).enumerate() {
        match free_energy(row, temperature) {
            Ok(v) if v.is_finite() => e.push(v),
            _ => return Err(CalibrationError::NonFiniteEnergy { index }),
        }
    }
    e.sort_by(f32::total_cmp);
    Ok(e)
}

/// LAC nonconformity scores `1 - softmax(z_i / T)[y_i]` of labelled logits `[N, K]`, sorted
/// ascending: the calibration scores of the conformal prediction sets.
///
/// # Errors
/// [`MetricsError`] for bad shapes, labels or non-finite values.
pub fn lac_scores(logits: &[f32], k: usize, labels: &[usize], temperature: f64) -> Result<Vec<f32>, MetricsError> {
    let mut s = Vec::with_capacity(labels.len());
    for_each_softmax(logits, k, labels, temperature, |_, y, p, _| s.push((1.0 - p[y]) as f32))?;
    s.sort_by(f32::total_cmp);
    Ok(s)
}

/// Coverage and size of conformal prediction sets on labelled frames.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SetSummary {
    /// The level: sets aim to cover the true class with probability `>= 1 - alpha`.
    pub alpha: f32,
    /// Frames.
    pub n: usize,
    /// Fraction of frames whose set holds the true class, in [0, 1].
    pub coverage: f64,
    /// Mean number of classes per set.
    pub mean_size: f64,
}

/// Builds the LAC set `{y : 1 - p(y|x) <= q}` for each labelled frame (`q` =
/// [`conformal_quantile`] of `sorted_scores` at `alpha`) and measures coverage and size.
///
/// # Errors
/// [`MetricsError`] for bad shapes, labels or non-finite values.
pub fn prediction_set_summary(
    logits: &[f32],
    k: usize,
    labels: &[usize],
    temperature: f64,
    sorted_scores: &[f32],
    alpha: f32,
) -> Result<SetSummary, MetricsError> {
    let q = conformal_quantile(sorted_scores, alpha);
    let in_set = |v: f64| crate::core::conformal::in_prediction_set(v as f32, q);
    let (mut covered, mut size) = (0usize, 0usize);
    for_each_softmax(logits, k, labels, temperature, |_, y, p, _| {
        size += p.iter().filter(|&&v| in_set(v)).count();
        covered += usize::from(in_set(p[y]));
    })?;
    let n = labels.len();
    Ok(SetSummary { alpha, n, coverage: covered as f64 / n as f64, mean_size: size as f64 / n as f64 })
}

/// Wilson score 95% interval `(lo, hi)` for a binomial proportion of `k` successes in `n`
/// trials (Wilson 1927; z = 1.959964). `(0, 1)` when `n = 0`.
///
/// ```
/// use ebm_gate::calibration::wilson_interval;
/// // 50 of 1000: the textbook interval is [0.0381, 0.0653].
/// let (lo, hi) = wilson_interval(50, 1000);
/// assert!((lo - 0.03813).abs() < 1e-4 && (hi - 0.06530).abs() < 1e-4);
/// ```
pub fn wilson_interval(k: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let z = 1.959_963_984_540_054f64;
    let (n, p) = (n as f64, k as f64 / n as f64);
    let centre = p + z * z / (2.0 * n);
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
    let denom = 1.0 + z * z / n;
    (((centre - half) / denom).max(0.0), ((centre + half) / denom).min(1.0))
}

/// The conformal gate's false-rejection rate on held-out in-distribution frames.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FalseRejection {
    /// The level `alpha`.
    pub alpha: f32,
    /// Held-out frames.
    pub n: usize,
    /// Of them, rejected (`p <= alpha`).
    pub rejected: usize,
    /// `rejected / n`.
    pub rate: f64,
    /// Wilson 95% interval of the rate.
    pub interval: (f64, f64),
}

/// Rejects each held-out energy when its p-value over `sorted_calibration` is `<= alpha`, and
/// counts. Non-finite energies count as rejected (the gate fails closed).
pub fn false_rejection(sorted_calibration: &[f32], held_out: &[f32], alpha: f32) -> FalseRejection {
    let rejected = held_out.iter().filter(|&&e| !e.is_finite() || p_value(sorted_calibration, e) <= alpha).count();
    let n = held_out.len();
    FalseRejection {
        alpha,
        n,
        rejected,
        rate: if n == 0 { f64::NAN } else { rejected as f64 / n as f64 },
        interval: wilson_interval(rejected, n),
    }
}

/// The false-rejection rate of split conformal averaged over random calibration/held-out splits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplitCheck {
    /// The level `alpha`.
    pub alpha: f32,
    /// Random splits drawn.
    pub splits: usize,
    /// Calibration frames per split.
    pub n_calibration: usize,
    /// Held-out frames per split.
    pub n_held_out: usize,
    /// Mean false-rejection rate over the splits.
    pub mean: f64,
    /// Its standard deviation over the splits.
    pub sd: f64,
    /// Smallest rate seen.
    pub min: f64,
    /// Largest rate seen.
    pub max: f64,
}

/// Splits `energies` (of in-distribution frames) at random into halves `splits` times
/// (Xoshiro256++ seeded with `seed`), calibrates on one half and measures the false-rejection
/// rate at `alpha` on the other. Split conformal promises
/// `alpha - 1 / (n_cal + 1) <= E[rate] <= alpha`.
pub fn split_conformal_check(energies: &[f32], alpha: f32, splits: usize, seed: u64) -> SplitCheck {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut idx: Vec<usize> = (0..energies.len()).collect();
    let n_cal = energies.len() / 2;
    let mut rates = Vec::with_capacity(splits);
    for _ in 0..splits {
        idx.shuffle(&mut rng);
        let mut cal: Vec<f32> = idx[..n_cal].iter().map(|&i| energies[i]).collect();
        cal.sort_by(f32::total_cmp);
        let held: Vec<f32> = idx[n_cal..].iter().map(|&i| energies[i]).collect();
        rates.push(false_rejection(&cal, &held, alpha).rate);
    }
    let m = rates.iter().sum::<f64>() / rates.len().max(1) as f64;
    let var = rates.iter().map(|r| (r - m) * (r - m)).sum::<f64>() / (rates.len().max(2) - 1) as f64;
    SplitCheck {
        alpha,
        splits,
        n_calibration: n_cal,
        n_held_out: energies.len() - n_cal,
        mean: m,
        sd: var.sqrt(),
        min: rates.iter().copied().fold(f64::INFINITY, f64::min),
        max: rates.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    }
}

/// Whether a frame is in the held-out part of a calibration split: the first 8 bytes of
/// `sha256(seed as 8 little-endian bytes ++ name as UTF-8)`, read as a big-endian `u64` `h`,
/// satisfy `h / 2^64 < holdout`.
///
/// `name` is the frame's path relative to the data folder with `/` separators (for example
/// `"cat/0001.png"`), so the split does not depend on where the folder lies or on the order
/// frames are listed in. About `holdout` of the frames are held out.
///
/// ```
/// use ebm_gate::calibration::is_held_out;
/// let names: Vec<String> = (0..2000).map(|i| format!("class/{i:04}.png")).collect();
/// let held = names.iter().filter(|n| is_held_out(n, 0.5, 0)).count();
/// assert!((900..1100).contains(&held));
/// assert!(!is_held_out("a.png", 0.0, 0) && is_held_out("a.png", 1.0, 0));
/// ```
pub fn is_held_out(name: &str, holdout: f64, seed: u64) -> bool {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(name.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    (u64::from_be_bytes(b) as f64 / 18_446_744_073_709_551_616.0) < holdout
}
