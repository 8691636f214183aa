"""common.nn.normalization (stage0_components/03_normalization.ipynb) against torch.nn."""
import copy
import itertools
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from common.checks import assert_same_module, assert_same_function, gradcheck, load_reference_state
from common.nn import BatchNorm1d, BatchNorm2d, GroupNorm, LayerNorm
from common.nn import functional as ours_F
from common.nn.normalization import _BatchNormFunction, _LastDimNormFunction

DTYPES = [torch.float64, torch.float32]


def _randomise(module: nn.Module, seed: int = 0) -> None:
    """Non-trivial weights, biases and running statistics (so a swapped or ignored one is noticed)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in itertools.chain(module.named_parameters(), module.named_buffers()):
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
            tensor.copy_(noise.abs() + 0.5 if "var" in name else noise)


def _assert_same_as_float64_truth(ours, reference, x):
    """Float32 ours against the reference run in float64 (for tiny sets, where float32 references round too).

    With one or two values per set the exact input gradient is zero or nearly so, and torch's own float32
    result carries rounding errors up to 3e-5 there; the float64 computation is the ground truth.
    """
    truth = copy.deepcopy(reference).double()
    x_ours, x_truth = x.clone().requires_grad_(), x.double().requires_grad_()
    grad_y = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    y_ours, y_truth = ours(x_ours), truth(x_truth)
    torch.testing.assert_close(y_ours, y_truth.float())
    params_ours, params_truth = list(ours.parameters()), list(truth.parameters())
    grads_ours = torch.autograd.grad(y_ours, [x_ours] + params_ours, grad_y)
    grads_truth = torch.autograd.grad(y_truth, [x_truth] + params_truth, grad_y.double())
    for mine, exact in zip(grads_ours, grads_truth):
        torch.testing.assert_close(mine, exact.float())


def _compare(ours, reference, x, train):
    """Same as torch in float64 (tight) and in float32; tiny sets in float32 against the float64 truth."""
    set_size = getattr(ours, "_test_set_size", 3)
    if x.dtype == torch.float32 and set_size <= 2:
        load_reference_state(ours, reference)
        ours.train(train)
        reference.train(train)
        _assert_same_as_float64_truth(ours, reference, x)
    else:
        assert_same_module(ours, reference, x, train=train)


def _input(shape, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=dtype) * 3 + 2     # not already normalised


BN_CONFIGS = [dict(momentum=m, affine=a, track_running_stats=t)
              for m, a, t in itertools.product([0.1, None, 0.7], [True, False], [True, False])]
BN_CONFIGS += [dict(affine=True, bias=False), dict(eps=1e-3, momentum=0.0)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", BN_CONFIGS, ids=str)
@pytest.mark.parametrize("cls,shape", [(BatchNorm2d, (4, 3, 5, 7)), (BatchNorm2d, (1, 3, 2, 1)),
                                       (BatchNorm2d, (2, 3, 1, 1)), (BatchNorm1d, (6, 3)),
                                       (BatchNorm1d, (2, 3, 9))], ids=str)
def test_batchnorm_train_steps_then_eval(cls, shape, config, dtype):
    reference = getattr(nn, cls.__name__)(3, dtype=dtype, **config)
    ours = cls(3, dtype=dtype, **config)
    _randomise(reference)
    load_reference_state(ours, reference)
    for step in range(4):   # running statistics accumulate: compared (as buffers) after every step
        assert_same_module(ours, reference, _input(shape, dtype, step), train=True, load_state=False)
        if ours.num_batches_tracked is not None:
            assert int(ours.num_batches_tracked) == step + 1
    for step in range(2):   # eval after training: running statistics used (or batch ones if not tracked)
        assert_same_module(ours, reference, _input(shape, dtype, 10 + step), train=False, load_state=False)
    assert repr(ours) == repr(reference)


def test_batchnorm_momentum_none_is_the_cumulative_average():
    bn = BatchNorm1d(2, momentum=None)
    batches = [torch.randn(5, 2) * (k + 1) + k for k in range(6)]
    for batch in batches:
        bn(batch)
    expected_mean = torch.stack([b.mean(0) for b in batches]).mean(0)
    # the first batch replaces the initial values completely (factor 1/1), the k-th weighs 1/k
    expected_var = torch.stack([b.var(0, unbiased=True) for b in batches]).mean(0)
    torch.testing.assert_close(bn.running_mean, expected_mean)
    torch.testing.assert_close(bn.running_var, expected_var)
    assert int(bn.num_batches_tracked) == len(batches)


def test_batchnorm_running_var_is_unbiased_and_normalisation_biased():
    x = torch.randn(3, 2, 2, 2, dtype=torch.float64)
    bn = BatchNorm2d(2, momentum=1.0, dtype=torch.float64)
    y = bn(x)
    values = x.transpose(0, 1).reshape(2, -1)
    torch.testing.assert_close(bn.running_var, values.var(1, unbiased=True))
    biased = values.var(1, unbiased=False)
    normalised = y.transpose(0, 1).reshape(2, -1)
    torch.testing.assert_close(normalised.mean(1), torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(normalised.var(1, unbiased=False), biased / (biased + bn.eps))


@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_state_dict_round_trip_both_ways(dtype):
    reference = nn.BatchNorm2d(4, dtype=dtype)
    ours = BatchNorm2d(4, dtype=dtype)
    for _ in range(3):
        reference(torch.randn(5, 4, 3, 3, dtype=dtype))
    _randomise(reference, seed=3)
    ours.load_state_dict(reference.state_dict())
    fresh = nn.BatchNorm2d(4, dtype=dtype)
    fresh.load_state_dict(ours.state_dict())
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, rtol=0, atol=0)
        torch.testing.assert_close(fresh.state_dict()[key], value, rtol=0, atol=0)
    assert list(ours.state_dict()) == list(reference.state_dict())
    assert ours.state_dict()["num_batches_tracked"].dtype == torch.long
    for keys_of in (dict(affine=False), dict(track_running_stats=False), dict(bias=False)):
        assert list(BatchNorm2d(4, **keys_of).state_dict()) == list(nn.BatchNorm2d(4, **keys_of).state_dict())
    untracked = BatchNorm2d(4, track_running_stats=False)
    assert untracked.running_mean is None and untracked.running_var is None and untracked.num_batches_tracked is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("normalized_shape,lead", [(7, (3,)), ((7,), (2, 3)), ((4, 5), (3,)),
                                                   ((2, 3, 5), (2,)), ((1,), (4,)), (6, ())], ids=str)
@pytest.mark.parametrize("affine,bias", [(True, True), (True, False), (False, True)])
def test_layernorm(normalized_shape, lead, affine, bias, dtype):
    reference = nn.LayerNorm(normalized_shape, elementwise_affine=affine, bias=bias, dtype=dtype)
    ours = LayerNorm(normalized_shape, elementwise_affine=affine, bias=bias, dtype=dtype)
    _randomise(reference)
    trailing = (normalized_shape,) if isinstance(normalized_shape, int) else normalized_shape
    ours._test_set_size = math.prod(trailing)
    for train in (True, False):
        _compare(ours, reference, _input(lead + tuple(trailing), dtype, 1), train)
    assert repr(ours) == repr(reference)
    assert list(ours.state_dict()) == list(reference.state_dict())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("groups,channels", [(1, 6), (2, 6), (3, 6), (6, 6), (4, 8)])
@pytest.mark.parametrize("spatial", [(5, 7), (1, 1), (3,), (), (2, 3, 3)], ids=str)
@pytest.mark.parametrize("affine", [True, False])
def test_groupnorm(groups, channels, spatial, affine, dtype):
    reference = nn.GroupNorm(groups, channels, affine=affine, dtype=dtype)
    ours = GroupNorm(groups, channels, affine=affine, dtype=dtype)
    _randomise(reference)
    ours._test_set_size = channels // groups * math.prod(spatial)
    for train in (True, False):
        _compare(ours, reference, _input((3, channels) + spatial, dtype, 2), train)
    assert repr(ours) == repr(reference)


def test_groupnorm_without_bias():
    reference, ours = nn.GroupNorm(2, 4, bias=False), GroupNorm(2, 4, bias=False)
    _randomise(reference)
    assert_same_module(ours, reference, torch.randn(2, 4, 3, 3))


@pytest.mark.parametrize("dtype", DTYPES)
def test_functional_forms(dtype):
    x = _input((3, 4, 5, 2), dtype, 0)
    weight, bias = torch.randn(4, dtype=dtype), torch.randn(4, dtype=dtype)
    for training in (True, False):
        rm_ours, rv_ours = torch.randn(4, dtype=dtype), torch.rand(4, dtype=dtype) + 0.5
        rm_ref, rv_ref = rm_ours.clone(), rv_ours.clone()
        assert_same_function(lambda t, w, b: ours_F.batch_norm(t, rm_ours, rv_ours, w, b, training, 0.3, 1e-4),
                             lambda t, w, b: F.batch_norm(t, rm_ref, rv_ref, w, b, training, 0.3, 1e-4),
                             x, weight, bias)
        torch.testing.assert_close(rm_ours, rm_ref)
        torch.testing.assert_close(rv_ours, rv_ref)
    assert_same_function(lambda t: ours_F.batch_norm(t, None, None, training=True),
                         lambda t: F.batch_norm(t, None, None, training=True), x)
    ln_weight = torch.randn(5, 2, dtype=dtype)
    assert_same_function(lambda t, w: ours_F.layer_norm(t, (5, 2), w, None, 1e-3),
                         lambda t, w: F.layer_norm(t, (5, 2), w, None, 1e-3), x, ln_weight)
    assert_same_function(lambda t, w, b: ours_F.group_norm(t, 2, w, b, 1e-3),
                         lambda t, w, b: F.group_norm(t, 2, w, b, 1e-3), x, weight, bias)


def test_hand_written_backwards_pass_gradcheck():
    x = torch.randn(3, 4, 5, 2, dtype=torch.float64) * 2 + 1
    gradcheck(lambda t, w, b: _BatchNormFunction.apply(t, w, b, 1e-5)[0], x, torch.randn(4), torch.randn(4))
    gradcheck(lambda t: _BatchNormFunction.apply(t, None, None, 1e-5)[0], torch.randn(5, 3))
    gradcheck(lambda t, w, b: _LastDimNormFunction.apply(t, w, b, 1e-5), torch.randn(3, 4, 6),
              torch.randn(4, 6), torch.randn(6))
    gradcheck(lambda t: _LastDimNormFunction.apply(t, None, None, 1e-5), torch.randn(2, 5))


def test_half_precision_input_with_float32_parameters():
    x = torch.randn(4, 3, 5, 5).to(torch.bfloat16)
    for ours, reference in ((BatchNorm2d(3), nn.BatchNorm2d(3)), (GroupNorm(3, 3), nn.GroupNorm(3, 3))):
        out = ours(x)
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.float(), reference(x.float()), rtol=0.02, atol=0.02)
        out.float().sum().backward()
    out = BatchNorm2d(3).eval()(x)
    assert out.dtype == torch.bfloat16


def test_bad_input_errors():
    cases = [
        (lambda: BatchNorm2d(3)(torch.randn(2, 3, 4)), ValueError, r"BatchNorm2d expected input \(N, 3, H, W\), got shape \(2, 3, 4\)"),
        (lambda: BatchNorm2d(3)(torch.randn(2, 4, 5, 5)), ValueError, r"\(N, 3, H, W\), got shape \(2, 4, 5, 5\)"),
        (lambda: BatchNorm1d(3)(torch.randn(2, 3, 4, 4)), ValueError, r"\(N, 3\) or \(N, 3, L\)"),
        (lambda: BatchNorm1d(3)(torch.randn(1, 3)), ValueError, "more than 1 value per channel when training"),
        (lambda: BatchNorm2d(3)(torch.randn(1, 3, 1, 1)), ValueError, "more than 1 value per channel when training"),
        (lambda: BatchNorm2d(3)(torch.ones(2, 3, 4, 4, dtype=torch.long)), TypeError, "floating-point input, got torch.int64"),
        (lambda: BatchNorm2d(3)(torch.randn(2, 3, 4, 4, dtype=torch.float64)), TypeError, "expected torch.float32 input"),
        (lambda: LayerNorm((4, 5))(torch.randn(2, 5, 4)), ValueError, r"LayerNorm expected input \(\*, 4, 5\), got shape \(2, 5, 4\)"),
        (lambda: LayerNorm(4)(torch.randn(())), ValueError, r"got shape \(\)"),
        (lambda: GroupNorm(4, 6), ValueError, r"num_channels \(6\) must be divisible by num_groups \(4\)"),
        (lambda: GroupNorm(2, 6)(torch.randn(2, 4, 3)), ValueError, r"GroupNorm expected input \(N, 6, \*\), got shape \(2, 4, 3\)"),
        (lambda: GroupNorm(2, 6)(torch.randn(6)), ValueError, r"got shape \(6,\)"),
        (lambda: ours_F.batch_norm(torch.randn(2, 3), None, None, training=False), ValueError, "needs running_mean"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()
    # eval mode is fine with a single value per channel (the running statistics are used)
    BatchNorm2d(3).eval()(torch.randn(1, 3, 1, 1))
    # a failed call does not count as a tracked batch
    bn = BatchNorm1d(3)
    with pytest.raises(ValueError):
        bn(torch.randn(1, 3))
    assert int(bn.num_batches_tracked) == 0
