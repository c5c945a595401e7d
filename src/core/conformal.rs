//! Split-conformal p-values of an energy against sorted calibration energies, and of several
//! scores combined.
//!
//! With `n` calibration energies `s_1..s_n` of in-distribution frames (exchangeable with the
//! frame being scored), `p(x) = (1 + #{i : s_i >= s(x)}) / (n + 1)` is a valid conformal
//! p-value: rejecting when `p(x) <= alpha` rejects an in-distribution frame with probability at
//! most `alpha` (Vovk et al. 2005; Angelopoulos & Bates 2021, "A Gentle Introduction to
//! Conformal Prediction", section 1). Energies are nonconformity scores: higher = stranger.
//!
//! Several scores, one guarantee. A frame has scores `s_1..s_K` (the energy and health scores,
//! [`super::health::ScoreKind`]), each with a tail. Calibration frames are split in two.
//! Split A turns each score into a strangeness `c_k = -ln u_k(s_k)` ([`strangeness`]): `u_k`
//! is A's tail frequency, made continuous by linear interpolation between A's sorted values and
//! an exponential tail past its extreme (so a frame far beyond every calibration frame is
//! stranger than one just beyond it). The frame's combined score is `C = max_k c_k` (the
//! smallest tail frequency, Tippett's statistic, [`combined_score`]). Split B's frames give
//! sorted `C_j`, and the frame's p-value is the plain conformal one,
//! `P = (1 + #{j : C_j >= C}) / (n_B + 1)` ([`p_value`]). `C` is a fixed function of a frame
//! once A is fixed, and B's frames are exchangeable with the new one, so rejecting when
//! `P <= alpha` rejects an in-distribution frame with probability at most `alpha`, and at least
//! `alpha - 1 / (n_B + 1)` when the `C_j` have no ties (split conformal, Vovk et al. 2005;
//! Angelopoulos & Bates 2021). The rule is `C > q` with `q` the [`conformal_quantile`] of B's
//! `C_j`, and every score with `c_k > q` is a reason for the rejection. Nothing in A's
//! transform has to be right for the guarantee: it decides how the false rejections are shared
//! between the scores, and how much power the gate has.
//!
//! The tails past A's extremes. Applying one increasing map to every score's strangeness leaves
//! every decision unchanged (the maximum and B's ranks commute with it), so the shape chosen
//! for the tail (exponential, or a Pareto tail growing like a log) does not matter; what
//! matters is each score's scale: how fast its strangeness grows past its extreme compared with
//! the other scores'. The scale is the mean excess of A's most extreme tenth
//! ([`exponential_tail_scale`]), measured in the score's
//! [`super::health::ScoreKind::tail_domain`] (`ln(1 + x)` for sharpness, which blur shrinks by
//! factors toward its bound 0) and at least its
//! [`super::health::ScoreKind::tail_scale_floor`] (about its resolution).
//!
//! Why not Bonferroni (`K * min_k p_k <= alpha`, [`bonferroni`])? It needs no split, but its
//! false rejection is `alpha` only when the scores never fail together: correlated scores make
//! it conservative, and a gate that promises 5% and rejects 3% is not what a user calibrated
//! for. Why not the smallest rank p-value in place of `C`? Rank p-values stop at `1 / (n + 1)`:
//! past A's extreme every frame ties, a frame just beyond the calibration range and one far
//! beyond it look alike, and ties make the split rule conservative too. A seeded simulation in
//! this module's tests (4 correlated scores, `n_A = n_B = 200`, 30,000 in-distribution frames,
//! `alpha = 0.05`) measures the three: this rule rejects 5.29% (closed form 4.98%), Bonferroni
//! 4.41%, the smallest rank p-value 4.22%.

use super::health::Tail;

/// The conformal p-value of `energy` over `sorted` (ascending, finite) calibration energies.
///
/// `p = (1 + #{i : sorted[i] >= energy}) / (n + 1)`, in `(0, 1]`; ties count as `>=`.
/// A NaN energy gets the smallest p-value, `1 / (n + 1)` (the gate fails closed). Runs in
/// `O(log n)` by binary search; `sorted` must be ascending (not checked).
///
/// ```
/// use ebm_gate::core::conformal::p_value;
/// let cal = [1.0, 2.0, 3.0, 4.0];
/// assert_eq!(p_value(&cal, 2.5), 3.0 / 5.0); // 3 and 4 are >= 2.5
/// assert_eq!(p_value(&cal, 2.0), 4.0 / 5.0); // ties count
/// assert_eq!(p_value(&cal, 9.0), 1.0 / 5.0);
/// assert_eq!(p_value(&[], 0.0), 1.0);
/// ```
pub fn p_value(sorted: &[f32], energy: f32) -> f32 {
    let n = sorted.len();
    let at_least = if energy.is_nan() { 0 } else { n - sorted.partition_point(|&s| s < energy) };
    p_of_count(at_least, n)
}

/// The lower-tail conformal p-value of `score` over `sorted` (ascending) calibration scores,
/// for a score whose low values are strange: `p = (1 + #{i : sorted[i] <= score}) / (n + 1)`;
/// ties count. A NaN score gets the smallest p-value `1 / (n + 1)`.
///
/// ```
/// use ebm_gate::core::conformal::p_value_lower;
/// let cal = [1.0, 2.0, 3.0, 4.0];
/// assert_eq!(p_value_lower(&cal, 2.0), 3.0 / 5.0); // 1 and 2 are <= 2
/// assert_eq!(p_value_lower(&cal, 0.5), 1.0 / 5.0);
/// ```
pub fn p_value_lower(sorted: &[f32], score: f32) -> f32 {
    let n = sorted.len();
    let at_most = if score.is_nan() { 0 } else { sorted.partition_point(|&s| s <= score) };
    p_of_count(at_most, n)
}

/// The conformal p-value of `score` over `sorted` (ascending, finite) calibration scores in
/// the given tail: [`p_value`] for [`Tail::Upper`], [`p_value_lower`] for [`Tail::Lower`], and
/// `min(1, 2 min(p_upper, p_lower))` for [`Tail::Both`] (valid: each one-sided p-value is
/// below `t/2` with probability at most `t/2`). NaN gets the smallest p-value.
///
/// ```
/// use ebm_gate::core::conformal::tail_p_value;
/// use ebm_gate::core::health::Tail;
/// let cal = [1.0, 2.0, 3.0, 4.0];
/// assert_eq!(tail_p_value(&cal, 3.5, Tail::Upper), 2.0 / 5.0);
/// assert_eq!(tail_p_value(&cal, 3.5, Tail::Lower), 4.0 / 5.0);
/// assert_eq!(tail_p_value(&cal, 3.5, Tail::Both), 4.0 / 5.0);
/// assert_eq!(tail_p_value(&cal, 9.0, Tail::Both), 2.0 / 5.0);
/// ```
pub fn tail_p_value(sorted: &[f32], score: f32, tail: Tail) -> f32 {
    match tail {
        Tail::Upper => p_value(sorted, score),
        Tail::Lower => p_value_lower(sorted, score),
        Tail::Both => (2.0 * p_value(sorted, score).min(p_value_lower(sorted, score))).min(1.0),
    }
}

/// A score's strangeness over split A: `c = -ln u`, `u` the tail frequency of `score` among
/// the `n` ascending, finite `sorted` values, continuous in `score` (see the module docs):
///
/// - upper tail: `u(sorted[i]) = (n - i) / (n + 1)` for the first `i` holding that value,
///   linear between consecutive values, `u = exp(-(score - max) / upper_scale) / (n + 1)`
///   past the largest value, and `n / (n + 1)` below the smallest;
/// - lower tail: the same on the mirrored values (`-score`, `lower_scale`);
/// - both tails: `min(1, 2 min(u_upper, u_lower))`.
///
/// NaN scores are infinitely strange; an empty `sorted` gives 0 (nothing to compare with).
/// Scales must be positive ([`exponential_tail_scale`] fits them).
///
/// ```
/// use ebm_gate::core::conformal::strangeness;
/// use ebm_gate::core::health::Tail;
/// let a = [1.0, 2.0, 3.0, 4.0]; // n = 4
/// let c = |s| strangeness(&a, 1.0, 1.0, s, Tail::Upper);
/// assert!((c(3.0) - (5.0f32 / 2.0).ln()).abs() < 1e-6); // u = 2/5
/// assert!((c(3.5) - (5.0f32 / 1.5).ln()).abs() < 1e-6); // halfway to u = 1/5
/// assert!((c(6.0) - (5.0f32.ln() + 2.0)).abs() < 1e-5); // exponential tail, 2 scales out
/// assert!((strangeness(&a, 1.0, 1.0, 0.0, Tail::Lower) - (5.0f32.ln() + 1.0)).abs() < 1e-5);
/// ```
pub fn strangeness(sorted: &[f32], upper_scale: f32, lower_scale: f32, score: f32, tail: Tail) -> f32 {
    if score.is_nan() {
        return f32::INFINITY;
    }
    if sorted.is_empty() {
        return 0.0;
    }
    let ln_u = match tail {
        Tail::Upper => ln_upper_frequency(sorted, upper_scale, score),
        Tail::Lower => ln_lower_frequency(sorted, lower_scale, score),
        Tail::Both => {
            let m = ln_upper_frequency(sorted, upper_scale, score).min(ln_lower_frequency(sorted, lower_scale, score));
            (m + core::f32::consts::LN_2).min(0.0)
        }
    };
    -ln_u
}

/// `ln u` of the upper tail (see [`strangeness`]), `sorted` non-empty.
fn ln_upper_frequency(sorted: &[f32], scale: f32, score: f32) -> f32 {
    let n = sorted.len();
    let n1 = (n + 1) as f32;
    let max = sorted[n - 1];
    if score > max {
        return -libm::logf(n1) - (score - max) / scale;
    }
    // u at the first index holding a value: (n - i) / (n + 1).
    let u_at = |i: usize| (n - i) as f32 / n1;
    let i = sorted.partition_point(|&v| v < score); // first index with sorted[i] >= score
    let u = if i == 0 || sorted[i] == score {
        u_at(i)
    } else {
        // sorted[i - 1] < score < sorted[i]: between the first index of sorted[i - 1] and i.
        let lo = sorted[i - 1];
        let first = sorted.partition_point(|&v| v < lo);
        let t = (score - lo) / (sorted[i] - lo);
        u_at(first) + t * (u_at(i) - u_at(first))
    };
    libm::logf(u)
}

/// `ln u` of the lower tail: the upper tail of the mirrored values `-sorted[n - 1 - i]`.
fn ln_lower_frequency(sorted: &[f32], scale: f32, score: f32) -> f32 {
    let n = sorted.len();
    let n1 = (n + 1) as f32;
    let min = sorted[0];
    if score < min {
        return -libm::logf(n1) - (min - score) / scale;
    }
    // Mirrored, the value at index j (ascending) sits at index n - 1 - j, and the first mirrored
    // index of a value is its last index here: u = (j_last + 1) / (n + 1).
    let u_last = |j_last: usize| (j_last + 1) as f32 / n1;
    let after = sorted.partition_point(|&v| v <= score); // values <= score
    let u = if after == n || sorted[after - 1] == score {
        u_last(after - 1)
    } else {
        // sorted[after - 1] < score < sorted[after]: between after - 1 and the last index of
        // sorted[after].
        let hi = sorted[after];
        let last = sorted.partition_point(|&v| v <= hi) - 1;
        let t = (hi - score) / (hi - sorted[after - 1]);
        u_last(last) + t * (u_last(after - 1) - u_last(last))
    };
    libm::logf(u)
}

/// The scale of an exponential tail past the extreme of `sorted` (ascending, finite): the mean
/// excess of the values above the one at rank `ceil(0.9 n)` over it, in the upper tail; the
/// mean shortfall of the values below the one at rank `floor(0.1 n) + 1` in the lower tail
/// (peaks over a threshold with the generalised Pareto shape fixed at 0, the exponential;
/// Pickands 1975). Floored at `1e-6 * max(1, |extreme|)`, so a score that is constant over the
/// calibration frames still has a scale. An empty slice gives 1.
///
/// ```
/// use ebm_gate::core::conformal::exponential_tail_scale;
/// let a: Vec<f32> = (0..20).map(|i| i as f32).collect(); // ranks 18 and 3: values 17 and 2
/// assert_eq!(exponential_tail_scale(&a, true), 1.5); // 18, 19 over 17
/// assert_eq!(exponential_tail_scale(&a, false), 1.5); // 0, 1 under 2
/// assert_eq!(exponential_tail_scale(&[0.0; 10], true), 1e-6);
/// ```
pub fn exponential_tail_scale(sorted: &[f32], upper: bool) -> f32 {
    let n = sorted.len();
    if n == 0 {
        return 1.0;
    }
    let (excess_sum, count, extreme) = if upper {
        let t = sorted[(n * 9).div_ceil(10).clamp(1, n) - 1];
        let above = &sorted[sorted.partition_point(|&v| v <= t)..];
        (above.iter().map(|&v| (v - t) as f64).sum::<f64>(), above.len(), sorted[n - 1])
    } else {
        let t = sorted[(n / 10).min(n - 1)];
        let below = &sorted[..sorted.partition_point(|&v| v < t)];
        (below.iter().map(|&v| (t - v) as f64).sum::<f64>(), below.len(), sorted[0])
    };
    let mean = if count > 0 { (excess_sum / count as f64) as f32 } else { 0.0 };
    let floor = 1e-6 * libm::fabsf(extreme).max(1.0);
    if mean.is_finite() {
        mean.max(floor)
    } else {
        floor
    }
}

/// The combined score of a frame: the largest of its scores' [`strangeness`] values (NaN counts
/// as infinitely strange; no scores give 0).
///
/// ```
/// use ebm_gate::core::conformal::combined_score;
/// assert_eq!(combined_score(&[0.5, 3.0, 1.0]), 3.0);
/// assert_eq!(combined_score(&[0.5, f32::NAN]), f32::INFINITY);
/// ```
pub fn combined_score(strangeness: &[f32]) -> f32 {
    strangeness.iter().fold(0.0f32, |m, &c| if c.is_nan() { f32::INFINITY } else { m.max(c) })
}

/// Bonferroni's combination of `K` p-values: `min(1, K * min_k p_k)`; rejecting when it is
/// `<= alpha` keeps the false rejection at most `alpha` for any dependence between the scores,
/// and below `alpha` when they are correlated (module docs). For comparison; the gate uses
/// [`combined_score`] and a split. NaN p-values count as 0.
///
/// ```
/// use ebm_gate::core::conformal::bonferroni;
/// assert_eq!(bonferroni(&[0.2, 0.01, 0.5]), 0.03);
/// assert_eq!(bonferroni(&[0.5, 0.9]), 1.0);
/// ```
pub fn bonferroni(p_values: &[f32]) -> f32 {
    let m = p_values.iter().fold(1.0f32, |m, &p| if p.is_nan() { 0.0 } else { m.min(p) });
    (p_values.len() as f32 * m).min(1.0)
}

/// `(1 + count) / (n + 1)` as [`p_value`] rounds it.
fn p_of_count(count: usize, n: usize) -> f32 {
    ((1 + count) as f64 / (n + 1) as f64) as f32
}

/// The rank `k` (1-based, ascending) of the conformal quantile among `n` calibration scores at
/// level `alpha`: `k = ceil((n + 1) * (1 - alpha))`, computed so that a score above the `k`-th
/// smallest is exactly a score with `p_value <= alpha` (same float rounding, so no edge case
/// at integer `alpha * (n + 1)` can disagree). `None` when no p-value can reach `alpha`
/// (`1 / (n + 1) > alpha`, too few scores) or `alpha` is not in `(0, 1)`.
///
/// ```
/// use ebm_gate::core::conformal::conformal_rank;
/// assert_eq!(conformal_rank(9, 0.2), Some(8)); // ceil(10 * 0.8)
/// assert_eq!(conformal_rank(99, 0.01), Some(99)); // 1/100 <= 0.01: just enough
/// assert_eq!(conformal_rank(98, 0.01), None);
/// ```
pub fn conformal_rank(n: usize, alpha: f32) -> Option<usize> {
    // Reject iff fewer than m scores are >= e, iff e is above the (n - m + 1)-th smallest.
    rejecting_counts(n, alpha).map(|m| n + 1 - m)
}

/// `m = #{c in 0..=n : (1 + c) / (n + 1) <= alpha}` (as [`p_of_count`] rounds), the counts
/// that reject; `None` when `m = 0` or `alpha` is not in `(0, 1)`.
fn rejecting_counts(n: usize, alpha: f32) -> Option<usize> {
    super::check::alpha(alpha).ok()?;
    // p(c) grows with c, so binary search.
    let (mut lo, mut hi) = (0usize, n + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if p_of_count(mid, n) <= alpha {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    (lo >= 1).then_some(lo)
}

/// The split-conformal quantile of `sorted` (ascending) nonconformity scores at level `alpha`:
/// the `k`-th smallest score with `k = ceil((n + 1) * (1 - alpha))`.
///
/// Rejecting a new score `s > q` rejects exactly the frames with `p_value(sorted, s) <= alpha`
/// (see [`conformal_rank`]), so `q` is the energy threshold of the
/// conformal gate, and for the LAC prediction set `{y : 1 - p(y|x) <= q}` it gives coverage
/// at least `1 - alpha` (Angelopoulos & Bates 2021, section 1; Sadinle et al. 2019).
///
/// Returns `None` when `k > n` (that is `n + 1 < 1 / alpha`: too few scores for this `alpha`,
/// every frame would be accepted) or when `alpha` is not in `(0, 1)`.
///
/// ```
/// use ebm_gate::core::conformal::{conformal_quantile, p_value};
/// let cal = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0];
/// // n = 9, alpha = 0.2: k = ceil(10 * 0.8) = 8.
/// assert_eq!(conformal_quantile(&cal, 0.2), Some(8.0));
/// assert!(p_value(&cal, 8.5) <= 0.2 && p_value(&cal, 8.0) > 0.2);
/// // n + 1 = 10 < 1 / 0.05: no finite quantile.
/// assert_eq!(conformal_quantile(&cal, 0.05), None);
/// ```
pub fn conformal_quantile(sorted: &[f32], alpha: f32) -> Option<f32> {
    conformal_rank(sorted.len(), alpha).map(|k| sorted[k - 1])
}

/// Whether class `y`, with temperature-scaled probability `probability = p(y|x)`, belongs to the
/// LAC conformal prediction set `{y : 1 - p(y|x) <= q}` (Sadinle, Lei & Wasserman 2019), where
/// `q` is [`conformal_quantile`] of the sorted calibration scores `1 - p(y_i|x_i)`. `q = None`
/// (too few calibration scores for the level) puts every class in the set.
///
/// ```
/// use ebm_gate::core::conformal::in_prediction_set;
/// assert!(in_prediction_set(0.7, Some(0.4)));
/// assert!(!in_prediction_set(0.5, Some(0.4)));
/// assert!(in_prediction_set(0.0, None));
/// ```
pub fn in_prediction_set(probability: f32, q: Option<f32>) -> bool {
    match q {
        Some(q) => 1.0 - probability <= q,
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_linear_count_with_ties() {
        let cal = [-3.0f32, -2.0, -2.0, -2.0, 0.5, 1.0];
        for e in [-4.0f32, -3.0, -2.5, -2.0, -1.0, 0.5, 0.7, 1.0, 2.0, f32::INFINITY] {
            let count = cal.iter().filter(|&&s| s >= e).count();
            assert_eq!(p_value(&cal, e), (1 + count) as f32 / 7.0, "energy {e}");
        }
        assert_eq!(p_value(&cal, f32::NAN), 1.0 / 7.0);
        assert_eq!(p_value(&cal, f32::NEG_INFINITY), 1.0);
    }

    #[test]
    fn quantile_threshold_agrees_with_the_p_value_rule() {
        // Closed form: reject iff p <= alpha iff s > q, checked on a grid with ties.
        let cal: [f32; 19] = [
            -9.0, -8.0, -8.0, -7.5, -7.0, -6.0, -6.0, -6.0, -5.0, -4.0, -3.5, -3.0, -2.0, -2.0, -1.0, 0.0, 1.0, 2.0,
            3.0,
        ];
        // q = the k-th smallest value, k = ceil(20 (1 - alpha)), by hand: 19, 19, 18, 17, 16, 16,
        // 10, 2.
        let want = [3.0f32, 3.0, 2.0, 1.0, 0.0, 0.0, -4.0, -8.0];
        for (alpha, want) in [0.05f32, 0.06, 0.1, 0.15, 0.2, 0.23, 0.5, 0.9].into_iter().zip(want) {
            let q = conformal_quantile(&cal, alpha).unwrap();
            assert_eq!(q, want, "alpha {alpha}");
            let mut e = -10.0f32;
            while e < 4.0 {
                assert_eq!(p_value(&cal, e) <= alpha, e > q, "alpha {alpha} energy {e} q {q}");
                e += 0.25;
            }
        }
        assert_eq!(conformal_quantile(&cal, 0.04), None); // 20 * 0.96 = 19.2 -> k = 20 > n
        assert_eq!(conformal_quantile(&cal, 0.05), Some(3.0)); // k = ceil(19.0) = 19
        assert_eq!(conformal_quantile(&cal, 0.0), None);
        assert_eq!(conformal_quantile(&cal, f32::NAN), None);
    }

    #[test]
    fn lower_and_two_sided_p_values_match_linear_counts() {
        let cal = [-3.0f32, -2.0, -2.0, -2.0, 0.5, 1.0];
        for e in [-4.0f32, -3.0, -2.5, -2.0, -1.0, 0.5, 0.7, 1.0, 2.0] {
            let le = cal.iter().filter(|&&s| s <= e).count();
            let ge = cal.iter().filter(|&&s| s >= e).count();
            let (lo, up) = ((1 + le) as f32 / 7.0, (1 + ge) as f32 / 7.0);
            assert_eq!(tail_p_value(&cal, e, Tail::Lower), lo, "score {e}");
            assert_eq!(tail_p_value(&cal, e, Tail::Upper), up, "score {e}");
            assert_eq!(tail_p_value(&cal, e, Tail::Both), (2.0 * lo.min(up)).min(1.0), "score {e}");
        }
        assert_eq!(tail_p_value(&cal, f32::NAN, Tail::Lower), 1.0 / 7.0);
    }

    #[test]
    fn strangeness_is_continuous_monotone_and_mirrors() {
        // On a grid through ties and past both ends: upper strangeness never falls as the score
        // grows, lower never rises, no jumps larger than the grid allows, and the lower tail of
        // the values equals the upper tail of the mirrored values.
        let cal = [-3.0f32, -2.0, -2.0, -2.0, 0.5, 1.0, 1.0, 4.0];
        let mirrored: Vec<f32> = cal.iter().rev().map(|v| -v).collect();
        let (mut prev_up, mut prev_lo) = (f32::NEG_INFINITY, f32::INFINITY);
        let mut s = -6.0f32;
        while s < 7.0 {
            let up = strangeness(&cal, 0.7, 1.3, s, Tail::Upper);
            let lo = strangeness(&cal, 0.7, 1.3, s, Tail::Lower);
            assert!(up >= prev_up - 1e-6 && lo <= prev_lo + 1e-6, "score {s}");
            if prev_up.is_finite() {
                // Steepest piece: u falls by 1/9 over 0.5 near u = 1/9 (ln 2), or by 1/0.7 per
                // unit in the tail: 0.01 of score moves c by under 0.03.
                assert!((up - prev_up).abs() < 0.03 && (lo - prev_lo).abs() < 0.03, "jump at {s}");
            }
            let mirror = strangeness(&mirrored, 1.3, 0.7, -s, Tail::Upper);
            assert!((lo - mirror).abs() < 1e-5, "score {s}: {lo} vs {mirror}");
            let both = strangeness(&cal, 0.7, 1.3, s, Tail::Both);
            assert!((both - (up.max(lo) - core::f32::consts::LN_2).max(0.0)).abs() < 1e-5, "score {s}");
            (prev_up, prev_lo) = (up, lo);
            s += 0.01;
        }
        assert_eq!(strangeness(&cal, 1.0, 1.0, f32::NAN, Tail::Both), f32::INFINITY);
        assert_eq!(strangeness(&[], 1.0, 1.0, 3.0, Tail::Upper), 0.0);
    }

    /// `K` correlated scores of in-distribution frames: a shared standard normal factor with
    /// weight `rho` plus independent noise; score 1 is gated in its lower tail, score 2 in
    /// both, the others in the upper.
    fn draw(rng: &mut impl rand_core::RngCore, k: usize, rho: f32) -> ([f32; 4], [Tail; 4]) {
        use rand_distr::{Distribution, StandardNormal};
        let z0: f32 = StandardNormal.sample(rng);
        let mut s = [0.0f32; 4];
        for v in s.iter_mut().take(k) {
            let z: f32 = StandardNormal.sample(rng);
            *v = rho * z0 + (1.0 - rho * rho).sqrt() * z;
        }
        (s, [Tail::Upper, Tail::Lower, Tail::Both, Tail::Upper])
    }

    #[test]
    fn split_rule_holds_alpha_where_bonferroni_is_conservative() {
        // Seeded simulation: 300 calibrations of n_A = n_B = 200 in-distribution frames, 100 new
        // frames each. Split conformal with a continuous combined score has E[false rejection]
        // = floor(alpha (n_B + 1)) / (n_B + 1) exactly (closed form, no ties); the mean over
        // 30,000 frames has a standard deviation of about 0.0015 (binomial plus the spread over
        // calibrations, var ~ alpha (1 - alpha) / (n_B + 2)). Bonferroni over all 400 frames'
        // rank p-values must stay <= alpha, and is conservative with correlated scores.
        use rand_core::SeedableRng;
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(19);
        let (k, rho, alpha, n) = (4usize, 0.8f32, 0.05f32, 200usize);
        let (reps, tests) = (300usize, 100usize);
        let (mut split_rej, mut bonf_rej, mut minp_rej) = (0usize, 0usize, 0usize);
        for _ in 0..reps {
            let a: Vec<([f32; 4], [Tail; 4])> = (0..n).map(|_| draw(&mut rng, k, rho)).collect();
            let b: Vec<([f32; 4], [Tail; 4])> = (0..n).map(|_| draw(&mut rng, k, rho)).collect();
            let tails = a[0].1;
            let sorted_a: Vec<Vec<f32>> = (0..k)
                .map(|j| {
                    let mut v: Vec<f32> = a.iter().map(|f| f.0[j]).collect();
                    v.sort_by(f32::total_cmp);
                    v
                })
                .collect();
            let scales: Vec<(f32, f32)> =
                sorted_a.iter().map(|v| (exponential_tail_scale(v, true), exponential_tail_scale(v, false))).collect();
            let c_of = |s: &[f32; 4]| {
                let c: Vec<f32> =
                    (0..k).map(|j| strangeness(&sorted_a[j], scales[j].0, scales[j].1, s[j], tails[j])).collect();
                combined_score(&c)
            };
            let mut cb: Vec<f32> = b.iter().map(|f| c_of(&f.0)).collect();
            cb.sort_by(f32::total_cmp);
            let q = conformal_quantile(&cb, alpha).unwrap();
            // Bonferroni and the min-rank-p split over the same 400 frames.
            let sorted_ab: Vec<Vec<f32>> = (0..k)
                .map(|j| {
                    let mut v: Vec<f32> = a.iter().chain(&b).map(|f| f.0[j]).collect();
                    v.sort_by(f32::total_cmp);
                    v
                })
                .collect();
            let rank_p = |s: &[f32; 4], sorted: &[Vec<f32>]| -> Vec<f32> {
                (0..k).map(|j| tail_p_value(&sorted[j], s[j], tails[j])).collect()
            };
            let mut mb: Vec<f32> =
                b.iter().map(|f| -rank_p(&f.0, &sorted_a).into_iter().fold(1.0f32, f32::min)).collect();
            mb.sort_by(f32::total_cmp);
            for _ in 0..tests {
                let (s, _) = draw(&mut rng, k, rho);
                split_rej += usize::from(p_value(&cb, c_of(&s)) <= alpha);
                assert_eq!(p_value(&cb, c_of(&s)) <= alpha, c_of(&s) > q);
                bonf_rej += usize::from(bonferroni(&rank_p(&s, &sorted_ab)) <= alpha);
                let m = rank_p(&s, &sorted_a).into_iter().fold(1.0f32, f32::min);
                minp_rej += usize::from(p_value(&mb, -m) <= alpha);
            }
        }
        let total = (reps * tests) as f64;
        let (split, bonf, minp) = (split_rej as f64 / total, bonf_rej as f64 / total, minp_rej as f64 / total);
        let exact = (alpha as f64 * (n + 1) as f64).floor() / (n + 1) as f64;
        assert!((split - exact).abs() < 0.006, "split rule {split} vs {exact} (bonferroni {bonf}, min-p {minp})");
        assert!(bonf <= alpha as f64 + 0.006 && bonf < exact - 0.004, "bonferroni {bonf} vs split {split}");
        assert!(minp < exact - 0.005, "min rank p {minp} vs split {split}: ties should make it conservative");
        println!("false rejection at alpha 0.05: split {split:.4} (closed form {exact:.4}), bonferroni {bonf:.4}, min rank p {minp:.4}");
    }
}
