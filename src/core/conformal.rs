//! Split-conformal p-values of an energy against sorted calibration energies.
//!
//! With `n` calibration energies `s_1..s_n` of in-distribution frames (exchangeable with the
//! frame being scored), `p(x) = (1 + #{i : s_i >= s(x)}) / (n + 1)` is a valid conformal
//! p-value: rejecting when `p(x) <= alpha` rejects an in-distribution frame with probability at
//! most `alpha` (Vovk et al. 2005; Angelopoulos & Bates 2021, "A Gentle Introduction to
//! Conformal Prediction", section 1). Energies are nonconformity scores: higher = stranger.

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
    super::check::alpha(alpha).ok()?;
    // m = #{c in 0..=n : p(c) <= alpha}; p(c) grows with c, so binary search.
    let (mut lo, mut hi) = (0usize, n + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if p_of_count(mid, n) <= alpha {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    // Reject iff fewer than m scores are >= e, iff e is above the (n - m + 1)-th smallest.
    (lo >= 1).then(|| n + 1 - lo)
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
}
