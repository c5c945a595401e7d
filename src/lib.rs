//! # ebm-gate
//!
//! An edge runtime that treats an image classifier as an energy-based model (EBM) and gates
//! camera frames on its free energy.
//!
//! A classifier with logits `f(x)` in `R^K` defines the joint EBM of JEM (Grathwohl et al.
//! 2019, arXiv:1912.03263): `E(x, y) = -f(x)[y]` and the free energy
//! `E(x) = -T * logsumexp(f(x) / T)`. **Lower energy = more in-distribution.** Class
//! probabilities are `softmax(f(x) / T)`. Frames whose energy is above a threshold fitted on
//! in-distribution data are rejected as out-of-distribution (the energy score of Liu et al.
//! 2020, arXiv:2010.03759); anything that cannot be scored is rejected too (the gate fails
//! closed).
//!
//! ## Layout
//!
//! Layers, from the bottom; a module imports only modules listed before it (no cycles):
//!
//! - [`core`] (`no_std`, no allocation): energy, softmax scores, conformal p-value and
//!   quantile, the threshold decision, the debouncer, the SGLD step, and [`core::check`], the
//!   range checks every layer shares. Builds for microcontrollers with `--no-default-features`.
//! - [`metrics`] (feature `std`): AUROC, AUPR, FPR@95TPR, accuracy, as scikit-learn computes
//!   them; NLL, ECE, MCE, Brier and reliability bins. [`calibration`]: the calibration maths
//!   (temperature scaling, conformal thresholds, LAC prediction sets, false-rejection checks).
//!   [`plots`] (feature `plots`): reliability diagrams, ROC curves, energy histograms.
//!   [`alarms`]: false alarms per hour of a debounced gate on clean frames, and [`alarms::plan`].
//! - Feature `decode`, everything that reads input, without the ONNX runtime: [`error`] (typed
//!   errors); [`bundle`] (`model.onnx` + `gate.json`), [`raw`] (raw camera buffers, MJPEG
//!   streams, [`raw::StreamFormat`]); [`frame`] (decode, resize, normalise); [`source`] (files,
//!   folders, IDX); [`replay`] (replay-buffer files); [`health`] (frame-health scores on the
//!   full decoded frame: sharpness, noise, exposure, colour cast, a frozen-frame summary). The
//!   fuzz targets (`fuzz/`) build on it.
//! - Feature `runtime` (the edge runtime, with `decode`): `model` (tract, private), and the layers
//!   below.
//! - [`pipeline`]: [`pipeline::EnergyGate`], frames in, [`pipeline::FrameReport`]s out, with the
//!   override precedence ([`pipeline::gate_rule`]); [`record`]: [`record::FrameRecord`], the one
//!   JSON record of a frame.
//! - The jobs, each a library function returning a typed report that the CLI prints:
//!   [`calibrate`] ([`calibrate::calibrate`]: fit `gate.json`), [`eval`] ([`eval::evaluate`]),
//!   [`stream`] ([`stream::run_stream`]: a live feed, debounced; `v4l2` with feature `v4l2`),
//!   [`init`] ([`init::init`]: a bundle for a classifier made elsewhere),
//!   [`langevin`] (the energy gradient through tract, SGLD refinement, the replay buffer of
//!   [`replay`]),
//!   [`bench`](mod@bench) ([`bench::run_bench`]: per-stage latency on this machine).
//! - The binary (`src/main.rs`, feature `cli`) parses and dispatches; `src/cli/` holds one module
//!   per subcommand (its arguments, the call into the library, the printing).
//!
//! ```no_run
//! # #[cfg(feature = "runtime")] {
//! use ebm_gate::pipeline::{EnergyGate, Overrides};
//! use ebm_gate::record::FrameRecord;
//! use ebm_gate::source::collect;
//! let mut gate = EnergyGate::open("models/cifar10-airnet".as_ref(), &Overrides::default()).unwrap();
//! let frames = collect(&["models/cifar10-airnet/samples".into()], None).unwrap();
//! for r in gate.score_items(&frames, |_| {}) {
//!     println!("{}", FrameRecord::of_file(&r, gate.class_names(), false).to_json_line());
//! }
//! # }
//! ```
#![cfg_attr(not(feature = "std"), no_std)]
#![warn(missing_docs)]

pub mod core;

#[cfg(feature = "std")]
pub mod alarms;
#[cfg(feature = "std")]
pub mod calibration;
#[cfg(feature = "std")]
pub mod metrics;
#[cfg(feature = "plots")]
pub mod plots;

#[cfg(feature = "runtime")]
pub mod bench;
#[cfg(feature = "decode")]
pub mod bundle;
#[cfg(feature = "runtime")]
pub mod calibrate;
#[cfg(feature = "decode")]
pub mod error;
#[cfg(feature = "runtime")]
pub mod eval;
#[cfg(feature = "decode")]
pub mod frame;
#[cfg(feature = "decode")]
pub mod health;
#[cfg(feature = "runtime")]
pub mod init;
#[cfg(feature = "runtime")]
pub mod langevin;
#[cfg(feature = "runtime")]
mod model;
#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "runtime")]
pub mod pipeline;
#[cfg(feature = "decode")]
pub mod raw;
#[cfg(feature = "runtime")]
pub mod record;
#[cfg(feature = "decode")]
pub mod replay;
#[cfg(feature = "decode")]
pub mod source;
#[cfg(feature = "runtime")]
pub mod stream;
#[cfg(feature = "v4l2")]
pub mod v4l2;

#[cfg(feature = "decode")]
pub use error::{Error, Result};
#[cfg(feature = "runtime")]
pub use model::{MatMulInfo, Model, OpTime, MAX_THREADS};
