"""common.nn activations (exported from stage0_components/01_activations) against torch."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import common.nn as ours
from common import checks
from common.nn import functional as our_F

MODULES = [
    ("ReLU", lambda: ours.ReLU(), lambda: nn.ReLU()),
    ("ReLU(inplace)", lambda: ours.ReLU(inplace=True), lambda: nn.ReLU(inplace=False)),
    ("Sigmoid", lambda: ours.Sigmoid(), lambda: nn.Sigmoid()),
    ("Tanh", lambda: ours.Tanh(), lambda: nn.Tanh()),
    ("GELU", lambda: ours.GELU(), lambda: nn.GELU()),
    ("GELU(tanh)", lambda: ours.GELU(approximate="tanh"), lambda: nn.GELU(approximate="tanh")),
    ("SiLU", lambda: ours.SiLU(), lambda: nn.SiLU()),
] + [
    (f"{name}(dim={dim})", (lambda d=dim, c=cls: getattr(ours, c)(dim=d)), (lambda d=dim, c=cls: getattr(nn, c)(dim=d)))
    for cls in ("Softmax", "LogSoftmax") for dim in (0, 1, 2, -1, -3) for name in (cls,)
]
SHAPES = [(3, 4, 5), (2, 3, 4, 5), (1, 7, 1)]


@pytest.mark.parametrize("name, make_ours, make_theirs", MODULES, ids=[m[0] for m in MODULES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_and_backward_match_torch(name, make_ours, make_theirs, dtype):
    torch.manual_seed(0)
    for shape in SHAPES:
        x = 3 * torch.randn(shape, dtype=dtype)
        x.view(-1)[:2] = 0.0  # the kink of ReLU, exactly
        report = checks.assert_same_module(make_ours(), make_theirs(), x)
        assert [row[0] for row in report.rows] == ["output", "grad input[0]"]


@pytest.mark.parametrize("name, make_ours, make_theirs", MODULES, ids=[m[0] for m in MODULES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_inputs_stay_finite_and_equal(name, make_ours, make_theirs, dtype):
    values = torch.tensor([-1e4, -1e3, -88.8, -30.0, -1e-7, 0.0, 1e-7, 30.0, 88.8, 1e3, 1e4], dtype=dtype)
    x = values.repeat(3, 1)[:, :, None].expand(3, 11, 3).contiguous()  # every dim has a spread of values
    x = x + torch.arange(3, dtype=dtype)[None, None]
    checks.assert_same_module(make_ours(), make_theirs(), x)
    leaf = x.clone().requires_grad_()
    y = make_ours()(leaf)
    y.backward(torch.ones_like(y))
    assert torch.isfinite(y).all() and torch.isfinite(leaf.grad).all()


def test_tiny_inputs_keep_relative_precision():
    x = torch.tensor([1e-30, -1e-30, 1e-12], dtype=torch.float64)
    torch.testing.assert_close(our_F.tanh(x), torch.tanh(x), rtol=1e-15, atol=0)
    torch.testing.assert_close(our_F.sigmoid(x), torch.sigmoid(x), rtol=1e-15, atol=0)


GRADCHECK = {
    "relu": our_F.relu, "sigmoid": our_F.sigmoid, "tanh": our_F.tanh, "silu": our_F.silu, "gelu": our_F.gelu,
    "gelu_tanh": lambda t: our_F.gelu(t, approximate="tanh"),
    "softmax0": lambda t: our_F.softmax(t, dim=0), "softmax-1": lambda t: our_F.softmax(t, dim=-1),
    "log_softmax1": lambda t: our_F.log_softmax(t, dim=1),
}


@pytest.mark.parametrize("name", GRADCHECK)
def test_hand_written_backward_passes_gradcheck(name):
    torch.manual_seed(1)
    x = torch.randn(3, 4, 2, dtype=torch.float64)
    x = x + 0.1 * x.sign()  # away from ReLU's kink
    assert checks.gradcheck(GRADCHECK[name], x, title=name)


def test_functional_forms_match_torch_functional():
    x = torch.randn(4, 6, dtype=torch.float64)
    pairs = [(our_F.relu, F.relu), (our_F.sigmoid, torch.sigmoid), (our_F.tanh, torch.tanh), (our_F.silu, F.silu),
             (our_F.gelu, F.gelu), (lambda t: our_F.softmax(t, 1), lambda t: F.softmax(t, 1)),
             (lambda t: our_F.log_softmax(t, 0), lambda t: F.log_softmax(t, 0))]
    for mine, reference in pairs:
        checks.assert_same_function(mine, reference, x)


def test_modules_have_torch_reprs_and_no_state():
    assert repr(ours.Softmax(dim=1)) == repr(nn.Softmax(dim=1))
    assert repr(ours.GELU(approximate="tanh")) == repr(nn.GELU(approximate="tanh"))
    assert repr(ours.ReLU(inplace=True)) == repr(nn.ReLU(inplace=True))
    for module in (ours.ReLU(), ours.Softmax(dim=1), ours.GELU()):
        assert module.state_dict() == {}


def test_bad_input_is_explained():
    with pytest.raises(TypeError, match="floating-point tensor, got dtype torch.int64"):
        ours.ReLU()(torch.arange(4))
    with pytest.raises(TypeError, match="expects a torch.Tensor, got list"):
        our_F.sigmoid([1.0, 2.0])
    with pytest.raises(ValueError, match="needs an explicit dim"):
        ours.Softmax()(torch.randn(2, 3))
    with pytest.raises(IndexError, match=r"dim=2 is out of range for an input of shape \(2, 3\)"):
        our_F.log_softmax(torch.randn(2, 3), dim=2)
    with pytest.raises(ValueError, match="approximate must be 'none' or 'tanh', got 'erf'"):
        ours.GELU(approximate="erf")


def test_no_builtin_activation_inside_the_exported_code():
    import inspect

    import common.nn.activations as module

    source = inspect.getsource(module)
    for builtin in ("torch.sigmoid(", "torch.tanh(", "F.gelu", "torch.softmax(", "F.softmax", "torch.relu(",
                    "F.silu", "log_softmax(input, dim)", "logsumexp"):
        assert builtin not in source, f"{builtin} computes the activation itself; write it from tensor ops"
