//! The argument checks every layer shares, written once: a temperature, a significance level
//! and a count. Library functions and the command line's parsers call these, so a setting is
//! refused with the same words wherever it comes from (a flag, `gate.json`, a library call).

/// A setting out of its range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SettingError {
    /// A temperature that is not finite and > 0.
    Temperature(f32),
    /// A significance level not in `(0, 1)`.
    Alpha(f32),
    /// A count that must be at least 1 (`batch`, `runs`, ...), named.
    Zero(&'static str),
    /// A thread count outside 1 to [`MAX_THREADS`].
    Threads(usize),
    /// A count above its limit (a batch, SGLD steps, runs), named: such a count sizes
    /// buffers, so it is bounded before anything is allocated from it.
    TooLarge {
        /// What is counted.
        name: &'static str,
        /// The limit.
        max: usize,
        /// The value given.
        got: usize,
    },
}

impl ::core::fmt::Display for SettingError {
    fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
        match self {
            SettingError::Temperature(t) => write!(f, "temperature must be finite and > 0, got {t}"),
            SettingError::Alpha(a) => write!(f, "alpha must be in (0, 1), got {a}"),
            SettingError::Zero(name) => write!(f, "{name} must be at least 1"),
            SettingError::Threads(n) => write!(f, "threads must be 1 to {MAX_THREADS}, got {n}"),
            SettingError::TooLarge { name, max, got } => write!(f, "{name} must be at most {max}, got {got}"),
        }
    }
}

impl ::core::error::Error for SettingError {}

/// The most threads a model runs on (rayon panics when it cannot start a pool).
pub const MAX_THREADS: usize = 256;

/// `t` when it is a usable temperature: finite and > 0.
///
/// ```
/// use ebm_gate::core::check::{temperature, SettingError};
/// assert_eq!(temperature(0.5), Ok(0.5));
/// assert_eq!(temperature(0.0), Err(SettingError::Temperature(0.0)));
/// assert!(temperature(f32::INFINITY).is_err() && temperature(f32::NAN).is_err());
/// ```
pub fn temperature(t: f32) -> Result<f32, SettingError> {
    if t.is_finite() && t > 0.0 {
        Ok(t)
    } else {
        Err(SettingError::Temperature(t))
    }
}

/// `a` when it is a significance level: in the open interval `(0, 1)`.
///
/// ```
/// use ebm_gate::core::check::alpha;
/// assert_eq!(alpha(0.05), Ok(0.05));
/// assert!(alpha(0.0).is_err() && alpha(1.0).is_err() && alpha(f32::NAN).is_err());
/// ```
pub fn alpha(a: f32) -> Result<f32, SettingError> {
    if a > 0.0 && a < 1.0 {
        Ok(a)
    } else {
        Err(SettingError::Alpha(a))
    }
}

/// `n` when it is at least 1; `name` names it in the error.
///
/// ```
/// use ebm_gate::core::check::at_least_one;
/// assert_eq!(at_least_one("batch", 4), Ok(4));
/// assert_eq!(at_least_one("batch", 0).unwrap_err().to_string(), "batch must be at least 1");
/// ```
pub fn at_least_one(name: &'static str, n: usize) -> Result<usize, SettingError> {
    if n >= 1 {
        Ok(n)
    } else {
        Err(SettingError::Zero(name))
    }
}

/// Most frames in one batch (`--batch`, `--forward-batch`, `sample -n`): 4,096.
pub const MAX_BATCH: usize = 4096;

/// Most SGLD steps of one chain (`--steps`): 10,000 (a trace of one energy a frame a step).
pub const MAX_STEPS: usize = 10_000;

/// Most timed runs or warm-up runs of `bench` (and random splits of `eval`): 100,000.
pub const MAX_RUNS: usize = 100_000;

/// `n` when it is 1 to `max`; `name` names it in the error.
///
/// ```
/// use ebm_gate::core::check::{count_up_to, MAX_BATCH};
/// assert_eq!(count_up_to("batch", 32, MAX_BATCH), Ok(32));
/// assert_eq!(count_up_to("batch", 5000, MAX_BATCH).unwrap_err().to_string(), "batch must be at most 4096, got 5000");
/// assert!(count_up_to("batch", 0, MAX_BATCH).is_err());
/// ```
pub fn count_up_to(name: &'static str, n: usize, max: usize) -> Result<usize, SettingError> {
    at_least_one(name, n)?;
    if n > max {
        return Err(SettingError::TooLarge { name, max, got: n });
    }
    Ok(n)
}

/// `n` when it is a thread count: 1 to [`MAX_THREADS`].
///
/// ```
/// use ebm_gate::core::check::{threads, MAX_THREADS};
/// assert_eq!(threads(2), Ok(2));
/// assert!(threads(0).is_err() && threads(MAX_THREADS + 1).is_err());
/// ```
pub fn threads(n: usize) -> Result<usize, SettingError> {
    if (1..=MAX_THREADS).contains(&n) {
        Ok(n)
    } else {
        Err(SettingError::Threads(n))
    }
}
