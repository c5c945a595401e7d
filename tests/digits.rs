//! The tiny MCU reference model (models/digits-mlp) through the std runtime, against
//! onnxruntime on the firmware example's frames (tests/data/golden_digits_mlp.json, made by
//! models/tools/export_digits_rust.py).

use ebm_gate::Model;

use crate::common::{ebm_gate, f32s, read_json, root};

fn golden() -> serde_json::Value {
    read_json("tests/data/golden_digits_mlp.json")
}

fn frames() -> Vec<u8> {
    std::fs::read(root().join(golden()["frames"].as_str().unwrap())).unwrap()
}

#[test]
fn digits_logits_match_onnxruntime_in_one_tract_run() {
    let g = golden();
    let sha = ebm_gate::bundle::sha256_file(&root().join("models/digits-mlp/model.onnx")).unwrap();
    assert_eq!(g["model_sha256"].as_str().unwrap(), sha, "rerun models/tools/export_digits_rust.py");
    let gate = read_json("models/digits-mlp/gate.json");
    let (mean, std) =
        (gate["input"]["mean"][0].as_f64().unwrap() as f32, gate["input"]["std"][0].as_f64().unwrap() as f32);
    let bytes = frames();
    let n = bytes.len() / 64;
    assert_eq!(n, g["names"].as_array().unwrap().len());
    let x: Vec<f32> = bytes.iter().map(|&p| (p as f32 / 255.0 - mean) / std).collect();
    let mut model = Model::load(&root().join("models/digits-mlp/model.onnx"), n, None).unwrap();
    // An MLP has no spatial convolution: a batch stays one tract run.
    assert!(model.forward_batch() >= n, "forward batch {}", model.forward_batch());
    let logits = model.logits(&x, n).unwrap();
    let want: Vec<f32> = g["ort_logits"].as_array().unwrap().iter().flat_map(f32s).collect();
    let worst = logits.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst < 1e-5, "tract vs onnxruntime logits differ by {worst}");
}

/// `stream --format gray8` on the same bytes: the energies onnxruntime gives, at the bundle's
/// temperature, and the frames the firmware example prints.
#[test]
fn digits_stream_energies_match_onnxruntime() {
    let g = golden();
    let out = ebm_gate()
        .arg("stream")
        .arg(root().join("models/digits-mlp"))
        .args(["--format", "gray8", "--size", "8x8", "--input"])
        .arg(root().join(g["frames"].as_str().unwrap()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let energies: Vec<f64> =
        lines.iter().filter(|l| l["type"] == "frame").map(|l| l["energy"].as_f64().unwrap()).collect();
    let want: Vec<f64> = g["energy"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(energies.len(), want.len());
    for (i, (e, w)) in energies.iter().zip(&want).enumerate() {
        assert!((e - w).abs() < 1e-4, "frame {i}: energy {e} vs onnxruntime {w}");
    }
}
