"""Checks that a from-scratch piece computes what its reference computes.

* :func:`load_reference_state` copies a reference's ``state_dict`` into ours
  (strictly) and says which keys differ when it cannot.
* :func:`assert_same_module` runs ours and the reference on the same inputs
  and compares the outputs, the gradients of every input and of every
  parameter (by name), and the buffers after the forward pass (running
  statistics).
* :func:`assert_same_function` does the same for functions.
* :func:`gradcheck` checks a hand-written backward against finite
  differences in float64.
* :func:`randomize_` gives a reference model weights that matter before a
  comparison (default initialisations hide mistakes: zero biases, unit norm
  scales, zero-initialised embeddings).

Each returns a :class:`CheckReport`; printing it gives one line per compared
tensor in the style ``name | exact | close | max |diff|``.
A failed comparison raises ``AssertionError`` naming the tensor that differs.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Tuple

import torch
from torch import nn
from torch.autograd.gradcheck import GradcheckError

__all__ = [
    "CheckReport",
    "load_reference_state",
    "assert_same_logits",
    "assert_same_module",
    "assert_same_function",
    "gradcheck",
    "randomize_",
]


@dataclass
class CheckReport:
    """The comparisons made by one check: (name, exact, max abs difference)."""

    title: str
    rows: list = field(default_factory=list)

    def add(self, name: str, mine: torch.Tensor, ref: torch.Tensor) -> None:
        diff = (mine.detach() - ref.detach()).abs().max().item() if mine.numel() else 0.0
        self.rows.append((name, bool(torch.equal(mine, ref)), diff))

    @property
    def max_diff(self) -> float:
        return max((row[2] for row in self.rows), default=0.0)

    def __str__(self) -> str:
        width = max([len(r[0]) for r in self.rows] + [6])
        lines = [f"{self.title}: {len(self.rows)} tensors match"]
        for name, exact, diff in self.rows:
            lines.append(f"  {name:<{width}} | exact: {str(exact):<5} | close: True | max |diff|: {diff:.2e}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"CheckReport({self.title!r}, {len(self.rows)} tensors, max |diff| {self.max_diff:.2e})"


def load_reference_state(mine: nn.Module, reference: nn.Module, assign: bool = False) -> None:
    """``mine.load_state_dict(reference.state_dict(), strict=True)`` with a readable error.

    ``assign=True`` takes the reference's tensors themselves, so ``mine`` may be built on the meta device
    (a big model then costs no initialisation and no second copy of its weights)."""
    theirs = reference.state_dict()
    ours = mine.state_dict()
    missing = sorted(set(ours) - set(theirs))
    unexpected = sorted(set(theirs) - set(ours))
    shapes = [f"{k}: ours {tuple(ours[k].shape)} vs reference {tuple(theirs[k].shape)}"
              for k in sorted(set(ours) & set(theirs)) if ours[k].shape != theirs[k].shape]
    if missing or unexpected or shapes:
        raise AssertionError(
            f"{type(mine).__name__} cannot load the state_dict of {type(reference).__name__}:"
            + (f"\n  keys only ours has: {missing}" if missing else "")
            + (f"\n  keys only the reference has: {unexpected}" if unexpected else "")
            + (f"\n  shapes differ: {shapes}" if shapes else "")
        )
    mine.load_state_dict(theirs, strict=True, assign=assign)


def assert_same_logits(mine: nn.Module, reference: nn.Module, x: torch.Tensor, *, rtol: float = 1e-10,
                       atol: float = 1e-10, min_scale: float = 1e-3) -> float:
    """Load the reference's state_dict into ``mine`` (strict, ``assign=True``), run both in eval mode on ``x``
    and assert equal outputs; returns the largest absolute difference.

    The key *order* must match too (a torchvision checkpoint is a list of tensors by name, but code that
    walks ``state_dict()`` in order, such as a converter, relies on it). Outputs whose largest magnitude
    is at most ``min_scale`` are rejected: near-zero logits would pass any comparison."""
    ours, theirs = list(mine.state_dict()), list(reference.state_dict())
    load_reference_state(mine, reference, assign=True)
    if ours != theirs:
        first = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
        raise AssertionError(f"same keys in a different order: key {first} is {ours[first]!r} in ours, "
                             f"{theirs[first]!r} in the reference")
    reference.eval()
    mine.eval()
    with torch.no_grad():
        expected = reference(x)
        got = mine(x)
    if got.shape != expected.shape:
        raise AssertionError(f"output shapes differ: ours {tuple(got.shape)}, reference {tuple(expected.shape)}")
    if expected.abs().max() <= min_scale:
        raise AssertionError(f"the reference's outputs are all within {min_scale} of zero: the comparison "
                             "would prove nothing; use weights that give non-trivial outputs")
    torch.testing.assert_close(got, expected, rtol=rtol, atol=atol)
    return (got - expected).abs().max().item()


def _flatten(obj: Any, prefix: str = "output") -> list:
    """Tensors inside nested tuples/lists/dicts, with a path name each (None skipped)."""
    if obj is None:
        return []
    if isinstance(obj, torch.Tensor):
        return [(prefix, obj)]
    if isinstance(obj, (tuple, list)):
        return [item for i, o in enumerate(obj) for item in _flatten(o, f"{prefix}[{i}]")]
    if isinstance(obj, dict):
        return [item for k, o in obj.items() for item in _flatten(o, f"{prefix}[{k!r}]")]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):      # an output record, e.g. (.sample,)
        return [item for f in dataclasses.fields(obj) for item in _flatten(getattr(obj, f.name), f"{prefix}.{f.name}")]
    raise TypeError(f"cannot compare an output of type {type(obj).__name__} at {prefix}")


def _compare(report: CheckReport, name: str, mine, ref, rtol, atol) -> None:
    if (mine is None) != (ref is None):
        which = "ours" if mine is None else "the reference"
        raise AssertionError(f"{report.title}: {name} is None for {which} only (a missing gradient?)")
    if mine is None:
        return
    if mine.shape != ref.shape:
        raise AssertionError(
            f"{report.title}: {name} has shape {tuple(mine.shape)}, the reference {tuple(ref.shape)}"
        )
    try:
        torch.testing.assert_close(mine, ref, rtol=rtol, atol=atol, equal_nan=True)
    except AssertionError as exc:
        raise AssertionError(f"{report.title}: {name} differs from the reference.\n{exc}") from None
    report.add(name, mine, ref)


def _clone_inputs(inputs, requires_grad: bool):
    out = []
    for x in inputs:
        if isinstance(x, torch.Tensor):
            x = x.detach().clone()
            if requires_grad and (x.is_floating_point() or x.is_complex()):
                x.requires_grad_(True)
        out.append(x)
    return out


def _cotangents(outputs: list, seed: int) -> list:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(t.shape, generator=generator, dtype=t.dtype).to(t.device) for _, t in outputs]


def _backward(outputs: list, cotangents: list) -> None:
    pairs = [(t, c) for (_, t), c in zip(outputs, cotangents) if t.requires_grad]
    if pairs:
        torch.autograd.backward([t for t, _ in pairs], [c for _, c in pairs])


def assert_same_module(mine: nn.Module, reference: nn.Module, *inputs, forward_kwargs: Optional[dict] = None,
                       load_state: bool = True, train: Optional[bool] = None, backward: bool = True,
                       compare_buffers: bool = True, rtol: Optional[float] = None,
                       atol: Optional[float] = None, seed: int = 0, title: Optional[str] = None,
                       call: Optional[Callable] = None) -> CheckReport:
    """Prove that ``mine`` and ``reference`` compute the same function.

    ``load_state`` copies the reference's state_dict into ours first (strict).
    ``train`` sets both to train (True) or eval (False) mode; ``None`` leaves
    the modes as they are. Both forwards start from the same RNG state.
    With ``backward``, a random cotangent (same for both) is back-propagated
    and the gradients of every floating input and every parameter compared.
    With ``compare_buffers``, buffers are compared after the forward (e.g. a
    BatchNorm's running statistics). ``rtol``/``atol`` default to
    ``torch.testing.assert_close``'s for the dtype. ``call(module, *inputs)``
    replaces ``module(*inputs, **forward_kwargs)`` for a module whose forward
    takes keyword-only arguments or returns a record to unpack first.
    """
    forward_kwargs = forward_kwargs or {}
    if call is None:
        call = lambda module, *args: module(*args, **forward_kwargs)  # noqa: E731
    report = CheckReport(title or f"{type(mine).__name__} vs {type(reference).__name__}")
    if load_state:
        load_reference_state(mine, reference)
    if train is not None:
        mine.train(train)
        reference.train(train)
    for module in (mine, reference):
        module.zero_grad(set_to_none=True)
    ours_in = _clone_inputs(inputs, backward)
    ref_in = _clone_inputs(inputs, backward)

    rng = torch.get_rng_state()
    out_mine = _flatten(call(mine, *ours_in))
    torch.set_rng_state(rng)
    out_ref = _flatten(call(reference, *ref_in))
    if len(out_mine) != len(out_ref):
        raise AssertionError(f"{report.title}: ours returns {len(out_mine)} tensors, the reference {len(out_ref)}")
    for (name, a), (_, b) in zip(out_mine, out_ref):
        _compare(report, name, a, b, rtol, atol)

    if compare_buffers:
        ours_buffers = dict(mine.named_buffers())
        for name, buffer in reference.named_buffers():
            if name not in ours_buffers:
                raise AssertionError(f"{report.title}: buffer {name} is missing from ours")
            _compare(report, f"buffer {name}", ours_buffers[name], buffer, rtol, atol)

    if backward and any(t.requires_grad for _, t in out_ref):
        cotangents = _cotangents(out_ref, seed)
        _backward(out_mine, cotangents)
        _backward(out_ref, cotangents)
        for i, (a, b) in enumerate(zip(ours_in, ref_in)):
            if isinstance(b, torch.Tensor) and b.requires_grad:
                _compare(report, f"grad input[{i}]", a.grad, b.grad, rtol, atol)
        ours_params = dict(mine.named_parameters())
        for name, param in reference.named_parameters():
            if name not in ours_params:
                raise AssertionError(f"{report.title}: parameter {name} is missing from ours")
            _compare(report, f"grad {name}", ours_params[name].grad, param.grad, rtol, atol)
    return report


def assert_same_function(mine: Callable, reference: Callable, *inputs, kwargs: Optional[dict] = None,
                         backward: bool = True, rtol: Optional[float] = None, atol: Optional[float] = None,
                         seed: int = 0, title: Optional[str] = None) -> CheckReport:
    """Like :func:`assert_same_module` for two functions of the same arguments."""
    kwargs = kwargs or {}
    name = title or f"{getattr(mine, '__name__', 'ours')} vs {getattr(reference, '__name__', 'reference')}"
    wrapper_mine = _FunctionModule(mine, kwargs)
    wrapper_ref = _FunctionModule(reference, kwargs)
    return assert_same_module(wrapper_mine, wrapper_ref, *inputs, load_state=False, backward=backward,
                              compare_buffers=False, rtol=rtol, atol=atol, seed=seed, title=name)


class _FunctionModule(nn.Module):
    def __init__(self, fn: Callable, kwargs: dict):
        super().__init__()
        self.fn, self.kwargs = fn, kwargs

    def forward(self, *args):
        return self.fn(*args, **self.kwargs)


def gradcheck(fn: Callable, *inputs, eps: float = 1e-6, atol: float = 1e-6, rtol: float = 1e-5,
              check_grad_of_grad: bool = False, title: Optional[str] = None) -> bool:
    """``torch.autograd.gradcheck`` in float64 with a readable failure.

    The tolerances are tighter than torch's defaults (atol 1e-5, rtol 1e-3):
    in float64 a central difference with eps=1e-6 is accurate to about 1e-10,
    so a backward that is wrong by 0.1 % must fail, and here it does.
    Floating inputs are converted to float64 and marked as requiring grad;
    others (ints, bools, None) are passed as they are. Raises AssertionError
    naming the function when the analytical and numerical Jacobians differ.
    """
    name = title or getattr(fn, "__name__", type(fn).__name__)
    prepared = []
    for x in inputs:
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            x = x.detach().to(torch.float64).clone().requires_grad_(True)
        prepared.append(x)
    if not any(isinstance(x, torch.Tensor) and x.requires_grad for x in prepared):
        raise ValueError(f"gradcheck of {name}: no floating-point tensor input to differentiate")
    try:
        torch.autograd.gradcheck(fn, tuple(prepared), eps=eps, atol=atol, rtol=rtol)
        if check_grad_of_grad:
            torch.autograd.gradgradcheck(fn, tuple(prepared), eps=eps, atol=atol, rtol=rtol)
    except GradcheckError as exc:
        raise AssertionError(f"gradcheck of {name} failed: the hand-written backward is wrong.\n{exc}") from None
    return True


def randomize_(model: nn.Module, generator: torch.Generator, *,
               norm_weights: Optional[Tuple[float, float]] = None, batches_tracked: int = 3) -> nn.Module:
    """Weights that matter, in place, from ``generator``: He-scaled uniform matrices and kernels, random biases
    and BatchNorm statistics; returns ``model``.

    * matrices and kernels (dim > 1): uniform in +-sqrt(6 / fan_in), fan_in = the elements of one output row,
      a variance of 2 / fan_in, so deep stacks keep their logits of order one;
    * ``running_var``: uniform in [0.5, 1.5]; ``num_batches_tracked``: ``batches_tracked``;
    * 1-D ``weight`` tensors (norm scales): uniform in ``norm_weights``, or, when it is None, like the biases;
    * every other 1-D tensor (biases, ``running_mean``, ...): uniform in [-0.2, 0.2].

    ``uniform_`` in place: about twice as fast as ``randn`` on the largest classifier matrices.
    """
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                tensor.fill_(batches_tracked)
            elif name.endswith("running_var"):
                tensor.uniform_(0.5, 1.5, generator=generator)
            elif tensor.dim() > 1:
                bound = (6.0 / tensor[0].numel()) ** 0.5
                tensor.uniform_(-bound, bound, generator=generator)
            elif norm_weights is not None and name.endswith("weight"):
                tensor.uniform_(*norm_weights, generator=generator)
            else:
                tensor.uniform_(-0.2, 0.2, generator=generator)
    return model
