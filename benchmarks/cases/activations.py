"""Benchmark cases for stage0_components/01_activations (common.nn activations).

The elementwise rows ask for the torch.compile column (``--compiled``): the same from-scratch kernels, fused by
TorchInductor into one loop; notebook 0.1, section 6, explains the pass counts behind both columns.
"""
import torch
from torch import nn

import common.nn as ours
from components import Case

_SHAPE = (256, 64, 14, 14)  # a batch of 256 after a LeNet/ResNet-sized conv layer
_NOTE = "activation map (256, 64, 14, 14)"


def _input():
    return (torch.randn(_SHAPE),)


def _tokens():
    return (torch.randn(128, 50, 768),)  # (N, L, E): a batch of 128 ViT-B/32-sized token sequences


CASES = [
    Case("ReLU", _NOTE, ours.ReLU, nn.ReLU, _input, compiled=True),
    Case("Sigmoid", _NOTE, ours.Sigmoid, nn.Sigmoid, _input, compiled=True),
    Case("Tanh", _NOTE, ours.Tanh, nn.Tanh, _input, compiled=True),
    Case("GELU (erf)", _NOTE, ours.GELU, nn.GELU, _input, compiled=True),
    Case("GELU (tanh)", _NOTE, lambda: ours.GELU(approximate="tanh"), lambda: nn.GELU(approximate="tanh"), _input,
         compiled=True),
    Case("SiLU", _NOTE, ours.SiLU, nn.SiLU, _input, compiled=True),
    Case("GELU (erf), ViT tokens", "tokens (128, 50, 768)", ours.GELU, nn.GELU, _tokens, compiled=True),
    Case("Softmax(dim=1)", "logits (256, 1000)", lambda: ours.Softmax(dim=1), lambda: nn.Softmax(dim=1),
         lambda: (torch.randn(256, 1000),)),
    Case("LogSoftmax(dim=1)", "logits (256, 1000)", lambda: ours.LogSoftmax(dim=1), lambda: nn.LogSoftmax(dim=1),
         lambda: (torch.randn(256, 1000),)),
]
