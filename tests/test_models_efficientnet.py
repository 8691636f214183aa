"""common.models.efficientnet (exported from stage3_resnets/04_efficientnet.ipynb) against torchvision.models.

Every constructor, with non-default arguments: torchvision's state_dict loads strictly and both give the same
logits (float64, eval, 1x3x64x64). B5-B7's BatchNorm (eps 1e-3, momentum 0.01), the dropout and the per-block
stochastic depth probabilities are torchvision's. A small configuration matches in training mode too (outputs,
BatchNorm buffers, input and parameter gradients), with stochastic depth off and, since both draw the same
masks, on, with dropout on as well. ``stage_strides`` (other strides per stage, for small images) matches
torchvision's classes built with the same strides. The rounding rules, the initialisation and the error messages
are tested as well.
"""
import gc
import math
from functools import partial

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import efficientnet as tv_efficientnet

from common.checks import assert_same_logits, assert_same_module
from common.models import (EfficientNet, MBConv, MBConvConfig, SqueezeExcitation, StochasticDepth, efficientnet_b0,
                           efficientnet_b1, efficientnet_b2, efficientnet_b3, efficientnet_b4, efficientnet_b5,
                           efficientnet_b6, efficientnet_b7, efficientnet_config)
from common.models.efficientnet import _make_divisible, scaling_params
from common.nn import BatchNorm2d
from _weights import randomize_

CONSTRUCTORS = {f.__name__: f for f in (efficientnet_b0, efficientnet_b1, efficientnet_b2, efficientnet_b3,
                                        efficientnet_b4, efficientnet_b5, efficientnet_b6, efficientnet_b7)}
# parameters of the default (1000-class) models, from torchvision's weight metadata
NUM_PARAMS = {"efficientnet_b0": 5_288_548, "efficientnet_b1": 7_794_184, "efficientnet_b2": 9_109_994,
              "efficientnet_b3": 12_233_232, "efficientnet_b4": 19_341_616, "efficientnet_b5": 30_389_784,
              "efficientnet_b6": 43_040_704, "efficientnet_b7": 66_347_960}


def _norm_kwargs(name):
    """A non-default norm_layer where torchvision takes one through kwargs (B0-B4); B5-B7 fix their own."""
    if name in ("efficientnet_b5", "efficientnet_b6", "efficientnet_b7"):
        return {}, {}
    return (dict(norm_layer=partial(BatchNorm2d, eps=1e-4, momentum=0.2)),
            dict(norm_layer=partial(nn.BatchNorm2d, eps=1e-4, momentum=0.2)))


@pytest.mark.parametrize("name", list(CONSTRUCTORS))
def test_torchvision_state_dict_loads_and_gives_the_same_logits(name):
    kwargs = dict(num_classes=7, dropout=0.3, stochastic_depth_prob=0.35)
    ours_norm, their_norm = _norm_kwargs(name)
    with torch.device("meta"):
        reference = getattr(torchvision.models, name)(**kwargs, **their_norm)
        ours = CONSTRUCTORS[name](**kwargs, **ours_norm)
    reference = reference.to(torch.float64).to_empty(device="cpu")
    randomize_(reference, torch.Generator().manual_seed(0))
    # strict load (same keys, order and shapes), then the same eval-mode logits in float64
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert_same_logits(ours, reference, x, min_scale=1e-2)
    # the hyper-parameters that are not in the state_dict: norm eps/momentum, dropout, stochastic depth
    their_norms = [m for m in reference.modules() if isinstance(m, nn.BatchNorm2d)]
    our_norms = [m for m in ours.modules() if isinstance(m, BatchNorm2d)]
    assert len(our_norms) == len(their_norms)
    assert {(m.eps, m.momentum) for m in our_norms} == {(m.eps, m.momentum) for m in their_norms}
    if name in ("efficientnet_b5", "efficientnet_b6", "efficientnet_b7"):
        assert {(m.eps, m.momentum) for m in our_norms} == {(1e-3, 0.01)}
    else:
        assert {(m.eps, m.momentum) for m in our_norms} == {(1e-4, 0.2)}
    assert ours.classifier[0].p == reference.classifier[0].p == 0.3
    our_sd = [m.p for m in ours.modules() if type(m).__name__ == "StochasticDepth"]
    their_sd = [m.p for m in reference.modules() if type(m).__name__ == "StochasticDepth"]
    assert our_sd == pytest.approx(their_sd, abs=1e-15) and max(our_sd) < 0.35
    del reference, ours
    gc.collect()


@pytest.mark.parametrize("name", list(CONSTRUCTORS))
def test_default_arguments_and_parameter_counts(name):
    with torch.device("meta"):
        ours = CONSTRUCTORS[name]()
    width, depth, _, dropout = scaling_params[name]
    assert sum(p.numel() for p in ours.parameters()) == NUM_PARAMS[name]
    assert ours.classifier[1].out_features == 1000 and ours.classifier[0].p == dropout
    blocks = [m for m in ours.modules() if isinstance(m, MBConv)]
    assert len(blocks) == sum(math.ceil(n * depth) for n in (1, 2, 2, 3, 3, 4, 1))
    assert blocks[-1].stochastic_depth.p == pytest.approx(0.2 * (len(blocks) - 1) / len(blocks))
    # only common.nn layers inside, in containers: torch.nn's Sequential, and ours (built from common.nn layers)
    for module in ours.modules():
        if not isinstance(module, (nn.Sequential, EfficientNet, MBConv, SqueezeExcitation, StochasticDepth)):
            assert type(module).__module__.startswith("common.nn"), type(module)


def test_rounding_rules_match_torchvision():
    for value in [0.5, 3, 4, 7.9, 8, 11.9, 12, 13.2, 17.6, 20, 35.2, 44.8, 100, 123.4, 333]:
        for divisor, min_value in ((8, None), (8, 16), (4, None)):
            assert _make_divisible(value, divisor, min_value) == tv_efficientnet._make_divisible(value, divisor,
                                                                                                  min_value)
    assert _make_divisible(20) == 24 and _make_divisible(10) == 16 and _make_divisible(35.2) == 32
    for width, depth in [(1.0, 1.0), (1.1, 1.2), (1.4, 1.8), (2.0, 3.1), (0.25, 0.34), (0.5, 0.5)]:
        mine = efficientnet_config(width, depth)
        theirs, _ = tv_efficientnet._efficientnet_conf("efficientnet_b0", width_mult=width, depth_mult=depth)
        for a, b in zip(mine, theirs):
            assert (a.expand_ratio, a.kernel, a.stride, a.input_channels, a.out_channels, a.num_layers) == (
                b.expand_ratio, b.kernel, b.stride, b.input_channels, b.out_channels, b.num_layers)


def _torchvision_small(width, depth, in_channels=3, stem_stride=2, num_classes=10, stage_strides=None,
                       dropout=0.0, stochastic_depth_prob=0.0):
    """torchvision's EfficientNet (torch.nn layers) of the same small configuration, stem and strides set by hand."""
    setting, _ = tv_efficientnet._efficientnet_conf("efficientnet_b0", width_mult=width, depth_mult=depth)
    for cnf, stride in zip(setting, stage_strides or [cnf.stride for cnf in setting]):
        cnf.stride = stride
    reference = tv_efficientnet.EfficientNet(setting, dropout=dropout, stochastic_depth_prob=stochastic_depth_prob,
                                             num_classes=num_classes)
    stem = reference.features[0]
    stem[0] = nn.Conv2d(in_channels, stem[0].out_channels, 3, stem_stride, 1, bias=False)
    return reference


@pytest.mark.parametrize("in_channels,stem_stride,size", [(3, 2, 32), (1, 1, 28)])
def test_small_configuration_matches_in_train_and_eval(in_channels, stem_stride, size):
    """Outputs, BatchNorm buffers, input and parameter gradients; stochastic depth and dropout off."""
    ours = efficientnet_b0(width_mult=0.25, depth_mult=0.34, in_channels=in_channels, stem_stride=stem_stride,
                           num_classes=10, dropout=0.0, stochastic_depth_prob=0.0).double()
    reference = _torchvision_small(0.25, 0.34, in_channels, stem_stride).double()
    randomize_(reference, torch.Generator().manual_seed(2))
    x = torch.randn(4, in_channels, size, size, dtype=torch.float64)
    report = assert_same_module(ours, reference, x, train=True, rtol=1e-9, atol=1e-10)
    names = [row[0] for row in report.rows]
    assert "grad input[0]" in names and "grad features.0.0.weight" in names
    assert "grad features.2.0.block.2.fc1.weight" in names and "buffer features.8.1.running_var" in names
    report = assert_same_module(ours, reference, x, train=False, rtol=1e-9, atol=1e-10)
    assert len(report.rows) > 50


def test_stochastic_depth_and_dropout_in_training_draw_the_same_masks_as_torchvision():
    """Train mode with both random layers on: same seed, same masks, same outputs, buffers and gradients.

    Our Dropout and stochastic depth draw with torch's calls (bernoulli_ on a tensor shaped like the input);
    bernoulli_ fills in memory order, and the classifier's input is a contiguous (N, C) tensor in both models."""
    ours = efficientnet_b0(width_mult=0.25, depth_mult=0.5, num_classes=10, dropout=0.5,
                           stochastic_depth_prob=0.8).double()
    reference = _torchvision_small(0.25, 0.5, dropout=0.5, stochastic_depth_prob=0.8).double()
    randomize_(reference, torch.Generator().manual_seed(3))
    x = torch.randn(16, 3, 32, 32, dtype=torch.float64)
    assert_same_module(ours, reference, x, train=True, rtol=1e-9, atol=1e-10)
    # and the masks matter: another seed for ours alone gives other logits
    ours.train()
    torch.manual_seed(0)
    first = ours(x)
    torch.manual_seed(1)
    assert not torch.allclose(first, ours(x))
    # dropout alone (no stochastic depth) at a 2x2 head, where the head's layout could differ
    ours = efficientnet_b0(width_mult=0.25, depth_mult=0.34, num_classes=10, dropout=0.3,
                           stochastic_depth_prob=0.0).double()
    reference = _torchvision_small(0.25, 0.34, dropout=0.3).double()
    randomize_(reference, torch.Generator().manual_seed(4))
    assert_same_module(ours, reference, torch.randn(4, 3, 64, 64, dtype=torch.float64), train=True,
                       rtol=1e-9, atol=1e-10)


def test_stage_strides():
    """Default: Table 1's strides (torchvision's model); other strides: torchvision's classes with the same strides."""
    assert [cnf.stride for cnf in efficientnet_config()] == [1, 2, 2, 2, 1, 2, 1]
    assert repr(efficientnet_config(0.5, 0.5, (1, 2, 2, 2, 1, 2, 1))) == repr(efficientnet_config(0.5, 0.5))
    strides = (1, 2, 2, 1, 1, 1, 1)
    ours = efficientnet_b0(width_mult=0.25, depth_mult=0.5, in_channels=1, stem_stride=2, stage_strides=strides,
                           num_classes=10, dropout=0.2, stochastic_depth_prob=0.3).double()
    assert [cnf.stride for cnf in efficientnet_config(stage_strides=strides)] == list(strides)
    x = torch.randn(6, 1, 28, 28, dtype=torch.float64)
    sides = []
    with torch.no_grad():
        h = x
        for layer in ours.eval().features:
            h = layer(h)
            sides.append(h.shape[-1])
    assert sides == [14, 14, 7, 4, 4, 4, 4, 4, 4]                        # stem, 7 stages, head
    reference = _torchvision_small(0.25, 0.5, in_channels=1, stem_stride=2, stage_strides=strides, dropout=0.2,
                                   stochastic_depth_prob=0.3).double()
    randomize_(reference, torch.Generator().manual_seed(5))
    assert_same_module(ours, reference, x, train=True, rtol=1e-9, atol=1e-10)
    assert_same_module(ours, reference, x, train=False, rtol=1e-9, atol=1e-10)
    with torch.device("meta"):                                           # any constructor takes them
        b3 = efficientnet_b3(stage_strides=(2, 2, 2, 2, 1, 2, 1))
    assert b3.features[1][0].block[0][0].stride == (2, 2)
    for bad in ((1, 2, 2), (1, 2, 3, 2, 1, 2, 1), "1221121", (1, 2, 2, 2, 1, 2, True), 7):
        with pytest.raises(ValueError, match=r"stage_strides to be 7 strides, one per stage of B0, each 1 or 2 "
                                             r"\(B0's are \(1, 2, 2, 2, 1, 2, 1\)\)"):
            efficientnet_b0(stage_strides=bad)


def test_init_follows_torchvision():
    torch.manual_seed(0)
    model = efficientnet_b0(num_classes=100)
    conv = model.features[-1][0]                                         # 1x1, 320 -> 1280
    assert abs(conv.weight.std().item() / math.sqrt(2.0 / 1280) - 1) < 0.02
    depthwise = model.features[6][1].block[1][0]                         # 5x5 depthwise, 1152 channels
    assert depthwise.groups == depthwise.in_channels == 1152
    assert abs(depthwise.weight.std().item() / math.sqrt(2.0 / (1152 * 25)) - 1) < 0.02
    head = model.classifier[1]
    bound = 1 / math.sqrt(100)
    assert head.weight.abs().max() <= bound and head.weight.abs().max() > 0.99 * bound
    assert torch.all(head.bias == 0)
    for m in model.modules():
        if isinstance(m, BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
        if type(m).__name__ == "Conv2d" and m.bias is not None:           # only the squeeze-excitation convs
            assert torch.all(m.bias == 0)


def test_bad_input_and_arguments():
    model = efficientnet_b0(width_mult=0.25, depth_mult=0.34, in_channels=1, stem_stride=1, num_classes=10)
    with pytest.raises(ValueError, match=r"EfficientNet expected input \(N, 1, H, W\), got \(2, 3, 28, 28\)"):
        model(torch.randn(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"EfficientNet expected input \(N, 1, H, W\), got \(1, 28, 28\)"):
        model(torch.randn(1, 28, 28))
    assert model.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="nothing is downloaded"):
        efficientnet_b0(weights="DEFAULT")
    with pytest.raises(ValueError, match="stem_stride 1 or 2, got 3"):
        efficientnet_b0(stem_stride=3)
    with pytest.raises(ValueError, match="efficientnet_b6 fixes norm_layer"):
        efficientnet_b6(norm_layer=BatchNorm2d)
    with pytest.raises(ValueError, match="non-empty inverted_residual_setting"):
        EfficientNet([], dropout=0.2)
    with pytest.raises(TypeError, match="list of MBConvConfig"):
        EfficientNet([(1, 3, 1, 32, 16, 1)], dropout=0.2)
    with pytest.raises(ValueError, match="MBConv expected stride 1 or 2, got 3"):
        MBConv(MBConvConfig(6, 3, 3, 16, 24, 1), 0.0, BatchNorm2d)
    with pytest.raises(ValueError, match="positive width_mult and depth_mult"):
        efficientnet_config(width_mult=0)
