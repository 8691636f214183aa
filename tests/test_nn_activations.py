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


# ------------------------------------------------------------------ the fast kernels: layouts, chunks, dtypes

import common.nn.activations as activations_module  # noqa: E402

CHUNK = activations_module._CHUNK_NUMEL
ELEMENTWISE = [
    ("relu", our_F.relu, F.relu), ("sigmoid", our_F.sigmoid, torch.sigmoid), ("tanh", our_F.tanh, torch.tanh),
    ("gelu", our_F.gelu, F.gelu), ("gelu_tanh", lambda t: our_F.gelu(t, approximate="tanh"),
                                   lambda t: F.gelu(t, approximate="tanh")),
    ("silu", our_F.silu, F.silu),
]
ELEMENTWISE_IDS = [e[0] for e in ELEMENTWISE]


def _layouts():
    """name -> input maker: contiguous, chunk-boundary sizes, 0-d, empty, and non-contiguous layouts."""
    return {
        "0-d": lambda: torch.randn(()),
        "empty": lambda: torch.randn(0, 3),
        "empty batch (0, 4, 5, 5)": lambda: torch.randn(0, 4, 5, 5),
        "one below the chunk": lambda: torch.randn(CHUNK - 1),
        "exactly one chunk": lambda: torch.randn(CHUNK),
        "one above the chunk": lambda: torch.randn(CHUNK + 1),
        "2.5 chunks, 4-d": lambda: torch.randn(5, 2, CHUNK // 64, 16),
        "transposed, above the chunk": lambda: torch.randn(CHUNK // 100 + 3, 100).t(),
        "channels_last, above the chunk": lambda: torch.randn(3, 17, 50, 60).to(memory_format=torch.channels_last),
        "every second column, above the chunk": lambda: torch.randn(7, 2 * CHUNK // 3)[:, ::2],
        "every second row, small": lambda: torch.randn(9, 5)[::2],
        "expanded (stride 0)": lambda: torch.randn(1, 7).expand(CHUNK // 3, 7),
    }


@pytest.mark.parametrize("name, ours, reference", ELEMENTWISE, ids=ELEMENTWISE_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", list(_layouts()))
def test_every_layout_and_chunk_boundary_matches_torch(name, ours, reference, dtype, layout):
    torch.manual_seed(0)
    x = 4 * _layouts()[layout]().to(dtype)
    x_ours, x_ref = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    if layout.startswith("expanded"):       # keep the stride-0 layout for the input itself
        x_ours = x.detach().requires_grad_()
    y_ours, y_ref = ours(x_ours), reference(x_ref)
    assert y_ours.shape == y_ref.shape and y_ours.dtype == y_ref.dtype
    torch.testing.assert_close(y_ours, y_ref)
    upstream = torch.randn(y_ref.shape, dtype=dtype)
    if layout.startswith("transposed") or layout.startswith("expanded"):
        upstream = upstream.t().contiguous().t() if upstream.dim() == 2 else upstream   # a non-contiguous gradient
    (grad_ours,) = torch.autograd.grad(y_ours, x_ours, upstream)
    (grad_ref,) = torch.autograd.grad(y_ref, x_ref, upstream)
    torch.testing.assert_close(grad_ours, grad_ref)


@pytest.mark.parametrize("name, ours, reference", ELEMENTWISE, ids=ELEMENTWISE_IDS)
def test_expanded_upstream_gradient_from_sum(name, ours, reference):
    """y.sum().backward() hands the backward a stride-0 gradient; it must be walked correctly across chunks."""
    x = torch.randn(3, CHUNK // 2 + 5, dtype=torch.float64)
    x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours(x_ours).sum().backward()
    reference(x_ref).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_ref.grad)


@pytest.mark.parametrize("name, ours, reference", ELEMENTWISE, ids=ELEMENTWISE_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_inputs_across_chunks(name, ours, reference, dtype):
    """+-1e4 (and the float32 overflow edges of exp) inside a tensor larger than one chunk: finite, equal to torch."""
    values = torch.tensor([-1e4, -1e3, -710.0, -88.8, -44.5, -20.0, -1e-30, 0.0, 1e-30, 20.0, 44.5, 88.8, 710.0,
                           1e3, 1e4], dtype=dtype)
    x = values.repeat(CHUNK // len(values) + 2)
    x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ours, y_ref = ours(x_ours), reference(x_ref)
    y_ours.backward(torch.ones_like(y_ours))
    y_ref.backward(torch.ones_like(y_ref))
    assert torch.isfinite(y_ours).all() and torch.isfinite(x_ours.grad).all()
    torch.testing.assert_close(y_ours, y_ref)
    torch.testing.assert_close(x_ours.grad, x_ref.grad)


def test_tanh_clamp_changes_no_rounded_result():
    """Section 3: beyond |x| = 20 tanh rounds to +-1 in float32 and float64, so clamping there is exact."""
    for dtype in (torch.float32, torch.float64):
        x = torch.tensor([19.0, 20.0, 20.5, 25.0, 40.0, -20.5, -40.0], dtype=dtype)
        torch.testing.assert_close(our_F.tanh(x), torch.tanh(x), rtol=0, atol=0)


@pytest.mark.parametrize("name, ours, reference", ELEMENTWISE, ids=ELEMENTWISE_IDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(name, ours, reference, dtype):
    """float16/bfloat16 are computed in float32 and rounded once: the dtype comes back, values within a rounding."""
    x = (4 * torch.randn(6, 33)).to(dtype)
    x[0, :4] = torch.tensor([-1e4, -100.0, 100.0, 1e4])        # the spec: +-1e4 stays finite
    x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ours, y_ref = ours(x_ours), reference(x_ref)
    assert y_ours.dtype == dtype
    assert torch.isfinite(y_ours).all()
    y_ours.backward(torch.ones_like(y_ours))
    y_ref.backward(torch.ones_like(y_ref))
    assert x_ours.grad.dtype == dtype and torch.isfinite(x_ours.grad).all()
    tolerance = dict(rtol=1e-2, atol=1e-2) if dtype == torch.bfloat16 else dict(rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(y_ours.float(), y_ref.float(), **tolerance)
    torch.testing.assert_close(x_ours.grad.float(), x_ref.grad.float(), **tolerance)


@pytest.mark.parametrize("name", list(GRADCHECK) + ["gelu_tanh_extreme", "silu_large"])
def test_gradcheck_above_the_chunk_size(name, monkeypatch):
    """gradcheck with a chunk size smaller than the input, so that the chunked path itself is differentiated."""
    monkeypatch.setattr(activations_module, "_CHUNK_NUMEL", 7)
    torch.manual_seed(2)
    x = torch.randn(4, 5, 3, dtype=torch.float64)
    x = x + 0.1 * x.sign()
    function = GRADCHECK.get(name)
    if name == "gelu_tanh_extreme":
        function, x = (lambda t: our_F.gelu(t, approximate="tanh")), 3 * x
    if name == "silu_large":
        function, x = our_F.silu, 6 * x
    assert checks.gradcheck(function, x, title=name)
    assert checks.gradcheck(function, x.transpose(0, 2), title=f"{name}, transposed")


@pytest.mark.parametrize("name, ours, reference", ELEMENTWISE, ids=ELEMENTWISE_IDS)
def test_small_chunks_give_identical_results(name, ours, reference, monkeypatch):
    """Chunking is a schedule, not a formula: any chunk size gives bit-identical outputs and gradients."""
    x = torch.randn(6, 7, 11, dtype=torch.float64)
    results = []
    for numel in (10 ** 9, 1, 13, 100):
        monkeypatch.setattr(activations_module, "_CHUNK_NUMEL", numel)
        leaf = x.clone().requires_grad_()
        y = ours(leaf)
        y.backward(torch.ones_like(y))
        results.append((y.detach(), leaf.grad))
    for y, grad in results[1:]:
        assert torch.equal(y, results[0][0]) and torch.equal(grad, results[0][1])


def test_bool_and_integer_inputs_are_refused_by_every_function():
    functions = [our_F.relu, our_F.sigmoid, our_F.tanh, our_F.gelu, our_F.silu,
                 lambda t: our_F.softmax(t, 0), lambda t: our_F.log_softmax(t, 0)]
    for function in functions:
        for bad in (torch.arange(3), torch.tensor([True, False]), torch.arange(3, dtype=torch.uint8)):
            with pytest.raises(TypeError, match="expects a floating-point tensor, got dtype"):
                function(bad)


def test_softmaxes_on_empty_and_non_contiguous_inputs():
    for make in (lambda: torch.randn(0, 5), lambda: torch.randn(6, 8)[:, ::2], lambda: torch.randn(5, 7).t()):
        x = make().double()
        for ours_fn, reference in ((our_F.softmax, F.softmax), (our_F.log_softmax, F.log_softmax)):
            for dim in (0, 1):
                checks.assert_same_function(lambda t: ours_fn(t, dim), lambda t: reference(t, dim), x)
