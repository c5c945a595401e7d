"""Trains the tiny MCU reference model on the 8x8 digits and exports it as a bundle.

    python models/tools/train_digits.py [--out models/digits-mlp] [--data DIR]

The data: the UCI optical digits as shipped in scikit-learn (1,797 frames of 8x8, values 0..16:
32x32 bitmaps of handwritten digits counted in 4x4 blocks), read from
`../shared/data/sklearn_digits/digits.csv.gz`, else scikit-learn's bundled copy. A frame is the
camera's 8-bit view of it: `round(v * 255 / 16)`, gray. Split per class with a fixed seed: 60%
training, 20% calibration, 20% test.

The model (`DigitsMLP`): flatten -> Linear(64, 32) -> ReLU -> Linear(32, 10), 2,410 parameters,
2,368 multiply-accumulates a frame: small enough for a Cortex-M4 without an allocator.

Writes:
- `OUT/model.onnx`: input `input [N, 1, 8, 8]` float, output `logits [N, 10]` (symbolic `N`),
  checked against PyTorch through onnxruntime.
- `OUT/gate.json`: gray 8x8 preprocessing (pixel range [0, 1], the training frames' mean and
  std), class names "0".."9", temperature 1 and a gate at 95% TPR on the calibration split, to be
  refitted by `ebm-gate calibrate OUT --id CACHE/calibration`.
- `OUT/training.json`: recipe, per-epoch loss, accuracies, for the model card.
- Outside the repo (`~/.cache/ebm-gate/digits/`, never committed: it is the data): the
  calibration and test splits as PNG folders `<digit>/<index>.png`, and seeded far-OOD frames
  (uniform noise, blank, saturated, 200 of each) as PNG folders, for `calibrate` and `eval`.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from PIL import Image
from torch import nn

import cifar10_data as paths
from export_cifar10 import energies

SEED = 0


class DigitsMLP(nn.Module):
    """`[N, 1, 8, 8]` normalised frames -> logits `[N, 10]`."""

    def __init__(self, hidden: int = 32, num_classes: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


def load_digits(data: Path) -> tuple[np.ndarray, np.ndarray]:
    """Frames `[n, 8, 8]` uint8 (0..255) and labels `[n]`."""
    csv = data / "sklearn_digits" / "digits.csv.gz"
    if csv.exists():
        rows = np.loadtxt(gzip.open(csv, "rt"), delimiter=",")
        x16, y = rows[:, :64], rows[:, 64].astype(np.int64)
        source = str(csv)
    else:
        from sklearn.datasets import load_digits as sk
        d = sk()
        x16, y, source = d.data, d.target.astype(np.int64), "sklearn.datasets.load_digits"
    assert x16.min() >= 0 and x16.max() <= 16, (x16.min(), x16.max())
    frames = np.rint(x16 * 255.0 / 16.0).astype(np.uint8).reshape(-1, 8, 8)
    print(f"{len(frames)} digits from {source}")
    return frames, y


def split(y: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Per-class 60/20/20 split of the indices."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {"train": [], "calibration": [], "test": []}
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        a, b = round(0.6 * len(idx)), round(0.8 * len(idx))
        parts["train"] += idx[:a].tolist()
        parts["calibration"] += idx[a:b].tolist()
        parts["test"] += idx[b:].tolist()
    return {k: np.array(sorted(v)) for k, v in parts.items()}


def write_pngs(frames: np.ndarray, labels: np.ndarray | None, root: Path, indices: np.ndarray | None = None) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        name = f"{(indices[i] if indices is not None else i):04d}.png"
        d = root / str(labels[i]) if labels is not None else root
        d.mkdir(exist_ok=True)
        Image.fromarray(f, "L").save(d / name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=paths.repo_root() / "models" / "digits-mlp")
    ap.add_argument("--data", type=Path, default=paths.shared_data())
    ap.add_argument("--cache", type=Path, default=paths.cache_dir() / "digits")
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--hidden", type=int, default=32)
    args = ap.parse_args()
    torch.set_flush_denormal(True)
    torch.manual_seed(SEED)

    frames, y = load_digits(args.data)
    parts = split(y, SEED)
    x01 = frames.astype(np.float32) / 255.0
    mean = float(x01[parts["train"]].mean())
    std = float(x01[parts["train"]].std())
    xn = torch.from_numpy(((x01 - mean) / std)[:, None])
    yt = torch.from_numpy(y)

    net = DigitsMLP(args.hidden)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs)
    tr = torch.from_numpy(parts["train"])
    gen = torch.Generator().manual_seed(SEED)
    log = []
    for epoch in range(args.epochs):
        net.train()
        perm = tr[torch.randperm(len(tr), generator=gen)]
        total = 0.0
        for i in range(0, len(perm), 64):
            b = perm[i:i + 64]
            loss = nn.functional.cross_entropy(net(xn[b]), yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
        sched.step()
        log.append({"epoch": epoch + 1, "train_loss": total / len(perm)})
    net.eval()
    with torch.no_grad():
        z = net(xn).numpy()
    acc = {k: float((z[v].argmax(1) == y[v]).mean()) for k, v in parts.items()}
    print(f"trained {args.epochs} epochs: final loss {log[-1]['train_loss']:.4f}; accuracy "
          + ", ".join(f"{k} {v:.4f}" for k, v in acc.items()))

    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = args.out / "model.onnx"
    prog = torch.onnx.export(
        net, (torch.zeros(2, 1, 8, 8),), dynamo=True, external_data=False, input_names=["input"],
        output_names=["logits"], dynamic_shapes={"x": {0: torch.export.Dim("N", min=1, max=65536)}},
        opset_version=18)
    prog.save(str(onnx_path), external_data=False)
    assert not onnx_path.with_suffix(".onnx.data").exists()
    m = onnx.load(str(onnx_path))
    onnx.checker.check_model(m)
    ops = sorted({n.op_type for n in m.graph.node})
    sha = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    z_ort = sess.run(None, {"input": xn.numpy()})[0]
    ort_diff = float(np.abs(z_ort - z).max())
    print(f"exported {onnx_path} ({onnx_path.stat().st_size} bytes), ops {ops}; "
          f"onnxruntime vs PyTorch on all {len(z)} frames: max |logit diff| {ort_diff:.2e}")
    assert ort_diff < 1e-4, ort_diff

    e_cal = np.sort(energies(z[parts["calibration"]])).astype(np.float32)
    k = math.ceil(0.95 * len(e_cal)) - 1
    gate = {
        "format_version": 1,
        "input": {"layout": "NCHW", "height": 8, "width": 8, "color": "gray",
                  "resize": "shorter_side_then_center_crop", "pixel_range": [0.0, 1.0],
                  "mean": [mean], "std": [std]},
        "class_names": [str(c) for c in range(10)],
        "temperature": 1.0,
        "gate": {"score": "energy", "threshold": float(e_cal[k]), "target_tpr": 0.95, "alpha": None,
                 "calibration_energies": [float(v) for v in e_cal]},
        "provenance": {
            "model_sha256": sha,
            "data": f"UCI optical digits (scikit-learn copy), calibration split: {len(e_cal)} frames "
                    f"(20% per class, seed {SEED}), not trained on",
            "n": len(e_cal),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "tool": "models/tools/train_digits.py (ebm-gate 0.1.0)",
        },
    }
    (args.out / "gate.json").write_text(json.dumps(gate, indent=2) + "\n")
    params = sum(p.numel() for p in net.parameters())
    macs = 64 * args.hidden + args.hidden * 10
    report = {
        "architecture": f"DigitsMLP: flatten -> Linear(64, {args.hidden}) -> ReLU -> Linear({args.hidden}, 10)",
        "parameters": params, "macs_per_frame": macs, "onnx_bytes": onnx_path.stat().st_size,
        "onnx_sha256": sha, "onnx_ops": ops, "opset": 18, "torch": torch.__version__,
        "onnxruntime": ort.__version__, "ort_vs_torch_max_abs_logit_diff": ort_diff,
        "split": {k: int(len(v)) for k, v in parts.items()}, "seed": SEED,
        "normalisation": {"mean": mean, "std": std},
        "accuracy_torch": acc,
        "train": {"epochs": args.epochs, "optimizer": "AdamW lr 3e-3 wd 1e-3, cosine, batch 64", "log": log},
    }
    (args.out / "training.json").write_text(json.dumps(report, indent=1) + "\n")

    cache = args.cache
    for name in ("calibration", "test"):
        idx = parts[name]
        write_pngs(frames[idx], y[idx], cache / name, idx)
    rng = np.random.default_rng(SEED + 1)
    far = {
        "noise": rng.integers(0, 256, (200, 8, 8), dtype=np.uint8),
        "blank": np.repeat(rng.integers(0, 32, (200, 1, 1), dtype=np.uint8), 64, 1).reshape(200, 8, 8),
        "saturated": np.repeat(rng.integers(224, 256, (200, 1, 1), dtype=np.uint8), 64, 1).reshape(200, 8, 8),
    }
    for name, f in far.items():
        write_pngs(f, None, cache / "ood" / name)
    print(f"{params} parameters, {macs} MAC/frame; wrote {args.out}/{{model.onnx,gate.json,training.json}} "
          f"and the splits and far-OOD frames under {cache}")


if __name__ == "__main__":
    main()
