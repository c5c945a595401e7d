//! Stochastic-gradient Langevin dynamics (SGLD) on an energy: the update step, and a short
//! warm-started chain over a batch of frames.
//!
//! One step, for every value `x_i` of every frame (in the model's input space, i.e.
//! normalised), with `z_i ~ N(0, 1)` independent:
//!
//! ```text
//! x_i <- clip(x_i - (step_size / 2) * dE/dx_i + noise_scale * z_i, lo_c, hi_c)
//! ```
//!
//! where `[lo_c, hi_c]` are the input-space bounds of channel `c`, the image of the pixel range
//! under normalisation (so the clip is a clip in pixel space: see [`Bounds::from_normalisation`]).
//!
//! **When it is a sampler.** With `noise_scale = sqrt(step_size)` this is the unadjusted
//! Langevin algorithm (ULA; Welling & Teh 2011 without minibatch noise, Roberts & Tweedie 1996):
//! its chain approximately samples `p(x) ∝ exp(-E(x))`, with a bias of order `step_size`
//! (exact only as `step_size -> 0`; for a Gaussian target of variance `s^2` the stationary
//! variance is `step_size / (1 - (1 - step_size / (2 s^2))^2)`, see the tests), and only after
//! enough steps to mix. Any other pair (for example JEM's, Grathwohl et al. 2019: a gradient
//! step of 1 (`step_size = 2`) with noise 0.01) is **a refinement, not sampling**: it descends
//! the energy with a little noise, which is what a short warm-started chain on a board does.
//! [`LangevinSettings::is_unadjusted_langevin`] tells which.
//!
//! Everything here is `no_std` and allocation-free: the caller owns the buffers, the gradient
//! comes from any [`GradientSource`] (a tract graph in the std runtime, a closed form in the
//! tests, an NPU on a board), and the noise from any `rand_core` RNG (seeded: the same seed
//! gives the same chain).
//!
//! ```
//! use ebm_gate::core::langevin::{sgld_step, Bounds, LangevinSettings};
//! use rand_core::SeedableRng;
//! // E(x) = x^2 / 2: the gradient is x. No noise, step 0.2: x <- x - 0.1 x.
//! let settings = LangevinSettings { step_size: 0.2, noise_scale: 0.0, n_steps: 1 };
//! let mut x = [1.0f32, -2.0];
//! let grad = x;
//! let bounds = Bounds { lo: &[-10.0], hi: &[10.0] };
//! let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(0);
//! sgld_step(&mut x, &grad, &settings, &bounds, &mut rng).unwrap();
//! assert_eq!(x, [0.9, -1.8]);
//! ```

use rand_core::RngCore;
use rand_distr::{Distribution, StandardNormal};

/// Step size, noise scale and number of steps of an SGLD chain.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LangevinSettings {
    /// `step_size` (often written epsilon): the gradient is scaled by `step_size / 2`. Input-space
    /// units squared per energy unit; > 0.
    pub step_size: f32,
    /// Standard deviation of the Gaussian noise added per step, input-space units; >= 0.
    pub noise_scale: f32,
    /// Number of updates.
    pub n_steps: usize,
}

impl LangevinSettings {
    /// Unadjusted Langevin: `noise_scale = sqrt(step_size)`.
    pub fn unadjusted(step_size: f32, n_steps: usize) -> LangevinSettings {
        LangevinSettings { step_size, noise_scale: libm::sqrtf(step_size), n_steps }
    }

    /// JEM's short-run refinement (Grathwohl et al. 2019, their code's defaults): a gradient
    /// step of 1 (`step_size = 2`) and noise 0.01, 20 steps. Not a sampler of `exp(-E)`.
    pub fn jem() -> LangevinSettings {
        LangevinSettings { step_size: 2.0, noise_scale: 0.01, n_steps: 20 }
    }

    /// Whether `noise_scale == sqrt(step_size)` (to 1e-6 relative): the chain is unadjusted
    /// Langevin, which approximately samples `exp(-E)`; otherwise it is a refinement.
    pub fn is_unadjusted_langevin(&self) -> bool {
        let s = libm::sqrtf(self.step_size);
        (self.noise_scale - s).abs() <= 1e-6 * s
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// [`LangevinError::BadSettings`] when `step_size` is not finite and > 0 or `noise_scale`
    /// not finite and >= 0.
    pub fn validate(&self) -> Result<(), LangevinError> {
        let step_ok = self.step_size.is_finite() && self.step_size > 0.0;
        let noise_ok = self.noise_scale.is_finite() && self.noise_scale >= 0.0;
        if !(step_ok && noise_ok) {
            return Err(LangevinError::BadSettings { step_size: self.step_size, noise_scale: self.noise_scale });
        }
        Ok(())
    }
}

/// Per-channel bounds of the clip, in input space, for frames laid out `[C, H, W]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds<'a> {
    /// Lower bound of each channel (length `C`, or 1 for all channels).
    pub lo: &'a [f32],
    /// Upper bound of each channel (same length as `lo`).
    pub hi: &'a [f32],
}

static NO_BOUND_LO: [f32; 1] = [f32::NEG_INFINITY];
static NO_BOUND_HI: [f32; 1] = [f32::INFINITY];

impl Bounds<'static> {
    /// No clip.
    pub fn none() -> Bounds<'static> {
        Bounds { lo: &NO_BOUND_LO, hi: &NO_BOUND_HI }
    }
}

impl<'a> Bounds<'a> {
    /// Writes the input-space bounds of each channel for a pixel range `[p_lo, p_hi]` and the
    /// normalisation `x = (p - mean[c]) / std[c]`: `lo[c] = min((p_lo - m) / s, (p_hi - m) / s)`
    /// and `hi[c]` the max (a negative `std` swaps them).
    pub fn from_normalisation(
        pixel_range: [f32; 2],
        mean: &[f32],
        std: &[f32],
        lo: &'a mut [f32],
        hi: &'a mut [f32],
    ) -> Bounds<'a> {
        for c in 0..lo.len().min(hi.len()).min(mean.len()).min(std.len()) {
            let a = (pixel_range[0] - mean[c]) / std[c];
            let b = (pixel_range[1] - mean[c]) / std[c];
            lo[c] = a.min(b);
            hi[c] = a.max(b);
        }
        Bounds { lo, hi }
    }

    fn channel(&self, c: usize) -> (f32, f32) {
        let i = if self.lo.len() == 1 { 0 } else { c };
        (self.lo[i], self.hi[i])
    }
}

/// Why an SGLD step or chain could not run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LangevinError<E = ::core::convert::Infallible> {
    /// `step_size` must be finite and > 0, `noise_scale` finite and >= 0.
    BadSettings {
        /// The step size given.
        step_size: f32,
        /// The noise scale given.
        noise_scale: f32,
    },
    /// Buffers do not fit together: `x`, `grad` (`n * frame_len` values each) and `energy` (`n`).
    LengthMismatch {
        /// Values expected.
        expected: usize,
        /// Values given.
        got: usize,
    },
    /// The bounds have more than one channel but not `C` of them.
    BoundsMismatch {
        /// Channels in the bounds.
        bounds: usize,
        /// Channels in the frames.
        channels: usize,
    },
    /// The gradient source failed.
    Gradient(E),
    /// The gradient source gave a non-finite energy or gradient value for frame `frame`.
    NonFinite {
        /// Index of the frame in the batch.
        frame: usize,
        /// Step at which it happened (0 = before the first update).
        step: usize,
    },
}

impl<E: ::core::fmt::Display> ::core::fmt::Display for LangevinError<E> {
    fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
        match self {
            LangevinError::BadSettings { step_size, noise_scale } => write!(
                f,
                "step_size must be finite and > 0 and noise_scale finite and >= 0, got step_size {step_size}, \
                 noise_scale {noise_scale}"
            ),
            LangevinError::LengthMismatch { expected, got } => {
                write!(f, "buffer length mismatch: expected {expected} values, got {got}")
            }
            LangevinError::BoundsMismatch { bounds, channels } => {
                write!(f, "clip bounds for {bounds} channels, frames have {channels}")
            }
            LangevinError::Gradient(e) => write!(f, "energy gradient failed: {e}"),
            LangevinError::NonFinite { frame, step } => {
                write!(f, "non-finite energy or gradient for frame {frame} at step {step}")
            }
        }
    }
}

impl<E: ::core::fmt::Debug + ::core::fmt::Display> ::core::error::Error for LangevinError<E> {}

/// Anything that gives the energy of a batch of frames and its gradient with respect to the
/// input: a tract graph, an NPU, a closed form.
pub trait GradientSource {
    /// The source's error.
    type Error;

    /// Values per frame, `C * H * W`.
    fn frame_len(&self) -> usize;

    /// Channels `C` (the clip bounds are per channel; frames are `[C, H, W]`).
    fn channels(&self) -> usize;

    /// For `n` frames `x` (`[n, C, H, W]` row-major, length `n * frame_len`), writes each
    /// frame's energy into `energy` (`[n]`) and `dE/dx` into `grad` (`[n, C, H, W]`).
    ///
    /// # Errors
    /// The source's own error.
    fn energy_and_grad(&mut self, x: &[f32], n: usize, energy: &mut [f32], grad: &mut [f32])
        -> Result<(), Self::Error>;
}

/// One SGLD update in place: `x <- clip(x - (step_size / 2) * grad + noise_scale * N(0, I))`.
///
/// With one bound (`bounds.lo.len() == 1`) `x` is any slice; with per-channel bounds it is one
/// frame `[C, H, W]`, `C = bounds.lo.len()`, and channel `c` (the `c`-th of `C` equal planes) is
/// clipped to `[lo[c], hi[c]]`. The noise is drawn in `x`'s order, one standard normal per value
/// (none when `noise_scale == 0`).
///
/// # Errors
/// [`LangevinError::BadSettings`]; [`LangevinError::LengthMismatch`] when `grad` and `x` differ
/// in length or `x` does not split into `C` planes; [`LangevinError::BoundsMismatch`] when `lo`
/// and `hi` differ in length or are empty.
pub fn sgld_step<R: RngCore>(
    x: &mut [f32],
    grad: &[f32],
    settings: &LangevinSettings,
    bounds: &Bounds<'_>,
    rng: &mut R,
) -> Result<(), LangevinError> {
    settings.validate()?;
    if grad.len() != x.len() {
        return Err(LangevinError::LengthMismatch { expected: x.len(), got: grad.len() });
    }
    if bounds.lo.len() != bounds.hi.len() || bounds.lo.is_empty() {
        return Err(LangevinError::BoundsMismatch { bounds: bounds.lo.len(), channels: bounds.hi.len() });
    }
    let half = settings.step_size * 0.5;
    let sigma = settings.noise_scale;
    if bounds.lo.len() == 1 {
        let (lo, hi) = bounds.channel(0);
        for (v, g) in x.iter_mut().zip(grad) {
            *v = update(*v, *g, half, sigma, lo, hi, rng);
        }
        return Ok(());
    }
    let c = bounds.lo.len();
    if !x.len().is_multiple_of(c) {
        return Err(LangevinError::LengthMismatch { expected: x.len() - x.len() % c, got: x.len() });
    }
    let plane = x.len() / c;
    for ch in 0..c {
        let (lo, hi) = bounds.channel(ch);
        let r = ch * plane..(ch + 1) * plane;
        for (v, g) in x[r.clone()].iter_mut().zip(&grad[r]) {
            *v = update(*v, *g, half, sigma, lo, hi, rng);
        }
    }
    Ok(())
}

#[inline]
fn update<R: RngCore>(v: f32, g: f32, half: f32, sigma: f32, lo: f32, hi: f32, rng: &mut R) -> f32 {
    let noise = if sigma > 0.0 {
        let z: f32 = StandardNormal.sample(rng);
        sigma * z
    } else {
        0.0
    };
    (v - half * g + noise).clamp(lo, hi)
}

/// Runs `settings.n_steps` SGLD updates on a batch of `n` frames in place, warm-started from
/// whatever `x` holds (frames, replay-buffer samples or noise).
///
/// `x` is `[n, C, H, W]` (length `n * frame_len`), `energy` has room for `n` values and `grad`
/// for `n * frame_len`. `on_step(step, energies)` is called `n_steps + 1` times, with the
/// energies before update `step` (step 0: the starting frames; step `n_steps`: the result), so
/// the energy trace costs no extra work but the final evaluation.
///
/// # Errors
/// [`LangevinError::BadSettings`], [`LangevinError::LengthMismatch`],
/// [`LangevinError::BoundsMismatch`] (bounds neither 1 nor `C` channels),
/// [`LangevinError::Gradient`] from the source, [`LangevinError::NonFinite`] when an energy or
/// gradient value is NaN or infinite (the chain stops there).
#[allow(clippy::too_many_arguments)]
pub fn sgld_chain<G: GradientSource, R: RngCore>(
    source: &mut G,
    x: &mut [f32],
    n: usize,
    energy: &mut [f32],
    grad: &mut [f32],
    settings: &LangevinSettings,
    bounds: &Bounds<'_>,
    rng: &mut R,
    mut on_step: impl FnMut(usize, &[f32]),
) -> Result<(), LangevinError<G::Error>> {
    settings.validate().map_err(retype)?;
    let d = source.frame_len();
    let c = source.channels();
    for (len, want) in [(x.len(), n * d), (grad.len(), n * d), (energy.len(), n)] {
        if len != want {
            return Err(LangevinError::LengthMismatch { expected: want, got: len });
        }
    }
    if !(bounds.lo.len() == 1 || bounds.lo.len() == c) || bounds.hi.len() != bounds.lo.len() {
        return Err(LangevinError::BoundsMismatch { bounds: bounds.lo.len(), channels: c });
    }
    for step in 0..=settings.n_steps {
        source.energy_and_grad(x, n, energy, grad).map_err(LangevinError::Gradient)?;
        for f in 0..n {
            if !energy[f].is_finite() || grad[f * d..(f + 1) * d].iter().any(|g| !g.is_finite()) {
                return Err(LangevinError::NonFinite { frame: f, step });
            }
        }
        on_step(step, energy);
        if step == settings.n_steps {
            break;
        }
        for f in 0..n {
            let r = f * d..(f + 1) * d;
            sgld_step(&mut x[r.clone()], &grad[r], settings, bounds, rng).map_err(retype)?;
        }
    }
    Ok(())
}

fn retype<E>(e: LangevinError) -> LangevinError<E> {
    // sgld_step has no gradient source, so its error has no Gradient variant to carry.
    match e {
        LangevinError::BadSettings { step_size, noise_scale } => LangevinError::BadSettings { step_size, noise_scale },
        LangevinError::LengthMismatch { expected, got } => LangevinError::LengthMismatch { expected, got },
        LangevinError::BoundsMismatch { bounds, channels } => LangevinError::BoundsMismatch { bounds, channels },
        LangevinError::NonFinite { frame, step } => LangevinError::NonFinite { frame, step },
        LangevinError::Gradient(never) => match never {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;
    use rand_xoshiro::Xoshiro256PlusPlus;

    /// E(x) = sum_i (x_i - mu)^2 / (2 s^2): the Gaussian N(mu, s^2 I), dE/dx = (x - mu) / s^2.
    struct Quadratic {
        mu: f32,
        s2: f32,
        d: usize,
    }

    impl GradientSource for Quadratic {
        type Error = ();
        fn frame_len(&self) -> usize {
            self.d
        }
        fn channels(&self) -> usize {
            1
        }
        fn energy_and_grad(&mut self, x: &[f32], n: usize, e: &mut [f32], g: &mut [f32]) -> Result<(), ()> {
            for (f, ef) in e.iter_mut().enumerate().take(n) {
                let mut acc = 0.0;
                for i in f * self.d..(f + 1) * self.d {
                    let r = x[i] - self.mu;
                    acc += r * r / (2.0 * self.s2);
                    g[i] = r / self.s2;
                }
                *ef = acc;
            }
            Ok(())
        }
    }

    /// ULA on N(mu, s^2): x' = (1 - a) x + a mu + sqrt(eps) z with a = eps / (2 s^2), an AR(1)
    /// process with stationary mean mu and variance eps / (1 - (1 - a)^2) (closed form).
    /// 20,000 independent chains from x = mu + 3 (far out), 400 steps (mixing time 1/a = 20):
    /// the sample mean within 5 standard errors of mu, the sample variance within 5 standard
    /// errors (sqrt(2 / n) v for a normal sample) of the closed form, which carries ULA's
    /// O(eps) bias: v = s^2 / (1 - eps / (4 s^2)).
    #[test]
    fn unadjusted_langevin_samples_a_gaussian_with_its_known_bias() {
        let (mu, s2, eps) = (0.7f32, 0.25f32, 0.025f32);
        let n = 20_000;
        let mut q = Quadratic { mu, s2, d: 1 };
        let settings = LangevinSettings::unadjusted(eps, 400);
        assert!(settings.is_unadjusted_langevin());
        let mut x = vec![mu + 3.0; n];
        let (mut e, mut g) = (vec![0.0; n], vec![0.0; n]);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(11);
        let b = Bounds::none();
        sgld_chain(&mut q, &mut x, n, &mut e, &mut g, &settings, &b, &mut rng, |_, _| {}).unwrap();
        let a = (eps / (2.0 * s2)) as f64;
        let v_exact = eps as f64 / (1.0 - (1.0 - a) * (1.0 - a));
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let se_mean = (v_exact / n as f64).sqrt();
        let se_var = v_exact * (2.0 / n as f64).sqrt();
        assert!((mean - mu as f64).abs() < 5.0 * se_mean, "mean {mean} vs {mu} (se {se_mean})");
        assert!((var - v_exact).abs() < 5.0 * se_var, "variance {var} vs closed form {v_exact} (se {se_var})");
    }

    #[test]
    fn the_clip_holds_every_value_in_its_channel_bounds() {
        let settings = LangevinSettings { step_size: 1.0, noise_scale: 5.0, n_steps: 1 };
        let mut x = [0.0f32; 8]; // one frame, 2 channels of 4
        let grad = [0.0f32; 8];
        let (lo, hi) = ([-1.0, 0.0], [0.0, 2.0]);
        let b = Bounds { lo: &lo, hi: &hi };
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
        sgld_step(&mut x, &grad, &settings, &b, &mut rng).unwrap();
        assert!(x[..4].iter().all(|v| (-1.0..=0.0).contains(v)), "{x:?}");
        assert!(x[4..].iter().all(|v| (0.0..=2.0).contains(v)), "{x:?}");
        // noise 5 on 8 values: some hit a bound exactly
        assert!(x.iter().any(|&v| v == -1.0 || v == 0.0 || v == 2.0));
    }

    #[test]
    fn bad_settings_are_refused() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(0);
        let b = Bounds::none();
        for (step_size, noise_scale) in [(0.0, 0.1), (f32::NAN, 0.1), (0.1, -1.0), (0.1, f32::INFINITY)] {
            let s = LangevinSettings { step_size, noise_scale, n_steps: 1 };
            let r = sgld_step(&mut [0.0], &[0.0], &s, &b, &mut rng);
            assert!(matches!(r, Err(LangevinError::BadSettings { .. })), "{r:?}");
        }
    }
}
