//! The ONNX model, run by tract. The only file that touches tract: no tract type leaves it.
//!
//! [`Model::load`] reads the `.onnx` (weights inside), types and declutters it once, and reads
//! its input `[N, C, H, W]` (a symbolic or fixed batch `N`) and its logits output `[N, K]`.
//! Optimised plans are built once per batch size and reused: the configured batch size at
//! load, and any other size (a last, partial batch) the first time it is run.
//!
//! A batch of `n` frames is not always run as one tract run of `n`: tract computes a
//! convolution with its lazy im2col (no scratch matrix) only at batch 1, so a graph with
//! spatial convolutions runs frame by frame by default (see [`Model::forward_batch`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tract_onnx::prelude::*;

use crate::error::{Error, Result};

type Plan = Arc<TypedRunnableModel>;

/// One frame-level thread's running states, each with its plan's batch ([`Plans::spread`]).
type WorkerStates = Vec<(usize, TypedSimpleState)>;

pub use crate::core::check::MAX_THREADS;

/// Runs `f` with tract's matrix products on the calling thread alone (a frame-level worker:
/// the threads are already busy with other frames).
fn single_threaded<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(feature = "multithread")]
    {
        tract_linalg::multithread::multithread_tract_scope(tract_linalg::multithread::Executor::SingleThread, f)
    }
    #[cfg(not(feature = "multithread"))]
    f()
}

/// One node of an optimised plan and its median time per run ([`Model::op_profile`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OpTime {
    /// The node's name in the optimised plan (tract names fused nodes after their source).
    pub name: String,
    /// tract's operator name (`Conv`, `OptMatMul`, `MaxPool`, ...).
    pub op: String,
    /// Median wall time of the node per run, milliseconds.
    pub median_ms: f64,
    /// For a matrix product, its shape and the kernel tract chose for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matmul: Option<MatMulInfo>,
}

/// A matrix product of an optimised plan: `C[m, n] = A[m, k] B[k, n]` (for a convolution at
/// batch 1, `m` output channels, `k` input channels x kernel area, `n` output pixels).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MatMulInfo {
    /// Rows of the product.
    pub m: usize,
    /// Inner dimension.
    pub k: usize,
    /// Columns.
    pub n: usize,
    /// The tract-linalg kernel(s) it runs, e.g. `fma_mmm_f32_16x6` (x86-64 AVX2+FMA,
    /// 16 x 6 tiles) or `arm64simd_mmm_f32_16x4` (NEON).
    pub kernel: String,
}

/// The shape and kernel of an optimised matrix product node (tract's `OptMatMul`), read from
/// its fields: `m` and `n` from the output fact's axes, `k` from its multiply-add step.
fn matmul_info(op: &tract_onnx::tract_core::ops::matmul::optimized::OptMatMul) -> Option<MatMulInfo> {
    use tract_onnx::tract_core::internal::DimLike;
    Some(MatMulInfo {
        m: op.m().to_usize().ok()?,
        k: op.guess_k()?.to_usize().ok()?,
        n: op.n().to_usize().ok()?,
        kernel: op.mmm.iter().map(|k| k.name().to_string()).collect::<Vec<_>>().join(", "),
    })
}

/// A loaded ONNX classifier with optimised plans cached per batch size.
pub struct Model {
    path: PathBuf,
    plans: Plans,
    chw: [usize; 3],
    num_classes: usize,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("path", &self.path)
            .field("input_chw", &self.chw)
            .field("num_classes", &self.num_classes)
            .field("fixed_batch", &self.plans.fixed_batch)
            .finish()
    }
}

/// The input a model with dynamic dimensions needs, for [`Error::Shape`].
const PINNED_INPUT: &str = "input [N, C, H, W] with C, H, W given by the file or by gate.json's input";

/// Gives the frames input (input 0) of `model` a fact tract can type: an anonymous batch
/// becomes the symbol `N`, anonymous `C, H, W` take `pin`'s values. Named symbols are left to
/// [`concretize_input`].
/// With `batch_one`, an anonymous batch becomes 1 instead (a graph that computes shapes from
/// its input's batch, which tract cannot type with a symbol, runs frame by frame).
fn pin_input(model: &mut InferenceModel, pin: Option<[usize; 3]>, path: &Path, batch_one: bool) -> Result<()> {
    let fact = model.input_fact(0).map_err(|e| Error::tract(path, e))?.clone();
    use tract_onnx::tract_hir::infer::{DimFact, Factoid};
    let dims: Vec<DimFact> = fact.shape.dims().cloned().collect();
    if dims.len() != 4 || dims.iter().all(|d| d.concretize().is_some()) {
        return Ok(()); // nothing anonymous (a wrong rank is refused once typed)
    }
    let mut shape: TVec<TDim> = TVec::new();
    for (i, d) in dims.iter().enumerate() {
        shape.push(match d.concretize() {
            Some(d) => d,
            None if i == 0 && batch_one => TDim::from(1),
            None if i == 0 => model.symbols.sym("N").into(),
            None => match pin {
                Some(chw) => TDim::from(chw[i - 1] as i64),
                None => {
                    return Err(Error::Shape {
                        path: path.into(),
                        expected: PINNED_INPUT.into(),
                        got: format!("dimension {i} without a size or a name, and no gate.json beside the model"),
                    })
                }
            },
        });
    }
    let dt = fact.datum_type.concretize().unwrap_or(f32::datum_type());
    model.set_input_fact(0, InferenceFact::dt_shape(dt, shape)).map_err(|e| Error::tract(path, e))
}

/// Sets the symbols the frames input uses for `C, H, W` to `pin`'s values (a model exported with
/// dynamic height and width), keeping the batch symbol.
fn concretize_input(typed: TypedModel, pin: Option<[usize; 3]>, path: &Path) -> Result<TypedModel> {
    let input = typed.input_fact(0).map_err(|e| Error::tract(path, e))?.clone();
    let shape: Vec<TDim> = input.shape.iter().cloned().collect();
    let mut subs: HashMap<Symbol, TDim> = HashMap::new();
    for (i, d) in shape.iter().enumerate().skip(1) {
        if let TDim::Sym(sym) = d {
            let Some(chw) = pin else {
                return Err(Error::Shape {
                    path: path.into(),
                    expected: PINNED_INPUT.into(),
                    got: format!("{} (symbolic) and no gate.json beside the model", dims_str(&shape)),
                });
            };
            subs.insert(sym.clone(), TDim::from(chw[i - 1] as i64));
        }
    }
    if subs.is_empty() || shape.len() != 4 {
        return Ok(typed);
    }
    typed.set_symbols(&subs).map_err(|e| Error::tract(path, e))
}

/// tract's error while reading or typing `path`, with the ONNX opsets the file imports (an
/// operator tract does not implement is named by tract with its node; the opset says which
/// version of it the file asks for).
fn with_opsets(path: &Path, e: TractError) -> Error {
    let mut message = format!("{e:#}");
    if let Ok(proto) = tract_onnx::onnx().proto_model_for_path(path) {
        let opsets: Vec<String> = proto
            .opset_import
            .iter()
            .map(|o| format!("{} {}", if o.domain.is_empty() { "ai.onnx" } else { o.domain.as_str() }, o.version))
            .collect();
        if !opsets.is_empty() {
            message += &format!(" (the file imports opset {})", opsets.join(", "));
        }
    }
    Error::Model { path: path.into(), message }
}

fn dims_str(shape: &[TDim]) -> String {
    format!("[{}]", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "))
}

/// The frames input `pos` of `typed`: `[C, H, W]` and its batch dimension (a symbol, or a fixed
/// size).
///
/// # Errors
/// [`Error::Shape`] naming `path` unless it is f32 `[N, C, H, W]` with fixed positive `C, H, W`
/// and a symbolic or positive `N`.
fn frames_input(typed: &TypedModel, pos: usize, path: &Path) -> Result<([usize; 3], Option<Symbol>, Option<usize>)> {
    let input = typed.input_fact(pos).map_err(|e| Error::tract(path, e))?;
    let shape: Vec<TDim> = input.shape.iter().cloned().collect();
    let shape_err = |expected: &str, got: String| Error::Shape { path: path.into(), expected: expected.into(), got };
    if shape.len() != 4 || input.datum_type != f32::datum_type() {
        return Err(shape_err("f32 input [N, C, H, W]", format!("{:?} {}", input.datum_type, dims_str(&shape))));
    }
    let mut chw = [0usize; 3];
    for (slot, d) in chw.iter_mut().zip(&shape[1..]) {
        *slot = d
            .to_i64()
            .ok()
            .filter(|&v| v > 0)
            .ok_or_else(|| shape_err("input [N, C, H, W] with fixed C, H, W", dims_str(&shape)))?
            as usize;
    }
    let (batch_symbol, fixed_batch) = match &shape[0] {
        TDim::Sym(s) => (Some(s.clone()), None),
        d => match d.to_i64() {
            Ok(v) if v > 0 => (None, Some(v as usize)),
            _ => return Err(shape_err("input batch N symbolic or a positive integer", dims_str(&shape))),
        },
    };
    Ok((chw, batch_symbol, fixed_batch))
}

/// The optimised, runnable plan of `typed` with its batch symbol (if any) set to `n`.
fn optimised_plan(typed: &TypedModel, batch_symbol: Option<&Symbol>, n: usize, path: &Path) -> Result<Plan> {
    let merr = |e: TractError| Error::tract(path, e);
    let concrete = match batch_symbol {
        Some(sym) => {
            let mut subs = HashMap::new();
            subs.insert(sym.clone(), TDim::Val(n as i64));
            typed.set_symbols(&subs).map_err(merr)?
        }
        None => typed.clone(),
    };
    concrete.into_optimized().map_err(merr)?.into_runnable().map_err(merr)
}

/// The most frames one tract run should take for `typed`, when nobody says otherwise: 1 for a
/// graph with a spatial convolution (kernel larger than 1x1, not depthwise), unlimited
/// otherwise (the energy-gradient graph too). Why: [`Model::forward_batch`].
fn auto_forward_batch_of(typed: &TypedModel) -> usize {
    let spatial_conv = typed.nodes().iter().any(|node| {
        if let Some(conv) = node.op_as::<tract_onnx::tract_core::ops::cnn::Conv>() {
            let volume: usize = conv.pool_spec.kernel_shape.iter().product();
            let depthwise = conv.group > 1
                && conv.group == conv.pool_spec.input_channels
                && conv.group == conv.pool_spec.output_channels;
            volume > 1 && !depthwise
        } else {
            false
        }
    });
    if spatial_conv {
        1
    } else {
        usize::MAX
    }
}

/// A typed graph whose frames input is `[N, C, H, W]`, with its optimised plans (running
/// states) built once per batch size: the classifier's and the gradient graph's.
struct Plans {
    path: PathBuf,
    /// "model" or "gradient graph", for messages.
    what: &'static str,
    typed: TypedModel,
    batch_symbol: Option<Symbol>,
    fixed_batch: Option<usize>,
    /// `auto_forward_batch_of` the graph.
    auto_forward_batch: usize,
    /// Most frames per tract run, when set by the user (`None`: the automatic choice).
    forward_batch: Option<usize>,
    /// Threads a batch's tract runs are spread over ([`Plans::spread`]).
    threads: usize,
    /// Running states per batch size: the first for the calling thread, more for frame-level
    /// threads ([`Plans::spread`]).
    states: HashMap<usize, Vec<TypedSimpleState>>,
}

impl Plans {
    /// Reads the frames input `pos` of `typed` (see [`frames_input`]); returns its `[C, H, W]`.
    fn new(path: &Path, what: &'static str, typed: TypedModel, pos: usize) -> Result<(Plans, [usize; 3])> {
        let (chw, batch_symbol, fixed_batch) = frames_input(&typed, pos, path)?;
        let auto_forward_batch = auto_forward_batch_of(&typed);
        let plans = Plans {
            path: path.into(),
            what,
            typed,
            batch_symbol,
            fixed_batch,
            auto_forward_batch,
            forward_batch: None,
            threads: 1,
            states: HashMap::new(),
        };
        Ok((plans, chw))
    }

    /// Most frames per tract run: the fixed batch of a fixed-batch graph, else the user's
    /// choice, else the automatic one.
    fn forward_batch(&self) -> usize {
        self.fixed_batch.or(self.forward_batch).unwrap_or(self.auto_forward_batch)
    }

    /// Sets the most frames per tract run (`None`: the automatic choice).
    ///
    /// # Errors
    /// [`Error::Setting`] for `Some(0)`.
    fn set_forward_batch(&mut self, max: Option<usize>) -> Result<()> {
        max.map(|n| crate::core::check::count_up_to("forward batch", n, crate::core::check::MAX_BATCH)).transpose()?;
        self.forward_batch = max;
        Ok(())
    }

    /// Spreads a batch's tract runs over `n` threads (1 to [`MAX_THREADS`]) and, in a build
    /// with the `multithread` feature, sets tract-linalg's rayon pool to `n` (the process's, so
    /// the last count set holds for every model's single-run batches).
    fn set_threads(&mut self, n: usize) -> Result<()> {
        self.threads = crate::core::check::threads(n)?;
        #[cfg(feature = "multithread")]
        {
            use tract_linalg::multithread::{set_default_executor, Executor};
            set_default_executor(if n == 1 { Executor::SingleThread } else { Executor::multithread(n) });
        }
        Ok(())
    }

    /// The tract runs a batch of `n` frames is split into: `(first frame, frames)` each.
    fn runs(&self, n: usize) -> impl Iterator<Item = (usize, usize)> {
        let step = self.forward_batch().max(1);
        (0..n).step_by(step).map(move |start| (start, step.min(n - start)))
    }

    /// The running state for batches of `n`, built at first use after `check` accepts the plan
    /// (a plan it refuses is not kept).
    ///
    /// # Errors
    /// [`Error::Shape`] for a batch other than a fixed one; [`Error::Model`] when tract cannot
    /// optimise it; `check`'s error.
    fn state(&mut self, n: usize, check: impl FnOnce(&Plan) -> Result<()>) -> Result<&mut TypedSimpleState> {
        if !self.states.contains_key(&n) {
            if let Some(fixed) = self.fixed_batch {
                if n != fixed {
                    return Err(Error::Shape {
                        path: self.path.clone(),
                        expected: format!("batch of {fixed} (the {}'s batch dimension is fixed)", self.what),
                        got: format!("batch of {n}"),
                    });
                }
            }
            let plan = optimised_plan(&self.typed, self.batch_symbol.as_ref(), n, &self.path)?;
            check(&plan)?;
            let state = plan.spawn().map_err(|e| Error::tract(self.path.clone(), e))?;
            self.states.insert(n, vec![state]);
        }
        self.states
            .get_mut(&n)
            .and_then(|states| states.first_mut())
            .ok_or_else(|| Error::Invalid(format!("no plan for batch {n}")))
    }

    /// Runs `runs` (`(first frame, frames, plan batch)` each; the plan of each batch built
    /// already by [`Plans::state`]) spread over up to `self.threads` threads, a contiguous share of
    /// the runs each (the first share on the calling thread), every thread with its own running
    /// state of each plan it uses (spawned from the plan the first time, kept for the next
    /// call). `work` gets each run's state and triple; returns its results in run order, or the
    /// first error.
    fn spread<R: Send>(
        &mut self,
        runs: &[(usize, usize, usize)],
        work: impl Fn(&mut TypedSimpleState, (usize, usize, usize)) -> Result<R> + Sync,
    ) -> Result<Vec<R>> {
        let workers = self.threads.clamp(1, runs.len().max(1));
        let chunks: Vec<&[(usize, usize, usize)]> = runs.chunks(runs.len().div_ceil(workers).max(1)).collect();
        let workers = chunks.len();
        let mut keys: Vec<usize> = runs.iter().map(|r| r.2).collect();
        keys.sort_unstable();
        keys.dedup();
        let merr = |e: TractError| Error::tract(self.path.clone(), e);
        // Of the workers whose runs use a plan, the i-th gets that plan's state i (state 0, the
        // one the calling thread uses alone, to the first); states beyond those wait in `spare`.
        let mut per_worker: Vec<WorkerStates> = (0..workers).map(|_| Vec::new()).collect();
        let mut spare: Vec<(usize, Vec<TypedSimpleState>)> = Vec::new();
        for &key in &keys {
            let users: Vec<usize> = (0..workers).filter(|&w| chunks[w].iter().any(|r| r.2 == key)).collect();
            let states = self
                .states
                .get_mut(&key)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| Error::Invalid(format!("no plan for batch {key}")))?;
            while states.len() < users.len() {
                let state = states[0].plan().clone().spawn().map_err(merr)?;
                states.push(state);
            }
            let mut states = self.states.remove(&key).unwrap_or_default();
            spare.push((key, states.split_off(users.len())));
            for (&w, state) in users.iter().zip(states) {
                per_worker[w].push((key, state));
            }
        }
        let run_chunk = |chunk: &[(usize, usize, usize)], mut states: WorkerStates| {
            let results = single_threaded(|| {
                chunk
                    .iter()
                    .map(|&run| match states.iter_mut().find(|(k, _)| *k == run.2) {
                        Some((_, state)) => work(state, run),
                        None => Err(Error::Invalid(format!("no plan for batch {}", run.2))),
                    })
                    .collect::<Result<Vec<R>>>()
            });
            (results, states)
        };
        let outcomes: Vec<(Result<Vec<R>>, WorkerStates)> = std::thread::scope(|scope| {
            let mut jobs = chunks.iter().zip(per_worker);
            let first = jobs.next();
            let handles: Vec<_> = jobs.map(|(chunk, states)| scope.spawn(move || run_chunk(chunk, states))).collect();
            let mut outcomes: Vec<_> = first.map(|(chunk, states)| run_chunk(chunk, states)).into_iter().collect();
            for handle in handles {
                outcomes.push(handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)));
            }
            outcomes
        });
        // The states go back in worker order: state 0, the calling thread's, first.
        let mut results = Vec::with_capacity(runs.len());
        let mut first_err = None;
        for (result, states) in outcomes {
            for (key, state) in states {
                self.states.entry(key).or_default().push(state);
            }
            match result {
                Ok(r) => results.extend(r),
                Err(e) => first_err = first_err.or(Some(e)),
            }
        }
        for (key, rest) in spare {
            self.states.entry(key).or_default().extend(rest);
        }
        first_err.map_or(Ok(results), Err)
    }
}

/// Checks a classifier plan's first output is f32 logits `[n, K]` and records `K` (which must
/// not change with the batch size).
fn check_logits(plan: &Plan, n: usize, path: &Path, num_classes: &mut usize) -> Result<()> {
    let out = plan.model().output_fact(0).map_err(|e| Error::tract(path, e))?;
    let oshape: Vec<TDim> = out.shape.iter().cloned().collect();
    let k =
        match (oshape.len(), oshape.first().and_then(|d| d.to_i64().ok()), oshape.get(1).and_then(|d| d.to_i64().ok()))
        {
            (2, Some(b), Some(k)) if b == n as i64 && k > 0 && out.datum_type == f32::datum_type() => k as usize,
            _ => {
                return Err(Error::Shape {
                    path: path.into(),
                    expected: format!("f32 logits [{n}, K]"),
                    got: format!("{:?} {}", out.datum_type, dims_str(&oshape)),
                })
            }
        };
    if *num_classes != 0 && *num_classes != k {
        return Err(Error::Model {
            path: path.into(),
            message: format!("output K changed with batch size: {} vs {k}", *num_classes),
        });
    }
    *num_classes = k;
    Ok(())
}

impl Model {
    /// Loads `path` and builds the optimised plan for `batch` frames (or for the most frames a
    /// tract run takes, `forward_batch`, if that is fewer; `None`: the automatic choice, see
    /// [`Model::forward_batch`]).
    ///
    /// The model's first input must be `[N, C, H, W]` float with concrete `C, H, W`, and its
    /// first output `[N, K]` float logits. A model with a fixed batch dimension runs that
    /// batch size, short batches padded.
    ///
    /// # Errors
    /// [`Error::Model`] naming the file when tract cannot read, type or optimise it;
    /// [`Error::Shape`] when its input or output does not have the shapes above;
    /// [`Error::Invalid`] for a `forward_batch` of 0.
    pub fn load(path: &Path, batch: usize, forward_batch: Option<usize>) -> Result<Model> {
        Model::load_pinned(path, batch, forward_batch, None, None)
    }

    /// [`Model::load`] for a model whose input has dynamic dimensions: `pin = [C, H, W]` (from
    /// `gate.json`'s input) fixes those the file leaves symbolic (`height`, `width`) or
    /// anonymous, and an anonymous batch dimension becomes the symbol `N`. Dimensions the file
    /// fixes stay as they are (a mismatch with `gate.json` is refused by the bundle's check).
    ///
    /// `logits_output` names the tensor that holds the logits when it is not the graph's first
    /// output (`gate.json`'s `logits_output`: the input of a final `Softmax`); the graph is cut
    /// there.
    ///
    /// # Errors
    /// As [`Model::load`]; [`Error::Model`] when no tensor is called `logits_output`.
    pub fn load_pinned(
        path: &Path,
        batch: usize,
        forward_batch: Option<usize>,
        pin: Option<[usize; 3]>,
        logits_output: Option<&str>,
    ) -> Result<Model> {
        let merr = |e: TractError| Error::tract(path, e);
        let mut inference = tract_onnx::onnx().model_for_path(path).map_err(|e| with_opsets(path, e))?;
        if let Some(name) = logits_output {
            inference.select_outputs_by_name([name]).map_err(|_| Error::Model {
                path: path.into(),
                message: format!("logits_output {name:?}: the model has no tensor of that name"),
            })?;
        }
        let typed_with = |batch_one: bool| -> Result<TypedModel> {
            let mut inference = inference.clone();
            pin_input(&mut inference, pin, path, batch_one)?;
            let typed = inference.into_typed().map_err(|e| with_opsets(path, e))?.into_decluttered().map_err(merr)?;
            concretize_input(typed, pin, path)
        };
        // A symbolic batch first (batches in one run); when tract cannot type the graph with it
        // (a Reshape to a shape computed from the input's batch), a batch of 1.
        let typed = match typed_with(false) {
            Ok(t) => t,
            Err(first) => typed_with(true).map_err(|_| first)?,
        };
        let (plans, chw) = Plans::new(path, "model", typed, 0)?;
        let mut model = Model { path: path.into(), plans, chw, num_classes: 0 };
        model.set_forward_batch(forward_batch)?;
        let first = batch.max(1).min(model.plans.forward_batch());
        model.ensure_plan(model.plans.fixed_batch.unwrap_or(first))?;
        Ok(model)
    }

    fn ensure_plan(&mut self, n: usize) -> Result<()> {
        let path = &self.path;
        let num_classes = &mut self.num_classes;
        self.plans.state(n, |plan| check_logits(plan, n, path, num_classes)).map(|_| ())
    }

    /// Builds the optimised plan for batches of `n` frames now rather than at their first use
    /// (a fixed-batch model has its one plan already). Optimising takes tens of milliseconds;
    /// a stream does it before its first frame so that no frame waits for it.
    ///
    /// # Errors
    /// As [`Model::load`].
    pub fn prepare(&mut self, n: usize) -> Result<()> {
        match self.plans.fixed_batch {
            Some(_) => Ok(()),
            None => self.ensure_plan(n.max(1).min(self.plans.forward_batch())),
        }
    }

    /// Most frames one tract run takes: a batch given to [`Model::logits`] is run in pieces of
    /// at most this many (a fixed-batch model: its batch). By default 1 for a graph with a
    /// spatial convolution (kernel larger than 1x1, not depthwise), which tract 0.23 computes
    /// with its lazy im2col (no scratch matrix) only at batch 1 (`tract-core`
    /// `should_use_lazy`); unlimited for other graphs (MLPs, 1x1 and depthwise convolutions),
    /// where a larger matrix product is what batching is for. The measurements behind this
    /// choice are in the repository's `docs/benchmarks.md`.
    pub fn forward_batch(&self) -> usize {
        self.plans.forward_batch()
    }

    /// Sets the most frames per tract run (`None`: the automatic choice). No effect on a
    /// fixed-batch model.
    ///
    /// # Errors
    /// [`Error::Invalid`] for `Some(0)`.
    pub fn set_forward_batch(&mut self, max: Option<usize>) -> Result<()> {
        self.plans.set_forward_batch(max)
    }

    /// Runs this model's batches on `n` threads (1 to [`MAX_THREADS`]; 1 by default).
    ///
    /// A batch that is split into several tract runs (by default every batch of a
    /// convolutional network, which runs frame by frame: [`Model::forward_batch`]) has its runs
    /// spread over `n` threads, each with its own plan state (frame-level parallelism; any
    /// build). In a build with the `multithread` feature, a batch that is one tract run (a single
    /// frame) also splits its matrix products over tract-linalg's rayon pool of `n` threads,
    /// which is the process's. Results do not depend on `n`: a frame gives the same bits on any
    /// thread.
    ///
    /// # Errors
    /// [`Error::Setting`] for `n = 0` or more than [`MAX_THREADS`].
    pub fn set_threads(&mut self, n: usize) -> Result<()> {
        self.plans.set_threads(n)
    }

    /// The threads this model's batches run on.
    pub fn threads(&self) -> usize {
        self.plans.threads
    }

    /// The model file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `[C, H, W]` of one input frame.
    pub fn input_chw(&self) -> [usize; 3] {
        self.chw
    }

    /// Number of logits `K`.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// The batch size the model is fixed to, if its batch dimension is not symbolic.
    pub fn fixed_batch(&self) -> Option<usize> {
        self.plans.fixed_batch
    }

    /// Runs a forward pass on `n` frames: `input` is `[n, C, H, W]` row-major (length
    /// `n * C * H * W`); returns the logits `[n, K]` row-major.
    ///
    /// # Errors
    /// [`Error::Shape`] when `input` has the wrong length or `n` exceeds a fixed batch (a
    /// shorter batch is padded with zeros), [`Error::Model`] when tract fails.
    pub fn logits(&mut self, input: &[f32], n: usize) -> Result<Vec<f32>> {
        let [c, h, w] = self.chw;
        if n == 0 || input.len() != n * c * h * w {
            return Err(Error::Shape {
                path: self.path.clone(),
                expected: format!("[{n}, {c}, {h}, {w}] = {} values", n * c * h * w),
                got: format!("{} values", input.len()),
            });
        }
        let d = c * h * w;
        let runs: Vec<(usize, usize)> = self.plans.runs(n).collect();
        if runs.len() == 1 {
            return self.run_logits(input, n);
        }
        // Several runs: on the model's threads (the calling thread alone for 1).
        let runs: Vec<(usize, usize, usize)> =
            runs.into_iter().map(|(start, len)| (start, len, run_batch(self.plans.fixed_batch, len))).collect();
        for &(_, _, run_n) in &runs {
            self.ensure_plan(run_n)?;
        }
        let (path, chw, k) = (self.path.clone(), self.chw, self.num_classes);
        let parts = self.plans.spread(&runs, |state, (start, len, run_n)| {
            run_logits_on(state, &input[start * d..(start + len) * d], len, run_n, chw, k, &path)
        })?;
        Ok(parts.concat())
    }

    /// Where the time of one tract run of `n` frames goes: each node of the optimised plan
    /// with its median wall time over `runs` runs of `input` (`[n, C, H, W]`), in plan order.
    /// `n` is one run (at most [`Model::forward_batch`] is what the other calls use).
    ///
    /// # Errors
    /// As [`Model::logits`]; [`Error::Invalid`] for zero runs.
    pub fn op_profile(&mut self, input: &[f32], n: usize, runs: usize) -> Result<Vec<OpTime>> {
        let [c, h, w] = self.chw;
        if n == 0 || runs == 0 || input.len() != n * c * h * w {
            return Err(Error::Invalid(format!(
                "op profile needs n >= 1, runs >= 1 and {} input values, got n {n}, runs {runs}, {} values",
                n * c * h * w,
                input.len()
            )));
        }
        let path = self.path.clone();
        let merr = |e: TractError| Error::tract(path.clone(), e);
        let num_classes = &mut self.num_classes;
        let state = self.plans.state(n, |plan| check_logits(plan, n, &path, num_classes))?;
        let tensor = Tensor::from_shape(&[n, c, h, w], input).map_err(merr)?;
        let mut times: HashMap<usize, (String, String, Option<MatMulInfo>, Vec<f64>)> = HashMap::new();
        let mut order: Vec<usize> = Vec::new();
        for _ in 0..runs {
            state
                .run_plan_with_eval(tvec!(tensor.clone().into()), |session, op_state, node, inputs| {
                    let t = std::time::Instant::now();
                    let out = tract_onnx::tract_core::plan::eval(session, op_state, node, inputs);
                    let ms = t.elapsed().as_secs_f64() * 1e3;
                    let entry = times.entry(node.id).or_insert_with(|| {
                        order.push(node.id);
                        let matmul = node.op_as().and_then(matmul_info);
                        (node.name.clone(), node.op.name().to_string(), matmul, Vec::new())
                    });
                    entry.3.push(ms);
                    out
                })
                .map_err(merr)?;
        }
        Ok(order
            .into_iter()
            .filter_map(|id| times.remove(&id))
            .map(|(name, op, matmul, mut ms)| {
                ms.sort_by(f64::total_cmp);
                OpTime { name, op, median_ms: ms[ms.len() / 2], matmul }
            })
            .collect())
    }

    /// One tract run of `n` frames (`n` at most a fixed batch).
    fn run_logits(&mut self, input: &[f32], n: usize) -> Result<Vec<f32>> {
        let run_n = run_batch(self.plans.fixed_batch, n);
        self.ensure_plan(run_n)?;
        let (path, chw, k) = (self.path.clone(), self.chw, self.num_classes);
        let state = self.plans.state(run_n, |_| Ok(()))?;
        run_logits_on(state, input, n, run_n, chw, k, &path)
    }
}

/// The plan batch a tract run of `n` frames uses: `n`, or the `fixed` batch of a fixed-batch
/// model (a short batch is padded with zeros).
fn run_batch(fixed: Option<usize>, n: usize) -> usize {
    match fixed {
        Some(fixed) if n < fixed => fixed,
        _ => n,
    }
}

/// One tract run of the `n` frames `input` (`[n, C, H, W]`, `chw` = `[C, H, W]`) on `state`, a
/// classifier plan for batches of `run_n` (at least `n`: the frames are padded with zeros)
/// checked to give `k` logits. Returns the logits `[n, k]`.
fn run_logits_on(
    state: &mut TypedSimpleState,
    input: &[f32],
    n: usize,
    run_n: usize,
    chw: [usize; 3],
    k: usize,
    path: &Path,
) -> Result<Vec<f32>> {
    let [c, h, w] = chw;
    let merr = |e: TractError| Error::tract(path, e);
    let tensor = if run_n == n {
        Tensor::from_shape(&[n, c, h, w], input)
    } else {
        let mut padded = input.to_vec();
        padded.resize(run_n * c * h * w, 0.0);
        Tensor::from_shape(&[run_n, c, h, w], &padded)
    }
    .map_err(merr)?;
    let outputs = state.run(tvec!(tensor.into())).map_err(merr)?;
    let view = outputs[0].to_plain_array_view::<f32>().map_err(merr)?;
    Ok(view.iter().copied().take(n * k).collect())
}

/// Names of the energy-gradient graph's inputs and outputs (from `gate.json`'s `gradient`).
#[derive(Debug, Clone, PartialEq)]
pub struct GradNames {
    /// Frames `[N, C, H, W]`.
    pub input: String,
    /// Temperature `[1]`.
    pub temperature: String,
    /// Class mask `[N, K]`.
    pub class_mask: String,
    /// Energy `[N]`.
    pub energy: String,
    /// Gradient `[N, C, H, W]`.
    pub grad: String,
}

/// A loaded energy-gradient graph (inputs: frames, temperature, class mask; outputs: energy and
/// `dE/dx`), with optimised plans cached per batch size.
pub struct GradModel {
    path: PathBuf,
    plans: Plans,
    chw: [usize; 3],
    num_classes: usize,
    /// Position of (input, temperature, class_mask) among the graph's inputs.
    input_pos: [usize; 3],
    /// Position of (energy, grad) among its outputs.
    output_pos: [usize; 2],
}

impl std::fmt::Debug for GradModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GradModel")
            .field("path", &self.path)
            .field("input_chw", &self.chw)
            .field("num_classes", &self.num_classes)
            .finish()
    }
}

impl GradModel {
    /// Loads the gradient graph at `path`, finding its inputs and outputs by `names`.
    ///
    /// # Errors
    /// [`Error::Model`] when tract cannot read or type it, or a named input/output is missing
    /// (the message lists the graph's names); [`Error::Shape`] when the frames input is not
    /// `[N, C, H, W]` with fixed `C, H, W` or the class mask not `[N, K]`.
    pub fn load(path: &Path, names: &GradNames) -> Result<GradModel> {
        let merr = |e: TractError| Error::tract(path, e);
        let inference = tract_onnx::onnx().model_for_path(path).map_err(merr)?;
        let typed = inference.into_typed().map_err(merr)?.into_decluttered().map_err(merr)?;
        let in_names: Vec<String> =
            typed.input_outlets().map_err(merr)?.iter().map(|o| typed.node(o.node).name.clone()).collect();
        let out_names: Vec<String> = typed
            .output_outlets()
            .map_err(merr)?
            .iter()
            .map(|o| typed.outlet_label(*o).map(str::to_string).unwrap_or_else(|| typed.node(o.node).name.clone()))
            .collect();
        let find = |list: &[String], want: &str, what: &str| {
            list.iter().position(|n| n == want).ok_or_else(|| Error::Model {
                path: path.into(),
                message: format!("the gradient graph has no {what} named {want:?} (it has {list:?})"),
            })
        };
        let input_pos = [
            find(&in_names, &names.input, "input")?,
            find(&in_names, &names.temperature, "input")?,
            find(&in_names, &names.class_mask, "input")?,
        ];
        let output_pos = [find(&out_names, &names.energy, "output")?, find(&out_names, &names.grad, "output")?];
        let mask = typed.input_fact(input_pos[2]).map_err(merr)?.clone();
        let mshape: Vec<TDim> = mask.shape.iter().cloned().collect();
        let num_classes = match mshape.get(1).and_then(|d| d.to_i64().ok()) {
            Some(k) if mshape.len() == 2 && k > 0 => k as usize,
            _ => {
                return Err(Error::Shape {
                    path: path.into(),
                    expected: "class mask [N, K] with fixed K".into(),
                    got: dims_str(&mshape),
                })
            }
        };
        let (plans, chw) = Plans::new(path, "gradient graph", typed, input_pos[0])?;
        Ok(GradModel { path: path.into(), plans, chw, num_classes, input_pos, output_pos })
    }

    /// The graph file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `[C, H, W]` of one frame.
    pub fn input_chw(&self) -> [usize; 3] {
        self.chw
    }

    /// Number of classes `K` of the class mask.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Builds the optimised plan for batches of `n` frames now rather than at first use.
    ///
    /// # Errors
    /// [`Error::Model`] when tract cannot optimise it; [`Error::Shape`] for a batch other than
    /// a fixed one.
    pub fn prepare(&mut self, n: usize) -> Result<()> {
        let n = n.max(1).min(self.plans.forward_batch());
        self.plans.state(n, |_| Ok(())).map(|_| ())
    }

    /// Most frames one tract run takes (see [`Model::forward_batch`]).
    pub fn forward_batch(&self) -> usize {
        self.plans.forward_batch()
    }

    /// Sets the most frames per tract run (`None`: the automatic choice).
    ///
    /// # Errors
    /// [`Error::Invalid`] for `Some(0)`.
    pub fn set_forward_batch(&mut self, max: Option<usize>) -> Result<()> {
        self.plans.set_forward_batch(max)
    }

    /// Runs the graph's batches on `n` threads ([`Model::set_threads`]).
    ///
    /// # Errors
    /// [`Error::Setting`] for `n = 0` or more than [`MAX_THREADS`].
    pub fn set_threads(&mut self, n: usize) -> Result<()> {
        self.plans.set_threads(n)
    }

    /// The threads this model's batches run on.
    pub fn threads(&self) -> usize {
        self.plans.threads
    }

    /// Energies `[n]` and gradients `[n, C, H, W]` of `n` frames `x` (`[n, C, H, W]`), at
    /// temperature `temperature`, over the classes where `class_mask` (`[n, K]`) is 1.
    ///
    /// # Errors
    /// [`Error::Shape`] for buffers of the wrong length or outputs of the wrong shape;
    /// [`Error::Model`] when tract fails.
    pub fn energy_and_grad(
        &mut self,
        x: &[f32],
        n: usize,
        temperature: f32,
        class_mask: &[f32],
        energy: &mut [f32],
        grad: &mut [f32],
    ) -> Result<()> {
        let [c, h, w] = self.chw;
        let k = self.num_classes;
        let d = c * h * w;
        if n == 0 || x.len() != n * d || grad.len() != n * d || energy.len() != n || class_mask.len() != n * k {
            return Err(Error::Shape {
                path: self.path.clone(),
                expected: format!("x and grad [{n}, {c}, {h}, {w}], energy [{n}], class_mask [{n}, {k}]"),
                got: format!(
                    "x {} values, grad {}, energy {}, class_mask {}",
                    x.len(),
                    grad.len(),
                    energy.len(),
                    class_mask.len()
                ),
            });
        }
        let runs: Vec<(usize, usize)> = self.plans.runs(n).collect();
        let io = GradIo { path: &self.path, chw: self.chw, k, input_pos: self.input_pos, output_pos: self.output_pos };
        if let [(_, len)] = runs[..] {
            let state = self.plans.state(len, |_| Ok(()))?;
            return io.run(state, x, len, temperature, class_mask, energy, grad);
        }
        // Several runs: on the model's threads (the calling thread alone for 1).
        let runs: Vec<(usize, usize, usize)> = runs.into_iter().map(|(s, len)| (s, len, len)).collect();
        for &(_, len, _) in &runs {
            self.plans.state(len, |_| Ok(()))?;
        }
        let parts = self.plans.spread(&runs, |state, (s, len, _)| {
            let (mut e, mut g) = (vec![0.0; len], vec![0.0; len * d]);
            io.run(
                state,
                &x[s * d..(s + len) * d],
                len,
                temperature,
                &class_mask[s * k..(s + len) * k],
                &mut e,
                &mut g,
            )?;
            Ok((e, g))
        })?;
        for ((s, len, _), (e, g)) in runs.into_iter().zip(parts) {
            energy[s..s + len].copy_from_slice(&e);
            grad[s * d..(s + len) * d].copy_from_slice(&g);
        }
        Ok(())
    }
}

/// What one run of a gradient graph needs besides its state: the graph file (for messages),
/// `[C, H, W]`, the classes `k`, and where its inputs and outputs are.
struct GradIo<'a> {
    path: &'a Path,
    chw: [usize; 3],
    k: usize,
    input_pos: [usize; 3],
    output_pos: [usize; 2],
}

impl GradIo<'_> {
    /// One tract run of `n` frames on `state`, buffers checked by the caller.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        state: &mut TypedSimpleState,
        x: &[f32],
        n: usize,
        temperature: f32,
        class_mask: &[f32],
        energy: &mut [f32],
        grad: &mut [f32],
    ) -> Result<()> {
        let [c, h, w] = self.chw;
        let (k, d) = (self.k, c * h * w);
        let merr = |e: TractError| Error::tract(self.path, e);
        let mut inputs: [Option<TValue>; 3] = [None, None, None];
        inputs[self.input_pos[0]] = Some(Tensor::from_shape(&[n, c, h, w], x).map_err(merr)?.into());
        inputs[self.input_pos[1]] = Some(Tensor::from_shape(&[1], &[temperature]).map_err(merr)?.into());
        inputs[self.input_pos[2]] = Some(Tensor::from_shape(&[n, k], class_mask).map_err(merr)?.into());
        let inputs: TVec<TValue> = inputs.into_iter().flatten().collect();
        let outputs = state.run(inputs).map_err(merr)?;
        let e = outputs[self.output_pos[0]].to_plain_array_view::<f32>().map_err(merr)?;
        let g = outputs[self.output_pos[1]].to_plain_array_view::<f32>().map_err(merr)?;
        if e.len() != n || g.len() != n * d {
            return Err(Error::Shape {
                path: self.path.into(),
                expected: format!("outputs energy [{n}] and grad [{n}, {c}, {h}, {w}]"),
                got: format!("energy {:?}, grad {:?}", e.shape(), g.shape()),
            });
        }
        for (dst, src) in energy.iter_mut().zip(e.iter()) {
            *dst = *src;
        }
        for (dst, src) in grad.iter_mut().zip(g.iter()) {
            *dst = *src;
        }
        Ok(())
    }
}
