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
    ((1 + at_least) as f64 / (n + 1) as f64) as f32
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
}
