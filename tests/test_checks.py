"""The check helpers must pass on a correct implementation and FAIL on subtly wrong ones."""
import dataclasses

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from common import checks


# --- correct implementations pass -----------------------------------------------------------

class _ConvViaUnfold(nn.Module):
    """A correct Conv2d (padding only), written with unfold + matmul, parameter names as nn.Conv2d."""

    def __init__(self, cin, cout, k, padding=0, pad_left_extra=0):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cout, cin, k, k))
        self.bias = nn.Parameter(torch.empty(cout))
        self.padding, self.k, self.extra = padding, k, pad_left_extra

    def forward(self, x):
        p, e = self.padding, self.extra
        x = F.pad(x, (p + e, p - e, p + e, p - e))
        n, _, h, w = x.shape
        cols = F.unfold(x, self.k)                               # (N, C*k*k, L)
        out = self.weight.flatten(1) @ cols + self.bias[:, None]  # (N, C_out, L)
        return out.reshape(n, -1, h - self.k + 1, w - self.k + 1)


def test_equal_modules_pass_and_report():
    torch.manual_seed(0)
    ref = nn.Conv2d(3, 4, 3, padding=1).double()
    mine = _ConvViaUnfold(3, 4, 3, padding=1).double()
    report = checks.assert_same_module(mine, ref, torch.randn(2, 3, 7, 6, dtype=torch.float64))
    names = [row[0] for row in report.rows]
    assert names == ["output", "grad input[0]", "grad weight", "grad bias"]
    assert report.max_diff < 1e-12
    assert "grad weight" in str(report)


def test_off_by_one_padding_is_caught():
    torch.manual_seed(0)
    ref = nn.Conv2d(3, 4, 3, padding=1).double()
    # same output shape, but the image shifted by one pixel: padded 2 on the left/top, 0 on the right/bottom
    mine = _ConvViaUnfold(3, 4, 3, padding=1, pad_left_extra=1).double()
    with pytest.raises(AssertionError, match="output differs"):
        checks.assert_same_module(mine, ref, torch.randn(2, 3, 7, 6, dtype=torch.float64))


class _BatchNorm(nn.Module):
    """BatchNorm2d in training mode with switchable variance estimators."""

    def __init__(self, c, normalize_unbiased=False, running_unbiased=True):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.register_buffer("running_mean", torch.zeros(c))
        self.register_buffer("running_var", torch.ones(c))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        self.normalize_unbiased, self.running_unbiased = normalize_unbiased, running_unbiased

    def forward(self, x):
        mean = x.mean((0, 2, 3))
        var = x.var((0, 2, 3), unbiased=self.normalize_unbiased)
        with torch.no_grad():
            self.running_mean.lerp_(mean, 0.1)
            self.running_var.lerp_(x.var((0, 2, 3), unbiased=self.running_unbiased), 0.1)
            self.num_batches_tracked += 1
        xhat = (x - mean[:, None, None]) / torch.sqrt(var[:, None, None] + 1e-5)
        return xhat * self.weight[:, None, None] + self.bias[:, None, None]


def test_correct_batchnorm_passes():
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    checks.assert_same_module(_BatchNorm(3).double(), nn.BatchNorm2d(3).double(), x, train=True)


def test_unbiased_variance_in_normalisation_is_caught():
    x = torch.randn(2, 3, 3, 3, dtype=torch.float64)
    with pytest.raises(AssertionError, match="output differs"):
        checks.assert_same_module(_BatchNorm(3, normalize_unbiased=True).double(), nn.BatchNorm2d(3).double(),
                                  x, train=True)


def test_biased_running_variance_is_caught_through_the_buffers():
    # the forward output is identical; only the running statistics betray the bug
    x = torch.randn(2, 3, 3, 3, dtype=torch.float64)
    with pytest.raises(AssertionError, match="buffer running_var differs"):
        checks.assert_same_module(_BatchNorm(3, running_unbiased=False).double(), nn.BatchNorm2d(3).double(),
                                  x, train=True)


class _LinearDetachedBias(nn.Linear):
    def forward(self, x):
        return x @ self.weight.T + self.bias.detach()


def test_missing_parameter_gradient_is_caught():
    ref = nn.Linear(4, 3).double()
    with pytest.raises(AssertionError, match="grad bias is None for ours only"):
        checks.assert_same_module(_LinearDetachedBias(4, 3).double(), ref, torch.randn(5, 4, dtype=torch.float64))


class _ScaledGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * 0.999  # wrong by 0.1 %


def test_wrong_input_gradient_is_caught():
    x = torch.randn(3, 4, dtype=torch.float64)
    with pytest.raises(AssertionError, match="grad input\\[0\\] differs"):
        checks.assert_same_function(_ScaledGradient.apply, torch.clone, x)


def test_gradcheck_wrapper_catches_a_wrong_backward_and_passes_a_right_one():
    x = torch.randn(3, 4)
    with pytest.raises(AssertionError, match="gradcheck of .* failed"):
        checks.gradcheck(_ScaledGradient.apply, x, title="scaled")
    assert checks.gradcheck(torch.tanh, x)
    with pytest.raises(ValueError, match="no floating-point tensor"):
        checks.gradcheck(torch.neg, torch.arange(3))


def test_state_dict_mismatch_is_explained():
    class Renamed(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(3, 4))
            self.bias = nn.Parameter(torch.zeros(3))

    with pytest.raises(AssertionError, match=r"(?s)keys only ours has: \['w'\].*keys only the reference has: \['weight'\]"):
        checks.load_reference_state(Renamed(), nn.Linear(4, 3))
    with pytest.raises(AssertionError, match="shapes differ"):
        checks.load_reference_state(nn.Linear(4, 2), nn.Linear(4, 3))


def test_shape_mismatch_and_output_count_are_caught():
    x = torch.randn(2, 5)
    with pytest.raises(AssertionError, match="shape"):
        checks.assert_same_function(lambda t: t[:, :4], lambda t: t, x)
    with pytest.raises(AssertionError, match="returns 2 tensors"):
        checks.assert_same_function(lambda t: (t, t), lambda t: (t,), x)


class _KeywordOnlyLinear(nn.Linear):
    """A Linear whose forward takes a keyword-only input and returns a dataclass record."""

    def forward(self, *, x, scale=1.0):
        return _Record(sample=super().forward(x) * scale, extra=None)


@dataclasses.dataclass
class _Record:
    sample: torch.Tensor
    extra: object


def test_call_reaches_keyword_only_forwards_and_records_are_unpacked():
    torch.manual_seed(0)
    ref, mine = nn.Linear(5, 3).double(), _KeywordOnlyLinear(5, 3).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    report = checks.assert_same_module(mine, ref, x, call=lambda module, t: module(x=t) if module is mine
                                       else _Record(sample=module(t), extra=None))
    assert [row[0] for row in report.rows] == ["output.sample", "grad input[0]", "grad weight", "grad bias"]
    with pytest.raises(AssertionError, match="output.sample differs"):       # a wrong forward is still caught
        checks.assert_same_module(mine, ref, x, call=lambda module, t: module(x=t, scale=1.01) if module is mine
                                  else _Record(sample=module(t), extra=None))


def test_same_dropout_mask_when_both_draw_alike():
    # both forwards start from the same RNG state, so equal RNG use gives equal masks
    x = torch.randn(64, 64)
    checks.assert_same_module(nn.Dropout(0.5), nn.Dropout(0.5), x, train=True)


def test_assert_same_logits_loads_strictly_and_compares_eval_outputs():
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 3)).double()
    with torch.no_grad():
        reference[1].running_mean.uniform_(-1, 1)
    x = torch.randn(5, 4, dtype=torch.float64)
    with torch.device("meta"):
        mine = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 3))
    assert checks.assert_same_logits(mine, reference, x) < 1e-12
    assert not mine.training and not reference.training           # eval mode: dropout off, running stats used


class _Shifted(nn.Module):
    def __init__(self, shift):
        super().__init__()
        self.lin, self.shift = nn.Linear(4, 3).double(), shift

    def forward(self, x):
        return self.lin(x) + self.shift


def test_assert_same_logits_fails_on_wrong_outputs_near_zero_outputs_and_key_order():
    x = torch.randn(5, 4, dtype=torch.float64)
    reference = _Shifted(0.0)
    with pytest.raises(AssertionError):
        checks.assert_same_logits(_Shifted(1e-6), reference, x)                   # a tiny error is caught
    zero = _Shifted(0.0)
    with torch.no_grad():
        zero.lin.weight.zero_()
        zero.lin.bias.zero_()
    with pytest.raises(AssertionError, match="within"):
        checks.assert_same_logits(_Shifted(0.0), zero, x)                         # would prove nothing
    a = nn.Sequential()
    a.add_module("first", nn.Linear(4, 4))
    a.add_module("second", nn.Linear(4, 3))
    b = nn.Sequential()
    b.add_module("second", nn.Linear(4, 3))
    b.add_module("first", nn.Linear(4, 4))
    with pytest.raises(AssertionError, match="order"):
        checks.assert_same_logits(a.double(), b.double(), x)


def test_randomize_gives_every_tensor_a_value_and_is_reproducible():
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.LayerNorm(3))
    first = checks.randomize_(model, torch.Generator().manual_seed(0), norm_weights=(0.5, 1.5))
    state = {k: v.clone() for k, v in first.state_dict().items()}
    assert state["1.num_batches_tracked"] == 3
    for name, tensor in state.items():
        if tensor.is_floating_point():
            assert tensor.abs().min() > 0 and tensor.std() > 0, f"{name} kept a constant value"
    assert (state["2.weight"] >= 0.5).all() and (state["1.running_var"] >= 0.5).all()
    again = checks.randomize_(model, torch.Generator().manual_seed(0), norm_weights=(0.5, 1.5)).state_dict()
    assert all(torch.equal(again[k], v) for k, v in state.items())
