//! `refine` and `sample`: SGLD on the bundle's energy-gradient graph.

use super::Globals;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use ebm_gate::core::gate::Verdict;
use ebm_gate::frame::denormalise;
use ebm_gate::langevin::{
    refine_frames, sample_from_buffer, EnergyGradient, EnergyTarget, LangevinSettings, ReplayBuffer,
};
use ebm_gate::pipeline::{EnergyGate, FrameReport, Overrides};
use ebm_gate::record::FrameRecord;
use ebm_gate::source::collect_with;
use image::{imageops, Rgb, RgbImage};
use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

/// The chain's settings, shared by `refine` and `sample`.
#[derive(Args, Clone, Debug)]
pub struct ChainArgs {
    /// Number of SGLD updates (n_steps), 0 to 10000
    #[arg(long, default_value_t = 20, value_parser = super::steps)]
    steps: usize,
    /// step_size: each update moves x by -(STEP_SIZE / 2) * dE/dx, in the model's input
    /// (normalised) units [default: refine 0.2, sample 20]
    #[arg(long)]
    step_size: Option<f32>,
    /// noise_scale: standard deviation of the Gaussian noise added per update, input units
    /// [default: refine 0.005, sample 0.01 (JEM's); --unadjusted: sqrt(STEP_SIZE)]
    #[arg(long, conflicts_with = "unadjusted")]
    noise_scale: Option<f32>,
    /// Unadjusted Langevin: noise_scale = sqrt(step_size), which samples exp(-E) as the step
    /// size goes to 0 (the other settings are a refinement, not sampling)
    #[arg(long)]
    unadjusted: bool,
    /// Descend the class-conditional energy E(x, y) = -f(x)[y] of this class instead of the
    /// free energy
    #[arg(long, value_name = "NAME")]
    class: Option<String>,
    /// Temperature T of the free energy (default: gate.json's)
    #[arg(long, value_parser = super::temperature)]
    temperature: Option<f32>,
    /// Seed of the noise (sample: and of the draws): the same seed, frames and --batch give the
    /// same chain, bit for bit
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl ChainArgs {
    fn settings(&self, default_step: f32, default_noise: f32) -> Result<LangevinSettings> {
        let step_size = self.step_size.unwrap_or(default_step);
        let settings = if self.unadjusted {
            LangevinSettings::unadjusted(step_size, self.steps)
        } else {
            LangevinSettings { step_size, noise_scale: self.noise_scale.unwrap_or(default_noise), n_steps: self.steps }
        };
        settings.validate().map_err(|e| anyhow::anyhow!("{e} (--step-size, --noise-scale)"))?;
        Ok(settings)
    }

    fn target(&self, g: &EnergyGradient) -> Result<EnergyTarget> {
        Ok(match &self.class {
            Some(name) => EnergyTarget::Class(g.class_index(name)?),
            None => EnergyTarget::Free,
        })
    }
}

fn describe(settings: &LangevinSettings, target: EnergyTarget, g: &EnergyGradient) -> String {
    let kind = if settings.is_unadjusted_langevin() {
        "unadjusted Langevin (noise_scale = sqrt(step_size))"
    } else {
        "refinement (not exact Langevin sampling)"
    };
    let energy = match target {
        EnergyTarget::Free => format!("free energy at T = {:.4}", g.temperature()),
        EnergyTarget::Class(y) => format!(
            "class-conditional energy E(x, {0}) = -logit[{0}] (verdicts: the gate, on the free energy)",
            g.class_names()[y]
        ),
    };
    format!(
        "{} steps, step_size {}, noise_scale {}: {kind}; {energy}",
        settings.n_steps, settings.step_size, settings.noise_scale
    )
}

fn open_both(model: &Path, args: &ChainArgs, globals: &Globals) -> Result<(EnergyGradient, EnergyGate)> {
    let mut g = EnergyGradient::open(model, args.temperature)
        .with_context(|| format!("cannot load the energy-gradient graph of {}", model.display()))?;
    g.set_threads(globals.threads)?;
    let overrides = Overrides {
        temperature: args.temperature,
        batch: Some(1),
        threads: Some(globals.threads),
        limits: Some(globals.limits),
        ..Overrides::default()
    };
    let gate = EnergyGate::open(model, &overrides).with_context(|| format!("cannot load model {}", model.display()))?;
    Ok((g, gate))
}

fn verdict_str(r: &FrameReport) -> &'static str {
    match r.verdict {
        Some(Verdict::InDistribution) => "in",
        Some(Verdict::OutOfDistribution) => "OOD",
        None => "-",
    }
}

fn class_str(r: &FrameReport, classes: &[String]) -> String {
    r.scores.map(|s| format!("{} {:.2}", classes[s.class], s.probability)).unwrap_or_else(|| "-".into())
}

/// `[n, C, H, W]` frames as one picture: `cols` per row, each scaled up `scale` times
/// (nearest neighbour), 2-pixel white gaps.
fn grid(frames: &[RgbImage], cols: usize, scale: u32) -> RgbImage {
    let (w, h) = frames.first().map(|f| f.dimensions()).unwrap_or((1, 1));
    let (cw, ch) = (w * scale, h * scale);
    let cols = cols.max(1);
    let rows = frames.len().div_ceil(cols).max(1);
    let gap = 2;
    let mut out =
        RgbImage::from_pixel(cols as u32 * (cw + gap) + gap, rows as u32 * (ch + gap) + gap, Rgb([255, 255, 255]));
    for (i, f) in frames.iter().enumerate() {
        let big = imageops::resize(f, cw, ch, imageops::FilterType::Nearest);
        let (r, c) = ((i / cols) as u32, (i % cols) as u32);
        imageops::replace(&mut out, &big, (gap + c * (cw + gap)) as i64, (gap + r * (ch + gap)) as i64);
    }
    out
}

fn save_png(img: &RgbImage, path: &Path) -> Result<()> {
    img.save(path).with_context(|| format!("cannot write {}", path.display()))
}

fn ms(s: Option<f64>) -> String {
    s.map(|v| format!("{:.2}", v * 1e3)).unwrap_or_else(|| "-".into())
}

/// `ebm-gate refine`.
pub fn refine(a: &RefineArgs, globals: &Globals) -> Result<ExitCode> {
    let RefineArgs { model, frames, out, batch, chain: args } = a;
    let batch = *batch;
    let (mut g, mut gate) = open_both(model, args, globals)?;
    let settings = args.settings(0.2, 0.005)?;
    let target = args.target(&g)?;
    let spec = g.input().clone();
    let items = collect_with(frames, None, &globals.limits)?;
    if items.is_empty() {
        bail!(
            "no image files found in {}",
            frames.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let count = items.len();
    eprintln!("refine: {count} frames, {}", describe(&settings, target, &g));
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(args.seed);
    let run = refine_frames(&mut g, &mut gate, &items, target, &settings, batch, &mut rng, |b| {
        if b.seconds_per_step.is_some() {
            eprintln!(
                "batch of {}: {} ms per step ({:.2} s for the chain)",
                b.frames,
                ms(b.seconds_per_step),
                b.seconds
            );
        }
    })
    .context("refinement failed (refine stops at the first frame it cannot read)")?;
    let classes = gate.class_names().to_vec();
    let mut rows = Vec::new();
    let mut pictures = Vec::new();
    let width = run.frames.iter().map(|f| f.name.len()).max().unwrap_or(5).max(5);
    let stdout = std::io::stdout();
    let mut o = stdout.lock();
    let _ = writeln!(
        o,
        "{:<width$}  {:>9} {:>9}  {:<18} {:<18} {:<9} {:>6} {:>6}  written",
        "frame", "E before", "E after", "class before", "class after", "verdict", "|dpx|", "max"
    );
    let mut used = std::collections::HashSet::new();
    for (i, f) in run.frames.iter().enumerate() {
        // `FILE#index` for a frame inside an IDX file
        let stem = Path::new(&f.name)
            .file_stem()
            .map(|s| s.to_string_lossy().replace('#', "_"))
            .unwrap_or_else(|| format!("frame{i}"));
        let mut file = format!("{stem}.png");
        if !used.insert(file.clone()) {
            file = format!("{stem}-{i}.png");
            used.insert(file.clone());
        }
        let dst = out.join(&file);
        let img = denormalise(&f.after_x, &spec)?;
        save_png(&img, &dst)?;
        pictures.push(denormalise(&f.before_x, &spec)?);
        pictures.push(img);
        let t = &f.trace;
        let (mean_dl, max_dl) = f.pixel_change_8bit;
        let _ = writeln!(
            o,
            "{:<width$}  {:>9.4} {:>9.4}  {:<18} {:<18} {:<9} {:>6.2} {:>6.1}  {}",
            f.name,
            t[0],
            t[t.len() - 1],
            class_str(&f.before, &classes),
            class_str(&f.after, &classes),
            format!("{}->{}", verdict_str(&f.before), verdict_str(&f.after)),
            mean_dl,
            max_dl,
            dst.display()
        );
        rows.push(serde_json::json!({
            "path": f.name,
            "out": dst.display().to_string(),
            "energy": t,
            "pixel_change_8bit": {"mean": mean_dl, "max": max_dl},
            "before": FrameRecord::new(&f.before, &classes),
            "after": FrameRecord::new(&f.after, &classes),
        }));
    }
    let step_times: Vec<serde_json::Value> = run
        .batches
        .iter()
        .filter_map(|b| b.seconds_per_step.map(|s| serde_json::json!({"frames": b.frames, "ms_per_step": s * 1e3})))
        .collect();
    // before/after pairs, side by side, four pairs a row
    let grid_path = out.join("refine_grid.png");
    save_png(&grid(&pictures, 8.min(pictures.len()), 4), &grid_path)?;
    let trace = serde_json::json!({
        "tool": format!("ebm-gate {} refine", env!("CARGO_PKG_VERSION")),
        "model": model.display().to_string(),
        "settings": settings_json(&settings, target, &g, args.seed),
        "timing": step_times,
        "frames": rows,
    });
    let trace_path = out.join("trace.json");
    std::fs::write(&trace_path, serde_json::to_string_pretty(&trace)? + "\n")
        .with_context(|| format!("cannot write {}", trace_path.display()))?;
    eprintln!(
        "wrote {count} refined frames, {} (before/after pairs, x4) and {} (energy per step) into {}",
        grid_path.file_name().unwrap_or_default().to_string_lossy(),
        trace_path.file_name().unwrap_or_default().to_string_lossy(),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// An f32 as the shortest decimal that reads back as it (0.2, not 0.20000000298023224).
fn num(v: f32) -> serde_json::Value {
    v.to_string().parse::<f64>().map(serde_json::Value::from).unwrap_or(serde_json::Value::Null)
}

fn settings_json(s: &LangevinSettings, target: EnergyTarget, g: &EnergyGradient, seed: u64) -> serde_json::Value {
    serde_json::json!({
        "n_steps": s.n_steps,
        "step_size": num(s.step_size),
        "noise_scale": num(s.noise_scale),
        "unadjusted_langevin": s.is_unadjusted_langevin(),
        "energy": match target { EnergyTarget::Free => "free", EnergyTarget::Class(_) => "class_conditional" },
        "class": match target { EnergyTarget::Class(y) => Some(g.class_names()[y].clone()), EnergyTarget::Free => None },
        "temperature": num(g.temperature()),
        "seed": seed,
        "clip": "pixel range, per channel in input space",
    })
}

/// Arguments of `ebm-gate refine`.
#[derive(Args)]
pub struct RefineArgs {
    /// Bundle directory with an energy-gradient graph (gate.json's `gradient`)
    pub model: PathBuf,
    /// Image files, folders (recursively) or IDX files to start the chains from
    #[arg(required = true)]
    pub frames: Vec<PathBuf>,
    /// Output directory
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Frames per chain batch (1 to 4096)
    #[arg(long, default_value_t = 16, value_parser = super::batch)]
    pub batch: usize,
    #[command(flatten)]
    pub chain: ChainArgs,
}

/// Arguments of `ebm-gate sample`.
#[derive(Args, Clone, Debug)]
pub struct SampleArgs {
    /// Bundle directory with an energy-gradient graph (gate.json's `gradient`)
    pub model: PathBuf,
    /// Replay buffer file: loaded when it exists, created (uniform noise) when it does not,
    /// and saved with the refined samples put back
    #[arg(long, value_name = "FILE")]
    pub buffer: PathBuf,
    /// Where to write the grid of samples (PNG)
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Samples to draw and refine
    #[arg(short = 'n', long = "count", default_value_t = 16, value_parser = super::batch)]
    pub count: usize,
    /// Capacity of a new buffer [default: 10000, JEM's]; an existing buffer keeps its own
    #[arg(long)]
    pub capacity: Option<usize>,
    /// Probability that a drawn sample restarts from uniform noise [default: 0.05, JEM's, for a
    /// new buffer]; stored in the buffer, so it holds for later calls too
    #[arg(long)]
    pub reinit_prob: Option<f32>,
    #[command(flatten)]
    pub chain: ChainArgs,
}

/// `ebm-gate sample`.
pub fn sample(s: &SampleArgs, globals: &Globals) -> Result<ExitCode> {
    let (model, args) = (&s.model, &s.chain);
    // Outputs are checked before the chain runs, so that a run that fails leaves the buffer as it was.
    if !s.out.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")) {
        bail!("--out {}: the grid is written as PNG; give a FILE ending in .png", s.out.display());
    }
    if s.out.is_dir() {
        bail!("--out {} is a directory; give a FILE ending in .png", s.out.display());
    }
    if let Some(dir) = s.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let (mut g, mut gate) = open_both(model, args, globals)?;
    // JEM's step (2) is for models trained with SGLD, whose input gradients are large; on the
    // reference classifier it moved fresh noise by 0.15 in energy in 20 steps, 20 moves it.
    let settings = args.settings(20.0, 0.01)?;
    let target = args.target(&g)?;
    let spec = g.input().clone();
    let shape = [spec.color.channels(), spec.height as usize, spec.width as usize];
    let k = g.class_names().len();
    let mut buffer = if s.buffer.exists() {
        let b = ReplayBuffer::load(&s.buffer)?;
        if b.shape() != shape || b.pixel_range() != spec.pixel_range || b.num_classes() != k {
            bail!(
                "{}: the buffer holds {:?} samples in pixel range {:?} for {} classes, the model needs {shape:?} in \
                 {:?} for {k}; give another --buffer",
                s.buffer.display(),
                b.shape(),
                b.pixel_range(),
                b.num_classes(),
                spec.pixel_range
            );
        }
        if let Some(c) = s.capacity.filter(|&c| c != b.capacity()) {
            bail!(
                "{}: the buffer's capacity is {}; --capacity {c} applies to a new buffer only",
                s.buffer.display(),
                b.capacity()
            );
        }
        eprintln!(
            "replay buffer {}: {} samples, reinit_prob {}{}, refined {} time{} before",
            s.buffer.display(),
            b.capacity(),
            s.reinit_prob.unwrap_or(b.reinit_prob()),
            if s.reinit_prob.is_some_and(|p| p != b.reinit_prob()) {
                format!(" (was {}; stored from now on)", b.reinit_prob())
            } else {
                String::new()
            },
            b.draws(),
            if b.draws() == 1 { "" } else { "s" }
        );
        b
    } else {
        let capacity = s.capacity.unwrap_or(10_000);
        let reinit = s.reinit_prob.unwrap_or(0.05);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(args.seed ^ 0x5eed_b0ff);
        let b = ReplayBuffer::new(capacity, shape, spec.pixel_range, k, reinit, &mut rng)
            .with_context(|| format!("cannot make a replay buffer for {}", s.buffer.display()))?;
        eprintln!("replay buffer {}: new, {capacity} uniform-noise samples, reinit_prob {reinit}", s.buffer.display());
        b
    };
    if let Some(p) = s.reinit_prob {
        buffer.set_reinit_prob(p).with_context(|| format!("--reinit-prob {p}"))?;
    }
    let run = sample_from_buffer(&mut g, &mut gate, &mut buffer, s.count, target, &settings, args.seed)
        .context("refinement failed")?;
    let (n, x, r, after) = (run.indices.len(), &run.x, &run.refinement, &run.after);
    eprintln!("sample: {n} samples ({} restarted from noise), {}", run.reinitialised, describe(&settings, target, &g));
    let classes = gate.class_names().to_vec();
    let pictures: Vec<RgbImage> = (0..n)
        .map(|i| denormalise(&x[i * spec.frame_len()..(i + 1) * spec.frame_len()], &spec))
        .collect::<Result<_, _>>()?;
    let cols = (n as f64).sqrt().ceil() as usize;
    save_png(&grid(&pictures, cols, 4), &s.out)?;
    // last, after the grid: a run that fails before here leaves the buffer as it was
    buffer.save(&s.buffer).context("cannot save the replay buffer")?;
    let first = &r.trace[0];
    let last = &r.trace[r.trace.len() - 1];
    let mean = |v: &[f32]| v.iter().map(|&e| e as f64).sum::<f64>() / v.len() as f64;
    let accepted = after.iter().filter(|a| a.verdict == Some(Verdict::InDistribution)).count();
    let mut counts = vec![0usize; classes.len()];
    for a in after {
        if let Some(sc) = a.scores {
            counts[sc.class] += 1;
        }
    }
    let mut predicted: Vec<(usize, &String)> = counts.iter().copied().zip(&classes).filter(|(c, _)| *c > 0).collect();
    predicted.sort_by_key(|p| std::cmp::Reverse(p.0));
    println!(
        "{n} samples: mean {} {:.4} -> {:.4}; classifier: mean free energy {:.4}, {accepted} of {n} pass the gate; \
         predicted {}",
        match target {
            EnergyTarget::Free => "free energy".to_string(),
            EnergyTarget::Class(y) => format!("E(x, {})", classes[y]),
        },
        mean(first),
        mean(last),
        mean(&after.iter().filter_map(|a| a.scores.map(|s| s.energy)).collect::<Vec<_>>()),
        predicted.iter().map(|(c, name)| format!("{name} x{c}")).collect::<Vec<_>>().join(", ")
    );
    println!(
        "{} ms per step for a batch of {n} ({:.2} s for {} steps); wrote {} ({} x {} grid, x4) and saved {}",
        ms(r.seconds_per_step),
        r.seconds,
        settings.n_steps,
        s.out.display(),
        cols,
        n.div_ceil(cols),
        s.buffer.display()
    );
    Ok(ExitCode::SUCCESS)
}
