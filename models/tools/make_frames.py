"""Makes the frames that ship in the repo: none comes from ../shared/data.

    python models/tools/make_frames.py

1. Quick-start samples, `models/cifar10-airnet/samples/`: scikit-image's bundled data images
   that carry CC0 or public-domain terms (chelsea: CC0, Stefan van der Walt; coffee: CC0,
   Rachel Michetti; astronaut: NASA, public domain; rocket: SpaceX, public domain; horse: CC0,
   Andreas Preuss), scaled down (shorter side 96 px, Lanczos) to keep the repo small, plus
   synthetic frames made here with a seeded RNG (32x32 noise, a flat gray frame).
2. Golden frames, `tests/data/frames/`: 24 PNGs at 32x32 (the model's size, so decoding is
   exact and preprocessing is only normalisation): crops of the same scikit-image photos and
   seeded synthetic patterns.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data as skdata

ROOT = Path(__file__).resolve().parents[2]
SEED = 20261129

PHOTOS = {
    "chelsea": skdata.chelsea,      # a cat
    "coffee": skdata.coffee,
    "astronaut": skdata.astronaut,
    "rocket": skdata.rocket,
    "horse": skdata.horse,          # a binary silhouette
}


def to_pil(a: np.ndarray) -> Image.Image:
    if a.dtype == bool:
        a = (~a).astype(np.uint8) * 255  # silhouette dark on white
    if a.ndim == 2:
        a = np.stack([a] * 3, -1)
    return Image.fromarray(a.astype(np.uint8)).convert("RGB")


def shrink(im: Image.Image, shorter: int) -> Image.Image:
    w, h = im.size
    s = shorter / min(w, h)
    return im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.LANCZOS)


def main() -> None:
    rng = np.random.default_rng(SEED)
    samples = ROOT / "models" / "cifar10-airnet" / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    for name, fn in PHOTOS.items():
        im = shrink(to_pil(fn()), 96)
        if name == "rocket":
            im.save(samples / f"{name}.jpg", quality=90)
        else:
            im.save(samples / f"{name}.png")
    # sensor noise at the model's size (noise made larger would be averaged away by the resize)
    noise_rng = np.random.default_rng(SEED + 1)
    Image.fromarray(noise_rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(samples / "noise.png")
    Image.fromarray(np.full((96, 96, 3), 128, np.uint8)).save(samples / "flat_gray.png")

    frames = ROOT / "tests" / "data" / "frames"
    frames.mkdir(parents=True, exist_ok=True)
    for old in frames.glob("*.png"):
        old.unlink()
    k = 0
    for name, fn in PHOTOS.items():
        im = to_pil(fn())
        w, h = im.size
        m = min(w, h)
        # the centred square, and two random square crops, each resized to 32x32
        boxes = [((w - m) // 2, (h - m) // 2, (w - m) // 2 + m, (h - m) // 2 + m)]
        for _ in range(2):
            side = int(rng.integers(m // 3, m))
            x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
            boxes.append((x0, y0, x0 + side, y0 + side))
        for j, box in enumerate(boxes):
            im.resize((32, 32), Image.BILINEAR, box=box).save(frames / f"{k:02d}_{name}_{j}.png")
            k += 1
    synth = {
        "uniform_noise": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
        "gaussian_noise": np.clip(rng.normal(128, 40, (32, 32, 3)), 0, 255).astype(np.uint8),
        "black": np.zeros((32, 32, 3), np.uint8),
        "white": np.full((32, 32, 3), 255, np.uint8),
        "gray": np.full((32, 32, 3), 128, np.uint8),
        "h_gradient": np.broadcast_to(np.linspace(0, 255, 32)[None, :, None], (32, 32, 3)).astype(np.uint8),
        "checkerboard": ((np.indices((32, 32)).sum(0) // 4) % 2 * 255)[..., None].repeat(3, -1).astype(np.uint8),
        "color_blobs": np.clip(rng.normal(0, 1, (4, 4, 3)) * 60 + 128, 0, 255).astype(np.uint8).repeat(8, 0).repeat(8, 1),
        "sky_over_sea": np.concatenate([np.broadcast_to(np.array([120, 170, 230], np.uint8), (16, 32, 3)),
                                        np.broadcast_to(np.array([20, 60, 120], np.uint8), (16, 32, 3))]),
    }
    for name, a in synth.items():
        Image.fromarray(np.ascontiguousarray(a)).save(frames / f"{k:02d}_{name}.png")
        k += 1
    print(f"wrote {len(list(samples.iterdir()))} samples to {samples} and {k} frames to {frames}")


if __name__ == "__main__":
    main()
