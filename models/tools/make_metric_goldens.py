"""Writes tests/data/metrics_golden.json: OOD metrics computed by scikit-learn on seeded vectors.

    python models/tools/make_metric_goldens.py

ID is the positive class and scores are "higher = more in-distribution". For each case:
AUROC = roc_auc_score, AUPR-In = average_precision_score(ID positive), AUPR-Out =
average_precision_score(OOD positive, negated scores), FPR@95TPR = fpr at the first index of
roc_curve(drop_intermediate=False) with tpr >= 0.95. Cases include heavy ties and tiny sets.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import sklearn
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


def metrics(id_s: np.ndarray, ood_s: np.ndarray) -> dict:
    y = np.r_[np.ones(len(id_s)), np.zeros(len(ood_s))]
    s = np.r_[id_s, ood_s].astype(np.float64)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    out = {
        "auroc": roc_auc_score(y, s),
        "aupr_in": average_precision_score(y, s),
        "aupr_out": average_precision_score(1 - y, -s),
        "fpr_at_95_tpr": float(fpr[np.argmax(tpr >= 0.95)]),
        "fpr_at_80_tpr": float(fpr[np.argmax(tpr >= 0.80)]),
    }
    return {k: float(v) for k, v in out.items()}


def main() -> None:
    rng = np.random.default_rng(20261129)
    cases = []

    def add(name, id_s, ood_s):
        id_s = np.asarray(id_s, dtype=np.float32)
        ood_s = np.asarray(ood_s, dtype=np.float32)
        cases.append({"name": name, "id": id_s.tolist(), "ood": ood_s.tolist(), **metrics(id_s, ood_s)})

    add("separated", [3, 4, 5], [0, 1, 2])
    add("reversed", [0, 1], [2, 3])
    add("all_tied", [1, 1, 1], [1, 1])
    add("one_each_tied", [0.5], [0.5])
    add("small_interleaved", [0.9, 0.7, 0.4, 0.35], [0.8, 0.5, 0.3])
    add("gaussian_shift", rng.normal(1.0, 1.0, 500), rng.normal(0.0, 1.0, 700))
    add("heavy_ties", np.round(rng.normal(0.5, 1.0, 400), 1), np.round(rng.normal(0.0, 1.0, 300), 1))
    add("integer_scores", rng.integers(0, 5, 200), rng.integers(0, 4, 250))
    add("threshold_tie_at_95", np.r_[np.full(19, 2.0), [1.0]], np.r_[[1.0, 1.0], np.zeros(8)])
    add("energy_like", -rng.gamma(9.0, 1.0, 1000), -rng.gamma(6.0, 1.0, 1000))

    out = Path(__file__).resolve().parents[2] / "tests" / "data" / "metrics_golden.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"generator": "models/tools/make_metric_goldens.py", "sklearn": sklearn.__version__,
           "numpy": np.__version__, "cases": cases}
    lines = [json.dumps(c) for c in cases]
    head = json.dumps({k: v for k, v in doc.items() if k != "cases"})[:-1]
    out.write_text(head + ', "cases": [\n' + ",\n".join(lines) + "\n]}\n")
    print(f"wrote {out} ({len(cases)} cases)")


if __name__ == "__main__":
    main()
