//! OOD-detection metrics with in-distribution (ID) frames as the positive class.
//!
//! Scores are "higher = more in-distribution" (for the energy score, `score = -E(x)`, as in
//! Liu et al. 2020's own code). Each metric follows scikit-learn 1.9 exactly, ties included:
//!
//! - [`auroc`]: area under the ROC curve (`roc_auc_score`), the same whichever class is
//!   positive;
//! - [`average_precision`]: AUPR as average precision (`average_precision_score`,
//!   `AP = sum_n (R_n - R_{n-1}) P_n`, no interpolation). AUPR-In takes ID as positive;
//!   AUPR-Out takes OOD as positive with the scores negated (as pytorch-ood and OpenOOD report);
//! - [`fpr_at_tpr`]: the fraction of OOD frames accepted at the first threshold of
//!   `roc_curve(drop_intermediate=False)` where at least the target fraction of ID frames is
//!   accepted (FPR@95TPR for a target of 0.95).
//!
//! Calibration of class probabilities (Guo et al. 2017, "On Calibration of Modern Neural
//! Networks"): [`CalibrationMetrics`] gives NLL, ECE and MCE over [`ECE_BINS`] equal-width
//! confidence bins, the multiclass Brier score, and the reliability-diagram bins.
//!
//! All points with equal scores move together, as scikit-learn's distinct-threshold curve does.
//! A NaN score (for example from a non-finite energy) counts as `-inf`: least in-distribution.

use std::cmp::Ordering;
use std::fmt;

/// Why a metric could not be computed.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricsError {
    /// One of the two classes has no scores; holds which one ("in-distribution" or "OOD").
    EmptyClass(&'static str),
    /// The target TPR is outside `(0, 1]`.
    BadTarget(f64),
    /// Logits and labels disagree in length: `logits.len()` is not `labels.len() * k`.
    Shape {
        /// `logits.len()`.
        logits: usize,
        /// Classes per row.
        k: usize,
        /// `labels.len()`.
        labels: usize,
    },
    /// A label is not below the number of classes.
    LabelOutOfRange {
        /// Row index.
        index: usize,
        /// The label.
        label: usize,
        /// Number of classes.
        k: usize,
    },
    /// A row of logits holds NaN or an infinity, or the temperature is not finite and positive.
    NonFinite {
        /// Row index.
        index: usize,
    },
}

impl fmt::Display for MetricsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetricsError::EmptyClass(which) => write!(f, "no {which} scores to compare"),
            MetricsError::BadTarget(t) => write!(f, "target TPR must be in (0, 1], got {t}"),
            MetricsError::Shape { logits, k, labels } => {
                write!(f, "{logits} logits do not make {labels} rows of {k} classes (one row per label)")
            }
            MetricsError::LabelOutOfRange { index, label, k } => {
                write!(f, "label {label} of row {index} is out of range for {k} classes")
            }
            MetricsError::NonFinite { index } => {
                write!(f, "row {index} has non-finite logits (or the temperature is not finite and > 0)")
            }
        }
    }
}

impl std::error::Error for MetricsError {}

fn key(s: f32) -> f32 {
    if s.is_nan() {
        f32::NEG_INFINITY
    } else {
        s
    }
}

/// The distinct-threshold curve of scikit-learn's `_binary_clf_curve`: for each distinct score,
/// in descending order, the cumulative counts of negatives (`fps`) and positives (`tps`) whose
/// score is at least that threshold.
fn clf_curve(pos: &[f32], neg: &[f32]) -> Result<(Vec<f64>, Vec<f64>), MetricsError> {
    if pos.is_empty() {
        return Err(MetricsError::EmptyClass("in-distribution"));
    }
    if neg.is_empty() {
        return Err(MetricsError::EmptyClass("OOD"));
    }
    let mut all: Vec<(f32, bool)> =
        pos.iter().map(|&s| (key(s), true)).chain(neg.iter().map(|&s| (key(s), false))).collect();
    all.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap_or(Ordering::Equal));
    let (mut fps, mut tps) = (Vec::new(), Vec::new());
    let (mut fp, mut tp) = (0.0f64, 0.0f64);
    for (i, &(s, is_pos)) in all.iter().enumerate() {
        if is_pos {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        if i + 1 == all.len() || all[i + 1].0 != s {
            fps.push(fp);
            tps.push(tp);
        }
    }
    Ok((fps, tps))
}

/// The ROC curve of scikit-learn's `roc_curve(drop_intermediate=False)`: `(fpr, tpr)`, starting
/// at `(0, 0)` and then one point per distinct score, thresholds descending.
///
/// # Errors
/// [`MetricsError::EmptyClass`] when either slice is empty.
pub fn roc_curve(id_scores: &[f32], ood_scores: &[f32]) -> Result<(Vec<f64>, Vec<f64>), MetricsError> {
    let (fps, tps) = clf_curve(id_scores, ood_scores)?;
    let (n, p) = (ood_scores.len() as f64, id_scores.len() as f64);
    let fpr = std::iter::once(0.0).chain(fps.iter().map(|f| f / n)).collect();
    let tpr = std::iter::once(0.0).chain(tps.iter().map(|t| t / p)).collect();
    Ok((fpr, tpr))
}

/// Area under the ROC curve by the trapezoidal rule (scikit-learn `roc_auc_score`); ties
/// between an ID and an OOD score count one half.
///
/// ```
/// use ebm_gate::metrics::auroc;
/// assert_eq!(auroc(&[3.0, 2.0], &[1.0, 0.0]).unwrap(), 1.0);
/// assert_eq!(auroc(&[1.0], &[1.0]).unwrap(), 0.5);
/// ```
///
/// # Errors
/// [`MetricsError::EmptyClass`] when either slice is empty.
pub fn auroc(id_scores: &[f32], ood_scores: &[f32]) -> Result<f64, MetricsError> {
    let (fpr, tpr) = roc_curve(id_scores, ood_scores)?;
    Ok(fpr.windows(2).zip(tpr.windows(2)).map(|(f, t)| (f[1] - f[0]) * (t[1] + t[0]) / 2.0).sum())
}

/// Average precision with `positive` as the positive class (scikit-learn
/// `average_precision_score`): `sum_n (R_n - R_{n-1}) P_n` over distinct thresholds.
///
/// ```
/// use ebm_gate::metrics::average_precision;
/// // Ranking: pos 0.9, neg 0.8, pos 0.7 -> AP = 0.5 * 1 + 0.5 * 2/3.
/// let ap = average_precision(&[0.9, 0.7], &[0.8]).unwrap();
/// assert!((ap - (0.5 + 1.0 / 3.0)).abs() < 1e-12);
/// ```
///
/// # Errors
/// [`MetricsError::EmptyClass`] when either slice is empty.
pub fn average_precision(positive: &[f32], negative: &[f32]) -> Result<f64, MetricsError> {
    let (fps, tps) = clf_curve(positive, negative)?;
    let p = positive.len() as f64;
    let mut prev_recall = 0.0;
    let mut ap = 0.0;
    for (fp, tp) in fps.iter().zip(&tps) {
        let recall = tp / p;
        let precision = if tp + fp > 0.0 { tp / (tp + fp) } else { 0.0 };
        ap += (recall - prev_recall) * precision;
        prev_recall = recall;
    }
    Ok(ap)
}

/// The fraction of OOD frames accepted at the first ROC point whose TPR is at least `target`
/// (`roc_curve(drop_intermediate=False)`, first index with `tpr >= target`).
///
/// ```
/// use ebm_gate::metrics::fpr_at_tpr;
/// // Accepting both ID frames (scores >= 2) also accepts the OOD frame scoring 2.5.
/// assert_eq!(fpr_at_tpr(&[3.0, 2.0], &[2.5, 1.0], 0.95).unwrap(), 0.5);
/// ```
///
/// # Errors
/// [`MetricsError::EmptyClass`] when either slice is empty, [`MetricsError::BadTarget`] when
/// `target` is not in `(0, 1]`.
pub fn fpr_at_tpr(id_scores: &[f32], ood_scores: &[f32], target: f64) -> Result<f64, MetricsError> {
    if !(target > 0.0 && target <= 1.0) {
        return Err(MetricsError::BadTarget(target));
    }
    let (fpr, tpr) = roc_curve(id_scores, ood_scores)?;
    // tpr ends at 1.0, so a point is always found.
    let i = tpr.iter().position(|&t| t >= target).unwrap_or(tpr.len() - 1);
    Ok(fpr[i])
}

/// AUROC, AUPR-In, AUPR-Out and FPR@95TPR of one score on one ID/OOD pair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OodMetrics {
    /// Area under the ROC curve, in [0, 1].
    pub auroc: f64,
    /// Average precision with ID as positive, in [0, 1].
    pub aupr_in: f64,
    /// Average precision with OOD as positive and scores negated, in [0, 1].
    pub aupr_out: f64,
    /// FPR at the first threshold with TPR >= 0.95, in [0, 1].
    pub fpr_at_95_tpr: f64,
}

impl OodMetrics {
    /// All four metrics; scores are "higher = more in-distribution".
    ///
    /// # Errors
    /// [`MetricsError::EmptyClass`] when either slice is empty.
    pub fn compute(id_scores: &[f32], ood_scores: &[f32]) -> Result<OodMetrics, MetricsError> {
        let neg = |v: &[f32]| v.iter().map(|&s| -key(s)).collect::<Vec<f32>>();
        Ok(OodMetrics {
            auroc: auroc(id_scores, ood_scores)?,
            aupr_in: average_precision(id_scores, ood_scores)?,
            aupr_out: average_precision(&neg(ood_scores), &neg(id_scores))?,
            fpr_at_95_tpr: fpr_at_tpr(id_scores, ood_scores, 0.95)?,
        })
    }
}

/// Top-1 accuracy: the fraction of `predicted[i] == labels[i]`; `None` for empty input.
///
/// ```
/// assert_eq!(ebm_gate::metrics::accuracy(&[0, 1, 2, 2], &[0, 1, 1, 2]), Some(0.75));
/// ```
pub fn accuracy(predicted: &[usize], labels: &[usize]) -> Option<f64> {
    if predicted.is_empty() || predicted.len() != labels.len() {
        return None;
    }
    let hits = predicted.iter().zip(labels).filter(|(p, l)| p == l).count();
    Some(hits as f64 / predicted.len() as f64)
}

/// Number of equal-width confidence bins for ECE, MCE and the reliability diagram, as in Guo et
/// al. 2017.
pub const ECE_BINS: usize = 15;

/// One confidence bin `(lower, upper]` of a reliability diagram.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReliabilityBin {
    /// Lower edge (exclusive), in [0, 1].
    pub lower: f64,
    /// Upper edge (inclusive), in [0, 1].
    pub upper: f64,
    /// Frames whose confidence falls in the bin.
    pub count: usize,
    /// Fraction of them classified correctly (NaN when empty).
    pub accuracy: f64,
    /// Their mean confidence (NaN when empty).
    pub confidence: f64,
}

/// How well the probabilities `softmax(z / T)` of a labelled set are calibrated.
#[derive(Debug, Clone, PartialEq)]
pub struct CalibrationMetrics {
    /// Number of frames.
    pub n: usize,
    /// The temperature `T` the probabilities were taken at.
    pub temperature: f64,
    /// Top-1 accuracy, in [0, 1].
    pub accuracy: f64,
    /// Mean negative log-likelihood of the true class, `mean(-ln p(y_i | x_i))`, nats.
    pub nll: f64,
    /// Expected calibration error over [`ECE_BINS`] equal-width bins of the top-class
    /// confidence: `sum_b (n_b / n) * |acc_b - conf_b|`, in [0, 1].
    pub ece: f64,
    /// Maximum calibration error: `max_b |acc_b - conf_b|` over non-empty bins, in [0, 1].
    pub mce: f64,
    /// Multiclass Brier score, `mean_i sum_k (p_ik - [k = y_i])^2` (Brier 1950), in [0, 2].
    pub brier: f64,
    /// The reliability-diagram bins, `(b / 15, (b + 1) / 15]` for `b = 0..15`.
    pub bins: Vec<ReliabilityBin>,
}

impl CalibrationMetrics {
    /// Computes every figure from row-major logits `[N, K]`, labels `[N]` and a temperature.
    ///
    /// Probabilities are computed in `f64` from the logits. A frame's confidence is its largest
    /// probability and its prediction the first class with it; a confidence `c` falls in bin `b`
    /// when `b / 15 < c <= (b + 1) / 15` (the convention of Guo et al.'s code).
    ///
    /// ```
    /// use ebm_gate::metrics::CalibrationMetrics;
    /// // Two frames, both predicted class 0 with p = e / (e + 1) = 0.731; one is right.
    /// let m = CalibrationMetrics::from_logits(&[1.0, 0.0, 1.0, 0.0], 2, &[0, 1], 1.0).unwrap();
    /// let p = 1.0f64.exp() / (1.0f64.exp() + 1.0);
    /// assert!((m.accuracy - 0.5).abs() < 1e-12);
    /// assert!((m.ece - (p - 0.5)).abs() < 1e-12);
    /// assert!((m.nll - (-(p.ln()) - (1.0 - p).ln()) / 2.0).abs() < 1e-12);
    /// ```
    ///
    /// # Errors
    /// [`MetricsError::EmptyClass`] for no frames, [`MetricsError::Shape`],
    /// [`MetricsError::LabelOutOfRange`], [`MetricsError::NonFinite`].
    pub fn from_logits(
        logits: &[f32],
        k: usize,
        labels: &[usize],
        temperature: f64,
    ) -> Result<CalibrationMetrics, MetricsError> {
        let n = labels.len();
        let (mut nll, mut brier, mut hits) = (0.0f64, 0.0f64, 0usize);
        let mut count = [0usize; ECE_BINS];
        let mut correct = [0usize; ECE_BINS];
        let mut conf_sum = [0.0f64; ECE_BINS];
        for_each_softmax(logits, k, labels, temperature, |row, y, p, lse| {
            nll += lse - row[y] as f64 / temperature;
            let (mut pred, mut conf) = (0usize, f64::NEG_INFINITY);
            for (j, v) in p.iter().enumerate() {
                if *v > conf {
                    (pred, conf) = (j, *v);
                }
            }
            brier +=
                p.iter().enumerate().map(|(j, &v)| if j == y { (v - 1.0) * (v - 1.0) } else { v * v }).sum::<f64>();
            let b =
                (0..ECE_BINS).find(|&b| conf > b as f64 / ECE_BINS as f64 && conf <= (b + 1) as f64 / ECE_BINS as f64);
            if let Some(b) = b {
                count[b] += 1;
                conf_sum[b] += conf;
                correct[b] += usize::from(pred == y);
            }
            hits += usize::from(pred == y);
        })?;
        let bins: Vec<ReliabilityBin> = (0..ECE_BINS)
            .map(|b| {
                let c = count[b] as f64;
                ReliabilityBin {
                    lower: b as f64 / ECE_BINS as f64,
                    upper: (b + 1) as f64 / ECE_BINS as f64,
                    count: count[b],
                    accuracy: correct[b] as f64 / c,
                    confidence: conf_sum[b] / c,
                }
            })
            .collect();
        let gaps = bins.iter().filter(|b| b.count > 0).map(|b| (b.count, (b.accuracy - b.confidence).abs()));
        let (mut ece, mut mce) = (0.0f64, 0.0f64);
        for (c, gap) in gaps {
            ece += c as f64 / n as f64 * gap;
            mce = mce.max(gap);
        }
        Ok(CalibrationMetrics {
            n,
            temperature,
            accuracy: hits as f64 / n as f64,
            nll: nll / n as f64,
            ece,
            mce,
            brier: brier / n as f64,
            bins,
        })
    }
}

/// Checks `[N, K]` logits against `[N]` labels.
pub(crate) fn check_rows(logits: &[f32], k: usize, labels: &[usize]) -> Result<(), MetricsError> {
    if labels.is_empty() {
        return Err(MetricsError::EmptyClass("labelled"));
    }
    if k == 0 || logits.len() != labels.len() * k {
        return Err(MetricsError::Shape { logits: logits.len(), k, labels: labels.len() });
    }
    if let Some((index, &label)) = labels.iter().enumerate().find(|(_, &l)| l >= k) {
        return Err(MetricsError::LabelOutOfRange { index, label, k });
    }
    Ok(())
}

/// Checks `[N, K]` logits against `[N]` labels, then calls `f(row, label, probabilities, lse)`
/// for each frame with `softmax(z / T)` and `logsumexp(z / T)` computed in `f64`.
pub(crate) fn for_each_softmax(
    logits: &[f32],
    k: usize,
    labels: &[usize],
    temperature: f64,
    mut f: impl FnMut(&[f32], usize, &[f64], f64),
) -> Result<(), MetricsError> {
    check_rows(logits, k, labels)?;
    let mut p = vec![0.0f64; k];
    for (i, (row, &y)) in logits.chunks_exact(k).zip(labels).enumerate() {
        let lse = log_softmax_into(row, temperature, &mut p).ok_or(MetricsError::NonFinite { index: i })?;
        f(row, y, &p, lse);
    }
    Ok(())
}

/// Writes `softmax(z / T)` into `p` and returns `logsumexp(z / T)`, in `f64`; `None` when the
/// row or `T` is not finite (or `T <= 0`).
pub(crate) fn log_softmax_into(row: &[f32], temperature: f64, p: &mut [f64]) -> Option<f64> {
    if !(temperature.is_finite() && temperature > 0.0) || row.iter().any(|z| !z.is_finite()) {
        return None;
    }
    let m = row.iter().fold(f64::NEG_INFINITY, |m, &z| m.max(z as f64)) / temperature;
    let mut sum = 0.0;
    for (o, &z) in p.iter_mut().zip(row) {
        *o = (z as f64 / temperature - m).exp();
        sum += *o;
    }
    for o in p.iter_mut() {
        *o /= sum;
    }
    Some(m + sum.ln())
}
