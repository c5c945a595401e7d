#!/usr/bin/env python3
"""False alarms of `ebm-gate stream` on a long in-distribution feed, against the formula of
`ebm_gate::alarms` (issue 20, item 6).

The feed: the held-out half of the CIFAR-10 test split (the frames the reference bundle's
calibration did not see; the split is gate.json's provenance: sha256(seed as 8 little-endian
bytes + relative name), first 8 bytes big-endian / 2^64 < holdout), decoded to 32x32 rgb24 and
concatenated in --passes seeded random orders: frames that are independent of each other, as
the formula assumes. With --repeat R > 1 every frame is sent R times in a row, a crude model of a
static scene at a high frame rate (correlated verdicts), to show how far such a feed departs
from the formula.

For each debouncer (--settings alpha:window:enter:exit, ...) the stream's final summary gives the
alarms (switches into out_of_distribution) and `alarm_model.expected_alarms` (the formula at
p = alpha); the script adds the expectation at the observed rejection rate (the same formula
with p = rejected / frames, from `ebm-gate plan`; for plain k-of-n also restated here in closed
form).

    python models/tools/measure_alarm_rate.py --bin target/release/ebm-gate \
        --bundle models/cifar10-airnet --cifar ../shared/data/cifar10/test --passes 5 \
        --settings 0.1:5:2:1,0.05:5:2:1,0.1:5:3:2,0.1:8:3:0 --json docs/alarm_rate.json
"""
import argparse
import hashlib
import json
import math
import os
import subprocess
import sys

import numpy as np
from PIL import Image


def held_out(name, holdout, seed):
    h = hashlib.sha256(int(seed).to_bytes(8, "little") + name.encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64 < holdout


def k_of_n_rate(p, n, k):
    return math.comb(n - 1, k - 1) * p**k * (1 - p) ** (n - k + 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--cifar", required=True, help="the CIFAR-10 test folder (class/NNNN.jpg)")
    ap.add_argument("--passes", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--seed", type=int, default=20)
    ap.add_argument("--settings", default="0.1:5:2:1,0.05:5:2:1,0.1:5:3:2,0.1:8:3:0")
    ap.add_argument("--json")
    a = ap.parse_args()

    gate = json.load(open(os.path.join(a.bundle, "gate.json")))
    split = gate["provenance"]["split"]
    names = []
    for cls in sorted(os.listdir(a.cifar)):
        for f in sorted(os.listdir(os.path.join(a.cifar, cls))):
            rel = f"{cls}/{f}"
            if held_out(rel, split["holdout"], split["seed"]):
                names.append(rel)
    assert len(names) == split["n_held_out"], (len(names), split["n_held_out"])
    frames = np.stack([np.asarray(Image.open(os.path.join(a.cifar, n)).convert("RGB")) for n in names])
    rng = np.random.default_rng(a.seed)
    order = np.concatenate([rng.permutation(len(frames)) for _ in range(a.passes)])
    feed = np.repeat(frames[order], a.repeat, axis=0).tobytes()
    print(f"{len(names)} held-out frames x {a.passes} orders x {a.repeat} = {len(order) * a.repeat} frames", file=sys.stderr)

    results = []
    for s in a.settings.split(","):
        alpha, n, enter, exit_ = s.split(":")
        cmd = [a.bin, "stream", a.bundle, "--format", "rgb24", "--size", "32x32", "--alpha", alpha,
               "--window", n, "--enter", enter, "--exit", exit_, "--stall-timeout", "0",
               "--every", "100000000", "--frozen-after", "0"]
        out = subprocess.run(cmd, input=feed, capture_output=True, check=True).stdout.decode()
        summary = [json.loads(l) for l in out.splitlines() if '"summary"' in l][-1]
        p_obs = summary["rejected"] / summary["frames"]
        model = summary["alarm_model"]
        row = {
            "alpha": float(alpha), "window": int(n), "enter": int(enter), "exit": int(exit_),
            "frames": summary["frames"], "rejected": summary["rejected"], "rejection_rate": p_obs,
            "alarms": summary["alarms"], "expected_at_alpha": model["expected_alarms"],
            "method": model["method"],
        }
        # The formula at the observed rate, from `ebm-gate plan` (exact for every setting),
        # and for plain k-of-n restated here in closed form.
        plan = subprocess.run([a.bin, "plan", "--fps", "1", "--alpha", f"{p_obs:.9f}", "--window", n,
                               "--enter", enter, "--exit", exit_, "--json"], capture_output=True, check=True)
        per_frame = json.loads(plan.stdout)["rows"][0]["false_alarms_per_frame"]
        row["expected_at_observed_rate"] = per_frame * summary["frames"]
        if int(exit_) == int(enter) - 1:
            closed = k_of_n_rate(p_obs, int(n), int(enter)) * summary["frames"]
            assert abs(closed - row["expected_at_observed_rate"]) < 1e-6 * closed, (closed, row)
        results.append(row)
        print(json.dumps(row), file=sys.stderr)
    report = {"frames_held_out": len(names), "passes": a.passes, "repeat": a.repeat, "seed": a.seed,
              "rows": results}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
