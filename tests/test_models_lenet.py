"""common.models.lenet (stage2_cnn/01_lenet.ipynb) against the same network built from torch.nn layers.

The layer plan and state_dict keys, the parameter count derived in the notebook, equality with a torch.nn
build in float64 (output, input and parameter gradients) for every activation/pooling/padding choice, that
only common.nn layers are used, and the error messages for bad input and bad arguments.
"""
import pytest
import torch
from torch import nn

from common.checks import assert_same_module
from common.complexity import profile
from common.models import LeNet5, ScaledTanh, lenet5


class _TorchScaledTanh(nn.Module):
    def forward(self, x):
        return 1.7159 * torch.tanh(x * (2.0 / 3.0))


def _torch_lenet5(num_classes=10, in_channels=1, activation="relu", pooling="max", padding=2):
    act = {"relu": nn.ReLU, "tanh": nn.Tanh, "scaled_tanh": _TorchScaledTanh}[activation]
    pool = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}[pooling]

    class Reference(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(in_channels, 6, 5, padding=padding), act(), pool(2, 2),
                                          nn.Conv2d(6, 16, 5), act(), pool(2, 2),
                                          nn.Conv2d(16, 120, 5), act())
            self.classifier = nn.Sequential(nn.Linear(120, 84), act(), nn.Linear(84, num_classes))

        def forward(self, x):
            return self.classifier(torch.flatten(self.features(x), 1))

    return Reference()


CONFIGS = [
    dict(),
    dict(activation="tanh"),
    dict(activation="scaled_tanh", pooling="avg", padding=0),
    dict(pooling="avg", padding=1),
    dict(in_channels=3, num_classes=7),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_same_function_as_torch_nn_build(config):
    torch.manual_seed(0)
    ours, theirs = lenet5(**config).double(), _torch_lenet5(**config).double()
    side = 32 - 2 * config.get("padding", 2)
    x = torch.randn(3, config.get("in_channels", 1), side, side, dtype=torch.float64)
    report = assert_same_module(ours, theirs, x, train=True, rtol=1e-10, atol=1e-10)
    names = [row[0] for row in report.rows]
    assert "grad input[0]" in names and "grad features.0.weight" in names and "grad classifier.2.bias" in names


def test_state_dict_keys_and_shapes():
    shapes = {k: tuple(v.shape) for k, v in lenet5().state_dict().items()}
    assert shapes == {
        "features.0.weight": (6, 1, 5, 5), "features.0.bias": (6,),
        "features.3.weight": (16, 6, 5, 5), "features.3.bias": (16,),
        "features.6.weight": (120, 16, 5, 5), "features.6.bias": (120,),
        "classifier.0.weight": (84, 120), "classifier.0.bias": (84,),
        "classifier.2.weight": (10, 84), "classifier.2.bias": (10,),
    }


def test_parameter_and_mac_counts():
    # derived by hand in the notebook: 156 + 2,416 + 48,120 + 10,164 + 850
    assert sum(p.numel() for p in lenet5().parameters()) == 61_706
    assert profile(lenet5(), (1, 1, 28, 28)).macs == 416_520
    assert sum(p.numel() for p in lenet5(num_classes=5).parameters()) == 61_706 - 5 * 85


def test_forward_shape_on_fashion_mnist_sized_input():
    assert lenet5()(torch.randn(5, 1, 28, 28)).shape == (5, 10)
    assert lenet5(padding=0)(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    assert isinstance(lenet5(), LeNet5)


def test_scaled_tanh_maps_plus_minus_one_to_itself():
    y = ScaledTanh()(torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(y, torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64), atol=1e-4, rtol=0)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_only_common_nn_layers(config):
    containers = (nn.Sequential, nn.ModuleList)
    for module in lenet5(**config).modules():
        if isinstance(module, containers) or module.__class__.__module__.startswith("common."):
            continue
        raise AssertionError(f"{type(module).__module__}.{type(module).__name__} is not a common.nn layer")
    modules = {type(m).__module__ for m in lenet5(**config).modules()}
    assert "common.nn.conv_pool" in modules and "common.nn.linear" in modules


@pytest.mark.parametrize("shape,expected", [
    ((2, 3, 28, 28), r"\(N, 1, 28, 28\), got \(2, 3, 28, 28\): for 3-channel images build lenet5\(in_channels=3\)"),
    ((2, 1, 32, 32), r"\(N, 1, 28, 28\), got \(2, 1, 32, 32\): for 32x32 images build lenet5\(padding=0\)"),
    ((2, 1, 30, 30), r"got \(2, 1, 30, 30\): for 30x30 images build lenet5\(padding=1\)"),
    ((2, 1, 64, 64), r"got \(2, 1, 64, 64\): resize the images to 28x28"),
    ((1, 28, 28), r"\(N, 1, 28, 28\), got \(1, 28, 28\): add the batch dimension, x.unsqueeze\(0\)"),
    ((28, 28), r"got \(28, 28\): a batch of images is 4-d"),
])
def test_bad_input_says_what_was_expected_and_the_fix(shape, expected):
    with pytest.raises(ValueError, match=expected):
        lenet5()(torch.randn(shape))


def test_the_suggested_fix_works():
    # what the messages suggest builds a network that takes the input
    assert lenet5(in_channels=3)(torch.randn(2, 3, 28, 28)).shape == (2, 10)
    assert lenet5(padding=1)(torch.randn(2, 1, 30, 30)).shape == (2, 10)
    with pytest.raises(ValueError, match=r"expected input \(N, 3, 32, 32\), got \(2, 1, 32, 32\): for 1-channel "
                                         r"images build lenet5\(in_channels=1\)"):
        lenet5(in_channels=3, padding=0)(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="pass a tensor"):
        lenet5()([[0.0]])


@pytest.mark.parametrize("kwargs,expected", [
    (dict(activation="sigmoid"), "activation must be one of"),
    (dict(pooling="lp"), "pooling must be one of"),
    (dict(padding=3), "padding must be 0, 1 or 2"),
])
def test_bad_arguments(kwargs, expected):
    with pytest.raises(ValueError, match=expected):
        lenet5(**kwargs)
