"""Which auxiliary-outlier sources matter: short fine-tunes with each source left out.

    python models/tools/ablation_ebm.py [--steps 150] [--json FILE]

For each of "all five sources" and "all but S" (S in outliers.SOURCES), runs `finetune_ebm.py
--limit-steps STEPS` (the same start, seed and settings; the cosine schedule ends at STEPS) and
then measures, in PyTorch at T = 1, the energy FPR@95TPR (ID positive) of:

- the validation outliers of every source (held-out photos, synthetic outliers from held-out
  training images): a left-out source's column shows how well the others generalise to it;
- for reporting only (nothing is chosen by them here): Tiny-ImageNet (every 5th of 10,000) and
  MNIST (every 5th) against every 5th CIFAR-10 test image, and the mean over the `unseen`
  camera-fault kinds of `make_camera_faults.py` (200 test pictures each).

A short run is not the reference recipe (6 epochs); the table ranks sources, it does not give
the final figures. Prints a Markdown table; `--json` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import cifar10_data as data
import outliers as outl
from eval_reference import mnist
from export_cifar10 import load_model
from finetune_ebm import energies_and_logits, fpr_at_95_tpr
from make_camera_faults import UNSEEN_FAULTS
from train_cifar10 import normalise as norm

HERE = Path(__file__).resolve().parent


def energy(model, x: torch.Tensor) -> np.ndarray:
    return energies_and_logits(model, x, torch.device("cpu"))[0]


def report_sets() -> dict[str, torch.Tensor]:
    x_test, _ = data.load_test()
    sets = {"id": norm(x_test[::5])}
    tiny = sorted((data.shared_data() / "tinyimagenet32" / "test").iterdir())[::5]
    sets["tinyimagenet"] = norm(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in tiny]))
    sets["mnist"] = torch.from_numpy(mnist(data.shared_data() / "mnist" / "t10k-images-idx3-ubyte.gz")[::5])
    pics = x_test[::50].astype(np.float64)
    for k, (name, fn) in enumerate(UNSEEN_FAULTS.items()):
        rng = np.random.default_rng([7, k])
        sets[f"fault_{name}"] = norm(np.stack([outl.to_u8(fn(p, rng)) for p in pics]))
    return sets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_flush_denormal(True)
    sets = report_sets()
    rows = []
    for drop in ["none", *outl.SOURCES]:
        sources = [s for s in outl.SOURCES if s != drop]
        run = f"ablation-{drop}"
        subprocess.run([sys.executable, str(HERE / "finetune_ebm.py"), "--limit-steps", str(args.steps),
                        "--val-per-source", "500", "--sources", ",".join(sources), "--run", run],
                       check=True, stdout=subprocess.DEVNULL)
        model, meta = load_model(data.cache_dir() / f"{run}.final.pt")
        last = meta["log"][-1]
        e_id = energy(model, sets["id"])
        row = {"left_out": drop, "held_out_acc": last["held_out_acc"],
               **{f"val_{s}": last[f"fpr95_{s}"] for s in outl.SOURCES},
               "tinyimagenet": fpr_at_95_tpr(e_id, energy(model, sets["tinyimagenet"])),
               "mnist": fpr_at_95_tpr(e_id, energy(model, sets["mnist"])),
               "unseen_faults": float(np.mean([fpr_at_95_tpr(e_id, energy(model, v))
                                               for k, v in sets.items() if k.startswith("fault_")]))}
        rows.append(row)
        print(json.dumps(row), flush=True)
    cols = ["held_out_acc", *[f"val_{s}" for s in outl.SOURCES], "tinyimagenet", "mnist", "unseen_faults"]
    print("| left out | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for r in rows:
        print(f"| {r['left_out']} | " + " | ".join(f"{100 * r[c]:.1f}%" for c in cols) + " |")
    if args.json:
        args.json.write_text(json.dumps({"steps": args.steps, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
