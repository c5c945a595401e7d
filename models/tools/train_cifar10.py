"""Trains the CIFAR-10 reference classifier (AirNet, see nets.py) on ../shared/data.

    python models/tools/train_cifar10.py --epochs 50 --widths 64,128,256 --strided 1,0,0   # the reference bundle

Recipe: 45,000 training images (5,000 held out, 500 per class, seeded, for the gate threshold),
random horizontal flip and +/-2 px reflect-padded translation (cropped on the training device by
one gather per batch), SGD with Nesterov momentum 0.9, batch 512, weight decay 5e-4, label
smoothing 0.2, learning rate warmed up linearly to the peak over the first 20% of steps then
linearly down to 0. Uses CUDA when present (bfloat16 autocast unless --no-amp), else the CPU
(float32, denormals flushed). Checkpoints every epoch outside the repo (`$EBM_GATE_CACHE`,
default `~/.cache/ebm-gate`), and resumes from the last checkpoint of a run with the same
settings; `--out DIR` also writes the final checkpoint there. The last epoch's log line also
gives the held-out accuracy with flip test-time augmentation, for comparison.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import cifar10_data as data
from nets import AirNet, FlipTTA


def normalise(x_u8: np.ndarray, mean=data.MEAN, std=data.STD) -> torch.Tensor:
    """`[N, H, W, 3]` uint8 -> `[N, 3, H, W]` float, scaled to [0, 1] and normalised per channel."""
    x = torch.from_numpy(np.ascontiguousarray(x_u8)).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def torch_setup(threads: int, seed: int) -> torch.device:
    """CUDA when present, else the CPU (denormals flushed, `threads` threads unless 0); seeds torch."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_flush_denormal(True)
        if threads:
            torch.set_num_threads(threads)
    torch.manual_seed(seed)
    return device


def holdout_split(y: np.ndarray, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    held = []
    for c in range(10):
        idx = np.flatnonzero(y == c)
        held.extend(rng.choice(idx, per_class, replace=False).tolist())
    held = np.sort(np.array(held))
    train = np.setdiff1d(np.arange(len(y)), held)
    return train, held


@torch.no_grad()
def evaluate(model, x, y, device, bs=1000):
    model.eval()
    correct = 0
    for i in range(0, len(x), bs):
        logits = model(x[i:i + bs].to(device))
        correct += (logits.argmax(1).cpu() == y[i:i + bs]).sum().item()
    model.train()
    return correct / len(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--lr", type=float, default=0.4)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--label-smoothing", type=float, default=0.2)
    ap.add_argument("--widths", type=str, default="64,256,256")
    ap.add_argument("--strided", type=str, default="0,0,0",
                    help="per block, 1 = downsample by a stride-2 first convolution instead of a max-pool")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    ap.add_argument("--run", type=str, default="cifar10-airnet", help="checkpoint name")
    ap.add_argument("--no-amp", action="store_true", help="on CUDA, train in float32 (default: bfloat16 autocast)")
    ap.add_argument("--out", type=Path, help="also write the final checkpoint here (default: the cache folder only)")
    ap.add_argument("--limit-steps", type=int, default=0, help="stop after this many steps (speed test)")
    args = ap.parse_args()

    device = torch_setup(args.threads, args.seed)
    widths = tuple(int(w) for w in args.widths.split(","))
    strided = tuple(bool(int(v)) for v in args.strided.split(","))

    t0 = time.time()
    x_u8, y_np = data.load_train()
    train_idx, held_idx = holdout_split(y_np, 500, args.seed)
    x_train = normalise(x_u8[train_idx])
    y_train = torch.from_numpy(y_np[train_idx])
    x_held = normalise(x_u8[held_idx])
    y_held = torch.from_numpy(y_np[held_idx])
    print(f"data: {len(x_train)} train, {len(x_held)} held out, loaded in {time.time() - t0:.1f} s", flush=True)

    model = AirNet(widths, strided=strided).to(device)
    model.init_whitening(x_train[:5000])
    model.whiten.weight.requires_grad_(False)
    model = model.to(memory_format=torch.channels_last)

    steps_per_epoch = len(x_train) // args.batch_size
    total_steps = steps_per_epoch * args.epochs
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=args.lr, momentum=0.9, nesterov=True, weight_decay=args.weight_decay)
    warm = int(0.2 * total_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: np.interp(s, [0, warm, total_steps], [0.1, 1.0, 0.0]).item())

    ckpt_path = data.cache_dir() / f"{args.run}.ckpt.pt"
    config = {k: v for k, v in vars(args).items() if k not in ("threads", "limit_steps", "out")}
    start_epoch = 0
    log = []
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=False)
        if ck["config"] == config:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["opt"])
            sched.load_state_dict(ck["sched"])
            torch.set_rng_state(ck["rng"])
            start_epoch = ck["epoch"]
            log = ck["log"]
            print(f"resumed from {ckpt_path} after epoch {start_epoch}", flush=True)
        else:
            print(f"ignoring {ckpt_path}: other settings", flush=True)

    # The padded training set lives on the training device; each batch is cropped and flipped
    # there by indexing (one gather per batch, no Python loop over images).
    x_pad = F.pad(x_train, (2, 2, 2, 2), mode="reflect").to(device)
    y_train_dev = y_train.to(device)
    ar = torch.arange(32, device=device)
    chan = torch.arange(3, device=device).view(1, 3, 1, 1)
    amp = device.type == "cuda" and not args.no_amp
    gen = torch.Generator().manual_seed(args.seed + 1)
    model.train()
    train_start = time.time()
    for epoch in range(start_epoch, args.epochs):
        gen.manual_seed(args.seed * 1000 + epoch)
        t_ep = time.time()
        perm = torch.randperm(len(x_train), generator=gen)
        shifts = torch.randint(0, 5, (len(x_train), 2), generator=gen)
        flips = torch.rand(len(x_train), generator=gen) < 0.5
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        seen = 0
        for s in range(steps_per_epoch):
            idx = perm[s * args.batch_size:(s + 1) * args.batch_size]
            idx_d = idx.to(device)
            sh = shifts[idx].to(device)
            cols = sh[:, 1:2] + ar.view(1, 32)
            cols = torch.where(flips[idx].to(device).view(-1, 1), cols.flip(1), cols)
            rows = sh[:, 0:1] + ar.view(1, 32)
            xb = x_pad[idx_d.view(-1, 1, 1, 1), chan, rows.view(-1, 1, 32, 1), cols.view(-1, 1, 1, 32)]
            yb = y_train_dev[idx_d]
            xb = xb.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp):
                logits = model(xb)
                loss = F.cross_entropy(logits.float(), yb, label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.detach() * len(idx)
            correct += (logits.argmax(1) == yb).sum()
            seen += len(idx)
            if args.limit_steps and s + 1 >= args.limit_steps:
                dt = time.time() - t_ep
                print(f"{s + 1} steps in {dt:.1f} s: {dt / (s + 1):.3f} s/step, "
                      f"{dt / (s + 1) * steps_per_epoch:.0f} s/epoch", flush=True)
                return
        loss_sum, correct = loss_sum.item(), correct.item()
        held_acc = evaluate(model, x_held, y_held, device)
        entry = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen,
                 "held_out_acc": held_acc, "epoch_s": time.time() - t_ep}
        if epoch + 1 == args.epochs:
            entry["held_out_acc_flip"] = evaluate(FlipTTA(model), x_held, y_held, device)
        log.append(entry)
        print(json.dumps(entry), flush=True)
        torch.save({"config": config, "model": model.state_dict(), "opt": opt.state_dict(),
                    "sched": sched.state_dict(), "rng": torch.get_rng_state(), "epoch": epoch + 1,
                    "log": log}, ckpt_path)

    total_s = sum(e["epoch_s"] for e in log)
    final = {"config": config, "widths": list(widths), "strided": list(strided), "device": str(device), "torch": torch.__version__,
             "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None, "bf16_autocast": amp,
             "threads": torch.get_num_threads(), "train_seconds": total_s, "log": log,
             "train_images": len(x_train), "held_out_images": len(x_held),
             "held_out_indices": held_idx.tolist()}
    torch.save({"model": model.state_dict(), "meta": final}, data.cache_dir() / f"{args.run}.final.pt")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        torch.save({"model": model.state_dict(), "meta": final}, args.out / f"{args.run}.final.pt")
    print(f"done: {args.epochs} epochs in {total_s / 60:.1f} min; saved {args.run}.final.pt", flush=True)


if __name__ == "__main__":
    main()
