//! Frame-health scores on the full decoded frame, before the model's resize: what a camera gets
//! wrong that a 32x32 model cannot see (sensor noise and blur average away in the downscale).
//!
//! Exposure and the luma percentile are computed on the frame's 8-bit luma
//! `Y = round((77 R + 150 G + 29 B) / 256)` (ITU-R BT.601's weights in fixed point, [`luma`]);
//! the clipped-bright fraction and the colour cast on the channels; the two 3x3 operators
//! (sharpness and noise) on the green channel `G`: it carries most of the luma (0.587), half
//! a Bayer sensor's photosites are green, and per-channel sensor noise keeps its full size there,
//! where luma's weighted sum shrinks independent channel noise to 0.67 of it (on gray frames
//! `G = Y`). Clipping and colour count every pixel; the dark fraction and the mean luma every
//! pixel of the even rows (half of them: luma is computed there only); the luma percentile
//! every 4th pixel of every 4th row (a sixteenth). The operators are evaluated at full resolution,
//! centred on every interior pixel of the odd rows (`y = 1, 3, 5, ...`): half the centres, which
//! halves their cost and leaves means over some 150,000 centres at 640x480. The cost is
//! O(pixels): about 0.2 ms at 640x480 here, under a tenth of the forward pass (`bench`).
//!
//! | score | formula | unit | a fault moves it |
//! |---|---|---|---|
//! | `sharpness` | variance of the 3x3 Laplacian `[0 1 0; 1 -4 1; 0 1 0]` of `G` over the centres (Pech-Pacheco et al. 2000, "Diatom autofocusing in brightfield microscopy", ICPR) | levels² | blur: down |
//! | `noise_sigma` | Immerkaer's estimate `sqrt(pi/2) / (6 n) * sum |G * M|`, `M = [1 -2 1; -2 4 -2; 1 -2 1]` (Immerkaer 1996, "Fast noise variance estimation", CVIU 64(2)), on each block of 32 x 32 pixels ([`NOISE_BLOCK`]; its `n` centres), averaged over the flattest tenth of the blocks ([`NOISE_FLAT_FRACTION`]: the lowest estimates), as block-based estimators pick homogeneous blocks (e.g. Shin, Park and Kang 2005, IEEE Trans. Consumer Electronics 51(1)) | levels (a standard deviation) | noise: up |
//! | `dark_fraction` | fraction of pixels (of the even rows) with `Y <= DARK_LEVEL` (10) | 0..1 | under-exposure, covered lens, torn frame: up |
//! | `bright_fraction` | fraction of pixels with a channel at full scale, `max(R, G, B) = 255` (clipped) | 0..1 | over-exposure: up |
//! | `mean_luma` | mean of `Y` (over the even rows) | levels | exposure: either way |
//! | `luma_p99` | 99th percentile of `Y`: the smallest level with at least 99% of the sampled pixels at or below it | levels | under-exposure, covered lens: down |
//! | `colour_cast` | distance of the mean colour's chromaticity `(R̄, Ḡ, B̄) / (R̄ + Ḡ + B̄)` from the neutral `(1/3, 1/3, 1/3)` (the gray-world assumption, Buchsbaum 1980) | 0 (neutral) .. `sqrt(6)/3` (one pure primary) | colour cast: up |
//!
//! `M` is the difference of two discrete Laplacians (Immerkaer): zero on any plane
//! `a x + b y + c` and small on smooth image structure, so it responds to pixel-to-pixel noise
//! far more than to content; but edges and texture still add to it, so over a whole photograph
//! the estimate follows the scene (clean photos here range from 1 to 16 levels). In the
//! flattest blocks it measures the noise: on i.i.d. Gaussian noise of standard deviation `s`,
//! `G * M` is normal with variance `36 s²` and `E|G * M| = 6 s sqrt(2 / pi)`, so each block's
//! estimate is `s` on average (Immerkaer's derivation), and the mean of the lowest tenth sits a
//! few percent under it (tested). A frame with no block of at least half a block's centres
//! (under about 32 x 18 pixels) takes the estimate over all its centres.
//!
//! Each score is a nonconformity score with a tail ([`ScoreKind::tail`]): the gate turns it into
//! a conformal p-value over the deployment's own clean frames
//! ([`crate::core::conformal::tail_p_value`]), and combines the scores under one guarantee
//! ([`crate::core::conformal::strangeness`], [`crate::core::conformal::combined_score`];
//! [`crate::pipeline::MultiScoreGate`]).
//!
//! [`LumaSummary`] is the temporal part: a 16x16 grid of block-mean luma, small enough to keep
//! from frame to frame; [`LumaSummary::difference`] (mean absolute difference, levels,
//! [`crate::core::health::summary_difference`]) at 0 means a repeated frame.
//!
//! ```
//! use ebm_gate::health::{health_scores, HealthScores};
//! let img = image::RgbImage::from_pixel(64, 48, image::Rgb([128, 128, 128]));
//! let h: HealthScores = health_scores(&img);
//! assert_eq!((h.sharpness, h.noise_sigma, h.colour_cast), (0.0, 0.0, 0.0));
//! assert_eq!((h.dark_fraction, h.bright_fraction, h.mean_luma), (0.0, 0.0, 128.0));
//! ```

use image::RgbImage;

pub use crate::core::health::{ScoreKind, Tail};
use serde::{Deserialize, Serialize};

/// Luma at or below which a pixel counts as clipped dark, 8-bit levels.
pub const DARK_LEVEL: u8 = 10;
/// Side of the square blocks of pixels whose noise estimates `noise_sigma` ranks.
pub const NOISE_BLOCK: usize = 32;
/// Fraction of the blocks, those with the lowest estimates, that `noise_sigma` averages.
pub const NOISE_FLAT_FRACTION: f64 = 0.1;
/// Side of [`LumaSummary`]'s grid of block means.
pub const SUMMARY_SIDE: usize = 16;

/// The health scores of one frame (see the module's table for formulas, units and sources).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HealthScores {
    /// Variance of the Laplacian of the green channel over the odd rows' interior pixels,
    /// levels² (0 for frames under 3x3).
    pub sharpness: f32,
    /// Immerkaer's noise standard deviation of the green channel in the flattest blocks, levels
    /// (0 for frames under 3x3).
    pub noise_sigma: f32,
    /// Fraction of the even rows' pixels with luma `<=` [`DARK_LEVEL`].
    pub dark_fraction: f32,
    /// Fraction of pixels with a channel at 255.
    pub bright_fraction: f32,
    /// Mean luma over the even rows, levels.
    pub mean_luma: f32,
    /// 99th percentile of luma over every 4th pixel of every 4th row, levels (an integer).
    pub luma_p99: f32,
    /// Distance of the mean chromaticity from neutral gray, 0 ..= `sqrt(6)/3` (0 for a black frame).
    pub colour_cast: f32,
}

impl HealthScores {
    /// The value of one score ([`ScoreKind::Energy`] is not a health score: `None`).
    pub fn get(&self, kind: ScoreKind) -> Option<f32> {
        Some(match kind {
            ScoreKind::Energy => return None,
            ScoreKind::Sharpness => self.sharpness,
            ScoreKind::NoiseSigma => self.noise_sigma,
            ScoreKind::DarkFraction => self.dark_fraction,
            ScoreKind::BrightFraction => self.bright_fraction,
            ScoreKind::MeanLuma => self.mean_luma,
            ScoreKind::LumaP99 => self.luma_p99,
            ScoreKind::ColourCast => self.colour_cast,
        })
    }
}

/// 8-bit luma of an RGB pixel: `round((77 R + 150 G + 29 B) / 256)`, the BT.601 weights
/// (0.299, 0.587, 0.114) in 8-bit fixed point; within 1 level of `0.299 R + 0.587 G + 0.114 B`,
/// and exact on gray (`R = G = B`).
///
/// ```
/// use ebm_gate::health::luma;
/// assert_eq!(luma([255, 255, 255]), 255);
/// assert_eq!(luma([255, 0, 0]), 77); // BT.601: 76.2
/// assert_eq!(luma([90, 90, 90]), 90);
/// ```
#[inline]
pub fn luma(p: [u8; 3]) -> u8 {
    ((77 * p[0] as u32 + 150 * p[1] as u32 + 29 * p[2] as u32 + 128) >> 8) as u8
}

/// Sums over the rows read so far.
#[derive(Default)]
struct Sums {
    luma: u64,
    dark: u64,
    clipped: u64,
    channels: [u64; 3],
    lap: i64,
    lap_sq: u64,
    immerkaer: u64,
}

/// One row of RGB bytes: its channel and clipping sums, its green channel into `green`, and
/// when `LUMA` its luma into `out` with the luma's exposure sums (the odd rows skip luma).
/// Written as plain loops the compiler vectorises (a row of 640 pixels: about 0.1 us with AVX2).
#[inline(always)]
fn row_pass<const LUMA: bool>(rgb: &[u8], out: &mut [u8], green: &mut [u8], s: &mut Sums) {
    // u32 sums: a row is at most MAX_SIDE (65535) pixels of 255.
    let (mut r, mut g, mut b, mut clipped) = (0u32, 0u32, 0u32, 0u32);
    for ((o, gr), p) in out.iter_mut().zip(green.iter_mut()).zip(rgb.chunks_exact(3)) {
        let (pr, pg, pb) = (p[0] as u32, p[1] as u32, p[2] as u32);
        r += pr;
        g += pg;
        b += pb;
        clipped += (pr.max(pg).max(pb) == 255) as u32;
        if LUMA {
            *o = ((77 * pr + 150 * pg + 29 * pb + 128) >> 8) as u8;
        }
        *gr = p[1];
    }
    s.channels[0] += r as u64;
    s.channels[1] += g as u64;
    s.channels[2] += b as u64;
    s.clipped += clipped as u64;
    if LUMA {
        let (mut sy, mut sd) = (0u32, 0u32);
        for &v in out.iter() {
            sy += v as u32;
            sd += (v <= DARK_LEVEL) as u32;
        }
        s.luma += sy as u64;
        s.dark += sd as u64;
    }
}

/// Both 3x3 operators centred on row `b` (rows `a` above and `c` below, equal lengths `w`,
/// at most [`OPS_CHUNK`] + 2), for centres `1..w-1`: adds the Laplacian and its square to the
/// sums and `|Y * M|` of centre `1 + i` to `col[i]`. In `i16` (|lap| <= 4 * 255,
/// |M| <= 16 * 255) and `i32` sums (<= 512 squares of at most 1020^2).
#[inline(always)]
fn operators_row(a: &[u8], b: &[u8], c: &[u8], col: &mut [u16], s: &mut Sums) {
    let w = b.len();
    let (mut sl, mut sl2) = (0i32, 0i32);
    let (a0, a1, a2) = (&a[..w - 2], &a[1..w - 1], &a[2..]);
    let (b0, b1, b2) = (&b[..w - 2], &b[1..w - 1], &b[2..]);
    let (c0, c1, c2) = (&c[..w - 2], &c[1..w - 1], &c[2..]);
    let col = &mut col[..w - 2];
    for i in 0..w - 2 {
        let edges = a1[i] as i16 + c1[i] as i16 + b0[i] as i16 + b2[i] as i16;
        let ctr = b1[i] as i16;
        let corners = a0[i] as i16 + a2[i] as i16 + c0[i] as i16 + c2[i] as i16;
        let lap = edges - 4 * ctr;
        let m = corners - 2 * edges + 4 * ctr;
        sl += lap as i32;
        sl2 += lap as i32 * lap as i32;
        col[i] += m.unsigned_abs();
    }
    s.lap += sl as i64;
    s.lap_sq += sl2 as u64;
}

// A column sum of a band is at most NOISE_BLOCK / 2 values of |M| <= 16 * 255: it fits a u16.
const _: () = assert!(NOISE_BLOCK / 2 * 16 * 255 <= u16::MAX as usize);

/// Centres per [`operators_row`] call: 512 squared Laplacians of at most `(4 * 255)^2` fit an
/// `i32`.
const OPS_CHUNK: usize = 512;

/// Immerkaer's factor: `sigma = IMMERKAER * mean |G * M|`.
const IMMERKAER: f64 = 0.208_885_689_552_583_35; // sqrt(pi / 2) / 6

/// The column sums of `|G * M|` (`col[x - 1]` for centre column `x`) over the centre rows of
/// one band of [`NOISE_BLOCK`] rows (`rows` of them, at most `NOISE_BLOCK / 2`): each block of
/// [`NOISE_BLOCK`] centre columns with at least half a full block's centres gives its
/// Immerkaer estimate; `col` is cleared.
fn flush_noise_band(col: &mut [u16], rows: usize, s: &mut Sums, estimates: &mut Vec<f32>) {
    let full = NOISE_BLOCK * NOISE_BLOCK / 2;
    for block in col.chunks_mut(NOISE_BLOCK) {
        let sum: u64 = block.iter().map(|&v| v as u64).sum();
        s.immerkaer += sum;
        let n = block.len() * rows;
        if 2 * n >= full {
            estimates.push((IMMERKAER * sum as f64 / n as f64) as f32);
        }
        block.fill(0);
    }
}

/// Mean of the lowest `ceil(NOISE_FLAT_FRACTION * n)` of `estimates` (non-empty).
fn flattest_mean(estimates: &mut [f32]) -> f64 {
    let k = ((NOISE_FLAT_FRACTION * estimates.len() as f64).ceil() as usize).clamp(1, estimates.len());
    estimates.select_nth_unstable_by(k - 1, f32::total_cmp);
    estimates[..k].iter().map(|&v| v as f64).sum::<f64>() / k as f64
}

/// `luma_p99` counts every `PERCENTILE_STEP`-th pixel of every `PERCENTILE_STEP`-th row
/// (19,200 pixels at 640x480; a histogram over every pixel would cost a fifth of the scores).
const PERCENTILE_STEP: usize = 4; // even: its rows have luma

/// The level at the 99th percentile of a luma histogram: the smallest `v` with at least
/// `ceil(0.99 n)` of the `n` samples at or below it (0 without samples).
fn percentile_99(hist: &[u32; 256]) -> f32 {
    let n: u64 = hist.iter().map(|&c| c as u64).sum();
    let need = (99 * n).div_ceil(100);
    let mut seen = 0u64;
    for (v, &c) in hist.iter().enumerate() {
        seen += c as u64;
        if seen >= need && n > 0 {
            return v as f32;
        }
    }
    0.0
}

#[inline(always)]
fn scores_of(img: &RgbImage) -> HealthScores {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let raw = img.as_raw();
    let mut s = Sums::default();
    let mut luma = vec![0u8; w];
    let mut rows = [vec![0u8; w], vec![0u8; w], vec![0u8; w]]; // green
    let mut col = vec![0u16; w.saturating_sub(2)];
    let mut estimates = Vec::with_capacity(w.div_ceil(NOISE_BLOCK) * h.div_ceil(NOISE_BLOCK));
    let mut hist = [0u32; 256];
    let (mut centres, mut band_rows) = (0u64, 0usize);
    for (y, rgb) in raw.chunks_exact(3 * w.max(1)).enumerate().take(h) {
        if y % 2 == 0 {
            row_pass::<true>(rgb, &mut luma, &mut rows[2], &mut s);
        } else {
            row_pass::<false>(rgb, &mut luma, &mut rows[2], &mut s);
        }
        if y % PERCENTILE_STEP == 0 {
            for &v in luma.iter().step_by(PERCENTILE_STEP) {
                hist[v as usize] += 1;
            }
        }
        // Centres on the odd rows: rows y-2, y-1, y when y is even; centre row y - 1.
        if y >= 2 && y % 2 == 0 && w >= 3 {
            let mut x0 = 0;
            while x0 + 2 < w {
                let x1 = (x0 + OPS_CHUNK + 2).min(w);
                operators_row(&rows[0][x0..x1], &rows[1][x0..x1], &rows[2][x0..x1], &mut col[x0..x1 - 2], &mut s);
                x0 = x1 - 2;
            }
            centres += (w - 2) as u64;
            band_rows += 1;
            // The band of centre row y - 1 ends before the next centre row y + 1, or at the
            // last centre row.
            if (y + 1) / NOISE_BLOCK != (y - 1) / NOISE_BLOCK || y + 3 > h {
                flush_noise_band(&mut col, band_rows, &mut s, &mut estimates);
                band_rows = 0;
            }
        }
        rows.rotate_left(1);
    }
    let n = (w * h).max(1) as f64;
    let n_even = (w * h.div_ceil(2)).max(1) as f64; // pixels of the even rows
    let (sharpness, noise_sigma) = if centres > 0 {
        let c = centres as f64;
        let mean = s.lap as f64 / c;
        let var = (s.lap_sq as f64 / c - mean * mean).max(0.0);
        let noise =
            if estimates.is_empty() { IMMERKAER * s.immerkaer as f64 / c } else { flattest_mean(&mut estimates) };
        (var, noise)
    } else {
        (0.0, 0.0)
    };
    let total: u64 = s.channels.iter().sum();
    let colour_cast = if total > 0 {
        s.channels.iter().map(|&v| (v as f64 / total as f64 - 1.0 / 3.0).powi(2)).sum::<f64>().sqrt()
    } else {
        0.0
    };
    HealthScores {
        sharpness: sharpness as f32,
        noise_sigma: noise_sigma as f32,
        dark_fraction: (s.dark as f64 / n_even) as f32,
        bright_fraction: (s.clipped as f64 / n) as f32,
        mean_luma: (s.luma as f64 / n_even) as f32,
        luma_p99: percentile_99(&hist),
        colour_cast: colour_cast as f32,
    }
}

/// The health scores of `img` at its own resolution (module docs for the formulas).
///
/// One pass over the rows in integers: 8-bit [`luma`] of the even rows, exposure and colour
/// counted as each row is read, both 3x3 operators exact in `i16`/`i32`, then a selection (no
/// sort) of the flattest blocks. On x86-64 a copy compiled for AVX2 is used when the CPU has it
/// (the baseline build has only SSE2); aarch64's baseline has NEON.
pub fn health_scores(img: &RgbImage) -> HealthScores {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked on the line above.
        return unsafe { scores_avx2(img) };
    }
    scores_of(img)
}

/// [`scores_of`] compiled for AVX2 (the same integer arithmetic, so the same results).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn scores_avx2(img: &RgbImage) -> HealthScores {
    scores_of(img)
}

/// A frame's luma as a [`SUMMARY_SIDE`] x [`SUMMARY_SIDE`] grid of block means (row-major), for
/// comparing consecutive frames: a frozen camera repeats its summary exactly, a live one's
/// sensor noise and motion move it.
///
/// Block `(i, j)` covers rows `i*H/16 .. (i+1)*H/16` and columns `j*W/16 .. (j+1)*W/16`
/// (integer division), so every pixel of a frame of at least 16x16 belongs to one block; a
/// smaller frame's empty blocks are 0.
#[derive(Debug, Clone, PartialEq)]
pub struct LumaSummary {
    /// Block means, levels.
    pub blocks: [f32; SUMMARY_SIDE * SUMMARY_SIDE],
}

impl LumaSummary {
    /// The summary of `img`, from the [`luma`] of every other pixel of every other row (a
    /// quarter of the pixels: block means of thousands of them at camera resolution, and a
    /// tenth of a millisecond at 640x480).
    pub fn of(img: &RgbImage) -> LumaSummary {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let k = SUMMARY_SIDE;
        let mut sums = [0u64; SUMMARY_SIDE * SUMMARY_SIDE];
        let mut counts = [0u32; SUMMARY_SIDE * SUMMARY_SIDE];
        let col_block: Vec<usize> = (0..w).step_by(2).map(|x| block_of(x, w, k)).collect();
        for (y, row) in img.as_raw().chunks_exact(3 * w.max(1)).enumerate().step_by(2) {
            let bi = block_of(y, h, k) * k;
            let mut row_sums = [0u32; SUMMARY_SIDE];
            let mut row_counts = [0u32; SUMMARY_SIDE];
            for (p, &b) in row
                .chunks_exact(6)
                .map(|p| [p[0], p[1], p[2]])
                .chain(
                    // an odd width's last pixel
                    (w % 2 == 1).then(|| [row[3 * w - 3], row[3 * w - 2], row[3 * w - 1]]),
                )
                .zip(&col_block)
            {
                row_sums[b] += luma(p) as u32;
                row_counts[b] += 1;
            }
            for j in 0..k {
                sums[bi + j] += row_sums[j] as u64;
                counts[bi + j] += row_counts[j];
            }
        }
        let mut blocks = [0.0f32; SUMMARY_SIDE * SUMMARY_SIDE];
        for (o, (s, c)) in blocks.iter_mut().zip(sums.iter().zip(counts)) {
            *o = if c > 0 { (*s as f64 / c as f64) as f32 } else { 0.0 };
        }
        LumaSummary { blocks }
    }

    /// Mean absolute difference of the block means, levels: 0 for a repeated frame
    /// ([`crate::core::health::summary_difference`]).
    pub fn difference(&self, other: &LumaSummary) -> f32 {
        crate::core::health::summary_difference(&self.blocks, &other.blocks)
    }
}

/// The block (of `k`) that coordinate `i` of `n` falls in: the largest `j` with `j*n/k <= i`.
fn block_of(i: usize, n: usize, k: usize) -> usize {
    if n < k {
        // fewer pixels than blocks: pixel i owns block i*k/n
        return i * k / n;
    }
    ((i + 1) * k - 1) / n
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;
    use rand::{Rng, SeedableRng};
    use rand_distr::{Distribution, Normal};

    fn from_fn(w: u32, h: u32, mut f: impl FnMut(u32, u32) -> [u8; 3]) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| Rgb(f(x, y)))
    }

    #[test]
    fn luma_is_within_a_level_of_bt601() {
        // Every 5th level of each channel: within 1 level of the BT.601 closed form; exact on gray.
        for r in (0..=255u32).step_by(5) {
            for g in (0..=255u32).step_by(5) {
                for b in (0..=255u32).step_by(5) {
                    let exact = 0.299 * r as f64 + 0.587 * g as f64 + 0.114 * b as f64;
                    let y = luma([r as u8, g as u8, b as u8]) as f64;
                    assert!((y - exact).abs() <= 1.0, "{r} {g} {b}: {y} vs {exact}");
                }
            }
        }
        assert!((0..=255u8).all(|v| luma([v, v, v]) == v));
    }

    #[test]
    fn planes_have_no_structure_and_no_noise() {
        // Y = x + 2y on a gray ramp: the Laplacian and Immerkaer's mask are exactly 0 on a plane.
        let img = from_fn(64, 60, |x, y| {
            let v = (x + 2 * y) as u8;
            [v, v, v]
        });
        let h = health_scores(&img);
        assert!(h.sharpness.abs() < 1e-6 && h.noise_sigma.abs() < 1e-4, "{h:?}");
        // Mean over the even rows 0, 2, ..., 58: x averages 31.5, y 29.
        assert!((h.mean_luma - (31.5 + 2.0 * 29.0)).abs() < 1e-3, "{h:?}");
        assert!(h.colour_cast < 1e-6);
    }

    #[test]
    fn checkerboard_laplacian_variance_is_closed_form() {
        // 0/255 checkerboard: every interior Laplacian is +-4*255 in equal numbers (even interior
        // size), so its mean is 0 and its variance (4*255)^2.
        let img = from_fn(34, 34, |x, y| if (x + y) % 2 == 0 { [255; 3] } else { [0; 3] });
        let h = health_scores(&img);
        let want = (4.0f32 * 255.0).powi(2);
        assert!((h.sharpness - want).abs() / want < 1e-5, "{} vs {want}", h.sharpness);
        // Immerkaer's mask on the checkerboard: corners equal the centre, the 4 edges the other
        // colour, so |M| = |4 v + 4 v - 2 * 4 u| = 8 * 255 everywhere.
        let want_noise = (std::f32::consts::PI / 2.0).sqrt() * 8.0 * 255.0 / 6.0;
        assert!((h.noise_sigma - want_noise).abs() / want_noise < 1e-5, "{}", h.noise_sigma);
        assert_eq!((h.dark_fraction, h.bright_fraction), (0.5, 0.5));
    }

    fn noisy(w: u32, h: u32, s: f32, seed: u64, base: impl Fn(u32, u32) -> f32) -> RgbImage {
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed);
        let noise = Normal::new(0.0f32, s).unwrap();
        from_fn(w, h, |x, y| {
            let v = (base(x, y) + noise.sample(&mut rng)).round().clamp(0.0, 255.0) as u8;
            [v, v, v]
        })
    }

    #[test]
    fn noise_sigma_on_pure_noise_sits_just_under_sigma() {
        // Flat 128 plus seeded N(0, s^2), rounded: every block's Immerkaer estimate has mean
        // sqrt(s^2 + 1/12) (Immerkaer's derivation; the rounding adds 1/12) and a spread of a few
        // percent over its ~500 centres, so the mean of the lowest tenth lies a few percent under.
        for s in [5.0f32, 10.0, 20.0] {
            let h = health_scores(&noisy(640, 480, s, 7, |_, _| 128.0));
            let want = (s * s + 1.0 / 12.0).sqrt();
            let r = h.noise_sigma / want;
            assert!((0.88..0.99).contains(&r), "s {s}: {} ({r})", h.noise_sigma);
        }
    }

    #[test]
    fn noise_sigma_ignores_texture_where_flat_blocks_remain() {
        // The same noise with a strong texture (a 88/168 checkerboard of 2-pixel squares) over the
        // left 70% of the frame: the flattest tenth of the blocks are untextured (the lowest third
        // of those, a little above the lowest tenth of all), so the estimate stays within 5%;
        // the texture multiplies the Laplacian variance.
        let plain = health_scores(&noisy(640, 480, 10.0, 9, |_, _| 128.0));
        let texture = |x: u32, y: u32| match (x < 448, (x / 2 + y / 2).is_multiple_of(2)) {
            (true, true) => 168.0,
            (true, false) => 88.0,
            _ => 128.0,
        };
        let textured = health_scores(&noisy(640, 480, 10.0, 9, texture));
        assert!((textured.noise_sigma / plain.noise_sigma - 1.0).abs() < 0.05, "{plain:?} {textured:?}");
        assert!(textured.sharpness > 5.0 * plain.sharpness, "{plain:?} {textured:?}");
        // Flat, noise-free blocks (the bottom quarter) are the flattest tenth: the estimate is 0.
        let part = health_scores(&noisy(640, 480, 10.0, 11, |_, _| 128.0));
        let mut img = noisy(640, 480, 10.0, 11, |_, _| 128.0);
        for y in 360..480 {
            for x in 0..640 {
                img.put_pixel(x, y, Rgb([128; 3]));
            }
        }
        assert_eq!(health_scores(&img).noise_sigma, 0.0, "{part:?}");
    }

    #[test]
    fn small_frames_take_the_whole_frame_estimate() {
        // 20 x 20: 18 x 9 = 162 centres, under half a block (256), so the estimate is over all of
        // them: on the 0/255 checkerboard |M| = 8 * 255 at every centre.
        let img = from_fn(20, 20, |x, y| if (x + y) % 2 == 0 { [255; 3] } else { [0; 3] });
        let want = (std::f32::consts::PI / 2.0).sqrt() * 8.0 * 255.0 / 6.0;
        let h = health_scores(&img);
        assert!((h.noise_sigma - want).abs() / want < 1e-5, "{}", h.noise_sigma);
    }

    #[test]
    fn luma_p99_closed_forms() {
        // 400 x 400 gray 50: the sampled pixels are rows and columns 0, 4, ..., 396 (10,000).
        // Row 0 at 200 is 100 of them (1%): the 9,900th smallest is still 50. Rows 0..8 at 200
        // are 200 (2%): the 99th percentile is 200.
        let frame = |bright_rows: u32| from_fn(400, 400, |_, y| if y < bright_rows { [200; 3] } else { [50; 3] });
        assert_eq!(health_scores(&frame(1)).luma_p99, 50.0);
        assert_eq!(health_scores(&frame(8)).luma_p99, 200.0);
        assert_eq!(health_scores(&RgbImage::from_pixel(1, 1, Rgb([9, 9, 9]))).luma_p99, 9.0);
    }

    #[test]
    fn exposure_fractions_count_pixels() {
        // 100 x 10: columns 0..20 black (Y = 0), 20..30 at Y = 10 (dark, inclusive), 30..92 mid
        // gray, 92..95 pure red (one channel clipped, Y = 77), 95..100 white.
        let img = from_fn(100, 10, |x, _| match x {
            0..20 => [0; 3],
            20..30 => [10; 3],
            30..92 => [128; 3],
            92..95 => [255, 0, 0],
            _ => [255; 3],
        });
        let h = health_scores(&img);
        assert!((h.dark_fraction - 0.30).abs() < 1e-6, "{h:?}");
        assert!((h.bright_fraction - 0.08).abs() < 1e-6, "{h:?}");
        let want_mean = (20.0 * 0.0 + 10.0 * 10.0 + 62.0 * 128.0 + 3.0 * 77.0 + 5.0 * 255.0) / 100.0;
        assert!((h.mean_luma - want_mean).abs() < 1e-2, "{} vs {want_mean}", h.mean_luma);
    }

    #[test]
    fn colour_cast_closed_forms() {
        let red = health_scores(&RgbImage::from_pixel(8, 8, Rgb([200, 0, 0])));
        assert!((red.colour_cast - 6f32.sqrt() / 3.0).abs() < 1e-6, "{}", red.colour_cast);
        // (2, 1, 1) / 4 -> (1/2, 1/4, 1/4): distance sqrt(1/36 + 2/144) = sqrt(6)/12
        let warm = health_scores(&RgbImage::from_pixel(8, 8, Rgb([200, 100, 100])));
        assert!((warm.colour_cast - 6f32.sqrt() / 12.0).abs() < 1e-6, "{}", warm.colour_cast);
        assert_eq!(health_scores(&RgbImage::new(8, 8)).colour_cast, 0.0);
    }

    #[test]
    fn tiny_frames_do_not_divide_by_zero() {
        for (w, h) in [(1, 1), (2, 5), (5, 2), (3, 1), (1, 3), (3, 3), (33, 4), (4, 33), (65, 65)] {
            let s = health_scores(&RgbImage::from_pixel(w, h, Rgb([50, 60, 70])));
            assert_eq!((s.sharpness, s.noise_sigma), (0.0, 0.0), "{w}x{h}");
            let y = luma([50, 60, 70]) as f32;
            assert_eq!((s.mean_luma, s.luma_p99, s.dark_fraction, s.bright_fraction), (y, y, 0.0, 0.0), "{w}x{h}");
            assert!(s.colour_cast.is_finite());
        }
    }

    #[test]
    fn summary_difference_of_repeated_and_shifted_frames() {
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(3);
        let img = from_fn(640, 480, |_, _| {
            let v = rng.random_range(20..200u8);
            [v, v, v]
        });
        let a = LumaSummary::of(&img);
        assert_eq!(a.difference(&LumaSummary::of(&img)), 0.0);
        // +10 levels everywhere moves every block mean by 10 (gray, so luma = level).
        let brighter = from_fn(640, 480, |x, y| {
            let v = img.get_pixel(x, y)[0] + 10;
            [v, v, v]
        });
        let d = a.difference(&LumaSummary::of(&brighter));
        assert!((d - 10.0).abs() < 1e-3, "{d}");
    }

    #[test]
    fn summary_blocks_cover_the_frame() {
        // Every block of a 35 x 17 frame gets columns.
        for (w, h) in [(35usize, 17usize), (640, 480), (16, 16)] {
            let mut seen = [false; SUMMARY_SIDE];
            for i in 0..w {
                seen[block_of(i, w, SUMMARY_SIDE)] = true;
            }
            assert!(seen.iter().all(|&s| s), "{w}x{h}");
        }
        // Every other pixel of every other row: a 32 x 32 frame still fills all 256 blocks, a
        // 4 x 4 frame 4 of them (its 2 x 2 sampled pixels).
        let full = LumaSummary::of(&RgbImage::from_pixel(32, 32, Rgb([100; 3])));
        assert!(full.blocks.iter().all(|&b| b == 100.0));
        let s = LumaSummary::of(&RgbImage::from_pixel(4, 4, Rgb([100; 3])));
        assert_eq!(s.blocks.iter().filter(|&&b| b > 0.0).count(), 4);
    }
}
