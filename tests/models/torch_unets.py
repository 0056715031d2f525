"""A small torch U-Net (source kept as text so tests can also ship it inside a package)."""
from __future__ import annotations

SOURCE = '''
import torch
from torch import nn


class TinyUNet(nn.Module):
    """Two-level U-Net: Conv-ReLU, MaxPool, bottleneck, nearest Upsample, Concat, 1x1 head."""

    def __init__(self, in_channels=1, out_channels=1, base=4, ndim=2):
        super().__init__()
        conv = nn.Conv2d if ndim == 2 else nn.Conv3d
        pool = nn.MaxPool2d if ndim == 2 else nn.MaxPool3d
        self.enc = nn.Sequential(conv(in_channels, base, 3, padding=1), nn.ReLU())
        self.pool = pool(2)
        self.mid = nn.Sequential(conv(base, 2 * base, 3, padding=1), nn.ReLU())
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec = nn.Sequential(conv(3 * base, base, 3, padding=1), nn.ReLU())
        self.head = conv(base, out_channels, 1)

    def forward(self, x):
        skip = self.enc(x)
        deep = self.mid(self.pool(skip))
        return self.head(self.dec(torch.cat([self.up(deep), skip], dim=1)))
'''


def tiny_unet(**kwargs):
    namespace: dict = {}
    exec(compile(SOURCE, "tiny_unet.py", "exec"), namespace)
    import torch

    torch.manual_seed(0)
    return namespace["TinyUNet"](**kwargs).eval()
