//! Latency of each stage of the gate on a bundle, on this machine: what `ebm-gate bench` reports.
//!
//! Stages, in the order a frame goes through them (the data flow of the crate docs):
//! `decode` (encoded bytes in memory -> 8-bit RGB), `health` (the frame-health scores of
//! [`crate::health`] on the full decoded frame; part of the verdict only for a gate calibrated
//! with `--scores`, so not counted in the throughput), `preprocess` (resize/crop, scale,
//! normalise -> `[C, H, W]`), `forward` (tract, a batch of `N` frames -> logits), `gate`
//! (energy, softmax scores, p-value and verdict from one frame's logits) and, when the bundle
//! has an energy-gradient graph, `sgld_step` (energy + `dE/dx` of a batch through tract, then one
//! SGLD update). Each is timed alone with a monotonic clock over `runs` batches after
//! `warmup` batches, the model on `threads` threads ([`crate::Model::set_threads`]) and the
//! other stages on the calling thread, frames read into memory first (disk I/O is not counted), and
//! reported as p50 / p90 / p99 / mean / min (nearest-rank percentiles). `cold_start` is the time
//! to open the bundle (read and hash the files, load and optimise the plan for the batch size).
//! Timing is wall-clock on a machine that may be doing other work: run it on a quiet machine, and
//! compare changes with the criterion benches (`cargo bench`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::core::check::{count_up_to, MAX_BATCH, MAX_RUNS};
use crate::error::{Error, Result};
use crate::frame::{decode_bytes, preprocess_into};
use crate::health::health_scores;
use crate::langevin::{sgld_step, EnergyGradient, EnergyTarget, LangevinSettings};
use crate::model::OpTime;
use crate::pipeline::{EnergyGate, Overrides};
use crate::source::{collect, Origin};

/// What to measure.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchOptions {
    /// Frames per forward pass (and per SGLD step).
    pub batch: usize,
    /// Most frames per tract run (`None`: the model's automatic choice, see
    /// [`crate::Model::forward_batch`]).
    pub forward_batch: Option<usize>,
    /// Measured batches per stage.
    pub runs: usize,
    /// Batches run first and not measured.
    pub warmup: usize,
    /// Image files or folders of frames; cycled through when fewer than `runs * batch`.
    pub frames: Vec<PathBuf>,
    /// Time the SGLD step when the bundle has a gradient graph.
    pub gradient: bool,
    /// Also time each node of the optimised plan ([`crate::Model::op_profile`]) over
    /// one tract run.
    pub ops: bool,
    /// Threads the model runs on ([`crate::Model::set_threads`]).
    pub threads: usize,
}

/// Latency statistics of one stage, milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageStats {
    /// Stage name (`decode`, `health`, `preprocess`, `forward`, `gate`, `sgld_step`).
    pub stage: String,
    /// What one measurement covers: `frame` or `batch`.
    pub unit: String,
    /// Measurements.
    pub n: usize,
    /// Median, ms.
    pub p50_ms: f64,
    /// 90th percentile, ms.
    pub p90_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Mean, ms.
    pub mean_ms: f64,
    /// Fastest, ms.
    pub min_ms: f64,
    /// Median per frame, ms (the batch median divided by the batch size for batch stages).
    pub per_frame_p50_ms: f64,
}

/// The machine the figures were measured on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MachineInfo {
    /// CPU model (`/proc/cpuinfo`'s `model name`, or the architecture when unknown).
    pub cpu: String,
    /// Logical cores available to this process.
    pub cores: usize,
    /// SIMD features detected at run time (e.g. `avx2`, `fma`, `avx512f`, `neon`).
    pub simd: Vec<String>,
    /// `std::env::consts::ARCH` and `OS`.
    pub target: String,
    /// ebm-gate's version.
    pub ebm_gate: String,
    /// tract's version.
    pub tract: String,
    /// Whether this binary was built with optimisations (a debug build's figures mean little).
    pub optimised_build: bool,
}

/// Everything `bench` measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchReport {
    /// The bundle.
    pub model: String,
    /// Frames per forward pass.
    pub batch: usize,
    /// Most frames per tract run in that pass (a pass of `batch` frames is `batch /
    /// forward_batch` runs).
    pub forward_batch: usize,
    /// Threads the model ran on ([`BenchOptions::threads`]).
    pub threads: usize,
    /// Distinct frames cycled through.
    pub frames: usize,
    /// Time to open the bundle and optimise the plan, ms.
    pub cold_start_ms: f64,
    /// Time to open the gradient graph and optimise its plan, ms, when timed.
    pub gradient_cold_start_ms: Option<f64>,
    /// Per-stage latency.
    pub stages: Vec<StageStats>,
    /// Frames per second through decode + preprocess + forward + gate, from the per-frame
    /// medians (the stages one after another, not overlapped).
    pub frames_per_second: f64,
    /// Each node of the optimised plan with its median time over `runs` tract runs of
    /// `min(batch, forward_batch)` frames, in plan order (with `ops`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ops: Option<Vec<OpTime>>,
    /// Peak resident set size of the process, MB (Linux `VmHWM`), when known.
    pub peak_rss_mb: Option<f64>,
    /// The machine.
    pub machine: MachineInfo,
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn stats(stage: &str, unit: &str, per: usize, mut ms: Vec<f64>) -> StageStats {
    ms.sort_by(f64::total_cmp);
    let n = ms.len();
    let p50 = percentile(&ms, 0.5);
    StageStats {
        stage: stage.into(),
        unit: unit.into(),
        n,
        p50_ms: p50,
        p90_ms: percentile(&ms, 0.9),
        p99_ms: percentile(&ms, 0.99),
        mean_ms: ms.iter().sum::<f64>() / n.max(1) as f64,
        min_ms: ms.first().copied().unwrap_or(f64::NAN),
        per_frame_p50_ms: p50 / per as f64,
    }
}

fn elapsed_ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// The CPU model, cores and SIMD features of this machine.
pub fn machine_info() -> MachineInfo {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name") || l.starts_with("Model") || l.starts_with("Hardware"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    #[allow(unused_mut)]
    let mut simd: Vec<String> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! probe {
            ($($f:tt),*) => {$(if std::arch::is_x86_feature_detected!($f) { simd.push($f.to_string()); })*};
        }
        probe!("sse4.1", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512vnni", "avx512bf16");
    }
    #[cfg(target_arch = "aarch64")]
    {
        macro_rules! probe {
            ($($f:tt),*) => {$(if std::arch::is_aarch64_feature_detected!($f) { simd.push($f.to_string()); })*};
        }
        probe!("neon", "fp16", "dotprod", "i8mm", "bf16", "sve");
    }
    MachineInfo {
        cpu,
        cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        simd,
        target: format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS),
        ebm_gate: env!("CARGO_PKG_VERSION").into(),
        tract: TRACT_VERSION.into(),
        optimised_build: !cfg!(debug_assertions),
    }
}

/// The version of tract (tract-core) this binary was built with, as Cargo.lock resolved it
/// (recorded by the build script; `unknown` when the build had no Cargo.lock).
pub const TRACT_VERSION: &str = env!("EBM_GATE_TRACT_VERSION");

/// Peak resident set size of this process, MB (Linux `VmHWM`); `None` elsewhere.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Measures the bundle at `model` stage by stage (see the module docs).
///
/// # Errors
/// [`Error::Invalid`] for a zero batch or runs, or no frames; the bundle's errors as
/// [`EnergyGate::open`]; [`Error::Decode`] / [`Error::Io`] for a frame that cannot be read or
/// decoded (a benchmark needs frames that work).
pub fn run_bench(model: &Path, opts: &BenchOptions, mut progress: impl FnMut(&str)) -> Result<BenchReport> {
    count_up_to("batch", opts.batch, MAX_BATCH)?;
    count_up_to("runs", opts.runs, MAX_RUNS)?;
    if opts.warmup > MAX_RUNS {
        return Err(
            crate::core::check::SettingError::TooLarge { name: "warmup", max: MAX_RUNS, got: opts.warmup }.into()
        );
    }
    let t = Instant::now();
    let overrides = Overrides {
        batch: Some(opts.batch),
        forward_batch: opts.forward_batch,
        threads: Some(opts.threads),
        ..Overrides::default()
    };
    let mut gate = EnergyGate::open(model, &overrides)?;
    let cold_start_ms = elapsed_ms(t);
    let items = collect(&opts.frames, None)?;
    let mut encoded = Vec::new();
    for item in &items {
        if let Origin::File(p) = &item.origin {
            encoded.push((p.clone(), std::fs::read(p).map_err(|e| Error::io(p, e))?));
        }
    }
    if encoded.is_empty() {
        return Err(Error::Invalid(format!(
            "no image files in {}",
            opts.frames.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        )));
    }
    let spec = gate.input().clone();
    let d = spec.frame_len();
    let n = gate.model_mut().fixed_batch().unwrap_or(opts.batch);
    let names: Vec<String> = (0..n).map(|i| format!("frame{i}")).collect();
    let (mut t_decode, mut t_pre, mut t_fwd, mut t_gate) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut t_health = Vec::new();
    let mut x = vec![0.0f32; n * d];
    let mut next = 0usize;
    progress("decode, preprocess, forward and gate");
    for run in 0..opts.warmup + opts.runs {
        let measured = run >= opts.warmup;
        for slot in x.chunks_exact_mut(d) {
            let (path, bytes) = &encoded[next % encoded.len()];
            next += 1;
            let t = Instant::now();
            let img = decode_bytes(bytes, path)?;
            let dt = elapsed_ms(t);
            let t = Instant::now();
            std::hint::black_box(health_scores(&img));
            let ht = elapsed_ms(t);
            let t = Instant::now();
            preprocess_into(&img, &spec, slot)?;
            let pt = elapsed_ms(t);
            if measured {
                t_decode.push(dt);
                t_health.push(ht);
                t_pre.push(pt);
            }
        }
        let t = Instant::now();
        let logits = gate.model_mut().logits(&x, n)?;
        let ft = elapsed_ms(t);
        let k = logits.len() / n;
        for (i, name) in names.iter().enumerate() {
            let t = Instant::now();
            let r = gate.judge_logits(name, None, &logits[i * k..(i + 1) * k]);
            let gt = elapsed_ms(t);
            std::hint::black_box(r);
            if measured {
                t_gate.push(gt);
            }
        }
        if measured {
            t_fwd.push(ft);
        }
    }
    let mut stages = vec![
        stats("decode", "frame", 1, t_decode),
        stats("preprocess", "frame", 1, t_pre),
        stats("forward", "batch", n, t_fwd),
        stats("gate", "frame", 1, t_gate),
    ];
    let frames_per_second = 1e3 / stages.iter().map(|s| s.per_frame_p50_ms).sum::<f64>();
    stages.insert(1, stats("health", "frame", 1, t_health));
    let forward_batch = gate.model_mut().forward_batch().min(n);
    let ops = if opts.ops {
        progress("each node of the plan");
        Some(gate.model_mut().op_profile(&x[..forward_batch * d], forward_batch, opts.runs)?)
    } else {
        None
    };
    let mut gradient_cold_start_ms = None;
    if opts.gradient {
        let t = Instant::now();
        match EnergyGradient::open(model, None) {
            Ok(mut g) => {
                g.set_forward_batch(opts.forward_batch)?;
                g.set_threads(opts.threads)?;
                g.prepare(n)?;
                gradient_cold_start_ms = Some(elapsed_ms(t));
                progress("sgld_step");
                let settings = LangevinSettings { step_size: 0.2, noise_scale: 0.005, n_steps: 1 };
                let (lo, hi) = (g.bounds().lo.to_vec(), g.bounds().hi.to_vec());
                let bounds = crate::langevin::Bounds { lo: &lo, hi: &hi };
                let (mut e, mut grad) = (vec![0.0; n], vec![0.0; n * d]);
                let mut rng = <rand_xoshiro::Xoshiro256PlusPlus as rand_core::SeedableRng>::seed_from_u64(0);
                let mut t_step = Vec::new();
                for run in 0..opts.warmup + opts.runs {
                    let t = Instant::now();
                    g.energy_and_grad(&x, n, EnergyTarget::Free, &mut e, &mut grad)?;
                    for f in 0..n {
                        let r = f * d..(f + 1) * d;
                        sgld_step(&mut x[r.clone()], &grad[r], &settings, &bounds, &mut rng)?;
                    }
                    if run >= opts.warmup {
                        t_step.push(elapsed_ms(t));
                    }
                }
                stages.push(stats("sgld_step", "batch", n, t_step));
            }
            Err(Error::NoGradient { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(BenchReport {
        model: model.display().to_string(),
        batch: n,
        forward_batch,
        threads: opts.threads,
        frames: encoded.len(),
        cold_start_ms,
        gradient_cold_start_ms,
        stages,
        frames_per_second,
        ops,
        peak_rss_mb: peak_rss_mb(),
        machine: machine_info(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nearest rank: the smallest value with at least q of the values at or below it.
    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 5.0);
        assert_eq!(percentile(&v, 0.9), 9.0);
        assert_eq!(percentile(&v, 0.99), 10.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
    }
}
