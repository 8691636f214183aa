"""Benchmark cases for stage0_components/03_normalization (common.nn normalisation layers).

Shapes are the ones later stages train with: ViT tokens (stage 4), ConvNeXt maps, a U-Net's GroupNorm,
ResNet-sized activation maps and an MLP's features.
"""
import torch
from torch import nn
from torchvision.models import convnext as torchvision_convnext

import common.nn as ours
from components import Case

_MAP = (256, 64, 14, 14)  # a batch of 256 after a ResNet-sized conv layer
_NOTE = "activation map (256, 64, 14, 14)"


def _randn(*shape):
    return lambda: (torch.randn(shape),)


CASES = [
    Case("BatchNorm2d (train)", _NOTE, lambda: ours.BatchNorm2d(64), lambda: nn.BatchNorm2d(64), _randn(*_MAP)),
    Case("BatchNorm2d (eval)", _NOTE, lambda: ours.BatchNorm2d(64).eval(), lambda: nn.BatchNorm2d(64).eval(),
         _randn(*_MAP)),
    Case("BatchNorm1d (train)", "features (4096, 512)", lambda: ours.BatchNorm1d(512), lambda: nn.BatchNorm1d(512),
         _randn(4096, 512)),
    Case("GroupNorm(32, 64)", _NOTE, lambda: ours.GroupNorm(32, 64), lambda: nn.GroupNorm(32, 64), _randn(*_MAP)),
    Case("GroupNorm(32, 128)", "U-Net map (64, 128, 14, 14)", lambda: ours.GroupNorm(32, 128),
         lambda: nn.GroupNorm(32, 128), _randn(64, 128, 14, 14)),
    Case("LayerNorm(192)", "ViT-Ti tokens (128, 50, 192)", lambda: ours.LayerNorm(192), lambda: nn.LayerNorm(192),
         _randn(128, 50, 192)),
    Case("LayerNorm(384)", "ViT-S tokens (256, 65, 384)", lambda: ours.LayerNorm(384), lambda: nn.LayerNorm(384),
         _randn(256, 65, 384)),
    Case("LayerNorm2d(96)", "ConvNeXt map (64, 96, 14, 14), vs torchvision",
         lambda: ours.LayerNorm2d(96, eps=1e-6), lambda: torchvision_convnext.LayerNorm2d(96, eps=1e-6),
         _randn(64, 96, 14, 14)),
]
