"""common.models.swin (exported from stage4_transformers/03_swin.ipynb) against torchvision.models.

* Every constructor (swin_t, swin_s, swin_b, swin_v2_t, swin_v2_s, swin_v2_b) at image sizes other than 224, mostly
  not square, with non-default arguments: torchvision's state_dict (random values, nothing downloaded) loads
  strictly, in the same key order, and both give the same float64 eval logits.
* The pieces: window partition and reverse are inverse; the relative position index equals torchvision's buffer
  (square and non-square windows) and v2's log-spaced offsets equal its table; the shifted-window function equals
  torchvision's, forward and backward, with padding, shifts switched off by small maps, and v2's cosine scores.
* Training mode (dropout, attention dropout, stochastic depth) for v1 and v2; the same seed gives the same
  initial weights; v2's key bias gets no gradient.
* Errors that say what was expected and how to fix it.
"""
import math

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import swin_transformer as tv_swin

from common.checks import assert_same_logits, assert_same_module
from common.models import swin
from common.models.swin import (PatchMerging, PatchMergingV2, ShiftedWindowAttention, ShiftedWindowAttentionV2,
                                SwinTransformer, SwinTransformerBlockV2, relative_coords_table,
                                relative_position_index, shifted_window_attention, shifted_window_mask,
                                window_partition, window_reverse)

CONSTRUCTORS = ("swin_t", "swin_s", "swin_b", "swin_v2_t", "swin_v2_s", "swin_v2_b")
ARGUMENTS = {   # name -> ((height, width), keyword arguments for both)
    "swin_t": ((64, 80), dict(num_classes=7, dropout=0.1, attention_dropout=0.1)),
    "swin_s": ((96, 96), dict(num_classes=5, mlp_ratio=2.0)),
    "swin_b": ((72, 56), dict(num_classes=3, attention_dropout=0.2)),
    "swin_v2_t": ((80, 64), dict(num_classes=7, attention_dropout=0.1)),
    "swin_v2_s": ((36, 100), dict(num_classes=5)),
    "swin_v2_b": ((56, 72), dict(num_classes=3, mlp_ratio=3.0)),
}


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point() or name.endswith("relative_coords_table"):
                continue
            if name.endswith("logit_scale"):
                tensor.uniform_(1.0, 3.0, generator=generator)
            elif tensor.dim() > 1:
                bound = (6.0 / tensor[0].numel()) ** 0.5
                tensor.uniform_(-bound, bound, generator=generator)
            elif name.endswith("weight"):
                tensor.uniform_(0.5, 1.5, generator=generator)
            else:
                tensor.uniform_(-0.2, 0.2, generator=generator)
    return model


@pytest.mark.parametrize("name", CONSTRUCTORS)
def test_constructor_loads_torchvision_state_dict_and_gives_the_same_logits(name):
    (height, width), arguments = ARGUMENTS[name]
    with torch.device("meta"):
        reference = getattr(torchvision.models, name)(**arguments)
        ours = getattr(swin, name)(**arguments)
    reference = reference.to(torch.float64).to_empty(device="cpu")
    for module in reference.modules():          # buffers are not weights: recompute what to_empty left undefined
        if isinstance(module, tv_swin.ShiftedWindowAttention):
            module.define_relative_position_index()
            if isinstance(module, tv_swin.ShiftedWindowAttentionV2):
                module.define_relative_position_bias_table()
                module.relative_coords_table = module.relative_coords_table.double()
    _randomize(reference)
    x = torch.randn(2, 3, height, width, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert assert_same_logits(ours, reference, x, min_scale=1e-2) < 1e-9
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())


def test_window_partition_and_reverse_are_inverse():
    x = torch.randn(3, 12, 10, 4)
    for window in ((4, 5), (12, 10), (1, 1), (3, 2)):
        windows = window_partition(x, window)
        assert windows.shape == (3 * (12 // window[0]) * (10 // window[1]), window[0] * window[1], 4)
        assert torch.equal(window_reverse(windows, window, 12, 10), x)
    assert torch.equal(window_partition(x, (4, 5))[1 * 6 + 3], x[1, 4:8, 5:10].reshape(20, 4))  # image 1, row 1, column 1
    with pytest.raises(ValueError, match="not a whole number of 5x5 windows; pad it first"):
        window_partition(x, (5, 5))


@pytest.mark.parametrize("window", [[7, 7], [8, 8], [3, 5], [2, 6], [1, 4]])
def test_relative_position_index_is_torchvisions_buffer(window):
    reference = tv_swin.ShiftedWindowAttention(8, window, [0, 0], num_heads=2)
    index = relative_position_index(window)
    assert index.dtype == torch.long and torch.equal(index, reference.relative_position_index)
    assert len(index.unique()) == (2 * window[0] - 1) * (2 * window[1] - 1)
    if min(window) >= 2:
        v2 = tv_swin.ShiftedWindowAttentionV2(8, window, [0, 0], num_heads=2)
        assert torch.equal(relative_coords_table(window), v2.relative_coords_table)
    else:
        with pytest.raises(ValueError, match="at least 2x2"):
            relative_coords_table(window)


def test_mask_marks_the_wrapped_regions():
    mask = shifted_window_mask(8, 8, (4, 4), (2, 2), dtype=torch.float64)
    assert mask.shape == (4, 16, 16) and set(mask.unique().tolist()) == {0.0, -100.0}
    assert (mask[0] == 0).all()                                     # the interior window needs no mask
    # allowed pairs: one region of 16 tokens; two of 8 (last column, last row); four of 4 (the corner)
    assert [(window == 0).sum().item() for window in mask] == [256, 2 * 64, 2 * 64, 4 * 16]
    assert int((shifted_window_mask(56, 56, (7, 7), (3, 3)) != 0).flatten(1).any(1).sum()) == 15


@pytest.mark.parametrize("v2", [False, True])
@pytest.mark.parametrize("size, window, shift", [((8, 8), (4, 4), (2, 2)), ((11, 9), (4, 4), (2, 2)),
                                                 ((7, 6), (3, 3), (1, 1)), ((5, 5), (7, 7), (3, 3)),
                                                 ((12, 10), (4, 5), (0, 0)), ((9, 13), (3, 5), (1, 2))])
def test_shifted_window_attention_equals_torchvisions_function(v2, size, window, shift):
    g = torch.Generator().manual_seed(0)
    C, heads, N = 12, 3, window[0] * window[1]
    tensors = [torch.randn(*s, dtype=torch.float64, generator=g).requires_grad_() for s in
               ((2, *size, C), (3 * C, C), (C, C), (1, heads, N, N), (3 * C,), (C,), (heads, 1, 1))]
    x, qkv_w, proj_w, bias, qkv_b, proj_b, logit_scale = tensors
    kwargs = dict(qkv_bias=qkv_b, proj_bias=proj_b, logit_scale=logit_scale if v2 else None)
    ours = shifted_window_attention(x, qkv_w, proj_w, bias, list(window), heads, list(shift), **kwargs)
    theirs = tv_swin.shifted_window_attention(x, qkv_w, proj_w, bias, list(window), heads, list(shift), **kwargs)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    cotangent = torch.randn(ours.shape, dtype=torch.float64, generator=g)
    for a, b in zip(torch.autograd.grad(ours, tensors, cotangent, allow_unused=True),
                    torch.autograd.grad(theirs, tensors, cotangent, allow_unused=True)):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("v2", [False, True])
def test_train_mode_with_every_kind_of_noise(v2):
    config = dict(patch_size=[2, 2], embed_dim=12, depths=[2, 2], num_heads=[2, 3], window_size=[3, 3], num_classes=4,
                  stochastic_depth_prob=0.3, dropout=0.2, attention_dropout=0.1)
    theirs = dict(block=tv_swin.SwinTransformerBlockV2, downsample_layer=tv_swin.PatchMergingV2) if v2 else {}
    mine = dict(block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2) if v2 else {}
    reference = _randomize(tv_swin.SwinTransformer(**config, **theirs).double(), seed=3)
    ours = SwinTransformer(**config, **mine).double()
    x = torch.randn(5, 3, 13, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert_same_module(ours, reference, x, train=True, rtol=1e-9, atol=1e-10)
    assert_same_module(ours, reference, x, train=False, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", ["swin_t", "swin_v2_t"])
def test_same_seed_same_initial_weights(name):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)(num_classes=10)
    torch.manual_seed(0)
    ours = getattr(swin, name)(num_classes=10)
    assert list(ours.state_dict()) == list(reference.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), reference.state_dict().values()))


def test_v2_key_bias_is_zero_and_gets_no_gradient():
    attention = ShiftedWindowAttentionV2(8, [2, 2], [1, 1], num_heads=2).double()
    assert (attention.qkv.bias[8:16] == 0).all()
    attention(torch.randn(1, 4, 4, 8, dtype=torch.float64)).sum().backward()
    assert (attention.qkv.bias.grad[8:16] == 0).all() and attention.qkv.bias.grad[:8].abs().sum() > 0


@pytest.mark.parametrize("merging, reference", [(PatchMerging, tv_swin.PatchMerging),
                                                (PatchMergingV2, tv_swin.PatchMergingV2)])
def test_patch_merging_odd_sizes(merging, reference):
    x = torch.randn(2, 7, 5, 6, dtype=torch.float64)
    assert_same_module(merging(6).double(), _randomize(reference(6).double()), x, rtol=1e-12, atol=1e-12)


def test_patch_merging_is_a_strided_convolution():
    # the solution of the notebook's exercise 3
    merging = PatchMerging(8).double()
    weight = merging.reduction.weight.reshape(16, 2, 2, 8).permute(0, 3, 2, 1)   # (2C, j, i, C) -> (2C, C, i, j)
    x = torch.randn(2, 6, 10, 8, dtype=torch.float64)
    conv = torch.nn.functional.conv2d(x.permute(0, 3, 1, 2), weight, stride=2).permute(0, 2, 3, 1)
    torch.testing.assert_close(conv, merging.reduction(swin._merge_2x2(x)))


def test_errors_name_the_fix():
    model = SwinTransformer([2, 2], 8, [2], [2], [7, 7], num_classes=10, in_channels=1)
    cases = [(torch.randn(1, 3, 28, 28), ValueError, "in_channels=3"),
             (torch.randn(1, 28, 28), ValueError, r"x.unsqueeze\(0\)"),
             (torch.randn(1, 1, 28, 28).double(), TypeError, r"model.to\(torch.float64\)"),
             (torch.randint(0, 255, (1, 1, 28, 28)), TypeError, r"x.float\(\)"),
             (torch.randn(1, 1, 1, 28), ValueError, "at least one 2x2 patch")]
    for x, kind, message in cases:
        with pytest.raises(kind, match=message):
            model(x)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        ShiftedWindowAttention(10, [2, 2], [0, 0], num_heads=3)
    with pytest.raises(ValueError, match="one entry per stage"):
        SwinTransformer([4, 4], 8, [2, 2], [2], [7, 7])
    with pytest.raises(ValueError, match=r"channels-last map \(B, H, W, 8\)"):
        ShiftedWindowAttention(8, [2, 2], [0, 0], num_heads=2)(torch.randn(1, 8, 4, 4))
    with pytest.raises(ValueError, match="weights are not downloaded"):
        swin.swin_t(weights="IMAGENET1K_V1")
