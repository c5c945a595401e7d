//! tract's matrix products on a rayon pool (the `multithread` feature): `set_threads(2)` gives
//! the onnxruntime logits of tests/data/golden_cifar10_airnet.json (models/tools/make_goldens.py)
//! as one thread does. Its own test binary, since the thread count is set for the whole process.
//!
//!     cargo test --features multithread --test multithread

use std::path::{Path, PathBuf};

use ebm_gate::pipeline::{EnergyGate, Overrides};
use ebm_gate::source::collect;

#[test]
fn two_threads_give_the_onnxruntime_logits() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("tests/data/golden_cifar10_airnet.json")).unwrap())
            .unwrap();
    let frames = golden["frames"].as_array().unwrap();
    let paths: Vec<PathBuf> = frames.iter().map(|f| root.join(f["path"].as_str().unwrap())).collect();
    assert!(ebm_gate::set_threads(0).is_err() && ebm_gate::set_threads(ebm_gate::MAX_THREADS + 1).is_err());
    ebm_gate::set_threads(2).unwrap();
    assert_eq!(ebm_gate::threads(), 2);
    for forward_batch in [None, Some(8)] {
        let overrides = Overrides { batch: Some(8), forward_batch, temperature: Some(1.0), ..Default::default() };
        let mut gate = EnergyGate::open(&root.join("models/cifar10-airnet"), &overrides).unwrap();
        let reports = gate.score_items(&collect(&paths, None).unwrap(), |_| {});
        for (f, r) in frames.iter().zip(&reports) {
            let logits = r.logits.as_ref().unwrap_or_else(|| panic!("{} not scored: {:?}", r.name, r.error));
            let want: Vec<f32> =
                f["ort_logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
            let d = logits.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(d < 1e-4, "{} ({forward_batch:?}): |ebm-gate - onnxruntime| {d}", r.name);
        }
    }
}
