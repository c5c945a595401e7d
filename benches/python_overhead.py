#!/usr/bin/env python3
"""What the Python binding costs per frame over the Rust runtime it wraps.

Times `ebm_gate.Gate.score(frame)` (NumPy array in, Result out: the copy into an RGB picture,
resize and normalisation, the forward pass with the GIL released, scores and verdict, the
Result object) on the bundle's sample frames decoded in memory, and `ebm-gate bench` on the
same frames, model and thread count (its preprocess, forward and gate stages: the same work
in Rust, without Python). Reported: the per-frame medians and the overhead
`python / (preprocess + forward + gate) - 1`, alternating the two sides --repeat times (this
shared VM's timings drift by 10-50% within minutes).

    ~/.venvs/gate/bin/python benches/python_overhead.py --bin target/release/ebm-gate \\
        [--model models/cifar10-airnet] [--runs 300] [--repeat 3] [--json docs/python_overhead.json]

Needs the ebm_gate wheel built with --release and Pillow in that Python.
"""

import argparse
import json
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

import ebm_gate

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def rust_stages(binary, model, frames_dir, runs, threads):
    """`ebm-gate bench`'s per-frame medians (ms) of the stages a Python score() also runs."""
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "bench.json"
        subprocess.run(
            [binary, "bench", model, "--frames", frames_dir, "--runs", str(runs), "--warmup", "10",
             "--no-gradient", "--threads", str(threads), "--json", out],
            check=True, capture_output=True,
        )
        report = json.loads(out.read_text())
    stages = {s["stage"]: s["per_frame_p50_ms"] for s in report["stages"]}
    return stages, report["machine"]


def python_score(gate, arrays, runs):
    """Median ms of gate.score over `runs` calls cycling through `arrays`, after a warm-up."""
    for a in arrays * 3:
        gate.score(a)
    times = []
    for i in range(runs):
        a = arrays[i % len(arrays)]
        t = time.perf_counter()
        gate.score(a)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bin", default="target/release/ebm-gate")
    p.add_argument("--model", default="models/cifar10-airnet")
    p.add_argument("--frames", help="folder of frames (default: the bundle's samples/)")
    p.add_argument("--size", help="resize the frames to WIDTHxHEIGHT first (Pillow, bicubic; saved as PNG in a temporary folder)")
    p.add_argument("--runs", type=int, default=300)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="write the report here")
    args = p.parse_args()
    frames_dir = pathlib.Path(args.frames or pathlib.Path(args.model) / "samples")
    paths = sorted(f for f in frames_dir.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    tmp = tempfile.TemporaryDirectory()
    if args.size:
        w, h = (int(v) for v in args.size.split("x"))
        for f in paths:
            Image.open(f).convert("RGB").resize((w, h), Image.BICUBIC).save(pathlib.Path(tmp.name) / (f.stem + ".png"))
        frames_dir = pathlib.Path(tmp.name)
        paths = sorted(frames_dir.iterdir())
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in paths]
    gate = ebm_gate.Gate(args.model, threads=args.threads)
    rounds = []
    for r in range(args.repeat):
        stages, machine = rust_stages(args.bin, args.model, frames_dir, args.runs, args.threads)
        rust = stages["preprocess"] + stages["forward"] + stages["gate"]
        py = python_score(gate, arrays, args.runs)
        rounds.append({"python_score_ms": py, "rust_preprocess_forward_gate_ms": rust,
                       "rust_forward_ms": stages["forward"], "overhead": py / rust - 1})
        print(f"round {r + 1}: python score {py:.3f} ms, rust preprocess+forward+gate {rust:.3f} ms "
              f"(forward {stages['forward']:.3f}), overhead {100 * (py / rust - 1):+.1f}%", file=sys.stderr)
    report = {
        "generator": "benches/python_overhead.py",
        "model": args.model,
        "frames": [str(f) for f in paths] if not args.size else f"{len(paths)} frames of {args.frames or args.model + '/samples'} resized to {args.size}",
        "frame_shapes": sorted({list(a.shape).__repr__() for a in arrays}),
        "runs": args.runs,
        "threads": args.threads,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "ebm_gate": ebm_gate.__version__,
        "machine": machine,
        "rounds": rounds,
        "overhead_median": statistics.median(r["overhead"] for r in rounds),
    }
    print(json.dumps(report, indent=2))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
