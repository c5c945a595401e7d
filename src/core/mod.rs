//! The `no_std`, allocation-free core: what a microcontroller needs to gate on logits.
//!
//! Everything here works on slices and scalars, uses `libm` for `exp`/`ln`, and builds for
//! `thumbv7em-none-eabihf` with `--no-default-features`:
//!
//! - [`energy`]: free energy `E(x) = -T * logsumexp(f(x) / T)`, softmax at a temperature, MSP,
//!   MaxLogit and the predicted class (JEM, Grathwohl et al. 2019; energy-OOD, Liu et al. 2020);
//! - [`conformal`]: the split-conformal p-value of an energy over sorted calibration energies;
//! - [`conformal`] also gives the conformal quantile (the same rule as an energy threshold)
//!   and membership of a class in a conformal prediction set;
//! - [`conformal`] also gives lower- and two-sided p-values and the combination of several
//!   scores' p-values under one false-rejection guarantee;
//! - [`health`]: the scores a gate can combine ([`health::ScoreKind`]) with their tails, and the
//!   frozen-frame comparison of two luma summaries;
//! - [`gate`]: the threshold decision and its typed [`gate::Verdict`] and [`gate::Reason`];
//! - [`langevin`]: the SGLD update step and a short warm-started chain, generic over a
//!   gradient source and a seeded RNG (`rand_core`);
//! - [`check`]: the range checks of a temperature, a significance level and a count, shared
//!   by every layer and the command line;
//! - [`debounce`]: k-of-n with hysteresis over a stream of verdicts, in a fixed-capacity
//!   `heapless` ring.
//!
//! ```
//! use ebm_gate::core::energy::free_energy;
//! // Two equal logits: E = -ln(e^0 + e^0) = -ln 2.
//! let e = free_energy(&[0.0, 0.0], 1.0).unwrap();
//! assert!((e + core::f32::consts::LN_2).abs() < 1e-6);
//! ```

pub mod check;
pub mod conformal;
pub mod debounce;
pub mod energy;
pub mod gate;
pub mod health;
pub mod langevin;
