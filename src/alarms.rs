//! False alarms of a debounced gate on in-distribution frames: how often the debounced state
//! enters `out_of_distribution` when nothing is wrong, and the settings that keep it rare.
//!
//! # Model
//!
//! Each in-distribution frame is rejected with probability `p` (a conformal gate at level `alpha`
//! rejects a clean frame with probability at most `alpha`, close to it; see
//! [`crate::core::conformal`]), independently of the other frames. The debouncer
//! ([`crate::core::debounce`]) keeps the last `n` verdicts and switches to
//! `out_of_distribution` at `enter` rejections in the window and back at `exit` or fewer. A
//! *false alarm* is a switch from `in_distribution` to `out_of_distribution` on such a feed;
//! every one is followed by a switch back, so the state changes twice as often. Rates are in
//! the stationary regime (the start, `unknown`, is left out).
//!
//! - **Plain k-of-n** (`exit = enter - 1`, `k = enter`): the state is `out_of_distribution`
//!   exactly when the window holds `k` or more rejections, and it switches at frame `t` exactly
//!   when frame `t` is rejected, frame `t - n` (the one leaving the window) was accepted, and
//!   `k - 1` of the `n - 1` frames between were rejected:
//!
//!   `rate = C(n-1, k-1) p^k (1-p)^(n-k+1)` alarms per frame,
//!
//!   and the fraction of frames spent `out_of_distribution` is `P(Binomial(n, p) >= k)`. This is
//!   the scan statistic's boundary-crossing rate (Naus 1982, "Approximations for distributions of
//!   scan statistics", JASA 77:177-183; Glaz, Naus & Wallenstein, *Scan Statistics*, 2001).
//! - **With hysteresis** (`exit < enter - 1`): the state at a frame depends on which boundary the
//!   window's count touched last, so the rate is computed exactly on the Markov chain of the
//!   window's `2^n` verdict patterns (for `n <= ` [`MAX_EXACT_WINDOW`]): for each pattern `w`,
//!   `h(w)` = P(the count last touched `<= exit` rather than `>= enter` | window `w`), by
//!   looking back frame by frame (`h = 1` at or below `exit`, `0` at or above `enter`, and
//!   `h(w) = sum_b P(b) h(w')` in between, `w'` the window one frame earlier); then
//!   `rate = p * sum over w with count enter - 1 and an accepted oldest frame of pi(w) h(w)`,
//!   `pi(w) = p^r (1-p)^(n-r)`. Longer windows get the plain k-of-n rate for the same `enter`
//!   as an upper bound (hysteresis only removes switches: every false alarm is a crossing of
//!   `enter - 1 -> enter`).
//!
//! Frames of a real feed are not independent: a static scene gives the same verdict many frames
//! in a row, so rejections come in runs, and a run of `enter` rejections is far likelier than
//! `p^enter`. Measure a feed's own rate by streaming a clean recording and comparing the
//! summary's `out_of_distribution` entries with [`AlarmRate::expected_in`] (the stream summary
//! gives both).

use crate::core::debounce::DebounceError;

/// Longest window whose rate with hysteresis is computed exactly (the chain has `2^n` states).
pub const MAX_EXACT_WINDOW: usize = 16;

/// Longest window [`plan`] and [`false_alarm_rate`] take (as `stream --window`).
pub const MAX_WINDOW: usize = 256;

/// Why a rate could not be computed.
#[derive(Debug, Clone, PartialEq)]
pub enum AlarmError {
    /// `p` is not a probability in (0, 1).
    Probability(f64),
    /// The debouncer's settings are not `exit < enter <= n <= 256`.
    Debouncer(DebounceError),
}

impl core::fmt::Display for AlarmError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            AlarmError::Probability(p) => write!(f, "rejection probability must be in (0, 1), got {p}"),
            AlarmError::Debouncer(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for AlarmError {}

/// How [`false_alarm_rate`] got its figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// The k-of-n closed form (exact).
    ClosedForm,
    /// The Markov chain of window patterns (exact to about 1e-12).
    MarkovChain,
    /// The k-of-n rate for the same `enter`, an upper bound (hysteresis on a window longer than
    /// [`MAX_EXACT_WINDOW`]).
    UpperBound,
}

impl Method {
    /// `closed_form` | `markov_chain` | `upper_bound`.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::ClosedForm => "closed_form",
            Method::MarkovChain => "markov_chain",
            Method::UpperBound => "upper_bound",
        }
    }
}

/// False alarms of a debouncer on independent in-distribution frames.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlarmRate {
    /// Rejection probability of one clean frame.
    pub p: f64,
    /// The debouncer: window, enter, exit.
    pub window: usize,
    /// Rejections in the window that switch to `out_of_distribution`.
    pub enter: usize,
    /// Rejections in the window at or below which it switches back.
    pub exit: usize,
    /// Expected false alarms (`in_distribution -> out_of_distribution`) per frame.
    pub per_frame: f64,
    /// Fraction of frames spent `out_of_distribution`; `None` with [`Method::UpperBound`].
    pub out_fraction: Option<f64>,
    /// How `per_frame` was computed.
    pub method: Method,
}

impl AlarmRate {
    /// Expected false alarms per hour at `fps` frames per second.
    pub fn per_hour(&self, fps: f64) -> f64 {
        self.per_frame * fps * 3600.0
    }

    /// Expected false alarms in `frames` frames.
    pub fn expected_in(&self, frames: u64) -> f64 {
        self.per_frame * frames as f64
    }

    /// Mean length of a false alarm in frames (time `out_of_distribution` per alarm); `None`
    /// without [`AlarmRate::out_fraction`] or alarms.
    pub fn mean_alarm_frames(&self) -> Option<f64> {
        self.out_fraction.filter(|_| self.per_frame > 0.0).map(|f| f / self.per_frame)
    }
}

/// `ln C(n, k)` by summing logarithms (n <= 256: exact enough, no overflow).
fn ln_choose(n: usize, k: usize) -> f64 {
    (0..k).map(|i| ((n - i) as f64).ln() - ((i + 1) as f64).ln()).sum()
}

/// `C(n, k) p^k (1-p)^(n-k)` in logs.
fn binomial_pmf(n: usize, k: usize, p: f64) -> f64 {
    (ln_choose(n, k) + k as f64 * p.ln() + (n - k) as f64 * (-p).ln_1p()).exp()
}

/// The k-of-n closed form: alarms per frame, and `P(Binomial(n, p) >= k)`.
fn k_of_n(p: f64, n: usize, k: usize) -> (f64, f64) {
    let rate = (ln_choose(n - 1, k - 1) + k as f64 * p.ln() + (n - k + 1) as f64 * (-p).ln_1p()).exp();
    let out = (k..=n).map(|j| binomial_pmf(n, j, p)).sum::<f64>().min(1.0);
    (rate, out)
}

/// The Markov chain of window patterns (module docs): alarms per frame and the fraction of
/// frames out. Bit `i` of a pattern is the verdict `i` frames ago (1 = rejected); bit `n - 1`
/// is the oldest, the next to leave.
fn chain(p: f64, n: usize, enter: usize, exit: usize) -> (f64, f64) {
    let states = 1usize << n;
    let count = |w: usize| w.count_ones() as usize;
    // h(w): P(in_distribution | window w), fixed at the boundaries.
    let mut h: Vec<f64> = (0..states).map(|w| if count(w) <= exit { 1.0 } else { 0.0 }).collect();
    let band: Vec<usize> = (0..states).filter(|&w| count(w) > exit && count(w) < enter).collect();
    // One frame back: the newest verdict leaves, an older one (b) comes in as the oldest.
    // Gauss-Seidel sweeps; the map is a contraction whenever p < 1 (the window is renewed
    // every n frames back, and with probability > 0 it is all accepted).
    for _ in 0..100_000 {
        let mut change = 0.0f64;
        for &w in &band {
            let older = w >> 1;
            let v = (1.0 - p) * h[older] + p * h[older | (1 << (n - 1))];
            change = change.max((v - h[w]).abs());
            h[w] = v;
        }
        if change < 1e-15 {
            break;
        }
    }
    let pi = |w: usize| {
        let r = count(w) as i32;
        p.powi(r) * (1.0 - p).powi(n as i32 - r)
    };
    let oldest = 1usize << (n - 1);
    let mut rate = 0.0;
    let mut out = 0.0;
    for (w, &hw) in h.iter().enumerate() {
        if count(w) == enter - 1 && w & oldest == 0 {
            rate += pi(w) * hw * p;
        }
        out += pi(w) * (1.0 - hw);
    }
    (rate, out)
}

/// Expected false alarms per frame of a debouncer (window `n`, `enter`, `exit`) when each clean
/// frame is rejected with probability `p`, independently (module docs).
///
/// # Errors
/// [`AlarmError::Probability`] unless `0 < p < 1`; [`AlarmError::Debouncer`] unless
/// `exit < enter <= n <= 256`.
///
/// ```
/// use ebm_gate::alarms::{false_alarm_rate, Method};
/// // The stream's default, 3 of 5, at alpha 0.05: 6 * 0.05^3 * 0.95^3 alarms per frame,
/// // about 35 an hour at 15 frames/s.
/// let r = false_alarm_rate(0.05, 5, 3, 2).unwrap();
/// assert_eq!(r.method, Method::ClosedForm);
/// assert!((r.per_frame - 6.0 * 0.05f64.powi(3) * 0.95f64.powi(3)).abs() < 1e-15);
/// assert!((r.per_hour(15.0) - 34.7).abs() < 0.05);
/// ```
pub fn false_alarm_rate(p: f64, n: usize, enter: usize, exit: usize) -> Result<AlarmRate, AlarmError> {
    if !(p > 0.0 && p < 1.0) {
        return Err(AlarmError::Probability(p));
    }
    if n == 0 || n > MAX_WINDOW {
        return Err(AlarmError::Debouncer(DebounceError::Window { n, capacity: MAX_WINDOW }));
    }
    if !(exit < enter && enter <= n) {
        return Err(AlarmError::Debouncer(DebounceError::Thresholds { enter, exit, n }));
    }
    let (per_frame, out_fraction, method) = if exit + 1 == enter {
        let (rate, out) = k_of_n(p, n, enter);
        (rate, Some(out), Method::ClosedForm)
    } else if n <= MAX_EXACT_WINDOW {
        let (rate, out) = chain(p, n, enter, exit);
        (rate, Some(out), Method::MarkovChain)
    } else {
        (k_of_n(p, n, enter).0, None, Method::UpperBound)
    };
    Ok(AlarmRate { p, window: n, enter, exit, per_frame, out_fraction, method })
}

/// One proposal of [`plan`]: a conformal level and a plain k-of-n debouncer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanRow {
    /// The gate's level (`--alpha`): the rejection probability of a clean frame.
    pub alpha: f64,
    /// The false-alarm rate of the proposal (window, enter, exit = enter - 1).
    pub rate: AlarmRate,
    /// Expected false alarms per day at the planned frame rate.
    pub per_day: f64,
    /// Seconds from the first frame of a fault that every frame shows to the alarm
    /// (`enter / fps`).
    pub reaction_s: f64,
    /// The least fraction of a lasting fault's frames that must be rejected for the alarm to
    /// come at all (`enter / window`).
    pub min_fault_rejection: f64,
}

/// Proposes, for each level in `alphas`, the plain k-of-n debouncer that alarms on any lasting
/// fault whose frames are rejected at least a fraction `min_fault_rejection` of the time
/// (window `n = ceil(k / min_fault_rejection)`), with the fewest rejections `k` (the fastest
/// reaction to a fault every frame shows) whose false alarms at `fps` frames per second stay at
/// or below `per_day`. Levels for which no window up to `max_window` meets the target are left
/// out.
///
/// # Errors
/// [`AlarmError::Probability`] for a level or a `min_fault_rejection` outside (0, 1].
///
/// ```
/// // 15 frames/s, one false alarm a day, faults rejected on at least half their frames:
/// let rows = ebm_gate::alarms::plan(15.0, 1.0, &[0.05], 0.5, 64).unwrap();
/// let r = rows[0].rate;
/// assert_eq!((r.window, r.enter, r.exit), (16, 8, 7));
/// assert!(rows[0].per_day <= 1.0);
/// ```
pub fn plan(
    fps: f64,
    per_day: f64,
    alphas: &[f64],
    min_fault_rejection: f64,
    max_window: usize,
) -> Result<Vec<PlanRow>, AlarmError> {
    if !(min_fault_rejection > 0.0 && min_fault_rejection <= 1.0) {
        return Err(AlarmError::Probability(min_fault_rejection));
    }
    let max_window = max_window.clamp(1, MAX_WINDOW);
    let frames_per_day = fps * 86_400.0;
    let mut rows = Vec::new();
    for &alpha in alphas {
        if !(alpha > 0.0 && alpha < 1.0) {
            return Err(AlarmError::Probability(alpha));
        }
        let window = |k: usize| ((k as f64 / min_fault_rejection) - 1e-9).ceil() as usize;
        let found = (1..=max_window)
            .map(|k| (window(k), k))
            .take_while(|&(n, _)| n <= max_window)
            .find(|&(n, k)| k_of_n(alpha, n, k).0 * frames_per_day <= per_day);
        let Some((n, k)) = found else { continue };
        let rate = false_alarm_rate(alpha, n, k, k - 1)?;
        rows.push(PlanRow {
            alpha,
            rate,
            per_day: rate.per_frame * frames_per_day,
            reaction_s: k as f64 / fps,
            min_fault_rejection: k as f64 / n as f64,
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_of_two_with_full_hysteresis_matches_the_renewal_closed_form() {
        // n = 2, enter 2, exit 0: out at two rejections in a row, back at two acceptances in a
        // row. By hand (the last-boundary recursion, two unknowns):
        // rate = p^2 (1-p)^2 / (1 - p + p^2); at p = 1/2 a renewal argument gives 1/12.
        for p in [0.5, 0.05, 0.3] {
            let r = false_alarm_rate(p, 2, 2, 0).unwrap();
            assert_eq!(r.method, Method::MarkovChain);
            let want = p * p * (1.0 - p) * (1.0 - p) / (1.0 - p + p * p);
            assert!((r.per_frame - want).abs() < 1e-14, "p {p}: {} vs {want}", r.per_frame);
        }
        assert!((false_alarm_rate(0.5, 2, 2, 0).unwrap().per_frame - 1.0 / 12.0).abs() < 1e-14);
    }

    #[test]
    fn the_chain_agrees_with_the_closed_form_without_hysteresis() {
        for (p, n, k) in [(0.05, 5, 3), (0.2, 8, 4), (0.01, 12, 2), (0.5, 6, 6)] {
            let closed = k_of_n(p, n, k);
            let c = chain(p, n, k, k - 1);
            assert!((closed.0 - c.0).abs() <= 1e-12 * closed.0.max(1e-300), "{n} {k}: {closed:?} {c:?}");
            assert!((closed.1 - c.1).abs() <= 1e-12, "{n} {k}: {closed:?} {c:?}");
        }
    }

    #[test]
    fn hysteresis_lowers_the_rate_and_long_windows_get_a_bound() {
        let plain = false_alarm_rate(0.1, 10, 4, 3).unwrap();
        let hyst = false_alarm_rate(0.1, 10, 4, 1).unwrap();
        assert!(hyst.per_frame < plain.per_frame);
        let long = false_alarm_rate(0.1, 40, 8, 2).unwrap();
        assert_eq!(long.method, Method::UpperBound);
        assert_eq!(long.per_frame, false_alarm_rate(0.1, 40, 8, 7).unwrap().per_frame);
        assert!(false_alarm_rate(0.0, 5, 3, 2).is_err());
        assert!(false_alarm_rate(0.05, 5, 3, 3).is_err());
        assert!(false_alarm_rate(0.05, 300, 3, 2).is_err());
    }

    /// The real debouncer on seeded Bernoulli(p) verdicts: its count of
    /// in_distribution -> out_of_distribution switches against the formula.
    #[test]
    fn the_rate_matches_a_seeded_simulation_of_the_debouncer() {
        use crate::core::debounce::{Debouncer, State};
        use crate::core::gate::Verdict;
        use rand::{Rng, SeedableRng};
        let frames = 2_000_000u64;
        for (p, n, enter, exit) in [(0.1, 5, 3, 2), (0.1, 5, 3, 1), (0.2, 10, 5, 1), (0.05, 4, 2, 0), (0.3, 16, 9, 4)] {
            let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(20 + n as u64 * 7 + enter as u64);
            let mut d: Debouncer<16> = Debouncer::new(n, enter, exit).unwrap();
            let (mut alarms, mut out) = (0u64, 0u64);
            for _ in 0..frames {
                let v = if rng.random::<f64>() < p { Verdict::OutOfDistribution } else { Verdict::InDistribution };
                let step = d.push(v);
                alarms += u64::from(step.changed_from == Some(State::InDistribution));
                out += u64::from(step.state == State::OutOfDistribution);
            }
            let r = false_alarm_rate(p, n, enter, exit).unwrap();
            let want = r.expected_in(frames);
            // Alarms are nearly a Poisson count: 5 standard deviations, and at least 2000 of them.
            assert!(want > 2000.0, "{n}/{enter}/{exit}: too few alarms to test ({want})");
            assert!((alarms as f64 - want).abs() < 5.0 * want.sqrt(), "{p} {n}/{enter}/{exit}: {alarms} vs {want:.1}");
            let f = out as f64 / frames as f64;
            let want_f = r.out_fraction.unwrap();
            assert!((f - want_f).abs() < 0.05 * want_f, "{p} {n}/{enter}/{exit}: out {f} vs {want_f}");
        }
    }

    #[test]
    fn plan_meets_the_target_with_the_fewest_rejections() {
        let rows = plan(15.0, 1.0, &[0.01, 0.05, 0.6], 0.5, 64).unwrap();
        // 0.6 rejects clean frames more often than a fault must be: nothing meets it.
        assert_eq!(rows.len(), 2);
        for row in &rows {
            let (n, k) = (row.rate.window, row.rate.enter);
            assert_eq!(n, 2 * k);
            assert!(row.per_day <= 1.0);
            // One fewer rejection (and its window) fails.
            assert!(k == 1 || k_of_n(row.alpha, 2 * k - 2, k - 1).0 * 15.0 * 86_400.0 > 1.0);
        }
        assert!(plan(15.0, 1.0, &[0.05], 0.0, 64).is_err());
    }
}
