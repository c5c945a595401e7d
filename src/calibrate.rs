//! `calibrate` on a bundle: score a folder of in-distribution frames, split it, fit `T`, the
//! conformal gate and the prediction sets, and build the new `gate.json`.

use std::path::{Component, Path};

use std::collections::BTreeMap;

use crate::bundle::{
    GateFile, GateSpec, PredictionSets, Provenance, ScoreFit, ScoresSpec, SplitSpec, FORMAT_VERSION, SCORES_VERSION,
};
use crate::calibration::{
    check_alpha, conformal_quantile, false_rejection, fit_temperature, is_held_out, lac_scores, prediction_set_summary,
    sorted_energies, wilson_interval, CalibrationError, FalseRejection, SetSummary, TemperatureFit, CHECK_ALPHAS,
};
use crate::core::conformal::exponential_tail_scale;
use crate::core::energy::free_energy;
use crate::core::health::ScoreKind;
use crate::error::{Error, Result};
use crate::metrics::CalibrationMetrics;
use crate::pipeline::MultiScoreGate;
use crate::pipeline::{stack_logits, EnergyGate, FrameReport};
use crate::source::FrameItem;

/// Settings of [`calibrate`].
#[derive(Debug, Clone, PartialEq)]
pub struct CalibrateOptions {
    /// Level of the conformal gate stored in `gate.json` (reject when `p <= alpha`).
    pub alpha: f32,
    /// Fraction of the folder held out for the before/after report, in `[0, 1)`.
    pub holdout: f64,
    /// Seed of the split ([`is_held_out`]).
    pub seed: u64,
    /// The folder, as the user named it; recorded in the provenance.
    pub data: String,
    /// The folder on disk, against which frame names are made relative for the split.
    pub root: std::path::PathBuf,
    /// The scores the gate combines (`None`: the energy alone, and no `scores` section is
    /// written). With a health score, every score is fitted on two halves of the calibration
    /// frames (split `seed + 1`) and stored; the gate must compute health scores
    /// ([`crate::pipeline::Overrides::health_scores`]).
    pub scores: Option<Vec<ScoreKind>>,
}

/// What [`calibrate`] fitted and measured.
#[derive(Debug, Clone, PartialEq)]
pub struct CalibrationOutcome {
    /// The new `gate.json` contents (not yet written).
    pub gate_file: GateFile,
    /// Frames in the folder.
    pub n_total: usize,
    /// Frames used for calibration.
    pub n_calibration: usize,
    /// Frames held out.
    pub n_held_out: usize,
    /// Whether every frame had a class label (ImageFolder layout with the bundle's class names).
    pub labelled: bool,
    /// The temperature fit, on labelled data.
    pub fit: Option<TemperatureFit>,
    /// Calibration of the probabilities at `T = 1` (before) and at the fitted `T` (after),
    /// measured on the held-out frames (on the calibration frames when none are held out).
    pub before_after: Option<(CalibrationMetrics, CalibrationMetrics)>,
    /// Whether `before_after` was measured on held-out frames.
    pub measured_on_held_out: bool,
    /// The conformal energy threshold at `alpha`.
    pub threshold: f32,
    /// False-rejection rate on the held-out frames at [`CHECK_ALPHAS`] and `alpha`.
    pub false_rejection: Vec<FalseRejection>,
    /// Prediction-set coverage and size on the held-out frames at [`CHECK_ALPHAS`].
    pub prediction_sets: Vec<SetSummary>,
    /// With `scores`: frames in the two halves `(fit, combine)` of the calibration frames.
    pub scores_split: Option<(usize, usize)>,
    /// With `scores`: the multi-score gate's false rejection on the held-out frames at
    /// [`CHECK_ALPHAS`] and `alpha`.
    pub scores_false_rejection: Vec<FalseRejection>,
    /// The model's normalisation was never stated ([`crate::bundle::Normalization::Unset`]: a
    /// bare `.onnx`, or `init` without normalisation): frames were fed in `[0, 1]` with mean 0
    /// and std 1, which a model trained otherwise does not expect.
    pub normalization_unset: bool,
}

/// A frame's path relative to `root`, with `/` separators; the whole name when it is not
/// under `root` (an IDX frame, say).
pub fn relative_name(root: &Path, name: &str) -> String {
    match Path::new(name).strip_prefix(root) {
        Ok(rel) => rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/"),
        Err(_) => name.to_string(),
    }
}

/// `true` for each frame in the held-out part of the split ([`is_held_out`] of its
/// [`relative_name`]).
pub fn held_out_mask(items: &[FrameItem], root: &Path, holdout: f64, seed: u64) -> Vec<bool> {
    items.iter().map(|it| is_held_out(&relative_name(root, &it.name), holdout, seed)).collect()
}

/// Whether `folder` is the data a bundle was calibrated on: the same folder once both are made
/// absolute, or `folder` ends with the named components of the recorded path (so
/// `../shared/data/cifar10/test` recorded elsewhere matches `/x/shared/data/cifar10/test`).
pub fn is_calibration_data(provenance: &Provenance, folder: &Path) -> bool {
    let recorded = Path::new(&provenance.data);
    let Ok(here) = folder.canonicalize() else { return false };
    if recorded.canonicalize().is_ok_and(|r| r == here) {
        return true;
    }
    let named: Vec<_> = recorded.components().filter(|c| matches!(c, Component::Normal(_))).collect();
    let here_c: Vec<_> = here.components().collect();
    !named.is_empty() && here_c.len() >= named.len() && here_c[here_c.len() - named.len()..] == named[..]
}

/// The frames of `items` (listed from `folder`) that calibrated the bundle: `Some(mask)` with
/// `true` for calibration frames when the bundle's provenance records a split of this folder.
pub fn calibration_frames(gate_file: &GateFile, folder: &Path, items: &[FrameItem]) -> Option<Vec<bool>> {
    let prov = gate_file.provenance.as_ref()?;
    let split = prov.split.as_ref()?;
    if !is_calibration_data(prov, folder) {
        return None;
    }
    Some(held_out_mask(items, folder, split.holdout, split.seed).into_iter().map(|h| !h).collect())
}

/// Scores `items` (in-distribution frames from `opts.root`) through `gate`, splits them, and
/// fits the gate:
///
/// 1. frames with [`is_held_out`] (`opts.holdout`, `opts.seed`) are held out; the rest
///    calibrate;
/// 2. with labels, `T` is fitted by NLL on the calibration frames ([`fit_temperature`]) and
///    NLL / ECE / MCE / Brier at `T = 1` and at `T` are measured on the held-out frames; without
///    labels the bundle's temperature is kept;
/// 3. the calibration energies at `T`, sorted, and the conformal threshold at `opts.alpha`;
/// 4. with labels, the LAC prediction-set scores;
/// 5. false-rejection rates and set coverage on the held-out frames.
///
/// `progress(k)` is called as frames are scored.
///
/// # Errors
/// [`Error::Invalid`] naming the folder and every frame that cannot be scored, with its reason
/// (calibration data must be clean), when a frame's energy is not finite, when there are too few calibration frames for
/// `alpha` (`n + 1 < 1 / alpha`), or when `holdout` is not in `[0, 1)`.
pub fn calibrate(
    gate: &mut EnergyGate,
    items: &[FrameItem],
    opts: &CalibrateOptions,
    progress: impl FnMut(usize),
) -> Result<CalibrationOutcome> {
    let bad = |m: String| Error::Invalid(format!("calibrate on {}: {m}", opts.data));
    if !(0.0..1.0).contains(&opts.holdout) {
        return Err(bad(format!("--holdout must be in [0, 1), got {}", opts.holdout)));
    }
    if items.is_empty() {
        return Err(bad("no image files found".into()));
    }
    let held = held_out_mask(items, &opts.root, opts.holdout, opts.seed);
    let n_cal = held.iter().filter(|h| !**h).count();
    check_alpha(n_cal, opts.alpha).map_err(|e| bad(e.to_string()))?;
    let reports = gate.score_items(items, progress);
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| r.scores.is_none())
        .map(|r| match &r.error {
            Some(e) => e.clone(), // names the file
            None => format!("{}: non-finite energy", r.name),
        })
        .collect();
    if !failed.is_empty() {
        return Err(bad(format!(
            "{} of {} frames could not be scored, and calibration data must score cleanly (remove or fix \
             them):\n  {}",
            failed.len(),
            reports.len(),
            failed.join("\n  ")
        )));
    }
    let k = gate.class_names().len();
    let cal: Vec<&FrameReport> = reports.iter().zip(&held).filter(|(_, h)| !**h).map(|(r, _)| r).collect();
    let hold: Vec<&FrameReport> = reports.iter().zip(&held).filter(|(_, h)| **h).map(|(r, _)| r).collect();
    let labelled = reports.iter().all(|r| r.label.is_some());
    // Every frame was scored (checked above); labels are used only when all frames have one.
    let (cal_logits, cal_labels) = stack_logits(cal.iter().copied());
    let (hold_logits, hold_labels) = stack_logits(hold.iter().copied());
    let (cal_labels, hold_labels) = (cal_labels.unwrap_or_default(), hold_labels.unwrap_or_default());
    let measured_on_held_out = !hold.is_empty();
    let (eval_logits, eval_labels) =
        if measured_on_held_out { (&hold_logits, &hold_labels) } else { (&cal_logits, &cal_labels) };

    let (fit, temperature) = if labelled {
        let fit = fit_temperature(&cal_logits, k, &cal_labels).map_err(|e| bad(e.to_string()))?;
        (Some(fit), fit.temperature as f32)
    } else if gate.settings().gate_set_aside.is_some() {
        // A new model: the old temperature belonged to the old one.
        (None, 1.0)
    } else {
        (None, gate.settings().temperature)
    };
    let before_after = match fit {
        Some(f) => Some((
            CalibrationMetrics::from_logits(eval_logits, k, eval_labels, 1.0).map_err(|e| bad(e.to_string()))?,
            CalibrationMetrics::from_logits(eval_logits, k, eval_labels, f.temperature)
                .map_err(|e| bad(e.to_string()))?,
        )),
        None => None,
    };
    let energies =
        sorted_energies(&cal_logits, k, temperature).map_err(|e| bad(format!("{e} ({})", cal_name(&cal, &e))))?;
    let threshold = conformal_quantile(&energies, opts.alpha)
        .ok_or_else(|| bad(format!("too few calibration frames ({}) for alpha {}", energies.len(), opts.alpha)))?;
    let lac = if labelled {
        Some(lac_scores(&cal_logits, k, &cal_labels, temperature as f64).map_err(|e| bad(e.to_string()))?)
    } else {
        None
    };

    let mut false_rej = Vec::new();
    let mut sets = Vec::new();
    if measured_on_held_out {
        let held_energies = sorted_energies(&hold_logits, k, temperature).map_err(|e| bad(e.to_string()))?;
        let mut alphas = CHECK_ALPHAS.to_vec();
        if !alphas.contains(&opts.alpha) {
            alphas.push(opts.alpha);
        }
        for &a in &alphas {
            if check_alpha(energies.len(), a).is_ok() {
                false_rej.push(false_rejection(&energies, &held_energies, a));
            }
        }
        if let Some(scores) = &lac {
            for &a in &CHECK_ALPHAS {
                if check_alpha(scores.len(), a).is_ok() {
                    sets.push(
                        prediction_set_summary(&hold_logits, k, &hold_labels, temperature as f64, scores, a)
                            .map_err(|e| bad(e.to_string()))?,
                    );
                }
            }
        }
    }

    let (scores_spec, scores_split, scores_false_rejection) = match &opts.scores {
        Some(kinds) if kinds.iter().any(|&k| k != ScoreKind::Energy) => {
            let (spec, split) = fit_scores(&cal, kinds, temperature, opts).map_err(bad)?;
            let mut rej = Vec::new();
            if measured_on_held_out {
                let mut alphas = CHECK_ALPHAS.to_vec();
                if !alphas.contains(&opts.alpha) {
                    alphas.push(opts.alpha);
                }
                for a in alphas {
                    let Ok(multi) = MultiScoreGate::new(&spec, kinds, a) else { continue };
                    let rejected = hold
                        .iter()
                        .filter(|r| {
                            let e = r.logits.as_deref().map_or(Ok(f32::NAN), |l| free_energy(l, temperature));
                            multi.judge(e.unwrap_or(f32::NAN), r.health.as_ref()).combined > multi.level
                        })
                        .count();
                    let n = hold.len();
                    rej.push(FalseRejection {
                        alpha: a,
                        n,
                        rejected,
                        rate: rejected as f64 / n as f64,
                        interval: wilson_interval(rejected, n),
                    });
                }
            }
            (Some(spec), Some(split), rej)
        }
        _ => (None, None, Vec::new()),
    };

    let model_sha256 = gate.model_sha256().to_string();
    let mut gate_file = gate.gate_file().cloned().unwrap_or_else(|| GateFile {
        format_version: FORMAT_VERSION,
        input: gate.input().clone(),
        class_names: gate.class_names().to_vec(),
        temperature: 1.0,
        gate: None,
        prediction_sets: None,
        provenance: None,
        gradient: None,
        scores: None,
        logits_output: None,
    });
    gate_file.scores = scores_spec;
    gate_file.temperature = temperature;
    gate_file.gate = Some(GateSpec {
        score: "energy".into(),
        threshold,
        // 1 - alpha, rounded to 1e-6 (f32 precision) so an alpha of 0.05 is stored as 0.95.
        target_tpr: ((1.0 - opts.alpha as f64) * 1e6).round() / 1e6,
        alpha: Some(opts.alpha),
        calibration_energies: energies,
    });
    gate_file.prediction_sets =
        lac.map(|calibration_scores| PredictionSets { method: "lac".into(), calibration_scores });
    gate_file.provenance = Some(Provenance {
        model_sha256,
        data: opts.data.clone(),
        n: n_cal,
        created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        tool: format!("ebm-gate {} calibrate", env!("CARGO_PKG_VERSION")),
        split: Some(SplitSpec { holdout: opts.holdout, seed: opts.seed, n_total: items.len(), n_held_out: hold.len() }),
    });
    Ok(CalibrationOutcome {
        gate_file,
        n_total: items.len(),
        n_calibration: n_cal,
        n_held_out: hold.len(),
        labelled,
        fit,
        before_after,
        measured_on_held_out,
        threshold,
        false_rejection: false_rej,
        prediction_sets: sets,
        scores_split,
        scores_false_rejection,
        normalization_unset: gate.input().normalization == crate::bundle::Normalization::Unset,
    })
}

/// Fewest subfolders for which [`split_key`] keeps each subfolder on one side of the
/// fit/combine split; with fewer (a few capture sessions), frames are split one by one, so
/// that each session is in both halves.
pub const MIN_SPLIT_GROUPS: usize = 8;

/// What decides a frame's side of the fit/combine split: its name in a labelled folder; in an
/// unlabelled one with at least [`MIN_SPLIT_GROUPS`] subfolders (`grouped`), its subfolder, so
/// the frames of one scene (near-copies) stay on one side, as new frames from another scene
/// are on another (the halves must be exchangeable with the frames to come); otherwise its
/// name: a few capture sessions, each in its own folder, must each be in both halves.
pub fn split_key(relative: &str, labelled: bool, grouped: bool) -> String {
    match relative.rsplit_once('/') {
        Some((folder, _)) if !labelled && grouped => folder.to_string(),
        _ => relative.to_string(),
    }
}

/// Fits every score on the calibration frames `cal` (each with its health scores), split in
/// two by [`is_held_out`] of their [`split_key`] with seed `opts.seed + 1`: split A's sorted
/// values and tail scales, split B's values. Returns the spec (with `kinds` used) and the two
/// halves' sizes.
fn fit_scores(
    cal: &[&FrameReport],
    kinds: &[ScoreKind],
    temperature: f32,
    opts: &CalibrateOptions,
) -> std::result::Result<(ScoresSpec, (usize, usize)), String> {
    let seed = opts.seed.wrapping_add(1);
    let mut fit: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    let mut combine: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    let (mut n_a, mut n_b) = (0, 0);
    let folders: std::collections::BTreeSet<String> = cal
        .iter()
        .filter_map(|r| relative_name(&opts.root, &r.name).rsplit_once('/').map(|(f, _)| f.to_string()))
        .collect();
    let grouped = folders.len() >= MIN_SPLIT_GROUPS;
    for r in cal {
        let health = r.health.as_ref().ok_or_else(|| {
            format!("{}: no health scores (the gate was opened without Overrides::health_scores)", r.name)
        })?;
        let logits = r.logits.as_deref().ok_or_else(|| format!("{}: not scored", r.name))?;
        let energy = free_energy(logits, temperature).map_err(|e| format!("{}: {e}", r.name))?;
        let key = split_key(&relative_name(&opts.root, &r.name), r.label.is_some(), grouped);
        let in_b = is_held_out(&key, 0.5, seed);
        let side = if in_b { &mut combine } else { &mut fit };
        if in_b {
            n_b += 1;
        } else {
            n_a += 1;
        }
        for k in ScoreKind::ALL {
            let v = match k {
                ScoreKind::Energy => energy,
                _ => health.get(k).unwrap_or(f32::NAN),
            };
            if !v.is_finite() {
                return Err(format!("{}: {} is not finite ({v})", r.name, k.name()));
            }
            side.entry(k.name().to_string()).or_default().push(v);
        }
    }
    let need = (1.0 / opts.alpha).ceil() as usize;
    let groups = if grouped { format!(" (by subfolder: {} of them)", folders.len()) } else { String::new() };
    if n_a == 0 {
        return Err(format!(
            "--scores splits the {} calibration frames in two{groups}, and every frame fell in the combining half \
             ({n_b}), none to fit the scores: give frames from more scenes, or another --seed",
            cal.len()
        ));
    }
    if n_b + 1 < need {
        return Err(format!(
            "--scores splits the {} calibration frames in two{groups} ({n_a} fit each score, {n_b} combine them), and \
             the combining half needs at least {} frames for alpha {}: calibrate on more frames, lower --holdout, or \
             raise --alpha",
            cal.len(),
            need.saturating_sub(1),
            opts.alpha
        ));
    }
    let fit = fit
        .into_iter()
        .map(|(name, mut values)| {
            values.sort_by(f32::total_cmp);
            let kind = ScoreKind::from_name(&name).expect("fit holds ScoreKind names");
            let domain: Vec<f32> = values.iter().map(|&v| kind.tail_domain(v)).collect();
            let floor = kind.tail_scale_floor();
            let (upper_scale, lower_scale) =
                (exponential_tail_scale(&domain, true).max(floor), exponential_tail_scale(&domain, false).max(floor));
            (name, ScoreFit { values, upper_scale, lower_scale })
        })
        .collect();
    let mut used: Vec<ScoreKind> = kinds.to_vec();
    used.sort();
    used.dedup();
    let spec = ScoresSpec {
        version: SCORES_VERSION,
        used: used.iter().map(|k| k.name().to_string()).collect(),
        seed,
        fit,
        combine,
    };
    Ok((spec, (n_a, n_b)))
}

fn cal_name(cal: &[&FrameReport], e: &CalibrationError) -> String {
    match e {
        CalibrationError::NonFiniteEnergy { index } => cal.get(*index).map(|r| r.name.clone()).unwrap_or_default(),
        _ => String::new(),
    }
}
