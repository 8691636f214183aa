"""Benchmark cases for stage0_components/01_activations (common.nn activations)."""
import torch
from torch import nn

import common.nn as ours
from components import Case

_SHAPE = (256, 64, 14, 14)  # a batch of 256 after a LeNet/ResNet-sized conv layer
_NOTE = "activation map (256, 64, 14, 14)"


def _input():
    return (torch.randn(_SHAPE),)


CASES = [
    Case("ReLU", _NOTE, ours.ReLU, nn.ReLU, _input),
    Case("Sigmoid", _NOTE, ours.Sigmoid, nn.Sigmoid, _input),
    Case("Tanh", _NOTE, ours.Tanh, nn.Tanh, _input),
    Case("GELU (erf)", _NOTE, ours.GELU, nn.GELU, _input),
    Case("GELU (tanh)", _NOTE, lambda: ours.GELU(approximate="tanh"), lambda: nn.GELU(approximate="tanh"), _input),
    Case("SiLU", _NOTE, ours.SiLU, nn.SiLU, _input),
    Case("Softmax(dim=1)", "logits (256, 1000)", lambda: ours.Softmax(dim=1), lambda: nn.Softmax(dim=1),
         lambda: (torch.randn(256, 1000),)),
    Case("LogSoftmax(dim=1)", "logits (256, 1000)", lambda: ours.LogSoftmax(dim=1), lambda: nn.LogSoftmax(dim=1),
         lambda: (torch.randn(256, 1000),)),
]
