//! `ebm-gate`: the command-line tool. This file parses and dispatches; each subcommand lives in
//! its own module under `src/cli/` (its arguments, the call into the library, the printing).
//!
//! Exit codes: `score` 0 = every frame in-distribution (or scored, when there is no threshold),
//! 1 = at least one frame rejected (an unreadable frame is rejected), 2 = the run could not
//! proceed; `eval` and `calibrate` 0 or 2; `stream` as its documentation says.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

#[derive(Parser)]
#[command(name = "ebm-gate", version, about = "Gate camera frames on the free energy of an ONNX classifier", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    threads: cli::ThreadsArg,
    #[command(flatten)]
    limits: cli::LimitsArg,
}

#[derive(Subcommand)]
enum Command {
    /// Score image files and folders (recursively): class, probability, energy, verdict
    Score(cli::score::ScoreArgs),
    /// Fit the gate on in-distribution frames: temperature (NLL), conformal threshold, prediction
    /// sets; writes gate.json and reports NLL/ECE/MCE/Brier before and after on held-out frames
    Calibrate(cli::calibrate::CalibrateArgs),
    /// Gate a live stream of raw or MJPEG frames: a JSON line per frame, an event line when the
    /// debounced state changes, a summary line at the end
    Stream(Box<cli::stream::StreamArgs>),
    /// Warm-started Langevin (SGLD) refinement of frames on the energy: writes the refined
    /// frames (PNG), a before/after grid and the energy trace (trace.json)
    Refine(cli::langevin::RefineArgs),
    /// Draw samples from a persistent replay buffer (JEM), refine them by SGLD, put them back,
    /// and write them as a PNG grid
    Sample(cli::langevin::SampleArgs),
    /// Latency of each stage on this machine (decode, preprocess, forward, gate, SGLD step):
    /// cold start, p50/p90/p99, frames/s, peak RSS, CPU and SIMD features
    Bench(cli::bench::BenchArgs),
    /// ID accuracy and OOD metrics (AUROC, AUPR-In/Out, FPR@95TPR) for energy, MSP, MaxLogit
    Eval(cli::eval::EvalArgs),
    /// Save every N-th frame of a camera feed (the formats of `stream`) as PNG: in-distribution
    /// frames from the deployed camera for `calibrate`
    Capture(cli::capture::CaptureArgs),
    /// Make a bundle (model.onnx + gate.json) for an ONNX classifier made elsewhere, from flags
    /// (--mean, --std, --pixel-range, --classes, --size) or the model's ONNX metadata
    Init(cli::init::InitArgs),
    /// False alarms per day of an alpha and a debouncing window on clean frames, and the
    /// settings that meet a target (--fps 15 --false-alarms-per-day 1)
    Plan(cli::plan::PlanArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let g = cli::Globals { threads: cli.threads.n, limits: cli.limits.limits() };
    let result = match &cli.command {
        Command::Score(args) => cli::score::run(args, &g),
        Command::Calibrate(args) => cli::calibrate::run(args, &g),
        Command::Stream(args) => cli::stream::run(args, &g),
        Command::Refine(args) => cli::langevin::refine(args, &g),
        Command::Sample(args) => cli::langevin::sample(args, &g),
        Command::Bench(args) => cli::bench::run(args, &g),
        Command::Eval(args) => cli::eval::run(args, &g),
        Command::Plan(args) => cli::plan::run(args, &g),
        Command::Init(args) => cli::init::run(args, &g),
        Command::Capture(args) => cli::capture::run(args, &g),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
