"""common.nn.conv_pool (stage0_components/02_conv_pool.ipynb) against torch.nn over a grid of configurations."""
import itertools

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import common.nn as ours
from common.checks import assert_same_function, assert_same_module, gradcheck
from common.nn import functional as ours_F
from common.nn import conv_pool
from common.nn.conv_pool import (_PATHS, Conv2dFunction, _applicable_paths, _choose_path, _conv_padding,
                                 _pair)

TIGHT = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-4, atol=1e-5)}

# (in, out, kernel, kwargs, input shape); odd sizes, rectangular kernels, tuples, groups, 'same', no bias
CONV_CONFIGS = [
    (1, 1, 1, {}, (1, 1, 1, 1)),
    (3, 5, 3, {}, (2, 3, 9, 11)),
    (3, 5, 3, {"padding": 1}, (2, 3, 7, 7)),
    (2, 4, (2, 5), {"stride": (2, 3), "padding": (1, 2)}, (3, 2, 11, 13)),
    (4, 6, 3, {"stride": 2, "padding": 1, "dilation": 2}, (2, 4, 10, 9)),
    (4, 6, (3, 2), {"dilation": (1, 3), "padding": (2, 0)}, (2, 4, 8, 12)),
    (4, 6, 3, {"groups": 2, "padding": 1}, (2, 4, 7, 8)),
    (6, 9, (3, 1), {"groups": 3, "stride": (1, 2)}, (2, 6, 9, 7)),
    (4, 4, 3, {"groups": 4, "padding": 1}, (2, 4, 9, 9)),                 # depthwise
    (4, 8, 3, {"groups": 4, "padding": 1, "bias": False}, (2, 4, 9, 9)),  # depthwise, channel multiplier 2
    (3, 9, (5, 3), {"groups": 3, "stride": 2, "dilation": (1, 2), "padding": (2, 1)}, (2, 3, 12, 11)),
    (3, 5, 4, {"padding": "same"}, (2, 3, 7, 8)),                          # even kernel: asymmetric padding
    (3, 5, (2, 3), {"padding": "same", "dilation": (3, 2)}, (2, 3, 9, 10)),
    (4, 4, 4, {"padding": "same", "groups": 4, "bias": False}, (2, 4, 6, 7)),
    (3, 5, 3, {"padding": "valid", "bias": False}, (2, 3, 6, 5)),
    (3, 4, 3, {"stride": 3, "padding": 2}, (2, 3, 8, 10)),                 # last rows/columns never read
    (3, 4, 3, {"padding": 2, "padding_mode": "reflect"}, (2, 3, 6, 7)),
    (3, 4, (3, 2), {"padding": (1, 2), "padding_mode": "replicate", "stride": 2}, (2, 3, 6, 7)),
    (3, 4, 3, {"padding": 1, "padding_mode": "circular", "dilation": 2}, (2, 3, 6, 7)),
    (2, 3, 4, {"padding": "same", "padding_mode": "reflect"}, (2, 2, 7, 6)),
    (3, 4, 3, {"padding": 1}, (3, 7, 8)),                                  # unbatched
    (4, 8, 3, {"groups": 4, "stride": 2}, (4, 9, 9)),                      # unbatched depthwise
    (8, 4, 1, {"stride": 2}, (2, 8, 7, 7)),                                # strided 1x1
    # 16+ channels, spatial kernels, 1x1 kernels (each path's count is asserted in test_the_grid_reaches_every_path)
    (16, 8, 3, {"padding": 1}, (2, 16, 7, 9)),
    (32, 8, (3, 2), {"padding": (2, 1), "dilation": (1, 3), "bias": False}, (2, 32, 9, 8)),
    (32, 16, 3, {"groups": 2, "padding": "same"}, (2, 32, 6, 7)),
    (16, 4, 4, {"padding": "same", "dilation": 2}, (16, 9, 7)),              # unbatched, even kernel
    (16, 8, 1, {}, (2, 16, 5, 6)),                                         # 1x1
    (32, 16, 3, {"stride": 2, "padding": 1}, (2, 32, 9, 8)),               # strided, many channels
    # 8 to 15 channels, one group: im2col
    (8, 6, (1, 3), {"padding": (0, 1)}, (2, 8, 5, 6)),
    (8, 5, 3, {"padding": 2, "padding_mode": "reflect", "bias": False}, (3, 8, 4, 5)),
    (12, 7, 5, {}, (1, 12, 5, 5)),                                         # a single output pixel
    (10, 3, (2, 3), {"padding": "same", "dilation": (2, 1)}, (10, 6, 5)),  # unbatched, asymmetric 'same'
    # groups of 16+ channels (im2col) and a 1x1 kernel (per-offset products)
    (32, 12, 3, {"groups": 2, "dilation": 2, "padding": (2, 1)}, (2, 32, 7, 6)),
    (16, 16, 1, {"bias": False}, (16, 4, 5)),
    # depthwise: kernels 3, 5 and 7, strides, dilation, channel multipliers
    (4, 4, 5, {"groups": 4, "padding": 2, "stride": 2}, (2, 4, 11, 10)),
    (6, 6, 7, {"groups": 6, "padding": 3}, (2, 6, 9, 8)),                   # ConvNeXt's 7x7
    (3, 6, (3, 5), {"groups": 3, "stride": (2, 1), "padding": (1, 2), "dilation": (2, 1)}, (2, 3, 9, 10)),
    (2, 6, 3, {"groups": 2, "padding": "same", "bias": False}, (2, 5, 6)),  # unbatched, multiplier 3
    # 16+ channels, one group: pixels as rows (stride 1: flipped-kernel backward; else, or wide padding: col2im)
    (32, 8, 3, {"padding": 1}, (2, 32, 6, 5)),
    (32, 12, 3, {"stride": 2, "padding": 1}, (3, 32, 7, 8)),
    (40, 6, (2, 3), {"padding": (3, 0), "dilation": (1, 2)}, (2, 40, 5, 7)),
    (32, 4, 5, {"padding": "same", "bias": False}, (32, 6, 6)),
    (33, 5, 3, {"padding": 1, "padding_mode": "circular"}, (2, 33, 5, 6)),
]


def _conv_id(config):
    cin, cout, k, kwargs, shape = config
    return f"{cin}->{cout} k{k} {kwargs} {shape}".replace(" ", "")


def _kind(config):
    """(channels per group, groups, stride) of a grid configuration."""
    cin, _, _, kwargs, _ = config
    groups = kwargs.get("groups", 1)
    return cin // groups, groups, _pair(kwargs.get("stride", 1), "stride")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("config", CONV_CONFIGS, ids=[_conv_id(c) for c in CONV_CONFIGS])
def test_conv2d_matches_torch(config, dtype):
    cin, cout, k, kwargs, shape = config
    torch.manual_seed(0)
    reference = nn.Conv2d(cin, cout, k, **kwargs).to(dtype)
    mine = ours.Conv2d(cin, cout, k, **kwargs).to(dtype)
    x = torch.randn(shape, dtype=dtype)
    for train in (True, False):
        assert_same_module(mine, reference, x, train=train, **TIGHT[dtype])


# every configuration with zero padding, run through each formulation that can compute it
ZERO_PADDED = [c for c in CONV_CONFIGS if c[3].get("padding_mode", "zeros") == "zeros"]
PATH_CASES = [(config, path) for config in ZERO_PADDED for path in _applicable_paths(*_kind(config))]


def _path_function(config, path):
    cin, cout, k, kwargs, _ = config
    kernel = _pair(k, "k")
    stride, dilation = _pair(kwargs.get("stride", 1), "s"), _pair(kwargs.get("dilation", 1), "d")
    padding = _conv_padding(kwargs.get("padding", 0), kernel, dilation, stride)
    groups = kwargs.get("groups", 1)

    def forced(x, weight, bias=None):
        batched = x if x.dim() == 4 else x.unsqueeze(0)
        out = Conv2dFunction.apply(batched, weight, bias, stride, padding, dilation, groups, path)
        return out if x.dim() == 4 else out.squeeze(0)

    reference = nn.Conv2d(cin, cout, k, **kwargs)
    return forced, lambda x, weight, bias=None: reference._conv_forward(x, weight, bias)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("config,path", PATH_CASES, ids=[f"{path}:{_conv_id(c)}" for c, path in PATH_CASES])
def test_every_path_matches_torch(config, path, dtype):
    """Each formulation on its own (not only the one the dispatcher picks): output, input, weight, bias grads."""
    cin, cout, k, kwargs, shape = config
    torch.manual_seed(0)
    forced, reference = _path_function(config, path)
    kernel = _pair(k, "k")
    x = torch.randn(shape, dtype=dtype)
    fan_in = cin // kwargs.get("groups", 1) * kernel[0] * kernel[1]
    weight = torch.randn(cout, cin // kwargs.get("groups", 1), *kernel, dtype=dtype) / fan_in ** 0.5  # init's scale
    args = (x, weight) if kwargs.get("bias", True) is False else (x, weight, torch.randn(cout, dtype=dtype))
    assert_same_function(forced, reference, *args, **TIGHT[dtype])


def test_the_grid_reaches_every_path():
    """The dispatcher sends at least three grid configurations down each path, so test_conv2d_matches_torch
    (which goes through the dispatcher) covers all of them too."""
    chosen = [_choose_path(*_kind(config)[:2], _pair(config[2], "k"), _kind(config)[2]) for config in CONV_CONFIGS]
    counts = {path: chosen.count(path) for path in _PATHS}
    assert min(counts.values()) >= 3, counts


@pytest.mark.parametrize("path", ["im2col", "rows", "depthwise", "depthwise-flat", "offsets"])
@pytest.mark.parametrize("geometry", [
    dict(shape=(2, 4, 5, 4), stride=(1, 1), padding=(1, 2, 0, 1), dilation=(1, 2)),
    dict(shape=(2, 4, 5, 4), stride=(2, 1), padding=(1, 1, 2, 2), dilation=(1, 1)),
    dict(shape=(2, 4, 6, 7), stride=(2, 3), padding=(0, 1, 1, 0), dilation=(2, 1)),
    dict(shape=(1, 4, 3, 3), stride=(1, 1), padding=(3, 3, 3, 3), dilation=(1, 1)),   # padding > d(k-1)
], ids=["stride1", "stride(2,1)", "stride(2,3)", "wide-padding"])
def test_every_path_gradcheck(path, geometry):
    """The hand-written backward of each formulation against finite differences (float64)."""
    torch.manual_seed(0)
    depthwise = path.startswith("depthwise")
    groups = 4 if depthwise else 2 if path in ("im2col", "offsets") else 1
    if path in ("offsets", "depthwise-flat") and geometry["stride"][1] != 1:
        pytest.skip("the flat layout needs a column stride of 1")
    weight_shape = (8 if depthwise else 6, 4 // groups, 3, 2)
    x = torch.randn(geometry["shape"], dtype=torch.float64)
    weight, bias = torch.randn(weight_shape, dtype=torch.float64), torch.randn(weight_shape[0], dtype=torch.float64)
    args = (geometry["stride"], geometry["padding"], geometry["dilation"], groups, path)
    assert gradcheck(lambda a, w, b: Conv2dFunction.apply(a, w, b, *args), x, weight, bias)


@pytest.mark.parametrize("config", [
    (32, 16, 3, {"padding": 1}), (4, 8, 3, {"groups": 4, "stride": 2, "padding": 1}), (6, 4, 1, {}),
    (3, 6, 3, {"stride": 2}), (8, 8, 5, {"groups": 8, "padding": 2, "dilation": 2})])
@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced", "grad_transposed"])
def test_conv2d_strided_inputs_and_gradients(config, layout):
    """Non-contiguous inputs (channels-last, transposed, sliced) and non-contiguous output gradients."""
    cin, cout, k, kwargs = config
    torch.manual_seed(0)
    reference, mine = nn.Conv2d(cin, cout, k, **kwargs).double(), ours.Conv2d(cin, cout, k, **kwargs).double()
    x = torch.randn(3, cin, 9, 11, dtype=torch.float64)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
        assert not x.is_contiguous()
    view = {"transposed": lambda t: t.transpose(2, 3), "sliced": lambda t: t[:, :, ::2, 1:]}.get(layout, lambda t: t)
    after = (lambda t: t.transpose(2, 3)) if layout == "grad_transposed" else (lambda t: t)
    assert_same_module(nn.Sequential(_Lambda(view), mine, _Lambda(after)),
                       nn.Sequential(_Lambda(view), reference, _Lambda(after)), x, **TIGHT[torch.float64])


class _Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


@pytest.mark.parametrize("config", [(3, 5, 3, {"padding": 1}), (32, 8, 3, {}), (4, 8, 3, {"groups": 4}),
                                    (16, 8, 1, {}), (4, 6, 3, {"groups": 2, "stride": 2})])
def test_conv2d_empty_batch(config):
    cin, cout, k, kwargs = config
    x = torch.randn(0, cin, 8, 9, dtype=torch.float64)
    assert_same_module(ours.Conv2d(cin, cout, k, **kwargs).double(), nn.Conv2d(cin, cout, k, **kwargs).double(), x)


@pytest.mark.parametrize("chunk_bytes", [1, 4096])
def test_conv2d_chunking_over_the_batch(monkeypatch, chunk_bytes):
    """Tiny chunk budgets: one image per chunk, or a few with a partial last chunk, on every path."""
    monkeypatch.setattr(conv_pool, "_CHUNK_BYTES", chunk_bytes)
    for cin, cout, k, kwargs in [(32, 8, 3, {"padding": 1}), (4, 8, 3, {"groups": 4, "padding": 1}),
                                 (3, 5, 3, {"stride": 2}), (32, 8, 3, {"stride": 2, "padding": 2})]:
        torch.manual_seed(0)
        x = torch.randn(7, cin, 6, 7, dtype=torch.float64)
        assert_same_module(ours.Conv2d(cin, cout, k, **kwargs).double(), nn.Conv2d(cin, cout, k, **kwargs).double(),
                           x, **TIGHT[torch.float64])


def test_conv2d_state_dict_names_and_init():
    for kwargs in ({}, {"bias": False}, {"groups": 2, "stride": 2}):
        torch.manual_seed(3)
        reference = nn.Conv2d(4, 6, (3, 5), **kwargs)
        torch.manual_seed(3)
        mine = ours.Conv2d(4, 6, (3, 5), **kwargs)
        assert mine.state_dict().keys() == reference.state_dict().keys()
        for key, value in reference.state_dict().items():
            assert mine.state_dict()[key].shape == value.shape
            torch.testing.assert_close(mine.state_dict()[key], value, rtol=0, atol=0)  # same draws
        reference.load_state_dict(mine.state_dict())  # and back
    assert ours.Conv2d(4, 6, 3, bias=False).bias is None


def test_conv2d_init_distribution():
    torch.manual_seed(0)
    conv = ours.Conv2d(16, 64, 3)
    bound = 1 / (16 * 9) ** 0.5
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.95 * bound
    assert conv.bias.abs().max() <= bound


@pytest.mark.parametrize("config", [
    dict(shape=(2, 3, 6, 7), weight=(4, 3, 3, 3), stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups=1),
    dict(shape=(2, 4, 7, 6), weight=(6, 2, 2, 3), stride=(2, 1), padding=(1, 2, 0, 1), dilation=(1, 2), groups=2),
    dict(shape=(1, 3, 6, 6), weight=(6, 1, 3, 3), stride=(2, 2), padding=(1, 1, 1, 1), dilation=(1, 1), groups=3),
    dict(shape=(2, 16, 5, 4), weight=(3, 16, 2, 3), stride=(1, 1), padding=(1, 0, 2, 1), dilation=(2, 1), groups=1),
    dict(shape=(2, 8, 5, 6), weight=(5, 8, 3, 2), stride=(1, 1), padding=(2, 0, 1, 1), dilation=(1, 2), groups=1),
    dict(shape=(2, 32, 4, 5), weight=(4, 16, 3, 3), stride=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1), groups=2),
])
def test_hand_written_backward_gradcheck(config):
    torch.manual_seed(0)
    x = torch.randn(config["shape"], dtype=torch.float64)
    weight = torch.randn(config["weight"], dtype=torch.float64)
    bias = torch.randn(config["weight"][0], dtype=torch.float64)
    args = (config["stride"], config["padding"], config["dilation"], config["groups"])
    assert gradcheck(lambda a, w, b: Conv2dFunction.apply(a, w, b, *args), x, weight, bias)


def test_conv2d_functional_matches_torch():
    torch.manual_seed(0)
    x, w, b = torch.randn(2, 6, 9, 8, dtype=torch.float64), torch.randn(4, 3, 3, 2, dtype=torch.float64), \
        torch.randn(4, dtype=torch.float64)
    assert_same_function(lambda x, w, b: ours_F.conv2d(x, w, b, 2, (1, 0), (1, 2), 2),
                         lambda x, w, b: F.conv2d(x, w, b, 2, (1, 0), (1, 2), 2), x, w, b, **TIGHT[torch.float64])


@pytest.mark.parametrize("size,kernel,stride,padding,dilation",
                         list(itertools.product([1, 5, 8], [1, 2, 3], [1, 2, 3], [0, 1], [1, 2])))
def test_output_size_formula(size, kernel, stride, padding, dilation):
    expected = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    got = ours_F.conv_output_size(size, kernel, stride, 2 * padding, dilation)
    assert got == max(expected, 0)
    if expected >= 1:
        x = torch.zeros(1, 1, size, size)
        y = F.conv2d(x, torch.zeros(1, 1, kernel, kernel), stride=stride, padding=padding, dilation=dilation)
        assert y.shape[-1] == got


# ---------------------------------------------------------------- pooling
MAX_CONFIGS = [
    ({"kernel_size": 2}, (2, 3, 8, 8)),
    ({"kernel_size": 2}, (2, 3, 9, 7)),
    ({"kernel_size": 3, "stride": 2, "padding": 1}, (2, 3, 9, 10)),
    ({"kernel_size": (2, 3), "stride": (1, 2), "padding": (1, 1)}, (2, 3, 7, 9)),
    ({"kernel_size": 3, "stride": 2, "ceil_mode": True}, (2, 3, 8, 10)),
    ({"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}, (2, 3, 8, 8)),  # last start in padding
    ({"kernel_size": 2, "stride": 2, "padding": 1, "ceil_mode": True}, (1, 2, 5, 6)),
    ({"kernel_size": 3, "stride": 1, "dilation": 2}, (2, 3, 9, 10)),
    ({"kernel_size": (3, 2), "stride": (2, 3), "padding": (1, 1), "dilation": (2, 3), "ceil_mode": True},
     (2, 3, 11, 13)),
    ({"kernel_size": 4, "stride": 1, "padding": 2}, (2, 3, 5, 5)),
    ({"kernel_size": 3, "stride": 2, "padding": 1}, (3, 9, 9)),  # unbatched
]


def _inputs(shape, dtype, ties):
    torch.manual_seed(1)
    x = torch.randn(shape, dtype=dtype)
    return x.relu().round() if ties else x  # ties: many equal maxima, as after a ReLU


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("config", MAX_CONFIGS, ids=[f"{c}{s}".replace(" ", "") for c, s in MAX_CONFIGS])
def test_max_pool2d_matches_torch(config, dtype, ties):
    kwargs, shape = config
    x = _inputs(shape, dtype, ties)
    assert_same_module(ours.MaxPool2d(**kwargs), nn.MaxPool2d(**kwargs), x, **TIGHT[dtype])
    both = dict(kwargs, return_indices=True)
    out, idx = ours.MaxPool2d(**both)(x)
    ref_out, ref_idx = nn.MaxPool2d(**both)(x)
    assert torch.equal(out, ref_out) and torch.equal(idx, ref_idx) and idx.dtype == ref_idx.dtype


AVG_CONFIGS = [
    ({"kernel_size": 2}, (2, 3, 8, 8)),
    ({"kernel_size": 2}, (2, 3, 9, 7)),
    ({"kernel_size": 3, "stride": 2, "padding": 1}, (2, 3, 9, 10)),
    ({"kernel_size": (2, 3), "stride": (1, 2), "padding": (1, 1)}, (2, 3, 7, 9)),
    ({"kernel_size": 3, "stride": 2, "ceil_mode": True}, (2, 3, 8, 10)),
    ({"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}, (2, 3, 8, 8)),
    ({"kernel_size": 2, "stride": 2, "padding": 1, "ceil_mode": True}, (1, 2, 5, 6)),
    ({"kernel_size": (3, 4), "stride": (3, 2), "padding": (1, 2), "ceil_mode": True}, (2, 3, 10, 9)),
    ({"kernel_size": 3, "stride": 2, "padding": 1}, (3, 9, 9)),  # unbatched
]


@pytest.mark.parametrize("divisor_override", [None, 3])
@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("config", AVG_CONFIGS, ids=[f"{c}{s}".replace(" ", "") for c, s in AVG_CONFIGS])
def test_avg_pool2d_matches_torch(config, dtype, count_include_pad, divisor_override):
    kwargs, shape = config
    kwargs = dict(kwargs, count_include_pad=count_include_pad, divisor_override=divisor_override)
    x = _inputs(shape, dtype, ties=False)
    assert_same_module(ours.AvgPool2d(**kwargs), nn.AvgPool2d(**kwargs), x, **TIGHT[dtype])


ADAPTIVE_CONFIGS = [(1, (2, 3, 7, 7)), (3, (2, 3, 7, 7)), ((4, 3), (2, 3, 10, 7)), ((7, 5), (2, 3, 5, 4)),
                    ((None, 3), (2, 3, 6, 10)), ((2, None), (2, 3, 9, 5)), (5, (2, 3, 5, 5)),
                    ((3, 4), (3, 10, 11)), (1, (2, 4, 1, 1)),
                    # sizes that divide the input: the reshape-and-mean form
                    ((4, 3), (2, 3, 8, 6)), ((2, 5), (3, 10, 5)), ((1, 2), (2, 3, 7, 4)), (7, (2, 3, 7, 7))]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("config", ADAPTIVE_CONFIGS, ids=[f"{c}{s}".replace(" ", "") for c, s in ADAPTIVE_CONFIGS])
def test_adaptive_avg_pool2d_matches_torch(config, dtype):
    size, shape = config
    x = _inputs(shape, dtype, ties=False)
    assert_same_module(ours.AdaptiveAvgPool2d(size), nn.AdaptiveAvgPool2d(size), x, **TIGHT[dtype])


POOLS = [lambda m: m.MaxPool2d(3, 2, 1), lambda m: m.MaxPool2d(2, ceil_mode=True), lambda m: m.AvgPool2d(3, 2, 1),
         lambda m: m.AvgPool2d(2, count_include_pad=False, padding=1), lambda m: m.AdaptiveAvgPool2d((3, 2)),
         lambda m: m.AdaptiveAvgPool2d((2, 3))]


@pytest.mark.parametrize("make", POOLS, ids=[repr(make(nn)) for make in POOLS])
@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced", "empty_batch"])
def test_pools_strided_and_empty_inputs(make, layout):
    x = _inputs((3, 4, 10, 9), torch.float64, ties=False)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    elif layout == "empty_batch":
        x = x[:0]
    view = {"transposed": lambda t: t.transpose(2, 3), "sliced": lambda t: t[:, :, 1:, ::2]}.get(layout, lambda t: t)
    assert_same_module(nn.Sequential(_Lambda(view), make(ours)), nn.Sequential(_Lambda(view), make(nn)), x,
                       **TIGHT[torch.float64])


def test_functional_pools_match_torch():
    x = _inputs((2, 3, 9, 8), torch.float64, ties=False)
    assert_same_function(lambda t: ours_F.max_pool2d(t, 3, 2, 1, ceil_mode=True),
                         lambda t: F.max_pool2d(t, 3, 2, 1, ceil_mode=True), x)
    assert_same_function(lambda t: ours_F.avg_pool2d(t, 3, 2, 1, count_include_pad=False),
                         lambda t: F.avg_pool2d(t, 3, 2, 1, count_include_pad=False), x)
    assert_same_function(lambda t: ours_F.adaptive_avg_pool2d(t, (4, 3)),
                         lambda t: F.adaptive_avg_pool2d(t, (4, 3)), x)


def test_modules_in_a_network_train_together():
    torch.manual_seed(0)
    mine = nn.Sequential(ours.Conv2d(1, 4, 5, padding=2), ours.MaxPool2d(2), ours.Conv2d(4, 8, 3, groups=4),
                         ours.AvgPool2d(2, ceil_mode=True), ours.AdaptiveAvgPool2d(1))
    reference = nn.Sequential(nn.Conv2d(1, 4, 5, padding=2), nn.MaxPool2d(2), nn.Conv2d(4, 8, 3, groups=4),
                              nn.AvgPool2d(2, ceil_mode=True), nn.AdaptiveAvgPool2d(1))
    assert_same_module(mine, reference, torch.randn(3, 1, 28, 28))


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("make,bad,message", [
    (lambda: ours.Conv2d(3, 4, 3), torch.randn(2, 4, 8, 8), r"expected input \(N, 3, H, W\) or \(3, H, W\), got shape \(2, 4, 8, 8\)"),
    (lambda: ours.Conv2d(3, 4, 3), torch.randn(8, 8), r"expected input \(N, 3, H, W\).*got shape \(8, 8\)"),
    (lambda: ours.Conv2d(3, 4, 3), torch.randn(1, 2, 3, 8, 8), r"got shape \(1, 2, 3, 8, 8\)"),
    (lambda: ours.Conv2d(3, 4, 5), torch.randn(1, 3, 4, 8), r"output would be 0x4.*at least 1x1"),
    (lambda: ours.MaxPool2d(2), torch.randn(8, 8), r"expected input \(N, C, H, W\) or \(C, H, W\), got shape \(8, 8\)"),
    (lambda: ours.MaxPool2d(5), torch.randn(1, 1, 3, 8), r"output would be 0x1"),
    (lambda: ours.MaxPool2d(2, padding=2), torch.randn(1, 1, 8, 8), r"padding \(2, 2\) must be at most half"),
    (lambda: ours.AvgPool2d(3, padding=2), torch.randn(1, 1, 8, 8), r"padding \(2, 2\) must be at most half"),
    (lambda: ours.AvgPool2d(2), torch.randn(2, 8), r"got shape \(2, 8\)"),
    (lambda: ours.AdaptiveAvgPool2d((0, 2)), torch.randn(1, 1, 8, 8), r"output_size must be positive"),
    (lambda: ours.AdaptiveAvgPool2d(2), torch.randn(5), r"got shape \(5,\)"),
])
def test_bad_input_value_errors(make, bad, message):
    with pytest.raises(ValueError, match=message):
        make()(bad)


@pytest.mark.parametrize("make", [lambda: ours.Conv2d(3, 4, 3), lambda: ours.MaxPool2d(2), lambda: ours.AvgPool2d(2),
                                  lambda: ours.AdaptiveAvgPool2d(2)])
def test_integer_input_is_a_type_error(make):
    with pytest.raises(TypeError, match=r"expected a floating-point input, got dtype torch.int64"):
        make()(torch.ones(1, 3, 8, 8, dtype=torch.long))


def test_conv2d_dtype_mismatch_is_a_type_error():
    with pytest.raises(TypeError, match=r"got input torch.float64, weight torch.float32"):
        ours.Conv2d(3, 4, 3)(torch.randn(1, 3, 8, 8, dtype=torch.float64))


def test_conv2d_dtype_mismatch_names_the_fix():
    # each direction names the conversion that makes input and weight agree, and both conversions work
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"convert the input with \.float\(\) or the module with \.double\(\)$"):
        ours.Conv2d(3, 4, 3)(x)
    with pytest.raises(TypeError, match=r"convert the input with \.double\(\) or the module with \.float\(\)$"):
        ours.Conv2d(3, 4, 3, bias=False, dtype=torch.float64)(x.float())
    with pytest.raises(TypeError, match=r"bias torch.float32: convert the bias with \.double\(\)$"):
        ours_F.conv2d(x, torch.randn(4, 3, 3, 3, dtype=torch.float64), torch.randn(4))
    assert ours.Conv2d(3, 4, 3)(x.float()).dtype == torch.float32
    assert ours.Conv2d(3, 4, 3).double()(x).dtype == torch.float64


@pytest.mark.parametrize("kwargs,message", [
    (dict(in_channels=3, out_channels=4, kernel_size=3, groups=2), r"in_channels \(3\) and out_channels \(4\) must both be divisible by groups \(2\)"),
    (dict(in_channels=4, out_channels=6, kernel_size=3, groups=4), r"divisible by groups \(4\)"),
    (dict(in_channels=3, out_channels=4, kernel_size=3, stride=2, padding="same"), r"padding='same' is not supported for strided"),
    (dict(in_channels=3, out_channels=4, kernel_size=3, padding="full"), r"'same' or 'valid', got 'full'"),
    (dict(in_channels=3, out_channels=4, kernel_size=3, padding_mode="mirror"), r"padding_mode must be one of"),
    (dict(in_channels=3, out_channels=4, kernel_size=0), r"must be positive"),
    (dict(in_channels=3, out_channels=4, kernel_size=(3, 3, 3)), r"kernel_size must be an int or a pair"),
])
def test_invalid_conv_configurations(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ours.Conv2d(**kwargs)
