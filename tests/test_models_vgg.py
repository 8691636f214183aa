"""common.models.vgg (exported from stage2_cnn/03_vgg.ipynb) against torchvision.models.

Every constructor: torchvision's state_dict loads strictly and both give the same logits (float64, eval).
The full-size models hold 129-140 M parameters, mostly in the 25088 x 4096 classifier, so each
reference is built on the meta device (no memory, no initialisation cost), materialised once in
float64 and filled with cheap random values; ours is built on the meta device too and takes the
reference's tensors with ``load_state_dict(strict=True, assign=True)``.
"""
import gc

import pytest
import torch
import torchvision
from torch import nn

from common.checks import assert_same_logits, assert_same_module, load_reference_state
from common.models import VGG, vgg11, vgg11_bn, vgg13, vgg13_bn, vgg16, vgg16_bn, vgg19, vgg19_bn
from common.models.vgg import cfgs, make_layers, scale_config
from _weights import randomize_

CONSTRUCTORS = {f.__name__: f for f in (vgg11, vgg11_bn, vgg13, vgg13_bn, vgg16, vgg16_bn, vgg19, vgg19_bn)}
CONV_LAYERS = {"vgg11": 8, "vgg13": 10, "vgg16": 13, "vgg19": 16}


@pytest.mark.parametrize("name", list(CONSTRUCTORS))
def test_torchvision_state_dict_loads_and_gives_the_same_logits(name):
    kwargs = dict(num_classes=7, dropout=0.3)
    with torch.device("meta"):
        reference = getattr(torchvision.models, name)(**kwargs)
        ours = CONSTRUCTORS[name](**kwargs)
    reference = reference.to(torch.float64).to_empty(device="cpu")      # float64, uninitialised
    randomize_(reference, torch.Generator().manual_seed(0))
    # strict load (same keys, order and shapes), then the same eval-mode logits in float64
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert_same_logits(ours, reference, x, min_scale=1e-3)
    assert ours.classifier[2].p == ours.classifier[5].p == 0.3
    del reference, ours
    gc.collect()


@pytest.mark.parametrize("name", list(CONSTRUCTORS))
def test_default_arguments_and_architecture(name):
    with torch.device("meta"):
        ours = CONSTRUCTORS[name]()
        reference = getattr(torchvision.models, name)()
    assert ours.classifier[-1].out_features == 1000 and ours.classifier[2].p == 0.5
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())
    convs = [m for m in ours.features if type(m).__name__ == "Conv2d"]
    assert len(convs) == CONV_LAYERS[name.replace("_bn", "")]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    has_bn = any(type(m).__name__ == "BatchNorm2d" for m in ours.features)
    assert has_bn == name.endswith("_bn")
    # only common.nn layers inside (containers from torch.nn are fine)
    for module in ours.modules():
        if not isinstance(module, (nn.Sequential, VGG)):
            assert type(module).__module__.startswith("common.nn"), type(module)


def test_init_weights_follows_torchvision():
    """He-normal (fan_out) convolutions, N(0, 0.01^2) linear layers, zero biases, BatchNorm at identity."""
    torch.manual_seed(0)
    model = vgg11_bn(in_channels=1, width=0.25, num_stages=3, pool_size=3, hidden_features=64, num_classes=10)
    for conv in (m for m in model.features if type(m).__name__ == "Conv2d"):
        assert torch.all(conv.bias == 0)
    deep = model.features[8]                               # Conv2d(32, 64): 18,432 weights
    assert deep.out_channels == 64
    assert abs(deep.weight.std().item() / (2.0 / (64 * 9)) ** 0.5 - 1) < 0.05
    bn = model.features[1]
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    first_fc = model.classifier[0]                         # Linear(576, 64)
    assert abs(first_fc.weight.std().item() / 0.01 - 1) < 0.05 and torch.all(first_fc.bias == 0)
    # without init_weights the layers keep their own (torch.nn-style) initialisation: non-zero biases
    plain = vgg11(init_weights=False, in_channels=1, width=0.25, num_stages=3, pool_size=3, hidden_features=64)
    assert plain.features[0].bias.abs().sum() > 0


def test_scale_config():
    assert scale_config(cfgs["A"], width=0.5, num_stages=3) == [32, "M", 64, "M", 128, 128, "M"]
    assert scale_config(cfgs["D"]) == cfgs["D"]
    assert scale_config(cfgs["E"], num_stages=1) == [64, 64, "M"]
    assert scale_config(cfgs["A"], width=0.001, num_stages=2) == [1, "M", 1, "M"]
    with pytest.raises(ValueError, match="num_stages must be between 1 and 5"):
        scale_config(cfgs["A"], num_stages=6)
    with pytest.raises(ValueError, match="width must be positive"):
        scale_config(cfgs["A"], width=0)
    with pytest.raises(ValueError, match="positive channel counts"):
        make_layers([64, "P"])


def _torch_reference_small(cfg, in_channels, pool_size, hidden, num_classes, dropout):
    """torchvision's VGG class around the same small features and head, built from torch.nn layers."""
    layers, channels = [], in_channels
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            channels = v
    reference = torchvision.models.VGG(nn.Sequential(*layers), num_classes=num_classes, init_weights=False)
    reference.avgpool = nn.AdaptiveAvgPool2d((pool_size, pool_size))
    reference.classifier = nn.Sequential(
        nn.Linear(channels * pool_size ** 2, hidden), nn.ReLU(True), nn.Dropout(dropout),
        nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(dropout), nn.Linear(hidden, num_classes))
    return reference


@pytest.mark.parametrize("train,dropout", [(False, 0.5), (True, 0.0), (True, 0.3), (True, 0.5)])
def test_fashion_mnist_variant_matches_torch_in_train_and_eval(train, dropout):
    """The small grey variant, forward and backward, BatchNorm's batch statistics and running buffers;
    in train mode with dropout > 0 both draw the same masks from the same random state."""
    torch.manual_seed(0)
    ours = vgg11_bn(in_channels=1, num_classes=10, width=0.25, num_stages=3, pool_size=2,
                    hidden_features=32, dropout=dropout).double()
    cfg = scale_config(cfgs["A"], width=0.25, num_stages=3)
    reference = _torch_reference_small(cfg, 1, 2, 32, 10, dropout).double()
    randomize_(reference, torch.Generator().manual_seed(2))
    x = torch.randn(4, 1, 28, 28, dtype=torch.float64)
    report = assert_same_module(ours, reference, x, train=train, rtol=1e-9, atol=1e-10)
    assert any("grad features.0.weight" in row[0] for row in report.rows)
    if train:
        assert any("running_mean" in row[0] for row in report.rows)
    if train and dropout > 0:   # the masks matter: another random state gives other logits
        with torch.no_grad():
            torch.manual_seed(5)
            first = ours(x)
            torch.manual_seed(6)
            assert (ours(x) - first).abs().max() > 1e-3


def test_bad_input_and_weights():
    model = vgg11(in_channels=1, width=0.125, num_stages=3, pool_size=1, hidden_features=8, num_classes=10)
    with pytest.raises(ValueError, match=r"VGG expected input \(N, 1, H, W\), got \(2, 3, 28, 28\): for 3-channel "
                                         r"images build the model with in_channels=3"):
        model(torch.randn(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"VGG expected input \(N, 1, H, W\), got \(1, 28, 28\): add the batch"):
        model(torch.randn(1, 28, 28))
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="nothing is downloaded"):
        vgg16(weights="DEFAULT")
    with pytest.raises(ValueError, match="at least one Conv2d"):
        VGG(nn.Sequential())


@pytest.mark.parametrize("name", list(CONSTRUCTORS))
def test_too_small_input_names_the_minimum_and_the_fix(name):
    with torch.device("meta"):
        model = CONSTRUCTORS[name]()
    assert model.min_input_size == (32, 32)
    with pytest.raises(ValueError, match=r"VGG with 5 max-pools needs inputs of at least 32x32, got 28x28: keep 4 "
                                         r"pooling stages for it, num_stages=4"):
        model(torch.zeros(1, 3, 28, 28, device="meta"))
    with pytest.raises(ValueError, match=r"got 12x40: keep 3 pooling stages for it, num_stages=3"):
        model(torch.zeros(1, 3, 12, 40, device="meta"))
    with pytest.raises(ValueError, match=r"got 1x1: resize or pad the images to at least 32x32"):
        model(torch.zeros(1, 3, 1, 1, device="meta"))


@pytest.mark.parametrize("stages", [1, 2, 3, 4, 5])
def test_minimum_input_size_is_exact(stages):
    # ours runs at 2^stages; torchvision's features of the same configuration fail one pixel below
    side = 2 ** stages
    ours = vgg11(width=0.125, num_stages=stages, pool_size=1, hidden_features=8, num_classes=3).eval()
    assert ours.min_input_size == (side, side)
    cfg = scale_config(cfgs["A"], width=0.125, num_stages=stages)
    reference = torchvision.models.vgg.make_layers(cfg).eval()
    with torch.no_grad():
        assert ours(torch.randn(1, 3, side, side)).shape == (1, 3)
        reference(torch.randn(1, 3, side, side))
        with pytest.raises(RuntimeError):
            reference(torch.randn(1, 3, side - 1, side))
    with pytest.raises(ValueError, match=f"at least {side}x{side}, got {side}x{side - 1}"):
        ours(torch.randn(1, 3, side, side - 1))
    # the fix it names works: the suggested num_stages takes the input
    if stages > 1:
        with pytest.raises(ValueError, match=f"num_stages={stages - 1}") as error:
            ours(torch.randn(1, 3, side - 1, side - 1))
        assert vgg11(width=0.125, num_stages=stages - 1, pool_size=1, hidden_features=8)(
            torch.randn(1, 3, side - 1, side - 1)).shape == (1, 1000)


def test_features_are_numbered_like_torchvision_make_layers():
    """A scaled configuration: our features and torchvision's make_layers of the same list share keys and function."""
    cfg = scale_config(cfgs["B"], width=0.125, num_stages=2)              # [8, 8, "M", 16, 16, "M"]
    ours = make_layers(cfg, batch_norm=True).double()
    reference = torchvision.models.vgg.make_layers(cfg, batch_norm=True).double()
    randomize_(reference, torch.Generator().manual_seed(3))
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    report = assert_same_module(ours, reference, x, train=True, rtol=1e-9, atol=1e-10)
    assert len(report.rows) > 10
    load_reference_state(ours, reference)
