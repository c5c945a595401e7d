//! The library's typed errors. Each message names the file and the problem.

use std::path::PathBuf;

/// Everything the runtime can fail on. Variants carry the offending path and values.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error (in the message, not chained as a source, so that it
        /// is printed once).
        error: std::io::Error,
    },
    /// An image could not be decoded.
    #[error("{path}: cannot decode image: {message}")]
    Decode {
        /// The image file (or `source#index` for a frame inside a container such as IDX).
        path: PathBuf,
        /// The decoder's message.
        message: String,
    },
    /// The ONNX model could not be loaded, optimised or run.
    #[error("{path}: model error: {message}")]
    Model {
        /// The `.onnx` file.
        path: PathBuf,
        /// What went wrong, from tract.
        message: String,
    },
    /// A tensor or image does not have the shape the model needs.
    #[error("{path}: shape mismatch: expected {expected}, got {got}")]
    Shape {
        /// The model or frame concerned.
        path: PathBuf,
        /// The shape the model needs, e.g. `[N, 3, 32, 32]`.
        expected: String,
        /// The shape given.
        got: String,
    },
    /// `gate.json` is malformed or inconsistent with the model.
    #[error("{path}: {message}")]
    Bundle {
        /// The `gate.json` (or model directory).
        path: PathBuf,
        /// What is wrong, and how to fix it where known.
        message: String,
    },
    /// The bundle has no energy-gradient graph (`refine`, `sample` and the SGLD step need one).
    #[error(
        "{path}: {why}: this bundle has no energy-gradient graph, which refine and sample need; derive one from the \
         PyTorch model with models/tools/energy_grad.py (its `export()` takes any classifier; its command line \
         writes energy_grad.onnx and gate.json's `gradient` section for the reference model)"
    )]
    NoGradient {
        /// The model or its `gate.json`.
        path: PathBuf,
        /// What is missing: `no gate.json beside the model`, or `gate.json has no \`gradient\` section`.
        why: &'static str,
    },
    /// A set of frames is empty, or none of its frames could be scored.
    #[error("{set} {path}: {problem}")]
    NoFrames {
        /// Which set, e.g. `ID set` or `OOD set tiny`.
        set: String,
        /// Its path.
        path: PathBuf,
        /// `no such file or folder`, `no image files found` or `no frame could be scored`.
        problem: &'static str,
    },
    /// Langevin settings or buffers that do not fit (the core's check).
    #[error("invalid setting: {0}")]
    Langevin(#[from] crate::core::langevin::LangevinError),
    /// A debouncer's window and thresholds that do not fit (`--window`, `--enter`, `--exit`).
    #[error("invalid setting: --window {window} --enter {enter} --exit {exit}: {error}")]
    Debounce {
        /// The window.
        window: usize,
        /// Rejections that switch the state out.
        enter: usize,
        /// Rejections at or below which it switches back.
        exit: usize,
        /// The core's reason.
        error: crate::core::debounce::DebounceError,
    },
    /// The calibration in `path` does not allow a level (too few calibration values for it, or
    /// a level outside (0, 1)).
    #[error("invalid setting: {path}: {what}{error}")]
    Calibration {
        /// The `gate.json` (or model) whose calibration it is.
        path: PathBuf,
        /// What the level is for: empty for the gate, `prediction sets: ` for the sets.
        what: &'static str,
        /// The reason.
        error: crate::calibration::CalibrationError,
    },
    /// A temperature, significance level or count out of its range.
    #[error("invalid setting: {0}")]
    Setting(#[from] crate::core::check::SettingError),
    /// An argument or setting is out of range.
    #[error("invalid setting: {0}")]
    Invalid(String),
}

/// `Result` with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// tract's error while loading, optimising or running the model at `path`, with its whole
    /// chain of causes.
    #[cfg(feature = "runtime")]
    pub(crate) fn tract(path: impl Into<PathBuf>, e: tract_onnx::prelude::TractError) -> Error {
        Error::Model { path: path.into(), message: format!("{e:#}") }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io { path: path.into(), error: source }
    }
}
