//! `eval`: ID accuracy and OOD-detection metrics for each score, from scored frames.
//!
//! Scores compared, all "higher = more in-distribution": `energy` (`-E(x)` at the bundle's
//! temperature, Liu et al. 2020), `msp` (max softmax probability at `T = 1`), `max_logit`, and
//! `energy_t1` (`-E(x)` at `T = 1`, the setting of Liu et al.) when the bundle's temperature is
//! not 1. A frame that could not be scored is left out of the metrics and counted in `errors`;
//! the gate's rates (accepted, rejected) count it as rejected, as the gate does.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::calibrate::calibration_frames;
use crate::calibration::{
    false_rejection, prediction_set_summary, split_conformal_check, wilson_interval, CHECK_ALPHAS,
};
use crate::core::energy::free_energy;
use crate::core::gate::Verdict;
use crate::error::{Error, Result};
use crate::metrics::{accuracy, CalibrationMetrics, OodMetrics};
use crate::pipeline::{stack_logits, EnergyGate, FrameReport};
use crate::source::collect_with;

/// An OOD-detection score `eval` compares; each is "higher = more in-distribution".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoreKind {
    /// `-E(x)` at the bundle's temperature (Liu et al. 2020).
    Energy,
    /// Maximum softmax probability at `T = 1` (Hendrycks & Gimpel 2017).
    Msp,
    /// The largest logit (Hendrycks et al. 2022).
    MaxLogit,
    /// `-E(x)` at `T = 1`, Liu et al.'s setting.
    EnergyT1,
}

impl ScoreKind {
    /// All scores, in report order.
    pub const ALL: [ScoreKind; 4] = [ScoreKind::Energy, ScoreKind::Msp, ScoreKind::MaxLogit, ScoreKind::EnergyT1];

    /// The name in reports and JSON: `energy`, `msp`, `max_logit`, `energy_t1`.
    pub fn as_str(self) -> &'static str {
        match self {
            ScoreKind::Energy => "energy",
            ScoreKind::Msp => "msp",
            ScoreKind::MaxLogit => "max_logit",
            ScoreKind::EnergyT1 => "energy_t1",
        }
    }

    /// The scores worth reporting at `temperature`: `energy_t1` only when `T != 1` (else it is
    /// `energy`).
    pub fn reported(temperature: f32) -> Vec<ScoreKind> {
        ScoreKind::ALL.into_iter().filter(|&s| s != ScoreKind::EnergyT1 || temperature != 1.0).collect()
    }

    /// This score's value per frame; NaN for a frame that was not scored.
    fn values(self, reports: &[&FrameReport]) -> Vec<f32> {
        reports
            .iter()
            .map(|r| match (&r.scores, &r.logits) {
                (Some(s), Some(z)) => match self {
                    ScoreKind::Energy => -s.energy,
                    ScoreKind::Msp => s.msp,
                    ScoreKind::MaxLogit => s.max_logit,
                    ScoreKind::EnergyT1 => free_energy(z, 1.0).map(|e| -e).unwrap_or(f32::NAN),
                },
                _ => f32::NAN,
            })
            .collect()
    }
}

impl std::fmt::Display for ScoreKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
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
    /// The score.
    pub score: ScoreKind,
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

/// What a multi-score gate ([`crate::pipeline::MultiScoreGate`]) rejected in one set.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ScoresRejection {
    /// `"ID"` or the OOD set's name.
    pub set: String,
    /// Frames in the set.
    pub n: usize,
    /// Fraction rejected by the gate (the combined verdict; frames that could not be scored
    /// count as rejected).
    pub rejected: f64,
    /// Per score combined (in the gate's order), the fraction of frames whose strangeness in
    /// that score alone is above the level (the frame's `rejected_by` names it). A frame can
    /// count for several scores.
    pub by_score: Vec<ScoreShare>,
}

/// One score's share of a set's rejections ([`ScoresRejection::by_score`]).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ScoreShare {
    /// The score's name ([`crate::core::health::ScoreKind::name`]).
    pub score: String,
    /// Fraction of the set's frames it puts over the level.
    pub rejected: f64,
}

/// The rejections of a multi-score gate combining `kinds` in one set of judged frames.
pub fn scores_rejection(
    set: &str,
    reports: &[FrameReport],
    kinds: &[crate::core::health::ScoreKind],
) -> ScoresRejection {
    let n = reports.len();
    let frac = |c: usize| if n == 0 { 0.0 } else { c as f64 / n as f64 };
    let rejected = reports.iter().filter(|r| r.verdict != Some(Verdict::InDistribution)).count();
    let by_score = kinds
        .iter()
        .map(|&k| {
            let c = reports.iter().filter(|r| r.multi.as_ref().is_some_and(|m| m.rejected_by.contains(&k))).count();
            ScoreShare { score: k.name().to_string(), rejected: frac(c) }
        })
        .collect();
    ScoresRejection { set: set.to_string(), n, rejected: frac(rejected), by_score }
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
    /// The multi-score gate's rejections per set, ID first, and per score (empty without
    /// `--scores`).
    pub scores_rejection: Vec<ScoresRejection>,
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
    scores: &[ScoreKind],
) -> Result<OodSummary, crate::metrics::MetricsError> {
    // Metrics compare scored frames only: a frame that could not be decoded says nothing about
    // the score (it is counted in `errors`, and the gate rejects it).
    let scored = |r: &'a [FrameReport]| -> Vec<&'a FrameReport> { r.iter().filter(|x| x.scores.is_some()).collect() };
    let (id_s, ood_s) = (scored(id), scored(ood));
    let mut metrics = Vec::new();
    for &score in scores {
        let m = OodMetrics::compute(&score.values(&id_s), &score.values(&ood_s))?;
        metrics.push(ScoreMetrics {
            score,
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

/// Keeps `n` of `items` spread evenly over them (every k-th in order, so an ImageFolder set
/// keeps all its classes); all of them when `n` is `None` or at least their number.
pub fn spread_evenly<T>(items: Vec<T>, n: Option<usize>) -> Vec<T> {
    match n {
        Some(n) if n < items.len() => {
            let len = items.len();
            items.into_iter().enumerate().filter(|(i, _)| i * n / len != (i + 1) * n / len).map(|(_, x)| x).collect()
        }
        _ => items,
    }
}

/// Settings of [`evaluate`].
#[derive(Debug, Clone, PartialEq)]
pub struct EvalOptions {
    /// Use at most this many frames of each set, spread evenly over it ([`spread_evenly`]).
    pub limit: Option<usize>,
    /// Random half/half splits of the ID energies for the split-conformal check (at least 1).
    pub splits: usize,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions { limit: None, splits: 100 }
    }
}

/// Progress of [`evaluate`], for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EvalProgress<'a> {
    /// The sets are read: this many frames will be scored.
    Start {
        /// Frames in all sets.
        total: usize,
    },
    /// Scoring of a set begins (`ID`, or an OOD set's name).
    Set(&'a str),
    /// This many more frames were scored.
    Frames(usize),
}

/// A set in which some frames could not be scored (they are left out of the metrics; the gate
/// rejects them).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Unscored {
    /// `ID` or the OOD set's name.
    pub set: String,
    /// Frames that could not be scored.
    pub count: usize,
    /// Frames in the set.
    pub of: usize,
    /// The first one's error.
    pub first_error: String,
}

/// Everything an [`evaluate`] run produced: the report and each frame's result.
#[derive(Debug, Clone)]
pub struct EvalRun {
    /// The report (`eval --json` writes it).
    pub report: EvalReport,
    /// Each ID frame's result (the frames that calibrated the gate left out).
    pub id_frames: Vec<FrameReport>,
    /// Each OOD set's frames' results, in the order of the sets.
    pub ood_frames: Vec<Vec<FrameReport>>,
    /// Sets with frames that could not be scored.
    pub unscored: Vec<Unscored>,
    /// Frames scored in all sets.
    pub frames: usize,
    /// Seconds spent decoding and scoring.
    pub elapsed_s: f64,
}

/// Scores an in-distribution folder and OOD sets with `gate` and measures everything `eval`
/// reports: accuracy, each score's AUROC / AUPR / FPR@95TPR per OOD set, probability
/// calibration, the conformal gate's false rejection at [`CHECK_ALPHAS`] (and the gate's own
/// alpha), prediction-set coverage.
///
/// Frames of `id` that calibrated the gate (recorded in gate.json's split) are left out first,
/// since the checks need held-out frames; then `limit` applies to each set.
///
/// # Errors
/// [`Error::Io`] when a set cannot be read; [`Error::NoFrames`] when a set has no image files,
/// or an OOD set no frame that could be scored.
pub fn evaluate(
    gate: &mut EnergyGate,
    id: &Path,
    ood: &[(String, PathBuf)],
    options: &EvalOptions,
    mut progress: impl FnMut(EvalProgress<'_>),
) -> Result<EvalRun> {
    let names = gate.class_names().to_vec();
    let no_frames = |set: &str, path: &Path, problem| Error::NoFrames { set: set.into(), path: path.into(), problem };
    // A set that does not exist is a mistyped path, not a set of unreadable frames.
    if !id.exists() {
        return Err(no_frames("ID set", id, "no such file or folder"));
    }
    if let Some((name, path)) = ood.iter().find(|(_, p)| !p.exists()) {
        return Err(no_frames(&format!("OOD set {name}"), path, "no such file or folder"));
    }
    let limits = *gate.limits();
    let all_id = collect_with(&[id.to_path_buf()], Some(&names), &limits)?;
    let (all_id, excluded) = match gate.gate_file().and_then(|g| calibration_frames(g, id, &all_id)) {
        Some(mask) => {
            let excluded = mask.iter().filter(|m| **m).count();
            (all_id.into_iter().zip(mask).filter(|(_, m)| !m).map(|(it, _)| it).collect(), excluded)
        }
        None => (all_id, 0),
    };
    let id_items = spread_evenly(all_id, options.limit);
    if id_items.is_empty() {
        return Err(no_frames("ID set", id, "no image files found"));
    }
    let mut ood_items = Vec::new();
    for (name, path) in ood {
        let items = spread_evenly(collect_with(std::slice::from_ref(path), None, &limits)?, options.limit);
        if items.is_empty() {
            return Err(no_frames(&format!("OOD set {name}"), path, "no image files found"));
        }
        ood_items.push(items);
    }
    let frames = id_items.len() + ood_items.iter().map(Vec::len).sum::<usize>();
    progress(EvalProgress::Start { total: frames });
    let t0 = std::time::Instant::now();
    progress(EvalProgress::Set("ID"));
    let id_frames = gate.score_items(&id_items, |n| progress(EvalProgress::Frames(n)));
    let mut ood_frames = Vec::new();
    for ((name, _), items) in ood.iter().zip(&ood_items) {
        progress(EvalProgress::Set(name));
        ood_frames.push(gate.score_items(items, |n| progress(EvalProgress::Frames(n))));
    }
    let elapsed_s = t0.elapsed().as_secs_f64();

    let st = gate.settings().clone();
    let scores = ScoreKind::reported(st.temperature);
    let mut ood_summaries = Vec::new();
    for ((name, path), reports) in ood.iter().zip(&ood_frames) {
        let summary = summarise_ood(name, &path.display().to_string(), &id_frames, reports, &scores)
            .map_err(|_| no_frames(&format!("OOD set {name}"), path, "no frame could be scored"))?;
        ood_summaries.push(summary);
    }
    let unscored = std::iter::once(("ID", &id_frames))
        .chain(ood.iter().map(|(n, _)| n.as_str()).zip(&ood_frames))
        .filter_map(|(set, reports)| {
            let failed: Vec<&FrameReport> = reports.iter().filter(|r| r.scores.is_none()).collect();
            failed.first().map(|first| Unscored {
                set: set.into(),
                count: failed.len(),
                of: reports.len(),
                first_error: first.error.clone().unwrap_or_else(|| "non-finite energy".into()),
            })
        })
        .collect();
    let mut id_summary = summarise_id(&id.display().to_string(), &id_frames);
    id_summary.excluded_calibration_frames = excluded;
    let ood_refs: Vec<&[FrameReport]> = ood_frames.iter().map(Vec::as_slice).collect();
    let mut alphas = CHECK_ALPHAS.to_vec();
    if let Some(a) = st.alpha.filter(|a| !alphas.contains(a)) {
        alphas.push(a);
    }
    let lac = gate.gate_file().and_then(|g| g.prediction_sets.as_ref()).map(|p| p.calibration_scores.clone());
    let report = EvalReport {
        model: gate.paths().model.display().to_string(),
        temperature: st.temperature,
        threshold: st.energy_threshold(),
        id: id_summary,
        ood: ood_summaries,
        calibration: probability_calibration(&id_frames, st.temperature),
        conformal: conformal_rows(&st.calibration_energies, &alphas, &id_frames, &ood_refs, options.splits),
        prediction_sets: lac.map(|l| set_rows(&id_frames, st.temperature, &l, &CHECK_ALPHAS)).unwrap_or_default(),
        scores_rejection: match &st.multi {
            Some(m) => std::iter::once(("ID", &id_frames))
                .chain(ood.iter().map(|(n, _)| n.as_str()).zip(&ood_frames))
                .map(|(set, reports)| scores_rejection(set, reports, &m.kinds))
                .collect(),
            None => Vec::new(),
        },
    };
    Ok(EvalRun { report, id_frames, ood_frames, unscored, frames, elapsed_s })
}

#[cfg(test)]
mod tests {
    use super::spread_evenly;

    #[test]
    fn spread_evenly_keeps_n_spread_over_the_set() {
        let v: Vec<usize> = (0..10).collect();
        // kept: the i with floor(i n / len) != floor((i + 1) n / len), i.e. i = ceil(j len / n) - 1
        // for j = 1..=n: ceil(2.5) - 1, ceil(5) - 1, ceil(7.5) - 1, ceil(10) - 1 for n = 4, len = 10
        assert_eq!(spread_evenly(v.clone(), Some(4)), [2, 4, 7, 9]);
        assert_eq!(spread_evenly(v.clone(), Some(1)), [9]);
        assert_eq!(spread_evenly(v.clone(), Some(10)), v);
        assert_eq!(spread_evenly(v.clone(), Some(50)), v);
        assert_eq!(spread_evenly(v.clone(), None), v);
        // every class of an ImageFolder set sorted by class keeps its share
        let classes: Vec<usize> = (0..100).map(|i| i / 10).collect();
        let kept = spread_evenly(classes, Some(20));
        assert_eq!(kept.len(), 20);
        assert!((0..10).all(|c| kept.iter().filter(|&&k| k == c).count() == 2), "{kept:?}");
    }
}
