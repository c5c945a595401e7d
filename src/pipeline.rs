//! The whole job on a bundle: frames in, scores and verdicts out.
//!
//! frame -> decode -> resize/crop -> normalise -> tract forward (batched) -> logits ->
//! [`Scores`] (class, probability, energy, MSP, MaxLogit) -> conformal p-value -> [`Verdict`].
//!
//! Decoding runs on a second thread, a batch ahead of the forward pass. A frame that cannot be
//! decoded, or whose logits cannot be scored, is rejected with its reason and the run goes on.

use std::path::Path;
use std::sync::mpsc;

use crate::bundle::ScoresSpec;
use crate::bundle::{sha256_file, BundlePaths, Color, GateFile, InputSpec};
use crate::core::check;
use crate::core::conformal::{
    combined_score, conformal_quantile, in_prediction_set, p_value, strangeness, tail_p_value,
};
use crate::core::energy::Scores;
use crate::core::gate::{decide, Reason, Verdict};
use crate::core::health::ScoreKind;
use crate::error::{Error, Result};
use crate::frame::InputLimits;
use crate::health::{health_scores, HealthScores};
use crate::model::Model;
use crate::source::FrameItem;

/// Run-time settings that override `gate.json` (for example from command-line flags).
///
/// Which rule decides:
/// - `threshold` given: reject when `E(x) > threshold`; the bundle's `alpha` is ignored, an
///   `alpha` given here applies as well.
/// - otherwise, an `alpha` (given here, or the bundle's): the conformal gate, reject when
///   `p(x) <= alpha` (the same as `E(x)` above the conformal quantile of the calibration
///   energies at `alpha`).
/// - otherwise the bundle's threshold, if any; with none, frames are scored without verdicts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// Energy threshold to use instead of the bundle's gate.
    pub threshold: Option<f32>,
    /// Temperature to use instead of the bundle's. A different temperature sets the bundle's
    /// gate and prediction sets aside (they were fitted at the bundle's temperature).
    pub temperature: Option<f32>,
    /// Conformal significance level to use instead of the bundle's.
    pub alpha: Option<f32>,
    /// Level of the conformal prediction sets of classes; `None` = no sets.
    pub set_alpha: Option<f32>,
    /// Frames decoded and scored together (default 32).
    pub batch: Option<usize>,
    /// Most frames per tract run (`None`: the model's automatic choice, see
    /// [`crate::Model::forward_batch`]).
    pub forward_batch: Option<usize>,
    /// Threads a batch's frames run on ([`crate::Model::set_threads`]; default 1).
    pub threads: Option<usize>,
    /// Limits decoded frames are checked against (default [`InputLimits::default`]).
    pub limits: Option<InputLimits>,
    /// The scores the gate combines, instead of `gate.json`'s `scores.used` (`[Energy]` alone:
    /// the plain energy gate). Needs `gate.json` to have fitted them (`calibrate --scores`).
    pub scores: Option<Vec<ScoreKind>>,
    /// Compute every frame's health scores ([`FrameReport::health`]) even when the gate does
    /// not use them (`calibrate`, `eval` and `score` reports).
    pub health_scores: bool,
    /// Accept a `gate.json` written for another model (sha256 mismatch): keep its preprocessing
    /// and class names, set its gate and prediction sets aside. For recalibrating a retrained
    /// model; off by default, when such a bundle is refused.
    pub accept_new_model: bool,
}

/// The rule in force, `(threshold, alpha)`, from the overrides and the bundle's gate
/// `(threshold, alpha)` (`None` when the bundle has no gate, or it was set aside): the
/// precedence [`Overrides`] documents.
///
/// | `threshold` given | `alpha` given | result |
/// |---|---|---|
/// | `t` | `a` or none | `(t, a)`: both rules when `a` is given; the bundle's alpha is ignored |
/// | none | `a` | `(none, a)`: the conformal gate at `a` |
/// | none | none | the bundle's alpha if it has one, else the bundle's threshold, else no rule |
pub fn gate_rule(
    threshold: Option<f32>,
    alpha: Option<f32>,
    bundle: Option<(f32, Option<f32>)>,
) -> (Option<f32>, Option<f32>) {
    match threshold {
        Some(t) => (Some(t), alpha),
        None => match alpha.or(bundle.and_then(|(_, a)| a)) {
            Some(a) => (None, Some(a)),
            None => (bundle.map(|(t, _)| t), None),
        },
    }
}

/// The temperature in force: the one given, unless it is within 1e-4 (relative) of the
/// bundle's, which is then kept (a value typed from a printout, say, keeps the bundle's gate).
pub fn effective_temperature(given: Option<f32>, bundle: f32) -> f32 {
    match given {
        Some(t) if (t - bundle).abs() > 1e-4 * bundle => t,
        _ => bundle,
    }
}

/// The rule that decides a frame's verdict, from [`GateSettings::rule`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GateRule {
    /// No rule: frames are scored without verdicts.
    None,
    /// Reject when `E(x) > threshold`.
    Threshold(f32),
    /// The conformal gate: reject when the p-value over `n` calibration energies is `<= alpha`,
    /// the same as `E(x) > energy_threshold` (`None` when `n` is too small for `alpha`).
    Conformal {
        /// The level.
        alpha: f32,
        /// The energy the rule amounts to.
        energy_threshold: Option<f32>,
        /// Calibration energies.
        n: usize,
    },
    /// Both rules: reject when `E(x) > threshold` or the p-value is `<= alpha`.
    Both {
        /// The explicit threshold.
        threshold: f32,
        /// The conformal level.
        alpha: f32,
    },
    /// Several scores under one guarantee ([`MultiScoreGate`], its `kinds` in
    /// [`GateSettings::multi`]): reject when the combined p-value is `<= alpha`, the same as a
    /// combined score above `level`, or when `E(x) > threshold`.
    Combined {
        /// The level.
        alpha: f32,
        /// The combined score above which frames are rejected.
        level: f32,
        /// Frames of split B (the combined scores the p-value ranks against).
        n: usize,
        /// An explicit energy threshold applied as well.
        threshold: Option<f32>,
    },
}

/// Counts of frames by outcome, as `score`'s summary gives them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct VerdictCounts {
    /// Frames.
    pub frames: usize,
    /// Accepted as in-distribution.
    pub accepted: usize,
    /// Rejected (including frames that could not be scored).
    pub rejected: usize,
    /// Frames that could not be scored.
    pub unscored: usize,
}

impl VerdictCounts {
    /// Counts one more frame.
    pub fn add(&mut self, r: &FrameReport) {
        self.frames += 1;
        self.accepted += usize::from(r.verdict == Some(Verdict::InDistribution));
        self.rejected += usize::from(r.verdict == Some(Verdict::OutOfDistribution));
        self.unscored += usize::from(r.scores.is_none());
    }
}

/// The gate's effective settings after overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct GateSettings {
    /// Temperature `T` of probabilities and energy.
    pub temperature: f32,
    /// Explicit energy threshold in force: reject when `E(x) > threshold`.
    pub threshold: Option<f32>,
    /// Conformal level in force: reject when the p-value is `<= alpha`.
    pub alpha: Option<f32>,
    /// Calibration energies, ascending, for p-values.
    pub calibration_energies: Vec<f32>,
    /// Level of the conformal prediction sets, when asked for.
    pub set_alpha: Option<f32>,
    /// LAC quantile `q` of the prediction sets (`None` inside: every class), when asked for.
    pub set_quantile: Option<Option<f32>>,
    /// Why the bundle's gate was set aside, when it was (another temperature, another model).
    pub gate_set_aside: Option<String>,
    /// The multi-score gate in force, when `gate.json` fitted scores and more than the energy
    /// is used: it replaces the energy's p-value rule (an explicit threshold still applies).
    pub multi: Option<MultiScoreGate>,
    /// Whether frames' health scores are computed.
    pub health_scores: bool,
}

/// Several scores under one conformal guarantee at `alpha` (the rule:
/// [`crate::core::conformal`]'s module docs), built from `gate.json`'s [`ScoresSpec`].
#[derive(Debug, Clone, PartialEq)]
pub struct MultiScoreGate {
    /// The scores combined, in [`ScoreKind::ALL`] order.
    pub kinds: Vec<ScoreKind>,
    /// Split A per score (parallel to `kinds`).
    fits: Vec<ScoreTails>,
    /// Split B's combined scores, ascending.
    pub combined: Vec<f32>,
    /// The level.
    pub alpha: f32,
    /// The combined score above which frames are rejected: the conformal quantile of
    /// `combined` at `alpha`.
    pub level: f32,
}

/// One score's split A: its values ascending, the same in [`ScoreKind::tail_domain`], and the
/// tail scales (in that domain).
#[derive(Debug, Clone, PartialEq)]
struct ScoreTails {
    values: Vec<f32>,
    domain: Vec<f32>,
    upper_scale: f32,
    lower_scale: f32,
}

/// One frame judged by a [`MultiScoreGate`].
#[derive(Debug, Clone, PartialEq)]
pub struct MultiScoreJudgement {
    /// The scores combined, as the gate's `kinds`.
    pub kinds: Vec<ScoreKind>,
    /// Each score's conformal p-value over split A in its tail (parallel to the gate's `kinds`).
    pub p_values: Vec<f32>,
    /// Each score's strangeness (parallel to `kinds`).
    pub strangeness: Vec<f32>,
    /// The combined score `C = max strangeness`.
    pub combined: f32,
    /// Its conformal p-value over split B.
    pub p_value: f32,
    /// The scores whose strangeness is above the level (empty when accepted), strangest first.
    pub rejected_by: Vec<ScoreKind>,
}

impl MultiScoreGate {
    /// The gate combining `kinds` from `spec`, at `alpha`.
    ///
    /// # Errors
    /// A message when a score was not fitted, or split B is too small for `alpha`
    /// (`n_B + 1 < 1 / alpha`).
    pub fn new(spec: &ScoresSpec, kinds: &[ScoreKind], alpha: f32) -> std::result::Result<MultiScoreGate, String> {
        let mut kinds = kinds.to_vec();
        kinds.sort();
        kinds.dedup();
        let mut fits = Vec::with_capacity(kinds.len());
        let mut columns = Vec::with_capacity(kinds.len());
        for k in &kinds {
            let (Some(f), Some(c)) = (spec.fit.get(k.name()), spec.combine.get(k.name())) else {
                return Err(format!(
                    "gate.json has no calibration values for {}: run `ebm-gate calibrate --scores` with it",
                    k.name()
                ));
            };
            fits.push(ScoreTails {
                values: f.values.clone(),
                domain: f.values.iter().map(|&v| k.tail_domain(v)).collect(),
                upper_scale: f.upper_scale,
                lower_scale: f.lower_scale,
            });
            columns.push(c.as_slice());
        }
        let n_b = columns.first().map_or(0, |c| c.len());
        let mut gate = MultiScoreGate { kinds, fits, combined: Vec::new(), alpha, level: f32::INFINITY };
        let mut combined: Vec<f32> = (0..n_b)
            .map(|j| {
                let values: Vec<f32> = columns.iter().map(|c| c[j]).collect();
                gate.strangeness_of(&values).1
            })
            .collect();
        combined.sort_by(f32::total_cmp);
        gate.level = conformal_quantile(&combined, alpha).ok_or_else(|| {
            format!(
                "split B of the scores has {n_b} frames, too few for alpha = {alpha} (needs n + 1 >= 1 / alpha): \
                 calibrate on more frames or raise alpha"
            )
        })?;
        gate.combined = combined;
        Ok(gate)
    }

    /// The strangeness of each score (values parallel to `kinds`) and their maximum.
    fn strangeness_of(&self, values: &[f32]) -> (Vec<f32>, f32) {
        let c: Vec<f32> = self
            .kinds
            .iter()
            .zip(&self.fits)
            .zip(values)
            .map(|((k, t), &v)| strangeness(&t.domain, t.upper_scale, t.lower_scale, k.tail_domain(v), k.tail()))
            .collect();
        let m = combined_score(&c);
        (c, m)
    }

    /// Judges one frame from its energy and health scores (`None` when they could not be
    /// computed: the health scores then count as infinitely strange, so the frame is rejected).
    pub fn judge(&self, energy: f32, health: Option<&HealthScores>) -> MultiScoreJudgement {
        let values: Vec<f32> = self
            .kinds
            .iter()
            .map(|&k| match k {
                ScoreKind::Energy => energy,
                _ => health.and_then(|h| h.get(k)).unwrap_or(f32::NAN),
            })
            .collect();
        let (strangeness, combined) = self.strangeness_of(&values);
        let p_values = self
            .kinds
            .iter()
            .zip(&self.fits)
            .zip(&values)
            .map(|((k, t), &v)| tail_p_value(&t.values, v, k.tail()))
            .collect();
        let mut rejected: Vec<(f32, ScoreKind)> = if combined > self.level {
            strangeness.iter().zip(&self.kinds).filter(|(c, _)| **c > self.level).map(|(c, k)| (*c, *k)).collect()
        } else {
            Vec::new()
        };
        rejected.sort_by(|a, b| b.0.total_cmp(&a.0));
        MultiScoreJudgement {
            kinds: self.kinds.clone(),
            p_values,
            strangeness,
            combined,
            p_value: p_value(&self.combined, combined),
            rejected_by: rejected.into_iter().map(|(_, k)| k).collect(),
        }
    }

    /// Whether any combined score is a health score (frames' health must be computed).
    pub fn needs_health(&self) -> bool {
        self.kinds.iter().any(|&k| k != ScoreKind::Energy)
    }
}

impl GateSettings {
    /// The energy above which frames are rejected: the explicit threshold, or the conformal
    /// quantile of the calibration energies at `alpha` (when both are set, the lower). `None`
    /// when no rule is in force (scores only).
    pub fn energy_threshold(&self) -> Option<f32> {
        let conformal = self.alpha.and_then(|a| conformal_quantile(&self.calibration_energies, a));
        match (self.threshold, conformal) {
            (Some(t), Some(c)) => Some(t.min(c)),
            (t, c) => t.or(c),
        }
    }

    /// The rule in force, typed.
    pub fn rule(&self) -> GateRule {
        if let Some(m) = &self.multi {
            return GateRule::Combined {
                alpha: m.alpha,
                level: m.level,
                n: m.combined.len(),
                threshold: self.threshold,
            };
        }
        match (self.threshold, self.alpha) {
            (None, None) => GateRule::None,
            (Some(t), None) => GateRule::Threshold(t),
            (None, Some(alpha)) => GateRule::Conformal {
                alpha,
                energy_threshold: self.energy_threshold(),
                n: self.calibration_energies.len(),
            },
            (Some(threshold), Some(alpha)) => GateRule::Both { threshold, alpha },
        }
    }

    /// Whether frames get verdicts.
    pub fn gates(&self) -> bool {
        self.threshold.is_some() || self.alpha.is_some()
    }
}

/// What happened to one frame.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameReport {
    /// The frame's name (its path, or `FILE#index`).
    pub name: String,
    /// Class label from the ImageFolder layout, when known.
    pub label: Option<usize>,
    /// Logits `[K]`, when the frame was scored.
    pub logits: Option<Vec<f32>>,
    /// Scores, when the frame was scored.
    pub scores: Option<Scores>,
    /// Conformal p-value of the energy, when calibration energies are present.
    pub p_value: Option<f32>,
    /// Conformal prediction set (class indices, ascending), when `set_alpha` is set.
    pub prediction_set: Option<Vec<usize>>,
    /// The verdict; `None` only for a scored frame when no threshold is set.
    pub verdict: Option<Verdict>,
    /// Why the verdict.
    pub reason: Option<Reason>,
    /// The error message for a frame that could not be scored.
    pub error: Option<String>,
    /// The frame's health scores at its own resolution, when computed
    /// ([`GateSettings::health_scores`]).
    pub health: Option<HealthScores>,
    /// The multi-score gate's judgement, when one is in force.
    pub multi: Option<Box<MultiScoreJudgement>>,
}

impl FrameReport {
    /// A frame that could not be scored: rejected with `reason`, the message in `error`.
    pub(crate) fn failed(name: &str, label: Option<usize>, reason: Reason, error: String) -> FrameReport {
        FrameReport {
            name: name.to_string(),
            label,
            logits: None,
            scores: None,
            p_value: None,
            prediction_set: None,
            verdict: Some(Verdict::OutOfDistribution),
            reason: Some(reason),
            // Decoder messages may end in a newline; one line per frame reads better.
            error: Some(error.trim_end().to_string()),
            health: None,
            multi: None,
        }
    }
}

/// A loaded bundle ready to score frames.
#[derive(Debug)]
pub struct EnergyGate {
    model: Model,
    input: InputSpec,
    class_names: Vec<String>,
    settings: GateSettings,
    batch: usize,
    paths: BundlePaths,
    gate_file: Option<GateFile>,
    model_sha256: String,
    limits: InputLimits,
}

impl EnergyGate {
    /// Opens a bundle directory or an `.onnx` file (see [`BundlePaths::resolve`]), checks
    /// `gate.json` against the model, and builds the optimised plan.
    ///
    /// Without `gate.json` the input spec comes from the model ([`InputSpec::plain`]), classes
    /// are named `0..K-1`, `T = 1`, and there is no threshold unless overridden.
    ///
    /// # Errors
    /// [`Error::Bundle`] when `gate.json` is invalid, was made for another model (sha256
    /// mismatch), or disagrees with the model's input shape or class count; the errors of
    /// [`Model::load`]; [`Error::Invalid`] for a bad override.
    pub fn open(path: &Path, overrides: &Overrides) -> Result<EnergyGate> {
        let paths = BundlePaths::resolve(path)?;
        let gate_file = paths.gate.as_deref().map(GateFile::read).transpose()?;
        let model_sha256 = sha256_file(&paths.model)?;
        let mut model_changed = false;
        if let (Some(g), Some(gp)) = (&gate_file, &paths.gate) {
            if let Some(prov) = &g.provenance {
                let actual = &model_sha256;
                model_changed = !prov.model_sha256.is_empty() && prov.model_sha256 != *actual;
                if model_changed && !overrides.accept_new_model {
                    return Err(Error::Bundle {
                        path: gp.clone(),
                        message: format!(
                            "was made for a model with sha256 {}, but {} has sha256 {actual}; restore the model, or \
                             recalibrate for the new one with `ebm-gate calibrate {} --id DIR --new-model`",
                            prov.model_sha256,
                            paths.model.display(),
                            path.display()
                        ),
                    });
                }
            }
        }
        let batch = check::count_up_to("batch", overrides.batch.unwrap_or(32), check::MAX_BATCH)?;
        // gate.json's input size fixes the dimensions a model exported with a dynamic height and
        // width leaves open.
        let pin =
            gate_file.as_ref().map(|g| [g.input.color.channels(), g.input.height as usize, g.input.width as usize]);
        let logits_output = gate_file.as_ref().and_then(|g| g.logits_output.as_deref());
        let mut model = Model::load_pinned(&paths.model, batch, overrides.forward_batch, pin, logits_output)?;
        model.set_threads(overrides.threads.unwrap_or(1))?;
        let batch = model.fixed_batch().unwrap_or(batch);
        let [c, h, w] = model.input_chw();
        let k = model.num_classes();
        let (input, class_names, temperature, gate) = match &gate_file {
            Some(g) => (g.input.clone(), g.class_names.clone(), g.temperature, g.gate.clone()),
            None => {
                let color = match c {
                    1 => Color::Gray,
                    3 => Color::Rgb,
                    _ => {
                        return Err(Error::Shape {
                            path: paths.model.clone(),
                            expected: "1 or 3 input channels".into(),
                            got: format!("{c} channels"),
                        })
                    }
                };
                (InputSpec::plain(h as u32, w as u32, color), (0..k).map(|i| i.to_string()).collect(), 1.0, None)
            }
        };
        let where_ = || paths.gate.clone().unwrap_or_else(|| paths.model.clone());
        if [input.color.channels(), input.height as usize, input.width as usize] != [c, h, w] {
            return Err(Error::Bundle {
                path: where_(),
                message: format!(
                    "gate.json input is [{}, {}, {}] but the model takes [N, {c}, {h}, {w}]",
                    input.color.channels(),
                    input.height,
                    input.width
                ),
            });
        }
        if class_names.len() != k {
            return Err(Error::Bundle {
                path: where_(),
                message: format!("gate.json names {} classes but the model has {k} logits", class_names.len()),
            });
        }
        let bundle_temperature = temperature;
        overrides.temperature.map(check::temperature).transpose()?;
        // The level given is checked as given, before it meets the bundle's calibration set.
        overrides.alpha.map(check::alpha).transpose()?;
        let temperature = effective_temperature(overrides.temperature, bundle_temperature);
        // The gate's energies and threshold were fitted at the bundle's temperature, for this
        // model: at another temperature, or for another model, they mean nothing, so the
        // bundle's gate is set aside (flags can still give one).
        let gate_set_aside = if gate.is_none() && gate_file.as_ref().and_then(|g| g.prediction_sets.as_ref()).is_none()
        {
            None
        } else if model_changed {
            Some(format!("gate.json was made for another model (sha256 {})", provenance_sha(&gate_file)))
        } else if temperature != bundle_temperature {
            Some(format!("gate.json's gate was fitted at T = {bundle_temperature}, not at T = {temperature}"))
        } else {
            None
        };
        let gate = if gate_set_aside.is_some() { None } else { gate };
        let prediction_sets =
            if gate_set_aside.is_some() { None } else { gate_file.as_ref().and_then(|g| g.prediction_sets.clone()) };
        let calibration_energies = gate.as_ref().map(|g| g.calibration_energies.clone()).unwrap_or_default();
        let (threshold, alpha) =
            gate_rule(overrides.threshold, overrides.alpha, gate.as_ref().map(|g| (g.threshold, g.alpha)));
        if let Some(t) = threshold {
            if t.is_nan() {
                return Err(Error::Invalid("threshold must be a number, got NaN".into()));
            }
        }
        if let Some(a) = alpha {
            let src = where_().display().to_string();
            if calibration_energies.is_empty() {
                return Err(Error::Invalid(match &gate_set_aside {
                    Some(why) => format!("alpha = {a} needs calibration energies, and {why}: give --threshold instead"),
                    None => format!(
                        "alpha = {a} needs calibration energies, and {src} has none: run `ebm-gate calibrate` first, or give --threshold"
                    ),
                }));
            }
            crate::calibration::check_alpha(calibration_energies.len(), a).map_err(|error| Error::Calibration {
                path: where_(),
                what: "",
                error,
            })?;
        }
        let set_quantile = match overrides.set_alpha {
            None => None,
            Some(a) => {
                let src = where_().display().to_string();
                let scores = prediction_sets.as_ref().ok_or_else(|| {
                    Error::Invalid(match &gate_set_aside {
                        Some(why) => format!("prediction sets need calibration scores, and {why}"),
                        None => format!(
                            "prediction sets need calibration scores, and {src} has none: run `ebm-gate calibrate` on labelled data first"
                        ),
                    })
                })?;
                crate::calibration::check_alpha(scores.calibration_scores.len(), a)
                    .map_err(|error| Error::Calibration { path: where_(), what: "prediction sets: ", error })?;
                Some(conformal_quantile(&scores.calibration_scores, a))
            }
        };
        let multi = multi_score_gate(
            overrides.scores.as_deref(),
            if gate_set_aside.is_some() { None } else { gate_file.as_ref().and_then(|g| g.scores.as_ref()) },
            alpha,
            &where_(),
            gate_set_aside.as_deref(),
        )?;
        let health_scores = overrides.health_scores || multi.as_ref().is_some_and(MultiScoreGate::needs_health);
        let settings = GateSettings {
            temperature,
            threshold,
            alpha,
            calibration_energies,
            set_alpha: overrides.set_alpha,
            set_quantile,
            gate_set_aside,
            multi,
            health_scores,
        };
        let limits = overrides.limits.unwrap_or_default();
        Ok(EnergyGate { model, input, class_names, settings, batch, paths, gate_file, model_sha256, limits })
    }

    /// The preprocessing spec.
    pub fn input(&self) -> &InputSpec {
        &self.input
    }

    /// Class names in logit order.
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    /// The limits frames are decoded under ([`Overrides::limits`]).
    pub fn limits(&self) -> &InputLimits {
        &self.limits
    }

    /// The gate's settings.
    pub fn settings(&self) -> &GateSettings {
        &self.settings
    }

    /// Frames per forward pass.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Where the bundle's files are.
    pub fn paths(&self) -> &BundlePaths {
        &self.paths
    }

    /// sha256 of `model.onnx`, lowercase hex, as checked against `gate.json` when opened.
    pub fn model_sha256(&self) -> &str {
        &self.model_sha256
    }

    /// The `gate.json` as read, if there was one.
    pub fn gate_file(&self) -> Option<&GateFile> {
        self.gate_file.as_ref()
    }

    /// Mutable access to the model, for raw forward passes.
    pub fn model_mut(&mut self) -> &mut Model {
        &mut self.model
    }

    /// Runs and judges frames already in the model's input space: `x` is `[n, C, H, W]` with `n`
    /// the number of `names`, one report per name, in order (labels unknown).
    ///
    /// # Errors
    /// The forward pass's ([`Model::logits`]).
    pub fn judge_inputs(&mut self, x: &[f32], names: &[String]) -> Result<Vec<FrameReport>> {
        let n = names.len();
        let logits = self.model.logits(x, n)?;
        let k = self.model.num_classes();
        Ok(names.iter().zip(logits.chunks_exact(k)).map(|(name, z)| self.judge_logits(name, None, z)).collect())
    }

    /// Scores and judges one frame's logits `[K]`, without health scores: [`judge_frame`]
    /// with `None` (a gate that combines health scores rejects the frame).
    ///
    /// [`judge_frame`]: Self::judge_frame
    pub fn judge_logits(&self, name: &str, label: Option<usize>, logits: &[f32]) -> FrameReport {
        self.judge_frame(name, label, logits, None)
    }

    /// Scores and judges one frame from its logits `[K]` and its health scores (computed from
    /// the decoded frame by [`health_scores`]; `None` when not computed). Logits that cannot be
    /// scored (NaN, say) give `OutOfDistribution` with `non_finite_energy`. With a
    /// [`MultiScoreGate`] in force, the combined p-value is the report's `p_value` and the
    /// strangest score over the level its reason.
    pub fn judge_frame(
        &self,
        name: &str,
        label: Option<usize>,
        logits: &[f32],
        health: Option<HealthScores>,
    ) -> FrameReport {
        let mut report = FrameReport {
            name: name.to_string(),
            label,
            logits: Some(logits.to_vec()),
            scores: None,
            p_value: None,
            prediction_set: None,
            verdict: Some(Verdict::OutOfDistribution),
            reason: Some(Reason::NonFiniteEnergy),
            error: None,
            health,
            multi: None,
        };
        match Scores::from_logits(logits, self.settings.temperature) {
            Ok(scores) => {
                let st = &self.settings;
                let cal = &st.calibration_energies;
                let p = (!cal.is_empty()).then(|| p_value(cal, scores.energy));
                let decision = if let Some(m) = &st.multi {
                    let j = m.judge(scores.energy, health.as_ref());
                    let threshold = st.threshold.unwrap_or(f32::INFINITY);
                    let d = match (decide(scores.energy, threshold, None), j.rejected_by.first()) {
                        ((Verdict::InDistribution, _), Some(&k)) => (Verdict::OutOfDistribution, Reason::Score(k)),
                        (d, _) => d,
                    };
                    report.p_value = Some(j.p_value);
                    report.multi = Some(Box::new(j));
                    Some(d)
                } else {
                    report.p_value = p;
                    st.gates().then(|| {
                        let pa = st.alpha.and_then(|a| p.map(|p| (p, a)));
                        decide(scores.energy, st.threshold.unwrap_or(f32::INFINITY), pa)
                    })
                };
                if let Some(q) = st.set_quantile {
                    let mut probs = vec![0.0f32; logits.len()];
                    if crate::core::energy::softmax(logits, st.temperature, &mut probs).is_ok() {
                        report.prediction_set =
                            Some((0..probs.len()).filter(|&y| in_prediction_set(probs[y], q)).collect());
                    }
                }
                report.scores = Some(scores);
                report.verdict = decision.map(|d| d.0);
                report.reason = decision.map(|d| d.1);
            }
            Err(e) => report.error = Some(e.to_string()),
        }
        report
    }

    /// Scores `items` in batches, decoding on a second thread; `progress(k)` is called after
    /// each batch with the number of frames it held. Reports come back in input order.
    ///
    /// Never fails as a whole: a frame that cannot be decoded gets `decode_error`, a batch the
    /// model fails on gets `model_error` for each of its frames.
    pub fn score_items(&mut self, items: &[FrameItem], mut progress: impl FnMut(usize)) -> Vec<FrameReport> {
        let mut reports: Vec<FrameReport> = Vec::with_capacity(items.len());
        self.score_each(items, |batch| {
            progress(batch.len());
            reports.extend(batch);
        });
        reports
    }

    /// [`score_items`](Self::score_items) without keeping the reports: `each` gets every
    /// batch's reports, in input order, as soon as the batch is done, so memory stays bounded
    /// by the batch however many items there are. With more than one batch, decoding runs on a
    /// second thread a batch ahead; a single batch (one frame, say) is decoded on this thread,
    /// as there is nothing to overlap.
    pub fn score_each(&mut self, items: &[FrameItem], mut each: impl FnMut(Vec<FrameReport>)) {
        let batch = self.batch;
        let len = self.input.frame_len();
        let (spec, limits, with_health) = (self.input.clone(), self.limits, self.settings.health_scores);
        let decode = move |chunk: &[FrameItem]| decode_batch(chunk, &spec, &limits, len, with_health);
        if items.len() <= batch {
            if !items.is_empty() {
                let decoded = decode(items);
                each(self.judge_batch(items, decoded));
            }
            return;
        }
        std::thread::scope(|scope| {
            let (tx, rx) = mpsc::sync_channel::<(usize, Decoded)>(2);
            scope.spawn(move || {
                for (b, chunk) in items.chunks(batch).enumerate() {
                    if tx.send((b * batch, decode(chunk))).is_err() {
                        return;
                    }
                }
            });
            for (start, decoded) in rx {
                let n = decoded.errors.len();
                each(self.judge_batch(&items[start..start + n], decoded));
            }
        });
    }

    /// Runs the model on a decoded batch and judges each of its frames (`chunk`, in order).
    fn judge_batch(&mut self, chunk: &[FrameItem], decoded: Decoded) -> Vec<FrameReport> {
        let Decoded { data, errors, health } = decoded;
        let n = errors.len();
        let logits = self.model.logits(&data, n);
        let k = self.model.num_classes();
        let mut reports = Vec::with_capacity(n);
        for (i, ((item, err), h)) in chunk.iter().zip(errors).zip(health).enumerate() {
            let report = match (&logits, err) {
                (_, Some(e)) => FrameReport::failed(&item.name, item.label, Reason::DecodeError, e),
                (Err(e), None) => FrameReport::failed(&item.name, item.label, Reason::ModelError, e.to_string()),
                (Ok(all), None) => self.judge_frame(&item.name, item.label, &all[i * k..(i + 1) * k], h),
            };
            reports.push(report);
        }
        reports
    }
}

/// A batch decoded for the model: its input `[n, C, H, W]` (zeros for a frame that failed),
/// and per frame the decode error, if any, and the health scores, when computed.
struct Decoded {
    data: Vec<f32>,
    errors: Vec<Option<String>>,
    health: Vec<Option<HealthScores>>,
}

/// Decodes, resizes and normalises `chunk` (`len` values a frame), with health scores when
/// `with_health`.
fn decode_batch(chunk: &[FrameItem], spec: &InputSpec, limits: &InputLimits, len: usize, with_health: bool) -> Decoded {
    let mut data = vec![0.0f32; chunk.len() * len];
    let mut errors = Vec::with_capacity(chunk.len());
    let mut health = Vec::with_capacity(chunk.len());
    for (item, out) in chunk.iter().zip(data.chunks_mut(len)) {
        let r = item.decode_borrowed(limits).and_then(|img| {
            crate::frame::preprocess_into(&img, spec, out)?;
            Ok(with_health.then(|| health_scores(&img)))
        });
        match r {
            Ok(h) => {
                errors.push(None);
                health.push(h);
            }
            Err(e) => {
                errors.push(Some(e.to_string()));
                health.push(None);
            }
        }
    }
    Decoded { data, errors, health }
}

/// The multi-score gate in force: the scores given (else `gate.json`'s `scores.used`); `None`
/// when only the energy is used (the plain energy gate) or nothing was fitted and nothing given.
fn multi_score_gate(
    given: Option<&[ScoreKind]>,
    spec: Option<&ScoresSpec>,
    alpha: Option<f32>,
    gate_path: &Path,
    set_aside: Option<&str>,
) -> Result<Option<MultiScoreGate>> {
    let kinds: Vec<ScoreKind> = match (given, spec) {
        (Some(k), _) => k.to_vec(),
        (None, Some(sp)) => sp.used.iter().filter_map(|n| ScoreKind::from_name(n)).collect(),
        (None, None) => return Ok(None),
    };
    if kinds.iter().all(|&k| k == ScoreKind::Energy) {
        return Ok(None);
    }
    let names = kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(",");
    let Some(spec) = spec else {
        return Err(Error::Invalid(match set_aside {
            Some(why) => format!("--scores {names} needs the scores fitted in gate.json, and {why}"),
            None => format!(
                "--scores {names} needs scores fitted on clean frames, and {} has none: run `ebm-gate calibrate MODEL \
                 --id DIR --scores {names}`",
                gate_path.display()
            ),
        }));
    };
    let Some(alpha) = alpha else {
        return Err(Error::Invalid(format!(
            "the scores {names} are combined by a conformal rule, which needs alpha: give --alpha (with --threshold, both apply)"
        )));
    };
    MultiScoreGate::new(spec, &kinds, alpha)
        .map(Some)
        .map_err(|message| Error::Bundle { path: gate_path.to_path_buf(), message })
}

fn provenance_sha(gate_file: &Option<GateFile>) -> String {
    gate_file.as_ref().and_then(|g| g.provenance.as_ref()).map(|p| p.model_sha256.clone()).unwrap_or_default()
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

#[cfg(test)]
mod tests {
    use super::{effective_temperature, gate_rule};

    #[test]
    fn gate_rule_follows_the_documented_precedence() {
        let (t, a) = (Some(-3.0), Some(0.1));
        let with_alpha = Some((-5.0, Some(0.05)));
        let threshold_only = Some((-5.0, None));
        for (threshold, alpha, bundle, want) in [
            // a threshold given wins over the bundle, with the given alpha (if any) beside it
            (t, None, with_alpha, (t, None)),
            (t, a, with_alpha, (t, a)),
            (t, None, None, (t, None)),
            // an alpha given: the conformal gate at it
            (None, a, with_alpha, (None, a)),
            (None, a, threshold_only, (None, a)),
            (None, a, None, (None, a)),
            // nothing given: the bundle's alpha, else its threshold, else no rule
            (None, None, with_alpha, (None, Some(0.05))),
            (None, None, threshold_only, (Some(-5.0), None)),
            (None, None, None, (None, None)),
        ] {
            assert_eq!(gate_rule(threshold, alpha, bundle), want, "{threshold:?} {alpha:?} {bundle:?}");
        }
    }

    #[test]
    fn a_temperature_within_1e4_of_the_bundles_is_the_bundles() {
        assert_eq!(effective_temperature(None, 0.9172), 0.9172);
        assert_eq!(effective_temperature(Some(0.91725), 0.9172), 0.9172);
        assert_eq!(effective_temperature(Some(0.9175), 0.9172), 0.9175);
        assert_eq!(effective_temperature(Some(1.0), 0.9172), 1.0);
    }
}
