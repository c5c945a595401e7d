"""Reference evaluation with onnxruntime + Pillow + scikit-learn, to cross-check `ebm-gate eval`.

    python models/tools/eval_reference.py [--bundle models/cifar10-airnet] [--json FILE]

ID: CIFAR-10 test (10,000, ImageFolder). OOD: Tiny-ImageNet test at 32x32 (10,000) and MNIST
test (10,000, gray replicated to RGB, 28 -> 32 bilinear). Scores (higher = more ID): -energy,
MSP, MaxLogit. Metrics with ID positive: AUROC, AUPR-In, AUPR-Out, FPR@95TPR, as in
make_metric_goldens.py. Pillow's JPEG decoder differs from the Rust `image` crate's by a level
or two on some pixels, so expect agreement to about the third decimal, not bit for bit.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

import cifar10_data as data
from make_goldens import preprocess
from make_metric_goldens import metrics

MEAN = np.array(data.MEAN, np.float32)
STD = np.array(data.STD, np.float32)


def mnist(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    n, h, w = (int.from_bytes(raw[i:i + 4], "big") for i in (4, 8, 12))
    imgs = np.frombuffer(raw, np.uint8, offset=16).reshape(n, h, w)
    out = np.empty((n, 3, 32, 32), np.float32)
    for i, a in enumerate(imgs):
        im = Image.fromarray(a).convert("RGB").resize((32, 32), Image.BILINEAR, box=(0, 0, w, h))
        out[i] = ((np.asarray(im, np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1)
    return out


def logits(sess, x: np.ndarray, bs: int = 500) -> np.ndarray:
    return np.concatenate([sess.run(None, {"input": x[i:i + bs]})[0] for i in range(0, len(x), bs)])


def scores(z: np.ndarray) -> dict[str, np.ndarray]:
    z = z.astype(np.float64)
    m = z.max(1)
    lse = m + np.log(np.exp(z - m[:, None]).sum(1))
    return {"energy": lse, "msp": np.exp(m - lse), "max_logit": m}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=data.repo_root() / "models" / "cifar10-airnet")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(args.bundle / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    shared = data.shared_data()

    t0 = time.time()
    pairs = data.list_test()
    x_id = np.stack([preprocess(p) for p, _ in pairs])
    y_id = np.array([c for _, c in pairs])
    z_id = logits(sess, x_id)
    acc = float((z_id.argmax(1) == y_id).mean())
    s_id = scores(z_id)
    sets = {
        "tinyimagenet": np.stack([preprocess(p) for p in sorted((shared / "tinyimagenet32" / "test").iterdir())]),
        "mnist": mnist(shared / "mnist" / "t10k-images-idx3-ubyte.gz"),
    }
    report = {"id_accuracy": acc, "ood": {}}
    print(f"CIFAR-10 test accuracy (onnxruntime, Pillow decode): {acc:.4f}")
    print(f"{'set':<14} {'score':<10} {'AUROC':>8} {'AUPR-In':>8} {'AUPR-Out':>9} {'FPR@95':>8}")
    for name, x in sets.items():
        s_ood = scores(logits(sess, x))
        report["ood"][name] = {}
        for k in s_id:
            m = metrics(s_id[k].astype(np.float32), s_ood[k].astype(np.float32))
            report["ood"][name][k] = m
            print(f"{name:<14} {k:<10} {m['auroc']:>8.4f} {m['aupr_in']:>8.4f} {m['aupr_out']:>9.4f} {m['fpr_at_95_tpr']:>8.4f}")
    print(f"({time.time() - t0:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
