//! Warm-started Langevin refinement on a bundle: the energy gradient through tract, SGLD chains,
//! and a persistent replay buffer.
//!
//! A bundle with an energy-gradient graph (`gate.json`'s `gradient` section, written by
//! `models/tools/energy_grad.py`) gives, for frames `x` `[N, C, H, W]` in the model's input space,
//! the energy `E(x) = -T * logsumexp(f(x) / T)` or the class-conditional `E(x, y) = -f(x)[y]`
//! ([`EnergyTarget`]) and `dE/dx` `[N, C, H, W]`. [`EnergyGradient::refine`] runs the SGLD
//! chain of [`crate::core::langevin`] on them: `x <- clip(x - (step_size / 2) * dE/dx +
//! noise_scale * N(0, I))`, clipped to the pixel range (per channel, in input space). With
//! `noise_scale = sqrt(step_size)` that is unadjusted Langevin; otherwise (JEM's settings, say)
//! it is a refinement, not sampling ([`LangevinSettings::is_unadjusted_langevin`]).
//!
//! [`ReplayBuffer`] is the persistent buffer of JEM / IGEBM (Grathwohl et al. 2019; Du &
//! Mordatch 2019): chains start from stored samples, a fraction `reinit_prob` restarts from
//! uniform noise, and the refined samples go back; it is saved to and loaded from a file.
//!
//! ```
//! use ebm_gate::langevin::{EnergyGradient, EnergyTarget, LangevinSettings};
//! use rand_core::SeedableRng;
//! let mut g = EnergyGradient::open("models/cifar10-airnet".as_ref(), None).unwrap();
//! let mut x = ebm_gate::frame::load_frame("models/cifar10-airnet/samples/horse.png".as_ref(), g.input()).unwrap();
//! let settings = LangevinSettings { step_size: 0.01, noise_scale: 0.0, n_steps: 10 };
//! let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(0);
//! let r = g.refine(&mut x, 1, EnergyTarget::Free, &settings, &mut rng).unwrap();
//! assert!(r.trace[10][0] < r.trace[0][0]); // the energy went down
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use rand_core::RngCore;
use serde::Serialize;

use crate::bundle::{sha256_file, BundlePaths, GateFile, InputSpec};
pub use crate::core::langevin::{sgld_chain, sgld_step, Bounds, GradientSource, LangevinError, LangevinSettings};
use crate::error::{Error, Result};
use crate::model::{GradModel, GradNames};
use crate::pipeline::{EnergyGate, FrameReport};
pub use crate::replay::{input_to_pixels, pixels_to_input, Draw, ReplayBuffer};
use crate::source::FrameItem;

/// Which energy a chain descends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnergyTarget {
    /// The free energy `E(x) = -T * logsumexp(f(x) / T)`.
    Free,
    /// The class-conditional energy `E(x, y) = -f(x)[y]` of class index `y`.
    Class(usize),
}

/// A bundle's energy-gradient graph, its preprocessing and temperature.
#[derive(Debug)]
pub struct EnergyGradient {
    model: GradModel,
    input: InputSpec,
    class_names: Vec<String>,
    temperature: f32,
    lo: Vec<f32>,
    hi: Vec<f32>,
    mask: Vec<f32>,
}

/// What a chain did: the energy trace and its timing.
#[derive(Debug, Clone, PartialEq)]
pub struct Refinement {
    /// `trace[s][i]`: energy of frame `i` before update `s` (`s = 0`: the start; `s = n_steps`:
    /// the result). `n_steps + 1` rows of `n` values.
    pub trace: Vec<Vec<f32>>,
    /// Wall time of one step (an SGLD update and the next gradient evaluation), mean over the
    /// chain, seconds. `None` when `n_steps == 0`.
    pub seconds_per_step: Option<f64>,
    /// Wall time of the whole chain, seconds.
    pub seconds: f64,
}

fn no_gradient(path: &Path, why: &'static str) -> Error {
    Error::NoGradient { path: path.into(), why }
}

impl EnergyGradient {
    /// Opens the gradient graph of the bundle at `path` (a directory, or its `model.onnx`), found
    /// through `gate.json`'s `gradient` section; `temperature` overrides the bundle's.
    ///
    /// # Errors
    /// [`Error::NoGradient`] when there is no `gate.json` or no `gradient` section;
    /// [`Error::Bundle`] naming the file when the graph is missing, its sha256 (or that of `model.onnx`) differs from the one recorded,
    /// or its shapes disagree with `gate.json`; [`Error::Model`] when tract cannot load it; [`Error::Invalid`] for a
    /// temperature that is not finite and > 0.
    pub fn open(path: &Path, temperature: Option<f32>) -> Result<EnergyGradient> {
        let paths = BundlePaths::resolve(path)?;
        let gate_path = paths.gate.ok_or_else(|| no_gradient(&paths.model, "no gate.json beside the model"))?;
        let gate = GateFile::read(&gate_path)?;
        let spec =
            gate.gradient.as_ref().ok_or_else(|| no_gradient(&gate_path, "gate.json has no `gradient` section"))?;
        let dir = gate_path.parent().map(Path::to_path_buf).unwrap_or_default();
        let graph = dir.join(&spec.graph);
        if !graph.is_file() {
            return Err(Error::Bundle {
                path: graph,
                message: format!("the energy-gradient graph named in {} is missing", gate_path.display()),
            });
        }
        if let Some(want) = &spec.sha256 {
            let got = sha256_file(&graph)?;
            if &got != want {
                return Err(Error::Bundle {
                    path: graph,
                    message: format!(
                        "sha256 {got} differs from the {want} recorded in {}: the graph was changed or belongs to \
                         another model; export it again with models/tools/energy_grad.py",
                        gate_path.display()
                    ),
                });
            }
        }
        if let Some(want) = &spec.model_sha256 {
            let got = sha256_file(&paths.model)?;
            if &got != want {
                return Err(Error::Bundle {
                    path: graph,
                    message: format!(
                        "was derived from a model.onnx with sha256 {want}, but {} has sha256 {got}: the model changed \
                         since; derive the gradient graph again with models/tools/energy_grad.py",
                        paths.model.display()
                    ),
                });
            }
        }
        let names = GradNames {
            input: spec.inputs.input.clone(),
            temperature: spec.inputs.temperature.clone(),
            class_mask: spec.inputs.class_mask.clone(),
            energy: spec.outputs.energy.clone(),
            grad: spec.outputs.grad.clone(),
        };
        let model = GradModel::load(&graph, &names)?;
        let input = gate.input.clone();
        let want = [input.color.channels(), input.height as usize, input.width as usize];
        if model.input_chw() != want || model.num_classes() != gate.class_names.len() {
            return Err(Error::Shape {
                path: graph,
                expected: format!("input {want:?} and {} classes, as in gate.json", gate.class_names.len()),
                got: format!("input {:?} and {} classes", model.input_chw(), model.num_classes()),
            });
        }
        let temperature = crate::core::check::temperature(temperature.unwrap_or(gate.temperature))?;
        let c = input.color.channels();
        let (mut lo, mut hi) = (vec![0.0; c], vec![0.0; c]);
        Bounds::from_normalisation(input.pixel_range, &input.mean, &input.std, &mut lo, &mut hi);
        Ok(EnergyGradient { model, input, class_names: gate.class_names, temperature, lo, hi, mask: Vec::new() })
    }

    /// The bundle's preprocessing (frames for [`EnergyGradient::refine`] are normalised by it).
    pub fn input(&self) -> &InputSpec {
        &self.input
    }

    /// Class names, in logit order.
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    /// The temperature of the free energy.
    pub fn temperature(&self) -> f32 {
        self.temperature
    }

    /// The gradient graph's file.
    pub fn graph_path(&self) -> &Path {
        self.model.path()
    }

    /// Input-space clip bounds per channel, `(lo, hi)`: the pixel range under normalisation.
    pub fn bounds(&self) -> Bounds<'_> {
        Bounds { lo: &self.lo, hi: &self.hi }
    }

    /// The index of class `name`.
    ///
    /// # Errors
    /// [`Error::Invalid`] listing the class names when there is no such class.
    pub fn class_index(&self, name: &str) -> Result<usize> {
        self.class_names.iter().position(|c| c == name).ok_or_else(|| {
            Error::Invalid(format!("no class named {name:?}; the classes are {}", self.class_names.join(", ")))
        })
    }

    /// Builds the optimised plan for batches of `n` frames now (a plan is built at its first
    /// use otherwise, which would count in the first step's time).
    ///
    /// # Errors
    /// As [`EnergyGradient::open`].
    pub fn prepare(&mut self, n: usize) -> Result<()> {
        self.model.prepare(n)
    }

    /// Most frames one tract run of the gradient graph takes (a batch of chains is run in
    /// pieces of this size); by default 1 for a convolutional network, see
    /// [`crate::Model::forward_batch`].
    pub fn forward_batch(&self) -> usize {
        self.model.forward_batch()
    }

    /// Sets the most frames per tract run (`None`: the automatic choice).
    ///
    /// # Errors
    /// [`Error::Invalid`] for `Some(0)`.
    pub fn set_forward_batch(&mut self, max: Option<usize>) -> Result<()> {
        self.model.set_forward_batch(max)
    }

    /// Runs the chains of a batch on `n` threads ([`crate::Model::set_threads`]).
    ///
    /// # Errors
    /// [`Error::Setting`] for `n = 0` or more than [`crate::MAX_THREADS`].
    pub fn set_threads(&mut self, n: usize) -> Result<()> {
        self.model.set_threads(n)
    }

    /// The threads a batch's chains run on.
    pub fn threads(&self) -> usize {
        self.model.threads()
    }

    /// Energies `[n]` and `dE/dx` `[n, C, H, W]` of `n` frames `x` (`[n, C, H, W]`, normalised).
    ///
    /// # Errors
    /// [`Error::Shape`] for buffers of the wrong length, [`Error::Invalid`] for a class index out
    /// of range, [`Error::Model`] when tract fails.
    pub fn energy_and_grad(
        &mut self,
        x: &[f32],
        n: usize,
        target: EnergyTarget,
        energy: &mut [f32],
        grad: &mut [f32],
    ) -> Result<()> {
        let k = self.class_names.len();
        self.mask.clear();
        match target {
            EnergyTarget::Free => self.mask.resize(n * k, 1.0),
            EnergyTarget::Class(y) if y < k => {
                self.mask.resize(n * k, 0.0);
                for i in 0..n {
                    self.mask[i * k + y] = 1.0;
                }
            }
            EnergyTarget::Class(y) => {
                return Err(Error::Invalid(format!("class index {y} out of range (the model has {k} classes)")))
            }
        }
        let t = match target {
            EnergyTarget::Free => self.temperature,
            EnergyTarget::Class(_) => 1.0,
        };
        self.model.energy_and_grad(x, n, t, &self.mask, energy, grad)
    }

    /// Runs an SGLD chain of `settings.n_steps` updates on `n` frames `x` (`[n, C, H, W]`,
    /// normalised) in place, descending `target`, clipped to the pixel range. The noise comes
    /// from `rng`: the same seed gives the same chain.
    ///
    /// # Errors
    /// [`Error::Langevin`] for bad settings or a non-finite energy or gradient (naming the frame
    /// and step), and the errors of [`EnergyGradient::energy_and_grad`].
    pub fn refine<R: RngCore>(
        &mut self,
        x: &mut [f32],
        n: usize,
        target: EnergyTarget,
        settings: &LangevinSettings,
        rng: &mut R,
    ) -> Result<Refinement> {
        settings.validate()?;
        use crate::core::check::{SettingError, MAX_STEPS};
        if settings.n_steps > MAX_STEPS {
            return Err(SettingError::TooLarge { name: "n_steps", max: MAX_STEPS, got: settings.n_steps }.into());
        }
        self.prepare(n)?;
        let d = self.input.frame_len();
        let (mut energy, mut grad) = (vec![0.0; n], vec![0.0; n * d]);
        let (lo, hi) = (self.lo.clone(), self.hi.clone());
        let bounds = Bounds { lo: &lo, hi: &hi };
        let mut trace = Vec::with_capacity(settings.n_steps + 1);
        let mut stamps = Vec::with_capacity(settings.n_steps + 1);
        let start = Instant::now();
        let mut source = Source { gradient: self, target };
        let r = sgld_chain(&mut source, x, n, &mut energy, &mut grad, settings, &bounds, rng, |_, e| {
            stamps.push(Instant::now());
            trace.push(e.to_vec());
        });
        let seconds = start.elapsed().as_secs_f64();
        r.map_err(|e| match e {
            LangevinError::Gradient(inner) => inner,
            LangevinError::BadSettings { step_size, noise_scale } => {
                Error::Langevin(LangevinError::BadSettings { step_size, noise_scale })
            }
            LangevinError::LengthMismatch { expected, got } => {
                Error::Langevin(LangevinError::LengthMismatch { expected, got })
            }
            LangevinError::BoundsMismatch { bounds, channels } => {
                Error::Langevin(LangevinError::BoundsMismatch { bounds, channels })
            }
            LangevinError::NonFinite { frame, step } => Error::Langevin(LangevinError::NonFinite { frame, step }),
        })?;
        let seconds_per_step = match (stamps.first(), stamps.last()) {
            (Some(a), Some(b)) if settings.n_steps > 0 => Some((*b - *a).as_secs_f64() / settings.n_steps as f64),
            _ => None,
        };
        Ok(Refinement { trace, seconds_per_step, seconds })
    }
}

/// [`EnergyGradient`] with a fixed target, as a [`GradientSource`].
struct Source<'a> {
    gradient: &'a mut EnergyGradient,
    target: EnergyTarget,
}

impl GradientSource for Source<'_> {
    type Error = Error;

    fn frame_len(&self) -> usize {
        self.gradient.input.frame_len()
    }

    fn channels(&self) -> usize {
        self.gradient.input.color.channels()
    }

    fn energy_and_grad(&mut self, x: &[f32], n: usize, energy: &mut [f32], grad: &mut [f32]) -> Result<()> {
        self.gradient.energy_and_grad(x, n, self.target, energy, grad)
    }
}

/// One frame of a [`refine_frames`] run.
#[derive(Debug, Clone, PartialEq)]
pub struct RefinedFrame {
    /// The frame's name (its path, or `FILE#index`).
    pub name: String,
    /// The frame before the chain, input space `[C, H, W]`.
    pub before_x: Vec<f32>,
    /// The frame after it.
    pub after_x: Vec<f32>,
    /// Its energy before each update and after the last (`n_steps + 1` values).
    pub trace: Vec<f32>,
    /// The gate's report of the frame before the chain (class, probability, energy, verdict).
    pub before: FrameReport,
    /// The gate's report after it.
    pub after: FrameReport,
    /// Mean and largest change of a pixel, in 8-bit levels of the pixel range.
    pub pixel_change_8bit: (f64, f64),
}

/// Timing of one chain batch of a [`refine_frames`] run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BatchTiming {
    /// Frames in the batch.
    pub frames: usize,
    /// Seconds a step, when the chain had steps.
    pub seconds_per_step: Option<f64>,
    /// Seconds for the whole chain.
    pub seconds: f64,
}

/// What [`refine_frames`] did: every frame before and after, and each batch's timing.
#[derive(Debug, Clone, PartialEq)]
pub struct RefineRun {
    /// The frames, in input order.
    pub frames: Vec<RefinedFrame>,
    /// Each chain batch's timing, in order.
    pub batches: Vec<BatchTiming>,
}

/// What [`sample_from_buffer`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleRun {
    /// The buffer entries drawn, refined and put back.
    pub indices: Vec<usize>,
    /// How many of them restarted from uniform noise.
    pub reinitialised: usize,
    /// The refined samples, input space `[n, C, H, W]`.
    pub x: Vec<f32>,
    /// The chain ([`EnergyGradient::refine`]): energies per step and timing.
    pub refinement: Refinement,
    /// The gate's report of each refined sample (named `buffer[i]`).
    pub after: Vec<FrameReport>,
}

/// `sample` (JEM's persistent chains): draws `count` samples from `buffer` (of class `y` for
/// [`EnergyTarget::Class`]`(y)`), refines them by SGLD, puts them back, records the model's
/// sha256 in the buffer, and judges them with `gate`. The draws and the noise come from `seed`
/// and the number of chains the buffer has seen, so successive calls go on where the last
/// stopped and a rerun from a copy of the same buffer repeats. The buffer is not saved here.
///
/// # Errors
/// The errors of [`ReplayBuffer::draw`], [`EnergyGradient::refine`], [`ReplayBuffer::put_back`]
/// and of the forward pass.
pub fn sample_from_buffer(
    g: &mut EnergyGradient,
    gate: &mut EnergyGate,
    buffer: &mut ReplayBuffer,
    count: usize,
    target: EnergyTarget,
    settings: &LangevinSettings,
    seed: u64,
) -> Result<SampleRun> {
    let spec = g.input().clone();
    let mut rng = <rand_xoshiro::Xoshiro256PlusPlus as rand_core::SeedableRng>::seed_from_u64(
        seed.wrapping_add(buffer.draws().wrapping_mul(0x9E37_79B9_7F4A_7C15)),
    );
    let class = match target {
        EnergyTarget::Class(y) => Some(y),
        EnergyTarget::Free => None,
    };
    let draw = buffer.draw(count, class, &mut rng)?;
    let n = draw.indices.len();
    let mut x = pixels_to_input(&draw.pixels, &spec);
    let refinement = g.refine(&mut x, n, target, settings, &mut rng)?;
    buffer.put_back(&draw.indices, &input_to_pixels(&x, &spec))?;
    buffer.set_model_sha256(gate.model_sha256());
    let names: Vec<String> = draw.indices.iter().map(|i| format!("buffer[{i}]")).collect();
    let after = gate.judge_inputs(&x, &names)?;
    Ok(SampleRun { indices: draw.indices, reinitialised: draw.reinitialised, x, refinement, after })
}

/// `refine`: decodes `items`, runs seeded SGLD chains on them in batches of `batch` (the noise
/// from one `seed`, so the same items, batch and seed give the same run bit for bit), and
/// judges each frame with `gate` before and after. `on_batch` is called after each batch.
///
/// # Errors
/// [`Error::Decode`] / [`Error::Io`] for the first frame that cannot be read (a chain needs
/// every frame), [`Error::NoFrames`] for no items, [`Error::Setting`] for a batch of 0, and
/// the errors of [`EnergyGradient::refine`] and of the forward pass.
#[allow(clippy::too_many_arguments)]
pub fn refine_frames<R: RngCore>(
    g: &mut EnergyGradient,
    gate: &mut EnergyGate,
    items: &[FrameItem],
    target: EnergyTarget,
    settings: &LangevinSettings,
    batch: usize,
    rng: &mut R,
    mut on_batch: impl FnMut(&BatchTiming),
) -> Result<RefineRun> {
    crate::core::check::count_up_to("batch", batch, crate::core::check::MAX_BATCH)?;
    if items.is_empty() {
        return Err(Error::NoFrames { set: "refine".into(), path: PathBuf::new(), problem: "no image files found" });
    }
    let spec = g.input().clone();
    let d = spec.frame_len();
    let mut x = vec![0.0; items.len() * d];
    let limits = *gate.limits();
    for (item, dst) in items.iter().zip(x.chunks_exact_mut(d)) {
        crate::frame::preprocess_into(&item.decode_with(&limits)?, &spec, dst)?;
    }
    let count = items.len();
    let before_x = x.clone();
    let mut traces: Vec<Vec<f32>> = vec![Vec::new(); count];
    let mut batches = Vec::new();
    for start in (0..count).step_by(batch) {
        let n = batch.min(count - start);
        let r = g.refine(&mut x[start * d..(start + n) * d], n, target, settings, rng)?;
        for row in &r.trace {
            for (i, e) in row.iter().enumerate() {
                traces[start + i].push(*e);
            }
        }
        let timing = BatchTiming { frames: n, seconds_per_step: r.seconds_per_step, seconds: r.seconds };
        on_batch(&timing);
        batches.push(timing);
    }
    let names: Vec<String> = items.iter().map(|it| it.name.clone()).collect();
    let before = gate.judge_inputs(&before_x, &names)?;
    let after = gate.judge_inputs(&x, &names)?;
    // a pixel's change in 8-bit levels: |dx| * std[c] * 255 / (hi - lo)
    let plane = (spec.height * spec.width) as usize;
    let span = (spec.pixel_range[1] - spec.pixel_range[0]) as f64;
    let frames = items
        .iter()
        .zip(before.into_iter().zip(after))
        .zip(traces)
        .enumerate()
        .map(|(i, ((item, (before, after)), trace))| {
            let (b, a) = (&before_x[i * d..(i + 1) * d], &x[i * d..(i + 1) * d]);
            let (mut sum, mut max) = (0.0f64, 0.0f64);
            for j in 0..d {
                let c = (j / plane) % spec.std.len();
                let dl = ((a[j] - b[j]) * spec.std[c]).abs() as f64 * 255.0 / span;
                sum += dl;
                max = max.max(dl);
            }
            RefinedFrame {
                name: item.name.clone(),
                before_x: b.to_vec(),
                after_x: a.to_vec(),
                trace,
                before,
                after,
                pixel_change_8bit: (sum / d as f64, max),
            }
        })
        .collect();
    Ok(RefineRun { frames, batches })
}
