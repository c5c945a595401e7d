//! Langevin refinement: the energy-gradient graph against finite differences and against the
//! classifier, SGLD on real frames, determinism, the replay buffer, refusals.

use ebm_gate::core::energy::free_energy;
use ebm_gate::frame::load_frame;
use ebm_gate::langevin::{EnergyGradient, EnergyTarget, LangevinSettings, ReplayBuffer};
use rand_core::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use rand_xoshiro::Xoshiro256PlusPlus;

use crate::common::{bundle, root};

/// Four of the shipped sample photos, preprocessed for the bundle: `[4, 3, 32, 32]`.
fn sample_frames(g: &EnergyGradient) -> (Vec<String>, Vec<f32>) {
    frames(g, &["astronaut.png", "chelsea.png", "coffee.png", "horse.png"])
}

fn frames(g: &EnergyGradient, list: &[&str]) -> (Vec<String>, Vec<f32>) {
    let mut names = Vec::new();
    let mut x = Vec::new();
    for &name in list {
        let p = bundle().join("samples").join(name);
        x.extend(load_frame(&p, g.input()).unwrap());
        names.push(name.to_string());
    }
    (names, x)
}

fn energies(g: &mut EnergyGradient, x: &[f32], n: usize, target: EnergyTarget) -> (Vec<f32>, Vec<f32>) {
    let mut e = vec![0.0; n];
    let mut grad = vec![0.0; x.len()];
    g.energy_and_grad(x, n, target, &mut e, &mut grad).unwrap();
    (e, grad)
}

/// The gradient graph's energy is the classifier's: `-T logsumexp(f / T)` of onnxruntime's
/// logits of `model.onnx` (the golden, on four committed 32x32 frames, so no resize is
/// involved) at the bundle's temperature, and `-f_y` for the class-conditional energy.
///
/// Both ways a batch can run: frame by frame (the default for this convolutional model) and
/// as one tract run of 4 frames; the gradients of the two agree.
#[test]
fn gradient_graph_energy_is_the_classifier_energy() {
    let n = 4;
    let golden = crate::common::read_json("tests/data/golden_cifar10_airnet.json");
    let golden = &golden["frames"].as_array().unwrap()[..n];
    let logits: Vec<f32> = golden.iter().flat_map(|f| crate::common::f32s(&f["ort_logits"])).collect();
    let mut grads = Vec::new();
    for forward_batch in [None, Some(n)] {
        let mut g = EnergyGradient::open(&bundle(), None).unwrap();
        g.set_forward_batch(forward_batch).unwrap();
        if forward_batch.is_none() {
            assert_eq!(g.forward_batch(), 1, "a convolutional graph runs frame by frame by default");
        }
        let x: Vec<f32> = golden
            .iter()
            .flat_map(|f| load_frame(&root().join(f["path"].as_str().unwrap()), g.input()).unwrap())
            .collect();
        let (e, grad) = energies(&mut g, &x, n, EnergyTarget::Free);
        for i in 0..n {
            let z = &logits[i * 10..(i + 1) * 10];
            let want = free_energy(z, g.temperature()).unwrap();
            assert!((e[i] - want).abs() < 1e-4, "{forward_batch:?}, frame {i}: graph {} vs onnxruntime {want}", e[i]);
        }
        grads.push(grad);
        for y in [0usize, 7] {
            let (e, _) = energies(&mut g, &x, n, EnergyTarget::Class(y));
            for i in 0..n {
                let want = -logits[i * 10 + y];
                assert!((e[i] - want).abs() < 1e-4, "frame {i}, class {y}: graph {} vs -logit {want}", e[i]);
            }
        }
    }
    let worst = grads[0].iter().zip(&grads[1]).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst < 1e-5, "gradients frame by frame vs one run of {n} differ by {worst}");
}

/// dE/dx from tract against central finite differences of the graph's own energy, on the sample
/// photos, for the free energy and a class-conditional one: along the gradient's own direction,
/// two directions half gradient and half random, and the 5 coordinates with the largest
/// gradient. The energy is only piecewise smooth (thousands of max-pool windows switch along any
/// direction), so purely random directions, whose derivative is ~|grad|/sqrt(3072), are lost in
/// the kinks; these directions have derivatives near |grad|. h is 1e-2 along a unit direction and
/// 1e-3 along a coordinate; the tolerance is 2% plus f32 rounding of E (2e-5 / h).
#[test]
fn gradient_graph_matches_central_finite_differences_on_real_frames() {
    let mut g = EnergyGradient::open(&bundle(), None).unwrap();
    // Natural photos only: horse.png is a binary silhouette, whose flat regions make exact ties
    // in the max-pools, where E is not differentiable (the graph, like PyTorch, takes the first
    // maximum's subgradient, and a finite difference sees another one-sided derivative).
    let (names, x) = frames(&g, &["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"]);
    let d = g.input().frame_len();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(5);
    let mut worst: f32 = 0.0;
    for target in [EnergyTarget::Free, EnergyTarget::Class(3)] {
        for (i, name) in names.iter().enumerate() {
            let frame = &x[i * d..(i + 1) * d];
            let (_, grad) = energies(&mut g, frame, 1, target);
            let unit = |v: Vec<f32>| {
                let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt();
                v.into_iter().map(|a| a / norm).collect::<Vec<f32>>()
            };
            let g_unit = unit(grad.clone());
            let mut dirs: Vec<(Vec<f32>, f32)> = vec![(g_unit.clone(), 1e-2)];
            for _ in 0..2 {
                let r = unit((0..d).map(|_| StandardNormal.sample(&mut rng)).collect());
                dirs.push((unit(g_unit.iter().zip(&r).map(|(a, b)| a + b).collect()), 1e-2));
            }
            let mut order: Vec<usize> = (0..d).collect();
            order.sort_by(|&a, &b| grad[b].abs().total_cmp(&grad[a].abs()));
            for &j in &order[..5] {
                let mut v = vec![0.0; d];
                v[j] = 1.0;
                dirs.push((v, 1e-3));
            }
            for (v, h) in dirs {
                let plus: Vec<f32> = frame.iter().zip(&v).map(|(a, b)| a + h * b).collect();
                let minus: Vec<f32> = frame.iter().zip(&v).map(|(a, b)| a - h * b).collect();
                let ep = energies(&mut g, &plus, 1, target).0[0] as f64;
                let em = energies(&mut g, &minus, 1, target).0[0] as f64;
                let fd = (ep - em) / (2.0 * h as f64);
                let analytic: f64 = grad.iter().zip(&v).map(|(a, b)| (*a as f64) * (*b as f64)).sum();
                let err = (fd - analytic).abs();
                let tol = 0.02 * analytic.abs() + 2e-5 / h as f64;
                assert!(err <= tol, "{name} {target:?}: finite difference {fd:.6} vs <grad, v> {analytic:.6} (h {h})");
                worst = worst.max((err / analytic.abs().max(1e-6)) as f32);
            }
        }
    }
    eprintln!("finite differences: worst relative error {worst:.2e}");
}

/// Zero noise and a small step: gradient descent, so the energy of every frame falls at every
/// step (the warm start is a real photo; each frame stays in the pixel range).
#[test]
fn zero_noise_sgld_descends_the_energy_of_real_frames_monotonically() {
    let mut g = EnergyGradient::open(&bundle(), None).unwrap();
    let (names, mut x) = sample_frames(&g);
    let settings = LangevinSettings { step_size: 0.05, noise_scale: 0.0, n_steps: 15 };
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(0);
    let r = g.refine(&mut x, 4, EnergyTarget::Free, &settings, &mut rng).unwrap();
    assert_eq!(r.trace.len(), 16);
    for (i, name) in names.iter().enumerate() {
        let t: Vec<f32> = r.trace.iter().map(|row| row[i]).collect();
        assert!(t.windows(2).all(|w| w[1] < w[0]), "{name}: energy not decreasing: {t:?}");
        assert!(t[15] < t[0] - 0.01, "{name}: energy barely moved: {t:?}");
    }
    let b = g.bounds();
    let plane = 32 * 32;
    for (j, v) in x.iter().enumerate() {
        let c = (j / plane) % 3;
        assert!(*v >= b.lo[c] && *v <= b.hi[c], "value {v} of channel {c} outside the pixel range");
    }
}

/// The same seed gives the same chain bit for bit; another seed another chain.
#[test]
fn the_same_seed_gives_the_same_chain() {
    let mut g = EnergyGradient::open(&bundle(), None).unwrap();
    let (_, x0) = sample_frames(&g);
    let settings = LangevinSettings { step_size: 0.1, noise_scale: 0.05, n_steps: 3 };
    let run = |g: &mut EnergyGradient, seed: u64| {
        let mut x = x0.clone();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let r = g.refine(&mut x, 4, EnergyTarget::Class(7), &settings, &mut rng).unwrap();
        (x, r.trace)
    };
    let (a, ta) = run(&mut g, 42);
    let (b, tb) = run(&mut g, 42);
    let (c, _) = run(&mut g, 43);
    assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()));
    assert_eq!(ta, tb);
    assert!(a.iter().zip(&c).filter(|(p, q)| p != q).count() > a.len() / 2);
}

#[test]
fn replay_buffer_round_trips_through_its_file_and_refuses_a_damaged_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buffer.bin");
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
    let mut buf = ReplayBuffer::new(40, [3, 4, 4], [0.0, 1.0], 10, 0.25, &mut rng).unwrap();
    assert!(buf.samples().iter().all(|v| (0.0..=1.0).contains(v)));
    // draw from class 3's share (entries 3, 13, 23, 33), change them, put them back
    let draw = buf.draw(4, Some(3), &mut rng).unwrap();
    let mut idx = draw.indices.clone();
    idx.sort();
    assert_eq!(idx, vec![3, 13, 23, 33]);
    let moved: Vec<f32> = draw.pixels.iter().map(|v| v * 0.5).collect();
    buf.put_back(&draw.indices, &moved).unwrap();
    buf.set_model_sha256("abc");
    buf.save(&path).unwrap();
    let back = ReplayBuffer::load(&path).unwrap();
    assert_eq!(back, buf);
    assert_eq!(back.draws(), 1);
    assert_eq!(back.model_sha256(), Some("abc"));
    assert!(buf.draw(5, Some(3), &mut rng).is_err(), "only 4 entries belong to class 3");

    let bytes = std::fs::read(&path).unwrap();
    let cases: [(&str, Vec<u8>, &str); 3] = [
        ("truncated", bytes[..bytes.len() - 4].to_vec(), "needs"),
        ("not a buffer", b"P6 not a buffer at all".to_vec(), "not a replay buffer"),
        ("empty", Vec::new(), "not a replay buffer"),
    ];
    for (what, data, want) in cases {
        let p = dir.path().join(format!("{}.bin", what.replace(' ', "_")));
        std::fs::write(&p, data).unwrap();
        let err = ReplayBuffer::load(&p).unwrap_err().to_string();
        assert!(err.contains(p.to_str().unwrap()) && err.contains(want), "{what}: {err}");
    }
}

/// A bundle without an energy-gradient graph is refused with the way to make one.
#[test]
fn a_model_without_a_gradient_graph_is_refused_clearly() {
    let bare = root().join("tests/data/tiny_fixed_batch4.onnx");
    let err = EnergyGradient::open(&bare, None).unwrap_err().to_string();
    assert!(err.contains("no energy-gradient graph") && err.contains("energy_grad.py"), "{err}");
    // a bundle whose gate.json has no gradient section
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(bundle().join("model.onnx"), dir.path().join("model.onnx")).unwrap();
    let mut gate = crate::common::read_json("models/cifar10-airnet/gate.json");
    gate.as_object_mut().unwrap().remove("gradient");
    std::fs::write(dir.path().join("gate.json"), gate.to_string()).unwrap();
    let err = EnergyGradient::open(dir.path(), None).unwrap_err().to_string();
    assert!(err.contains("no `gradient` section") && err.contains("gate.json"), "{err}");
    // a graph that does not match its recorded sha256
    std::fs::write(dir.path().join("energy_grad.onnx"), b"not the graph").unwrap();
    let mut gate = crate::common::read_json("models/cifar10-airnet/gate.json");
    gate["gradient"]["graph"] = "energy_grad.onnx".into();
    std::fs::write(dir.path().join("gate.json"), gate.to_string()).unwrap();
    let err = EnergyGradient::open(dir.path(), None).unwrap_err().to_string();
    assert!(err.contains("energy_grad.onnx") && err.contains("sha256"), "{err}");
    // the right graph, but gate.json says it was derived from another model.onnx
    std::fs::copy(bundle().join("energy_grad.onnx"), dir.path().join("energy_grad.onnx")).unwrap();
    gate["gradient"]["model_sha256"] = "0".repeat(64).into();
    std::fs::write(dir.path().join("gate.json"), gate.to_string()).unwrap();
    let err = EnergyGradient::open(dir.path(), None).unwrap_err().to_string();
    assert!(err.contains("was derived from a model.onnx") && err.contains("model.onnx has sha256"), "{err}");
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = crate::common::ebm_gate().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `refine` writes one PNG per frame at the model's size, a before/after grid and trace.json,
/// whose first energy is `score`'s energy of the frame and whose last is lower.
#[test]
fn refine_writes_frames_grid_and_an_energy_trace_starting_at_score_s_energy() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let b = bundle();
    let chelsea = b.join("samples/chelsea.png");
    let rocket = b.join("samples/rocket.jpg");
    let (code, stdout, stderr) = run(&[
        "refine",
        b.to_str().unwrap(),
        chelsea.to_str().unwrap(),
        rocket.to_str().unwrap(),
        "--steps",
        "3",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stderr.contains("ms per step") && stderr.contains("refinement (not exact Langevin sampling)"), "{stderr}");
    for name in ["chelsea.png", "rocket.png"] {
        let img = image::open(out.join(name)).unwrap();
        assert_eq!((img.width(), img.height()), (32, 32), "{name}");
    }
    let grid = image::open(out.join("refine_grid.png")).unwrap();
    assert_eq!((grid.width(), grid.height()), (4 * (128 + 2) + 2, 128 + 4));
    let trace: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("trace.json")).unwrap()).unwrap();
    assert_eq!(trace["settings"]["step_size"], 0.2);
    assert_eq!(trace["settings"]["unadjusted_langevin"], false);
    let (code, score_out, _) =
        run(&["score", b.to_str().unwrap(), chelsea.to_str().unwrap(), rocket.to_str().unwrap(), "--json"]);
    assert!(code == 0 || code == 1, "score could not run: exit {code}");
    let frames = trace["frames"].as_array().unwrap();
    let scored: Vec<serde_json::Value> = score_out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!((frames.len(), scored.len()), (2, 2));
    let golden = crate::common::read_json("tests/data/golden_cifar10_airnet.json");
    let t = crate::common::read_json("models/cifar10-airnet/gate.json")["temperature"].as_f64().unwrap();
    for ((frame, scored), file) in frames.iter().zip(&scored).zip(["chelsea.png", "rocket.jpg"]) {
        let e = crate::common::f32s(&frame["energy"]);
        assert_eq!(e.len(), 4);
        let want = scored["energy"].as_f64().unwrap() as f32;
        assert!((e[0] - want).abs() < 1e-4, "trace starts at {} but score says {want}", e[0]);
        // ... which is onnxruntime's energy of the frame (to the resize's tolerance).
        let g = golden["samples"].as_array().unwrap().iter().find(|s| s["path"].as_str().unwrap().ends_with(file));
        let z = crate::common::f32s(&g.unwrap()["ort_logits"]);
        let m = z.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let ort = -t * (m / t + z.iter().map(|&v| ((v as f64 - m) / t).exp()).sum::<f64>().ln());
        assert!((e[0] as f64 - ort).abs() < 0.05, "{file}: trace starts at {} but onnxruntime gives {ort}", e[0]);
        assert!(e[3] < e[0], "{e:?}");
        assert!((frame["after"]["energy"].as_f64().unwrap() as f32 - e[3]).abs() < 1e-3);
    }
}

/// `sample` makes a new buffer when the file is missing, writes the grid, saves the buffer with
/// the refined samples, and goes on from it the next time.
#[test]
fn sample_starts_a_fresh_buffer_then_goes_on_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let buf = dir.path().join("buffer.bin");
    let grid = dir.path().join("grid.png");
    let b = bundle();
    let args = |extra: &[&'static str]| {
        let mut v: Vec<String> = ["sample", b.to_str().unwrap(), "--buffer", buf.to_str().unwrap(), "--out"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.push(grid.to_str().unwrap().into());
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let a = args(&["--capacity", "40", "-n", "4", "--steps", "2", "--class", "ship"]);
    let (code, stdout, stderr) = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stderr.contains("new, 40 uniform-noise samples"), "{stderr}");
    assert!(stdout.contains("ms per step for a batch of 4"), "{stdout}");
    let img = image::open(&grid).unwrap();
    assert_eq!((img.width(), img.height()), (2 * 130 + 2, 2 * 130 + 2));
    let first = ReplayBuffer::load(&buf).unwrap();
    assert_eq!((first.capacity(), first.draws()), (40, 1));
    let a = args(&["-n", "4", "--steps", "2"]);
    let (code, stdout, stderr) = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stderr.contains("refined 1 time before"), "{stderr}");
    assert_eq!(ReplayBuffer::load(&buf).unwrap().draws(), 2);
    // a run that cannot write its grid fails before the chain and leaves the buffer as it was
    let mut a = args(&["-n", "4", "--steps", "2"]);
    let i = a.iter().position(|s| s.ends_with("grid.png")).unwrap();
    a[i] = dir.path().join("grid.txt").to_str().unwrap().into();
    let (code, _, stderr) = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 2);
    assert!(stderr.contains("ending in .png"), "{stderr}");
    assert_eq!(ReplayBuffer::load(&buf).unwrap().draws(), 2);
    // an existing buffer keeps its capacity
    let a = args(&["--capacity", "50"]);
    let (code, _, stderr) = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 2);
    assert!(stderr.contains("capacity is 40") && stderr.contains("new buffer only"), "{stderr}");
}

#[test]
fn refine_and_sample_refuse_bad_input_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let b = bundle();
    let frame = b.join("samples/chelsea.png");
    let tiny = root().join("tests/data/tiny_fixed_batch4.onnx");
    let out = dir.path().join("o");
    let (o, f) = (out.to_str().unwrap(), frame.to_str().unwrap());
    let bs = b.to_str().unwrap();
    let not_image = root().join("Cargo.toml");
    let grid = dir.path().join("grid.png").to_str().unwrap().to_string();
    let fresh = dir.path().join("fresh.bin").to_str().unwrap().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["refine", tiny.to_str().unwrap(), f, "--out", o], "no energy-gradient graph"),
        (vec!["refine", bs, f, "--out", o, "--class", "unicorn"], "airplane, automobile"),
        (vec!["refine", bs, f, "--out", o, "--step-size", "0"], "step_size must be finite and > 0"),
        (vec!["refine", bs, not_image.to_str().unwrap(), "--out", o], "Cargo.toml"),
        (vec!["sample", bs, "--buffer", not_image.to_str().unwrap(), "--out", &grid], "not a replay buffer"),
        (vec!["sample", bs, "--buffer", &fresh, "--out", &grid, "-n", "0"], "at least 1"),
        (
            vec!["sample", bs, "--buffer", &fresh, "--out", &grid, "--temperature", "0"],
            "'--temperature <TEMPERATURE>': temperature must be finite and > 0",
        ),
    ];
    for (args, want) in cases {
        let (code, stdout, stderr) = run(&args);
        assert_eq!(code, 2, "{args:?}: {stdout}\n{stderr}");
        assert!(stderr.contains(want) && !stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    assert!(!dir.path().join("fresh.bin").exists(), "a refused run must not write a buffer");
}
