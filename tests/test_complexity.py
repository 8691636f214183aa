import torch
from torch import nn

from common.complexity import profile, profile_table


def test_counts_match_hand_arithmetic():
    model = nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2),   # out 6x28x28, each output: 1*5*5 MACs
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 12, 3, groups=3),   # out 12x12x12, each output: (6/3)*3*3 MACs
        nn.Flatten(),
        nn.Linear(12 * 12 * 12, 10),
    )
    p = profile(model, (1, 1, 28, 28))
    assert p.macs == 6 * 28 * 28 * 25 + 12 * 12 * 12 * 2 * 9 + 1728 * 10
    assert p.parameters == (6 * 25 + 6) + (12 * 2 * 9 + 12) + (1728 * 10 + 10)
    assert profile(model, (4, 1, 28, 28)).macs == 4 * p.macs, "MACs scale with the batch"
    assert model.training, "the model's mode is restored"
    assert "| 17" in profile_table({"toy": model}, (1, 1, 28, 28))


def test_linear_on_sequences_counts_every_position():
    model = nn.Linear(8, 4)
    assert profile(model, (2, 5, 8)).macs == 2 * 5 * 4 * 8
    assert str(profile(model, (1, 8))) == "36 parameters, 0.00 M MACs"


def test_a_module_can_add_the_macs_no_linear_sees():
    class Products(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 4)

        def forward(self, x):                                   # (N, L, 4): proj, then x x^T (L x L x 4 MACs)
            x = self.proj(x)
            return x @ x.transpose(1, 2)

        def extra_macs(self, inputs, output):
            return output.numel() * inputs[0].shape[-1]

    measured = profile(Products(), (1, 3, 4))
    assert measured.macs == 3 * 4 * 4 + 3 * 3 * 4
