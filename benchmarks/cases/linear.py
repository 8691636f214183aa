"""Benchmark cases for stage0_components/04_linear_dropout (common.nn.linear)."""
import torch
from torch import nn

import common.nn as ours
from components import Case

_MLP_NOTE = "MLP hidden layer, batch 256"


def _hidden():
    return (torch.randn(256, 1024),)


CASES = [
    Case("Linear 784->1024", "Fashion-MNIST MLP input layer, batch 256", lambda: ours.Linear(784, 1024),
         lambda: nn.Linear(784, 1024), lambda: (torch.randn(256, 784),)),
    Case("Linear 1024->1024", _MLP_NOTE, lambda: ours.Linear(1024, 1024), lambda: nn.Linear(1024, 1024), _hidden),
    Case("Linear 256->768 (3-D input)", "transformer tokens (64, 50, 256)", lambda: ours.Linear(256, 768),
         lambda: nn.Linear(256, 768), lambda: (torch.randn(64, 50, 256),)),
    Case("Dropout(0.5)", _MLP_NOTE, lambda: ours.Dropout(0.5), lambda: nn.Dropout(0.5), _hidden),
    Case("Flatten", "feature maps (256, 64, 7, 7)", ours.Flatten, nn.Flatten, lambda: (torch.randn(256, 64, 7, 7),)),
]
