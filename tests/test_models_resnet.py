"""common.models.resnet (exported from stage3_resnets/01_resnet.ipynb) against torchvision.models.

* Every constructor (five ResNets, three ResNeXts, two wide ResNets) with non-default arguments: torchvision's
  state_dict loads strictly and both give the same logits (float64, eval mode, 1e-10). The references are built
  on the meta device, materialised in float64 and filled with cheap random values; ours is built on the meta
  device and takes the reference's tensors with ``load_state_dict(strict=True, assign=True)``.
* The same seed gives bit-identical initial weights (He-normal fan-out, zero-initialised residual BatchNorms).
* Training mode (outputs, BatchNorm buffers, every gradient) for small configurations of both block types,
  grouped too, and for the Fashion-MNIST variant against torchvision's own ``ResNet``/``_make_layer``.
* Errors that say what was expected.
"""
import gc

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import resnet as tv_resnet

from common.checks import assert_same_logits, assert_same_module
from common.models import (BasicBlock, Bottleneck, ResNet, conv1x1, conv3x3, resnet18, resnet34, resnet50,
                           resnet101, resnet152, resnext50_32x4d, resnext101_32x8d, resnext101_64x4d,
                           wide_resnet50_2, wide_resnet101_2)
from common.nn import GroupNorm
from _weights import randomize_

CONSTRUCTORS = {f.__name__: f for f in (resnet18, resnet34, resnet50, resnet101, resnet152, resnext50_32x4d,
                                        resnext101_32x8d, resnext101_64x4d, wide_resnet50_2, wide_resnet101_2)}

# name -> (our kwargs, torchvision's kwargs): every constructor gets non-default arguments
_DILATE_2_3 = dict(replace_stride_with_dilation=[False, True, True])
_DILATE_3 = dict(replace_stride_with_dilation=[False, False, True])
ARGUMENTS = {
    "resnet18": (dict(num_classes=7, norm_layer=lambda c: GroupNorm(8, c)),
                 dict(num_classes=7, norm_layer=lambda c: nn.GroupNorm(8, c))),
    "resnet34": (dict(num_classes=7, zero_init_residual=True),) * 2,
    "resnet50": (dict(num_classes=7, **_DILATE_2_3),) * 2,
    "resnet101": (dict(num_classes=7, **_DILATE_3),) * 2,
    "resnet152": (dict(num_classes=7, zero_init_residual=True),) * 2,
    "resnext50_32x4d": (dict(num_classes=7, zero_init_residual=True, **_DILATE_2_3),) * 2,
    "resnext101_32x8d": (dict(num_classes=7),) * 2,
    "resnext101_64x4d": (dict(num_classes=7, **_DILATE_3),) * 2,
    "wide_resnet50_2": (dict(num_classes=7, norm_layer=lambda c: GroupNorm(16, c)),
                        dict(num_classes=7, norm_layer=lambda c: nn.GroupNorm(16, c))),
    "wide_resnet101_2": (dict(num_classes=7, zero_init_residual=True),) * 2,
}


@pytest.mark.parametrize("name", list(CONSTRUCTORS))
def test_torchvision_state_dict_loads_and_gives_the_same_logits(name):
    ours_kwargs, their_kwargs = ARGUMENTS[name]
    with torch.device("meta"):
        reference = getattr(torchvision.models, name)(**their_kwargs)
        ours = CONSTRUCTORS[name](**ours_kwargs)
    reference = randomize_(reference.to(torch.float64).to_empty(device="cpu"), torch.Generator().manual_seed(0),
                           norm_weights=(0.2, 0.6))         # norm scales below 1: 50 additions keep logits O(1)
    # strict load (same keys, order and shapes), then the same eval-mode logits in float64
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert_same_logits(ours, reference, x, min_scale=1e-2)
    del reference, ours
    gc.collect()


@pytest.mark.parametrize("name", list(CONSTRUCTORS))
def test_default_arguments_and_architecture(name):
    with torch.device("meta"):
        ours = CONSTRUCTORS[name]()
        reference = getattr(torchvision.models, name)()
    assert ours.fc.out_features == 1000 and ours.conv1.kernel_size == (7, 7) and ours.conv1.stride == (2, 2)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, v.shape) for k, v in reference.state_dict().items()]
    for mine, theirs in zip((m for m in ours.modules() if type(m).__name__ == "Conv2d"),
                            (m for m in reference.modules() if isinstance(m, nn.Conv2d))):
        assert (mine.stride, mine.padding, mine.dilation, mine.groups) == \
               (theirs.stride, theirs.padding, theirs.dilation, theirs.groups)
    # only common.nn layers inside (containers from torch.nn are fine)
    for module in ours.modules():
        if not isinstance(module, (nn.Sequential, ResNet, BasicBlock, Bottleneck)):
            assert type(module).__module__.startswith("common.nn"), type(module)


@pytest.mark.parametrize("name, kwargs", [
    ("resnet18", {}),
    ("resnet34", dict(zero_init_residual=True, num_classes=10)),
    ("resnet50", dict(zero_init_residual=True)),
    ("resnext50_32x4d", dict(zero_init_residual=True, replace_stride_with_dilation=[False, True, True])),
    ("wide_resnet50_2", {}),
])
def test_same_seed_gives_bit_identical_initial_weights(name, kwargs):
    """He-normal (fan_out) convolutions, norm layers at identity, Linear's own init, zero-init residual BNs."""
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)(**kwargs)
    torch.manual_seed(0)
    ours = CONSTRUCTORS[name](**kwargs)
    theirs = reference.state_dict()
    differ = [k for k, v in ours.state_dict().items() if not torch.equal(v, theirs[k])]
    assert not differ, differ[:5]
    zeroed = [k for k, v in ours.state_dict().items() if k.endswith("weight") and not v.any()]
    if kwargs.get("zero_init_residual"):
        last = "bn2.weight" if name.startswith("resnet18") or name.startswith("resnet34") else "bn3.weight"
        assert zeroed and all(k.endswith(last) for k in zeroed)
    else:
        assert not zeroed


@pytest.mark.parametrize("block, kwargs", [
    ("basic", {}),
    ("bottleneck", dict(groups=4, width_per_group=16)),
    ("bottleneck", dict(replace_stride_with_dilation=[False, False, True])),
])
@pytest.mark.parametrize("train", [True, False])
def test_small_configurations_match_in_train_and_eval(block, kwargs, train):
    """torchvision's own ResNet class with one block per stage: outputs, buffers, every gradient."""
    ours_block, their_block = (BasicBlock, tv_resnet.BasicBlock) if block == "basic" else \
                              (Bottleneck, tv_resnet.Bottleneck)
    torch.manual_seed(0)
    ours = ResNet(ours_block, [1, 1, 1, 1], num_classes=10, **kwargs).double()
    reference = tv_resnet.ResNet(their_block, [1, 1, 1, 1], num_classes=10, **kwargs).double()
    randomize_(reference, torch.Generator().manual_seed(2), norm_weights=(0.2, 0.6))
    x = torch.randn(4, 3, 64, 64, dtype=torch.float64)   # layer4 sees 2x2 maps: 16 values per channel for BatchNorm
    report = assert_same_module(ours, reference, x, train=train, rtol=1e-9, atol=1e-10)
    assert any(row[0] == "grad conv1.weight" for row in report.rows)
    if train:
        assert any("running_mean" in row[0] for row in report.rows)


def _torchvision_small(block, layers, widths, in_channels=1, num_classes=10, **kwargs):
    """torchvision's ResNet and _make_layer with a 3x3 stem, no max-pool and the given widths (up to 4 stages)."""
    reference = tv_resnet.ResNet(block, [1, 1, 1, 1], num_classes=num_classes, **kwargs)
    reference.inplanes = widths[0]
    reference.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
    reference.bn1 = nn.BatchNorm2d(widths[0])
    reference.maxpool = nn.Identity()
    for index in range(4):
        stage = (reference._make_layer(block, widths[index], layers[index], stride=1 if index == 0 else 2)
                 if index < len(layers) else nn.Identity())
        setattr(reference, f"layer{index + 1}", stage)
    reference.fc = nn.Linear(widths[-1] * block.expansion, num_classes)
    return reference


@pytest.mark.parametrize("block, layers, widths, kwargs", [
    ("basic", [2, 1, 1], (8, 16, 32), {}),
    ("basic", [1, 1, 1, 1], (16, 32, 64, 128), dict(zero_init_residual=False)),
    ("bottleneck", [1, 2], (16, 32), dict(groups=8, width_per_group=16)),
])
@pytest.mark.parametrize("train", [True, False])
def test_fashion_mnist_variant_matches_torchvision_make_layer(block, layers, widths, kwargs, train):
    ours_block, their_block = (BasicBlock, tv_resnet.BasicBlock) if block == "basic" else \
                              (Bottleneck, tv_resnet.Bottleneck)
    ours = ResNet(ours_block, layers, num_classes=10, in_channels=1, stem="small", widths=widths, **kwargs).double()
    reference = _torchvision_small(their_block, layers, widths, **kwargs).double()
    randomize_(reference, torch.Generator().manual_seed(3), norm_weights=(0.2, 0.6))
    x = torch.randn(3, 1, 28, 28, dtype=torch.float64)
    report = assert_same_module(ours, reference, x, train=train, rtol=1e-9, atol=1e-10)
    assert len(report.rows) > 20
    assert ours(x).shape == (3, 10)


def test_stem_and_widths_shape_the_model():
    small = ResNet(BasicBlock, [1, 1, 1], num_classes=10, in_channels=1, stem="small", widths=(16, 32, 64))
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1) and small.conv1.in_channels == 1
    assert type(small.maxpool).__name__ == "Identity" and not hasattr(small, "layer4")
    assert small.fc.in_features == 64
    x = torch.randn(2, 1, 28, 28)
    assert small.layer3(small.layer2(small.layer1(small.conv1(x)))).shape == (2, 64, 7, 7)
    big = ResNet(Bottleneck, [1, 1, 1, 1], widths=(8, 16, 32, 64))
    assert big.conv1.kernel_size == (7, 7) and big.fc.in_features == 64 * 4
    assert conv3x3(4, 8, stride=2, groups=2, dilation=3).padding == (3, 3)
    assert conv1x1(4, 8).kernel_size == (1, 1) and conv1x1(4, 8).bias is None


def test_bad_input_and_arguments():
    model = ResNet(BasicBlock, [1, 1], num_classes=10, in_channels=1, stem="small", widths=(8, 16))
    with pytest.raises(ValueError, match=r"ResNet expected input \(N, 1, H, W\), got \(2, 3, 28, 28\)"):
        model(torch.randn(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"ResNet expected input \(N, 1, H, W\), got \(1, 28, 28\)"):
        model(torch.randn(1, 28, 28))
    with pytest.raises(ValueError, match="pass x.unsqueeze\\(0\\)"):
        model(torch.randn(1, 28, 28))
    with pytest.raises(ValueError, match="pass a torch.Tensor"):
        model([[0.0]])
    with pytest.raises(ValueError, match="nothing is downloaded"):
        resnet50(weights="DEFAULT")
    with pytest.raises(ValueError, match="3-element sequence"):
        resnet18(replace_stride_with_dilation=[True, True])
    with pytest.raises(ValueError, match="one block count per stage width"):
        ResNet(BasicBlock, [2, 2], widths=(64, 128, 256))
    with pytest.raises(ValueError, match="positive ints"):
        ResNet(BasicBlock, [2, 0], widths=(8, 16))
    with pytest.raises(ValueError, match="stem must be one of"):
        ResNet(BasicBlock, [2, 2, 2, 2], stem="tiny")
    with pytest.raises(ValueError, match="BasicBlock only supports groups=1 and base_width=64"):
        resnet18(groups=2)
    with pytest.raises(ValueError, match="does not support dilation"):
        resnet34(replace_stride_with_dilation=[False, True, True])
    with pytest.raises(ValueError, match="fixes groups=32, got groups=16"):
        resnext50_32x4d(groups=16)
    with pytest.raises(ValueError, match="fixes width_per_group=128"):
        wide_resnet50_2(width_per_group=64)
    with pytest.raises(ValueError, match="must be at least 1"):
        ResNet(Bottleneck, [1, 1], widths=(8, 16), groups=32, width_per_group=4)
    with torch.device("meta"):
        assert resnext50_32x4d(groups=32).layer1[0].conv2.groups == 32        # the fixed value itself is fine


def test_grey_images_into_a_colour_resnet18_name_in_channels():
    """The error says what the model expects, what came, and the fix: build it with in_channels=1."""
    with torch.device("meta"):                                       # the check runs before any arithmetic
        model = resnet18()
        grey = torch.empty(2, 1, 28, 28)
    with pytest.raises(ValueError, match=r"ResNet expected input \(N, 3, H, W\), got \(2, 1, 28, 28\): .*"
                                         r"build it with in_channels=1, e.g. resnet18\(in_channels=1\)"):
        model(grey)
    with torch.device("meta"):
        fixed = resnet18(in_channels=1, stem="small", num_classes=10)
        assert fixed(grey).shape == (2, 10)                         # the fix works (shapes only, on meta)
