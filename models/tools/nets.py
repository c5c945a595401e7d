"""Reference network architectures.

`AirNet` follows the layout of Keller Jordan's airbench94 CIFAR-10 net (2024): a fixed 2x2
patch-whitening convolution, then three blocks of conv3x3 -> max-pool 2 -> BN -> GELU ->
conv3x3 -> BN -> GELU, a global max-pool and a linear head scaled by 1/9. A block can instead
downsample with a stride-2 first convolution and no max-pool (`strided`). Input `[N, 3, 32, 32]`
normalised with the CIFAR-10 mean/std, output logits `[N, 10]`.
"""

from __future__ import annotations

import torch
from torch import nn


class Block(nn.Module):
    """conv3x3 -> max-pool 2 -> BN -> GELU -> conv3x3 -> BN -> GELU; with `strided`, the first
    convolution has stride 2 and there is no max-pool (the same parameters)."""

    def __init__(self, cin: int, cout: int, strided: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, stride=2 if strided else 1, bias=False)
        self.pool = nn.Identity() if strided else nn.MaxPool2d(2)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.pool(self.conv1(x))))
        return self.act(self.bn2(self.conv2(x)))


class AirNet(nn.Module):
    def __init__(self, widths: tuple[int, int, int] = (64, 256, 256), num_classes: int = 10,
                 strided: tuple[bool, bool, bool] = (False, False, False)):
        super().__init__()
        w1, w2, w3 = widths
        self.widths = tuple(widths)
        self.strided = tuple(bool(v) for v in strided)
        self.whiten = nn.Conv2d(3, 24, 2, padding=0, bias=True)
        self.act = nn.GELU()
        self.block1 = Block(24, w1, self.strided[0])
        self.block2 = Block(w1, w2, self.strided[1])
        self.block3 = Block(w2, w3, self.strided[2])
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(w3, num_classes, bias=False)
        self.scale = 1.0 / 9.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.whiten(x))
        x = self.block3(self.block2(self.block1(x)))
        x = torch.flatten(self.pool(x), 1)
        return self.head(x) * self.scale

    @torch.no_grad()
    def final_hw(self, hw: int = 32) -> int:
        """Side of the last block's square feature map for an `hw` x `hw` input."""
        x = torch.zeros(1, 3, hw, hw)
        was_training = self.training
        self.eval()
        side = self.block3(self.block2(self.block1(self.act(self.whiten(x))))).shape[-1]
        self.train(was_training)
        return side

    def use_export_pool(self, hw: int = 32) -> None:
        """Replaces the global max-pool by a MaxPool over the whole final map of an `hw` x `hw`
        input: the same values, exported as one ONNX MaxPool instead of ReduceMax (which tract
        0.23 evaluates output by output, 5% of its forward time)."""
        side = self.final_hw(hw)
        self.pool = nn.MaxPool2d(side)

    @torch.no_grad()
    def init_whitening(self, x: torch.Tensor, eps: float = 5e-4) -> None:
        """Sets the 2x2 stem to the ZCA-like patch whitening of `x` ([N, 3, H, W], normalised):
        12 eigenvectors of the patch covariance scaled by 1/sqrt(eigenvalue + eps), and their
        negatives, as in airbench."""
        c, h, w = self.whiten.weight.shape[1:]
        patches = x.unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(-1, c, h, w).double()
        flat = patches.reshape(len(patches), -1)
        cov = (flat.T @ flat) / len(flat)
        eigval, eigvec = torch.linalg.eigh(cov)
        eigval = eigval.flip(0)
        eigvec = eigvec.T.flip(0).reshape(-1, c, h, w)
        filt = eigvec / torch.sqrt(eigval.view(-1, 1, 1, 1) + eps)
        self.whiten.weight.copy_(torch.cat([filt, -filt]).float())
        self.whiten.bias.zero_()

    def macs(self, hw: int = 32) -> int:
        """Multiply-accumulates of the convolutions and the head for one frame."""
        total = 0
        x = torch.zeros(1, 3, hw, hw)
        hooks = []

        def conv_hook(m, inp, out):
            nonlocal total
            total += out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]

        def lin_hook(m, inp, out):
            nonlocal total
            total += m.in_features * m.out_features

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                hooks.append(m.register_forward_hook(conv_hook))
            elif isinstance(m, nn.Linear):
                hooks.append(m.register_forward_hook(lin_hook))
        was_training = self.training
        self.eval()
        with torch.no_grad():
            self(x)
        self.train(was_training)
        for hk in hooks:
            hk.remove()
        return total


class FlipTTA(nn.Module):
    """Horizontal-flip test-time augmentation inside the graph: the logits are the mean of the
    wrapped net's logits on `x` and on `x` mirrored left-right. Input `[N, C, H, W]`, output
    `[N, K]`.

    The two passes are separate in the graph (not one pass over a concatenated `2N` batch):
    the same numbers, but at `N = 1` every convolution then runs on one frame, which tract
    computes with its lazy im2col (an eager im2col of a batch of 2 took a third of its time):
    12.7-14.0 ms -> 8.6-8.9 ms a frame on the 2-core AMD EPYC, with onnxruntime's logits
    unchanged (max difference 0.0)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.net(x) + self.net(x.flip(3))) * 0.5
