//! One SGLD refinement step (energy + gradient through tract, then the update) on the reference
//! model at batch 1 and 16, beside one forward pass (logits) at the same batch, so that the ratio
//! of a gradient step to a forward pass can be read off. Throughput is in frames.
//!
//!     cargo bench --bench langevin
//!
//! Frames: the shipped sample photo `chelsea.png`, repeated to the batch size.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ebm_gate::frame::load_frame;
use ebm_gate::langevin::{sgld_step, EnergyGradient, EnergyTarget, LangevinSettings};
use ebm_gate::Model;
use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

fn bench(c: &mut Criterion) {
    let bundle = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/cifar10-airnet");
    let mut g = EnergyGradient::open(&bundle, None).expect("the reference bundle's gradient graph");
    let frame = load_frame(&bundle.join("samples/chelsea.png"), g.input()).expect("sample frame");
    let d = frame.len();
    let settings = LangevinSettings { step_size: 0.2, noise_scale: 0.005, n_steps: 1 };
    let (lo, hi) = (g.bounds().lo.to_vec(), g.bounds().hi.to_vec());
    let mut group = c.benchmark_group("langevin");
    group.sample_size(20);
    for n in [1usize, 16] {
        let x0: Vec<f32> = frame.iter().copied().cycle().take(n * d).collect();
        group.throughput(Throughput::Elements(n as u64));
        g.prepare(n).expect("plan");
        group.bench_with_input(BenchmarkId::new("sgld_step", n), &n, |b, &n| {
            let mut x = x0.clone();
            let (mut e, mut grad) = (vec![0.0; n], vec![0.0; n * d]);
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(0);
            let bounds = ebm_gate::langevin::Bounds { lo: &lo, hi: &hi };
            b.iter(|| {
                g.energy_and_grad(&x, n, EnergyTarget::Free, &mut e, &mut grad).expect("gradient");
                for f in 0..n {
                    let r = f * d..(f + 1) * d;
                    sgld_step(&mut x[r.clone()], &grad[r], &settings, &bounds, &mut rng).expect("step");
                }
            });
        });
        let mut model = Model::load(&bundle.join("model.onnx"), n, None).expect("model");
        group.bench_with_input(BenchmarkId::new("forward", n), &n, |b, &n| {
            b.iter(|| model.logits(&x0, n).expect("forward"));
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
