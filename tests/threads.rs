//! Models on several threads (`Model::set_threads`): a batch's frames spread over threads, each with its
//! own plan state (any build), and, with the `multithread` feature, one frame's matrix products
//! on a rayon pool. Checked against onnxruntime's logits of tests/data/golden_cifar10_airnet.json
//! (models/tools/make_goldens.py), and frame by frame against one thread, bit for bit. Its own
//! test binary, since the `multithread` feature's pool is the whole process's.
//!
//!     cargo test --test threads [--features multithread]

use std::path::{Path, PathBuf};

use ebm_gate::core::energy::free_energy;
use ebm_gate::frame::load_frame;
use ebm_gate::langevin::{EnergyGradient, EnergyTarget, LangevinSettings};
use ebm_gate::pipeline::{EnergyGate, Overrides};
use ebm_gate::source::collect;
use ebm_gate::Model;
use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn golden() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(root().join("tests/data/golden_cifar10_airnet.json")).unwrap())
        .unwrap()
}

fn f32s(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect()
}

/// Logits of the golden frames through the bundle, in batches of 8, in tract runs of at most
/// `forward_batch` frames.
fn logits(paths: &[PathBuf], forward_batch: Option<usize>, threads: usize) -> Vec<Vec<f32>> {
    let overrides = Overrides {
        batch: Some(8),
        forward_batch,
        temperature: Some(1.0),
        threads: Some(threads),
        ..Default::default()
    };
    let mut gate = EnergyGate::open(&root().join("models/cifar10-airnet"), &overrides).unwrap();
    let reports = gate.score_items(&collect(paths, None).unwrap(), |_| {});
    reports.into_iter().map(|r| r.logits.unwrap_or_else(|| panic!("{} not scored: {:?}", r.name, r.error))).collect()
}

/// One test, since the `multithread` feature's pool is the process's: the classifier, then the
/// gradient graph.
#[test]
fn two_threads_give_the_onnxruntime_logits_and_the_one_thread_bits() {
    let golden = golden();
    let frames = golden["frames"].as_array().unwrap();
    let paths: Vec<PathBuf> = frames.iter().map(|f| root().join(f["path"].as_str().unwrap())).collect();
    assert!(paths.len() >= 16, "the golden frames fill at least two batches of 8");

    // Classifier: frame by frame (the default: each batch of 8 spread over 2 threads), in runs of
    // 3, 3 and 2 (two plans: the runs of 3 on one thread, the run of 2 on the other), and as one
    // tract run of 8 (on one thread, or on tract's pool with the multithread feature).
    let one_thread = logits(&paths, None, 1);
    for forward_batch in [None, Some(3), Some(8)] {
        let two = logits(&paths, forward_batch, 2);
        for ((f, got), one) in frames.iter().zip(&two).zip(&one_thread) {
            let want = f32s(&f["ort_logits"]);
            let d = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(d < 1e-4, "{} ({forward_batch:?}): |ebm-gate - onnxruntime| {d}", f["path"]);
            if forward_batch.is_none() {
                assert!(
                    got.iter().zip(one).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{}: a frame on another thread gave other bits",
                    f["path"]
                );
            }
        }
    }

    // A model with a fixed batch of 4 given 7 frames: two runs of its one plan, on two threads,
    // the second padded.
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("tests/data/tiny_fixed_batch4.json")).unwrap())
            .unwrap();
    let tiny = root().join("tests/data/tiny_fixed_batch4.onnx");
    let spec = EnergyGate::open(&tiny, &Overrides::default()).unwrap().input().clone();
    let tiny_frames: Vec<PathBuf> =
        doc["frames"].as_array().unwrap().iter().map(|p| root().join(p.as_str().unwrap())).collect();
    let order = [0usize, 1, 2, 2, 1, 0, 1];
    let x: Vec<f32> = order.iter().flat_map(|&i| load_frame(&tiny_frames[i], &spec).unwrap()).collect();
    let mut model = Model::load(&tiny, 4, None).unwrap();
    assert!(model.set_threads(0).is_err() && model.set_threads(ebm_gate::MAX_THREADS + 1).is_err());
    model.set_threads(2).unwrap();
    assert_eq!(model.threads(), 2);
    let got = model.logits(&x, order.len()).unwrap();
    for (j, &i) in order.iter().enumerate() {
        let want = f32s(&doc["ort_logits"][i]);
        let d = got[j * 5..(j + 1) * 5].iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(d < 1e-4, "fixed-batch model, frame {j}: |ebm-gate - onnxruntime| {d}");
    }

    // Gradient graph: the energies of 8 frames on 2 threads are the free energy of onnxruntime's
    // logits, and a seeded SGLD chain is the one-thread chain, bit for bit.
    let mut g = EnergyGradient::open(&root().join("models/cifar10-airnet"), None).unwrap();
    g.set_threads(2).unwrap();
    let n = 8;
    let mut x = Vec::new();
    for p in &paths[..n] {
        x.extend(load_frame(p, g.input()).unwrap());
    }
    let (mut e, mut grad) = (vec![0.0; n], vec![0.0; x.len()]);
    g.energy_and_grad(&x, n, EnergyTarget::Free, &mut e, &mut grad).unwrap();
    for (i, f) in frames[..n].iter().enumerate() {
        let want = free_energy(&f32s(&f["ort_logits"]), g.temperature()).unwrap();
        assert!((e[i] - want).abs() < 1e-4, "{}: energy {} vs onnxruntime's {want}", f["path"], e[i]);
    }
    let settings = LangevinSettings { step_size: 0.1, noise_scale: 0.05, n_steps: 3 };
    let chain = |g: &mut EnergyGradient| {
        let mut x = x.clone();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
        let r = g.refine(&mut x, n, EnergyTarget::Free, &settings, &mut rng).unwrap();
        (x, r.trace)
    };
    let (two_x, two_trace) = chain(&mut g);
    g.set_threads(1).unwrap();
    let (one_x, one_trace) = chain(&mut g);
    assert!(two_x.iter().zip(&one_x).all(|(a, b)| a.to_bits() == b.to_bits()), "chains on 1 and 2 threads differ");
    assert_eq!(two_trace, one_trace);
}
