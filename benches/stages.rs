//! Each stage of the gate on the reference bundle, timed by criterion with throughput in frames,
//! so a change's effect shows up as a criterion comparison (`cargo bench --bench stages`, then
//! again after the change):
//!
//! - `decode`: the shipped sample `chelsea.png` (451 x 300 PNG) from bytes in memory to RGB;
//! - `preprocess`: that RGB frame resized, cropped and normalised to `[3, 32, 32]`;
//! - `forward/N`: tract on N frames (N = 1, 32);
//! - `gate`: energy, scores, p-value and verdict from one frame's logits.
//!
//! `ebm-gate bench` reports the same stages as percentiles on any bundle; `benches/langevin.rs`
//! times the SGLD step.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ebm_gate::frame::{decode_bytes, preprocess_into};
use ebm_gate::pipeline::{EnergyGate, Overrides};

fn bench(c: &mut Criterion) {
    let bundle = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/cifar10-airnet");
    let path = bundle.join("samples/chelsea.png");
    let bytes = std::fs::read(&path).expect("sample frame");
    let mut gate = EnergyGate::open(&bundle, &Overrides { batch: Some(1), ..Overrides::default() }).expect("bundle");
    let spec = gate.input().clone();
    let img = decode_bytes(&bytes, &path).expect("decode");
    let mut x = vec![0.0f32; spec.frame_len()];
    preprocess_into(&img, &spec, &mut x).expect("preprocess");

    let mut group = c.benchmark_group("stages");
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode", |b| b.iter(|| decode_bytes(&bytes, &path).expect("decode")));
    group.bench_function("preprocess", |b| b.iter(|| preprocess_into(&img, &spec, &mut x).expect("preprocess")));
    let logits = gate.model_mut().logits(&x, 1).expect("forward");
    group.bench_function("gate", |b| b.iter(|| gate.judge_logits("chelsea", None, &logits)));
    group.sample_size(20);
    for n in [1usize, 32] {
        let xs: Vec<f32> = x.iter().copied().cycle().take(n * x.len()).collect();
        gate.model_mut().prepare(n).expect("plan");
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("forward", n), &n, |b, &n| {
            b.iter(|| gate.model_mut().logits(&xs, n).expect("forward"))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
