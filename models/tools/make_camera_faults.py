"""Camera faults at 32x32, made from CIFAR-10 test pictures by seeded code, for `ebm-gate eval`.

    python models/tools/make_camera_faults.py --out /tmp/faults            # writes the PNG folders
    ebm-gate eval MODEL --id ../shared/data/cifar10/test $(cat /tmp/faults/ood_args.txt) --json eval.json
    python models/tools/make_camera_faults.py --report eval.json [--report old_eval.json]

Writes `OUT/<group>/<kind>/NNNN.png` (never into the repo: the pictures come from
../shared/data) from 1,000 test pictures (every tenth, 100 per class), one fault each, seed
fixed per kind, and `OUT/ood_args.txt` (the `--ood NAME=DIR` arguments). Two groups:

- `trained`: the kinds the fine-tuning outliers include (`outliers.TRAINED_FAULTS`, the same
  functions): Gaussian sensor noise, Gaussian blur, over-exposure, a torn frame, a covered lens.
- `unseen`: kinds no training source makes, defined only here: under-exposure, salt-and-pepper
  (dead and hot pixels), motion blur, fog (low contrast), colour cast (white balance), pixelation,
  JPEG blocking, interlacing (odd rows shifted).

`--report FILE` reads `ebm-gate eval --json` reports and prints each kind's energy FPR@95TPR and
AUROC and each group's mean, a column per report.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

import cifar10_data as data
import outliers as outl

SEED = 20261201


def underexposure(x, rng):
    """Gain 0.08-0.3 (a dark scene, shutter too short), faint read noise."""
    return x * rng.uniform(0.08, 0.3) + rng.normal(0, 1.5, x.shape)


def salt_pepper(x, rng):
    """5-20% of pixels stuck at 0 or 255 (each channel alike)."""
    out = x.copy()
    m = rng.random(x.shape[:2]) < rng.uniform(0.05, 0.2)
    out[m] = np.where(rng.random(m.sum()) < 0.5, 0.0, 255.0)[:, None]
    return out


def motion_blur(x, rng):
    """A line kernel of 5-11 px at a random angle (camera shake)."""
    n = int(rng.integers(5, 12))
    th = rng.uniform(0, np.pi)
    acc = np.zeros_like(x)
    for t in np.linspace(-(n - 1) / 2, (n - 1) / 2, n):
        dx, dy = int(round(t * np.cos(th))), int(round(t * np.sin(th)))
        acc += np.roll(np.pad(x, ((6, 6), (6, 6), (0, 0)), mode="reflect"), (dy, dx), (0, 1))[6:-6, 6:-6]
    return acc / n


def fog(x, rng):
    """Contrast cut to 15-40% around a light gray (haze, a dirty lens)."""
    k = rng.uniform(0.15, 0.4)
    return k * x + (1 - k) * rng.uniform(150, 220)


def colour_cast(x, rng):
    """Wrong white balance: one channel at 0.3-0.6 of its level, another at 1.3-1.8."""
    g = np.ones(3)
    a, b = rng.choice(3, 2, replace=False)
    g[a], g[b] = rng.uniform(0.3, 0.6), rng.uniform(1.3, 1.8)
    return x * g


def pixelation(x, rng):
    """Blocks of 4 or 8 px (a stream at a fraction of its resolution, upscaled)."""
    b = int(rng.choice([4, 8]))
    small = x.reshape(32 // b, b, 32 // b, b, 3).mean((1, 3))
    return np.repeat(np.repeat(small, b, 0), b, 1)


def jpeg_blocking(x, rng):
    """JPEG at quality 2-6 (a starved encoder)."""
    buf = io.BytesIO()
    Image.fromarray(outl.to_u8(x)).save(buf, "JPEG", quality=int(rng.integers(2, 7)))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.float64)


def interlacing(x, rng):
    """Odd rows shifted by 2-5 px (a field mismatch)."""
    out = x.copy()
    out[1::2] = np.roll(x[1::2], int(rng.integers(2, 6)) * (1 if rng.random() < 0.5 else -1), 1)
    return out


UNSEEN_FAULTS = {
    "underexposure": underexposure,
    "salt_pepper": salt_pepper,
    "motion_blur": motion_blur,
    "fog": fog,
    "colour_cast": colour_cast,
    "pixelation": pixelation,
    "jpeg": jpeg_blocking,
    "interlacing": interlacing,
}
GROUPS = {"trained": outl.TRAINED_FAULTS, "unseen": UNSEEN_FAULTS}


def make(out: Path) -> None:
    pairs = data.list_test()[::10]
    pics = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float64) for p, _ in pairs]
    args = []
    for g, (group, kinds) in enumerate(GROUPS.items()):
        for k, (name, fn) in enumerate(kinds.items()):
            d = out / group / name
            d.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng([SEED, g, k])
            for i, pic in enumerate(pics):
                Image.fromarray(outl.to_u8(fn(pic, rng))).save(d / f"{i:04d}.png")
            args.append(f"--ood {group}/{name}={d}")
        print(f"{group}: {', '.join(kinds)} ({len(pics)} each)")
    (out / "ood_args.txt").write_text(" ".join(args) + "\n")
    print(f"wrote {out}; eval arguments in {out / 'ood_args.txt'}")


def report(files: list[Path]) -> None:
    reps = [json.loads(f.read_text()) for f in files]

    def energy_metrics(rep):
        got = {}
        for o in rep["ood"]:
            for s in o["metrics"]:
                if s["score"] == "energy":
                    got[o["name"]] = (s["fpr_at_95_tpr"], s["auroc"])
        return got

    ms = [energy_metrics(r) for r in reps]
    head = " | ".join(f"{f.name} FPR@95TPR / AUROC" for f in files)
    print(f"| fault | {head} |")
    print("|---|" + "---|" * len(files))
    for group, kinds in GROUPS.items():
        for name in kinds:
            key = f"{group}/{name}"
            cells = " | ".join(f"{m[key][0]:.1%} / {m[key][1]:.4f}" if key in m else "-" for m in ms)
            print(f"| {key} | {cells} |")
        means = []
        for m in ms:
            v = [m[f"{group}/{n}"] for n in kinds if f"{group}/{n}" in m]
            means.append(f"{np.mean([a for a, _ in v]):.1%} / {np.mean([b for _, b in v]):.4f}" if v else "-")
        print(f"| **{group} mean** | {' | '.join(means)} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="write the fault folders here (outside the repo)")
    ap.add_argument("--report", type=Path, action="append", help="an `ebm-gate eval --json` report; repeat to compare")
    a = ap.parse_args()
    if not a.out and not a.report:
        ap.error("give --out DIR and/or --report FILE")
    if a.out:
        make(a.out)
    if a.report:
        report(a.report)


if __name__ == "__main__":
    main()
