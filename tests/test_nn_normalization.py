"""common.nn.normalization (stage0_components/03_normalization.ipynb) against torch.nn."""
import copy
import itertools
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from common.checks import assert_same_module, assert_same_function, gradcheck, load_reference_state
from torchvision.models import convnext as torchvision_convnext

from common.nn import BatchNorm1d, BatchNorm2d, GroupNorm, LayerNorm, LayerNorm2d
from common.nn import functional as ours_F
from common.nn import normalization
from common.nn.normalization import _BatchNormFunction, _ChannelNormFunction, _GroupNormFunction, _RowNormFunction

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
    x = torch.randn(3, 4, 10, dtype=torch.float64) * 2 + 1                       # (N, C, S)
    gradcheck(lambda t, w, b: _BatchNormFunction.apply(t, w, b, 1e-5)[0], x, torch.randn(4), torch.randn(4))
    gradcheck(lambda t, w, b: _BatchNormFunction.apply(t, w, b, 1e-5)[0], torch.randn(7, 4), torch.randn(4),
              torch.randn(4))
    gradcheck(lambda t: _BatchNormFunction.apply(t, None, None, 1e-5)[0], torch.randn(5, 3))
    gradcheck(lambda t, w, b: _RowNormFunction.apply(t, w, b, 1e-5), torch.randn(6, 5), torch.randn(5), torch.randn(5))
    gradcheck(lambda t, b: _RowNormFunction.apply(t, None, b, 1e-5), torch.randn(6, 5), torch.randn(5))
    gradcheck(lambda t: _RowNormFunction.apply(t, None, None, 1e-5), torch.randn(2, 5))
    gradcheck(lambda t, w, b: _GroupNormFunction.apply(t, w, b, 2, 1e-5), x, torch.randn(4), torch.randn(4))
    gradcheck(lambda t, w: _GroupNormFunction.apply(t, w, None, 1, 1e-5), torch.randn(3, 4, 1), torch.randn(4))
    gradcheck(lambda t: _GroupNormFunction.apply(t, None, None, 4, 1e-5), x)
    gradcheck(lambda t, w, b: _ChannelNormFunction.apply(t, w, b, 1e-5), x, torch.randn(4), torch.randn(4))
    gradcheck(lambda t: _ChannelNormFunction.apply(t, None, None, 1e-5), torch.randn(2, 5, 3))


@pytest.mark.parametrize("function,args", [
    (_BatchNormFunction, (torch.randn(9, 3, 5), torch.randn(3), torch.randn(3))),
    (_BatchNormFunction, (torch.randn(23, 3), torch.randn(3), torch.randn(3))),
    (_RowNormFunction, (torch.randn(13, 4), torch.randn(4), torch.randn(4))),
    (_GroupNormFunction, (torch.randn(7, 4, 3), torch.randn(4), torch.randn(4), 2)),
    (_ChannelNormFunction, (torch.randn(7, 4, 3), torch.randn(4), torch.randn(4))),
], ids=lambda value: getattr(value, "__name__", ""))
def test_gradcheck_with_many_small_chunks(function, args, monkeypatch):
    """The chunked loops, with chunks of one or two items and a remainder (the default chunk holds all of these)."""
    monkeypatch.setattr(normalization, "_CHUNK_NUMEL", 25)
    tensors = [a.double() * 2 + 1 if isinstance(a, torch.Tensor) else a for a in args]
    first = (lambda *t: function.apply(*t, 1e-5)[0]) if function is _BatchNormFunction else \
        (lambda *t: function.apply(*t, 1e-5))
    gradcheck(first, *tensors)


def test_half_precision_input_with_float32_parameters():
    x = torch.randn(4, 3, 5, 5).to(torch.bfloat16)
    for ours, reference in ((BatchNorm2d(3), nn.BatchNorm2d(3)), (GroupNorm(3, 3), nn.GroupNorm(3, 3)),
                            (LayerNorm(5), nn.LayerNorm(5)), (LayerNorm2d(3), torchvision_convnext.LayerNorm2d(3)),
                            (BatchNorm1d(3), nn.BatchNorm1d(3))):
        inputs = x[:, :, 0] if isinstance(ours, BatchNorm1d) else x              # (N, C, L) for BatchNorm1d
        out = ours(inputs)
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.float(), reference(inputs.float()), rtol=0.02, atol=0.02)
        out.float().sum().backward()
    out = BatchNorm2d(3).eval()(x)
    assert out.dtype == torch.bfloat16


def test_dtype_mismatch_names_the_fix():
    # float64 input into float32 parameters (and the reverse): the message names .float() / .double(), and both work
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    for make in (lambda: BatchNorm2d(4), lambda: GroupNorm(2, 4), lambda: LayerNorm2d(4), lambda: LayerNorm((3, 3))):
        with pytest.raises(TypeError, match=r"got torch.float64: convert the input with \.float\(\) or the module with \.double\(\)"):
            make()(x)
        with pytest.raises(TypeError, match=r"got torch.float32: convert the input with \.double\(\) or the module with \.float\(\)"):
            make().double()(x.float())
        assert make()(x.float()).dtype == torch.float32 and make().double()(x).dtype == torch.float64


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
        (lambda: LayerNorm2d(4)(torch.randn(2, 4, 3)), ValueError, r"LayerNorm2d expected input \(N, C, H, W\), got shape \(2, 4, 3\)"),
        (lambda: LayerNorm2d(4)(torch.randn(2, 3, 5, 5)), ValueError, r"LayerNorm2d expected input \(N, 4, H, W\), got shape \(2, 3, 5, 5\)"),
        (lambda: LayerNorm2d(4)(torch.randn(2, 4, 5, 5, dtype=torch.float64)), TypeError, "expected torch.float32 input"),
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


# The module inputs PyTorch's own tests use (torch/testing/_internal/common_modules.py, module_inputs_torch_nn_*,
# torch 2.14), transcribed here: importing that module takes far longer than these tests.
PYTORCH_MODULE_INPUTS = [
    # BatchNorm1d: affine, 3d_input, affine_simple_average, not_affine, not_tracking_stats, 3d_input_not_affine,
    # zero_batch, affine_not_bias
    ("BatchNorm1d", (10,), {}, (4, 10)), ("BatchNorm1d", (5,), {}, (4, 5, 3)),
    ("BatchNorm1d", (10, 1e-3, None), {}, (4, 10)), ("BatchNorm1d", (10, 1e-3, 0.3, False), {}, (4, 10)),
    ("BatchNorm1d", (10, 1e-3, 0.3, True, False), {}, (4, 10)), ("BatchNorm1d", (5, 1e-3, 0.3, False), {}, (4, 5, 3)),
    ("BatchNorm1d", (5, 1e-3, 0.3, False), {}, (0, 5, 9)), ("BatchNorm1d", (10,), {"bias": False}, (4, 10)),
    # BatchNorm2d: default, 2d_simple_average, momentum, not_affine, not_tracking_stats, zero_batch, affine_not_bias
    ("BatchNorm2d", (3,), {}, (2, 3, 6, 6)), ("BatchNorm2d", (3, 1e-3, None), {}, (2, 3, 6, 6)),
    ("BatchNorm2d", (3, 1e-3, 0.8), {}, (2, 3, 6, 6)), ("BatchNorm2d", (3, 1e-3, 0.8, False), {}, (2, 3, 6, 6)),
    ("BatchNorm2d", (3, 1e-3, 0.8, True, False), {}, (2, 3, 6, 6)), ("BatchNorm2d", (5, 1e-3, 0.3, False), {}, (0, 5, 2, 2)),
    ("BatchNorm2d", (3,), {"bias": False}, (2, 3, 6, 6)),
    # GroupNorm: 1d_affine, 1d_affine_not_bias, 1d_affine_GN, 1d_affine_large_batch, 1d_no_affine_IN, 1d_no_affine_LN,
    # 2d_affine, 2d_affine_not_bias, 2d_no_affine_IN, 2d_no_affine_LN
    ("GroupNorm", (3, 6, 1e-3), {}, (4, 6, 5)), ("GroupNorm", (3, 6, 1e-3), {"bias": False}, (4, 6, 5)),
    ("GroupNorm", (3, 12, 1e-3), {}, (4, 12)), ("GroupNorm", (1, 6, 1e-3), {}, (150, 6)),
    ("GroupNorm", (5, 5, 1e-3, False), {}, (4, 5, 5)), ("GroupNorm", (1, 10, 1e-3, False), {}, (4, 10)),
    ("GroupNorm", (3, 6, 1e-3), {}, (4, 6, 2, 3)), ("GroupNorm", (3, 9, 1e-3), {"bias": False}, (4, 9, 2, 3)),
    ("GroupNorm", (3, 3, 1e-3, False), {}, (4, 3, 2, 3)), ("GroupNorm", (1, 3, 1e-3, False), {}, (4, 3, 2, 3)),
    # LayerNorm: 1d_elementwise_affine, ..._large_batch, 1d_no_elementwise_affine, 3d_elementwise_affine,
    # 3d_no_elementwise_affine, 1d_empty_elementwise_affine, 3d_elementwise_affine_no_bias
    ("LayerNorm", ([5], 1e-3), {}, (4, 5, 5)), ("LayerNorm", ([5], 1e-3), {}, (128, 5, 5)),
    ("LayerNorm", ([5], 1e-3, False), {}, (4, 5, 5)), ("LayerNorm", ([2, 2, 5], 1e-3), {}, (4, 2, 2, 5)),
    ("LayerNorm", ([2, 2, 5], 1e-3, False), {}, (4, 2, 2, 5)), ("LayerNorm", ([5], 1e-3), {}, (0, 5)),
    ("LayerNorm", ([2, 2, 5], 1e-3), {"elementwise_affine": True, "bias": False}, (4, 2, 2, 5)),
]
OURS = {"BatchNorm1d": BatchNorm1d, "BatchNorm2d": BatchNorm2d, "GroupNorm": GroupNorm, "LayerNorm": LayerNorm}


@pytest.mark.parametrize("name,args,kwargs,shape", PYTORCH_MODULE_INPUTS, ids=str)
def test_pytorch_module_inputs(name, args, kwargs, shape):
    """Forward, backward and buffers as torch on torch's own test inputs: float64 tight, float32 vs float64 truth."""
    for train in (True, False):
        reference = getattr(nn, name)(*args, dtype=torch.float64, **kwargs)
        ours = OURS[name](*args, dtype=torch.float64, **kwargs)
        _randomise(reference)
        assert_same_module(ours, reference, _input(shape, torch.float64, 3), train=train)
        reference32, ours32 = getattr(nn, name)(*args, **kwargs), OURS[name](*args, **kwargs)
        _randomise(reference32)
        load_reference_state(ours32, reference32)
        ours32.train(train)
        reference32.train(train)
        _assert_same_as_float64_truth(ours32, reference32, _input(shape, torch.float32, 4))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("normalized_shape,shape,kwargs", [
    (5, (2, 5, 4, 3), {}), (5, (2, 5, 4, 3), {"eps": 1e-6}), (6, (3, 6, 1, 1), {"elementwise_affine": False}),
    (6, (2, 6, 7, 5), {"bias": False}), (3, (1, 3, 9, 2), {}), ((3, 5), (2, 5, 4, 3), {}), (4, (0, 4, 5, 3), {}),
    (96, (2, 96, 7, 7), {"eps": 1e-6})], ids=str)
def test_layernorm2d_as_torchvision(normalized_shape, shape, kwargs, dtype):
    reference = torchvision_convnext.LayerNorm2d(normalized_shape, dtype=dtype, **kwargs)
    ours = LayerNorm2d(normalized_shape, dtype=dtype, **kwargs)
    _randomise(reference)
    channels = shape[1] if isinstance(normalized_shape, int) else math.prod(normalized_shape)
    ours._test_set_size = channels
    for train in (True, False):
        _compare(ours, reference, _input(shape, dtype, 5), train)
    assert repr(ours) == repr(reference)
    assert list(ours.state_dict()) == list(reference.state_dict())


def _channels_last(shape):
    return _input(shape, torch.float64, 6).to(memory_format=torch.channels_last)


@pytest.mark.parametrize("make_ours,make_reference,x", [
    (lambda: BatchNorm2d(3, dtype=torch.float64), lambda: nn.BatchNorm2d(3, dtype=torch.float64), _channels_last((4, 3, 5, 6))),
    (lambda: BatchNorm1d(3, dtype=torch.float64), lambda: nn.BatchNorm1d(3, dtype=torch.float64),
     _input((3, 7), torch.float64, 6).T),
    (lambda: LayerNorm(4, dtype=torch.float64), lambda: nn.LayerNorm(4, dtype=torch.float64),
     _input((4, 3, 5), torch.float64, 6).transpose(0, 2)),
    (lambda: GroupNorm(2, 4, dtype=torch.float64), lambda: nn.GroupNorm(2, 4, dtype=torch.float64),
     _input((3, 4, 5, 6), torch.float64, 6)[:, :, ::2, 1:]),
    (lambda: LayerNorm2d(3, dtype=torch.float64), lambda: torchvision_convnext.LayerNorm2d(3, dtype=torch.float64),
     _channels_last((2, 3, 4, 5))),
], ids=["bn2d_channels_last", "bn1d_transposed", "ln_transposed", "gn_sliced", "ln2d_channels_last"])
def test_non_contiguous_inputs(make_ours, make_reference, x):
    assert not x.is_contiguous()
    reference = make_reference()
    _randomise(reference)
    for train in (True, False):
        assert_same_module(make_ours(), reference, x, train=train)


@pytest.mark.parametrize("make_ours,make_reference,shape", [
    (lambda: BatchNorm1d(5, momentum=None), lambda: nn.BatchNorm1d(5, momentum=None), (0, 5)),
    (lambda: BatchNorm2d(5), lambda: nn.BatchNorm2d(5), (0, 5, 2, 2)),
    (lambda: LayerNorm((2, 3)), lambda: nn.LayerNorm((2, 3)), (0, 4, 2, 3)),
    (lambda: GroupNorm(2, 4), lambda: nn.GroupNorm(2, 4), (0, 4, 3)),
    (lambda: LayerNorm2d(4), lambda: torchvision_convnext.LayerNorm2d(4), (0, 4, 3, 3)),
], ids=["bn1d", "bn2d", "ln", "gn", "ln2d"])
def test_empty_batch(make_ours, make_reference, shape):
    """N = 0: an empty output, zero parameter gradients, running statistics untouched but the batch counted."""
    reference = make_reference()
    _randomise(reference)
    for train in (True, False):
        ours = make_ours()
        assert_same_module(ours, reference, torch.randn(shape), train=train)


@pytest.mark.parametrize("make_ours,make_reference", [
    (lambda: LayerNorm((3, 4)), lambda: nn.LayerNorm((3, 4))),
    (lambda: LayerNorm(4, bias=False), lambda: nn.LayerNorm(4, bias=False)),
    (lambda: GroupNorm(2, 6), lambda: nn.GroupNorm(2, 6)),
    (lambda: GroupNorm(2, 6, affine=False), lambda: nn.GroupNorm(2, 6, affine=False)),
    (lambda: LayerNorm2d(6, eps=1e-6), lambda: torchvision_convnext.LayerNorm2d(6, eps=1e-6)),
    (lambda: BatchNorm1d(6, momentum=None), lambda: nn.BatchNorm1d(6, momentum=None)),
])
def test_state_dict_round_trip(make_ours, make_reference):
    reference = make_reference()
    _randomise(reference, seed=7)
    ours = make_ours()
    ours.load_state_dict(reference.state_dict())
    back = make_reference()
    back.load_state_dict(ours.state_dict())
    assert list(ours.state_dict()) == list(reference.state_dict())
    for key, value in reference.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value) and torch.equal(back.state_dict()[key], value), key


def test_constructor_device_and_dtype():
    for layer in (LayerNorm(4, device="cpu", dtype=torch.float64), GroupNorm(2, 4, device="cpu", dtype=torch.float64),
                  LayerNorm2d(4, device="cpu", dtype=torch.float64), BatchNorm1d(4, device="cpu", dtype=torch.float64)):
        for tensor in itertools.chain(layer.parameters(), layer.buffers()):
            assert tensor.device.type == "cpu"
            assert tensor.dtype == (torch.long if tensor.dim() == 0 else torch.float64)


@pytest.mark.parametrize("shape", [(2, 7, 1, 1), (8, 3, 33, 5)])
def test_large_and_many_chunks_match_torch(shape, monkeypatch):
    """Every layer with a chunk of a few samples and a remainder chunk, against torch."""
    monkeypatch.setattr(normalization, "_CHUNK_NUMEL", 3 * math.prod(shape[1:]) - 1)
    x = _input(shape, torch.float64, 8)
    channels = shape[1]
    pairs = [(BatchNorm2d(channels, dtype=torch.float64), nn.BatchNorm2d(channels, dtype=torch.float64)),
             (GroupNorm(1, channels, dtype=torch.float64), nn.GroupNorm(1, channels, dtype=torch.float64)),
             (LayerNorm2d(channels, dtype=torch.float64), torchvision_convnext.LayerNorm2d(channels, dtype=torch.float64)),
             (LayerNorm(shape[-1], dtype=torch.float64), nn.LayerNorm(shape[-1], dtype=torch.float64))]
    for ours, reference in pairs:
        _randomise(reference)
        assert_same_module(ours, reference, x)
