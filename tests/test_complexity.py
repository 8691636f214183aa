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
