//! The model bundle: a directory holding `model.onnx` and `gate.json`.
//!
//! `gate.json` (format version 1) records how frames are preprocessed, the class names, the
//! temperature, and the gate: the conformal level `alpha`, the energy threshold, the sorted
//! calibration energies they come from, optional conformal prediction-set scores, and provenance
//! (the model's sha256, the data, `n`, the split, the date, the tool). The threshold and `alpha`
//! live here, never inside the ONNX graph, and flags override them at run time.
//!
//! ```json
//! { "format_version": 1,
//!   "input": { "layout": "NCHW", "height": 32, "width": 32, "color": "rgb",
//!              "resize": "shorter_side_then_center_crop", "pixel_range": [0, 1],
//!              "mean": [0.4914, 0.4822, 0.4465], "std": [0.2470, 0.2435, 0.2616] },
//!   "class_names": ["airplane", "automobile", "..."],
//!   "temperature": 0.528,
//!   "gate": { "score": "energy", "threshold": -1.865, "target_tpr": 0.95, "alpha": 0.05,
//!             "calibration_energies": [-4.9, "... ascending ..."] },
//!   "prediction_sets": { "method": "lac", "calibration_scores": [0.0001, "... ascending ..."] },
//!   "provenance": { "model_sha256": "...", "data": "../shared/data/cifar10/test", "n": 5011,
//!                   "created": "2026-11-29T13:29:40Z", "tool": "ebm-gate 0.1.0 calibrate",
//!                   "split": { "holdout": 0.5, "seed": 0, "n_total": 10000, "n_held_out": 4989 } } }
//! ```
//!
//! With `alpha` set, the gate is conformal: a frame is rejected when its p-value over the
//! calibration energies is `<= alpha`, and `threshold` is the same rule as an energy (the
//! `ceil((n + 1)(1 - alpha))`-th smallest calibration energy). Without `alpha`, `threshold`
//! alone decides. `calibration_energies` and `calibration_scores` are at `temperature`.
//!
//! A bare `.onnx` without a `gate.json` beside it loads with defaults taken from the model
//! (input size and channel count, `K` classes named `0..K-1`), pixel range `[0, 1]`, no mean/std
//! normalisation, temperature 1 and no threshold: scores only.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The `gate.json` format version this crate reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// Colour handling of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    /// Three channels R, G, B. Gray images are replicated; alpha is discarded.
    Rgb,
    /// Three channels in the order B, G, R (models trained on OpenCV's `imread`, Caffe, Paddle);
    /// `mean` and `std` are in that order too.
    Bgr,
    /// One channel, luma `L = (299 R + 587 G + 114 B) / 1000` (ITU-R 601-2, as Pillow's `L`).
    Gray,
}

impl Color {
    /// Number of channels `C`.
    pub fn channels(self) -> usize {
        match self {
            Color::Rgb | Color::Bgr => 3,
            Color::Gray => 1,
        }
    }

    /// The RGB channel (0 R, 1 G, 2 B) that tensor channel `ch` holds (gray: 0).
    pub fn source_channel(self, ch: usize) -> usize {
        match self {
            Color::Rgb => ch,
            Color::Bgr => 2 - ch,
            Color::Gray => 0,
        }
    }
}

/// Whether a bundle's normalisation (`pixel_range`, `mean`, `std`) was ever stated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Normalization {
    /// Given by whoever made the bundle (flags of `init`, the model's ONNX metadata, the
    /// training tools). The default: a `gate.json` without the field states its values.
    #[default]
    Given,
    /// Never stated: pixel range `[0, 1]`, mean 0, std 1 were assumed (a bare `.onnx`, or
    /// `init` without normalisation flags or metadata). `calibrate` warns: a model trained with
    /// another normalisation sees wrong inputs, and its energies mean little.
    Unset,
}

impl Normalization {
    fn is_given(&self) -> bool {
        *self == Normalization::Given
    }
}

/// How a frame of another size is brought to the model's `height x width`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeMode {
    /// Scale so the frame covers the model's size (the shorter side for a square model), then
    /// take the centre. Bilinear, antialiased when shrinking.
    ShorterSideThenCenterCrop,
    /// Scale each axis to the model's size, ignoring the aspect ratio.
    Stretch,
}

/// Preprocessing of a frame into one `[C, H, W]` slice of the model's `[N, C, H, W]` input.
///
/// `x = ((v / 255) * (hi - lo) + lo - mean[c]) / std[c]` for an 8-bit value `v` and
/// `pixel_range = [lo, hi]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    /// Tensor layout; only `"NCHW"` is supported.
    pub layout: String,
    /// Model input height `H`, pixels.
    pub height: u32,
    /// Model input width `W`, pixels.
    pub width: u32,
    /// Colour handling, which fixes `C`.
    pub color: Color,
    /// Resize rule for frames of another size.
    pub resize: ResizeMode,
    /// `[lo, hi]`: the value that 8-bit 0 and 255 map to before normalisation.
    pub pixel_range: [f32; 2],
    /// Per-channel mean subtracted after scaling (length `C`).
    pub mean: Vec<f32>,
    /// Per-channel standard deviation divided by after subtracting the mean (length `C`).
    pub std: Vec<f32>,
    /// Whether `pixel_range`, `mean` and `std` were stated or assumed (written only when
    /// `"unset"`).
    #[serde(default, skip_serializing_if = "Normalization::is_given")]
    pub normalization: Normalization,
}

impl InputSpec {
    /// Pixel range `[0, 1]`, no mean/std normalisation, shorter-side resize: what a bare model
    /// is assumed to take ([`Normalization::Unset`]).
    pub fn plain(height: u32, width: u32, color: Color) -> InputSpec {
        let c = color.channels();
        InputSpec {
            layout: "NCHW".into(),
            height,
            width,
            color,
            resize: ResizeMode::ShorterSideThenCenterCrop,
            pixel_range: [0.0, 1.0],
            mean: vec![0.0; c],
            std: vec![1.0; c],
            normalization: Normalization::Unset,
        }
    }

    /// `C * H * W`, the number of values per frame.
    pub fn frame_len(&self) -> usize {
        self.color.channels() * self.height as usize * self.width as usize
    }

    /// Checks the fields against each other.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the field.
    pub fn validate(&self) -> Result<()> {
        let c = self.color.channels();
        if self.layout != "NCHW" {
            return Err(Error::Invalid(format!("input.layout must be \"NCHW\", got {:?}", self.layout)));
        }
        if self.height == 0 || self.width == 0 {
            return Err(Error::Invalid(format!("input size must be positive, got {}x{}", self.width, self.height)));
        }
        if self.mean.len() != c || self.std.len() != c {
            return Err(Error::Invalid(format!(
                "input.mean and input.std need {c} values for {:?} input, got {} and {}",
                self.color,
                self.mean.len(),
                self.std.len()
            )));
        }
        if self.std.iter().any(|s| !(s.is_finite() && *s != 0.0)) || self.mean.iter().any(|m| !m.is_finite()) {
            return Err(Error::Invalid(format!(
                "input.std must be finite and non-zero, mean finite: {:?} {:?}",
                self.std, self.mean
            )));
        }
        Ok(())
    }
}

/// The gate's settings in `gate.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateSpec {
    /// The score gated on; only `"energy"` is supported.
    pub score: String,
    /// Energy threshold: frames with `E(x) > threshold` are rejected. With `alpha` set it is
    /// the conformal quantile of `calibration_energies` at `alpha` (same decisions).
    pub threshold: f32,
    /// The fraction of calibration energies at or below the threshold it was chosen for.
    pub target_tpr: f64,
    /// Significance level of the conformal test (reject when `p(x) <= alpha`); `None` = off.
    #[serde(default)]
    pub alpha: Option<f32>,
    /// Energies of the calibration frames at the bundle's temperature, ascending.
    #[serde(default)]
    pub calibration_energies: Vec<f32>,
}

/// Conformal prediction sets of classes (LAC), fitted by `calibrate` on labelled frames.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictionSets {
    /// The nonconformity score; only `"lac"` (`1 - p(y|x)` of the true class) is supported.
    pub method: String,
    /// Scores of the calibration frames at the bundle's temperature, ascending.
    pub calibration_scores: Vec<f32>,
}

/// How `calibrate` split its folder into calibration and held-out frames (see
/// [`crate::calibration::is_held_out`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitSpec {
    /// Fraction held out, in `[0, 1)`.
    pub holdout: f64,
    /// Seed of the split.
    pub seed: u64,
    /// Frames in the folder.
    pub n_total: usize,
    /// Frames held out (not used for calibration).
    pub n_held_out: usize,
}

/// Where the gate's numbers came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// sha256 of `model.onnx`, lowercase hex.
    pub model_sha256: String,
    /// The data the threshold was fitted on.
    pub data: String,
    /// Number of calibration frames.
    pub n: usize,
    /// When, ISO 8601.
    pub created: String,
    /// The tool and version that wrote it.
    pub tool: String,
    /// The calibration/held-out split of `data`, when `calibrate` made one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<SplitSpec>,
}

/// Where the energy-gradient graph is and what its inputs and outputs are called (written by
/// `models/tools/energy_grad.py`). The graph takes frames `[N, C, H, W]` (normalised as for
/// `model.onnx`), a temperature `[1]` and a class mask `[N, K]`, and gives
/// `energy [N] = -T * log sum_{k: mask_k = 1} exp(f_k(x) / T)` (all ones: the free energy
/// `E(x)`; one-hot `y`: the class-conditional `E(x, y) = -f_y(x)`) and `grad [N, C, H, W] = dE/dx`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GradientSpec {
    /// The graph's file name, relative to the bundle directory.
    pub graph: String,
    /// sha256 of the graph file, lowercase hex; checked when the graph is opened.
    #[serde(default)]
    pub sha256: Option<String>,
    /// sha256 of the `model.onnx` the graph was derived from; checked when the graph is opened,
    /// so that a retrained model is not refined with its predecessor's gradient.
    #[serde(default)]
    pub model_sha256: Option<String>,
    /// Input names.
    pub inputs: GradientInputs,
    /// Output names.
    pub outputs: GradientOutputs,
    /// Anything else the exporter recorded (its check against autograd, ops, tool), kept as is.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// Input names of the energy-gradient graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GradientInputs {
    /// Frames `[N, C, H, W]`.
    pub input: String,
    /// Temperature `[1]`.
    pub temperature: String,
    /// Class mask `[N, K]`, 1 for the classes the energy is taken over.
    pub class_mask: String,
}

/// Output names of the energy-gradient graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GradientOutputs {
    /// Energy `[N]`.
    pub energy: String,
    /// `dE/dx`, `[N, C, H, W]`.
    pub grad: String,
}

/// The contents of `gate.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateFile {
    /// Must equal [`FORMAT_VERSION`].
    pub format_version: u32,
    /// Preprocessing.
    pub input: InputSpec,
    /// One name per logit, in logit order.
    pub class_names: Vec<String>,
    /// Temperature `T` of the probabilities and the energy; 1 until calibrated.
    #[serde(default = "one")]
    pub temperature: f32,
    /// The gate, when one has been fitted.
    #[serde(default)]
    pub gate: Option<GateSpec>,
    /// Conformal prediction sets, when fitted on labelled data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prediction_sets: Option<PredictionSets>,
    /// Provenance of the gate.
    #[serde(default)]
    pub provenance: Option<Provenance>,
    /// The energy-gradient graph, when the bundle has one (for Langevin refinement).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gradient: Option<GradientSpec>,
    /// Several scores under one guarantee, when `calibrate --scores` fitted them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scores: Option<ScoresSpec>,
    /// The name of the ONNX tensor that holds the logits `[N, K]`, when it is not the graph's
    /// output: a graph that ends in `Softmax` gives probabilities, whose energy means nothing,
    /// so `init` names the Softmax's input here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logits_output: Option<String>,
}

/// Several scores (the energy and the frame-health scores) under one conformal guarantee,
/// fitted by `calibrate --scores` on two halves of the calibration frames (the rule:
/// [`crate::core::conformal`]'s module docs). Every score is stored, whichever are used, so
/// `--scores` can choose others at run time.
///
/// ```json
/// "scores": { "version": 2, "used": ["energy", "sharpness", "noise_sigma"], "seed": 1,
///   "fit": { "energy": { "values": [-14.2, "... ascending ..."], "upper_scale": 0.61, "lower_scale": 0.9 },
///            "sharpness": { "...": "..." } },
///   "combine": { "energy": [-9.1, "... one per frame of split B ..."], "sharpness": ["..."] } }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoresSpec {
    /// The definitions of the scores the values were computed with ([`SCORES_VERSION`]; 1 when
    /// absent, the first release's); values of another version are refused, since a frame's
    /// score would be compared with differently defined calibration values.
    #[serde(default = "first_scores_version")]
    pub version: u32,
    /// The scores the gate combines ([`crate::core::health::ScoreKind::name`]); `["energy"]`
    /// alone is the plain energy gate of [`GateSpec`].
    pub used: Vec<String>,
    /// Seed of the split of the calibration frames into `fit` and `combine`.
    pub seed: u64,
    /// Split A, per score: its values, ascending, and the scales of its exponential tails.
    pub fit: std::collections::BTreeMap<String, ScoreFit>,
    /// Split B, per score: the values of the same frames in the same order (unsorted).
    pub combine: std::collections::BTreeMap<String, Vec<f32>>,
}

/// The version of the health scores' definitions this build computes ([`ScoresSpec::version`]):
/// 2 = `noise_sigma` on the flattest blocks, `bright_fraction` as clipped channels, `luma_p99`,
/// and `sharpness`'s tails in `ln(1 + x)`.
pub const SCORES_VERSION: u32 = 2;

fn first_scores_version() -> u32 {
    1
}

/// One score's values on split A ([`ScoresSpec::fit`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreFit {
    /// The score on each frame of split A, ascending.
    pub values: Vec<f32>,
    /// Scale of the exponential tail past the largest value
    /// ([`crate::core::conformal::exponential_tail_scale`] in the score's
    /// [`crate::core::health::ScoreKind::tail_domain`], at least its
    /// [`crate::core::health::ScoreKind::tail_scale_floor`]).
    pub upper_scale: f32,
    /// Scale of the exponential tail past the smallest value.
    pub lower_scale: f32,
}

impl ScoresSpec {
    /// Checks names, lengths, order and finiteness.
    ///
    /// # Errors
    /// A message naming the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        use crate::core::health::ScoreKind;
        if self.version != SCORES_VERSION {
            return Err(format!(
                "scores were fitted with version {} of the score definitions, and this ebm-gate computes version \
                 {SCORES_VERSION}: run `ebm-gate calibrate --scores` again",
                self.version
            ));
        }
        if self.used.is_empty() {
            return Err("scores.used names no score".into());
        }
        for name in self.used.iter().chain(self.fit.keys()).chain(self.combine.keys()) {
            if ScoreKind::from_name(name).is_none() {
                return Err(format!("scores: unknown score {name:?} (known: {})", score_names()));
            }
        }
        for name in &self.used {
            if !self.fit.contains_key(name) || !self.combine.contains_key(name) {
                return Err(format!("scores.used names {name:?}, which has no fit or combine values"));
            }
        }
        let n_b = self.combine.values().next().map_or(0, Vec::len);
        for (name, f) in &self.fit {
            let v = &f.values;
            if v.is_empty() || v.iter().any(|x| !x.is_finite()) || v.windows(2).any(|w| w[0] > w[1]) {
                return Err(format!("scores.fit.{name}.values must be non-empty, finite and ascending"));
            }
            for s in [f.upper_scale, f.lower_scale] {
                if !(s.is_finite() && s > 0.0) {
                    return Err(format!("scores.fit.{name}: tail scales must be positive, got {s}"));
                }
            }
        }
        for (name, v) in &self.combine {
            if v.len() != n_b || v.is_empty() || v.iter().any(|x| !x.is_finite()) {
                return Err(format!("scores.combine.{name} must hold {n_b} finite values (one per frame)"));
            }
        }
        Ok(())
    }
}

/// The score names `--scores` and `gate.json` take, comma-separated.
pub fn score_names() -> String {
    crate::core::health::ScoreKind::ALL.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
}

fn one() -> f32 {
    1.0
}

/// Largest `gate.json` read, in bytes (64 MiB: a million calibration energies take about 20 MB).
pub const MAX_GATE_JSON_BYTES: u64 = 64 << 20;

impl GateFile {
    /// Reads and checks a `gate.json` (at most [`MAX_GATE_JSON_BYTES`]).
    ///
    /// # Errors
    /// [`Error::Io`] when unreadable, [`Error::Bundle`] naming the file when too large, for bad JSON, another
    /// format version, an invalid input spec, a non-positive temperature, unsorted or non-finite
    /// calibration energies.
    pub fn read(path: &Path) -> Result<GateFile> {
        use std::io::Read;
        // Read at most one byte past the limit: a huge file is refused without being read whole.
        let mut text = String::new();
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        file.take(MAX_GATE_JSON_BYTES + 1).read_to_string(&mut text).map_err(|e| Error::io(path, e))?;
        if text.len() as u64 > MAX_GATE_JSON_BYTES {
            return Err(Error::Bundle {
                path: path.into(),
                message: format!("larger than {} MiB: not a gate.json", MAX_GATE_JSON_BYTES >> 20),
            });
        }
        let g: GateFile = serde_json::from_str(&text)
            .map_err(|e| Error::Bundle { path: path.into(), message: format!("invalid gate.json: {e}") })?;
        let bad = |message: String| Error::Bundle { path: path.into(), message };
        if g.format_version != FORMAT_VERSION {
            return Err(bad(format!(
                "format_version {} is not supported (this ebm-gate reads version {FORMAT_VERSION})",
                g.format_version
            )));
        }
        g.input.validate().map_err(|e| bad(e.to_string()))?;
        crate::core::check::temperature(g.temperature).map_err(|e| bad(e.to_string()))?;
        if let Some(gate) = &g.gate {
            if gate.score != "energy" {
                return Err(bad(format!("gate.score {:?} is not supported (only \"energy\")", gate.score)));
            }
            let e = &gate.calibration_energies;
            if e.iter().any(|v| !v.is_finite()) || e.windows(2).any(|w| w[0] > w[1]) {
                return Err(bad("gate.calibration_energies must be finite and ascending".into()));
            }
            if let Some(a) = gate.alpha {
                crate::core::check::alpha(a).map_err(|e| bad(format!("gate.{e}")))?;
            }
        }
        if let Some(sc) = &g.scores {
            sc.validate().map_err(bad)?;
        }
        if let Some(ps) = &g.prediction_sets {
            if ps.method != "lac" {
                return Err(bad(format!("prediction_sets.method {:?} is not supported (only \"lac\")", ps.method)));
            }
            let s = &ps.calibration_scores;
            if s.is_empty() || s.iter().any(|v| !v.is_finite()) || s.windows(2).any(|w| w[0] > w[1]) {
                return Err(bad("prediction_sets.calibration_scores must be non-empty, finite and ascending".into()));
            }
        }
        Ok(g)
    }

    /// Writes it as pretty JSON.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file.
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::Invalid(e.to_string()))?;
        std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
    }
}

/// Where a bundle's files are.
#[derive(Debug, Clone, PartialEq)]
pub struct BundlePaths {
    /// The ONNX model.
    pub model: PathBuf,
    /// The `gate.json`, when one exists.
    pub gate: Option<PathBuf>,
}

impl BundlePaths {
    /// Resolves a bundle directory (`DIR/model.onnx`, `DIR/gate.json`) or a `.onnx` file (with
    /// the `gate.json` beside it, if any).
    ///
    /// # Errors
    /// [`Error::Bundle`] when the path does not exist or a directory has no `model.onnx`.
    pub fn resolve(path: &Path) -> Result<BundlePaths> {
        let (model, dir) = if path.is_dir() {
            (path.join("model.onnx"), path.to_path_buf())
        } else {
            (path.to_path_buf(), path.parent().map(Path::to_path_buf).unwrap_or_default())
        };
        if path.file_name().is_some_and(|n| n == "gate.json") && path.is_file() {
            return Err(Error::Bundle {
                path: path.to_path_buf(),
                message: format!(
                    "is a bundle's settings, not a model: give the bundle's folder ({}) or its model.onnx",
                    dir.display()
                ),
            });
        }
        if !model.is_file() {
            let message = if path.is_dir() {
                "no model.onnx in this directory (a bundle is DIR/model.onnx + DIR/gate.json)".to_string()
            } else {
                "no such model file (give a bundle directory or an .onnx file)".to_string()
            };
            return Err(Error::Bundle { path: model, message });
        }
        let gate = dir.join("gate.json");
        Ok(BundlePaths { model, gate: gate.is_file().then_some(gate) })
    }
}

/// sha256 of a file, lowercase hex.
///
/// # Errors
/// [`Error::Io`] naming the file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect())
}
