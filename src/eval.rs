//! `eval`: ID accuracy and OOD-detection metrics for each score, from scored frames.
//!
//! Scores compared, all "higher = more in-distribution": `energy` (`-E(x)` at the bundle's
//! temperature, Liu et al. 2020), `msp` (max softmax probability at `T = 1`), `max_logit`, and
//! `energy_t1` (`-E(x)` at `T = 1`, the setting of Liu et al.) when the bundle's temperature is
//! not 1. A frame that could not be scored is left out of the metrics and counted in `errors`;
//! the gate's rates (accepted, rejected) count it as rejected, as the gate does.

use serde::Serialize;

use crate::calibration::{false_rejection, prediction_set_summary, split_conformal_check, wilson_interval};
use crate::core::energy::free_energy;
use crate::core::gate::Verdict;
use crate::metrics::{accuracy, CalibrationMetrics, OodMetrics};
use crate::pipeline::FrameReport;

/// The scores `eval` compares, by name.
pub const SCORE_NAMES: [&str; 4] = ["energy", "msp", "max_logit", "energy_t1"];

/// One score's value per frame ("higher = more ID"); NaN for a frame that was not scored.
fn score_values(reports: &[&FrameReport], score: &str) -> Vec<f32> {
    reports
        .iter()
        .map(|r| match (&r.scores, &r.logits) {
            (Some(s), Some(z)) => match score {
                "energy" => -s.energy,
                "msp" => s.msp,
                "max_logit" => s.max_logit,
                _ => free_energy(z, 1.0).map(|e| -e).unwrap_or(f32::NAN),
            },
            _ => f32::NAN,
        })
        .collect()
}

/// Summary of the in-distribution set.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct IdSummary {
    /// The set's path.
    pub path: String,
    /// Frames in the set.
    pub n: usize,
    /// Frames that could not be scored.
    pub errors: usize,
    /// Top-1 accuracy over labelled frames (unscored ones count as wrong); `None` when unlabelled.
    pub accuracy: Option<f64>,
    /// Fraction of frames accepted by the gate's threshold, when one is set (the TPR).
    pub accepted: Option<f64>,
    /// Mean energy over scored frames.
    pub mean_energy: f64,
    /// Frames of the folder left out because they calibrated the gate (`calibrate`'s split).
    pub excluded_calibration_frames: usize,
}

/// Calibration of the class probabilities on the labelled ID set at one temperature.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProbabilityCalibration {
    /// Temperature `T`.
    pub temperature: f64,
    /// Mean negative log-likelihood, nats.
    pub nll: f64,
    /// Expected calibration error, 15 equal-width bins, in [0, 1].
    pub ece: f64,
    /// Maximum calibration error, in [0, 1].
    pub mce: f64,
    /// Multiclass Brier score.
    pub brier: f64,
}

impl From<&CalibrationMetrics> for ProbabilityCalibration {
    fn from(m: &CalibrationMetrics) -> Self {
        ProbabilityCalibration { temperature: m.temperature, nll: m.nll, ece: m.ece, mce: m.mce, brier: m.brier }
    }
}

/// The conformal gate at one level `alpha`, on the evaluated sets.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ConformalRow {
    /// The level.
    pub alpha: f32,
    /// The energy threshold it amounts to with the bundle's calibration energies.
    pub threshold: Option<f32>,
    /// Fraction of ID frames rejected (`p <= alpha` over the bundle's calibration energies);
    /// unscored frames count as rejected.
    pub id_rejected: f64,
    /// Wilson 95% interval of `id_rejected`.
    pub id_rejected_interval: (f64, f64),
    /// Mean false-rejection rate over random half/half splits of the ID frames' own energies;
    /// `None` when half of them are too few for `alpha`.
    pub split_mean: Option<f64>,
    /// Its standard deviation over the splits.
    pub split_sd: Option<f64>,
    /// Number of random splits.
    pub splits: usize,
    /// Fraction of each OOD set rejected, in the order of [`EvalReport::ood`].
    pub ood_rejected: Vec<f64>,
}

/// Conformal prediction sets at one level on the labelled ID set.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SetRow {
    /// The level: target coverage `1 - alpha`.
    pub alpha: f32,
    /// Fraction of frames whose set holds the true class.
    pub coverage: f64,
    /// Mean number of classes per set.
    pub mean_size: f64,
}

/// One score's metrics on one OOD set.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ScoreMetrics {
    /// Score name, one of [`SCORE_NAMES`].
    pub score: String,
    /// Area under the ROC curve.
    pub auroc: f64,
    /// Average precision, ID positive.
    pub aupr_in: f64,
    /// Average precision, OOD positive.
    pub aupr_out: f64,
    /// FPR at 95% TPR.
    pub fpr_at_95_tpr: f64,
}

/// Summary of one OOD set.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OodSummary {
    /// The name given on the command line.
    pub name: String,
    /// The set's path.
    pub path: String,
    /// Frames in the set.
    pub n: usize,
    /// Frames that could not be scored.
    pub errors: usize,
    /// Fraction of frames accepted by the gate's threshold, when one is set (its FPR).
    pub accepted: Option<f64>,
    /// Mean energy over scored frames.
    pub mean_energy: f64,
    /// Metrics per score.
    pub metrics: Vec<ScoreMetrics>,
}

/// The whole report of an `eval` run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EvalReport {
    /// The model file.
    pub model: String,
    /// Temperature used.
    pub temperature: f32,
    /// Threshold used, when one is set.
    pub threshold: Option<f32>,
    /// The in-distribution set.
    pub id: IdSummary,
    /// Each OOD set.
    pub ood: Vec<OodSummary>,
    /// Probability calibration at `T = 1` and at the bundle's temperature (labelled ID only).
    pub calibration: Vec<ProbabilityCalibration>,
    /// The conformal gate at each level checked (needs calibration energies).
    pub conformal: Vec<ConformalRow>,
    /// Prediction-set coverage (needs the bundle's prediction-set scores and labels).
    pub prediction_sets: Vec<SetRow>,
}

fn accepted(reports: &[FrameReport]) -> Option<f64> {
    let verdicts: Option<Vec<Verdict>> = reports.iter().map(|r| r.verdict).collect();
    let v = verdicts?;
    (!v.is_empty()).then(|| v.iter().filter(|&&v| v == Verdict::InDistribution).count() as f64 / v.len() as f64)
}

fn mean_energy(reports: &[FrameReport]) -> f64 {
    let e: Vec<f64> = reports.iter().filter_map(|r| r.scores.map(|s| s.energy as f64)).collect();
    if e.is_empty() {
        f64::NAN
    } else {
        e.iter().sum::<f64>() / e.len() as f64
    }
}

/// Summarises the ID set.
pub fn summarise_id(path: &str, reports: &[FrameReport]) -> IdSummary {
    let labelled = !reports.is_empty() && reports.iter().all(|r| r.label.is_some());
    let acc = labelled
        .then(|| {
            let pred: Vec<usize> = reports.iter().map(|r| r.scores.map(|s| s.class).unwrap_or(usize::MAX)).collect();
            let labels: Vec<usize> = reports.iter().filter_map(|r| r.label).collect();
            accuracy(&pred, &labels)
        })
        .flatten();
    IdSummary {
        path: path.into(),
        n: reports.len(),
        errors: reports.iter().filter(|r| r.scores.is_none()).count(),
        accuracy: acc,
        accepted: accepted(reports),
        mean_energy: mean_energy(reports),
        excluded_calibration_frames: 0,
    }
}

/// The logits of the scored reports stacked row-major `[N, K]`, and their labels when every
/// report has one.
pub(crate) fn stack_logits<'a>(reports: impl IntoIterator<Item = &'a FrameReport>) -> (Vec<f32>, Option<Vec<usize>>) {
    let (mut logits, mut labels) = (Vec::new(), Some(Vec::new()));
    for r in reports {
        logits.extend_from_slice(r.logits.as_deref().unwrap_or(&[]));
        labels = labels.and_then(|mut l| {
            r.label.map(|y| {
                l.push(y);
                l
            })
        });
    }
    (logits, labels)
}

/// Labelled ID frames' logits `[N, K]`, labels and `K`, when every frame is labelled and scored.
fn labelled_logits(reports: &[FrameReport]) -> Option<(Vec<f32>, Vec<usize>, usize)> {
    let k = reports.first()?.logits.as_ref()?.len();
    if reports.iter().any(|r| r.logits.is_none()) {
        return None;
    }
    let (logits, labels) = stack_logits(reports);
    Some((logits, labels?, k))
}

/// NLL, ECE, MCE and Brier of the labelled ID set at `T = 1` and at `temperature` (one entry when
/// it is 1); empty when the set is unlabelled or has unscored frames.
pub fn probability_calibration(id: &[FrameReport], temperature: f32) -> Vec<ProbabilityCalibration> {
    let Some((logits, labels, k)) = labelled_logits(id) else { return Vec::new() };
    let mut ts = vec![1.0f64];
    if temperature != 1.0 {
        ts.push(temperature as f64);
    }
    ts.iter()
        .filter_map(|&t| CalibrationMetrics::from_logits(&logits, k, &labels, t).ok())
        .map(|m| ProbabilityCalibration::from(&m))
        .collect()
}

/// The conformal gate at each of `alphas`: the ID false-rejection rate with the bundle's
/// `calibration_energies` (ascending), the mean over `splits` random half/half splits of the ID
/// energies themselves (seeded), and the fraction of each OOD set rejected. Energies are the
/// reports' own (at the bundle's temperature); unscored frames count as rejected.
pub fn conformal_rows(
    calibration_energies: &[f32],
    alphas: &[f32],
    id: &[FrameReport],
    ood: &[&[FrameReport]],
    splits: usize,
) -> Vec<ConformalRow> {
    let energy = |r: &FrameReport| r.scores.map(|s| s.energy).unwrap_or(f32::NAN);
    let id_e: Vec<f32> = id.iter().map(energy).collect();
    let id_finite: Vec<f32> = id_e.iter().copied().filter(|e| e.is_finite()).collect();
    alphas
        .iter()
        .filter(|&&a| crate::calibration::check_alpha(calibration_energies.len(), a).is_ok())
        .map(|&alpha| {
            let fr = false_rejection(calibration_energies, &id_e, alpha);
            let enough = splits > 0 && crate::calibration::check_alpha(id_finite.len() / 2, alpha).is_ok();
            let sc = enough.then(|| split_conformal_check(&id_finite, alpha, splits, 0));
            ConformalRow {
                alpha,
                threshold: crate::core::conformal::conformal_quantile(calibration_energies, alpha),
                id_rejected: fr.rate,
                id_rejected_interval: wilson_interval(fr.rejected, fr.n),
                split_mean: sc.map(|c| c.mean),
                split_sd: sc.map(|c| c.sd),
                splits,
                ood_rejected: ood
                    .iter()
                    .map(|o| {
                        let e: Vec<f32> = o.iter().map(energy).collect();
                        false_rejection(calibration_energies, &e, alpha).rate
                    })
                    .collect(),
            }
        })
        .collect()
}

/// Coverage and mean size of the LAC prediction sets at each of `alphas` on the labelled ID
/// frames; empty when unlabelled or some frame is unscored.
pub fn set_rows(id: &[FrameReport], temperature: f32, sorted_scores: &[f32], alphas: &[f32]) -> Vec<SetRow> {
    let Some((logits, labels, k)) = labelled_logits(id) else { return Vec::new() };
    alphas
        .iter()
        .filter(|&&a| crate::calibration::check_alpha(sorted_scores.len(), a).is_ok())
        .filter_map(|&a| prediction_set_summary(&logits, k, &labels, temperature as f64, sorted_scores, a).ok())
        .map(|s| SetRow { alpha: s.alpha, coverage: s.coverage, mean_size: s.mean_size })
        .collect()
}

/// Summarises one OOD set against the ID set's reports, for each score in `scores`. The metrics
/// use the frames that were scored; the others are counted in `errors`.
///
/// # Errors
/// A message when either set has no scored frame.
pub fn summarise_ood<'a>(
    name: &str,
    path: &str,
    id: &'a [FrameReport],
    ood: &'a [FrameReport],
    scores: &[&str],
) -> Result<OodSummary, crate::metrics::MetricsError> {
    // Metrics compare scored frames only: a frame that could not be decoded says nothing about
    // the score (it is counted in `errors`, and the gate rejects it).
    let scored = |r: &'a [FrameReport]| -> Vec<&'a FrameReport> { r.iter().filter(|x| x.scores.is_some()).collect() };
    let (id_s, ood_s) = (scored(id), scored(ood));
    let mut metrics = Vec::new();
    for &score in scores {
        let m = OodMetrics::compute(&score_values(&id_s, score), &score_values(&ood_s, score))?;
        metrics.push(ScoreMetrics {
            score: score.into(),
            auroc: m.auroc,
            aupr_in: m.aupr_in,
            aupr_out: m.aupr_out,
            fpr_at_95_tpr: m.fpr_at_95_tpr,
        });
    }
    Ok(OodSummary {
        name: name.into(),
        path: path.into(),
        n: ood.len(),
        errors: ood.iter().filter(|r| r.scores.is_none()).count(),
        accepted: accepted(ood),
        mean_energy: mean_energy(ood),
        metrics,
    })
}
