#!/usr/bin/env python3
"""Camera faults at full resolution on real photographs: what the frame-health scores and the
energy reject, combined under one guarantee (issue 19's evaluation).

For each of several seeded splits of the 200 photos of ../shared/data/photos (BSD100 and
Urban100, native resolution about 480 x 320 and 512 x 340-512), half the photos calibrate and
half are test photos. Each photo gives 4 frames: the 360 x 240 corner crops of the photo turned
to landscape. Calibration frames go to one subfolder per photo (so `calibrate` keeps a photo's
frames on one side of its fit/combine split); `ebm-gate calibrate BUNDLE --id calib --scores all
--holdout 0` fits the gate. The test photos' 4 frames measure false rejection; their first
frame gets every fault below (seeded), and `ebm-gate score --json` judges them. Rejection is
counted combined (the verdict) and per score (the score is in the record's `rejected_by`: it
alone puts the frame over the combined level).

With --fixed-camera N, a second evaluation follows: N photos (seeded) each become the scene of
a fixed camera, which sees it through a 360 x 240 window that shakes by up to 6 pixels, an
exposure that flickers by 3% (a gain with standard deviation 0.03) and sensor noise of 2 levels
per channel. Each camera calibrates its own gate on 120 such frames and is tested on 40 new
clean frames and on the faults above applied to 20 of them.

Frames are written under --work (never inside the repository) and are not kept by the project.

    python models/tools/eval_health_faults.py --bin target/debug/ebm-gate --bundle models/cifar10-airnet \
        --photos ../shared/data/photos --work /tmp/health-eval --splits 30 --fixed-camera 20 \
        --json docs/health_faults.json
"""
import argparse
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.filters import gaussian

SCORES = ["energy", "sharpness", "noise_sigma", "dark_fraction", "bright_fraction", "mean_luma", "luma_p99", "colour_cast"]
CROP_W, CROP_H = 360, 240


def crops(path):
    img = Image.open(path).convert("RGB")
    if img.height > img.width:
        img = img.transpose(Image.Transpose.ROTATE_90)
    a = np.asarray(img)
    h, w = a.shape[:2]
    return [a[y : y + CROP_H, x : x + CROP_W] for y in (0, h - CROP_H) for x in (0, w - CROP_W)]


def clip(a):
    return np.clip(np.round(a), 0, 255).astype(np.uint8)


def motion_blur(a, length):
    # Horizontal box of `length` pixels (a camera panning during the exposure), edges repeated.
    pad = np.pad(a.astype(np.float64), ((0, 0), (length // 2, length - 1 - length // 2), (0, 0)), mode="edge")
    c = np.cumsum(pad, axis=1)
    c = np.concatenate([np.zeros_like(c[:, :1]), c], axis=1)
    return clip((c[:, length:] - c[:, :-length]) / length)


def faults(a, rng):
    f = a.astype(np.float64)
    out = {}
    for s in (10, 20, 40):
        out[f"noise_sigma{s}"] = clip(f + rng.normal(0, s, f.shape))
    for s in (1.5, 3, 5):
        out[f"defocus_sigma{s}"] = clip(gaussian(f, sigma=s, channel_axis=-1, preserve_range=True))
    out["motion_blur15"] = motion_blur(a, 15)
    out["over_exposed_x2.5"] = clip(f * 2.5)
    out["under_exposed_x0.25"] = clip(f * 0.25)
    lens = 6 + 2 * rng.normal(0, 1, f.shape[:2])
    out["covered_lens"] = clip(np.stack([lens, lens, lens + 1], axis=-1))
    torn = a.copy()
    torn[int(0.55 * a.shape[0]) :] = 0  # rows the camera never wrote
    out["torn_45pct"] = torn
    out["colour_cast"] = clip(f * np.array([1.35, 1.0, 0.7]))
    return out


def fresh_work(a, name):
    """An empty folder --work/name holding a copy of the bundle; (folder, bundle)."""
    work = Path(a.work) / name
    shutil.rmtree(work, ignore_errors=True)
    bundle = work / "bundle"
    bundle.mkdir(parents=True)
    for f in ("model.onnx", "gate.json"):
        shutil.copy(Path(a.bundle) / f, bundle / f)
    return work, bundle


def camera(photo, rng, n):
    """n frames of a fixed camera looking at `photo` (landscape): a 360 x 240 window at the
    centre, shaken by up to 6 px, gain N(1, 0.03), sensor noise N(0, 2) per channel."""
    img = Image.open(photo).convert("RGB")
    if img.height > img.width:
        img = img.transpose(Image.Transpose.ROTATE_90)
    a = np.asarray(img).astype(np.float64)
    h, w = a.shape[:2]
    y0, x0 = (h - CROP_H) // 2, (w - CROP_W) // 2
    out = []
    for _ in range(n):
        dy, dx = rng.integers(-6, 7, size=2)
        y, x = int(np.clip(y0 + dy, 0, h - CROP_H)), int(np.clip(x0 + dx, 0, w - CROP_W))
        f = a[y : y + CROP_H, x : x + CROP_W] * rng.normal(1.0, 0.03)
        out.append(clip(f + rng.normal(0, 2, f.shape)))
    return out


def judge(binary, bundle, folder):
    """Per frame of `folder`: (rejected, rejected_by) from `ebm-gate score --json`."""
    recs = [json.loads(l) for l in run([binary, "score", str(bundle), str(folder), "--json"]).splitlines()]
    return [(r["verdict"] == "out_of_distribution", r.get("rejected_by") or []) for r in recs]


def fixed_camera(a, photos):
    rng = np.random.default_rng(2000)
    scenes = [photos[i] for i in rng.permutation(len(photos))[: a.fixed_camera]]
    counts = {}
    clean_by_scene = []
    for k, photo in enumerate(scenes):
        work, bundle = fresh_work(a, f"camera{k}")
        frames = camera(photo, rng, 160)
        (work / "calib").mkdir()
        for i, f in enumerate(frames[:120]):
            Image.fromarray(f).save(work / "calib" / f"{i:03d}.png")
        (work / "test" / "clean").mkdir(parents=True)
        for i, f in enumerate(frames[120:]):
            Image.fromarray(f).save(work / "test" / "clean" / f"{i:03d}.png")
            if i < 20:
                for name, img in faults(f, rng).items():
                    (work / "test" / name).mkdir(exist_ok=True)
                    Image.fromarray(img).save(work / "test" / name / f"{i:03d}.png")
        run([a.bin, "calibrate", str(bundle), "--id", str(work / "calib"), "--scores", "all", "--holdout", "0",
             "--alpha", str(a.alpha), "--seed", str(k)])
        line = []
        for kind in sorted(p.name for p in (work / "test").iterdir()):
            res = judge(a.bin, bundle, work / "test" / kind)
            c = counts.setdefault(kind, {"n": 0, "combined": 0, "per_score": {s: 0 for s in SCORES}})
            c["n"] += len(res)
            c["combined"] += sum(r for r, _ in res)
            for s in SCORES:
                c["per_score"][s] += sum(s in by for _, by in res)
            if kind == "clean":
                clean_by_scene.append(sum(r for r, _ in res) / len(res))
            line.append(f"{kind} {100 * sum(r for r, _ in res) / len(res):.0f}")
        print(f"camera {k} ({photo.parent.name}/{photo.name}): " + ", ".join(line))
    print(f"\nfixed cameras: {a.fixed_camera} scenes, 120 calibration frames each, alpha {a.alpha}: rejected")
    print(f"{'frames':22s} {'n':>5s} {'combined':>9s} " + " ".join(f"{s[:10]:>10s}" for s in SCORES))
    table = {}
    for kind, c in sorted(counts.items()):
        n = c["n"]
        table[kind] = {"n": n, "combined": c["combined"] / n, "per_score": {s: v / n for s, v in c["per_score"].items()}}
        print(f"{kind:22s} {n:5d} {100 * c['combined'] / n:8.1f}% " +
              " ".join(f"{100 * v / n:9.1f}%" for v in c["per_score"].values()))
    print("clean false rejection by camera:", " ".join(f"{100 * x:.0f}%" for x in clean_by_scene))
    table["clean"]["combined_by_camera"] = clean_by_scene
    return table


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr}")
    return r.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--photos", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--splits", type=int, default=5)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--fixed-camera", type=int, default=0, metavar="N",
                    help="also evaluate N fixed cameras, each calibrated on its own scene")
    ap.add_argument("--json")
    a = ap.parse_args()
    photos = sorted(Path(a.photos).glob("bsd100/*.png")) + sorted(Path(a.photos).glob("urban100/*.jpg"))
    assert len(photos) == 200, len(photos)
    all_crops = {p: crops(p) for p in photos}
    results = []
    for split in range(a.splits):
        rng = np.random.default_rng(1000 + split)
        order = rng.permutation(len(photos))
        cal, test = [photos[i] for i in order[:100]], [photos[i] for i in order[100:]]
        work, bundle = fresh_work(a, f"split{split}")
        for p in cal:
            d = work / "calib" / f"{p.parent.name}_{p.stem}"
            d.mkdir(parents=True)
            for k, c in enumerate(all_crops[p]):
                Image.fromarray(c).save(d / f"crop{k}.png")
        (work / "test" / "clean").mkdir(parents=True)
        for p in test:
            for k, c in enumerate(all_crops[p]):
                Image.fromarray(c).save(work / "test" / "clean" / f"{p.parent.name}_{p.stem}_crop{k}.png")
            for name, img in faults(all_crops[p][0], rng).items():
                d = work / "test" / name
                d.mkdir(exist_ok=True)
                Image.fromarray(img).save(d / f"{p.parent.name}_{p.stem}.png")
        out = run([a.bin, "calibrate", str(bundle), "--id", str(work / "calib"), "--scores", "all", "--holdout", "0",
                   "--alpha", str(a.alpha), "--seed", str(split)])
        print(out.splitlines()[0])
        split_res = {"split": split, "kinds": {}}
        for kind in sorted(p.name for p in (work / "test").iterdir()):
            recs = [json.loads(l) for l in run([a.bin, "score", str(bundle), str(work / "test" / kind), "--json"]).splitlines()]
            n = len(recs)
            combined = sum(r["verdict"] == "out_of_distribution" for r in recs)
            per = {s: sum(s in (r.get("rejected_by") or []) for r in recs) for s in SCORES}
            split_res["kinds"][kind] = {"n": n, "combined": combined, "per_score": per}
            print(f"split {split} {kind:22s} n {n:4d} combined {100 * combined / n:6.1f}%  " +
                  " ".join(f"{s} {100 * v / n:.0f}" for s, v in per.items()))
        results.append(split_res)
    out = {"alpha": a.alpha, "splits": a.splits}
    if a.splits:
        out["table"] = photo_table(a, results)
    if a.fixed_camera:
        out["fixed_camera"] = {"cameras": a.fixed_camera, "table": fixed_camera(a, photos)}
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")


def photo_table(a, results):
    kinds = sorted(results[0]["kinds"])
    print(f"\nalpha {a.alpha}, {a.splits} splits: rejected, mean over splits (per score: the score alone over the level)")
    header = f"{'frames':22s} {'n':>5s} {'combined':>9s} " + " ".join(f"{s[:10]:>10s}" for s in SCORES)
    print(header)
    table = {}
    for kind in kinds:
        n = sum(r["kinds"][kind]["n"] for r in results)
        comb = sum(r["kinds"][kind]["combined"] for r in results)
        per = {s: sum(r["kinds"][kind]["per_score"][s] for r in results) for s in SCORES}
        table[kind] = {"n": n, "combined": comb / n, "per_score": {s: v / n for s, v in per.items()},
                       "combined_by_split": [r["kinds"][kind]["combined"] / r["kinds"][kind]["n"] for r in results]}
        print(f"{kind:22s} {n:5d} {100 * comb / n:8.1f}% " + " ".join(f"{100 * per[s] / n:9.1f}%" for s in SCORES))
    print("clean false rejection by split:", " ".join(f"{100 * x:.1f}%" for x in table["clean"]["combined_by_split"]))
    return table


if __name__ == "__main__":
    main()
