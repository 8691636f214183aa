"""common.models.alexnet (stage2_cnn/02_alexnet.ipynb) against torchvision.models.alexnet.

A torchvision state_dict loads strictly and gives the same logits (and gradients) in float64, for default and
non-default num_classes/dropout, in eval and train mode; the parameter count derived in the notebook; the
Fashion-MNIST-sized configuration's shape, parameter count and equality with a torch.nn twin; only common.nn
layers inside; clear errors for bad input (naming the fix and the minimum input size, which is exact) and
arguments.
"""
import pytest
import torch
import torchvision
from torch import nn

from common.checks import assert_same_module
from common.complexity import profile
from common.models import AlexNet, alexnet, minimum_input_size
from common.nn import AvgPool2d, Conv2d, MaxPool2d

SMALL = dict(num_classes=10, in_channels=1, stem="small", width=0.25, hidden=1024, pool_size=2)
TIGHT = dict(rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kwargs,train", [
    (dict(), False),
    (dict(num_classes=10, dropout=0.2), True),
])
def test_torchvision_state_dict_loads_and_gives_same_logits(kwargs, train):
    torch.manual_seed(0)
    theirs = torchvision.models.alexnet(**kwargs).double()
    ours = alexnet(**kwargs).double()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    report = assert_same_module(ours, theirs, x, train=train, **TIGHT)
    assert report.rows[0][0] == "output" and "grad features.0.weight" in [r[0] for r in report.rows]


def test_eval_logits_with_plain_load_state_dict():
    torch.manual_seed(1)
    theirs = torchvision.models.alexnet(num_classes=5).double().eval()
    ours = alexnet(num_classes=5).double().eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, 3, 227, 227, dtype=torch.float64)  # the paper's 227 works too (adaptive pooling)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), **TIGHT)


def test_full_size_counts():
    assert sum(p.numel() for p in alexnet().parameters()) == 61_100_840
    assert profile(alexnet(), (1, 3, 224, 224)).macs == 714_188_480
    assert isinstance(alexnet(), AlexNet)
    assert alexnet(dropout=0.3).classifier[0].p == 0.3 and alexnet(dropout=0.3).classifier[3].p == 0.3


def _torch_twin(ours):
    def convert(layer):
        name = type(layer).__name__
        if name == "Conv2d":
            return nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding)
        if name == "Linear":
            return nn.Linear(layer.in_features, layer.out_features)
        if name == "MaxPool2d":
            return nn.MaxPool2d(layer.kernel_size, layer.stride)
        if name == "Dropout":
            return nn.Dropout(layer.p)
        return {"ReLU": nn.ReLU, "Tanh": nn.Tanh}[name]()

    twin = torchvision.models.AlexNet()
    twin.features = nn.Sequential(*map(convert, ours.features))
    twin.avgpool = nn.AdaptiveAvgPool2d(ours.avgpool.output_size)
    twin.classifier = nn.Sequential(*map(convert, ours.classifier))
    return twin


@pytest.mark.parametrize("variant", [dict(), dict(activation="tanh"), dict(pool_kernel=2), dict(dropout=0.0)],
                         ids=["as-trained", "tanh", "pool2", "no-dropout"])
def test_fashion_mnist_variant_matches_a_torch_nn_twin(variant):
    torch.manual_seed(2)
    ours = alexnet(**SMALL, **variant).double()
    x = torch.randn(3, 1, 28, 28, dtype=torch.float64)
    assert_same_module(ours, _torch_twin(ours).double(), x, train=True, **TIGHT)


def test_fashion_mnist_variant_shape_and_count():
    model = alexnet(**SMALL)
    assert model(torch.randn(5, 1, 28, 28)).shape == (5, 10)
    widths = [m.out_channels for m in model.features if type(m).__name__ == "Conv2d"]
    assert widths == [16, 48, 96, 64, 64]
    # convs: 16*(9+1) + 48*(16*25+1) + 96*(48*9+1) + 64*(96*9+1) + 64*(64*9+1); fcs: 1024*(256+1) + 1024*1025 + 10*1025
    by_hand = (160 + 19_248 + 41_568 + 55_360 + 36_928) + (263_168 + 1_049_600 + 10_250)
    assert sum(p.numel() for p in model.parameters()) == by_hand
    # the same keys as torchvision's model, whatever the size
    assert list(model.state_dict()) == list(torchvision.models.alexnet().state_dict())


@pytest.mark.parametrize("kwargs", [dict(), SMALL, {**SMALL, "activation": "tanh", "pool_kernel": 2}],
                         ids=["full", "small", "small-tanh-pool2"])
def test_only_common_nn_layers(kwargs):
    model = alexnet(**kwargs)
    for module in model.modules():
        if module is model or isinstance(module, (nn.Sequential, nn.ModuleList)):
            continue
        assert type(module).__module__.startswith("common.nn."), f"{type(module).__module__}.{type(module).__name__}"


@pytest.mark.parametrize("kwargs,shape,expected", [
    (dict(), (2, 1, 224, 224), r"expected input \(N, 3, H, W\), got \(2, 1, 224, 224\): for 1-channel images build "
                               r"alexnet\(in_channels=1, ...\)"),
    (SMALL, (2, 3, 28, 28), r"expected input \(N, 1, H, W\), got \(2, 3, 28, 28\): for 3-channel images build "
                            r"alexnet\(in_channels=3"),
    (SMALL, (1, 28, 28), r"got \(1, 28, 28\): add the batch dimension, x.unsqueeze\(0\)"),
    (dict(), (2, 3, 28, 28), r"AlexNet\(stem='imagenet'\) needs inputs of at least 63x63 .*got 28x28: for small images "
                             r"build alexnet\(stem='small', ...\), which takes 15x15 and up"),
    (dict(), (2, 3, 224, 62), r"at least 63x63 .*got 224x62"),
    (dict(), (2, 3, 8, 8), r"at least 63x63 .*got 8x8: resize or pad the images to at least 63x63"),
    (SMALL, (2, 1, 4, 4), r"AlexNet\(stem='small'\) needs inputs of at least 15x15 .*got 4x4: resize or pad"),
])
def test_bad_input_says_what_was_expected_and_the_fix(kwargs, shape, expected):
    with pytest.raises(ValueError, match=expected):
        alexnet(**kwargs)(torch.randn(shape))


@pytest.mark.parametrize("kwargs,side", [
    (dict(), 63), (dict(pool_kernel=2), 35), (SMALL, 15), ({**SMALL, "pool_kernel": 2}, 8),
], ids=["imagenet", "imagenet-pool2", "small", "small-pool2"])
def test_minimum_input_size_is_exact(kwargs, side):
    # at the minimum our model runs; one pixel less and the torch.nn twin fails inside a pooling layer
    ours = alexnet(**kwargs).eval()
    assert ours.min_input_size == (side, side)
    channels = kwargs.get("in_channels", 3)
    with torch.no_grad():
        assert ours(torch.randn(1, channels, side, side)).shape[0] == 1
        twin = _torch_twin(ours).eval()
        twin(torch.randn(1, channels, side, side))
        with pytest.raises(RuntimeError):
            twin(torch.randn(1, channels, side - 1, side))
        with pytest.raises(ValueError, match=f"at least {side}x{side}"):
            ours(torch.randn(1, channels, side, side - 1))


@pytest.mark.parametrize("layers,expected", [
    (lambda: nn.Sequential(Conv2d(1, 1, 3)), (3, 3)),
    (lambda: nn.Sequential(Conv2d(1, 1, (3, 5), stride=2, padding=(1, 0))), (1, 5)),
    (lambda: nn.Sequential(Conv2d(1, 1, 3, dilation=2), MaxPool2d(2)), (6, 6)),
    (lambda: nn.Sequential(Conv2d(1, 1, 5, padding="same"), AvgPool2d(3, stride=2)), (3, 3)),
    (lambda: nn.Sequential(MaxPool2d(2, ceil_mode=True)), None),
])
def test_minimum_input_size_of_layer_stacks(layers, expected):
    assert minimum_input_size(layers()) == expected
    if expected is not None:   # exact: torch's output size formula gives 1 at the minimum, 0 one pixel below
        for dim in range(2):
            smaller = list(expected)
            smaller[dim] -= 1
            if smaller[dim] >= 1:
                with pytest.raises((RuntimeError, ValueError)):
                    layers()(torch.randn(1, 1, *smaller))
        assert min(layers()(torch.randn(1, 1, *expected)).shape[-2:]) >= 1


@pytest.mark.parametrize("kwargs,expected", [
    (dict(stem="tiny"), "stem must be"),
    (dict(activation="gelu"), "activation must be one of"),
    (dict(pool_kernel=4), "pool_kernel must be 3"),
    (dict(width=0), "width must be positive"),
    (dict(dropout=1.5), "dropout probability"),
])
def test_bad_arguments(kwargs, expected):
    with pytest.raises(ValueError, match=expected):
        alexnet(**kwargs)
