"""CIFAR-10 as uint8 arrays, read in place from ../shared/data (never copied into the repo).

The training split is a tar in ImageFolder layout (`train/<class>/NNNN.jpg`), the test split a
folder tree (`test/<class>/NNNN.jpg`). Both decode with Pillow to `[N, 32, 32, 3]` uint8 (RGB)
and int64 labels in the official alphabetical class order. The decoded arrays are cached outside
the repo (`$EBM_GATE_CACHE`, default `~/.cache/ebm-gate`) so a resumed run does not decode again.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]

# Per-channel mean and standard deviation of the CIFAR-10 training split, in [0, 1] pixel units
# (the commonly published values; the JPEG re-encode here matches them to three decimals).
MEAN = [0.4914, 0.4822, 0.4465]
STD = [0.2470, 0.2435, 0.2616]


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def shared_data() -> Path:
    return Path(os.environ.get("EBM_GATE_DATA", repo_root().parent / "shared" / "data"))


def cache_dir() -> Path:
    d = Path(os.environ.get("EBM_GATE_CACHE", Path.home() / ".cache" / "ebm-gate"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def load_train() -> tuple[np.ndarray, np.ndarray]:
    """Returns (images [50000, 32, 32, 3] uint8, labels [50000] int64), sorted by path."""
    cached = cache_dir() / "cifar10_train_u8.npz"
    if cached.exists():
        z = np.load(cached)
        return z["x"], z["y"]
    tar_path = shared_data() / "cifar10" / "train.tar"
    xs, ys, names = [], [], []
    with tarfile.open(tar_path) as tar:
        for member in tar:
            if not member.isfile() or not member.name.lower().endswith((".jpg", ".jpeg", ".png")):
                continue
            parts = Path(member.name).parts
            cls = parts[-2]
            if cls not in CLASSES:
                raise ValueError(f"{tar_path}: {member.name}: unknown class folder {cls!r}")
            f = tar.extractfile(member)
            assert f is not None
            names.append(member.name)
            xs.append(_decode(f.read()))
            ys.append(CLASSES.index(cls))
    order = np.argsort(np.array(names))
    x = np.stack(xs)[order]
    y = np.array(ys, dtype=np.int64)[order]
    np.savez(cached, x=x, y=y)
    return x, y


def list_test(root: Path | None = None) -> list[tuple[Path, int]]:
    """Sorted (path, label) pairs of the ImageFolder test split."""
    root = root or shared_data() / "cifar10" / "test"
    out = []
    for ci, cls in enumerate(CLASSES):
        for p in sorted((root / cls).iterdir()):
            out.append((p, ci))
    return out


def load_test() -> tuple[np.ndarray, np.ndarray]:
    """Returns (images [10000, 32, 32, 3] uint8, labels [10000] int64) in sorted path order."""
    cached = cache_dir() / "cifar10_test_u8.npz"
    if cached.exists():
        z = np.load(cached)
        return z["x"], z["y"]
    pairs = list_test()
    x = np.stack([_decode(p.read_bytes()) for p, _ in pairs])
    y = np.array([c for _, c in pairs], dtype=np.int64)
    np.savez(cached, x=x, y=y)
    return x, y
