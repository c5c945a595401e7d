//! `bench`: per-stage latency on this machine.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use ebm_gate::bench::{run_bench, BenchOptions, BenchReport};

/// `ebm-gate bench`.
#[allow(clippy::too_many_arguments)]
pub fn bench_cmd(
    model: &Path,
    batch: usize,
    threads: usize,
    frames: Vec<PathBuf>,
    runs: usize,
    warmup: usize,
    gradient: bool,
    json: Option<&Path>,
) -> Result<ExitCode> {
    if threads != 1 {
        bail!("--threads {threads}: this build of ebm-gate runs tract on one thread; give --threads 1");
    }
    if batch == 0 {
        bail!("--batch must be at least 1");
    }
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let frames = if frames.is_empty() {
        let dir = if model.is_dir() { model.join("samples") } else { model.with_file_name("samples") };
        if !dir.is_dir() {
            bail!("no --frames given and no samples/ folder beside the model ({}); give --frames DIR", dir.display());
        }
        vec![dir]
    } else {
        frames
    };
    let opts = BenchOptions { batch, runs, warmup, frames, gradient };
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
        "model: {}, batch {}, {} thread, {}, {} run{} after {} warm-up",
        r.model,
        r.batch,
        r.threads,
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
        "throughput: {:.1} frames/s (decode + preprocess + forward + gate, per-frame medians, one thread, no overlap)",
        r.frames_per_second
    );
    println!("peak RSS: {}", r.peak_rss_mb.map(|v| format!("{v:.1} MB")).unwrap_or_else(|| "unknown".into()));
    if !m.optimised_build {
        eprintln!("note: this is a debug build; `cargo run --release -- bench ...` gives the figures that matter");
    }
}
