"""common.models.alexnet (stage2_cnn/02_alexnet.ipynb) against torchvision.models.alexnet.

A torchvision state_dict loads strictly and gives the same logits (and gradients) in float64, for default and
non-default num_classes/dropout, in eval and train mode; the parameter count derived in the notebook; the
Fashion-MNIST-sized configuration's shape, parameter count and equality with a torch.nn twin; only common.nn
layers inside; clear errors for bad input and arguments.
"""
import pytest
import torch
import torchvision
from torch import nn

from common.checks import assert_same_module
from common.complexity import profile
from common.models import AlexNet, alexnet

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
    (dict(), (2, 1, 224, 224), r"expected input \(N, 3, H, W\), got \(2, 1, 224, 224\)"),
    (SMALL, (2, 3, 28, 28), r"expected input \(N, 1, H, W\), got \(2, 3, 28, 28\)"),
    (SMALL, (1, 28, 28), r"expected input \(N, 1, H, W\), got \(1, 28, 28\)"),
    (SMALL, (2, 1, 4, 4), r"the output would be 0x0"),
])
def test_bad_input(kwargs, shape, expected):
    with pytest.raises(ValueError, match=expected):
        alexnet(**kwargs)(torch.randn(shape))


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
