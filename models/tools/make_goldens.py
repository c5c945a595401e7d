"""Records reference logits and energies for the Rust agreement tests.

    python models/tools/make_goldens.py [--bundle models/cifar10-airnet]
    python models/tools/make_goldens.py --bundle models/cifar10-airnet-ebm \
        --checkpoint ~/.cache/ebm-gate/cifar10-airnet-ebm.final.pt --out tests/data/golden_cifar10_airnet_ebm.json

Writes `tests/data/golden_cifar10_airnet.json` (or `--out`) with, per frame, the PyTorch logits (from the
training checkpoint), the onnxruntime logits (from the committed `model.onnx`) and the energy
`E = -logsumexp(z)` (float64 from the PyTorch logits), for:

- `frames`: the 24 committed 32x32 PNGs in `tests/data/frames` (decoded by Pillow; no resize);
- `samples`: the quick-start samples of other sizes, resized with Pillow's bilinear filter over
  the centred crop box (`Image.resize(size, BILINEAR, box=...)`, the rule ebm-gate follows);
- `cifar10_test`: 64 CIFAR-10 test images (every 156th in sorted path order) read from
  ../shared/data at generation time; only their paths and outputs are committed. Pillow's JPEG
  decoder (libjpeg-turbo) and the Rust `image` crate's may differ by a level or two.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image, ImageOps

import cifar10_data as data
from export_cifar10 import energies, load_model

MEAN = np.array(data.MEAN, np.float32)
STD = np.array(data.STD, np.float32)


def load_resized(path: Path, size: int = 32) -> np.ndarray:
    """An image as ebm-gate brings it to the model: RGB, EXIF orientation applied, the centred
    square box resized to `size` x `size` (Pillow's bilinear filter), `[size, size, 3]` uint8."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        w, h = im.size
        if (w, h) != (size, size):
            scale = max(size / w, size / h)
            bw, bh = size / scale, size / scale
            box = ((w - bw) / 2, (h - bh) / 2, (w + bw) / 2, (h + bh) / 2)
            im = im.resize((size, size), Image.BILINEAR, box=box)
        return np.asarray(im, np.uint8)


def preprocess(path: Path, size: int = 32) -> np.ndarray:
    a = load_resized(path, size).astype(np.float32) / 255.0
    return ((a - MEAN) / STD).transpose(2, 0, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=data.repo_root() / "models" / "cifar10-airnet")
    ap.add_argument("--checkpoint", type=Path, default=data.cache_dir() / "cifar10-airnet-ebm.final.pt")
    ap.add_argument("--out", type=Path, help="default: tests/data/golden_cifar10_airnet.json")
    args = ap.parse_args()
    torch.set_flush_denormal(True)
    root = data.repo_root()

    model, _ = load_model(args.checkpoint)
    sess = ort.InferenceSession(str(args.bundle / "model.onnx"), providers=["CPUExecutionProvider"])

    def run(paths: list[Path], rel_to: Path) -> list[dict]:
        x = np.stack([preprocess(p) for p in paths])
        with torch.no_grad():
            zt = model(torch.from_numpy(x)).numpy()
        zo = sess.run(None, {"input": x})[0]
        e = energies(zt)
        return [{"path": str(p.relative_to(rel_to)), "torch_logits": zt[i].tolist(), "ort_logits": zo[i].tolist(),
                 "energy": float(e[i]), "class_index": int(zt[i].argmax())} for i, p in enumerate(paths)]

    frames = sorted((root / "tests" / "data" / "frames").glob("*.png"))
    sample_dir = args.bundle / "samples"
    if not sample_dir.is_dir():  # a bundle without its own samples: the reference bundle's
        sample_dir = root / "models" / "cifar10-airnet" / "samples"
    samples = sorted(p for p in sample_dir.iterdir() if p.suffix in (".png", ".jpg"))
    test_pairs = data.list_test()[::156]
    doc = {
        "generator": "models/tools/make_goldens.py",
        "model_sha256": json.loads((args.bundle / "gate.json").read_text())["provenance"]["model_sha256"],
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "frames": run(frames, root),
        "samples": run(samples, root),
        "cifar10_test": [dict(r, label=c) for r, (_, c) in zip(run([p for p, _ in test_pairs], data.shared_data()), test_pairs)],
    }
    # `eval` on the frames: photos (the first 15) as "ID", synthetic patterns as "OOD", metrics
    # by scikit-learn from the PyTorch logits, one entry per score (higher = more ID).
    from make_metric_goldens import metrics
    z = np.array([r["torch_logits"] for r in doc["frames"]], np.float64)
    zmax = z.max(1)
    lse = zmax + np.log(np.exp(z - zmax[:, None]).sum(1))
    score = {"energy": lse, "msp": np.exp(zmax - lse), "max_logit": zmax}
    doc["eval_frames"] = {"id": [r["path"] for r in doc["frames"][:15]],
                          "ood": [r["path"] for r in doc["frames"][15:]],
                          "metrics": {k: metrics(v[:15].astype(np.float32), v[15:].astype(np.float32))
                                      for k, v in score.items()}}
    out = args.out or root / "tests" / "data" / "golden_cifar10_airnet.json"
    out.write_text(json.dumps(doc) + "\n")
    worst = max(abs(a - b) for r in doc["frames"] for a, b in zip(r["torch_logits"], r["ort_logits"]))
    print(f"wrote {out}: {len(doc['frames'])} frames, {len(doc['samples'])} samples, "
          f"{len(doc['cifar10_test'])} CIFAR-10 test images; torch vs ORT max |diff| {worst:.2e}")


if __name__ == "__main__":
    main()
