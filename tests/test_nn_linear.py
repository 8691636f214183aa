"""common.nn.linear (stage0_components/04_linear_dropout.ipynb) against torch.nn.

Linear, Dropout, Flatten and Identity: forward, input and parameter gradients,
state_dict round trip, train and eval mode, torch's initialisation (seeded
equality and a statistical test), dropout's keep rate and scale, and the
error messages for bad input.
"""
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import common.nn as ours
from common.checks import assert_same_function, assert_same_module
from common.nn import functional as ours_F

DTYPES = [torch.float64, torch.float32]


def _tols(dtype):
    return dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- Linear

LINEAR_CASES = [
    # (in_features, out_features, bias, input shape)
    (7, 5, True, (7,)),             # 1-D input: a single vector
    (7, 5, False, (7,)),
    (13, 1, True, (4, 13)),         # one output
    (1, 9, True, (3, 1)),           # one input feature
    (16, 8, False, (10, 16)),
    (5, 3, True, (2, 3, 4, 5)),     # 4-D input: leading dims broadcast
    (5, 3, False, (2, 3, 4, 5)),
    (6, 4, True, (0, 6)),           # empty batch
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("in_f,out_f,bias,shape", LINEAR_CASES)
def test_linear_matches_torch(in_f, out_f, bias, shape, dtype):
    torch.manual_seed(0)
    theirs = nn.Linear(in_f, out_f, bias=bias, dtype=dtype)
    mine = ours.Linear(in_f, out_f, bias=bias, dtype=dtype)
    x = torch.randn(shape, dtype=dtype)
    for train in (True, False):
        report = assert_same_module(mine, theirs, x, train=train, **_tols(dtype))
        names = [row[0] for row in report.rows]
        assert "grad input[0]" in names and "grad weight" in names
        assert ("grad bias" in names) == bias


def test_linear_on_a_non_contiguous_input():
    torch.manual_seed(1)
    theirs = nn.Linear(6, 4, dtype=torch.float64)
    x = torch.randn(6, 5, 3, dtype=torch.float64).transpose(0, 2)  # (3, 5, 6), non-contiguous
    assert not x.is_contiguous()
    assert_same_module(ours.Linear(6, 4, dtype=torch.float64), theirs, x, **_tols(torch.float64))


@pytest.mark.parametrize("bias", [True, False])
def test_linear_state_dict_round_trip(bias):
    theirs = nn.Linear(11, 3, bias=bias)
    mine = ours.Linear(11, 3, bias=bias)
    assert list(mine.state_dict()) == list(theirs.state_dict())
    mine.load_state_dict(theirs.state_dict())
    back = nn.Linear(11, 3, bias=bias)
    back.load_state_dict(mine.state_dict())
    x = torch.randn(4, 11)
    torch.testing.assert_close(back(x), theirs(x), rtol=0, atol=0)
    assert mine.extra_repr() == theirs.extra_repr()


def test_functional_linear_matches_torch():
    torch.manual_seed(2)
    x = torch.randn(3, 2, 8, dtype=torch.float64)
    w = torch.randn(5, 8, dtype=torch.float64)
    b = torch.randn(5, dtype=torch.float64)
    assert_same_function(ours_F.linear, F.linear, x, w, b, **_tols(torch.float64))
    assert_same_function(ours_F.linear, F.linear, x, w, **_tols(torch.float64))


@pytest.mark.parametrize("in_f,out_f", [(1, 1), (10, 3), (784, 256), (300, 0)])
def test_linear_init_draws_what_torch_draws(in_f, out_f):
    """Same seed, same numbers: the bound and the order of the draws are torch's."""
    torch.manual_seed(123)
    theirs = nn.Linear(in_f, out_f)
    torch.manual_seed(123)
    mine = ours.Linear(in_f, out_f)
    assert torch.equal(mine.weight, theirs.weight)
    assert torch.equal(mine.bias, theirs.bias)
    after_ours = torch.randn(3)  # both consumed the same number of random draws
    torch.manual_seed(123)
    nn.Linear(in_f, out_f)
    assert torch.equal(after_ours, torch.randn(3))


def test_linear_init_statistics():
    """U(-b, b), b = 1/sqrt(fan_in): inside the bound, mean 0, variance b^2/3 = 1/(3 fan_in), flat CDF."""
    torch.manual_seed(0)
    fan_in, fan_out = 4096, 256
    layer = ours.Linear(fan_in, fan_out)
    w = layer.weight.detach().double().flatten()
    n, bound = w.numel(), 1 / math.sqrt(fan_in)
    assert w.abs().max() <= bound
    assert w.max() > bound * (1 - 1e-3) and w.min() < -bound * (1 - 1e-3)  # the bound is reached
    variance = bound**2 / 3
    assert abs(w.mean().item()) < 5 * math.sqrt(variance / n)
    # Var(w^2) = E w^4 - (E w^2)^2 = b^4/5 - b^4/9 = 4 b^4 / 45
    assert abs((w**2).mean().item() - variance) < 5 * math.sqrt(4 * bound**4 / 45 / n)
    # Kolmogorov-Smirnov against the uniform CDF: sqrt(n) D < 1.95 has probability 0.999
    sorted_w = w.sort().values
    cdf = (sorted_w + bound) / (2 * bound)
    upper = torch.arange(1, n + 1, dtype=torch.float64) / n
    d = torch.maximum(upper - cdf, cdf - (upper - 1 / n)).max().item()
    assert math.sqrt(n) * d < 1.95
    # A wrong bound must fail this check: sqrt(2) times the bound is rejected.
    cdf_wrong = (sorted_w + bound * math.sqrt(2)) / (2 * bound * math.sqrt(2))
    d_wrong = torch.maximum(upper - cdf_wrong, cdf_wrong - (upper - 1 / n)).max().item()
    assert math.sqrt(n) * d_wrong > 1.95
    b = layer.bias.detach()
    assert b.abs().max() <= bound and b.std() > 0


def test_linear_errors():
    layer = ours.Linear(784, 10)
    with pytest.raises(ValueError, match=r"Linear expected input \(\.\.\., 784\), got shape \(8, 100\)"):
        layer(torch.randn(8, 100))
    with pytest.raises(ValueError, match=r"Linear expected input \(\.\.\., 784\), got shape \(\)"):
        layer(torch.tensor(1.0))
    with pytest.raises(TypeError, match=r"Linear expected a floating-point input, got dtype torch.int64"):
        layer(torch.zeros(2, 784, dtype=torch.long))
    with pytest.raises(TypeError, match=r"dtype torch.float32 \(the weight's\), got torch.float64"):
        layer(torch.zeros(2, 784, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"expected a torch.Tensor, got list"):
        layer([0.0] * 784)
    with pytest.raises(ValueError, match=r"in_features to be a non-negative int, got -1"):
        ours.Linear(-1, 3)
    with pytest.raises(ValueError, match=r"out_features to be a non-negative int, got 2.5"):
        ours.Linear(3, 2.5)
    with pytest.raises(ValueError, match=r"linear expected input \(\.\.\., 4\), got shape \(2, 3\)"):
        ours_F.linear(torch.randn(2, 3), torch.randn(5, 4))


def test_linear_dtype_mismatch_names_the_fix():
    # each direction names the conversion that makes input and weight agree, for the module and the function
    with pytest.raises(TypeError, match=r"convert the input with \.float\(\) or the module with \.double\(\)"):
        ours.Linear(4, 3)(torch.zeros(2, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"convert the input with \.double\(\) or the module with \.float\(\)"):
        ours.Linear(4, 3, dtype=torch.float64)(torch.zeros(2, 4))
    with pytest.raises(TypeError, match=r"convert the input with \.float\(\) or the weight with \.half\(\)"):
        ours_F.linear(torch.zeros(2, 4, dtype=torch.float16), torch.zeros(3, 4))
    layer = ours.Linear(4, 3)
    x = torch.zeros(2, 4, dtype=torch.float64)
    assert layer(x.float()).dtype == torch.float32 and layer.double()(x).dtype == torch.float64  # both fixes work


# ---------------------------------------------------------------- Dropout

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("shape", [(1000,), (8, 3, 5, 7)])
def test_dropout_matches_torch_with_the_same_rng(p, shape, dtype):
    """The same RNG state gives the same mask: output and gradient equal torch's exactly."""
    x = torch.randn(shape, dtype=dtype)
    report = assert_same_module(ours.Dropout(p), nn.Dropout(p), x, train=True, rtol=0, atol=0)
    assert all(exact for _, exact, _ in report.rows)
    assert_same_module(ours.Dropout(p), nn.Dropout(p), x, train=False, rtol=0, atol=0)
    assert_same_function(ours_F.dropout, F.dropout, x, kwargs={"p": p, "training": True}, rtol=0, atol=0)


def test_dropout_eval_is_the_identity():
    layer = ours.Dropout(0.7).eval()
    x = torch.randn(5, 6)
    assert layer(x) is x
    assert ours_F.dropout(x, 0.7, training=False) is x


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_keep_rate_scale_and_gradient_mask(p):
    torch.manual_seed(0)
    n = 200_000
    x = (torch.rand(n, dtype=torch.float64) + 0.5).requires_grad_(True)  # never zero, so zeros mean "dropped"
    layer = ours.Dropout(p).train()
    y = layer(x)
    kept = y != 0
    keep_fraction = kept.double().mean().item()
    sigma = math.sqrt(p * (1 - p) / n)  # binomial standard deviation of the kept fraction
    assert abs(keep_fraction - (1 - p)) < 5 * sigma, (keep_fraction, 1 - p, sigma)
    torch.testing.assert_close(y[kept], x.detach()[kept] / (1 - p), rtol=1e-15, atol=0)
    weights = torch.randn(n, dtype=torch.float64)
    (y * weights).sum().backward()
    expected = torch.where(kept, weights / (1 - p), torch.zeros_like(weights))
    torch.testing.assert_close(x.grad, expected, rtol=1e-15, atol=0)
    # the mean is preserved in expectation: E[y] = E[x]
    assert abs(y.mean().item() - x.mean().item()) < 5 * math.sqrt(p / (1 - p) * (x**2).mean().item() / n)


def test_dropout_masks_differ_between_calls():
    layer = ours.Dropout(0.5)
    x = torch.ones(1000)
    assert not torch.equal(layer(x), layer(x))


def test_dropout_p0_and_p1():
    x = torch.randn(4, 5, requires_grad=True)
    assert ours.Dropout(0.0).train()(x) is x
    y = ours.Dropout(1.0).train()(x)
    assert torch.equal(y, torch.zeros(4, 5))
    y.sum().backward()
    assert torch.equal(x.grad, torch.zeros(4, 5))


def test_dropout_inplace():
    torch.manual_seed(3)
    x = torch.randn(50, 20)
    ref = x.clone()
    state = torch.get_rng_state()
    y = ours.Dropout(0.3, inplace=True)(x)
    assert y.data_ptr() == x.data_ptr()
    torch.set_rng_state(state)
    torch.testing.assert_close(y, F.dropout(ref, 0.3), rtol=0, atol=0)


def test_dropout_repr_and_state_dict():
    assert ours.Dropout(0.25, inplace=True).extra_repr() == nn.Dropout(0.25, inplace=True).extra_repr()
    assert ours.Dropout().state_dict() == {}


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan"), "0.5", None, True])
def test_dropout_rejects_bad_p(p):
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1, but got"):
        ours.Dropout(p)
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1"):
        ours_F.dropout(torch.randn(3), p)


def test_dropout_rejects_integer_input():
    with pytest.raises(TypeError, match="Dropout expected a floating-point input, got dtype torch.int64"):
        ours.Dropout(0.5)(torch.arange(4))


# ---------------------------------------------------------------- Flatten, Identity

FLATTEN_CASES = [
    ((2, 3, 4, 5), 1, -1),
    ((2, 3, 4, 5), 0, -1),
    ((2, 3, 4, 5), 1, 2),
    ((2, 3, 4, 5), -3, -2),
    ((2, 3, 4, 5), 2, 2),      # a single dimension: unchanged shape
    ((2, 3, 4, 5), -1, -1),
    ((2, 3, 4, 5), 0, 1),
    ((2, 0, 4), 1, -1),        # empty
    ((6,), 0, -1),
    ((6,), -1, 0),
    ((), 0, -1),               # 0-d
]


@pytest.mark.parametrize("shape,start,end", FLATTEN_CASES)
def test_flatten_matches_torch(shape, start, end):
    x = torch.randn(shape, dtype=torch.float64)
    assert_same_module(ours.Flatten(start, end), nn.Flatten(start, end), x, rtol=0, atol=0)
    assert ours.Flatten(start, end)(x).shape == nn.Flatten(start, end)(x).shape


def test_flatten_defaults_views_and_non_contiguous():
    x = torch.randn(8, 1, 28, 28)
    assert ours.Flatten()(x).shape == (8, 784)
    assert ours.Flatten()(x).data_ptr() == x.data_ptr()  # a view, no copy
    t = torch.randn(4, 5, 6).transpose(0, 2)  # (6, 5, 4), non-contiguous
    torch.testing.assert_close(ours.Flatten(0, 1)(t), nn.Flatten(0, 1)(t), rtol=0, atol=0)
    assert ours.Flatten(2, -1).extra_repr() == nn.Flatten(2, -1).extra_repr()
    x_int = torch.arange(24).reshape(2, 3, 4)
    assert torch.equal(ours.Flatten()(x_int), nn.Flatten()(x_int))


def test_flatten_errors():
    with pytest.raises(ValueError, match=r"Flatten\(1, -1\) expected an input with more than 1 dimensions.*got shape \(5,\)"):
        ours.Flatten()(torch.randn(5))
    with pytest.raises(ValueError, match=r"for end_dim=-4, got shape \(2, 3, 4\)"):
        ours.Flatten(0, -4)(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match=r"start_dim=2 comes after end_dim=1"):
        ours.Flatten(2, 1)(torch.randn(2, 3, 4))
    with pytest.raises(TypeError, match="Flatten expected a torch.Tensor, got tuple"):
        ours.Flatten()((1, 2))


def test_identity():
    layer = ours.Identity(54, unused_argument=0.1, other="x")
    x = torch.randn(3, 4, requires_grad=True)
    assert layer(x) is x
    assert_same_module(layer, nn.Identity(54, unused_argument=0.1), x, rtol=0, atol=0)
    assert layer.state_dict() == {}


# ---------------------------------------------------------------- together

def test_an_mlp_of_our_parts_matches_torch():
    torch.manual_seed(0)
    theirs = nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.Dropout(0.3), nn.Identity(), nn.Linear(7, 3))
    mine = nn.Sequential(ours.Flatten(), ours.Linear(12, 7), ours.Dropout(0.3), ours.Identity(), ours.Linear(7, 3))
    x = torch.randn(5, 3, 2, 2, dtype=torch.float32)
    assert_same_module(mine, theirs, x, train=True)
    assert_same_module(mine, theirs, x, train=False)
