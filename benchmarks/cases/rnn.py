"""Benchmark cases for stage1_advanced/02_lstm (common.nn.LSTM, common.nn.LSTMCell).

torch's CPU LSTM runs its time loop in C++ (one fused kernel per step); ours is a Python loop of tensor
operations, so the ratio measures what that loop costs at the shapes the notebook trains with.
"""
import torch
from torch import nn

import common.nn as ours
from components import Case

_ROWS = "Fashion-MNIST rows: batch 256, 28 steps of 28 pixels"


def _rows():
    return (torch.randn(256, 28, 28),)  # (N, L, I), batch_first


CASES = [
    Case("LSTM bidirectional, hidden 128", _ROWS,
         lambda: ours.LSTM(28, 128, batch_first=True, bidirectional=True),
         lambda: nn.LSTM(28, 128, batch_first=True, bidirectional=True), _rows),
    Case("LSTM 2 layers, hidden 128", _ROWS,
         lambda: ours.LSTM(28, 128, num_layers=2, batch_first=True),
         lambda: nn.LSTM(28, 128, num_layers=2, batch_first=True), _rows),
    Case("LSTMCell, hidden 128", "one step, batch 256, 28 inputs",
         lambda: ours.LSTMCell(28, 128), lambda: nn.LSTMCell(28, 128), lambda: (torch.randn(256, 28),)),
]
