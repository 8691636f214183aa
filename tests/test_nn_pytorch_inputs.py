"""Our components on the inputs PyTorch's own module tests use.

``torch.testing._internal.common_modules.module_db`` is the table PyTorch's test suite drives every
``torch.nn`` module with: for each module, constructor arguments and forward inputs chosen to reach the
awkward cases (empty batches, unbatched inputs, odd shapes, every constructor flag). For every module of
``common.nn`` that has an entry there, each of those inputs is given to torch's module and to ours, with
torch's state_dict loaded into ours, in train and in eval mode, in float64:

* where torch accepts the input, ours gives the same outputs, the same input and parameter gradients
  and the same buffers afterwards;
* where ours does not support a constructor argument torch has, it says so with a clear error
  (listed in REFUSED below, each with its reason), never a wrong answer.

This needs the small ``expecttest`` package (in requirements.txt), which torch's test helpers import.
"""
from __future__ import annotations

import pytest
import torch

import common.nn as ours

common_modules = pytest.importorskip("torch.testing._internal.common_modules",
                                     reason="torch's test helpers need the expecttest package")

# Module names in module_db whose counterpart in common.nn has the same name.
OURS = {name: getattr(ours, name) for name in dir(ours) if isinstance(getattr(ours, name), type)}
INFOS = [info for info in common_modules.module_db
         if info.module_cls.__module__.startswith("torch.nn") and info.module_cls.__name__ in OURS]

# What ours does not implement, by module name: (a test on the constructor's kwargs, the reason).
# Each such sample must be refused with NotImplementedError/ValueError/TypeError and a message.
REFUSED = {
    "LSTM": (lambda kwargs: kwargs.get("proj_size", 0) > 0,
             "projected LSTMs (proj_size > 0, Sak et al. 2014) are not part of the curriculum"),
}


def _samples():
    for info in INFOS:
        for training in (True, False):
            torch.manual_seed(0)
            inputs = info.module_inputs_func(info, device="cpu", dtype=torch.float64, requires_grad=True,
                                             training=training)
            for index, sample in enumerate(inputs):
                if sample.forward_input is None:
                    continue
                name = info.module_cls.__name__
                yield pytest.param(info, sample, training,
                                   id=f"{name}-{'train' if training else 'eval'}-{index}-{sample.desc or 'default'}")


def _clone(value):
    """A fresh leaf copy of every tensor (requires_grad kept) inside nested tuples/lists/dicts."""
    if isinstance(value, torch.Tensor):
        copy = value.detach().clone()
        return copy.requires_grad_(value.requires_grad) if copy.is_floating_point() else copy
    if isinstance(value, (tuple, list)):
        return type(value)(_clone(v) for v in value)
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    return value


def _tensors(value):
    """The tensors inside nested outputs, in a fixed order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for k in sorted(value) for t in _tensors(value[k])]
    return []


def _run(module, args, kwargs, seed):
    torch.manual_seed(seed)                  # dropout inside the module draws the same masks in both
    output = module(*args, **kwargs)
    outputs = _tensors(output)
    differentiable = [t for t in outputs if t.requires_grad]
    if differentiable:
        generator = torch.Generator().manual_seed(1)
        loss = sum((t * torch.randn(t.shape, generator=generator, dtype=t.dtype)).sum() for t in differentiable)
        loss.backward()
    return outputs


def _refusal(name, ctor_kwargs):
    if name in REFUSED and REFUSED[name][0](ctor_kwargs):
        return REFUSED[name][1]
    return None


@pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")
@pytest.mark.parametrize("info, sample, training", list(_samples()))
def test_same_as_torch_on_pytorch_test_inputs(info, sample, training):
    name = info.module_cls.__name__
    ctor_args, ctor_kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
    torch.manual_seed(0)
    try:
        theirs = info.module_cls(*ctor_args, **ctor_kwargs).to(torch.float64)
    except Exception as exc:  # pragma: no cover - torch refuses its own sample: nothing to compare
        pytest.skip(f"torch itself refuses this sample: {exc}")
    reason = _refusal(name, ctor_kwargs)
    try:
        mine = OURS[name](*ctor_args, **ctor_kwargs).to(torch.float64)
    except (ValueError, TypeError, NotImplementedError) as exc:
        assert reason, f"ours refuses {name}({ctor_args}, {ctor_kwargs}) which torch accepts: {exc}"
        assert str(exc), "a refusal must say why"
        return
    mine.load_state_dict(theirs.state_dict())
    theirs.train(training)
    mine.train(training)
    args, kwargs = sample.forward_input.args, sample.forward_input.kwargs
    their_args, their_kwargs = _clone(args), _clone(kwargs)
    my_args, my_kwargs = _clone(args), _clone(kwargs)
    try:
        expected = _run(theirs, their_args, their_kwargs, seed=7)
    except Exception as exc:
        # torch refuses this input: ours must refuse it too, with an error rather than an answer
        with pytest.raises(Exception):
            _run(mine, my_args, my_kwargs, seed=7)
        return
    try:
        actual = _run(mine, my_args, my_kwargs, seed=7)
    except (ValueError, TypeError, NotImplementedError) as exc:
        assert reason, f"ours refuses an input torch accepts ({sample.desc}): {exc}"
        return
    assert len(actual) == len(expected), f"{len(actual)} outputs, torch gives {len(expected)}"
    for got, want in zip(actual, expected):
        assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, want.shape, got.dtype, want.dtype)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    for got, want in zip(_tensors(my_args) + _tensors(my_kwargs), _tensors(their_args) + _tensors(their_kwargs)):
        if want.requires_grad:
            assert (got.grad is None) == (want.grad is None), "input gradient present in one only"
            if want.grad is not None:
                torch.testing.assert_close(got.grad, want.grad, rtol=1e-9, atol=1e-10)
    their_params = dict(theirs.named_parameters())
    for key, param in mine.named_parameters():
        want = their_params[key].grad
        assert (param.grad is None) == (want is None), f"gradient of {key} present in one only"
        if want is not None:
            torch.testing.assert_close(param.grad, want, rtol=1e-9, atol=1e-10, msg=f"gradient of {key}")
    their_buffers = dict(theirs.named_buffers())
    for key, buffer in mine.named_buffers():
        torch.testing.assert_close(buffer, their_buffers[key], rtol=1e-9, atol=1e-10, msg=f"buffer {key}")


def test_every_component_with_a_pytorch_entry_is_covered():
    covered = {info.module_cls.__name__ for info in INFOS}
    assert {"Conv2d", "Linear", "LayerNorm", "GroupNorm", "BatchNorm2d", "GELU", "MultiheadAttention",
            "LSTM", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "Embedding"} <= covered, covered
