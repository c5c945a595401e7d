"""Auxiliary outliers for energy-bounded fine-tuning (Liu et al. 2020), made by seeded code.

None of these shares anything with an evaluation set (Tiny-ImageNet, MNIST, the CIFAR-10 test
split are never read here). Every source returns a batch `[B, 32, 32, 3]` uint8 (RGB), drawn
with the `numpy.random.Generator` it is given, so a seed fixes the batch.

Sources (`SOURCES`):

- `photos`: random crops, at random scales (a side from 32 px to the photo's shorter side), of
  the real photographs in `../shared/data/photos` (BSD100, Urban100), resized to 32x32 with
  Pillow's antialiased bilinear filter, randomly mirrored. `PhotoCrops(split=...)` keeps every
  fifth photo (by sorted path) out of training, for tuning.
- `faults`: what a camera does wrong, applied to in-distribution training images:
  `TRAINED_FAULTS` (Gaussian sensor noise, Gaussian blur, over-exposure, a torn frame, a covered
  lens, a monochrome frame). The camera-fault evaluation (`make_camera_faults.py`) reports these kinds apart from
  kinds that no training source makes.
- `shuffle`: the image cut into a 2x2, 4x4 or 8x8 grid of tiles, the tiles permuted (local
  statistics kept, the object destroyed).
- `mix`: two training images of different classes blended with a weight in [0.35, 0.65]
  (neither class).
- `procedural`: uniform and smoothed noise, stripes and checkerboards of random frequency,
  orientation and colours, linear gradients, random rectangles and disks on flat colour, and
  strokes (random lines and arcs, 1-4 px wide, on a flat background: drawings, overlays).
- `folder`: the user's own outliers: random crops of the images in a folder (`FolderCrops`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SIDE = 32
SOURCES = ("photos", "faults", "shuffle", "mix", "procedural")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _resize(img: Image.Image) -> np.ndarray:
    return np.asarray(img.resize((SIDE, SIDE), Image.BILINEAR, reducing_gap=None), dtype=np.uint8)


class FolderCrops:
    """Random crops at random scales of the images under `root` (any size, any depth), resized
    to 32x32. `split`: None = all images; "train" / "val" = all but / only every fifth image."""

    def __init__(self, root: Path, split: str | None = None, max_side: int = 1024):
        paths = sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if split == "train":
            paths = [p for i, p in enumerate(paths) if i % 5 != 4]
        elif split == "val":
            paths = [p for i, p in enumerate(paths) if i % 5 == 4]
        if not paths:
            raise FileNotFoundError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)})")
        self.images = []
        for p in paths:
            with Image.open(p) as im:
                im = im.convert("RGB")
                if max(im.size) > max_side:  # bound memory: large photos are shrunk once
                    im.thumbnail((max_side, max_side), Image.BILINEAR)
                self.images.append(im.copy())
        self.paths = paths

    def __call__(self, rng: np.random.Generator, n: int) -> np.ndarray:
        out = np.empty((n, SIDE, SIDE, 3), np.uint8)
        for i in range(n):
            im = self.images[rng.integers(len(self.images))]
            w, h = im.size
            s = int(np.exp(rng.uniform(np.log(SIDE), np.log(min(w, h)))))
            x0, y0 = rng.integers(0, w - s + 1), rng.integers(0, h - s + 1)
            crop = _resize(im.crop((x0, y0, x0 + s, y0 + s)))
            out[i] = crop[:, ::-1] if rng.random() < 0.5 else crop
        return out


def PhotoCrops(data_root: Path, split: str | None = None) -> FolderCrops:
    """`FolderCrops` over `data_root/photos` (BSD100 and Urban100)."""
    return FolderCrops(Path(data_root) / "photos", split)


# ---- camera faults (applied to in-distribution images) ----------------------------------------

def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of [H, W, C] float, reflect-padded."""
    r = max(1, int(np.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    p = np.pad(x, ((r, r), (r, r), (0, 0)), mode="reflect")
    p = sum(k[i] * p[i:i + x.shape[0]] for i in range(2 * r + 1))
    return sum(k[i] * p[:, i:i + x.shape[1]] for i in range(2 * r + 1))


def fault_noise(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian sensor noise, sigma 15-80 of 255, per pixel and channel."""
    return x + rng.normal(0, rng.uniform(15, 80), x.shape)


def fault_blur(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian defocus blur, sigma 1-3 px at 32x32."""
    return _blur(x, rng.uniform(1.0, 3.0))


def fault_overexposure(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gain 2-5 then clipping at 255 (blown highlights)."""
    return x * rng.uniform(2.0, 5.0) + rng.uniform(0, 60)


def fault_torn(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A torn frame: below a random row (a quarter to three quarters down) the rows are black,
    green (a YUV buffer of zeros), or the upper part repeated."""
    y = rng.integers(SIDE // 4, 3 * SIDE // 4)
    out = x.copy()
    kind = rng.integers(3)
    if kind == 0:
        out[y:] = 0
    elif kind == 1:
        out[y:] = (0, 135, 0)
    else:
        out[y:] = x[: SIDE - y]
    return out


def fault_monochrome(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A monochrome frame (a camera switched to infrared night mode): the luma (BT.601) in all
    three channels, gain 0.7-1.3."""
    y = x @ np.array([0.299, 0.587, 0.114])
    return np.repeat(y[..., None], 3, 2) * rng.uniform(0.7, 1.3)


def fault_covered(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A covered lens: a dark, nearly uniform frame (the scene at 0-8% of its light, blurred)
    plus faint noise."""
    return _blur(x, 4.0) * rng.uniform(0.0, 0.08) + rng.uniform(0, 12) + rng.normal(0, 2, x.shape)


TRAINED_FAULTS = {
    "noise": fault_noise,
    "blur": fault_blur,
    "overexposure": fault_overexposure,
    "torn": fault_torn,
    "covered": fault_covered,
    "monochrome": fault_monochrome,
}


def to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def faults(x_id: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """`n` training images, each with one of `TRAINED_FAULTS` drawn uniformly."""
    names = list(TRAINED_FAULTS)
    out = np.empty((n, SIDE, SIDE, 3), np.uint8)
    for i in range(n):
        img = x_id[rng.integers(len(x_id))].astype(np.float64)
        out[i] = to_u8(TRAINED_FAULTS[names[rng.integers(len(names))]](img, rng))
    return out


# ---- other synthetic outliers ------------------------------------------------------------------

def shuffle(x_id: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """Training images cut into a g x g grid (g in 2, 4, 8), tiles permuted."""
    out = np.empty((n, SIDE, SIDE, 3), np.uint8)
    for i in range(n):
        img = x_id[rng.integers(len(x_id))]
        g = int(rng.choice([2, 4, 8]))
        t = SIDE // g
        tiles = img.reshape(g, t, g, t, 3).transpose(0, 2, 1, 3, 4).reshape(g * g, t, t, 3)
        perm = rng.permutation(g * g)
        if g == 2:  # a permutation that moves at least two tiles
            while (perm == np.arange(4)).all():
                perm = rng.permutation(4)
        out[i] = tiles[perm].reshape(g, g, t, t, 3).transpose(0, 2, 1, 3, 4).reshape(SIDE, SIDE, 3)
    return out


def mix(x_id: np.ndarray, y_id: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """Blends of two training images of different classes, weight in [0.35, 0.65]."""
    out = np.empty((n, SIDE, SIDE, 3), np.uint8)
    for i in range(n):
        a = rng.integers(len(x_id))
        b = rng.integers(len(x_id))
        while y_id[b] == y_id[a]:
            b = rng.integers(len(x_id))
        w = rng.uniform(0.35, 0.65)
        out[i] = to_u8(w * x_id[a].astype(np.float64) + (1 - w) * x_id[b].astype(np.float64))
    return out


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3)


def procedural_one(rng: np.random.Generator) -> np.ndarray:
    kind = rng.integers(7)
    if kind == 6:
        return strokes(rng)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE].astype(np.float64)
    if kind == 0:  # uniform noise, colour or gray
        if rng.random() < 0.5:
            return rng.uniform(0, 255, (SIDE, SIDE, 3))
        return np.repeat(rng.uniform(0, 255, (SIDE, SIDE, 1)), 3, 2)
    if kind == 1:  # smoothed noise (blobs)
        return _blur(rng.normal(0, 1, (SIDE, SIDE, 3)), rng.uniform(1.5, 5.0)) * rng.uniform(150, 600) + 128
    if kind == 2 or kind == 3:  # stripes (2) or checkerboard (3)
        th = rng.uniform(0, np.pi)
        f = rng.uniform(0.05, 0.5)
        u = np.cos(th) * xx + np.sin(th) * yy
        v = -np.sin(th) * xx + np.cos(th) * yy
        s = np.sin(2 * np.pi * f * u)
        if kind == 3:
            s = s * np.sin(2 * np.pi * f * v)
        m = (s > 0)[..., None] if rng.random() < 0.5 else (0.5 + 0.5 * s)[..., None]
        return m * _colour(rng) + (1 - m) * _colour(rng)
    if kind == 4:  # linear gradient between two colours
        th = rng.uniform(0, 2 * np.pi)
        u = (np.cos(th) * (xx - 15.5) + np.sin(th) * (yy - 15.5)) / 22.6 * 0.5 + 0.5
        u = np.clip(u, 0, 1)[..., None]
        return u * _colour(rng) + (1 - u) * _colour(rng)
    img = np.broadcast_to(_colour(rng), (SIDE, SIDE, 3)).copy()  # shapes on flat colour
    for _ in range(rng.integers(1, 6)):
        c = _colour(rng)
        cx, cy, r = rng.uniform(0, SIDE), rng.uniform(0, SIDE), rng.uniform(3, 14)
        if rng.random() < 0.5:
            m = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
        else:
            m = (abs(xx - cx) < r) & (abs(yy - cy) < rng.uniform(3, 14))
        img[m] = c
    return img


def strokes(rng: np.random.Generator) -> np.ndarray:
    """1-5 random lines, polylines or arcs, 1-4 px wide, on a flat background (light on dark or
    dark on light, gray or colour), drawn by Pillow at 4x and reduced (antialiased)."""
    from PIL import ImageDraw
    gray = rng.random() < 0.5
    dark_bg = rng.random() < 0.5
    lo, hi = rng.uniform(0, 70), rng.uniform(185, 255)
    bg, fg = (lo, hi) if dark_bg else (hi, lo)
    if gray:
        bgc, fgc = (bg,) * 3, (fg,) * 3
    else:
        bgc = tuple(np.clip(bg + rng.normal(0, 30, 3), 0, 255))
        fgc = tuple(np.clip(fg + rng.normal(0, 30, 3), 0, 255))
    big = SIDE * 4
    im = Image.new("RGB", (big, big), tuple(int(v) for v in bgc))
    d = ImageDraw.Draw(im)
    for _ in range(rng.integers(1, 6)):
        w = int(rng.integers(1, 5) * 4)
        col = tuple(int(v) for v in fgc)
        kind = rng.integers(3)
        if kind == 0:
            d.line([tuple(rng.uniform(8, big - 8, 2)) for _ in range(2)], fill=col, width=w)
        elif kind == 1:
            d.line([tuple(rng.uniform(8, big - 8, 2)) for _ in range(int(rng.integers(3, 6)))], fill=col, width=w, joint="curve")
        else:
            c, r = rng.uniform(24, big - 24, 2), rng.uniform(12, 56)
            a0 = rng.uniform(0, 360)
            d.arc([c[0] - r, c[1] - r, c[0] + r, c[1] + r], a0, a0 + rng.uniform(90, 360), fill=col, width=w)
    return np.asarray(im.resize((SIDE, SIDE), Image.BILINEAR, reducing_gap=None), dtype=np.float64)


def procedural(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.stack([to_u8(procedural_one(rng)) for _ in range(n)])


class Outliers:
    """A mixture of sources: each batch draws its `n` images from the chosen sources in equal
    shares (the remainder to the first ones). `x_id`, `y_id`: the in-distribution training
    images `[N, 32, 32, 3]` uint8 and labels, for the sources made from them."""

    def __init__(self, sources: list[str], x_id: np.ndarray, y_id: np.ndarray,
                 photos: FolderCrops | None = None, folder: FolderCrops | None = None):
        unknown = [s for s in sources if s not in SOURCES + ("folder",)]
        if unknown:
            raise ValueError(f"unknown outlier source(s) {unknown}; known: {', '.join(SOURCES + ('folder',))}")
        if not sources:
            raise ValueError("no outlier source")
        self.sources, self.x_id, self.y_id, self.photos, self.folder = sources, x_id, y_id, photos, folder

    def draw(self, source: str, rng: np.random.Generator, n: int) -> np.ndarray:
        if source == "photos":
            return self.photos(rng, n)
        if source == "folder":
            return self.folder(rng, n)
        if source == "faults":
            return faults(self.x_id, rng, n)
        if source == "shuffle":
            return shuffle(self.x_id, rng, n)
        if source == "mix":
            return mix(self.x_id, self.y_id, rng, n)
        return procedural(rng, n)

    def __call__(self, rng: np.random.Generator, n: int) -> np.ndarray:
        k = len(self.sources)
        counts = [n // k + (1 if i < n % k else 0) for i in range(k)]
        return np.concatenate([self.draw(s, rng, c) for s, c in zip(self.sources, counts) if c])
