//! `init`: bundles for models made elsewhere (a third-party classifier checked against
//! onnxruntime, ONNX metadata, an unset normalisation), and gate.json against its JSON Schema.

use std::path::Path;
use std::process::Command;

use crate::common::{bin, f32s, read_json, root};

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin()).args(args).current_dir(root()).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn gate_json(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("gate.json")).unwrap()).unwrap()
}

/// Checks `doc` against `docs/gate.schema.json`; the errors as text.
pub fn schema_errors(doc: &serde_json::Value) -> Vec<String> {
    let schema = read_json("docs/gate.schema.json");
    let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");
    validator.iter_errors(doc).map(|e| format!("{e} at {}", e.instance_path())).collect()
}

pub fn assert_valid_gate_json(dir: &Path) {
    let doc = gate_json(dir);
    let errors = schema_errors(&doc);
    assert!(errors.is_empty(), "{}/gate.json against docs/gate.schema.json: {errors:?}", dir.display());
}

const PPOCR: &str = "tests/data/third_party/ppocr_cls.onnx";
const PPOCR_FLAGS: [&str; 12] = [
    "--size",
    "192x48",
    "--color",
    "bgr",
    "--mean",
    "0.5,0.5,0.5",
    "--std",
    "0.5,0.5,0.5",
    "--classes",
    "0,180",
    "--resize",
    "none",
];

fn score_logits(bundle: &Path, frames: &str) -> Vec<(String, String, f64, Vec<f32>)> {
    let (code, stdout, stderr) = run(&["score", bundle.to_str().unwrap(), frames, "--json", "--logits"]);
    assert_eq!(code, 0, "{stderr}");
    stdout
        .lines()
        .map(|l| {
            let r: serde_json::Value = serde_json::from_str(l).unwrap();
            let name = Path::new(r["path"].as_str().unwrap()).file_name().unwrap().to_string_lossy().into_owned();
            (name, r["class"].as_str().unwrap().to_string(), r["probability"].as_f64().unwrap(), f32s(&r["logits"]))
        })
        .collect()
}

#[test]
fn init_makes_a_bundle_for_a_third_party_model_whose_logits_match_onnxruntime() {
    // PaddleOCR's text-direction classifier: BGR, (x/255 - 0.5)/0.5, dynamic 48x192, a final Softmax.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cls");
    let mut args = vec!["init", PPOCR, "--out", out.to_str().unwrap()];
    args.extend_from_slice(&PPOCR_FLAGS);
    let (code, stdout, stderr) = run(&args);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("ends in Softmax"), "{stdout}");
    let golden = read_json("tests/data/third_party/ppocr_cls.json");
    let g = gate_json(&out);
    assert_eq!(g["logits_output"], golden["logits_output"]);
    assert_eq!((g["input"]["color"].as_str(), g["input"]["width"].as_u64()), (Some("bgr"), Some(192)));
    assert!(g["input"].get("normalization").is_none(), "stated by flags: {g}");
    assert_valid_gate_json(&out);
    assert!(out.join("model.onnx").is_file());

    let rows = score_logits(&out, "tests/data/third_party/frames");
    let want = golden["frames"].as_array().unwrap();
    assert_eq!(rows.len(), want.len());
    for ((name, class, prob, logits), w) in rows.iter().zip(want) {
        assert_eq!(name, w["frame"].as_str().unwrap());
        let ort = f32s(&w["ort_logits"]);
        for (a, b) in logits.iter().zip(&ort) {
            assert!((a - b).abs() < 1e-4, "{name}: {logits:?} vs onnxruntime's {ort:?}");
        }
        // The model's own Softmax output is softmax of the logits read: T = 1 probabilities.
        let probs = f32s(&w["ort_probabilities"]);
        let k = if probs[0] >= probs[1] { 0 } else { 1 };
        assert_eq!(class, ["0", "180"][k]);
        assert!((prob - probs[k] as f64).abs() < 1e-5, "{name}: {prob} vs {}", probs[k]);
    }
    // Upside-down text: the two strongest crops come out as 180.
    assert_eq!(rows.iter().filter(|r| r.0.ends_with("_180.png") && r.1 == "180").count(), 2);

    // The same model read as RGB gives other logits (the channel order matters), and
    // `--logits-output graph` reads the probabilities instead.
    let rgb = dir.path().join("rgb");
    let mut args: Vec<&str> = vec!["init", PPOCR, "--out", rgb.to_str().unwrap(), "--logits-output", "graph"];
    args.extend(PPOCR_FLAGS.iter().map(|a| if *a == "bgr" { "rgb" } else { a }));
    let (code, _, stderr) = run(&args);
    assert_eq!(code, 0, "{stderr}");
    assert!(gate_json(&rgb).get("logits_output").is_none());
    let rows = score_logits(&rgb, "tests/data/third_party/frames");
    let moved = rows.iter().zip(want).filter(|((_, _, _, l), w)| {
        let p = f32s(&w["ort_probabilities"]);
        (l[0] - p[0]).abs() > 1e-3
    });
    assert!(moved.count() >= 4, "RGB instead of BGR should move the probabilities");
}

#[test]
fn init_reads_onnx_metadata_and_flags_override_it() {
    // tiny_metadata.onnx: Bgr8, NominalRange_0_255, mean/std in BGR order, class names.
    let dir = tempfile::tempdir().unwrap();
    let meta = dir.path().join("meta");
    let (code, stdout, stderr) = run(&["init", "tests/data/tiny_metadata.onnx", "--out", meta.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let g = gate_json(&meta);
    assert_eq!(g["input"]["color"], "bgr");
    assert_eq!(g["input"]["pixel_range"], serde_json::json!([0.0, 255.0]));
    assert_eq!(f32s(&g["input"]["mean"]), vec![104.0, 117.0, 123.0]);
    assert_eq!(g["class_names"], serde_json::json!(["ant", "bee", "cat", "dog", "eel"]));
    assert!(stdout.contains("onnx metadata"), "{stdout}");
    assert_valid_gate_json(&meta);

    // Flags win: plain RGB in [0, 1] is what the golden's onnxruntime logits were computed on.
    let flags = dir.path().join("flags");
    let (code, _, stderr) = run(&[
        "init",
        "tests/data/tiny_metadata.onnx",
        "--out",
        flags.to_str().unwrap(),
        "--color",
        "rgb",
        "--pixel-range",
        "0,1",
        "--mean",
        "0",
        "--std",
        "1",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let frames = dir.path().join("frames");
    std::fs::create_dir(&frames).unwrap();
    for i in 0..3 {
        let name = format!("{i:02}.png");
        let src = std::fs::read_dir(root().join("tests/data/frames"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(&format!("{i:02}")))
            .unwrap();
        std::fs::copy(src, frames.join(name)).unwrap();
    }
    let rows = score_logits(&flags, frames.to_str().unwrap());
    let golden = read_json("tests/data/tiny_fixed_batch4.json");
    let want = golden["ort_logits"].as_array().unwrap();
    for ((_, _, _, logits), w) in rows.iter().zip(want) {
        for (a, b) in logits.iter().zip(f32s(w)) {
            assert!((a - b).abs() < 1e-4, "{logits:?} vs onnxruntime's {w}");
        }
    }
}

#[test]
fn a_bundle_without_normalisation_is_marked_unset_and_calibrate_warns() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bare");
    let (code, _, stderr) = run(&["init", "tests/data/tiny_fixed_batch4.onnx", "--out", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("WARNING") && stderr.contains("--mean"), "{stderr}");
    assert_eq!(gate_json(&out)["input"]["normalization"], "unset");
    assert_valid_gate_json(&out);
    let (code, _, stderr) =
        run(&["calibrate", out.to_str().unwrap(), "--id", "tests/data/frames", "--holdout", "0", "--alpha", "0.1"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("WARNING: the normalisation") && stderr.contains("never set"), "{stderr}");
    // Calibrating keeps the mark (and the file stays valid), and score says it too; stating it
    // removes the warning.
    assert_eq!(gate_json(&out)["input"]["normalization"], "unset");
    assert_valid_gate_json(&out);
    let (_, _, stderr) = run(&["score", out.to_str().unwrap(), "tests/data/frames"]);
    assert!(stderr.contains("score: WARNING: the normalisation"), "{stderr}");
    let stated = dir.path().join("stated");
    let s = stated.to_str().unwrap();
    let (code, _, stderr) =
        run(&["init", "tests/data/tiny_fixed_batch4.onnx", "--out", s, "--mean", "0", "--std", "1"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("WARNING"), "{stderr}");
    let (code, _, stderr) = run(&["calibrate", s, "--id", "tests/data/frames", "--holdout", "0", "--alpha", "0.1"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("WARNING"), "{stderr}");
    let (_, _, stderr) = run(&["score", s, "tests/data/frames"]);
    assert!(!stderr.contains("WARNING"), "{stderr}");
    // A bare .onnx calibrated in place warns too.
    let bare = dir.path().join("m");
    std::fs::create_dir(&bare).unwrap();
    std::fs::copy(root().join("tests/data/tiny_fixed_batch4.onnx"), bare.join("model.onnx")).unwrap();
    let m = bare.join("model.onnx");
    let (code, _, stderr) =
        run(&["calibrate", m.to_str().unwrap(), "--id", "tests/data/frames", "--holdout", "0", "--alpha", "0.1"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("WARNING: the normalisation"), "{stderr}");
}

#[test]
fn init_refuses_contradictions_and_an_existing_bundle_with_clear_messages() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("b");
    let o = out.to_str().unwrap();
    for (args, needle) in [
        (vec!["init", PPOCR, "--out", o], "--size"),
        (vec!["init", "tests/data/tiny_fixed_batch4.onnx", "--out", o, "--mean", "1,2"], "mean: 2 values"),
        (vec!["init", "tests/data/tiny_fixed_batch4.onnx", "--out", o, "--classes", "a,b"], "2 class names"),
        (vec!["init", "tests/data/tiny_fixed_batch4.onnx", "--out", o, "--color", "gray"], "channels"),
        (vec!["init", "tests/data/tiny_fixed_batch4.onnx", "--out", o, "--size", "64x64"], "takes 32x32"),
        (vec!["init", "tests/data/tiny_fixed_batch4.onnx", "--out", o, "--std", "0"], "std"),
        (vec!["init", "tests/data/tiny_fixed_batch4.onnx", "--out", o, "--logits-output", "nope"], "nope"),
        (vec!["init", "tests/data/unsupported_op.onnx", "--out", o], "FancyPool"),
        (vec!["init", "tests/data/nothing.onnx", "--out", o], "nothing.onnx"),
    ] {
        let (code, _, stderr) = run(&args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!out.join("gate.json").exists(), "{args:?} left a gate.json");
    }
    let (code, _, stderr) = run(&["init", "tests/data/tiny_fixed_batch4.onnx", "--out", o]);
    assert_eq!(code, 0, "{stderr}");
    let (code, _, stderr) = run(&["init", "tests/data/tiny_fixed_batch4.onnx", "--out", o]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--force"), "{stderr}");
    let (code, _, stderr) = run(&["init", "tests/data/tiny_fixed_batch4.onnx", "--out", o, "--force"]);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn committed_gate_files_match_the_schema_and_the_schema_refuses_mistakes() {
    for dir in ["models/cifar10-airnet", "models/digits-mlp"] {
        assert_valid_gate_json(&root().join(dir));
    }
    let good = read_json("models/digits-mlp/gate.json");
    type Breaks = fn(&mut serde_json::Value);
    let broken: [(&str, Breaks); 6] = [
        ("a misspelt key", |g| g["input"]["colour"] = "rgb".into()),
        ("an unknown colour", |g| g["input"]["color"] = "rgba".into()),
        ("a zero std", |g| g["input"]["std"][0] = 0.into()),
        ("no class names", |g| g["class_names"] = serde_json::json!([])),
        ("alpha 1", |g| g["gate"]["alpha"] = 1.into()),
        ("another format version", |g| g["format_version"] = 2.into()),
    ];
    for (what, f) in broken {
        let mut g = good.clone();
        f(&mut g);
        assert!(!schema_errors(&g).is_empty(), "{what} passed the schema");
    }
}
