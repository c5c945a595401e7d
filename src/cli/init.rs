//! `init`: a bundle for a classifier made elsewhere.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use ebm_gate::bundle::{Color, Normalization};
use ebm_gate::init::{init, parse_class_names, parse_numbers, read_class_names, InitOptions, LogitsOutput, Source};

use super::stream::CropArg;
use super::Globals;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ColorArg {
    Rgb,
    Bgr,
    Gray,
}

/// Arguments of `ebm-gate init`.
#[derive(Args)]
pub struct InitArgs {
    /// The ONNX classifier: input [N, C, H, W] float, output [N, K] logits (or probabilities
    /// from a final Softmax, whose input is then read)
    pub model: PathBuf,
    /// The bundle folder to create (model.onnx is copied there, gate.json written)
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Input size the model was trained on, WIDTHxHEIGHT (needed when the model leaves it dynamic)
    #[arg(long, value_name = "WxH", value_parser = super::stream::parse_size)]
    pub size: Option<(u32, u32)>,
    /// Channel order the model takes [default: ONNX metadata, else rgb, or gray for 1 channel]
    #[arg(long, value_enum)]
    pub color: Option<ColorArg>,
    /// The values 8-bit 0 and 255 map to before mean/std: 0,1 or 0,255 or -1,1 [default: ONNX
    /// metadata, else 0,1]
    #[arg(long, value_name = "LO,HI", allow_hyphen_values = true)]
    pub pixel_range: Option<String>,
    /// Per-channel mean subtracted after the pixel range, in the model's channel order, e.g.
    /// 0.485,0.456,0.406 (ImageNet) [default: ONNX metadata, else 0]
    #[arg(long, value_name = "A,B,C", allow_hyphen_values = true)]
    pub mean: Option<String>,
    /// Per-channel standard deviation divided by, e.g. 0.229,0.224,0.225 (ImageNet) [default:
    /// ONNX metadata, else 1]
    #[arg(long, value_name = "A,B,C")]
    pub std: Option<String>,
    /// Class names: a file (one per line, or a JSON array) or a comma-separated list [default:
    /// ONNX metadata, else 0..K-1]
    #[arg(long, value_name = "FILE|A,B,C")]
    pub classes: Option<String>,
    /// How frames of another size are brought to the model's [default: center]
    #[arg(long, value_enum)]
    pub resize: Option<CropArg>,
    /// The tensor that holds the logits: auto (the graph's output, or the input of a final
    /// Softmax), graph (the graph's output), or a tensor name
    #[arg(long, value_name = "auto|graph|NAME", default_value = "auto")]
    pub logits_output: String,
    /// Replace a bundle already in --out
    #[arg(long)]
    pub force: bool,
}

/// `ebm-gate init`.
pub fn run(a: &InitArgs, _g: &Globals) -> Result<ExitCode> {
    let numbers = |flag: &str, v: &Option<String>| -> Result<Option<Vec<f32>>> {
        v.as_deref().map(|s| parse_numbers(flag, s)).transpose().map_err(Into::into)
    };
    let pixel_range = match numbers("--pixel-range", &a.pixel_range)? {
        None => None,
        Some(v) if v.len() == 2 => Some([v[0], v[1]]),
        Some(v) => anyhow::bail!("--pixel-range: two numbers LO,HI, got {}", v.len()),
    };
    let class_names = match a.classes.as_deref() {
        None => None,
        Some(s) if std::path::Path::new(s).is_file() => Some(read_class_names(s.as_ref())?),
        // A single word that looks like a path (a folder, an extension) is a file that is not there.
        Some(s) if !s.contains(',') && (s.contains('/') || std::path::Path::new(s).extension().is_some()) => {
            anyhow::bail!("--classes {s}: no such file (give a file of names, one per line, or a comma-separated list)")
        }
        Some(s) => Some(parse_class_names("--classes", s)?),
    };
    let opts = InitOptions {
        size: a.size,
        color: a.color.map(|c| match c {
            ColorArg::Rgb => Color::Rgb,
            ColorArg::Bgr => Color::Bgr,
            ColorArg::Gray => Color::Gray,
        }),
        pixel_range,
        mean: numbers("--mean", &a.mean)?,
        std: numbers("--std", &a.std)?,
        class_names,
        resize: a.resize.map(Into::into),
        logits_output: match a.logits_output.as_str() {
            "auto" => LogitsOutput::Auto,
            "graph" => LogitsOutput::Graph,
            name => LogitsOutput::Named(name.to_string()),
        },
        force: a.force,
    };
    let r = init(&a.model, &a.out, &opts).with_context(|| format!("init {}", a.model.display()))?;
    let g = &r.gate_file;
    let src = |name: &str| r.sources.iter().find(|(n, _)| *n == name).map_or("default", |(_, s)| s.as_str());
    let i = &g.input;
    println!("init {} -> {}", a.model.display(), r.bundle.display());
    println!("  {:<14} {:<40} from", "setting", "value");
    let k = g.class_names.len();
    let shown_names =
        if k <= 6 { g.class_names.join(", ") } else { format!("{}, ... ({k})", g.class_names[..4].join(", ")) };
    let rows = [
        (
            "size",
            format!("{}x{}: {} wide, {} high, {} channels", i.width, i.height, i.width, i.height, i.color.channels()),
        ),
        ("color", format!("{:?}", i.color).to_lowercase()),
        ("pixel_range", format!("{:?}", i.pixel_range)),
        ("mean", format!("{:?}", i.mean)),
        ("std", format!("{:?}", i.std)),
        ("resize", serde_json::to_value(i.resize).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()),
        ("class_names", shown_names),
        ("logits_output", g.logits_output.clone().unwrap_or_else(|| "the graph's output".into())),
    ];
    for (name, value) in rows {
        println!("  {name:<14} {value:<40} {}", src(name));
    }
    if let Some(op) = &r.softmax_skipped {
        println!(
            "  the graph ends in {op}: its outputs are probabilities, whose logsumexp is no energy; the logits \
             are read at its input, {:?}",
            g.logits_output.as_deref().unwrap_or("")
        );
    }
    if let Some(n) = r.fixed_batch {
        println!(
            "  the graph runs {n} frame(s) per pass (a fixed batch, or one its shapes need); batches are run in pieces"
        );
    }
    println!(
        "  checked: the bundle loads, and a mid-gray frame gives {k} finite logits (free energy {:.4} at T = 1)",
        r.gray_energy
    );
    if i.normalization == Normalization::Unset {
        eprintln!(
            "WARNING: no --pixel-range, --mean or --std and no normalisation in the model's metadata: frames will be fed \
             in [0, 1] with mean 0 and std 1. If the model was trained otherwise (ImageNet's mean/std, 0-255), run \
             init again with those flags; gate.json records the normalisation as unset, and calibrate warns."
        );
    }
    if i.color.channels() == 3 && src("color") == Source::Default.as_str() {
        eprintln!(
            "note: the channel order was assumed RGB (no --color, no metadata): a model trained on OpenCV's BGR \
             frames needs --color bgr"
        );
    }
    if Source::Default.as_str() == src("class_names") {
        eprintln!("note: classes are named 0..{}; --classes names them", k - 1);
    }
    println!("next: ebm-gate calibrate {} --id FOLDER_OF_IN_DISTRIBUTION_FRAMES", r.bundle.display());
    Ok(ExitCode::SUCCESS)
}
