"""Benchmark cases for stage0_components/03_normalization (common.nn normalisation layers)."""
import torch
from torch import nn

import common.nn as ours
from components import Case

_SHAPE = (256, 64, 14, 14)  # a batch of 256 after a ResNet-sized conv layer
_NOTE = "activation map (256, 64, 14, 14)"


def _input():
    return (torch.randn(_SHAPE),)


CASES = [
    Case("BatchNorm2d (train)", _NOTE, lambda: ours.BatchNorm2d(64), lambda: nn.BatchNorm2d(64), _input),
    Case("BatchNorm2d (eval)", _NOTE, lambda: ours.BatchNorm2d(64).eval(), lambda: nn.BatchNorm2d(64).eval(), _input),
    Case("BatchNorm1d (train)", "features (4096, 512)", lambda: ours.BatchNorm1d(512), lambda: nn.BatchNorm1d(512),
         lambda: (torch.randn(4096, 512),)),
    Case("GroupNorm(32, 64)", _NOTE, lambda: ours.GroupNorm(32, 64), lambda: nn.GroupNorm(32, 64), _input),
    Case("LayerNorm(384)", "ViT-S tokens (256, 65, 384)", lambda: ours.LayerNorm(384), lambda: nn.LayerNorm(384),
         lambda: (torch.randn(256, 65, 384),)),
]
