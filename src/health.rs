//! Frame-health scores on the full decoded frame, before the model's resize: what a camera gets
//! wrong that a 32x32 model cannot see (sensor noise and blur average away in the downscale).
//!
//! Every score is computed on the frame's luma `Y = 0.299 R + 0.587 G + 0.114 B` (ITU-R BT.601,
//! 8-bit levels 0..255), except the colour cast, on the channel means. One pass over the
//! interior pixels' 3x3 neighbourhoods gives both operators below; the cost is O(pixels).
//!
//! | score | formula | unit | a fault moves it |
//! |---|---|---|---|
//! | `sharpness` | variance of the 3x3 Laplacian `[0 1 0; 1 -4 1; 0 1 0]` over interior pixels (Pech-Pacheco et al. 2000, "Diatom autofocusing in brightfield microscopy", ICPR) | levels² | blur: down |
//! | `noise_sigma` | `sqrt(pi/2) / (6 (W-2)(H-2)) * sum |Y * M|`, `M = [1 -2 1; -2 4 -2; 1 -2 1]` (Immerkaer 1996, "Fast noise variance estimation", CVIU 64(2)) | levels (a standard deviation) | noise: up |
//! | `dark_fraction` | fraction of pixels with `Y <= DARK_LEVEL` (10) | 0..1 | under-exposure, covered lens: up |
//! | `bright_fraction` | fraction of pixels with `Y >= BRIGHT_LEVEL` (245) | 0..1 | over-exposure: up |
//! | `mean_luma` | mean of `Y` | levels | exposure: either way |
//! | `colour_cast` | distance of the mean colour's chromaticity `(R̄, Ḡ, B̄) / (R̄ + Ḡ + B̄)` from the neutral `(1/3, 1/3, 1/3)` (the gray-world assumption, Buchsbaum 1980) | 0 (neutral) .. `sqrt(6)/3` (one pure primary) | colour cast: up |
//!
//! `M` is the difference of two discrete Laplacians (Immerkaer): zero on any plane
//! `a x + b y + c` and small on smooth image structure, so `noise_sigma` responds to
//! pixel-to-pixel noise far more than to content (edges and texture still add to it). On i.i.d.
//! Gaussian noise of standard deviation `s`, `Y * M` is normal with variance `36 s²` and
//! `E|Y * M| = 6 s sqrt(2 / pi)`, so the estimate is `s` (Immerkaer's derivation; tested).
//!
//! [`LumaSummary`] is the temporal part: a 16x16 grid of block-mean luma, small enough to keep
//! from frame to frame; [`LumaSummary::difference`] (mean absolute difference, levels) near 0
//! means a frozen camera.
//!
//! ```
//! use ebm_gate::health::{health_scores, HealthScores};
//! let img = image::RgbImage::from_pixel(64, 48, image::Rgb([128, 128, 128]));
//! let h: HealthScores = health_scores(&img);
//! assert_eq!((h.sharpness, h.noise_sigma, h.colour_cast), (0.0, 0.0, 0.0));
//! assert_eq!((h.dark_fraction, h.bright_fraction, h.mean_luma), (0.0, 0.0, 128.0));
//! ```

use image::RgbImage;
use serde::{Deserialize, Serialize};

/// Luma at or below which a pixel counts as clipped dark, 8-bit levels.
pub const DARK_LEVEL: f32 = 10.0;
/// Luma at or above which a pixel counts as clipped bright, 8-bit levels.
pub const BRIGHT_LEVEL: f32 = 245.0;
/// Side of [`LumaSummary`]'s grid of block means.
pub const SUMMARY_SIDE: usize = 16;

/// The health scores of one frame (see the module's table for formulas, units and sources).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HealthScores {
    /// Variance of the Laplacian of luma over interior pixels, levels² (0 for frames under 3x3).
    pub sharpness: f32,
    /// Immerkaer's noise standard deviation of luma, levels (0 for frames under 3x3).
    pub noise_sigma: f32,
    /// Fraction of pixels with luma `<=` [`DARK_LEVEL`].
    pub dark_fraction: f32,
    /// Fraction of pixels with luma `>=` [`BRIGHT_LEVEL`].
    pub bright_fraction: f32,
    /// Mean luma, levels.
    pub mean_luma: f32,
    /// Distance of the mean chromaticity from neutral gray, 0 ..= `sqrt(6)/3` (0 for a black frame).
    pub colour_cast: f32,
}

/// BT.601 luma of an 8-bit RGB pixel, levels.
#[inline]
pub fn luma(p: [u8; 3]) -> f32 {
    0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32
}

/// Fixed-point BT.601 weights (`2^14` scale; they sum to `2^14`): one pass in integers.
const LUMA_FIXED: [i32; 3] = [4899, 9617, 1868];
const LUMA_SCALE: f64 = 16384.0;

/// The health scores of `img` at its own resolution (module docs for the formulas).
///
/// One pass in integer arithmetic: luma in fixed point (`2^14` scale, within 2e-5 of
/// [`luma`]), three rows of it at a time, both 3x3 operators exact in `i64`.
pub fn health_scores(img: &RgbImage) -> HealthScores {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let n = (w * h).max(1) as f64;
    let raw = img.as_raw();
    let (dark_at, bright_at) = ((DARK_LEVEL as f64 * LUMA_SCALE) as i32, (BRIGHT_LEVEL as f64 * LUMA_SCALE) as i32);
    let (mut sum_y, mut dark, mut bright) = (0i64, 0u64, 0u64);
    let mut sum_c = [0u64; 3];
    // Luma of row y into `out`, counting exposure and colour as it goes (each row read once).
    let mut read_row = |y: usize, out: &mut Vec<i32>| {
        out.clear();
        let (mut sy, mut sd, mut sb, mut sc) = (0i64, 0u64, 0u64, [0u64; 3]);
        for p in raw[y * w * 3..(y + 1) * w * 3].chunks_exact(3) {
            let (r, g, b) = (p[0] as i32, p[1] as i32, p[2] as i32);
            let v = LUMA_FIXED[0] * r + LUMA_FIXED[1] * g + LUMA_FIXED[2] * b;
            out.push(v);
            sy += v as i64;
            sd += (v <= dark_at) as u64;
            sb += (v >= bright_at) as u64;
            sc[0] += r as u64;
            sc[1] += g as u64;
            sc[2] += b as u64;
        }
        sum_y += sy;
        dark += sd;
        bright += sb;
        for c in 0..3 {
            sum_c[c] += sc[c];
        }
    };
    let (mut sum_l, mut sum_l2, mut sum_m) = (0i64, 0i128, 0i64);
    let (mut a, mut b, mut c) = (Vec::with_capacity(w), Vec::with_capacity(w), Vec::with_capacity(w));
    if w >= 3 && h >= 3 {
        read_row(0, &mut a);
        read_row(1, &mut b);
        for y in 1..h - 1 {
            read_row(y + 1, &mut c);
            // |lap| <= 8 * 255 * 2^14 < 2^25, so lap^2 < 2^50: a u64 holds 4096 of them.
            for xs in (1..w - 1).step_by(4096) {
                let (mut rl, mut rl2, mut rm) = (0i64, 0u64, 0i64);
                for x in xs..(xs + 4096).min(w - 1) {
                    let edges = a[x] + c[x] + b[x - 1] + b[x + 1];
                    let ctr = b[x];
                    let corners = a[x - 1] + a[x + 1] + c[x - 1] + c[x + 1];
                    let lap = (edges - 4 * ctr) as i64;
                    rl += lap;
                    rl2 += (lap * lap) as u64;
                    rm += (corners as i64 - 2 * edges as i64 + 4 * ctr as i64).abs();
                }
                sum_l += rl;
                sum_l2 += rl2 as i128;
                sum_m += rm;
            }
            std::mem::swap(&mut a, &mut b);
            std::mem::swap(&mut b, &mut c);
        }
    } else {
        for y in 0..h {
            read_row(y, &mut a);
        }
    }
    let interior = (w.saturating_sub(2) * h.saturating_sub(2)) as f64;
    let (sharpness, noise_sigma) = if interior > 0.0 {
        let mean = sum_l as f64 / interior / LUMA_SCALE;
        let mean_sq = sum_l2 as f64 / interior / (LUMA_SCALE * LUMA_SCALE);
        let var = (mean_sq - mean * mean).max(0.0);
        (var, (std::f64::consts::PI / 2.0).sqrt() * sum_m as f64 / LUMA_SCALE / (6.0 * interior))
    } else {
        (0.0, 0.0)
    };
    let total: u64 = sum_c.iter().sum();
    let colour_cast = if total > 0 {
        sum_c.iter().map(|&s| (s as f64 / total as f64 - 1.0 / 3.0).powi(2)).sum::<f64>().sqrt()
    } else {
        0.0
    };
    HealthScores {
        sharpness: sharpness as f32,
        noise_sigma: noise_sigma as f32,
        dark_fraction: (dark as f64 / n) as f32,
        bright_fraction: (bright as f64 / n) as f32,
        mean_luma: (sum_y as f64 / LUMA_SCALE / n) as f32,
        colour_cast: colour_cast as f32,
    }
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
    /// The summary of `img`.
    pub fn of(img: &RgbImage) -> LumaSummary {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let k = SUMMARY_SIDE;
        let mut sums = [0.0f64; SUMMARY_SIDE * SUMMARY_SIDE];
        let mut counts = [0u32; SUMMARY_SIDE * SUMMARY_SIDE];
        let col_block: Vec<usize> = (0..w).map(|x| block_of(x, w, k)).collect();
        for (y, row) in img.as_raw().chunks_exact(w * 3).enumerate() {
            let bi = block_of(y, h, k) * k;
            for (x, p) in row.chunks_exact(3).enumerate() {
                let b = bi + col_block[x];
                sums[b] += luma([p[0], p[1], p[2]]) as f64;
                counts[b] += 1;
            }
        }
        let mut blocks = [0.0f32; SUMMARY_SIDE * SUMMARY_SIDE];
        for (o, (s, c)) in blocks.iter_mut().zip(sums.iter().zip(counts)) {
            *o = if c > 0 { (*s / c as f64) as f32 } else { 0.0 };
        }
        LumaSummary { blocks }
    }

    /// Mean absolute difference of the block means, levels: 0 for a repeated frame.
    pub fn difference(&self, other: &LumaSummary) -> f32 {
        let s: f32 = self.blocks.iter().zip(&other.blocks).map(|(a, b)| (a - b).abs()).sum();
        s / self.blocks.len() as f32
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
    fn luma_is_bt601() {
        assert!((luma([255, 0, 0]) - 76.245).abs() < 1e-4);
        assert!((luma([0, 255, 0]) - 149.685).abs() < 1e-4);
        assert!((luma([0, 0, 255]) - 29.07).abs() < 1e-4);
        assert!((luma([255, 255, 255]) - 255.0).abs() < 1e-3);
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
        assert!((h.mean_luma - (31.5 + 2.0 * 29.5)).abs() < 1e-3, "{h:?}");
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

    #[test]
    fn immerkaer_recovers_gaussian_noise_sigma() {
        // Flat 128 plus seeded N(0, s^2), rounded to levels: the estimate is s (the rounding adds
        // variance 1/12, i.e. +0.04% at s = 10), within the sampling error of 300k pixels.
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(7);
        for s in [5.0f32, 10.0, 20.0] {
            let noise = Normal::new(0.0f32, s).unwrap();
            let img = from_fn(640, 480, |_, _| {
                let v = (128.0 + noise.sample(&mut rng)).round().clamp(0.0, 255.0) as u8;
                [v, v, v]
            });
            let h = health_scores(&img);
            let want = (s * s + 1.0 / 12.0).sqrt();
            assert!((h.noise_sigma - want).abs() / want < 0.01, "s {s}: {}", h.noise_sigma);
        }
    }

    #[test]
    fn exposure_fractions_count_pixels() {
        // 100 x 10: columns 0..20 black (Y = 0), 20..30 at Y = 10 (dark, inclusive), 30..95 mid
        // gray, 95..100 white.
        let img = from_fn(100, 10, |x, _| match x {
            0..20 => [0; 3],
            20..30 => [10; 3],
            30..95 => [128; 3],
            _ => [255; 3],
        });
        let h = health_scores(&img);
        assert!((h.dark_fraction - 0.30).abs() < 1e-6, "{h:?}");
        assert!((h.bright_fraction - 0.05).abs() < 1e-6, "{h:?}");
        let want_mean = (20.0 * 0.0 + 10.0 * 10.0 + 65.0 * 128.0 + 5.0 * 255.0) / 100.0;
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
        for (w, h) in [(1, 1), (2, 5), (5, 2)] {
            let s = health_scores(&RgbImage::from_pixel(w, h, Rgb([50, 60, 70])));
            assert_eq!((s.sharpness, s.noise_sigma), (0.0, 0.0));
            assert!(s.mean_luma.is_finite() && s.colour_cast.is_finite());
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
        // Every block of a 35 x 17 frame gets pixels; a 4 x 4 frame fills 16 of 256 blocks.
        for (w, h) in [(35usize, 17usize), (640, 480), (16, 16)] {
            let mut seen = [false; SUMMARY_SIDE];
            for i in 0..w {
                seen[block_of(i, w, SUMMARY_SIDE)] = true;
            }
            assert!(seen.iter().all(|&s| s), "{w}x{h}");
        }
        let s = LumaSummary::of(&RgbImage::from_pixel(4, 4, Rgb([100; 3])));
        assert_eq!(s.blocks.iter().filter(|&&b| b > 0.0).count(), 16);
    }
}
