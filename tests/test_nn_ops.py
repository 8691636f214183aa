"""The torchvision.ops pieces of stage3_resnets/04_efficientnet.ipynb against torchvision.ops.

Conv2dNormActivation, SqueezeExcitation, StochasticDepth and stochastic_depth are exported with the models to
common.models.efficientnet (the exporter writes one module per notebook); torchvision keeps them in its ops.

SqueezeExcitation and Conv2dNormActivation: same state_dict keys, same outputs, gradients and BatchNorm
buffers as torchvision's (float64, train and eval) over a grid of configurations. StochasticDepth /
stochastic_depth: its behaviour in training checked statistically (drop fraction within a binomial bound,
the mean preserved, kept rows rescaled by exactly 1 / (1 - p)), eval and p = 0 are the identity, p = 1 gives
zeros, and under the same seed it draws the same masks as torchvision's. Plus the error messages.
"""
import math
from functools import partial

import pytest
import torch
import torchvision
from torch import nn

import common.nn as ours
from common.checks import assert_same_function, assert_same_module
from common.models.efficientnet import Conv2dNormActivation, SqueezeExcitation, StochasticDepth, stochastic_depth

TOLS = dict(rtol=1e-10, atol=1e-12)
Z = 5.0     # half-width of the confidence bounds in standard deviations: a correct layer fails with p < 1e-6


def _randomize_batchnorms(module, generator):
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=generator)
                m.bias.uniform_(-0.5, 0.5, generator=generator)
                m.running_mean.uniform_(-0.5, 0.5, generator=generator)
                m.running_var.uniform_(0.5, 1.5, generator=generator)


# ---------------------------------------------------------------- stochastic depth: statistics

@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_row_mode_drops_a_binomial_fraction_and_preserves_the_mean(p):
    torch.manual_seed(0)
    rows = 20_000
    x = torch.rand(rows, 3, 2, 2, dtype=torch.float64) + 0.5            # (N, C, H, W), all positive
    y = stochastic_depth(x, p, "row", training=True)
    dropped = (y == 0).all(dim=(1, 2, 3))                               # one decision per row
    kept = (y != 0).all(dim=(1, 2, 3))
    assert bool((dropped | kept).all()), "a row is either dropped entirely or kept entirely"
    torch.testing.assert_close(y[kept], x[kept] / (1 - p), rtol=1e-14, atol=0)
    count, mean, sd = dropped.sum().item(), rows * p, math.sqrt(rows * p * (1 - p))
    assert abs(count - mean) <= Z * sd, f"{count} rows dropped, expected {mean:.0f} +- {Z * sd:.0f}"
    # E[mask / (1 - p)] = 1: the mean of the per-row scale is 1 within its own binomial bound
    scale = (y / x)[:, 0, 0, 0]
    bound = Z * math.sqrt(p / (1 - p) / rows)                          # std of scale is sqrt(p / (1 - p))
    assert abs(scale.mean().item() - 1) <= bound


@pytest.mark.parametrize("p", [0.2, 0.7])
def test_batch_mode_drops_the_whole_batch_with_probability_p(p):
    torch.manual_seed(1)
    calls = 4_000
    x = torch.rand(5, 4, dtype=torch.float64) + 0.5
    dropped = 0
    for _ in range(calls):
        y = stochastic_depth(x, p, "batch", training=True)
        if bool((y == 0).all()):
            dropped += 1
        else:
            torch.testing.assert_close(y, x / (1 - p), rtol=1e-14, atol=0)   # all kept, all rescaled
    mean, sd = calls * p, math.sqrt(calls * p * (1 - p))
    assert abs(dropped - mean) <= Z * sd, f"{dropped} of {calls} batches dropped, expected {mean:.0f}"


@pytest.mark.parametrize("mode", ["row", "batch"])
def test_identity_in_eval_and_at_p0_zeros_at_p1(mode):
    x = torch.randn(16, 3, 4, 4)
    assert stochastic_depth(x, 0.5, mode, training=False) is x
    assert stochastic_depth(x, 0.0, mode, training=True) is x
    assert torch.equal(stochastic_depth(x, 1.0, mode, training=True), torch.zeros_like(x))
    layer = StochasticDepth(0.9, mode)
    layer.eval()
    assert torch.equal(layer(x), x)
    layer.train()
    assert not torch.equal(layer(x), x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("mode", ["row", "batch"])
@pytest.mark.parametrize("shape", [(64, 8, 5, 5), (300,), (32, 7)])
def test_same_draws_output_and_gradient_as_torchvision(shape, mode, dtype):
    """Same seed, same masks: outputs and input gradients equal torchvision's exactly."""
    reference = torchvision.ops.stochastic_depth
    x = torch.randn(shape, dtype=dtype)
    for seed in range(3):
        torch.manual_seed(seed)
        report = assert_same_function(stochastic_depth, reference, x, kwargs=dict(p=0.4, mode=mode, training=True),
                                      rtol=0, atol=0)
        assert all(row[1] for row in report.rows), "the masks differ"
    torch.manual_seed(5)
    mine = StochasticDepth(0.3, mode)(x)
    torch.manual_seed(5)
    theirs = torchvision.ops.StochasticDepth(0.3, mode)(x)
    assert torch.equal(mine, theirs)
    assert repr(StochasticDepth(0.3, mode)) == repr(torchvision.ops.StochasticDepth(0.3, mode))


def test_stochastic_depth_errors():
    x = torch.randn(4, 3)
    for p in (-0.1, 1.5, "0.5", True):
        with pytest.raises(ValueError, match=r"stochastic_depth expected a drop probability p in \[0, 1\]"):
            stochastic_depth(x, p, "row")
    with pytest.raises(ValueError, match="expected mode 'batch' or 'row', got 'column'"):
        stochastic_depth(x, 0.5, "column")
    with pytest.raises(ValueError, match=r"expected input \(N, \.\.\.\) with a batch dimension, got \(\)"):
        stochastic_depth(torch.tensor(1.0), 0.5, "row")
    with pytest.raises(ValueError, match="StochasticDepth expected a drop probability"):
        StochasticDepth(2.0, "row")
    with pytest.raises(ValueError, match="StochasticDepth expected mode"):
        StochasticDepth(0.2, "rows")


# ---------------------------------------------------------------- squeeze-excitation

SE_CASES = [
    # (input channels, squeeze channels, our activation, torch's activation, (N, H, W))
    (16, 4, ours.ReLU, nn.ReLU, (2, 5, 5)),                                # torchvision's defaults
    (24, 6, partial(ours.SiLU, inplace=True), partial(nn.SiLU, inplace=True), (3, 7, 6)),   # EfficientNet's
    (8, 1, ours.SiLU, nn.SiLU, (1, 1, 1)),                                 # squeeze to one channel, 1x1 map
    (5, 7, ours.ReLU, nn.ReLU, (2, 3, 9)),                                 # "squeeze" wider than the input
]


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("channels,squeeze,act,torch_act,nhw", SE_CASES)
def test_squeeze_excitation_matches_torchvision(channels, squeeze, act, torch_act, nhw, train):
    torch.manual_seed(0)
    reference = torchvision.ops.SqueezeExcitation(channels, squeeze, activation=torch_act).double()
    mine = SqueezeExcitation(channels, squeeze, activation=act).double()
    assert list(mine.state_dict()) == list(reference.state_dict()) == [
        "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    n, h, w = nhw
    x = torch.randn(n, channels, h, w, dtype=torch.float64)
    report = assert_same_module(mine, reference, x, train=train, **TOLS)
    names = [row[0] for row in report.rows]
    assert "grad input[0]" in names and "grad fc1.weight" in names and "grad fc2.bias" in names


def test_squeeze_excitation_gates_channels_by_a_sigmoid_of_the_channel_means():
    """Written out by hand: s = sigmoid(W2 relu(W1 mean(x) + b1) + b2), output s * x."""
    torch.manual_seed(1)
    se = SqueezeExcitation(6, 3).double()
    x = torch.randn(2, 6, 4, 4, dtype=torch.float64)
    z = x.mean(dim=(2, 3))                                                          # (N, C)
    hidden = torch.relu(z @ se.fc1.weight[:, :, 0, 0].T + se.fc1.bias)              # (N, S)
    gates = torch.sigmoid(hidden @ se.fc2.weight[:, :, 0, 0].T + se.fc2.bias)       # (N, C)
    torch.testing.assert_close(se(x), gates[:, :, None, None] * x, rtol=1e-12, atol=1e-12)


def test_squeeze_excitation_errors():
    se = SqueezeExcitation(8, 2)
    with pytest.raises(ValueError, match=r"SqueezeExcitation expected input \(N, 8, H, W\), got \(2, 4, 3, 3\)"):
        se(torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match=r"SqueezeExcitation expected input \(N, 8, H, W\), got \(8, 3, 3\)"):
        se(torch.randn(8, 3, 3))
    with pytest.raises(ValueError, match="squeeze_channels to be a positive int, got 0"):
        SqueezeExcitation(8, 0)


# ---------------------------------------------------------------- Conv2dNormActivation

def _norm(kind, torch_side):
    if kind is None:
        return None
    if kind == "bn":
        return nn.BatchNorm2d if torch_side else ours.BatchNorm2d
    return partial(nn.BatchNorm2d if torch_side else ours.BatchNorm2d, eps=1e-3, momentum=0.01)


def _act(kind, torch_side):
    return {None: None, "relu": nn.ReLU if torch_side else ours.ReLU,
            "silu": nn.SiLU if torch_side else ours.SiLU}[kind]


CNA_CASES = [
    # (in, out, kwargs for both, norm, activation, (N, H, W))
    (3, 8, dict(), "bn", "relu", (2, 9, 9)),                                              # torchvision's defaults
    (4, 6, dict(kernel_size=1), "bn", "silu", (2, 5, 4)),                                 # pointwise
    (6, 6, dict(kernel_size=5, stride=2, groups=6), "bn_eps", "silu", (3, 11, 10)),      # depthwise, odd size
    (4, 8, dict(kernel_size=3, groups=2, dilation=2), "bn", "relu", (2, 9, 9)),          # grouped, dilated
    (3, 5, dict(kernel_size=(3, 5), stride=(1, 2)), "bn", "relu", (2, 8, 9)),            # rectangular kernel
    (3, 5, dict(kernel_size=3, padding=0, bias=True), "bn", None, (2, 7, 7)),            # explicit padding, bias
    (3, 5, dict(kernel_size=3, stride=2), None, "silu", (2, 8, 8)),                      # no norm: bias by default
    (3, 5, dict(kernel_size=3, inplace=None), None, None, (1, 6, 6)),                    # conv only
    (2, 4, dict(kernel_size=3, padding="same"), "bn", "relu", (2, 6, 5)),                # padding by name
]


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("cin,cout,kwargs,norm,act,nhw", CNA_CASES)
def test_conv2d_norm_activation_matches_torchvision(cin, cout, kwargs, norm, act, nhw, train):
    torch.manual_seed(0)
    reference = torchvision.ops.Conv2dNormActivation(cin, cout, norm_layer=_norm(norm, True),
                                                     activation_layer=_act(act, True), **kwargs).double()
    mine = Conv2dNormActivation(cin, cout, norm_layer=_norm(norm, False),
                                     activation_layer=_act(act, False), **kwargs).double()
    _randomize_batchnorms(reference, torch.Generator().manual_seed(1))
    assert list(mine.state_dict()) == list(reference.state_dict())
    assert [type(m).__name__ for m in mine] == [type(m).__name__ for m in reference]
    conv, their_conv = mine[0], reference[0]
    for attribute in ("kernel_size", "stride", "padding", "dilation", "groups"):
        assert getattr(conv, attribute) == getattr(their_conv, attribute), attribute
    assert (conv.bias is None) == (their_conv.bias is None)
    assert mine.out_channels == reference.out_channels == cout
    if norm is not None:
        assert (mine[1].eps, mine[1].momentum) == (reference[1].eps, reference[1].momentum)
    n, h, w = nhw
    x = torch.randn(n, cin, h, w, dtype=torch.float64)
    report = assert_same_module(mine, reference, x, train=train, **TOLS)
    if train and norm is not None:
        assert any("running_var" in row[0] for row in report.rows)


def test_conv2d_norm_activation_errors():
    block = Conv2dNormActivation(3, 4)
    with pytest.raises(ValueError, match=r"expected input \(N, 3, H, W\) or \(3, H, W\), got shape \(2, 5, 8, 8\)"):
        block(torch.randn(2, 5, 8, 8))
    with pytest.raises(ValueError, match="kernel_size and dilation to be ints or pairs"):
        Conv2dNormActivation(3, 4, kernel_size=(3, 3, 3))
