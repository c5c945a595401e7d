//! `init`: a bundle (`model.onnx` + `gate.json`) for a classifier made elsewhere, from flags or
//! from the model's ONNX metadata, so that nobody writes `gate.json` by hand.
//!
//! Every setting of the bundle's `input` comes from, in this order: a flag
//! ([`InitOptions`]), the model's ONNX metadata (`metadata_props`), the model's input shape, or
//! a default; [`InitReport::sources`] says which. The metadata keys read:
//!
//! | key | values | sets |
//! |---|---|---|
//! | `Image.BitmapPixelFormat` | `Rgb8`, `Bgr8`, `Gray8` (`Rgba8` / `Bgra8`: alpha dropped) | `color` |
//! | `Image.NominalPixelRange` | `NominalRange_0_255`, `Normalized_0_1`, `Normalized_1_1` | `pixel_range` |
//! | `mean`, `std` | a JSON array or comma-separated numbers, one per channel | `mean`, `std` |
//! | `class_names` | a JSON array of strings, or comma-separated names | `class_names` |
//!
//! The first two are ONNX's image metadata (onnx/docs/MetadataProps.md); the last three are this
//! tool's (an exporter can write them with `onnx.helper.set_model_props`).
//!
//! A graph whose output is a `Softmax` (or `LogSoftmax`), possibly followed by `Identity`, gives
//! probabilities: `logsumexp` of probabilities is not the free energy (every frame's is about
//! the same), so the bundle names the Softmax's input in `logits_output` and the runtime reads
//! the logits there (unless [`LogitsOutput::Graph`] asks otherwise).
//!
//! When neither flags nor metadata state the normalisation (`pixel_range`, `mean`, `std`), the
//! bundle records it as [`Normalization::Unset`] and `calibrate` warns.

use std::path::{Path, PathBuf};

use crate::bundle::{Color, GateFile, InputSpec, Normalization, Provenance, ResizeMode, FORMAT_VERSION};
use crate::error::{Error, Result};
use crate::model::Model;

/// Largest model `init` reads, in bytes (protobuf's own limit, 2 GiB).
pub const MAX_MODEL_BYTES: u64 = 2 << 30;

/// Most classes a bundle names.
pub const MAX_CLASSES: usize = 100_000;

/// Where the logits are read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LogitsOutput {
    /// The graph's output, or the input of a final `Softmax` / `LogSoftmax`.
    #[default]
    Auto,
    /// The graph's output, whatever it is.
    Graph,
    /// The tensor of this name.
    Named(String),
}

/// The settings `init` takes; `None` = from the metadata, the model or the default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InitOptions {
    /// The model's input size `(width, height)`, needed when the model leaves it dynamic.
    pub size: Option<(u32, u32)>,
    /// Channel order.
    pub color: Option<Color>,
    /// `[lo, hi]`: the values 8-bit 0 and 255 map to.
    pub pixel_range: Option<[f32; 2]>,
    /// Per-channel mean, in the tensor's channel order.
    pub mean: Option<Vec<f32>>,
    /// Per-channel standard deviation, in the tensor's channel order.
    pub std: Option<Vec<f32>>,
    /// One name per logit.
    pub class_names: Option<Vec<String>>,
    /// How frames of another size are brought to the model's [default: shorter side, then
    /// the centre].
    pub resize: Option<ResizeMode>,
    /// Where the logits are read.
    pub logits_output: LogitsOutput,
    /// Replace a bundle already in the folder.
    pub force: bool,
}

/// Where a setting came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A flag ([`InitOptions`]).
    Flag,
    /// The model's ONNX metadata.
    Metadata,
    /// The model's graph (input shape, output count, a final Softmax).
    Model,
    /// The default.
    Default,
}

impl Source {
    /// `flag` | `onnx metadata` | `model` | `default`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Flag => "flag",
            Source::Metadata => "onnx metadata",
            Source::Model => "model",
            Source::Default => "default",
        }
    }
}

/// What `init` wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct InitReport {
    /// The bundle folder.
    pub bundle: PathBuf,
    /// The `gate.json` written.
    pub gate_file: GateFile,
    /// Each setting (`color`, `size`, `pixel_range`, `mean`, `std`, `resize`, `class_names`,
    /// `logits_output`) and where it came from.
    pub sources: Vec<(&'static str, Source)>,
    /// The op the graph's output came from when `logits_output` was moved before it (`Softmax`).
    pub softmax_skipped: Option<String>,
    /// The model's ONNX metadata keys, as found.
    pub metadata: Vec<(String, String)>,
    /// The logits of a mid-gray frame (a check that the bundle runs; finite).
    pub gray_logits: Vec<f32>,
    /// The free energy of that frame at `T = 1`.
    pub gray_energy: f32,
    /// Frames per forward pass when the graph fixes its batch (or types only with a batch of
    /// 1, as a graph that computes a Reshape from its input's batch does); `None`: any batch.
    pub fixed_batch: Option<usize>,
}

fn invalid(msg: String) -> Error {
    Error::Invalid(msg)
}

/// Numbers from a JSON array or a comma-separated list.
pub fn parse_numbers(what: &str, s: &str) -> Result<Vec<f32>> {
    let s = s.trim();
    let parsed: std::result::Result<Vec<f32>, String> = if s.starts_with('[') {
        serde_json::from_str::<Vec<f32>>(s).map_err(|e| e.to_string())
    } else {
        s.split(',').map(|x| x.trim().parse::<f32>().map_err(|e| format!("{x:?}: {e}"))).collect()
    };
    let v = parsed.map_err(|e| invalid(format!("{what}: expected numbers (a,b,c or [a,b,c]): {e}")))?;
    if v.is_empty() || v.len() > 4 || v.iter().any(|x| !x.is_finite()) {
        return Err(invalid(format!("{what}: expected 1 to 4 finite numbers, got {s:?}")));
    }
    Ok(v)
}

/// Class names from a JSON array of strings or a comma-separated list (at most
/// [`MAX_CLASSES`], each non-empty).
pub fn parse_class_names(what: &str, s: &str) -> Result<Vec<String>> {
    let s = s.trim();
    let names: Vec<String> = if s.starts_with('[') {
        serde_json::from_str(s).map_err(|e| invalid(format!("{what}: not a JSON array of strings: {e}")))?
    } else {
        s.split(',').map(|x| x.trim().to_string()).collect()
    };
    if names.is_empty() || names.len() > MAX_CLASSES || names.iter().any(|n| n.is_empty() || n.len() > 256) {
        return Err(invalid(format!(
            "{what}: expected 1 to {MAX_CLASSES} non-empty names of at most 256 bytes, got {} names",
            names.len()
        )));
    }
    Ok(names)
}

/// Class names from a text file: one per line (blank lines and `#` comments skipped), or a JSON
/// array; at most 1 MiB.
pub fn read_class_names(path: &Path) -> Result<Vec<String>> {
    use std::io::Read;
    let mut text = String::new();
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    file.take((1 << 20) + 1).read_to_string(&mut text).map_err(|e| Error::io(path, e))?;
    if text.len() > 1 << 20 {
        return Err(invalid(format!("{}: larger than 1 MiB: not a class list", path.display())));
    }
    let what = path.display().to_string();
    if text.trim_start().starts_with('[') {
        return parse_class_names(&what, &text);
    }
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    parse_class_names(&what, &lines.join(",")).and_then(|v| {
        if v.len() == lines.len() {
            Ok(v)
        } else {
            Err(invalid(format!("{what}: a name holds a comma")))
        }
    })
}

/// What `init` reads from the ONNX file itself.
struct Graph {
    metadata: Vec<(String, String)>,
    /// The first input's dimensions (`None`: symbolic or unknown).
    input: Vec<Option<u64>>,
    /// The graph's first output, and, when it comes from a Softmax/LogSoftmax (through
    /// Identity nodes), that op and its input.
    softmax: Option<(String, String)>,
}

fn read_graph(path: &Path) -> Result<Graph> {
    use tract_onnx::prelude::Framework;
    let proto = tract_onnx::onnx()
        .proto_model_for_path(path)
        .map_err(|e| Error::Model { path: path.into(), message: format!("cannot read the ONNX file: {e}") })?;
    let metadata = proto.metadata_props.iter().map(|p| (p.key.clone(), p.value.clone())).collect();
    let graph = proto
        .graph
        .as_ref()
        .ok_or_else(|| Error::Model { path: path.into(), message: "no graph in the file".into() })?;
    let initializers: std::collections::HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let input = graph
        .input
        .iter()
        .find(|i| !initializers.contains(i.name.as_str()))
        .ok_or_else(|| Error::Model { path: path.into(), message: "the graph has no input".into() })?;
    use tract_onnx::pb::tensor_shape_proto::dimension::Value;
    use tract_onnx::pb::type_proto::Value as TypeValue;
    let dims: Vec<Option<u64>> = match input.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(TypeValue::TensorType(t)) => t
            .shape
            .as_ref()
            .map(|s| {
                s.dim
                    .iter()
                    .map(|d| match d.value {
                        Some(Value::DimValue(v)) if v > 0 => Some(v as u64),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    // Walk back from the first output through Identity nodes.
    let mut softmax = None;
    if let Some(out) = graph.output.first() {
        let mut name = out.name.clone();
        for _ in 0..16 {
            let Some(node) = graph.node.iter().find(|n| n.output.contains(&name)) else { break };
            match node.op_type.as_str() {
                "Identity" => name = node.input.first().cloned().unwrap_or_default(),
                "Softmax" | "LogSoftmax" => {
                    softmax = node.input.first().map(|i| (node.op_type.clone(), i.clone()));
                    break;
                }
                _ => break,
            }
        }
    }
    Ok(Graph { metadata, input: dims, softmax })
}

fn color_name(c: Color) -> &'static str {
    match c {
        Color::Rgb => "rgb",
        Color::Bgr => "bgr",
        Color::Gray => "gray",
    }
}

fn metadata<'a>(g: &'a Graph, key: &str) -> Option<&'a str> {
    g.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Creates the bundle folder `out` for the ONNX classifier `model`: copies the model to
/// `out/model.onnx` and writes `out/gate.json` (no gate yet: run `calibrate` on it), after
/// loading the bundle and scoring a mid-gray frame.
///
/// # Errors
/// [`Error::Invalid`] for settings that contradict each other or the model (channel count,
/// class count, a size the model fixes otherwise, a dynamic size without
/// [`InitOptions::size`]), metadata it cannot use, or a folder that holds a bundle already
/// (without [`InitOptions::force`]); [`Error::Io`]; the model's load errors.
pub fn init(model: &Path, out: &Path, opts: &InitOptions) -> Result<InitReport> {
    let meta = std::fs::metadata(model).map_err(|e| Error::io(model, e))?;
    if !meta.is_file() {
        return Err(invalid(format!("{}: not a file (init takes an .onnx model)", model.display())));
    }
    if meta.len() > MAX_MODEL_BYTES {
        return Err(invalid(format!("{}: larger than 2 GiB, protobuf's limit: not an ONNX model", model.display())));
    }
    let g = read_graph(model)?;
    let mut sources: Vec<(&'static str, Source)> = Vec::new();

    // Channels.
    let meta_color = match metadata(&g, "Image.BitmapPixelFormat") {
        None => None,
        Some("Rgb8" | "Rgba8") => Some(Color::Rgb),
        Some("Bgr8" | "Bgra8") => Some(Color::Bgr),
        Some("Gray8") => Some(Color::Gray),
        Some(other) => {
            return Err(invalid(format!(
                "{}: metadata Image.BitmapPixelFormat = {other:?} is not supported (Rgb8, Bgr8, Gray8); give --color",
                model.display()
            )))
        }
    };
    let model_c = g.input.get(1).copied().flatten();
    let color = match (opts.color, meta_color, model_c) {
        (Some(c), _, _) => {
            sources.push(("color", Source::Flag));
            c
        }
        (None, Some(c), _) => {
            sources.push(("color", Source::Metadata));
            c
        }
        (None, None, Some(1)) => {
            sources.push(("color", Source::Model));
            Color::Gray
        }
        (None, None, _) => {
            // Three channels say nothing of their order: RGB is a guess.
            sources.push(("color", Source::Default));
            Color::Rgb
        }
    };
    let c = color.channels();
    if g.input.len() != 4 {
        return Err(Error::Shape {
            path: model.into(),
            expected: "an input [N, C, H, W]".into(),
            got: format!("an input of rank {}", g.input.len()),
        });
    }
    if let Some(mc) = model_c {
        if mc as usize != c {
            return Err(invalid(format!("color {color:?} has {c} channels, but {} takes {mc}", model.display())));
        }
    }

    // Size.
    let (h, w) = (g.input[2], g.input[3]);
    let (width, height) = match (opts.size, h, w) {
        (Some((sw, sh)), Some(mh), Some(mw)) if (sw as u64, sh as u64) != (mw, mh) => {
            return Err(invalid(format!("--size {sw}x{sh}: {} takes {mw}x{mh}", model.display())));
        }
        (Some(s), _, _) => {
            sources.push(("size", Source::Flag));
            s
        }
        (None, Some(mh), Some(mw)) => {
            sources.push(("size", Source::Model));
            (mw as u32, mh as u32)
        }
        (None, _, _) => {
            return Err(invalid(format!(
                "{} leaves its input height or width dynamic: give --size WIDTHxHEIGHT (what it was trained on)",
                model.display()
            )))
        }
    };
    crate::core::check::count_up_to("input width", width as usize, 16_384)?;
    crate::core::check::count_up_to("input height", height as usize, 16_384)?;

    // Normalisation.
    let meta_range = match metadata(&g, "Image.NominalPixelRange") {
        None => None,
        Some("NominalRange_0_255") => Some([0.0, 255.0]),
        Some("Normalized_0_1") => Some([0.0, 1.0]),
        Some("Normalized_1_1") => Some([-1.0, 1.0]),
        Some(other) => {
            return Err(invalid(format!(
                "{}: metadata Image.NominalPixelRange = {other:?} is not supported; give --pixel-range",
                model.display()
            )))
        }
    };
    let mut stated = false;
    let pixel_range = match (opts.pixel_range, meta_range) {
        (Some(r), _) => {
            sources.push(("pixel_range", Source::Flag));
            stated = true;
            r
        }
        (None, Some(r)) => {
            sources.push(("pixel_range", Source::Metadata));
            stated = true;
            r
        }
        (None, None) => {
            sources.push(("pixel_range", Source::Default));
            [0.0, 1.0]
        }
    };
    let mut channel_values = |name: &'static str, flag: &Option<Vec<f32>>, default: f32| -> Result<Vec<f32>> {
        let (v, src) = match (flag, metadata(&g, name)) {
            (Some(v), _) => (v.clone(), Source::Flag),
            (None, Some(text)) => (parse_numbers(&format!("metadata {name}"), text)?, Source::Metadata),
            (None, None) => (vec![default; c], Source::Default),
        };
        if src != Source::Default {
            stated = true;
        }
        sources.push((name, src));
        match v.len() {
            n if n == c => Ok(v),
            1 => Ok(vec![v[0]; c]),
            n => Err(invalid(format!("{name}: {n} values for a {c}-channel input ({})", color_name(color)))),
        }
    };
    let mean = channel_values("mean", &opts.mean, 0.0)?;
    let std = channel_values("std", &opts.std, 1.0)?;
    let resize = match opts.resize {
        Some(r) => {
            sources.push(("resize", Source::Flag));
            r
        }
        None => {
            sources.push(("resize", Source::Default));
            ResizeMode::ShorterSideThenCenterCrop
        }
    };
    let input = InputSpec {
        layout: "NCHW".into(),
        height,
        width,
        color,
        resize,
        pixel_range,
        mean,
        std,
        normalization: if stated { Normalization::Given } else { Normalization::Unset },
    };
    input.validate()?;
    if !(pixel_range[0].is_finite() && pixel_range[1].is_finite() && pixel_range[0] != pixel_range[1]) {
        return Err(invalid(format!("pixel_range {pixel_range:?}: two different finite numbers")));
    }

    // Logits.
    let (logits_output, softmax_skipped) = match (&opts.logits_output, &g.softmax) {
        (LogitsOutput::Named(n), _) => {
            sources.push(("logits_output", Source::Flag));
            (Some(n.clone()), None)
        }
        (LogitsOutput::Graph, _) => {
            sources.push(("logits_output", Source::Flag));
            (None, None)
        }
        (LogitsOutput::Auto, Some((op, input))) => {
            sources.push(("logits_output", Source::Model));
            (Some(input.clone()), Some(op.clone()))
        }
        (LogitsOutput::Auto, None) => {
            sources.push(("logits_output", Source::Model));
            (None, None)
        }
    };
    let loaded =
        Model::load_pinned(model, 1, None, Some([c, height as usize, width as usize]), logits_output.as_deref())?;
    let k = loaded.num_classes();
    let fixed_batch = loaded.fixed_batch();
    drop(loaded);
    let class_names = match (&opts.class_names, metadata(&g, "class_names")) {
        (Some(v), _) => {
            sources.push(("class_names", Source::Flag));
            v.clone()
        }
        (None, Some(text)) => {
            sources.push(("class_names", Source::Metadata));
            parse_class_names("metadata class_names", text)?
        }
        (None, None) => {
            sources.push(("class_names", Source::Default));
            (0..k).map(|i| i.to_string()).collect()
        }
    };
    if class_names.len() != k {
        return Err(invalid(format!("{} class names for a model with {k} outputs", class_names.len())));
    }

    // The folder.
    let target_model = out.join("model.onnx");
    let target_gate = out.join("gate.json");
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let same_file = std::fs::canonicalize(model).ok() == std::fs::canonicalize(&target_model).ok();
    if !opts.force && (target_gate.exists() || (target_model.exists() && !same_file)) {
        return Err(invalid(format!(
            "{} holds a bundle already (model.onnx or gate.json): give --force to replace it, or another --out",
            out.display()
        )));
    }
    if !same_file {
        std::fs::copy(model, &target_model).map_err(|e| Error::io(&target_model, e))?;
    }
    let gate_file = GateFile {
        format_version: FORMAT_VERSION,
        input,
        class_names,
        temperature: 1.0,
        gate: None,
        prediction_sets: None,
        provenance: Some(Provenance {
            model_sha256: crate::bundle::sha256_file(&target_model)?,
            data: String::new(),
            n: 0,
            created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            tool: format!("ebm-gate {} init", env!("CARGO_PKG_VERSION")),
            split: None,
        }),
        gradient: None,
        scores: None,
        logits_output,
    };
    gate_file.write(&target_gate)?;

    // The bundle as every command opens it, on a mid-gray frame.
    let check = (|| {
        let mut gate = crate::pipeline::EnergyGate::open(out, &crate::pipeline::Overrides::default())?;
        let spec = gate.input().clone();
        let img = image::RgbImage::from_pixel(spec.width, spec.height, image::Rgb([128, 128, 128]));
        let mut x = vec![0.0f32; spec.frame_len()];
        crate::frame::normalise_into(&img, &spec, &mut x)?;
        let r = gate.judge_inputs(&x, &["mid-gray".to_string()])?.remove(0);
        match (r.logits, r.scores) {
            (Some(l), Some(s)) if l.iter().all(|v| v.is_finite()) && s.energy.is_finite() => Ok((l, s.energy)),
            _ => Err(invalid(format!(
                "the bundle in {} loads, but a mid-gray frame gives no finite logits: {}",
                out.display(),
                r.error.unwrap_or_default()
            ))),
        }
    })();
    let (gray_logits, gray_energy) = match check {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(&target_gate);
            return Err(e);
        }
    };
    Ok(InitReport {
        bundle: out.into(),
        gate_file,
        sources,
        softmax_skipped,
        metadata: g.metadata,
        gray_logits,
        gray_energy,
        fixed_batch,
    })
}
