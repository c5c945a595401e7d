//! `bench`: per-stage latency on this machine.

use super::Globals;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use ebm_gate::bench::{run_bench, BenchOptions, BenchReport};

/// Arguments of `ebm-gate bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// Bundle directory (model.onnx [+ gate.json]) or an .onnx file
    pub model: PathBuf,
    /// Frames per forward pass (1 to 4096)
    #[arg(long, default_value_t = 1, value_parser = super::batch)]
    pub batch: usize,
    /// Most frames per tract run [default: 1 for a network with spatial convolutions,
    /// else the whole batch]
    #[arg(long, value_name = "N", value_parser = super::batch)]
    pub forward_batch: Option<usize>,
    /// Image files or folders to time (default: the bundle's samples/); cycled through
    #[arg(long, value_name = "PATH")]
    pub frames: Vec<PathBuf>,
    /// Measured batches per stage
    #[arg(long, default_value_t = 30, value_parser = super::runs)]
    pub runs: usize,
    /// Batches run first and not measured
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(0..=ebm_gate::core::check::MAX_RUNS as u64))]
    pub warmup: u64,
    /// Skip the SGLD step (timed when the bundle has an energy-gradient graph)
    #[arg(long)]
    pub no_gradient: bool,
    /// Also time each node of the optimised plan over one tract run: the slowest nodes and
    /// the share of each operator
    #[arg(long)]
    pub ops: bool,
    /// Write the report as JSON to FILE
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// `ebm-gate bench`.
pub fn run(a: &BenchArgs, g: &Globals) -> Result<ExitCode> {
    let threads = g.threads;
    let BenchArgs { model, batch, forward_batch, frames, runs, warmup, no_gradient, ops, json } = a;
    let (batch, forward_batch, frames, runs, warmup, gradient, ops) =
        (*batch, *forward_batch, frames.clone(), *runs, *warmup as usize, !*no_gradient, *ops);
    let json = json.as_deref();
    let frames = if frames.is_empty() {
        let dir = if model.is_dir() { model.join("samples") } else { model.with_file_name("samples") };
        if !dir.is_dir() {
            bail!("no --frames given and no samples/ folder beside the model ({}); give --frames DIR", dir.display());
        }
        vec![dir]
    } else {
        frames
    };
    let opts = BenchOptions { batch, forward_batch, runs, warmup, frames, gradient, ops, threads };
    let report = run_bench(model, &opts, |stage| eprintln!("timing {stage} ..."))
        .with_context(|| format!("cannot benchmark {}", model.display()))?;
    if report.batch != batch {
        eprintln!(
            "note: the model's batch dimension is fixed at {}; timed at batch {} (--batch {batch} does not apply)",
            report.batch, report.batch
        );
    }
    print_report(&report, &opts);
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn print_report(r: &BenchReport, opts: &BenchOptions) {
    let m = &r.machine;
    println!(
        "machine: {}, {} cores, {}, SIMD {}; ebm-gate {}, tract {}, {} build",
        m.cpu,
        m.cores,
        m.target,
        if m.simd.is_empty() { "-".to_string() } else { m.simd.join(" ") },
        m.ebm_gate,
        m.tract,
        if m.optimised_build { "release" } else { "debug" }
    );
    let timed = opts.runs * r.batch;
    println!(
        "model: {}, batch {} ({}), {} thread{}, {}, {} run{} after {} warm-up",
        r.model,
        r.batch,
        if r.forward_batch >= r.batch {
            "one tract run".to_string()
        } else {
            format!("tract runs of {}", r.forward_batch)
        },
        r.threads,
        if r.threads == 1 { "" } else { "s" },
        if timed < r.frames {
            format!("{timed} of {} frames timed (give more --runs for all)", r.frames)
        } else {
            format!("{} frames cycled", r.frames)
        },
        opts.runs,
        if opts.runs == 1 { "" } else { "s" },
        opts.warmup
    );
    println!(
        "cold start: {:.1} ms (load the model, optimise the plan){}",
        r.cold_start_ms,
        r.gradient_cold_start_ms.map(|g| format!("; gradient graph {g:.1} ms")).unwrap_or_default()
    );
    println!(
        "{:<11} {:<6} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>14}",
        "stage", "unit", "n", "p50 ms", "p90 ms", "p99 ms", "mean ms", "min ms", "per frame p50"
    );
    for s in &r.stages {
        println!(
            "{:<11} {:<6} {:>5} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>11.3} ms",
            s.stage, s.unit, s.n, s.p50_ms, s.p90_ms, s.p99_ms, s.mean_ms, s.min_ms, s.per_frame_p50_ms
        );
    }
    println!(
        "throughput: {:.1} frames/s (decode + preprocess + forward + gate, per-frame medians, stages not overlapped)",
        r.frames_per_second
    );
    if let Some(ops) = &r.ops {
        print_ops(ops, r.forward_batch);
    }
    println!("peak RSS: {}", r.peak_rss_mb.map(|v| format!("{v:.1} MB")).unwrap_or_else(|| "unknown".into()));
    if !m.optimised_build {
        eprintln!("note: this is a debug build; `cargo run --release -- bench ...` gives the figures that matter");
    }
}

/// The plan's nodes by time: the slowest 15, then the rest grouped by operator.
fn print_ops(ops: &[ebm_gate::OpTime], frames: usize) {
    let total: f64 = ops.iter().map(|o| o.median_ms).sum();
    println!(
        "plan nodes, one tract run of {frames} frame{} (medians; sum {total:.3} ms):",
        if frames == 1 { "" } else { "s" }
    );
    let mut by_time: Vec<&ebm_gate::OpTime> = ops.iter().collect();
    by_time.sort_by(|a, b| b.median_ms.total_cmp(&a.median_ms));
    println!(
        "  {:>9} {:>6}  {:<18} {:<34} {:>7}  node",
        "ms", "share", "op", "matrix product m x k x n, kernel", "GFLOP/s"
    );
    for o in by_time.iter().take(15) {
        let (shape, gflops) = match &o.matmul {
            Some(mm) => (
                format!("{}x{}x{} {}", mm.m, mm.k, mm.n, mm.kernel),
                format!("{:.1}", 2.0 * (mm.m * mm.k * mm.n) as f64 / (o.median_ms * 1e6)),
            ),
            None => (String::new(), String::new()),
        };
        println!(
            "  {:>9.3} {:>5.1}%  {:<18} {:<34} {:>7}  {}",
            o.median_ms,
            100.0 * o.median_ms / total,
            o.op,
            shape,
            gflops,
            o.name
        );
    }
    let mut per_op: Vec<(String, f64, usize)> = Vec::new();
    for o in ops {
        match per_op.iter_mut().find(|(name, _, _)| *name == o.op) {
            Some(entry) => {
                entry.1 += o.median_ms;
                entry.2 += 1;
            }
            None => per_op.push((o.op.clone(), o.median_ms, 1)),
        }
    }
    per_op.sort_by(|a, b| b.1.total_cmp(&a.1));
    println!(
        "  by operator: {}",
        per_op
            .iter()
            .map(|(op, ms, k)| format!("{op} {:.1}% ({k})", 100.0 * ms / total))
            .collect::<Vec<_>>()
            .join(", ")
    );
}
