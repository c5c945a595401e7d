//! Bad bundles and bare models: clear errors that name the file, or sensible defaults.

use std::path::Path;

use ebm_gate::pipeline::{EnergyGate, Overrides};
use ebm_gate::Error;

use crate::common::bundle;

fn copy_bundle(to: &Path) {
    for f in ["model.onnx", "gate.json"] {
        std::fs::copy(bundle().join(f), to.join(f)).unwrap();
    }
}

fn edit_gate(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("gate.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&p, v.to_string()).unwrap();
}

fn open_err(path: &Path) -> String {
    match EnergyGate::open(path, &Overrides::default()) {
        Ok(_) => panic!("{} opened but should not", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn model_hash_mismatch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    copy_bundle(dir.path());
    edit_gate(dir.path(), |v| v["provenance"]["model_sha256"] = "00".repeat(32).into());
    let msg = open_err(dir.path());
    assert!(msg.contains("gate.json") && msg.contains("sha256") && msg.contains(&"00".repeat(32)), "{msg}");
}

#[test]
fn class_count_mismatch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    copy_bundle(dir.path());
    edit_gate(dir.path(), |v| {
        v["class_names"].as_array_mut().unwrap().pop();
    });
    let msg = open_err(dir.path());
    assert!(msg.contains("names 9 classes") && msg.contains("10 logits"), "{msg}");
}

#[test]
fn input_size_mismatch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    copy_bundle(dir.path());
    edit_gate(dir.path(), |v| v["input"]["height"] = 64.into());
    let msg = open_err(dir.path());
    assert!(msg.contains("[3, 64, 32]") && msg.contains("[N, 3, 32, 32]"), "{msg}");
}

#[test]
fn unknown_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    copy_bundle(dir.path());
    edit_gate(dir.path(), |v| v["format_version"] = 99.into());
    let msg = open_err(dir.path());
    assert!(msg.contains("format_version 99"), "{msg}");
}

#[test]
fn not_an_onnx_file_is_a_model_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("broken.onnx");
    std::fs::write(&p, b"definitely not protobuf").unwrap();
    let err = EnergyGate::open(&p, &Overrides::default()).unwrap_err();
    assert!(matches!(err, Error::Model { .. }), "{err}");
    assert!(err.to_string().contains("broken.onnx"), "{err}");
}

#[test]
fn directory_without_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let msg = open_err(dir.path());
    assert!(msg.contains("model.onnx"), "{msg}");
}

#[test]
fn a_gate_json_given_as_the_model_names_the_folder_to_give() {
    let msg = open_err(&bundle().join("gate.json"));
    assert!(msg.contains("is a bundle's settings, not a model") && msg.contains("cifar10-airnet"), "{msg}");
}

#[test]
fn an_alpha_out_of_range_is_refused_as_given_not_blamed_on_gate_json() {
    for alpha in [0.0, 1.5, f32::NAN] {
        let overrides = Overrides { alpha: Some(alpha), ..Overrides::default() };
        let msg = EnergyGate::open(&bundle(), &overrides).unwrap_err().to_string();
        assert!(msg.starts_with("invalid setting: alpha must be in (0, 1), got"), "{msg}");
    }
}

#[test]
fn bare_onnx_uses_defaults_from_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("classifier.onnx");
    std::fs::copy(bundle().join("model.onnx"), &p).unwrap();
    let gate = EnergyGate::open(&p, &Overrides::default()).unwrap();
    assert_eq!(gate.class_names(), (0..10).map(|i| i.to_string()).collect::<Vec<_>>());
    assert_eq!((gate.input().height, gate.input().width), (32, 32));
    assert_eq!(gate.settings().threshold, None);
    assert_eq!(gate.settings().temperature, 1.0);
}

#[test]
fn fixed_batch_model_runs_short_batches_padded() {
    // tests/data/tiny_fixed_batch4.onnx takes exactly [4, 3, 32, 32]; three frames are padded.
    let doc = crate::common::read_json("tests/data/tiny_fixed_batch4.json");
    let root = crate::common::root();
    let model = root.join("tests/data/tiny_fixed_batch4.onnx");
    let mut gate = EnergyGate::open(&model, &Overrides { batch: Some(32), ..Default::default() }).unwrap();
    assert_eq!(gate.batch(), 4);
    let paths: Vec<std::path::PathBuf> =
        doc["frames"].as_array().unwrap().iter().map(|p| root.join(p.as_str().unwrap())).collect();
    let items = ebm_gate::source::collect(&paths, None).unwrap();
    let reports = gate.score_items(&items, |_| {});
    assert_eq!(reports.len(), 3);
    for (r, want) in reports.iter().zip(doc["ort_logits"].as_array().unwrap()) {
        let want = crate::common::f32s(want);
        let got = r.logits.as_ref().unwrap();
        assert_eq!(got.len(), 5);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-4, "{}: {got:?} vs onnxruntime {want:?}", r.name);
        }
    }
}

/// A gate.json for the tiny models: five classes, pixels in [0, 1], no normalisation, no gate.
fn tiny_gate(dir: &Path) {
    let mut g = crate::common::read_json("models/cifar10-airnet/gate.json");
    let o = g.as_object_mut().unwrap();
    for key in ["gate", "prediction_sets", "provenance", "gradient"] {
        o.remove(key);
    }
    o.insert("class_names".into(), serde_json::json!(["a", "b", "c", "d", "e"]));
    o.insert("temperature".into(), serde_json::json!(1.0));
    let input = o.get_mut("input").unwrap().as_object_mut().unwrap();
    input.insert("mean".into(), serde_json::json!([0.0, 0.0, 0.0]));
    input.insert("std".into(), serde_json::json!([1.0, 1.0, 1.0]));
    input.insert("pixel_range".into(), serde_json::json!([0.0, 1.0]));
    std::fs::write(dir.join("gate.json"), serde_json::to_string_pretty(&g).unwrap()).unwrap();
}

/// Scores the tiny models' three frames and checks the logits against onnxruntime's.
fn check_tiny(model: &Path, key: &str) {
    let doc = crate::common::read_json("tests/data/tiny_fixed_batch4.json");
    let root = crate::common::root();
    let mut gate = EnergyGate::open(model, &Overrides::default()).unwrap();
    let paths: Vec<std::path::PathBuf> =
        doc["frames"].as_array().unwrap().iter().map(|p| root.join(p.as_str().unwrap())).collect();
    let reports = gate.score_items(&ebm_gate::source::collect(&paths, None).unwrap(), |_| {});
    let want = doc[key].as_array().unwrap();
    assert_eq!((reports.len(), want.len()), (3, 3));
    for (r, want) in reports.iter().zip(want) {
        let (got, want) = (r.logits.as_ref().unwrap_or_else(|| panic!("{r:?}")), crate::common::f32s(want));
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-4, "{}: {got:?} vs onnxruntime {want:?}", r.name);
        }
    }
}

#[test]
fn symbolic_height_and_width_are_pinned_from_gate_json() {
    let src = crate::common::root().join("tests/data/tiny_symbolic_hw.onnx");
    // Bare, nothing says what H and W are: refused, saying so.
    let msg = open_err(&src);
    assert!(msg.contains("symbolic") && msg.contains("gate.json"), "{msg}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(&src, dir.path().join("model.onnx")).unwrap();
    tiny_gate(dir.path());
    check_tiny(dir.path(), "symbolic_hw_ort_logits");
}

#[test]
fn an_anonymous_batch_dimension_becomes_a_symbol() {
    check_tiny(&crate::common::root().join("tests/data/tiny_anonymous_batch.onnx"), "anonymous_batch_ort_logits");
}

#[test]
fn an_unsupported_operator_is_named_with_its_node_and_opset() {
    let msg = open_err(&crate::common::root().join("tests/data/unsupported_op.onnx"));
    assert!(msg.contains("unsupported_op.onnx"), "{msg}");
    assert!(msg.contains("FancyPool") && msg.contains("fancy_pool_1"), "{msg}");
    assert!(msg.contains("com.example 1") && msg.contains("ai.onnx 17"), "{msg}");
}

#[test]
fn an_oversized_gate_json_is_refused_without_being_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    copy_bundle(dir.path());
    let f = std::fs::File::create(dir.path().join("gate.json")).unwrap();
    f.set_len(ebm_gate::bundle::MAX_GATE_JSON_BYTES + 10).unwrap(); // sparse: no disk used
    let msg = open_err(dir.path());
    assert!(msg.contains("gate.json: larger than 64 MiB: not a gate.json"), "{msg}");
}
