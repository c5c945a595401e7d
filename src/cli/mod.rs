//! The subcommands, one module each: its arguments (clap), the call into the library, and the
//! printing. Flags every gate-opening command shares ([`GateArgs`]) and the global `--threads`
//! ([`ThreadsArg`]) are defined here once.

pub mod bench;
pub mod calibrate;
pub mod capture;
pub mod eval;
pub mod init;
pub mod langevin;
pub mod mqtt;
pub mod plan;
pub mod score;
pub mod stream;
pub mod systemd;

use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::Args;
use ebm_gate::core::check::{self, SettingError};
use ebm_gate::core::health::ScoreKind;
use ebm_gate::frame::InputLimits;
use ebm_gate::pipeline::{EnergyGate, Overrides};
use indicatif::{ProgressBar, ProgressStyle};

/// `--threads N`, a global flag (given before or after the subcommand).
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct ThreadsArg {
    /// Threads to run the model on: a batch's frames (SGLD chains) run on up to N threads at
    /// once, each with its own plan state, with the same results bit for bit (a build with
    /// `--features multithread` also splits one frame's matrix products over N threads); 1 to 256
    #[arg(long = "threads", default_value_t = 1, value_name = "N", global = true, value_parser = threads)]
    pub n: usize,
}

/// The limits outside input is checked against before memory is allocated for it: global
/// flags (`ebm_gate::frame::InputLimits`).
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct LimitsArg {
    /// Largest width or height of an image or frame (also stream's raw --size), in pixels;
    /// larger ones are rejected from their header, before decoding
    #[arg(long, default_value_t = InputLimits::default().max_side, value_name = "PX", global = true, value_parser = side)]
    pub max_image_side: u32,
    /// Largest encoded input, in MiB: an image file, an MJPEG frame, an IDX body
    #[arg(long, default_value_t = InputLimits::default().max_input_bytes >> 20, value_name = "MIB", global = true, value_parser = mib)]
    pub max_input_mib: u64,
    /// Largest working memory of one image's decoder, in MiB
    #[arg(long, default_value_t = InputLimits::default().max_decoded_bytes >> 20, value_name = "MIB", global = true, value_parser = mib)]
    pub max_decode_mib: u64,
    /// Most frames one run of score, eval, calibrate or refine takes from its inputs (folders,
    /// IDX files; a stream is not counted)
    #[arg(long, default_value_t = InputLimits::default().max_frames, value_name = "N", global = true, value_parser = count)]
    pub max_frames: usize,
}

impl LimitsArg {
    /// The library's limits.
    pub fn limits(&self) -> InputLimits {
        InputLimits {
            max_side: self.max_image_side,
            max_input_bytes: self.max_input_mib << 20,
            max_decoded_bytes: self.max_decode_mib << 20,
            max_frames: self.max_frames,
        }
    }
}

/// What the global flags give every command.
#[derive(Clone, Copy, Debug)]
pub struct Globals {
    /// `--threads`.
    pub threads: usize,
    /// `--max-image-side`, `--max-input-mib`, `--max-decode-mib`, `--max-frames`.
    pub limits: InputLimits,
}

/// The gate's flags of `score`, `eval` and `stream`.
#[derive(Args, Clone)]
pub struct GateArgs {
    /// Energy threshold: reject frames with E(x) > THRESHOLD (replaces gate.json's gate)
    #[arg(long, allow_hyphen_values = true)]
    pub threshold: Option<f32>,
    /// Temperature T for probabilities and energy (overrides gate.json)
    #[arg(long, value_parser = temperature)]
    pub temperature: Option<f32>,
    /// Conformal gate: reject frames whose p-value is <= ALPHA (overrides gate.json's alpha;
    /// needs calibration energies; with --threshold, both rules apply)
    #[arg(long, value_parser = alpha)]
    pub alpha: Option<f32>,
    /// Scores the gate combines under one conformal guarantee, comma-separated (energy,
    /// sharpness, noise_sigma, dark_fraction, bright_fraction, mean_luma, luma_p99, colour_cast; `all`;
    /// `health` = all but the energy) [default: gate.json's scores.used, else energy]; needs a
    /// gate.json calibrated with --scores
    #[arg(long, value_name = "LIST", value_parser = scores)]
    pub scores: Option<ScoreList>,
    /// Frames per forward pass, 1 to 4096 [default: 32; stream: at most 4, of the frames ready]
    #[arg(long, value_parser = batch)]
    pub batch: Option<usize>,
    /// Most frames per tract run: a forward pass is run in pieces of at most this many
    /// [default: 1 for a network with spatial convolutions, where tract is fastest frame by
    /// frame; else the whole pass]
    #[arg(long, value_name = "N", value_parser = batch)]
    pub forward_batch: Option<usize>,
    #[command(flatten)]
    pub threads: ThreadsArg,
}

impl GateArgs {
    /// The library's overrides with the global flags `g`, with `score`'s and `eval`'s default
    /// batch of 32.
    pub fn overrides(&self, g: &Globals) -> Overrides {
        Overrides {
            threads: Some(g.threads),
            limits: Some(g.limits),
            threshold: self.threshold,
            temperature: self.temperature,
            alpha: self.alpha,
            set_alpha: None,
            batch: Some(self.batch.unwrap_or(32)),
            forward_batch: self.forward_batch,
            scores: self.scores.clone().map(|s| s.0),
            health_scores: false,
            accept_new_model: false,
        }
    }
}

/// The scores `--scores` names, sorted, without repeats.
#[derive(Clone, Debug, PartialEq)]
pub struct ScoreList(pub Vec<ScoreKind>);

/// `--scores`: a comma-separated list of score names, `all` or `health`.
pub fn scores(s: &str) -> std::result::Result<ScoreList, String> {
    let mut kinds = Vec::new();
    for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match name {
            "all" => kinds.extend(ScoreKind::ALL),
            "health" => kinds.extend(ScoreKind::HEALTH),
            _ => kinds.push(ScoreKind::from_name(name).ok_or_else(|| {
                format!(
                    "unknown score {name:?}: give names from {}, or all, or health",
                    ebm_gate::bundle::score_names()
                )
            })?),
        }
    }
    if kinds.is_empty() {
        return Err("give at least one score".into());
    }
    kinds.sort();
    kinds.dedup();
    Ok(ScoreList(kinds))
}

/// Opens a bundle with overrides, refusing a batch of 0 and a `--temperature` that would leave
/// frames unchecked.
pub fn open(model: &Path, overrides: &Overrides) -> Result<EnergyGate> {
    let gate = EnergyGate::open(model, overrides).with_context(|| format!("cannot use {}", model.display()))?;
    let st = gate.settings();
    if let (Some(t), Some(why)) = (overrides.temperature, &st.gate_set_aside) {
        if !st.gates() {
            bail!(
                "{why}: at --temperature {t} the bundle's gate does not hold, and frames would pass unchecked; \
                 give --threshold too, or leave out --temperature"
            );
        }
        eprintln!("note: {why}; using --threshold / --alpha as given");
    }
    Ok(gate)
}

/// A one-line warning (stderr) for a bundle whose normalisation was never set, for the
/// commands that judge frames (`calibrate` says it at length).
pub fn warn_unset_normalization(gate: &EnergyGate, command: &str) {
    if gate.input().normalization == ebm_gate::bundle::Normalization::Unset {
        eprintln!(
            "{command}: WARNING: the normalisation of {} was never set (frames fed in [0, 1], mean 0, std 1): see \
             `ebm-gate init`",
            gate.paths().model.display()
        );
    }
}

/// The scores a combined gate uses, named: `"energy, sharpness, ... combined"` (empty without
/// one).
pub fn combined_names(st: &ebm_gate::pipeline::GateSettings) -> String {
    st.multi
        .as_ref()
        .map(|m| format!("{} combined", m.kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")))
        .unwrap_or_default()
}

pub fn progress_bar(total: usize, enabled: bool) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg:12} [{bar:40}] {pos}/{len} frames, {per_sec}, eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}

/// Parses `s` and applies one of the library's checks (`ebm_gate::core::check`): the clap
/// parsers below, so that a flag is refused with the library's own words.
fn checked<T: std::str::FromStr>(s: &str, check: impl Fn(T) -> Result<T, SettingError>) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    check(s.parse().map_err(|e: T::Err| e.to_string())?).map_err(|e| e.to_string())
}

/// clap parser of a count that must be at least 1 (`--batch`, `--runs`, ...).
pub fn count(s: &str) -> Result<usize, String> {
    checked(s, |n| check::at_least_one("the value", n))
}

/// clap parser of `--max-image-side`: 1 to 65,535 pixels (the largest JPEG side).
fn side(s: &str) -> Result<u32, String> {
    match s.parse::<u32>().map_err(|e| e.to_string())? {
        n @ 1..=65_535 => Ok(n),
        n => Err(format!("must be 1 to 65535 pixels, got {n}")),
    }
}

/// clap parser of `--max-input-mib`: 1 to 65,536 MiB.
fn mib(s: &str) -> Result<u64, String> {
    match s.parse::<u64>().map_err(|e| e.to_string())? {
        n @ 1..=65_536 => Ok(n),
        n => Err(format!("must be 1 to 65536 MiB, got {n}")),
    }
}

/// clap parser of a batch size (`--batch`, `--forward-batch`, `sample -n`): 1 to `MAX_BATCH`.
pub fn batch(s: &str) -> Result<usize, String> {
    checked(s, |n| check::count_up_to("the batch", n, check::MAX_BATCH))
}

/// clap parser of a number of SGLD steps: 0 to `MAX_STEPS`.
pub fn steps(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|e: std::num::ParseIntError| e.to_string())?;
    if n > check::MAX_STEPS {
        return Err(SettingError::TooLarge { name: "steps", max: check::MAX_STEPS, got: n }.to_string());
    }
    Ok(n)
}

/// clap parser of a number of runs (`bench --runs`): 1 to `MAX_RUNS`.
pub fn runs(s: &str) -> Result<usize, String> {
    checked(s, |n| check::count_up_to("runs", n, check::MAX_RUNS))
}

/// clap parser of `--threads`: 1 to `MAX_THREADS`.
pub fn threads(s: &str) -> Result<usize, String> {
    checked(s, check::threads)
}

/// clap parser of a temperature: finite and > 0.
pub fn temperature(s: &str) -> Result<f32, String> {
    checked(s, check::temperature)
}

/// clap parser of a significance level in (0, 1).
pub fn alpha(s: &str) -> Result<f32, String> {
    checked(s, check::alpha)
}

/// `v` with `prec` decimals, or `-` when absent.
pub fn fmt_opt(v: Option<f32>, prec: usize) -> String {
    v.map(|x| format!("{x:.prec$}")).unwrap_or_else(|| "-".into())
}
