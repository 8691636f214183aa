"""Benchmark cases for stage0_components/02_conv_pool (common.nn Conv2d and the pools).

The shapes are the ones the curriculum trains: LeNet-5 on 28x28 Fashion-MNIST, ResNet stages on
28x28 / 14x14 maps, a strided 3x3 and a 1x1 (ResNet downsampling), depthwise 3x3 (MobileNet, stride 1
and 2, and with a channel multiplier), 5x5 (EfficientNet) and 7x7 (ConvNeXt).
"""
import torch
from torch import nn

import common.nn as ours
from components import Case


def _input(*shape):
    return lambda: (torch.randn(*shape),)


def _pair(make, args, kwargs=None):
    kwargs = kwargs or {}
    return (lambda: getattr(ours, make)(*args, **kwargs)), (lambda: getattr(nn, make)(*args, **kwargs))


def _case(name, note, make, args, kwargs, shape):
    mine, builtin = _pair(make, args, kwargs)
    return Case(name, note, mine, builtin, _input(*shape))


CASES = [
    _case("Conv2d 5x5 1->6", "LeNet conv1, batch 256, 28x28, pad 2", "Conv2d", (1, 6, 5), {"padding": 2},
          (256, 1, 28, 28)),
    _case("Conv2d 5x5 6->16", "LeNet conv2, batch 256, 14x14", "Conv2d", (6, 16, 5), {}, (256, 6, 14, 14)),
    _case("Conv2d 3x3 32->32", "ResNet stage, batch 256, 28x28, pad 1", "Conv2d", (32, 32, 3),
          {"padding": 1, "bias": False}, (256, 32, 28, 28)),
    _case("Conv2d 3x3 64->64", "ResNet stage, batch 256, 14x14, pad 1", "Conv2d", (64, 64, 3),
          {"padding": 1, "bias": False}, (256, 64, 14, 14)),
    _case("Conv2d 3x3 s2 32->64", "ResNet downsampling, batch 256, 28x28 -> 14x14", "Conv2d", (32, 64, 3),
          {"stride": 2, "padding": 1, "bias": False}, (256, 32, 28, 28)),
    _case("Conv2d 1x1 s2 32->64", "ResNet shortcut, batch 256, 28x28 -> 14x14", "Conv2d", (32, 64, 1),
          {"stride": 2, "bias": False}, (256, 32, 28, 28)),
    _case("Conv2d 1x1 64->256", "bottleneck expansion, batch 256, 14x14", "Conv2d", (64, 256, 1),
          {"bias": False}, (256, 64, 14, 14)),
    _case("Conv2d depthwise 3x3 64", "MobileNet, batch 256, 14x14, groups=64", "Conv2d", (64, 64, 3),
          {"padding": 1, "groups": 64, "bias": False}, (256, 64, 14, 14)),
    _case("Conv2d depthwise 3x3 s2 64", "MobileNet downsampling, batch 256, 28x28 -> 14x14", "Conv2d", (64, 64, 3),
          {"stride": 2, "padding": 1, "groups": 64, "bias": False}, (256, 64, 28, 28)),
    _case("Conv2d depthwise 5x5 64", "EfficientNet MBConv, batch 256, 14x14, pad 2", "Conv2d", (64, 64, 5),
          {"padding": 2, "groups": 64, "bias": False}, (256, 64, 14, 14)),
    _case("Conv2d depthwise 7x7 96", "ConvNeXt block, batch 64, 14x14, pad 3", "Conv2d", (96, 96, 7),
          {"padding": 3, "groups": 96}, (64, 96, 14, 14)),
    _case("Conv2d depthwise 3x3 32 x2", "channel multiplier 2, batch 256, 14x14", "Conv2d", (32, 64, 3),
          {"padding": 1, "groups": 32, "bias": False}, (256, 32, 14, 14)),
    _case("MaxPool2d 2x2", "LeNet/VGG, batch 256, 32 ch, 28x28", "MaxPool2d", (2,), {}, (256, 32, 28, 28)),
    _case("MaxPool2d 3x3 s2 p1", "ResNet stem, batch 256, 32 ch, 28x28", "MaxPool2d", (3, 2, 1), {},
          (256, 32, 28, 28)),
    _case("AvgPool2d 2x2", "LeNet (original), batch 256, 6 ch, 28x28", "AvgPool2d", (2,), {}, (256, 6, 28, 28)),
    _case("AdaptiveAvgPool2d 1", "ResNet head, batch 256, 256 ch, 7x7", "AdaptiveAvgPool2d", (1,), {},
          (256, 256, 7, 7)),
]
