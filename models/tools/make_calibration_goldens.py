"""Writes tests/data/calibration_golden.json: temperature scaling, calibration metrics and
conformal prediction sets computed by SciPy, PyTorch, scikit-learn and NumPy on seeded logits.

    python models/tools/make_calibration_goldens.py

Cases are seeded synthetic logits of K = 10 classes (an over-confident and an under-confident
classifier, so the fitted T lands on both sides of 1), the reference model's logits on 65
CIFAR-10 test images (from tests/data/golden_cifar10_airnet.json), and a tiny hand-made case.
Logits are float32 values (the synthetic ones rounded to 4 decimals to keep the file short),
and every figure is computed from exactly those values in float64. For each:

- temperature: scipy.optimize.minimize_scalar (bounded, on ln T in [ln 0.01, ln 100], float64)
  of the mean NLL; cross-checked with PyTorch LBFGS on T (Guo et al.'s reference recipe);
- nll: sklearn.metrics.log_loss of softmax(z / T), at T = 1 and at the fitted T;
- ece, mce: Guo et al.'s binning (15 bins from numpy.linspace(0, 1, 16), conf in (lo, hi]);
- brier: sklearn.metrics.brier_score_loss (multiclass: mean over frames of sum_k (p_k - y_k)^2);
- accuracy: sklearn.metrics.accuracy_score;
- LAC prediction sets at alpha 0.1 and 0.05 at the fitted T: scores s_i = 1 - p(y_i | x_i) on
  the first half of the frames, q = numpy.quantile(s, k / n, method="inverted_cdf") with
  k = ceil((n + 1)(1 - alpha)) (the k-th smallest), sets {y : 1 - p(y|x) <= q} on the second half: coverage and mean size.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import scipy
import sklearn
import torch
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.metrics import accuracy_score, brier_score_loss, log_loss


def nll(z: np.ndarray, y: np.ndarray, t: float) -> float:
    return float(-log_softmax(z / t, axis=1)[np.arange(len(y)), y].mean())


def ece_mce(p: np.ndarray, y: np.ndarray, bins: int = 15) -> tuple[float, float]:
    conf = p.max(axis=1)
    pred = p.argmax(axis=1)
    edges = np.linspace(0, 1, bins + 1)
    ece, mce = 0.0, 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            gap = abs((pred[m] == y[m]).mean() - conf[m].mean())
            ece += m.mean() * gap
            mce = max(mce, gap)
    return float(ece), float(mce)


def fit_scipy(z: np.ndarray, y: np.ndarray) -> float:
    r = minimize_scalar(lambda u: nll(z, y, math.exp(u)), bounds=(math.log(0.01), math.log(100.0)),
                        method="bounded", options={"xatol": 1e-10})
    return math.exp(r.x)


def fit_torch(z: np.ndarray, y: np.ndarray) -> float:
    logits = torch.tensor(z, dtype=torch.float64)
    labels = torch.tensor(y)
    t = torch.ones(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([t], lr=0.1, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / t, labels)
        loss.backward()
        return loss

    opt.step(closure)
    return float(t.item())


def figures(z: np.ndarray, y: np.ndarray, t: float) -> dict:
    p = softmax(z.astype(np.float64) / t, axis=1)
    ece, mce = ece_mce(p, y)
    return {
        "nll": float(log_loss(y, p, labels=np.arange(z.shape[1]))),
        "ece": ece,
        "mce": mce,
        "brier": float(brier_score_loss(y, p, labels=np.arange(z.shape[1]))),
        "accuracy": float(accuracy_score(y, p.argmax(axis=1))),
    }


def lac(z: np.ndarray, y: np.ndarray, t: float, alpha: float) -> dict:
    n = len(y) // 2
    p = softmax(z.astype(np.float64) / t, axis=1)
    s = 1.0 - p[np.arange(n), y[:n]]
    # The k-th smallest score, k = ceil((n + 1)(1 - alpha)): numpy's "inverted_cdf" quantile at
    # k / n. (method="higher", as in some tutorials, gives the (k+1)-th: one rank conservative.)
    k = math.ceil((n + 1) * (1 - alpha))
    q = float(np.quantile(s, k / n, method="inverted_cdf"))
    assert q == float(np.sort(s)[k - 1])
    sets = (1.0 - p[n:]) <= q
    return {
        "alpha": alpha,
        "q": q,
        "coverage": float(sets[np.arange(len(y) - n), y[n:]].mean()),
        "mean_size": float(sets.sum(axis=1).mean()),
    }


def synthetic(rng: np.random.Generator, n: int, k: int, signal: float, scale: float, noise: float):
    """Logits = scale * (signal * onehot(c) + N(0, 1)); the label is c, or a random class with
    probability `noise`, so the classifier is over-confident for large scale, under-confident
    for small."""
    c = rng.integers(0, k, n)
    z = scale * (signal * np.eye(k)[c] + rng.normal(0.0, 1.0, (n, k)))
    flip = rng.random(n) < noise
    y = np.where(flip, rng.integers(0, k, n), c)
    # Four decimals, so the JSON is short and holds exactly the float32 values used here.
    return np.round(z, 4).astype(np.float32), y.astype(np.int64)


def main() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(20261129)
    cases = []

    def add(name: str, z: np.ndarray, y: np.ndarray, sets: bool = True) -> None:
        z64 = z.astype(np.float64)
        t = fit_scipy(z64, y)
        t_torch = fit_torch(z64, y)
        assert abs(t - t_torch) / t < 1e-5, (name, t, t_torch)
        case = {
            "name": name,
            "k": int(z.shape[1]),
            # Shortest decimal that reads back as the same float32.
            "logits": [float(str(v)) for v in z.reshape(-1)],
            "labels": [int(v) for v in y],
            "temperature": t,
            "temperature_torch_lbfgs": t_torch,
            "at_t1": figures(z, y, 1.0),
            "at_fit": figures(z, y, t),
        }
        if sets:
            case["lac"] = [lac(z, y, t, a) for a in (0.1, 0.05)]
        cases.append(case)

    add("overconfident", *synthetic(rng, 1000, 10, signal=2.0, scale=3.0, noise=0.2))
    add("underconfident", *synthetic(rng, 1000, 10, signal=3.0, scale=0.5, noise=0.05))
    # Real logits: the reference model (onnxruntime) on 65 CIFAR-10 test images, as committed in
    # tests/data/golden_cifar10_airnet.json by make_goldens.py.
    real = json.loads((Path(__file__).resolve().parents[2] / "tests" / "data" / "golden_cifar10_airnet.json").read_text())
    z = np.array([f["ort_logits"] for f in real["cifar10_test"]], dtype=np.float32)
    y = np.array([f["label"] for f in real["cifar10_test"]])
    add("cifar10_airnet_65", z, y)
    add("tiny", np.array([[2.0, 0.5, -1.0], [0.1, 1.5, 0.2], [1.0, 1.2, 0.9], [-0.5, 0.0, 2.5],
                          [3.0, -1.0, 0.0], [0.2, 0.1, 0.0]], dtype=np.float32),
        np.array([0, 1, 0, 2, 1, 2]), sets=False)

    out = Path(__file__).resolve().parents[2] / "tests" / "data" / "calibration_golden.json"
    doc = {"generator": "models/tools/make_calibration_goldens.py", "numpy": np.__version__,
           "scipy": scipy.__version__, "sklearn": sklearn.__version__, "torch": torch.__version__,
           "cases": cases}
    out.write_text(json.dumps(doc) + "\n")
    for c in cases:
        print(c["name"], "T", round(c["temperature"], 6), "ECE", round(c["at_t1"]["ece"], 4), "->",
              round(c["at_fit"]["ece"], 4), c.get("lac", ""))
    print("wrote", out)


if __name__ == "__main__":
    main()
