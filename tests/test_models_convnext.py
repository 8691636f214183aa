"""common.models.convnext (exported from stage6_frontier/01_convnext.ipynb) against torchvision.models.

Every constructor, with non-default arguments: torchvision's state_dict (random float64 values, layer scales and
norm scales included) loads strictly and both give the same eval logits on a 32x32 image; parameter counts equal
torchvision's published ones; the stochastic-depth rates, the norm epsilons and the layer-scale initial value are
torchvision's. A small configuration matches in training mode (outputs and gradients, with stochastic depth on:
the same rows dropped under the same seed), also with one input channel and a 2x2 patchify stem. The roadmap
network: every step builds and trains (forward and backward), step 0 is the stage-3 ResNet and the last step is
ConvNeXt. Bad input raises errors that say what was expected.
"""
import math
from functools import partial

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.convnext import CNBlockConfig as TorchvisionCNBlockConfig
from torchvision.ops import StochasticDepth as TorchvisionStochasticDepth

from common.checks import assert_same_logits, assert_same_module
from common.models.convnext import (CNBlock, CNBlockConfig, ConvNeXt, RoadmapNet, convnext_base,
                                    convnext_block_setting, convnext_large, convnext_small, convnext_tiny)
from common.models.efficientnet import StochasticDepth
from common.models.resnet import BasicBlock, ResNet
from common.nn import GroupNorm, LayerNorm
from _weights import randomize_

CONSTRUCTORS = {f.__name__: f for f in (convnext_tiny, convnext_small, convnext_base, convnext_large)}
PUBLISHED = {"convnext_tiny": 28_589_128, "convnext_small": 50_223_688, "convnext_base": 88_591_464,
             "convnext_large": 197_767_336}
ARGUMENTS = {
    "convnext_tiny": dict(num_classes=10, stochastic_depth_prob=0.3, layer_scale=0.5),
    "convnext_small": dict(num_classes=7, layer_scale=0.2),
    "convnext_base": dict(num_classes=1000, layer_scale=1e-3),
    "convnext_large": dict(num_classes=3, stochastic_depth_prob=0.0),
}


def _randomize(model: nn.Module, seed: int) -> nn.Module:
    """randomize_ with norm scales in [0.5, 1.5], then layer scales in [0.1, 0.5] (not 1e-6: every branch counts)."""
    generator = torch.Generator().manual_seed(seed)
    randomize_(model, generator, norm_weights=(0.5, 1.5))
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("layer_scale"):
                tensor.uniform_(0.1, 0.5, generator=generator)
    return model


@pytest.mark.parametrize("name", list(CONSTRUCTORS))
def test_torchvision_state_dict_loads_and_gives_the_same_logits(name):
    with torch.device("meta"):
        reference = getattr(torchvision.models, name)(**ARGUMENTS[name])
        ours = CONSTRUCTORS[name](**ARGUMENTS[name])
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())
    reference = _randomize(reference.to(torch.float64).to_empty(device="cpu"), 0)
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert_same_logits(ours, reference, x, rtol=1e-9, atol=1e-9, min_scale=1e-1)
    # the hyper-parameters outside the state_dict
    assert ([m.p for m in ours.modules() if isinstance(m, StochasticDepth)]
            == [m.p for m in reference.modules() if isinstance(m, TorchvisionStochasticDepth)])
    assert ([m.eps for m in ours.modules() if isinstance(m, LayerNorm)]
            == [m.eps for m in reference.modules() if isinstance(m, nn.LayerNorm)])


@pytest.mark.parametrize("name", list(CONSTRUCTORS))
def test_default_models_have_torchvisions_parameter_counts_and_drop_rates(name):
    with torch.device("meta"):
        ours, reference = CONSTRUCTORS[name](), getattr(torchvision.models, name)()
    assert sum(p.numel() for p in ours.parameters()) == PUBLISHED[name]
    assert list(ours.state_dict()) == list(reference.state_dict())
    ours_p = [m.p for m in ours.modules() if isinstance(m, StochasticDepth)]
    assert ours_p == [m.p for m in reference.modules() if isinstance(m, TorchvisionStochasticDepth)]
    assert ours_p[0] == 0.0 and ours_p[-1] == {"convnext_tiny": 0.1, "convnext_small": 0.4}.get(name, 0.5)


def test_initialisation_and_layer_scale():
    torch.manual_seed(0)
    model = ConvNeXt(convnext_block_setting((32, 64), (2, 2)), layer_scale=0.25, num_classes=10)
    weights = torch.cat([p.flatten() for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1])
    assert abs(weights.std().item() - 0.02) < 2e-3
    biases = [m.bias for m in model.modules() if type(m).__name__ in ("Conv2d", "Linear")]
    assert all(torch.count_nonzero(b) == 0 for b in biases)
    scales = [b.layer_scale for b in model.modules() if isinstance(b, CNBlock)]
    assert len(scales) == 4 and all(torch.equal(s, torch.full((s.shape[0], 1, 1), 0.25)) for s in scales)


def _small_pair(in_channels=3, patch_size=4, norm=None, seed=0, **kwargs):
    setting = [(8, 16, 2), (16, 24, 1), (24, None, 2)]
    reference = torchvision.models.ConvNeXt([TorchvisionCNBlockConfig(*s) for s in setting],
                                            norm_layer=norm[1] if norm else None, **kwargs)
    if (in_channels, patch_size) != (3, 4):
        reference.features[0][0] = nn.Conv2d(in_channels, 8, patch_size, stride=patch_size)
    ours = ConvNeXt([CNBlockConfig(*s) for s in setting], norm_layer=norm[0] if norm else None,
                    in_channels=in_channels, patch_size=patch_size, **kwargs)
    return ours.double(), _randomize(reference.double(), seed)


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("in_channels,patch_size,size", [(3, 4, 35), (1, 2, 28)])
def test_small_configuration_matches_in_both_modes(train, in_channels, patch_size, size):
    ours, reference = _small_pair(in_channels, patch_size, stochastic_depth_prob=0.6, layer_scale=0.3,
                                  num_classes=5)
    x = torch.randn(8, in_channels, size, size - 3, dtype=torch.float64)   # odd, non-square sizes
    report = assert_same_module(ours, reference, x, train=train, rtol=1e-9, atol=1e-10)
    assert len(report.rows) > 30


def test_non_default_norm_layer():
    norms = (lambda c: GroupNorm(2, c), lambda c: nn.GroupNorm(2, c))
    ours, reference = _small_pair(norm=norms, num_classes=4)
    assert_same_module(ours, reference, torch.randn(2, 3, 32, 32, dtype=torch.float64), train=False,
                       rtol=1e-9, atol=1e-10)


def test_stochastic_depth_drops_rows_like_torchvision():
    ours, reference = _small_pair(stochastic_depth_prob=0.5, layer_scale=1.0, num_classes=5)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(64, 3, 32, 32, dtype=torch.float64)
    ours.train(), reference.train()
    with torch.no_grad():
        torch.manual_seed(5)
        a = ours(x)
        torch.manual_seed(5)
        b = reference(x)
        torch.manual_seed(6)
        c = ours(x)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    assert not torch.allclose(a, c)                    # another seed drops other rows
    dropped = []
    block = next(m for m in ours.modules() if isinstance(m, CNBlock) and m.stochastic_depth.p == 0.5)
    hook = block.stochastic_depth.register_forward_hook(
        lambda module, inputs, output: dropped.append(int((output.flatten(1).abs().amax(1) == 0).sum())))
    with torch.no_grad():
        ours(x)
    hook.remove()
    assert abs(dropped[0] - 32) < 4 * math.sqrt(64 * 0.25)


def test_roadmap_endpoints_are_the_resnet_and_convnext():
    steps = [dict(), dict(depths=(1, 1, 3, 1)), dict(stem="patchify", patch_size=2),
             dict(block="depthwise", widths=(24, 48, 96, 192)), dict(expansion=4),
             dict(depthwise_first=True, kernel_size=7), dict(activation="gelu"), dict(fewer_activations=True),
             dict(fewer_norms=True), dict(norm="layer"), dict(separate_downsampling=True)]
    arguments, all_steps = {}, []
    for added in steps:
        arguments = {**arguments, **added}
        all_steps.append(arguments)
    x = torch.randn(3, 1, 28, 28, dtype=torch.float64)
    for arguments in all_steps:                        # each step builds, runs forward and backward
        network = RoadmapNet(**arguments, stochastic_depth_prob=0.2).double().train()
        network(x).square().mean().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in network.parameters())

    def copied(target, source):
        with torch.no_grad():
            for mine, theirs in zip(target.state_dict().values(), source.state_dict().values(), strict=True):
                mine.copy_(theirs.reshape(mine.shape))
        return target.eval()

    generator = torch.Generator().manual_seed(0)
    resnet = randomize_(ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10, in_channels=1, stem="small",
                               widths=(16, 32, 64, 128)).double(), generator, norm_weights=(0.5, 1.5)).eval()
    convnext = _randomize(ConvNeXt(convnext_block_setting((24, 48, 96, 192), (1, 1, 3, 1)), num_classes=10,
                                   in_channels=1, patch_size=2).double(), 1).eval()
    with torch.no_grad():
        torch.testing.assert_close(copied(RoadmapNet(**all_steps[0]).double(), resnet)(x), resnet(x))
        torch.testing.assert_close(copied(RoadmapNet(**all_steps[-1], layer_scale=1.0).double(), convnext)(x),
                                   convnext(x), rtol=1e-10, atol=1e-10)


def test_errors_say_what_was_expected():
    grey = ConvNeXt(convnext_block_setting((8, 16), (1, 1)), num_classes=10, in_channels=1, patch_size=2)
    with pytest.raises(ValueError, match=r"expected input \(N, 1, H, W\), got 3 channels.*in_channels=3"):
        grey(torch.randn(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"4 dimensions, got shape \(1, 28, 28\).*unsqueeze"):
        grey(torch.randn(1, 28, 28))
    with pytest.raises(TypeError, match=r"floating-point input, got dtype torch.uint8"):
        grey(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"at least 4x4.*got 3x3"):
        grey(torch.randn(2, 1, 3, 3))
    with pytest.raises(ValueError, match="nothing is downloaded"):
        convnext_tiny(weights="IMAGENET1K_V1")
    with pytest.raises(ValueError, match="stochastic_depth_prob"):
        convnext_small(stochastic_depth_prob=-0.1)
    with pytest.raises(ValueError, match="non-empty block_setting"):
        ConvNeXt([])
    with pytest.raises(TypeError, match="list of CNBlockConfig"):
        ConvNeXt([(96, 192, 3)])
    with pytest.raises(ValueError, match="num_layers"):
        CNBlockConfig(96, 192, 0)
    with pytest.raises(ValueError, match="one width per stage depth"):
        convnext_block_setting((8, 16), (1,))
    with pytest.raises(ValueError, match="set block='depthwise' first"):
        RoadmapNet(expansion=4)
    with pytest.raises(ValueError, match="stem"):
        RoadmapNet(stem="conv7")
    with pytest.raises(ValueError, match=r"RoadmapNet expected input \(N, 1, H, W\)"):
        RoadmapNet()(torch.randn(2, 3, 28, 28))
