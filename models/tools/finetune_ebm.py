"""Fine-tunes a trained classifier into a better energy-based model (EBM) for the gate.

    python models/tools/finetune_ebm.py                          # the reference bundle's recipe
    python models/tools/finetune_ebm.py --train-dir DIR [--outlier-dir DIR] --run mine

Loss (Liu et al. 2020, "Energy-based Out-of-distribution Detection", arXiv 2010.03759, eq. 9,
as in their code wetliu/energy_ood): cross-entropy on in-distribution batches plus the
energy-bounded squared hinge on in-distribution and auxiliary-outlier batches,

    L = CE(f(x_in), y) + w * ( mean(relu(E(x_in) - m_in)^2) + mean(relu(m_out - E(x_out))^2) )

with the free energy `E(x) = -logsumexp(f(x))` at T = 1. One forward pass over the concatenated
in-distribution and outlier batch (BatchNorm sees both, as in Liu et al.'s code). Defaults (the
reference bundle's recipe): `w = 0.1`, `m_in = -8`, `m_out = -4` (Liu et al.'s WRN-40-2 used -23
/ -5; this network's energies are smaller, and those margins destroyed its accuracy in pilots),
128 in-distribution + 128 outlier images a step, 6 epochs, learning rate 0.01.

- Start: the weights of an exported AirNet bundle's `model.onnx` (default: the committed
  reference, `models/cifar10-airnet/model.onnx`), loaded back into `nets.AirNet` (BatchNorms that
  the exporter folded into their convolutions are re-parametrised so that training-mode batch
  statistics start where the folded function is, see `load_onnx`), or a checkpoint (`--checkpoint`).
  PyTorch's logits are checked against onnxruntime's after loading.
- In-distribution data: the CIFAR-10 training split (45,000 images; the 5,000 held out by
  `train_cifar10.py`'s seeded split stay held out), or `--train-dir`, an ImageFolder tree
  (`DIR/<class>/*.jpg|png`, any size: shorter side resized to 32 and centre-cropped, as
  `ebm-gate` preprocesses; 10% of each class, seeded, held out). A new class list re-initialises
  the head. Augmentation as in training: random flip, +/-2 px reflect-padded translation.
- Auxiliary outliers (`--sources`, see `outliers.py`): photos, faults, shuffle, procedural by
  default, `mix` on request (two-class blends: in the ablation it was not learnt and made every
  other source worse, so it left the default after the reference bundle was made with it), and
  `--outlier-dir` (the user's own); equal shares of each batch.
- Tuning signal, printed after every epoch (and before the first): held-out accuracy and the
  energy FPR@95TPR of held-out in-distribution images against a fixed validation set of each
  source (photo crops from photos never trained on, synthetic outliers from held-out images
  with another seed). Never an evaluation set.
- Optional JEM-style generative term (`--sgld-weight W`, off by default; Grathwohl et al. 2019,
  arXiv 1912.03263): `+ W * (mean E(x_in) - mean E(x_sgld))`, the gradient of -log p(x) up to
  log Z, with `x_sgld` from short-run SGLD chains (`--sgld-steps`, `--sgld-batch`) that start
  from a persistent replay buffer (`--buffer-size`, `--reinit-prob`), the update
  `ebm-gate sample` runs (`x <- clip(x - eps/2 dE/dx + sigma N(0, I))`, `--sgld-step-size`,
  `--sgld-noise`, in the normalised input space). The samples join the training batch (BatchNorm
  sees them, as it sees the outliers); the chains run with the model in eval mode. After the run
  the buffer's first 64 samples are saved as `<run>.sgld-buffer.png` beside the checkpoint.
- Optimiser: SGD, Nesterov momentum 0.9, weight decay 5e-4, cosine learning-rate decay to 0.
  CUDA when present (bfloat16 autocast), else the CPU (float32, denormals flushed). Checkpoints
  every epoch outside the repo (`$EBM_GATE_CACHE`, default `~/.cache/ebm-gate`) and resumes a run
  with the same settings; writes `<run>.final.pt` there (the format `export_cifar10.py` reads).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx import numpy_helper

import cifar10_data as data
import outliers as outl
from make_goldens import load_resized
from make_metric_goldens import metrics
from nets import AirNet
from train_cifar10 import holdout_split, normalise, torch_setup


def free_energy(logits: torch.Tensor) -> torch.Tensor:
    """E(x) = -logsumexp(f(x)) at T = 1, [N, K] -> [N]."""
    return -torch.logsumexp(logits.float(), 1)


def fpr_at_95_tpr(e_in: np.ndarray, e_out: np.ndarray) -> float:
    """Fraction of outliers accepted at the first threshold accepting >= 95% of in-distribution
    frames (ID positive, score -E), by the project's scikit-learn reference (`make_metric_goldens`)."""
    return metrics(-e_in, -e_out)["fpr_at_95_tpr"]


# ---- starting weights ---------------------------------------------------------------------------

def load_onnx(path: Path, x_calib: torch.Tensor) -> tuple[AirNet, dict]:
    """An `AirNet` with the weights of an exported bundle's `model.onnx`.

    PyTorch's exporter folds some BatchNorms into the preceding convolution (`W' = W * s`,
    bias `b'`). For those, the convolution takes `W'` and its BatchNorm is set so that it computes
    `z + b'` both in eval mode and, on in-distribution batches, in training mode: its running
    mean and variance are the statistics of `z = W' * x` over `x_calib`, its scale
    `sqrt(var + eps)` and its shift `mean + b'`."""
    m = onnx.load(str(path))
    init = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in m.graph.initializer}
    widths = tuple(int(init[f"block{b}.conv1.weight"].shape[0]) for b in (1, 2, 3))
    strides = {}
    for node in m.graph.node:
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1].endswith(".conv1.weight"):
            s = [a.ints for a in node.attribute if a.name == "strides"]
            strides[node.input[1].split(".")[0]] = int(s[0][0]) if s else 1
    strided = tuple(strides.get(f"block{b}", 1) == 2 for b in (1, 2, 3))
    num_classes = int(init["head.weight"].shape[0])
    net = AirNet(widths, num_classes=num_classes, strided=strided)
    sd = net.state_dict()
    folded = []
    for k in sd:
        if k in init:
            sd[k] = init[k].reshape(sd[k].shape)
    net.load_state_dict(sd)
    for b in (1, 2, 3):
        for c in (1, 2):
            if f"block{b}.conv{c}.weight_bias" in init:
                folded.append((b, c, init[f"block{b}.conv{c}.weight_bias"]))
            elif f"block{b}.bn{c}.weight" not in init:
                raise ValueError(f"{path}: block{b}.bn{c} neither folded nor present")
    # Statistics of each folded convolution's output, in eval mode (where the folded function is
    # exact), taken in network order so later layers see the earlier ones already set.
    net.eval()
    for b, c, bias in folded:
        blk = getattr(net, f"block{b}")
        conv, bn = getattr(blk, f"conv{c}"), getattr(blk, f"bn{c}")
        seen = []
        hook = conv.register_forward_hook(lambda mod, i, o: seen.append(o.detach()))
        with torch.no_grad():
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
            bn.weight.fill_(1.0)
            bn.bias.copy_(bias)
            for i in range(0, len(x_calib), 500):
                net(x_calib[i:i + 500])
        hook.remove()
        z = torch.cat(seen)
        if c == 1 and not net.strided[b - 1]:
            z = F.max_pool2d(z, 2)  # bn1 follows the max-pool in a plain block
        mu = z.mean((0, 2, 3))
        var = z.var((0, 2, 3), unbiased=False)
        with torch.no_grad():
            bn.running_mean.copy_(mu)
            bn.running_var.copy_(var)
            bn.weight.copy_(torch.sqrt(var + bn.eps))
            bn.bias.copy_(mu + bias)
    info = {"onnx": str(path), "onnx_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "widths": list(widths), "strided": list(strided), "folded_batchnorms": [f"block{b}.bn{c}" for b, c, _ in folded]}
    return net, info


def check_against_onnxruntime(net: AirNet, path: Path, x: torch.Tensor) -> float:
    net.eval()
    with torch.no_grad():
        z = net(x).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    z_ort = sess.run(None, {name: x.numpy()})[0]
    return float(np.abs(z - z_ort).max())


# ---- in-distribution data -----------------------------------------------------------------------

def load_image_folder(root: Path, max_images: int = 200_000) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """An ImageFolder tree as `[N, 32, 32, 3]` uint8, each image brought to 32x32 as ebm-gate
    does (`make_goldens.load_resized`), labels, class names."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if len(classes) < 2:
        raise ValueError(f"{root}: an ImageFolder tree needs at least two class folders, found {classes}")
    xs, ys = [], []
    for ci, c in enumerate(classes):
        for p in sorted((root / c).rglob("*")):
            if p.suffix.lower() not in outl.IMAGE_SUFFIXES:
                continue
            if len(xs) >= max_images:
                raise ValueError(f"{root}: more than {max_images} images")
            xs.append(load_resized(p))
            ys.append(ci)
    return np.stack(xs), np.array(ys, dtype=np.int64), classes


def holdout_fraction(y: np.ndarray, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        held.extend(rng.choice(idx, max(1, int(round(frac * len(idx)))), replace=False).tolist())
    held = np.sort(np.array(held))
    return np.setdiff1d(np.arange(len(y)), held), held


# ---- training -----------------------------------------------------------------------------------

def augment(xb: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and +/-2 px reflect-padded translation of `[B, 3, 32, 32]`."""
    n = len(xb)
    pad = F.pad(xb, (2, 2, 2, 2), mode="reflect")
    sh = torch.randint(0, 5, (n, 2), generator=gen)
    flips = torch.rand(n, generator=gen) < 0.5
    ar = torch.arange(32)
    rows = sh[:, 0:1] + ar
    cols = sh[:, 1:2] + ar
    cols = torch.where(flips.view(-1, 1), cols.flip(1), cols)
    idx = torch.arange(n).view(-1, 1, 1, 1)
    chan = torch.arange(3).view(1, 3, 1, 1)
    return pad[idx, chan, rows.view(-1, 1, 32, 1), cols.view(-1, 1, 1, 32)]


@torch.no_grad()
def energies_and_logits(model, x: torch.Tensor, device, bs: int = 500) -> tuple[np.ndarray, np.ndarray]:
    was = model.training
    model.eval()
    z = torch.cat([model(x[i:i + bs].to(device)).float().cpu() for i in range(0, len(x), bs)])
    model.train(was)
    return free_energy(z).numpy(), z.numpy()


def save_grid(x: torch.Tensor, mean, std, path: Path, cols: int = 8) -> None:
    """Normalised `[N, 3, 32, 32]` -> a PNG grid (each picture 3x enlarged, nearest)."""
    from PIL import Image
    px = (x * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)).clamp(0, 1)
    px = (px * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    rows = (len(px) + cols - 1) // cols
    grid = np.full((rows * 34, cols * 34, 3), 255, np.uint8)
    for i, im in enumerate(px):
        r, c = divmod(i, cols)
        grid[r * 34 + 1:r * 34 + 33, c * 34 + 1:c * 34 + 33] = im
    Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(path)


class SgldSampler:
    """JEM's persistent short-run SGLD (Grathwohl et al. 2019, "Your classifier is secretly an
    energy based model", their code's `sample_q`), with the update `ebm-gate sample` runs:
    `x <- clip(x - (eps / 2) dE/dx + sigma N(0, I))`, clipped to the pixel range [0, 1] in the
    normalised input space. Chains start from a replay buffer of `size` samples (uniform noise at
    first), a fraction `reinit` restarts from uniform noise; the refined samples go back."""

    def __init__(self, size: int, mean, std, reinit: float, gen: torch.Generator):
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.lo, self.hi = (0 - self.mean) / self.std, (1 - self.mean) / self.std
        self.reinit, self.gen = reinit, gen
        self.buffer = self.noise(size)

    def noise(self, n: int) -> torch.Tensor:
        return (torch.rand(n, 3, 32, 32, generator=self.gen) - self.mean) / self.std

    def sample(self, model, n: int, steps: int, eps: float, sigma: float, device) -> torch.Tensor:
        idx = torch.randint(0, len(self.buffer), (n,), generator=self.gen)
        x = self.buffer[idx].clone()
        fresh = torch.rand(n, generator=self.gen) < self.reinit
        x[fresh] = self.noise(int(fresh.sum()))
        lo, hi = self.lo.to(device), self.hi.to(device)
        x = x.to(device)
        was = model.training
        model.eval()  # BatchNorm's running statistics, as at inference (JEM's sample_q: f.eval())
        for _ in range(steps):
            x.requires_grad_(True)
            e = free_energy(model(x.contiguous(memory_format=torch.channels_last)))
            (g,) = torch.autograd.grad(e.sum(), x)
            with torch.no_grad():
                x = x - 0.5 * eps * g + sigma * torch.randn(x.shape, generator=self.gen).to(device)
                x = torch.max(torch.min(x, hi), lo)
        model.train(was)
        x = x.detach()
        self.buffer[idx] = x.cpu()
        return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from-onnx", type=Path, default=data.repo_root() / "models" / "cifar10-airnet" / "model.onnx",
                    help="start from this exported AirNet (default: the committed reference bundle)")
    ap.add_argument("--checkpoint", type=Path, help="start from a train_cifar10.py / finetune_ebm.py .pt instead")
    ap.add_argument("--train-dir", type=Path, help="in-distribution ImageFolder tree (default: CIFAR-10 training split)")
    ap.add_argument("--sources", default="photos,faults,shuffle,procedural",
                    help=f"comma-separated outlier sources, of {', '.join(outl.SOURCES)} (and 'folder' with --outlier-dir)")
    ap.add_argument("--outlier-dir", type=Path,
                    help="a folder of your own outlier images (any size, at least 5; random crops; every fifth kept for validation)")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=128, help="in-distribution images a step")
    ap.add_argument("--outlier-batch-size", type=int, default=128, help="auxiliary outliers a step")
    ap.add_argument("--lr", type=float, default=0.01, help="peak learning rate (cosine decay to 0)")
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--label-smoothing", type=float, default=0.0)
    ap.add_argument("--m-in", type=float, default=-8.0,
                    help="in-distribution energy margin (Liu et al.'s WRN: -23; tuned for AirNet: -8)")
    ap.add_argument("--m-out", type=float, default=-4.0,
                    help="outlier energy margin (Liu et al.'s WRN: -5; tuned for AirNet: -4)")
    ap.add_argument("--energy-weight", type=float, default=0.1, help="weight of the energy hinge (Liu et al.: 0.1)")
    ap.add_argument("--distill-weight", type=float, default=0.0,
                    help="weight of a distillation term that keeps the in-distribution predictions of the starting "
                         "model (a frozen copy): KL(teacher || student) at --distill-temperature, times its square "
                         "(Hinton et al. 2015); 0 = off")
    ap.add_argument("--distill-temperature", type=float, default=4.0)
    ap.add_argument("--sgld-weight", type=float, default=0.0,
                    help="weight of the JEM-style generative term E(x_in) - E(x_sgld) (Grathwohl et al. 2019): "
                         "short-run SGLD samples from a persistent replay buffer; 0 = off")
    ap.add_argument("--sgld-steps", type=int, default=10, help="SGLD updates per training step (JEM: 20)")
    ap.add_argument("--sgld-batch", type=int, default=32, help="SGLD samples per training step (JEM: 64)")
    ap.add_argument("--sgld-step-size", type=float, default=2.0,
                    help="eps of x <- clip(x - eps/2 dE/dx + sigma N(0, I)), in normalised input units, the update "
                         "of `ebm-gate sample` (JEM's code: eps = 2)")
    ap.add_argument("--sgld-noise", type=float, default=0.01, help="sigma of the SGLD update (JEM: 0.01)")
    ap.add_argument("--buffer-size", type=int, default=10000, help="replay buffer capacity (JEM: 10,000)")
    ap.add_argument("--reinit-prob", type=float, default=0.05, help="chains restarted from uniform noise (JEM: 0.05)")
    ap.add_argument("--val-per-source", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    ap.add_argument("--run", default="cifar10-airnet-ebm", help="checkpoint name")
    ap.add_argument("--no-amp", action="store_true")
    ap.add_argument("--limit-steps", type=int, default=0,
                    help="a short run of this many steps in all, the learning rate decayed over them (pilots, ablation)")
    args = ap.parse_args()

    device = torch_setup(args.threads, args.seed)
    sources = [s for s in args.sources.split(",") if s]
    if args.outlier_dir and "folder" not in sources:
        sources.append("folder")

    t0 = time.time()
    mean, std, class_names = data.MEAN, data.STD, data.CLASSES
    gate_json = args.from_onnx.parent / "gate.json"
    if args.checkpoint is None and gate_json.exists():
        g = json.loads(gate_json.read_text())
        mean, std = g["input"]["mean"], g["input"]["std"]
    if args.train_dir:
        x_u8, y_np, class_names = load_image_folder(args.train_dir)
        train_idx, held_idx = holdout_fraction(y_np, 0.1, args.seed)
        id_desc = f"ImageFolder {args.train_dir}"
    else:
        x_u8, y_np = data.load_train()
        train_idx, held_idx = holdout_split(y_np, 500, 0)  # train_cifar10.py's split (seed 0)
        id_desc = "CIFAR-10 training split"
    x_train_u8, y_train = x_u8[train_idx], torch.from_numpy(y_np[train_idx])
    x_held = normalise(x_u8[held_idx], mean, std)
    print(f"data: {len(train_idx)} train, {len(held_idx)} held out ({id_desc}), {time.time() - t0:.1f} s", flush=True)

    if args.checkpoint:
        ck = torch.load(args.checkpoint, weights_only=False, map_location="cpu")
        meta = ck.get("meta") or {"config": ck["config"]}
        widths = tuple(meta.get("widths") or [int(w) for w in meta["config"]["widths"].split(",")])
        strided = tuple(meta.get("strided") or [bool(int(v)) for v in meta["config"].get("strided", "0,0,0").split(",")])
        net = AirNet(widths, num_classes=ck["model"]["head.weight"].shape[0], strided=strided)
        net.load_state_dict(ck["model"])
        start = {"checkpoint": str(args.checkpoint)}
    else:
        net, start = load_onnx(args.from_onnx, normalise(x_train_u8[:2000], mean, std))
        diff = check_against_onnxruntime(net, args.from_onnx, x_held[:256])
        start["onnxruntime_vs_loaded_max_abs_logit_diff"] = diff
        print(f"loaded {args.from_onnx}: widths {start['widths']}, strided {start['strided']}, folded "
              f"{start['folded_batchnorms']}; onnxruntime vs PyTorch max |logit diff| {diff:.2e}", flush=True)
        assert diff < 1e-3, diff
    if net.head.out_features != len(class_names):
        print(f"{len(class_names)} classes in the data, {net.head.out_features} in the model: new head. A new "
              "head learns slowly at the default --lr 0.01 (a 3-class trial stayed at chance for 10 epochs; "
              "--lr 0.1 --epochs 15 reached 95.6%): raise --lr and --epochs", flush=True)
        net.head = torch.nn.Linear(net.head.in_features, len(class_names), bias=False)
    net.whiten.weight.requires_grad_(False)
    teacher = None
    if args.distill_weight > 0:
        if net.head.out_features != len(class_names):
            raise SystemExit("--distill-weight needs the starting model's classes (a new head has no teacher)")
        import copy
        teacher = copy.deepcopy(net).to(device).to(memory_format=torch.channels_last).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    model = net.to(device).to(memory_format=torch.channels_last)
    model.train()
    sgld_gen = torch.Generator()
    sgld_gen.manual_seed(20_000 + args.seed)
    sampler = (SgldSampler(args.buffer_size, mean, std, args.reinit_prob, sgld_gen)
               if args.sgld_weight > 0 else None)

    photos_train = folder = None
    if "photos" in sources:
        if not (data.shared_data() / "photos").is_dir():
            raise SystemExit(f"{data.shared_data() / 'photos'}: not found; the `photos` source needs it "
                             "(set EBM_GATE_DATA, or leave it out: --sources faults,shuffle,mix,procedural)")
        photos_train = outl.PhotoCrops(data.shared_data(), "train")
    if "folder" in sources:
        folder = outl.FolderCrops(args.outlier_dir, "train")  # every fifth image kept for validation
    aux = outl.Outliers(sources, x_train_u8, y_np[train_idx], photos_train, folder)
    # Validation outliers: every source alone (also those not trained on, which measures how the
    # others generalise to it), from held-out images / photos, another seed.
    x_held_u8, y_held_np = x_u8[held_idx], y_np[held_idx]
    have_photos = (data.shared_data() / "photos").is_dir()
    val_sources = [s for s in outl.SOURCES if s != "photos" or have_photos] + (["folder"] if folder is not None else [])
    val_aux = outl.Outliers(val_sources, x_held_u8, y_held_np,
                            outl.PhotoCrops(data.shared_data(), "val") if have_photos else None,
                            outl.FolderCrops(args.outlier_dir, "val") if folder is not None else None)
    vrng = np.random.default_rng(10_000 + args.seed)
    val_sets = {s: normalise(val_aux.draw(s, vrng, args.val_per_source), mean, std) for s in val_sources}

    def validate(epoch: int) -> dict:
        e_in, z_in = energies_and_logits(model, x_held, device)
        acc = float((z_in.argmax(1) == y_held_np).mean())
        entry = {"epoch": epoch, "held_out_acc": acc, "e_in_median": float(np.median(e_in))}
        for s, xv in val_sets.items():
            e_out, _ = energies_and_logits(model, xv, device)
            entry[f"fpr95_{s}"] = fpr_at_95_tpr(e_in, e_out)
            entry[f"e_out_median_{s}"] = float(np.median(e_out))
        entry["fpr95_mean"] = float(np.mean([entry[f"fpr95_{s}"] for s in val_sets]))
        return entry

    steps_per_epoch = len(train_idx) // args.batch_size
    # --limit-steps: a short run (pilots, the ablation) whose cosine schedule ends at that step.
    total_steps = args.limit_steps or steps_per_epoch * args.epochs
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=args.lr, momentum=0.9, nesterov=True, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + np.cos(np.pi * min(s, total_steps) / total_steps)))

    ckpt_path = data.cache_dir() / f"{args.run}.ckpt.pt"
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
              if k not in ("threads",)}
    start_epoch, log = 0, []
    if ckpt_path.exists() and not args.limit_steps:
        ck = torch.load(ckpt_path, weights_only=False)
        if ck["config"] == config:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["opt"])
            if sampler is not None:
                sampler.buffer = ck["sgld_buffer"]
                sgld_gen.set_state(ck["sgld_gen"])
            sched.load_state_dict(ck["sched"])
            start_epoch, log = ck["epoch"], ck["log"]
            print(f"resumed from {ckpt_path} after epoch {start_epoch}", flush=True)
        else:
            print(f"ignoring {ckpt_path}: other settings", flush=True)
    if not log:
        log.append(validate(0))
        print(json.dumps(log[-1]), flush=True)

    amp = device.type == "cuda" and not args.no_amp
    x_train = normalise(x_train_u8, mean, std)
    gen = torch.Generator()
    step = start_epoch * steps_per_epoch
    for epoch in range(start_epoch, args.epochs):
        gen.manual_seed(args.seed * 1000 + epoch)
        rng = np.random.default_rng([args.seed, epoch])
        t_ep = time.time()
        perm = torch.randperm(len(train_idx), generator=gen)
        sums = {"loss": 0.0, "ce": 0.0, "hinge": 0.0, "gen": 0.0, "e_sgld": 0.0, "correct": 0, "seen": 0}
        for s in range(steps_per_epoch):
            idx = perm[s * args.batch_size:(s + 1) * args.batch_size]
            x_in = augment(x_train[idx], gen)
            x_out = normalise(aux(rng, args.outlier_batch_size), mean, std)
            parts = [x_in, x_out]
            if sampler is not None:
                parts.append(sampler.sample(model, args.sgld_batch, args.sgld_steps, args.sgld_step_size,
                                            args.sgld_noise, device).cpu())
            xb = torch.cat(parts).to(device).contiguous(memory_format=torch.channels_last)
            yb = y_train[idx].to(device)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp):
                logits = model(xb).float()
            n_in = len(idx)
            ce = F.cross_entropy(logits[:n_in], yb, label_smoothing=args.label_smoothing)
            e = free_energy(logits)
            n_aux = n_in + len(x_out)
            hinge = F.relu(e[:n_in] - args.m_in).pow(2).mean() + F.relu(args.m_out - e[n_in:n_aux]).pow(2).mean()
            loss = ce + args.energy_weight * hinge
            if sampler is not None:
                # -log p(x) up to log Z: its gradient is that of E(x_in) - E(x_sgld) (JEM, eq. 2).
                gen_term = e[:n_in].mean() - e[n_aux:].mean()
                loss = loss + args.sgld_weight * gen_term
                sums["gen"] += gen_term.item() * n_in
                sums["e_sgld"] += e[n_aux:].mean().item() * n_in
            if teacher is not None:
                tau = args.distill_temperature
                with torch.no_grad(), torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp):
                    t_logits = teacher(xb[:n_in]).float()
                kd = F.kl_div(F.log_softmax(logits[:n_in] / tau, 1), F.log_softmax(t_logits / tau, 1),
                              reduction="batchmean", log_target=True) * tau * tau
                loss = loss + args.distill_weight * kd
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            sums["loss"] += loss.item() * n_in
            sums["ce"] += ce.item() * n_in
            sums["hinge"] += hinge.item() * n_in
            sums["correct"] += (logits[:n_in].argmax(1) == yb).sum().item()
            sums["seen"] += n_in
            if args.limit_steps and step >= args.limit_steps:
                break
            if s % 50 == 0:
                extra = (f" E_in {e[:n_in].mean().item():.2f} E_sgld {e[n_aux:].mean().item():.2f}"
                         if sampler is not None else "")
                print(f"  epoch {epoch + 1} step {s}/{steps_per_epoch}: loss {loss.item():.3f} "
                      f"ce {ce.item():.3f} hinge {hinge.item():.3f}{extra} ({time.time() - t_ep:.0f} s)", flush=True)
        entry = validate(epoch + 1)
        n = max(1, sums["seen"])
        entry.update({"train_loss": sums["loss"] / n, "train_ce": sums["ce"] / n, "train_hinge": sums["hinge"] / n,
                      "train_acc": sums["correct"] / n, "epoch_s": time.time() - t_ep, "steps": step})
        if sampler is not None:
            entry.update({"train_gen": sums["gen"] / n, "train_e_sgld": sums["e_sgld"] / n})
        log.append(entry)
        print(json.dumps(entry), flush=True)
        if args.limit_steps and step >= args.limit_steps:
            break
        ck = {"config": config, "model": model.state_dict(), "opt": opt.state_dict(),
              "sched": sched.state_dict(), "epoch": epoch + 1, "log": log}
        if sampler is not None:
            ck.update({"sgld_buffer": sampler.buffer, "sgld_gen": sgld_gen.get_state()})
        torch.save(ck, ckpt_path)

    chance = 1.0 / len(class_names)
    if log[-1]["held_out_acc"] < 1.5 * chance:
        print(f"WARNING: held-out accuracy {log[-1]['held_out_acc']:.3f} is near chance ({chance:.3f}): this model "
              "is not trained yet (raise --lr and --epochs)", flush=True)
    model = model.to("cpu").to(memory_format=torch.contiguous_format)
    total_s = sum(e.get("epoch_s", 0.0) for e in log)
    final = {"config": config, "widths": list(model.widths), "strided": list(model.strided),
             "class_names": class_names, "mean": list(mean), "std": list(std),
             "device": str(device), "torch": torch.__version__,
             "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None, "bf16_autocast": amp,
             "threads": torch.get_num_threads(), "train_seconds": total_s, "log": log, "start": start,
             "sources": sources, "train_images": len(train_idx), "held_out_images": len(held_idx),
             "held_out_indices": held_idx.tolist(), "in_distribution": id_desc}
    out = data.cache_dir() / f"{args.run}.final.pt"
    torch.save({"model": model.state_dict(), "meta": final}, out)
    if sampler is not None:
        save_grid(sampler.buffer[:64], mean, std, data.cache_dir() / f"{args.run}.sgld-buffer.png")
        print(f"the replay buffer's first 64 samples: {data.cache_dir() / f'{args.run}.sgld-buffer.png'}", flush=True)
    print(f"done: {args.epochs} epochs in {total_s / 60:.1f} min; saved {out}", flush=True)


if __name__ == "__main__":
    main()
