//! `ebm_gate` for Python: the energy gate of the `ebm-gate` crate on NumPy frames, in-process.
//!
//! A frame is a NumPy `uint8` array `HxWx3` (RGB, or BGR with `bgr=True`), `HxWx4` (the 4th
//! channel ignored: picamera2's `XRGB8888`/`XBGR8888`) or `HxW` / `HxWx1` (gray, replicated to
//! RGB as a gray image file is), of any size. It is copied once into an RGB picture and then
//! takes the library's path for a picture in memory ([`FrameItem::image`]): checked against the
//! limits, resized and normalised as the bundle says, run by tract with the GIL released,
//! scored and judged. The results are `ebm-gate score --json`'s records, so the figures are the
//! command line's. `Stream` adds the `stream` command's frozen-frame detection and debouncer
//! ([`StreamJudge`]).

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use ebm_gate::core::gate::Reason;
use ebm_gate::frame::InputLimits;
use ebm_gate::health::LumaSummary;
use ebm_gate::pipeline::{EnergyGate, FrameReport, Overrides};
use ebm_gate::record::FrameRecord;
use ebm_gate::source::{FrameItem, Origin};
use ebm_gate::stream::{StreamFormat, StreamJudge, StreamOptions};
use ebm_gate::Error;
use image::RgbImage;
use numpy::{PyArray1, PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyException, PyFileNotFoundError, PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

pyo3::create_exception!(
    ebm_gate,
    GateError,
    PyException,
    "A bundle or model that cannot be used: gate.json invalid or made for another model, the model unreadable, a shape it cannot take. The message is the library's."
);

/// The library's error as a Python exception: an invalid setting (its message starts `invalid
/// setting:`) -> `ValueError`, a missing file -> `FileNotFoundError`, another I/O error ->
/// `OSError`, the rest -> `GateError`.
fn to_py(e: Error) -> PyErr {
    let message = e.to_string();
    match &e {
        Error::Invalid(_)
        | Error::Setting(_)
        | Error::Debounce { .. }
        | Error::Calibration { .. }
        | Error::Langevin(_) => PyValueError::new_err(message),
        Error::Io { error, .. } if error.kind() == std::io::ErrorKind::NotFound => {
            PyFileNotFoundError::new_err(message)
        }
        Error::Io { .. } => PyOSError::new_err(message),
        _ => GateError::new_err(message),
    }
}

/// An `f32` as the Python float that prints as the command line's JSON does (`-4.3914633`,
/// not `-4.391463279724121`): the shortest decimal that reads back as the same `f32`.
fn py_float(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while scoring cannot leave the gate half-updated (scoring does not mutate its
    // settings); go on with it.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A frame taken from Python: a picture to score, or (beyond the gate's limits) the reason it
/// is rejected without copying it.
fn frame_item(frame: &Bound<'_, PyAny>, bgr: bool, name: String, limits: &InputLimits) -> PyResult<FrameItem> {
    let expected = "a NumPy uint8 array HxWx3 (RGB, or BGR with bgr=True), HxWx4 or HxW (gray)";
    let Ok(untyped) = frame.cast::<PyUntypedArray>() else {
        let kind = frame.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into());
        return Err(PyTypeError::new_err(format!("frame must be {expected}, got {kind}")));
    };
    let Ok(array) = untyped.cast::<PyArrayDyn<u8>>() else {
        return Err(PyTypeError::new_err(format!(
            "frame must be {expected}, got an array of {} (convert with frame.astype(numpy.uint8) if its values are 0..255)",
            untyped.dtype()
        )));
    };
    let shape = array.shape().to_vec();
    let channels = match shape.as_slice() {
        [_, _] => 1,
        [_, _, c @ (1 | 3 | 4)] => *c,
        _ => {
            return Err(PyValueError::new_err(format!("frame must be {expected}, got shape {}", format_shape(&shape))))
        }
    };
    let (h, w) = (shape[0], shape[1]);
    let fail = |message: String| FrameItem { name: name.clone(), label: None, origin: Origin::Unreadable(message) };
    // The limits first: a picture beyond them is rejected without being copied.
    if w == 0 || h == 0 {
        return Ok(fail(format!("an empty frame of shape {}", format_shape(&shape))));
    }
    if w.max(h) > limits.max_side as usize {
        return Ok(fail(format!(
            "a frame of shape {} is larger than the limit of {} pixels a side (Gate(max_image_side=...))",
            format_shape(&shape),
            limits.max_side
        )));
    }
    let rgb_bytes = w as u64 * h as u64 * 3;
    if rgb_bytes > limits.max_decoded_bytes {
        return Ok(fail(format!(
            "a frame of shape {} needs {rgb_bytes} bytes as RGB, more than the limit of {} MiB (Gate(max_decode_mib=...))",
            format_shape(&shape),
            limits.max_decoded_bytes >> 20
        )));
    }
    // Within max_side (at most 65535), so these fit.
    let (w32, h32) = (w as u32, h as u32);
    let readonly = array.readonly();
    // A view that is not C-contiguous (a slice, a transposed array) is laid out first; a
    // contiguous one is borrowed.
    let view = readonly.as_array();
    let standard = view.as_standard_layout();
    let px = standard.as_slice().ok_or_else(|| PyValueError::new_err("frame is not laid out in memory"))?;
    let rgb = match channels {
        3 if !bgr => px.to_vec(),
        1 => px.iter().flat_map(|&v| [v; 3]).collect(),
        _ => {
            let order = if bgr { [2, 1, 0] } else { [0, 1, 2] };
            px.chunks_exact(channels).flat_map(|p| order.map(|c| p[c])).collect()
        }
    };
    let picture = RgbImage::from_raw(w32, h32, rgb).ok_or_else(|| PyValueError::new_err("short pixel buffer"))?;
    Ok(FrameItem::image(name, picture))
}

/// A Python int that must not be negative (`ValueError` naming `name`, not pyo3's
/// `OverflowError`).
fn count(name: &str, value: i64) -> PyResult<usize> {
    usize::try_from(value).map_err(|_| PyValueError::new_err(format!("{name} must not be negative, got {value}")))
}

fn format_shape(shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    format!("({})", dims.join(", "))
}

/// A loaded bundle that scores and judges frames.
///
/// `Gate(bundle, *, alpha=None, threshold=None, threads=1, batch=32)`: `bundle` is a bundle
/// folder (model.onnx and gate.json) or an .onnx file. `alpha` replaces the bundle's conformal
/// level (reject when the energy's p-value is <= alpha), `threshold` sets an energy threshold
/// (reject when E(x) > threshold), as `ebm-gate score --alpha/--threshold` do. `threads`:
/// threads a batch's frames run on; `batch`: frames per forward pass in `score_batch`.
#[pyclass(frozen, module = "ebm_gate")]
struct Gate {
    /// Locked only with the GIL released, or briefly: a thread never waits for the GIL while
    /// holding it.
    inner: Mutex<EnergyGate>,
    names: Vec<String>,
    limits: InputLimits,
    batch: usize,
    input_shape: (usize, u32, u32),
    temperature: f64,
    alpha: Option<f64>,
    energy_threshold: Option<f64>,
    model_sha256: String,
    model: String,
}

impl Gate {
    /// Scores `items` with the GIL released; one report each, in order.
    fn run(&self, py: Python<'_>, items: &[FrameItem]) -> Vec<FrameReport> {
        py.detach(|| lock(&self.inner).score_items(items, |_| {}))
    }

    fn result(&self, py: Python<'_>, report: FrameReport) -> PyResult<FrameResult> {
        FrameResult::new(py, report, &self.names)
    }
}

#[pymethods]
impl Gate {
    #[new]
    #[pyo3(signature = (bundle, *, alpha=None, threshold=None, threads=1, batch=32, max_image_side=8192, max_decode_mib=256))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        bundle: PathBuf,
        alpha: Option<f32>,
        threshold: Option<f32>,
        threads: i64,
        batch: i64,
        max_image_side: i64,
        max_decode_mib: i64,
    ) -> PyResult<Gate> {
        let (max_side, mib) = (count("max_image_side", max_image_side)?, count("max_decode_mib", max_decode_mib)?);
        if !(1..=65_535).contains(&max_side) {
            return Err(PyValueError::new_err(format!("max_image_side must be 1 to 65535 pixels, got {max_side}")));
        }
        if !(1..=65_536).contains(&mib) {
            return Err(PyValueError::new_err(format!("max_decode_mib must be 1 to 65536 MiB, got {mib}")));
        }
        let limits =
            InputLimits { max_side: max_side as u32, max_decoded_bytes: (mib as u64) << 20, ..InputLimits::default() };
        let overrides = Overrides {
            alpha,
            threshold,
            threads: Some(count("threads", threads)?),
            batch: Some(count("batch", batch)?),
            limits: Some(limits),
            ..Overrides::default()
        };
        let gate = py.detach(|| EnergyGate::open(&bundle, &overrides)).map_err(|e| match bundle.exists() {
            true => to_py(e),
            false => PyFileNotFoundError::new_err(e.to_string()),
        })?;
        let settings = gate.settings();
        // Several scores combined: no single energy decides.
        let threshold = settings.multi.is_none().then(|| settings.energy_threshold()).flatten();
        let input = gate.input();
        Ok(Gate {
            names: gate.class_names().to_vec(),
            limits: *gate.limits(),
            batch: gate.batch(),
            input_shape: (input.color.channels(), input.height, input.width),
            temperature: py_float(settings.temperature),
            alpha: settings.alpha.map(py_float),
            energy_threshold: threshold.map(py_float),
            model_sha256: gate.model_sha256().to_string(),
            model: gate.paths().model.display().to_string(),
            inner: Mutex::new(gate),
        })
    }

    /// Scores and judges one frame; a frame that cannot be scored (empty, beyond the limits) is
    /// rejected with its reason, never raised.
    #[pyo3(signature = (frame, *, bgr=false))]
    fn score(&self, py: Python<'_>, frame: &Bound<'_, PyAny>, bgr: bool) -> PyResult<FrameResult> {
        let item = frame_item(frame, bgr, "frame".into(), &self.limits)?;
        let report = self.run(py, std::slice::from_ref(&item)).remove(0);
        self.result(py, report)
    }

    /// Scores and judges frames together (in forward passes of `batch`), results in order;
    /// frame `i` is named `frame#i`. `frames` is a sequence of frames, or an array of them
    /// `NxHxWx3` (`NxHxWx4`); a single array `HxWx3` or `HxW` is refused (`TypeError`: it
    /// would be read as rows). Ctrl-C stops it between groups of frames.
    #[pyo3(signature = (frames, *, bgr=false))]
    fn score_batch(&self, py: Python<'_>, frames: &Bound<'_, PyAny>, bgr: bool) -> PyResult<Vec<FrameResult>> {
        if let Ok(array) = frames.cast::<PyUntypedArray>() {
            if array.ndim() < 4 {
                return Err(PyTypeError::new_err(format!(
                    "score_batch takes a sequence of frames (a list, or an array NxHxWxC), got one array of shape {}: \
                     use score() for one frame",
                    format_shape(array.shape())
                )));
            }
        }
        let mut items = Vec::new();
        for (i, frame) in frames.try_iter()?.enumerate() {
            items.push(frame_item(&frame?, bgr, format!("frame#{i}"), &self.limits)?);
        }
        // Groups of a few forward batches, the GIL taken back between them to see Ctrl-C.
        let group = 4 * self.batch;
        let mut results = Vec::with_capacity(items.len());
        for chunk in items.chunks(group) {
            for report in self.run(py, chunk) {
                results.push(self.result(py, report)?);
            }
            py.check_signals()?;
        }
        Ok(results)
    }

    /// Reads, scores and judges an image file (PNG, JPEG, ...), as `ebm-gate score FILE`; a
    /// file that cannot be read or decoded is rejected with its reason, never raised.
    fn score_file(&self, py: Python<'_>, path: PathBuf) -> PyResult<FrameResult> {
        let item = FrameItem { name: path.display().to_string(), label: None, origin: Origin::File(path) };
        let report = self.run(py, std::slice::from_ref(&item)).remove(0);
        self.result(py, report)
    }

    /// Class names, in logit order.
    #[getter]
    fn class_names(&self) -> Vec<String> {
        self.names.clone()
    }

    /// The model's input `(channels, height, width)`.
    #[getter]
    fn input_shape(&self) -> (usize, u32, u32) {
        self.input_shape
    }

    /// Temperature `T` of the probabilities and the energy.
    #[getter]
    fn temperature(&self) -> f64 {
        self.temperature
    }

    /// The conformal level in force (reject when the p-value is <= alpha), or None.
    #[getter]
    fn alpha(&self) -> Option<f64> {
        self.alpha
    }

    /// The energy above which frames are rejected: the explicit threshold, or what the
    /// conformal level amounts to over the calibration energies (the lower when both are
    /// given); None without a rule, or when the gate combines several scores.
    #[getter]
    fn energy_threshold(&self) -> Option<f64> {
        self.energy_threshold
    }

    /// sha256 of the model file, lowercase hex.
    #[getter]
    fn model_sha256(&self) -> String {
        self.model_sha256.clone()
    }

    fn __repr__(&self) -> String {
        format!("Gate({:?}, classes={})", self.model, self.names.len())
    }
}

/// One judged frame: `ebm-gate score --json`'s record of it.
#[pyclass(frozen, module = "ebm_gate", name = "Result")]
struct FrameResult {
    /// The frame's name: `frame`, `frame#i` in a batch, the path for `score_file`,
    /// `stream#i` in a stream.
    #[pyo3(get)]
    name: String,
    /// The most probable class's index, or None when the frame was not scored.
    #[pyo3(get)]
    class_index: Option<usize>,
    /// Its name.
    #[pyo3(get)]
    class_name: Option<String>,
    /// Its probability, softmax(f(x) / T).
    #[pyo3(get)]
    probability: Option<f64>,
    /// Free energy E(x) = -T logsumexp(f(x) / T); lower = more in-distribution.
    #[pyo3(get)]
    energy: Option<f64>,
    /// Conformal p-value of the energy over the calibration energies.
    #[pyo3(get)]
    p_value: Option<f64>,
    /// Maximum softmax probability at T = 1.
    #[pyo3(get)]
    msp: Option<f64>,
    /// The largest logit.
    #[pyo3(get)]
    max_logit: Option<f64>,
    /// `in_distribution`, `out_of_distribution`, or None when no rule is in force.
    #[pyo3(get)]
    verdict: Option<&'static str>,
    /// Why the verdict (`within_threshold` when accepted, `p_value_at_or_below_alpha`, `decode_error`, ...).
    #[pyo3(get)]
    reason: Option<&'static str>,
    /// Why the frame could not be scored, or None.
    #[pyo3(get)]
    error: Option<String>,
    /// The logits f(x) as float32, shape (K,); None when the frame was not scored.
    #[pyo3(get)]
    logits: Option<Py<PyArray1<f32>>>,
    /// The frame's health scores (a dict of floats), when the bundle's gate uses them.
    #[pyo3(get)]
    health: Option<Py<PyDict>>,
    /// With several scores combined (`calibrate --scores`): each score's own p-value, by name.
    #[pyo3(get)]
    p_values: Option<Py<PyDict>>,
    /// With several scores combined: the scores that put the frame over the level, strangest
    /// first (empty when accepted).
    #[pyo3(get)]
    rejected_by: Option<Vec<&'static str>>,
    /// The record as JSON, for `to_dict`.
    json: String,
}

impl FrameResult {
    fn new(py: Python<'_>, report: FrameReport, names: &[String]) -> PyResult<FrameResult> {
        let record = FrameRecord::of_file(&report, names, true);
        let json = serde_json::to_string(&record).map_err(|e| PyValueError::new_err(e.to_string()))?;
        let health = match &record.health {
            Some(h) => {
                let dict = PyDict::new(py);
                for (k, v) in [
                    ("sharpness", h.sharpness),
                    ("noise_sigma", h.noise_sigma),
                    ("dark_fraction", h.dark_fraction),
                    ("bright_fraction", h.bright_fraction),
                    ("mean_luma", h.mean_luma),
                    ("luma_p99", h.luma_p99),
                    ("colour_cast", h.colour_cast),
                ] {
                    dict.set_item(k, py_float(v))?;
                }
                Some(dict.unbind())
            }
            None => None,
        };
        let p_values = match &record.p_values {
            Some(p) => {
                let dict = PyDict::new(py);
                for (k, &v) in p {
                    dict.set_item(k, py_float(v))?;
                }
                Some(dict.unbind())
            }
            None => None,
        };
        Ok(FrameResult {
            name: report.name,
            class_index: record.class_index,
            class_name: record.class,
            probability: record.probability.map(py_float),
            energy: record.energy.map(py_float),
            p_value: record.p_value.map(py_float),
            msp: record.msp.map(py_float),
            max_logit: record.max_logit.map(py_float),
            verdict: record.verdict,
            reason: record.reason,
            error: record.error,
            logits: report.logits.map(|l| PyArray1::from_vec(py, l).unbind()),
            health,
            p_values,
            rejected_by: record.rejected_by.clone(),
            json,
        })
    }
}

#[pymethods]
impl FrameResult {
    /// Whether the frame was accepted as in-distribution.
    #[getter]
    fn accepted(&self) -> bool {
        self.verdict == Some("in_distribution")
    }

    /// The record as `ebm-gate score --json --logits` writes it (`path`, `class`,
    /// `class_index`, `probability`, `energy`, `msp`, `max_logit`, `p_value`, `verdict`,
    /// `reason`, `error`, `logits`, and `health` when computed).
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        py.import("json")?.call_method1("loads", (&self.json,))
    }

    fn __repr__(&self) -> String {
        let opt = |x: Option<f64>| x.map_or("None".to_string(), |x| x.to_string());
        let s = |x: Option<&str>| x.map_or("None".to_string(), |x| format!("{x:?}"));
        format!(
            "Result(name={:?}, class_name={}, probability={}, energy={}, p_value={}, verdict={}, reason={})",
            self.name,
            s(self.class_name.as_deref()),
            opt(self.probability),
            opt(self.energy),
            opt(self.p_value),
            s(self.verdict),
            s(self.reason)
        )
    }
}

/// A change of the stream's debounced state.
#[pyclass(frozen, get_all, module = "ebm_gate")]
struct StateChange {
    /// The frame that changed it (its index in the stream, from 0).
    frame: u64,
    /// The state before: `unknown`, `in_distribution` or `out_of_distribution`.
    previous: &'static str,
    /// The state now.
    state: &'static str,
    /// Rejected frames in the window.
    rejected_in_window: usize,
}

#[pymethods]
impl StateChange {
    fn __repr__(&self) -> String {
        format!(
            "StateChange(frame={}, previous={:?}, state={:?}, rejected_in_window={})",
            self.frame, self.previous, self.state, self.rejected_in_window
        )
    }
}

/// One frame pushed into a `Stream`.
#[pyclass(frozen, get_all, module = "ebm_gate")]
struct StreamFrame {
    /// Position in the stream, from 0.
    index: u64,
    /// The frame's result (rejected as `frozen_frame` when it repeats the previous ones).
    result: Py<FrameResult>,
    /// The debounced state after this frame: `unknown`, `in_distribution` or
    /// `out_of_distribution`.
    state: &'static str,
    /// Rejected frames in the window after this frame.
    rejected_in_window: usize,
    /// The state change this frame made, or None.
    change: Option<Py<StateChange>>,
    /// Mean absolute difference of its 16x16 luma summary to the previous frame's (levels;
    /// 0 = a repeat), None for the first frame or with frozen-frame detection off.
    frame_difference: Option<f64>,
}

#[pymethods]
impl StreamFrame {
    fn __repr__(&self, py: Python<'_>) -> String {
        let change = match &self.change {
            Some(c) => c.get().__repr__(),
            None => "None".into(),
        };
        format!(
            "StreamFrame(index={}, state={:?}, rejected_in_window={}, change={change}, result={})",
            self.index,
            self.state,
            self.rejected_in_window,
            self.result.bind(py).get().__repr__()
        )
    }
}

/// A live feed judged frame by frame, as `ebm-gate stream` does: each frame scored, accepted
/// frames that repeat the previous ones `frozen_after` times in a row rejected as frozen, and
/// the verdicts debounced: the state becomes `out_of_distribution` when `enter` of the last
/// `window` frames were rejected, and `in_distribution` again at `exit` or fewer (it starts
/// `unknown` until a whole window is clean).
///
/// `Stream(gate, window=5, enter=3, exit=2, *, frozen_after=30)`; the gate needs a rule
/// (calibrated alpha or a threshold). Raises ValueError unless `exit < enter <= window <= 256`.
#[pyclass(frozen, module = "ebm_gate")]
struct Stream {
    gate: Py<Gate>,
    /// The judge and the frames pushed so far.
    judge: Mutex<(StreamJudge, u64)>,
    /// `(window, enter, exit, frozen_after)`, for `repr`.
    settings: (usize, usize, usize, usize),
}

#[pymethods]
impl Stream {
    #[new]
    #[pyo3(signature = (gate, window=5, enter=3, exit=2, *, frozen_after=30))]
    fn new(gate: Py<Gate>, window: i64, enter: i64, exit: i64, frozen_after: i64) -> PyResult<Stream> {
        let (window, enter, exit) = (count("window", window)?, count("enter", enter)?, count("exit", exit)?);
        let frozen_after = count("frozen_after", frozen_after)?;
        let options = StreamOptions { window, enter, exit, frozen_after, ..StreamOptions::new(StreamFormat::Mjpeg) };
        let g = gate.get();
        if g.energy_threshold.is_none() && g.alpha.is_none() {
            return Err(PyValueError::new_err(
                "a Stream needs a gate with a rule: this bundle has no alpha or threshold; calibrate it \
                 (`ebm-gate calibrate`), or give Gate(..., threshold=...) or alpha=...",
            ));
        }
        let judge = StreamJudge::new(&options, &lock(&g.inner)).map_err(|e| match e {
            Error::Debounce { error, .. } => {
                PyValueError::new_err(format!("Stream(window={window}, enter={enter}, exit={exit}): {error}"))
            }
            e => to_py(e),
        })?;
        Ok(Stream { gate, judge: Mutex::new((judge, 0)), settings: (window, enter, exit, frozen_after) })
    }

    fn __repr__(&self) -> String {
        let (window, enter, exit, frozen_after) = self.settings;
        let judge = lock(&self.judge);
        format!(
            "Stream(window={window}, enter={enter}, exit={exit}, frozen_after={frozen_after}, state={:?}, frames={})",
            judge.0.state().as_str(),
            judge.1
        )
    }

    /// Scores and judges the next frame; returns its `StreamFrame` (the result, the state, the
    /// state change if any).
    #[pyo3(signature = (frame, *, bgr=false))]
    fn push(&self, py: Python<'_>, frame: &Bound<'_, PyAny>, bgr: bool) -> PyResult<StreamFrame> {
        let gate = self.gate.get();
        let mut item = frame_item(frame, bgr, String::new(), &gate.limits)?;
        // Both locks are taken without the GIL (see `Gate::inner`).
        let (index, report, judged) = py.detach(|| {
            let mut judge = lock(&self.judge);
            let index = judge.1;
            item.name = format!("stream#{index}");
            let luma = match (&item.origin, judge.0.detects_frozen()) {
                (Origin::Image(rgb), true) => Some(Box::new(LumaSummary::of(rgb))),
                _ => None,
            };
            let mut report = lock(&gate.inner).score_items(std::slice::from_ref(&item), |_| {}).remove(0);
            // As in the stream: a frame that could not be decoded has no summary.
            let luma = luma.filter(|_| report.reason != Some(Reason::DecodeError));
            let judged = judge.0.push(&mut report, luma);
            judge.1 += 1;
            (index, report, judged)
        });
        let change = match judged.changed_from {
            Some(from) => Some(Py::new(
                py,
                StateChange {
                    frame: index,
                    previous: from.as_str(),
                    state: judged.state.as_str(),
                    rejected_in_window: judged.rejected_in_window,
                },
            )?),
            None => None,
        };
        Ok(StreamFrame {
            index,
            result: Py::new(py, gate.result(py, report)?)?,
            state: judged.state.as_str(),
            rejected_in_window: judged.rejected_in_window,
            change,
            frame_difference: judged.frame_difference.map(py_float),
        })
    }

    /// The debounced state now.
    #[getter]
    fn state(&self) -> &'static str {
        lock(&self.judge).0.state().as_str()
    }

    /// Frames pushed so far.
    #[getter]
    fn frames(&self) -> u64 {
        lock(&self.judge).1
    }
}

/// The energy gate of ebm-gate on NumPy frames: `Gate`, `Result`, `Stream`, `StreamFrame`,
/// `StateChange`, `GateError`.
#[pymodule]
#[pyo3(name = "ebm_gate")]
fn ebm_gate_module(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<Gate>()?;
    module.add_class::<FrameResult>()?;
    module.add_class::<Stream>()?;
    module.add_class::<StreamFrame>()?;
    module.add_class::<StateChange>()?;
    module.add("GateError", module.py().get_type::<GateError>())?;
    module.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
