//! `ebm-gate`: the command-line tool. A thin layer: parse, validate, call the library, format.
//!
//! Exit codes: `score` 0 = every frame in-distribution (or scored, when there is no threshold),
//! 1 = at least one frame rejected (an unreadable frame is rejected), 2 = the run could not
//! proceed; `eval` and `calibrate` 0 or 2.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use ebm_gate::calibration::{calibrate, calibration_frames, CalibrateOptions, CHECK_ALPHAS};
use ebm_gate::core::gate::Verdict;
use ebm_gate::eval::{
    conformal_rows, probability_calibration, set_rows, summarise_id, summarise_ood, EvalReport, SCORE_NAMES,
};
use ebm_gate::pipeline::{EnergyGate, FrameReport, Overrides};
use ebm_gate::raw::{PixelFormat, YuvSpec};
use ebm_gate::source::collect;
use ebm_gate::stream::{run_stream, StopReason, StreamFormat, StreamOptions, StreamSource};
use indicatif::{ProgressBar, ProgressStyle};

mod cli;
use cli::bench::bench_cmd;
use cli::langevin::{refine_cmd, sample_cmd, ChainArgs, SampleArgs};
use cli::ThreadsArg;

#[derive(Parser)]
#[command(name = "ebm-gate", version, about = "Gate camera frames on the free energy of an ONNX classifier", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct GateArgs {
    /// Energy threshold: reject frames with E(x) > THRESHOLD (replaces gate.json's gate)
    #[arg(long, allow_hyphen_values = true)]
    threshold: Option<f32>,
    /// Temperature T for probabilities and energy (overrides gate.json)
    #[arg(long)]
    temperature: Option<f32>,
    /// Conformal gate: reject frames whose p-value is <= ALPHA (overrides gate.json's alpha;
    /// needs calibration energies; with --threshold, both rules apply)
    #[arg(long)]
    alpha: Option<f32>,
    /// Frames per forward pass [default: 32; stream: at most 4, of the frames ready]
    #[arg(long)]
    batch: Option<usize>,
    /// Most frames per tract run: a forward pass is run in pieces of at most this many
    /// [default: 1 for a network with spatial convolutions, where tract is fastest frame by
    /// frame; else the whole pass]
    #[arg(long, value_name = "N")]
    forward_batch: Option<usize>,
    #[command(flatten)]
    threads: ThreadsArg,
}

impl GateArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            threshold: self.threshold,
            temperature: self.temperature,
            alpha: self.alpha,
            set_alpha: None,
            batch: Some(self.batch.unwrap_or(32)),
            forward_batch: self.forward_batch,
            accept_new_model: false,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Score image files and folders (recursively): class, probability, energy, verdict
    Score {
        /// Bundle directory (model.onnx + gate.json) or an .onnx file
        model: PathBuf,
        /// Image files, folders, or IDX files
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// One JSON object per frame instead of a table
        #[arg(long)]
        json: bool,
        /// Include the logits in JSON output
        #[arg(long)]
        logits: bool,
        /// Also give each frame a conformal prediction set of classes with coverage 1 - SET_ALPHA
        /// (LAC; needs a bundle calibrated on labelled data)
        #[arg(long, value_name = "SET_ALPHA")]
        set_alpha: Option<f32>,
        #[command(flatten)]
        gate: GateArgs,
    },
    /// Fit the gate on in-distribution frames: temperature (NLL), conformal threshold, prediction
    /// sets; writes gate.json and reports NLL/ECE/MCE/Brier before and after on held-out frames
    Calibrate {
        /// Bundle directory (model.onnx [+ gate.json]) or an .onnx file
        model: PathBuf,
        /// In-distribution folder; the ImageFolder layout <class>/<image> (class names as in
        /// gate.json) gives labels, needed to fit T and prediction sets
        #[arg(long)]
        id: PathBuf,
        /// Level of the conformal gate: at most ALPHA of ID frames are rejected
        #[arg(long, default_value_t = 0.05, allow_hyphen_values = true)]
        alpha: f32,
        /// Fraction of the folder held out from calibration for the before/after report
        #[arg(long, default_value_t = 0.5, allow_hyphen_values = true)]
        holdout: f64,
        /// Seed of the calibration/held-out split
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Where to write gate.json (default: the bundle's gate.json)
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Write the reliability diagram (reliability.png/.svg) into DIR
        #[arg(long, value_name = "DIR")]
        plots: Option<PathBuf>,
        /// Frames per forward pass
        #[arg(long, default_value_t = 32)]
        batch: usize,
        #[command(flatten)]
        threads: ThreadsArg,
        /// The model changed since gate.json was written (sha256 mismatch): keep gate.json's
        /// preprocessing and class names, refit everything else
        #[arg(long)]
        new_model: bool,
    },
    /// Gate a live stream of raw or MJPEG frames: a JSON line per frame, an event line when the
    /// debounced state changes, a summary line at the end
    Stream(StreamArgs),
    /// Warm-started Langevin (SGLD) refinement of frames on the energy: writes the refined
    /// frames (PNG), a before/after grid and the energy trace (trace.json)
    Refine {
        /// Bundle directory with an energy-gradient graph (gate.json's `gradient`)
        model: PathBuf,
        /// Image files, folders (recursively) or IDX files to start the chains from
        #[arg(required = true)]
        frames: Vec<PathBuf>,
        /// Output directory
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Frames per chain batch
        #[arg(long, default_value_t = 16)]
        batch: usize,
        #[command(flatten)]
        chain: ChainArgs,
    },
    /// Draw samples from a persistent replay buffer (JEM), refine them by SGLD, put them back,
    /// and write them as a PNG grid
    Sample {
        /// Bundle directory with an energy-gradient graph (gate.json's `gradient`)
        model: PathBuf,
        #[command(flatten)]
        sample: SampleArgs,
        #[command(flatten)]
        chain: ChainArgs,
    },
    /// Latency of each stage on this machine (decode, preprocess, forward, gate, SGLD step):
    /// cold start, p50/p90/p99, frames/s, peak RSS, CPU and SIMD features
    Bench {
        /// Bundle directory (model.onnx [+ gate.json]) or an .onnx file
        model: PathBuf,
        /// Frames per forward pass
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Most frames per tract run [default: 1 for a network with spatial convolutions,
        /// else the whole batch]
        #[arg(long, value_name = "N")]
        forward_batch: Option<usize>,
        #[command(flatten)]
        threads: ThreadsArg,
        /// Image files or folders to time (default: the bundle's samples/); cycled through
        #[arg(long, value_name = "PATH")]
        frames: Vec<PathBuf>,
        /// Measured batches per stage
        #[arg(long, default_value_t = 30)]
        runs: usize,
        /// Batches run first and not measured
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Skip the SGLD step (timed when the bundle has an energy-gradient graph)
        #[arg(long)]
        no_gradient: bool,
        /// Also time each node of the optimised plan over one tract run: the slowest nodes and
        /// the share of each operator
        #[arg(long)]
        ops: bool,
        /// Write the report as JSON to FILE
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// ID accuracy and OOD metrics (AUROC, AUPR-In/Out, FPR@95TPR) for energy, MSP, MaxLogit
    Eval {
        /// Bundle directory (model.onnx + gate.json) or an .onnx file
        model: PathBuf,
        /// In-distribution folder (ImageFolder layout <class>/<image> gives accuracy)
        #[arg(long)]
        id: PathBuf,
        /// OOD set as NAME=PATH (a folder, image file or IDX file); repeat for several
        #[arg(long, value_parser = parse_named)]
        ood: Vec<(String, PathBuf)>,
        /// Write the full report as JSON to FILE
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Use N frames of each set, spread evenly over it (every k-th in path order)
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
        /// Write ROC curves and energy histograms (roc.png/.svg, energy_histogram.png/.svg) into DIR
        #[arg(long, value_name = "DIR")]
        plots: Option<PathBuf>,
        /// Random half/half splits of the ID energies for the split-conformal check
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
        splits: u64,
        #[command(flatten)]
        gate: GateArgs,
    },
}

/// `--format` of `stream`: a raw pixel format or MJPEG.
#[derive(Clone, Copy, Debug)]
enum InputFormat {
    Raw(PixelFormat),
    Mjpeg,
}

fn parse_format(s: &str) -> Result<InputFormat, String> {
    if s.eq_ignore_ascii_case("mjpeg") || s.eq_ignore_ascii_case("mjpg") {
        return Ok(InputFormat::Mjpeg);
    }
    s.parse::<PixelFormat>().map(InputFormat::Raw).map_err(|e| format!("{e}, or mjpeg"))
}

fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("expected WIDTHxHEIGHT such as 640x480, got {s:?}");
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    let (w, h) = (w.trim().parse::<u32>().map_err(|_| bad())?, h.trim().parse::<u32>().map_err(|_| bad())?);
    if w == 0 || h == 0 {
        return Err(bad());
    }
    Ok((w, h))
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum CropArg {
    /// Scale the shorter side to the model's size and take the centre
    Center,
    /// Scale the whole frame to the model's size, ignoring its aspect ratio
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
enum YuvMatrix {
    Bt601,
    Bt709,
}

#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
enum YuvRange {
    Limited,
    Full,
}

#[derive(Args)]
struct StreamArgs {
    /// Bundle directory (model.onnx + gate.json) or an .onnx file; needs a gate (calibrated, or --threshold)
    model: PathBuf,
    /// Where frames come from: - (stdin), a file or a named pipe, or a V4L2 camera /dev/videoN
    /// (builds with the `v4l2` feature; otherwise pipe it in with ffmpeg or GStreamer)
    #[arg(long, default_value = "-")]
    input: PathBuf,
    /// Frame format: rgb24, bgr24, gray8, yuyv422, nv12, i420 (= yuv420p) raw frames of --size, or mjpeg
    #[arg(long, value_parser = parse_format)]
    format: InputFormat,
    /// Size of raw frames, WIDTHxHEIGHT (not needed for mjpeg; with a V4L2 camera, the size asked for)
    #[arg(long, value_parser = parse_size, value_name = "WxH")]
    size: Option<(u32, u32)>,
    /// How a frame is brought to the model's size (default: as gate.json says; center for the reference bundle)
    #[arg(long, value_enum)]
    crop: Option<CropArg>,
    /// YUV matrix of yuyv422/nv12/i420 frames
    #[arg(long, value_enum, default_value = "bt601")]
    yuv_matrix: YuvMatrix,
    /// YUV range of yuyv422/nv12/i420 frames
    #[arg(long, value_enum, default_value = "limited")]
    yuv_range: YuvRange,
    /// Print a frame line for every N-th frame only (state changes and errors are always printed)
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    every: u64,
    /// Debouncing window: the last N verdicts count (1 to 256)
    #[arg(long, default_value_t = 5, value_name = "N")]
    window: usize,
    /// Switch to out_of_distribution when at least K of the window's frames are rejected
    #[arg(long, default_value_t = 3, value_name = "K")]
    enter: usize,
    /// Switch back when at most J are (default K - 1: plain k-of-n; lower adds hysteresis)
    #[arg(long, value_name = "J")]
    exit: Option<usize>,
    /// Save rejected frames (full size, RGB) as PNG into DIR
    #[arg(long, value_name = "DIR")]
    save_rejected: Option<PathBuf>,
    /// Most frames --save-rejected keeps
    #[arg(long, default_value_t = 100, value_name = "N", requires = "save_rejected")]
    max_saved: usize,
    #[command(flatten)]
    gate: GateArgs,
}

fn parse_named(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => Ok((name.to_string(), PathBuf::from(path))),
        _ => Err(format!("expected NAME=PATH, got {s:?}")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let threads = match &cli.command {
        Command::Score { gate, .. } | Command::Eval { gate, .. } => gate.threads.n,
        Command::Stream(args) => args.gate.threads.n,
        Command::Calibrate { threads, .. } | Command::Bench { threads, .. } => threads.n,
        Command::Refine { chain, .. } | Command::Sample { chain, .. } => chain.threads.n,
    };
    if let Err(e) = ebm_gate::set_threads(threads) {
        eprintln!("error: --threads {threads}: {e}");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Command::Score { model, inputs, json, logits, set_alpha, gate } => {
            score(&model, &inputs, json, logits, set_alpha, &gate)
        }
        Command::Calibrate { model, id, alpha, holdout, seed, out, plots, batch, new_model, threads: _ } => {
            calibrate_cmd(&model, &id, alpha, holdout, seed, out, plots.as_deref(), batch, new_model)
        }
        Command::Stream(args) => stream_cmd(&args),
        Command::Bench { model, batch, forward_batch, threads: _, frames, runs, warmup, no_gradient, ops, json } => {
            bench_cmd(&model, batch, forward_batch, frames, runs, warmup, !no_gradient, ops, json.as_deref())
        }
        Command::Refine { model, frames, out, batch, chain } => refine_cmd(&model, &frames, &out, batch, &chain),
        Command::Sample { model, sample, chain } => sample_cmd(&model, &sample, &chain),
        Command::Eval { model, id, ood, json, limit, plots, splits, gate } => eval(
            &model,
            &id,
            &ood,
            json.as_deref(),
            limit.map(|n| n as usize),
            plots.as_deref(),
            splits as usize,
            &gate,
        ),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn open(model: &std::path::Path, overrides: &Overrides) -> Result<EnergyGate> {
    if overrides.batch == Some(0) {
        bail!("--batch must be at least 1");
    }
    if overrides.forward_batch == Some(0) {
        bail!("--forward-batch must be at least 1");
    }
    let gate = EnergyGate::open(model, overrides).with_context(|| format!("cannot load model {}", model.display()))?;
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

fn progress_bar(total: usize, enabled: bool) -> ProgressBar {
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

fn json_line(r: &FrameReport, names: &[String], with_logits: bool) -> serde_json::Value {
    let s = r.scores;
    let mut v = serde_json::json!({
        "path": r.name,
        "class": s.map(|s| names[s.class].clone()),
        "class_index": s.map(|s| s.class),
        "probability": s.map(|s| s.probability),
        "energy": s.map(|s| s.energy),
        "msp": s.map(|s| s.msp),
        "max_logit": s.map(|s| s.max_logit),
        "p_value": r.p_value,
        "prediction_set": r.prediction_set.as_ref().map(|set| set.iter().map(|&y| names[y].clone()).collect::<Vec<_>>()),
        "verdict": r.verdict.map(|v| v.as_str()),
        "reason": r.reason.map(|r| r.as_str()),
        "error": r.error,
    });
    if with_logits {
        v["logits"] = serde_json::json!(r.logits);
    }
    v
}

fn fmt_opt(v: Option<f32>, prec: usize) -> String {
    v.map(|x| format!("{x:.prec$}")).unwrap_or_else(|| "-".into())
}

fn score(
    model: &std::path::Path,
    inputs: &[PathBuf],
    json: bool,
    logits: bool,
    set_alpha: Option<f32>,
    args: &GateArgs,
) -> Result<ExitCode> {
    let mut gate = open(model, &Overrides { set_alpha, ..args.overrides() })?;
    let items = collect(inputs, None)?;
    if items.is_empty() {
        bail!(
            "no image files found in {}",
            inputs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        );
    }
    let names = gate.class_names().to_vec();
    let bar = progress_bar(items.len(), items.len() > 256);
    let reports = gate.score_items(&items, |n| bar.inc(n as u64));
    bar.finish_and_clear();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let has_p = reports.iter().any(|r| r.p_value.is_some());
    let width = reports.iter().map(|r| r.name.len()).max().unwrap_or(4).clamp(4, 60);
    let set_text = |r: &FrameReport| {
        r.prediction_set
            .as_ref()
            .map(|set| format!("{{{}}}", set.iter().map(|&y| names[y].as_str()).collect::<Vec<_>>().join(",")))
    };
    let set_width = if set_alpha.is_some() {
        reports.iter().filter_map(set_text).map(|t| t.len()).max().unwrap_or(3).max(3) + 2
    } else {
        0
    };
    if !json {
        let _ = writeln!(
            out,
            "{:<width$}  {:<12} {:>6} {:>8} {:>6} {:>8} {:>7}  {:<set_width$}{:<20} reason",
            "path",
            "class",
            "prob",
            "energy",
            "msp",
            "maxlogit",
            if has_p { "p" } else { "" },
            if set_alpha.is_some() { "set" } else { "" },
            "verdict"
        );
    }
    for r in &reports {
        let line = if json {
            json_line(r, &names, logits).to_string()
        } else {
            let s = r.scores;
            format!(
                "{:<width$}  {:<12} {:>6} {:>8} {:>6} {:>8} {:>7}  {:<set_width$}{:<20} {}",
                r.name,
                s.map(|s| names[s.class].clone()).unwrap_or_else(|| "-".into()),
                fmt_opt(s.map(|s| s.probability), 3),
                fmt_opt(s.map(|s| s.energy), 3),
                fmt_opt(s.map(|s| s.msp), 3),
                fmt_opt(s.map(|s| s.max_logit), 3),
                if has_p { fmt_opt(r.p_value, 4) } else { String::new() },
                if set_alpha.is_some() { set_text(r).unwrap_or_else(|| "-".into()) } else { String::new() },
                r.verdict.map(|v| v.as_str()).unwrap_or("-"),
                match (&r.reason, &r.error) {
                    (_, Some(e)) => format!("{}: {e}", r.reason.map(|x| x.as_str()).unwrap_or("error")),
                    (Some(reason), None) => reason.as_str().to_string(),
                    (None, None) => "-".into(),
                }
            )
        };
        if writeln!(out, "{line}").is_err() {
            break; // closed stdout (a pipe to `head`, say): stop quietly
        }
    }
    let rejected = reports.iter().filter(|r| r.verdict == Some(Verdict::OutOfDistribution)).count();
    let failed = reports.iter().filter(|r| r.scores.is_none()).count();
    let accepted = reports.iter().filter(|r| r.verdict == Some(Verdict::InDistribution)).count();
    let st = gate.settings();
    let rule = match (st.threshold, st.alpha) {
        (Some(t), None) => format!("threshold E <= {t}"),
        (None, Some(a)) => format!(
            "conformal gate: reject p <= {a} (E > {}, {} calibration energies)",
            fmt_opt(st.energy_threshold(), 4),
            st.calibration_energies.len()
        ),
        (Some(t), Some(a)) => format!("threshold E <= {t} and conformal p > {a}"),
        (None, None) => String::new(),
    };
    if st.gates() {
        eprintln!(
            "{} frames: {accepted} in-distribution, {rejected} rejected ({failed} could not be scored); {rule}",
            reports.len()
        );
    } else {
        eprintln!(
            "{} frames scored without a threshold ({failed} could not be scored): give --threshold or a bundle with gate.json for verdicts",
            reports.len()
        );
    }
    if let Some(a) = set_alpha {
        eprintln!(
            "prediction sets: LAC at coverage >= {:.0}% (T = {:.4}; an empty set: no class is plausible)",
            100.0 * (1.0 - a),
            st.temperature
        );
    }
    Ok(if rejected > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

#[allow(clippy::too_many_arguments)]
fn calibrate_cmd(
    model: &std::path::Path,
    id: &std::path::Path,
    alpha: f32,
    holdout: f64,
    seed: u64,
    out: Option<PathBuf>,
    plots: Option<&std::path::Path>,
    batch: usize,
    new_model: bool,
) -> Result<ExitCode> {
    let mut gate = open(model, &Overrides { batch: Some(batch), accept_new_model: new_model, ..Overrides::default() })?;
    if let Some(why) = &gate.settings().gate_set_aside {
        eprintln!("note: {why}; refitting the gate for {}", gate.paths().model.display());
    }
    if !id.is_dir() {
        bail!("--id {}: not a folder (calibrate takes a folder of in-distribution images)", id.display());
    }
    // Fail before the long run, not after it, when the outputs cannot be written.
    let out = out.unwrap_or_else(|| gate.paths().model.parent().unwrap_or(std::path::Path::new(".")).join("gate.json"));
    let out_dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    if !out_dir.is_dir() {
        bail!("--out {}: the folder {} does not exist", out.display(), out_dir.display());
    }
    if let Some(dir) = plots {
        std::fs::create_dir_all(dir).with_context(|| format!("--plots {}: cannot create the folder", dir.display()))?;
    }
    let names = gate.class_names().to_vec();
    let items = collect(&[id.to_path_buf()], Some(&names)).with_context(|| format!("reading {}", id.display()))?;
    let opts = CalibrateOptions { alpha, holdout, seed, data: id.display().to_string(), root: id.to_path_buf() };
    let bar = progress_bar(items.len(), true);
    bar.set_message("calibrate");
    let t0 = Instant::now();
    let outcome = calibrate(&mut gate, &items, &opts, |n| bar.inc(n as u64))?;
    bar.finish_and_clear();
    let elapsed = t0.elapsed().as_secs_f64();
    outcome.gate_file.write(&out)?;

    println!(
        "calibrate {} on {}: {} frames, {} calibrate, {} held out (holdout {holdout}, seed {seed}); {:.1} s",
        gate.paths().model.display(),
        id.display(),
        outcome.n_total,
        outcome.n_calibration,
        outcome.n_held_out,
        elapsed
    );
    match (&outcome.fit, &outcome.before_after) {
        (Some(fit), Some((before, after))) => {
            println!(
                "temperature T = {:.4}  (NLL on the calibration frames {:.4} -> {:.4}, {} Brent iterations)",
                fit.temperature, fit.nll_before, fit.nll_after, fit.iterations
            );
            println!();
            let on = if outcome.measured_on_held_out { "held-out" } else { "calibration (nothing held out)" };
            println!("probabilities on the {on} frames (n = {}):", before.n);
            println!("{:<14} {:>8} {:>8} {:>8} {:>8} {:>9}", "", "NLL", "ECE", "MCE", "Brier", "accuracy");
            for (name, m) in [("before (T = 1)", before), ("after", after)] {
                println!(
                    "{:<14} {:>8.4} {:>7.2}% {:>7.2}% {:>8.4} {:>8.2}%",
                    name,
                    m.nll,
                    100.0 * m.ece,
                    100.0 * m.mce,
                    m.brier,
                    100.0 * m.accuracy
                );
            }
            if let Some(dir) = plots {
                for p in ebm_gate::plots::reliability_diagram(dir, before, after)? {
                    eprintln!("wrote {}", p.display());
                }
            }
        }
        _ => {
            let classes = if gate.gate_file().is_some() {
                "named as gate.json's class_names".to_string()
            } else {
                format!(
                    "named 0..{}, as a bare model's classes are; a gate.json with class_names names them",
                    names.len() - 1
                )
            };
            println!(
                "unlabelled folder (no <class>/ subfolders {classes}): temperature kept at {}, no prediction sets",
                outcome.gate_file.temperature
            );
            if plots.is_some() {
                eprintln!("no reliability diagram: it needs labels");
            }
        }
    }
    println!();
    println!(
        "conformal gate: alpha = {alpha}, threshold E <= {:.4} ({} calibration energies)",
        outcome.threshold, outcome.n_calibration
    );
    if !outcome.false_rejection.is_empty() {
        println!("false rejection of held-out ID frames (should be about alpha, at most alpha on average):");
        println!("{:>7} {:>10} {:>20}", "alpha", "rejected", "95% interval");
        for f in &outcome.false_rejection {
            println!(
                "{:>7} {:>9.2}% {:>9.2}% - {:.2}%   ({} of {})",
                f.alpha,
                100.0 * f.rate,
                100.0 * f.interval.0,
                100.0 * f.interval.1,
                f.rejected,
                f.n
            );
        }
    }
    if !outcome.prediction_sets.is_empty() {
        println!("prediction sets (LAC) on held-out frames:");
        println!("{:>7} {:>10} {:>10}", "alpha", "coverage", "mean size");
        for s in &outcome.prediction_sets {
            println!("{:>7} {:>9.2}% {:>10.3}", s.alpha, 100.0 * s.coverage, s.mean_size);
        }
    }
    println!("wrote {}", out.display());
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::too_many_arguments)]
fn eval(
    model: &std::path::Path,
    id: &std::path::Path,
    ood: &[(String, PathBuf)],
    json: Option<&std::path::Path>,
    limit: Option<usize>,
    plots: Option<&std::path::Path>,
    splits: usize,
    args: &GateArgs,
) -> Result<ExitCode> {
    let t_load = Instant::now();
    let mut gate = open(model, &args.overrides())?;
    let load_ms = t_load.elapsed().as_secs_f64() * 1e3;
    let names = gate.class_names().to_vec();
    // --limit N keeps N frames spread evenly over the set (every k-th in path order), so an
    // ImageFolder set keeps all its classes.
    let take = |v: Vec<_>| match limit {
        Some(n) if n < v.len() => {
            let len = v.len();
            v.into_iter().enumerate().filter(|(i, _)| i * n / len != (i + 1) * n / len).map(|(_, x)| x).collect()
        }
        _ => v,
    };
    let all_id =
        collect(&[id.to_path_buf()], Some(&names)).with_context(|| format!("reading ID set {}", id.display()))?;
    // Frames that calibrated the gate are left out: the checks below need held-out frames.
    let (all_id, excluded) = match gate.gate_file().and_then(|g| calibration_frames(g, id, &all_id)) {
        Some(mask) => {
            let excluded = mask.iter().filter(|m| **m).count();
            (all_id.into_iter().zip(mask).filter(|(_, m)| !m).map(|(it, _)| it).collect(), excluded)
        }
        None => (all_id, 0),
    };
    let id_items = take(all_id);
    if id_items.is_empty() {
        bail!("no image files found in the ID set {}", id.display());
    }
    let mut ood_items = Vec::new();
    for (name, path) in ood {
        let items = take(collect(std::slice::from_ref(path), None).with_context(|| format!("reading OOD set {name}"))?);
        if items.is_empty() {
            bail!("no image files found in OOD set {name} ({})", path.display());
        }
        ood_items.push(items);
    }
    let total = id_items.len() + ood_items.iter().map(Vec::len).sum::<usize>();
    let bar = progress_bar(total, true);
    let t0 = Instant::now();
    bar.set_message("ID");
    let id_reports = gate.score_items(&id_items, |n| bar.inc(n as u64));
    let mut ood_reports = Vec::new();
    for ((name, _), items) in ood.iter().zip(&ood_items) {
        bar.set_message(name.clone());
        ood_reports.push(gate.score_items(items, |n| bar.inc(n as u64)));
    }
    bar.finish_and_clear();
    let elapsed = t0.elapsed().as_secs_f64();
    let st = gate.settings().clone();
    let temperature = st.temperature;
    let scores: Vec<&str> = SCORE_NAMES.iter().copied().filter(|&s| s != "energy_t1" || temperature != 1.0).collect();
    let mut ood_summaries = Vec::new();
    for ((name, path), reports) in ood.iter().zip(&ood_reports) {
        let summary = summarise_ood(name, &path.display().to_string(), &id_reports, reports, &scores)
            .with_context(|| format!("OOD set {name} ({}): no frame could be scored", path.display()))?;
        ood_summaries.push(summary);
    }
    for (set, reports) in
        std::iter::once(("ID", &id_reports)).chain(ood.iter().map(|(n, _)| n.as_str()).zip(&ood_reports))
    {
        let failed: Vec<&FrameReport> = reports.iter().filter(|r| r.scores.is_none()).collect();
        if let Some(first) = failed.first() {
            eprintln!(
                "warning: {set}: {} of {} frames could not be scored and are left out of the metrics (the gate rejects them); first: {}",
                failed.len(),
                reports.len(),
                first.error.as_deref().unwrap_or("non-finite energy")
            );
        }
    }
    let mut id_summary = summarise_id(&id.display().to_string(), &id_reports);
    id_summary.excluded_calibration_frames = excluded;
    let ood_refs: Vec<&[FrameReport]> = ood_reports.iter().map(Vec::as_slice).collect();
    let mut alphas = CHECK_ALPHAS.to_vec();
    if let Some(a) = st.alpha.filter(|a| !alphas.contains(a)) {
        alphas.push(a);
    }
    let lac = gate.gate_file().and_then(|g| g.prediction_sets.as_ref()).map(|p| p.calibration_scores.clone());
    let report = EvalReport {
        model: gate.paths().model.display().to_string(),
        temperature,
        threshold: st.energy_threshold(),
        id: id_summary,
        ood: ood_summaries,
        calibration: probability_calibration(&id_reports, temperature),
        conformal: conformal_rows(&st.calibration_energies, &alphas, &id_reports, &ood_refs, splits),
        prediction_sets: lac.map(|l| set_rows(&id_reports, temperature, &l, &CHECK_ALPHAS)).unwrap_or_default(),
    };
    print_eval(&report, total, elapsed);
    let fb = gate.model_mut().forward_batch();
    println!(
        "load + optimise: {load_ms:.0} ms; batch {}{}",
        gate.batch(),
        if fb < gate.batch() { format!(" (tract runs of {fb})") } else { String::new() }
    );
    if let Some(dir) = plots {
        write_eval_plots(dir, &report, &id_reports, &ood_reports, &st)?;
    }
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn write_eval_plots(
    dir: &std::path::Path,
    report: &EvalReport,
    id: &[FrameReport],
    ood: &[Vec<FrameReport>],
    st: &ebm_gate::pipeline::GateSettings,
) -> Result<()> {
    use ebm_gate::plots::{energy_histograms, roc_curves, RocSeries};
    let neg_energy =
        |r: &[FrameReport]| -> Vec<f32> { r.iter().map(|x| x.scores.map(|s| -s.energy).unwrap_or(f32::NAN)).collect() };
    let id_s = neg_energy(id);
    let mut series = Vec::new();
    for (o, reports) in report.ood.iter().zip(ood) {
        let (fpr, tpr) = ebm_gate::metrics::roc_curve(&id_s, &neg_energy(reports))?;
        let auroc = o.metrics.iter().find(|m| m.score == "energy").map(|m| m.auroc).unwrap_or(f64::NAN);
        series.push(RocSeries { name: format!("{} (n = {})", o.name, o.n), auroc, fpr, tpr });
    }
    let title = format!("Energy score ROC, ID = {} (n = {})", short(&report.id.path), report.id.n);
    let mut written = Vec::new();
    if !series.is_empty() {
        written.extend(roc_curves(dir, &title, &series)?);
    }
    let energies = |r: &[FrameReport]| -> Vec<f32> { r.iter().filter_map(|x| x.scores.map(|s| s.energy)).collect() };
    let mut sets = vec![(format!("ID: {}", short(&report.id.path)), energies(id))];
    for (o, reports) in report.ood.iter().zip(ood) {
        sets.push((format!("OOD: {}", o.name), energies(reports)));
    }
    let thr = st.energy_threshold().map(|t| {
        let rule = match st.alpha {
            Some(a) if st.threshold.is_none() => format!("conformal threshold, alpha = {a}"),
            _ => "threshold".to_string(),
        };
        (t, format!("{rule}: E = {t:.3}"))
    });
    let title = format!("Free energy at T = {:.3}: in-distribution vs OOD", st.temperature);
    written.extend(energy_histograms(dir, &title, &sets, thr)?);
    for p in written {
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

/// The last two components of a path, for titles.
fn short(path: &str) -> String {
    let parts: Vec<&str> = path.trim_end_matches('/').rsplit('/').take(2).collect();
    parts.into_iter().rev().collect::<Vec<_>>().join("/")
}

fn pct(v: Option<f64>) -> String {
    v.map(|x| format!("{:.2}%", 100.0 * x)).unwrap_or_else(|| "-".into())
}

fn print_eval(r: &EvalReport, total: usize, elapsed: f64) {
    println!(
        "model {}  (T = {:.4}, threshold {})",
        r.model,
        r.temperature,
        r.threshold.map(|t| format!("E <= {t}")).unwrap_or("none".into())
    );
    println!(
        "ID    {}  n = {}  errors = {}  accuracy = {}  accepted by the gate = {}  mean energy = {:.3}",
        r.id.path,
        r.id.n,
        r.id.errors,
        pct(r.id.accuracy),
        pct(r.id.accepted),
        r.id.mean_energy
    );
    if r.id.excluded_calibration_frames > 0 {
        println!(
            "      ({} frames of this folder calibrated the gate and are left out; n counts the held-out ones)",
            r.id.excluded_calibration_frames
        );
    }
    if !r.ood.is_empty() {
        println!();
        println!(
            "{:<22} {:<10} {:>8} {:>8} {:>9} {:>10} {:>13}",
            "OOD set", "score", "AUROC", "AUPR-In", "AUPR-Out", "FPR@95TPR", "accepted@thr"
        );
    }
    for o in &r.ood {
        for (i, m) in o.metrics.iter().enumerate() {
            let head = match o.errors {
                0 => format!("{} ({})", o.name, o.n),
                e => format!("{} ({}, {e} unreadable)", o.name, o.n),
            };
            println!(
                "{:<22} {:<10} {:>8.4} {:>8.4} {:>9.4} {:>10} {:>13}",
                if i == 0 { head } else { String::new() },
                m.score,
                m.auroc,
                m.aupr_in,
                m.aupr_out,
                pct(Some(m.fpr_at_95_tpr)),
                if i == 0 { pct(o.accepted) } else { String::new() }
            );
        }
    }
    if !r.ood.is_empty() {
        println!();
        println!("ID is the positive class; scores: energy = -E(x), msp, max_logit (higher = more in-distribution).");
    }
    if !r.calibration.is_empty() {
        println!();
        println!("probabilities on the ID set:");
        println!("{:<10} {:>8} {:>8} {:>8} {:>8}", "T", "NLL", "ECE", "MCE", "Brier");
        for c in &r.calibration {
            println!(
                "{:<10.4} {:>8.4} {:>7.2}% {:>7.2}% {:>8.4}",
                c.temperature,
                c.nll,
                100.0 * c.ece,
                100.0 * c.mce,
                c.brier
            );
        }
    }
    if !r.conformal.is_empty() {
        println!();
        println!("conformal gate (reject p <= alpha), ID false rejection should be about alpha:");
        let ood_names: Vec<String> = r.ood.iter().map(|o| format!("{} rej.", o.name)).collect();
        print!("{:>6} {:>10} {:>10} {:>17} {:>18}", "alpha", "E thresh.", "ID rej.", "95% interval", "random splits");
        for n in &ood_names {
            print!(" {n:>16}");
        }
        println!();
        for c in &r.conformal {
            print!(
                "{:>6} {:>10} {:>9.2}% {:>7.2}% - {:>5.2}% {:>18}",
                c.alpha,
                c.threshold.map(|t| format!("{t:.4}")).unwrap_or("-".into()),
                100.0 * c.id_rejected,
                100.0 * c.id_rejected_interval.0,
                100.0 * c.id_rejected_interval.1,
                match (c.split_mean, c.split_sd) {
                    (Some(m), Some(sd)) => format!("{:.2}% ± {:.2}%", 100.0 * m, 100.0 * sd),
                    _ => "too few frames".into(),
                }
            );
            for v in &c.ood_rejected {
                print!(" {:>15.2}%", 100.0 * v);
            }
            println!();
        }
        if let Some(c) = r.conformal.first() {
            println!(
                "(random splits: mean ± sd of the false rejection over {} half/half splits of these ID energies)",
                c.splits
            );
        }
    }
    if !r.prediction_sets.is_empty() {
        println!();
        println!("prediction sets (LAC) on the ID set:");
        println!("{:>6} {:>10} {:>10}", "alpha", "coverage", "mean size");
        for s in &r.prediction_sets {
            println!("{:>6} {:>9.2}% {:>10.3}", s.alpha, 100.0 * s.coverage, s.mean_size);
        }
    }
    println!();
    println!("{total} frames in {elapsed:.1} s ({:.0} frames/s, decode + forward)", total as f64 / elapsed);
}

fn is_video_device(path: &std::path::Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        path.to_str().is_some_and(|p| p.starts_with("/dev/video"))
            && std::fs::metadata(path).is_ok_and(|m| m.file_type().is_char_device())
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        false
    }
}

/// Opens `--input`: stdin, a file or named pipe, or (feature `v4l2`) a V4L2 camera.
fn open_source(input: &std::path::Path, format: StreamFormat, size: Option<(u32, u32)>) -> Result<StreamSource> {
    if input.as_os_str() == "-" {
        return Ok(StreamSource::Bytes(Box::new(std::io::stdin())));
    }
    if is_video_device(input) {
        #[cfg(feature = "v4l2")]
        {
            let camera =
                ebm_gate::v4l2::open(input, format, size).with_context(|| format!("--input {}", input.display()))?;
            return Ok(StreamSource::Camera(camera));
        }
        #[cfg(not(feature = "v4l2"))]
        {
            let _ = (format, size);
            bail!(
                "--input {}: a V4L2 camera; this build reads cameras only with the `v4l2` feature \
                 (cargo build --release --features v4l2, needs libclang-dev), or pipe it in: \
                 `ffmpeg -f v4l2 -input_format mjpeg -i {} -c copy -f mjpeg - | ebm-gate stream MODEL --format mjpeg`",
                input.display(),
                input.display()
            );
        }
    }
    if input.is_dir() {
        bail!(
            "--input {}: is a folder; `stream` reads one stream of frames (use `score` for image folders)",
            input.display()
        );
    }
    let file = std::fs::File::open(input).with_context(|| format!("--input {}: cannot open", input.display()))?;
    Ok(StreamSource::Bytes(Box::new(file)))
}

fn signal_name(n: usize) -> &'static str {
    match n as i32 {
        signal_hook::consts::SIGINT => "SIGINT",
        signal_hook::consts::SIGTERM => "SIGTERM",
        _ => "signal",
    }
}

fn stream_cmd(args: &StreamArgs) -> Result<ExitCode> {
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use std::sync::Arc;

    let format = match (args.format, args.size) {
        (InputFormat::Mjpeg, _) => StreamFormat::Mjpeg,
        (InputFormat::Raw(format), Some((width, height))) => {
            let yuv =
                YuvSpec { bt709: args.yuv_matrix == YuvMatrix::Bt709, full_range: args.yuv_range == YuvRange::Full };
            format
                .frame_len(width, height)
                .with_context(|| format!("--size {width}x{height} for {}", format.name()))?;
            StreamFormat::Raw { format, width, height, yuv }
        }
        (InputFormat::Raw(format), None) => bail!("--format {} needs --size WIDTHxHEIGHT", format.name()),
    };
    let exit = match args.exit {
        Some(j) => j,
        None if args.enter == 0 => bail!("--enter must be at least 1"),
        None => args.enter - 1,
    };
    let source_name =
        if args.input.as_os_str() == "-" { "stdin".to_string() } else { args.input.display().to_string() };
    let source = open_source(&args.input, format, args.size)?;
    let overrides = Overrides { batch: Some(args.gate.batch.unwrap_or(4)), ..args.gate.overrides() };
    let mut gate = open(&args.model, &overrides)?;
    let options = StreamOptions {
        format,
        resize: args.crop.map(|c| match c {
            CropArg::Center => ebm_gate::bundle::ResizeMode::ShorterSideThenCenterCrop,
            CropArg::None => ebm_gate::bundle::ResizeMode::Stretch,
        }),
        max_batch: gate.batch(),
        window: args.window,
        enter: args.enter,
        exit,
        save_rejected: args.save_rejected.clone(),
        max_saved: args.max_saved,
        source_name,
    };

    // The first SIGINT/SIGTERM stops the stream after the frame in hand, with a summary; a
    // second one ends the process at once (exit 130 / 143).
    let stop = Arc::new(AtomicUsize::new(0));
    let asked = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, Arc::clone(&asked))?;
        signal_hook::flag::register(sig, Arc::clone(&asked))?;
        signal_hook::flag::register_usize(sig, Arc::clone(&stop), sig as usize)?;
    }

    // Refuse bad settings before announcing the run.
    options.check(&gate).with_context(|| format!("stream {}", args.model.display()))?;
    let names = gate.class_names().to_vec();
    let st = gate.settings();
    eprintln!(
        "stream: {} from {}, gate {}, window {}: out at >= {} rejected, back at <= {}; batches up to {}",
        format.name(),
        options.source_name,
        match (st.threshold, st.alpha) {
            (Some(t), None) => format!("E <= {t}"),
            (None, Some(a)) => format!("p > {a} (E <= {})", fmt_opt(st.energy_threshold(), 4)),
            (Some(t), Some(a)) => format!("E <= {t} and p > {a}"),
            (None, None) => "none".into(),
        },
        options.window,
        options.enter,
        options.exit,
        options.max_batch
    );
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let every = args.every;
    let summary = run_stream(&mut gate, source, &options, &stop, |event| {
        use ebm_gate::stream::StreamEvent;
        if let StreamEvent::Frame(f) = event {
            if f.index % every != 0 {
                return Ok(());
            }
        }
        writeln!(out, "{}", ebm_gate::stream::json::event(event, &names))
    })?;
    let signal = match summary.stop {
        StopReason::Signal(n) => Some(signal_name(n)),
        _ => None,
    };
    let closed = matches!(summary.stop, StopReason::OutputClosed(..));
    if !closed {
        let _ = writeln!(out, "{}", ebm_gate::stream::json::summary(&summary, signal)).and_then(|_| out.flush());
    }
    let lat = summary
        .latency_ms
        .map(|[p50, p99, _]| format!("latency p50 {p50:.2} ms, p99 {p99:.2} ms"))
        .unwrap_or_else(|| "no latency".into());
    let why = match &summary.stop {
        StopReason::EndOfInput => "end of input".to_string(),
        StopReason::ReadError(m) => format!("read error: {m}"),
        StopReason::Signal(n) => format!("stopped by {}", signal_name(*n)),
        StopReason::OutputClosed(_, m) => format!("output closed: {m}"),
    };
    eprintln!(
        "stream: {} frames ({} scored), {} rejected, {} errors, {} saved; {:.1} frames/s, {lat}; state {}; {why}",
        summary.frames,
        summary.scored,
        summary.rejected,
        summary.errors,
        summary.saved,
        summary.fps(),
        summary.state.as_str(),
    );
    Ok(match &summary.stop {
        StopReason::EndOfInput if summary.errors == 0 => ExitCode::SUCCESS,
        StopReason::EndOfInput | StopReason::ReadError(_) => ExitCode::from(1),
        StopReason::Signal(n) => ExitCode::from((128 + *n).min(255) as u8),
        StopReason::OutputClosed(std::io::ErrorKind::BrokenPipe, _) => ExitCode::from(141),
        StopReason::OutputClosed(..) => ExitCode::from(2),
    })
}
