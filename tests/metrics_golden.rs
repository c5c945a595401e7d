//! OOD metrics against scikit-learn values on committed vectors (tests/data/metrics_golden.json,
//! made by models/tools/make_metric_goldens.py), ties and the FPR@95TPR convention included.

use ebm_gate::metrics::{fpr_at_tpr, OodMetrics};

use crate::common::{f32s, read_json};

#[test]
fn metrics_match_scikit_learn() {
    let doc = read_json("tests/data/metrics_golden.json");
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let (id, ood) = (f32s(&case["id"]), f32s(&case["ood"]));
        let m = OodMetrics::compute(&id, &ood).unwrap();
        let want = |k: &str| case[k].as_f64().unwrap();
        for (k, got) in
            [("auroc", m.auroc), ("aupr_in", m.aupr_in), ("aupr_out", m.aupr_out), ("fpr_at_95_tpr", m.fpr_at_95_tpr)]
        {
            assert!((got - want(k)).abs() < 1e-12, "{name} {k}: ebm-gate {got} vs scikit-learn {}", want(k));
        }
        let f80 = fpr_at_tpr(&id, &ood, 0.80).unwrap();
        assert!((f80 - want("fpr_at_80_tpr")).abs() < 1e-12, "{name} fpr@80: {f80} vs {}", want("fpr_at_80_tpr"));
    }
}

#[test]
fn empty_sets_and_bad_targets_are_errors() {
    assert!(OodMetrics::compute(&[], &[1.0]).is_err());
    assert!(OodMetrics::compute(&[1.0], &[]).is_err());
    assert!(fpr_at_tpr(&[1.0], &[0.0], 0.0).is_err());
    assert!(fpr_at_tpr(&[1.0], &[0.0], 1.5).is_err());
}
