//! `eval`: ID accuracy and OOD-detection metrics for each score, from scored frames.
//!
//! Scores compared, all "higher = more in-distribution": `energy` (`-E(x)` at the bundle's
//! temperature, Liu et al. 2020), `msp` (max softmax probability at `T = 1`), `max_logit`, and
//! `energy_t1` (`-E(x)` at `T = 1`, the setting of Liu et al.) when the bundle's temperature is
//! not 1. A frame that could not be scored counts as least in-distribution (rejected).

use serde::Serialize;

use crate::core::energy::free_energy;
use crate::core::gate::Verdict;
use crate::metrics::{accuracy, OodMetrics};
use crate::pipeline::FrameReport;

/// The scores `eval` compares, by name.
pub const SCORE_NAMES: [&str; 4] = ["energy", "msp", "max_logit", "energy_t1"];

/// One score's value per frame ("higher = more ID"); NaN for a frame that was not scored.
fn score_values(reports: &[FrameReport], score: &str) -> Vec<f32> {
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
    }
}

/// Summarises one OOD set against the ID set's reports, for each score in `scores`.
///
/// # Errors
/// A message when either set is empty.
pub fn summarise_ood(
    name: &str,
    path: &str,
    id: &[FrameReport],
    ood: &[FrameReport],
    scores: &[&str],
) -> Result<OodSummary, crate::metrics::MetricsError> {
    let mut metrics = Vec::new();
    for &score in scores {
        let m = OodMetrics::compute(&score_values(id, score), &score_values(ood, score))?;
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
