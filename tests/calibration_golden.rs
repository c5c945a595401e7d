//! Temperature scaling, calibration metrics and conformal prediction sets against SciPy /
//! PyTorch / scikit-learn / NumPy values on committed logits (tests/data/calibration_golden.json,
//! made by models/tools/make_calibration_goldens.py), and the split-conformal guarantee on seeded
//! exchangeable data against its closed-form bounds.

use ebm_gate::calibration::{
    check_alpha, conformal_quantile, fit_temperature, lac_scores, prediction_set_summary, sorted_energies,
    split_conformal_check, CalibrationError,
};
use ebm_gate::metrics::CalibrationMetrics;

use crate::common::{f32s, read_json};

fn labels(v: &serde_json::Value) -> Vec<usize> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect()
}

#[test]
fn temperature_matches_scipy_and_pytorch() {
    let doc = read_json("tests/data/calibration_golden.json");
    for case in doc["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let k = case["k"].as_u64().unwrap() as usize;
        let (z, y) = (f32s(&case["logits"]), labels(&case["labels"]));
        let fit = fit_temperature(&z, k, &y).unwrap();
        let want = case["temperature"].as_f64().unwrap();
        let torch = case["temperature_torch_lbfgs"].as_f64().unwrap();
        let rel = (fit.temperature - want).abs() / want;
        assert!(rel < 1e-6, "{name}: T = {} vs scipy {want} (torch {torch}), relative error {rel:e}", fit.temperature);
        let nll = case["at_fit"]["nll"].as_f64().unwrap();
        assert!((fit.nll_after - nll).abs() < 1e-9, "{name}: NLL at T {} vs {nll}", fit.nll_after);
        assert!((fit.nll_before - case["at_t1"]["nll"].as_f64().unwrap()).abs() < 1e-9, "{name}: NLL at T = 1");
    }
}

#[test]
fn nll_ece_mce_brier_match_scikit_learn_and_guo() {
    let doc = read_json("tests/data/calibration_golden.json");
    for case in doc["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let k = case["k"].as_u64().unwrap() as usize;
        let (z, y) = (f32s(&case["logits"]), labels(&case["labels"]));
        for (key, t) in [("at_t1", 1.0), ("at_fit", case["temperature"].as_f64().unwrap())] {
            let m = CalibrationMetrics::from_logits(&z, k, &y, t).unwrap();
            let g = &case[key];
            for (field, got) in
                [("nll", m.nll), ("ece", m.ece), ("mce", m.mce), ("brier", m.brier), ("accuracy", m.accuracy)]
            {
                let want = g[field].as_f64().unwrap();
                assert!((got - want).abs() < 1e-9, "{name} {key} {field}: ebm-gate {got} vs golden {want}");
            }
            assert_eq!(m.bins.iter().map(|b| b.count).sum::<usize>(), y.len(), "{name}: every frame in a bin");
        }
    }
}

#[test]
fn lac_prediction_sets_match_numpy() {
    let doc = read_json("tests/data/calibration_golden.json");
    let mut checked = 0;
    for case in doc["cases"].as_array().unwrap() {
        let Some(lac) = case["lac"].as_array() else { continue };
        let name = case["name"].as_str().unwrap();
        let k = case["k"].as_u64().unwrap() as usize;
        let (z, y) = (f32s(&case["logits"]), labels(&case["labels"]));
        let t = case["temperature"].as_f64().unwrap();
        let n = y.len() / 2;
        let scores = lac_scores(&z[..n * k], k, &y[..n], t).unwrap();
        for g in lac {
            let alpha = g["alpha"].as_f64().unwrap() as f32;
            let q = conformal_quantile(&scores, alpha).unwrap() as f64;
            let want_q = g["q"].as_f64().unwrap();
            assert!((q - want_q).abs() < 1e-6, "{name} alpha {alpha}: q {q} vs numpy {want_q}");
            let s = prediction_set_summary(&z[n * k..], k, &y[n..], t, &scores, alpha).unwrap();
            let (cov, size) = (g["coverage"].as_f64().unwrap(), g["mean_size"].as_f64().unwrap());
            assert!((s.coverage - cov).abs() < 1e-12, "{name} alpha {alpha}: coverage {} vs {cov}", s.coverage);
            assert!((s.mean_size - size).abs() < 1e-12, "{name} alpha {alpha}: size {} vs {size}", s.mean_size);
            checked += 1;
        }
    }
    assert!(checked >= 6);
}

/// Split conformal promises `alpha - 1/(n+1) <= E[false rejection] <= alpha` for exchangeable
/// data; the mean over 400 random splits must land there, give or take 4 Monte-Carlo standard
/// errors. Data: 2,000 seeded standard-normal "energies" (Box-Muller on an LCG).
#[test]
fn split_conformal_false_rejection_is_within_its_bounds() {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut uniform = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let energies: Vec<f32> = (0..2000)
        .map(|_| {
            let (u, v) = (uniform(), uniform());
            ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
        })
        .collect();
    for alpha in [0.01f32, 0.05, 0.1] {
        let c = split_conformal_check(&energies, alpha, 400, 7);
        let se = c.sd / (c.splits as f64).sqrt();
        let (lo, hi) = (alpha as f64 - 1.0 / (c.n_calibration as f64 + 1.0), alpha as f64);
        assert!(
            c.mean >= lo - 4.0 * se && c.mean <= hi + 4.0 * se,
            "alpha {alpha}: mean {} not in [{lo}, {hi}] ± 4 x {se}",
            c.mean
        );
    }
}

#[test]
fn refusals_name_the_problem() {
    // n + 1 < 1 / alpha.
    let e = check_alpha(18, 0.05).unwrap_err();
    assert_eq!(e, CalibrationError::TooFewForAlpha { n: 18, alpha: 0.05 });
    assert!(e.to_string().contains("at least 19 frames"), "{e}");
    assert!(check_alpha(19, 0.05).is_ok());
    assert!(matches!(check_alpha(100, 1.5), Err(CalibrationError::BadAlpha(_))));
    // A non-finite energy among the calibration logits names its row.
    let z = [1.0, 0.0, f32::NAN, 0.0, 0.5, 0.5];
    assert_eq!(sorted_energies(&z, 2, 1.0), Err(CalibrationError::NonFiniteEnergy { index: 1 }));
    // Labels out of range and ragged logits are errors, not panics.
    assert!(fit_temperature(&[1.0, 0.0], 2, &[2]).is_err());
    assert!(fit_temperature(&[1.0, 0.0, 3.0], 2, &[0]).is_err());
    assert!(fit_temperature(&[], 2, &[]).is_err());
}
