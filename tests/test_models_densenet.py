"""common.models.densenet (exported from stage3_resnets/03_densenet.ipynb) against torchvision.models.

Every constructor: torchvision's state_dict loads strictly and both give the same logits (float64, eval) with
non-default num_classes and drop_rate. Small configurations: training mode (outputs, BatchNorm buffers, input
and parameter gradients) against torchvision's DenseNet class, memory_efficient=True and dropout (the same masks
under the same seed) included. The full-size
models are built on the meta device, then torchvision's is materialised once in float64 and filled with random
values; ours takes its tensors with ``load_state_dict(strict=True, assign=True)``.
"""
import gc
import math
import re
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from common.checks import assert_same_logits, assert_same_module
from common.models import (DenseBlock, DenseLayer, DenseNet, Transition, convert_legacy_state_dict, densenet121,
                           densenet161, densenet169, densenet201)
from _weights import randomize_

CONSTRUCTORS = {f.__name__: f for f in (densenet121, densenet161, densenet169, densenet201)}
BLOCKS = {"densenet121": (6, 12, 24, 16), "densenet161": (6, 12, 36, 24), "densenet169": (6, 12, 32, 32),
          "densenet201": (6, 12, 48, 32)}
OUR_CLASSES = (DenseNet, DenseBlock, DenseLayer, Transition)


def _randomize(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Every tensor random, norm scales in [0.5, 1.5]; 5 batches tracked (a test counts on it)."""
    return randomize_(model, generator, norm_weights=(0.5, 1.5), batches_tracked=5)


@pytest.mark.parametrize("name", list(CONSTRUCTORS))
def test_torchvision_state_dict_loads_and_gives_the_same_logits(name):
    kwargs = dict(num_classes=7, drop_rate=0.3)
    with torch.device("meta"):
        reference = getattr(torchvision.models, name)(**kwargs)
        ours = CONSTRUCTORS[name](**kwargs)
    reference = _randomize(reference.to(torch.float64).to_empty(device="cpu"), torch.Generator().manual_seed(0))
    # strict load (same keys, order and shapes), then the same eval-mode logits in float64
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert_same_logits(ours, reference, x, min_scale=1e-3)
    layers = [m for m in ours.modules() if isinstance(m, DenseLayer)]
    assert len(layers) == sum(BLOCKS[name]) and all(layer.drop_rate == 0.3 for layer in layers)
    del reference, ours
    gc.collect()


@pytest.mark.parametrize("name", list(CONSTRUCTORS))
def test_default_arguments_and_architecture(name):
    with torch.device("meta"):
        ours = CONSTRUCTORS[name]()
        reference = getattr(torchvision.models, name)()
    assert ours.classifier.out_features == 1000
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())
    assert [n for n, _ in ours.features.named_children()] == [n for n, _ in reference.features.named_children()]
    for module in ours.modules():                          # only common.nn layers inside, plus containers
        if not isinstance(module, (nn.Sequential, nn.ModuleDict) + OUR_CLASSES):
            assert type(module).__module__.startswith("common.nn"), type(module)
    first = ours.features.denseblock1.denselayer1
    assert first.conv1.kernel_size == (1, 1) and first.conv2.kernel_size == (3, 3) and first.conv2.padding == (1, 1)
    assert first.conv1.bias is None and first.conv2.bias is None
    assert not first.memory_efficient


def test_channel_arithmetic_and_compression():
    """Layer l of a block reads k0 + (l-1) k channels; a transition keeps floor(theta * C)."""
    with torch.device("meta"):
        model = DenseNet(growth_rate=5, block_config=(3, 4, 2), num_init_features=7, compression=0.3,
                         in_channels=2, small_inputs=True, num_classes=4)
    k0 = 7
    for index, layers in enumerate((3, 4, 2), start=1):
        block = getattr(model.features, f"denseblock{index}")
        assert [layer.conv1.in_channels for layer in block.values()] == [k0 + i * 5 for i in range(layers)]
        assert all(layer.conv1.out_channels == 4 * 5 and layer.conv2.out_channels == 5 for layer in block.values())
        out = k0 + layers * 5
        if index < 3:
            transition = getattr(model.features, f"transition{index}")
            assert transition.conv.in_channels == out and transition.conv.out_channels == math.floor(0.3 * out)
            k0 = math.floor(0.3 * out)
    assert model.features.norm5.num_features == out and model.classifier.in_features == out
    assert [n for n, _ in model.features.named_children()][0:2] == ["conv0", "denseblock1"]   # no norm0/pool0
    x = torch.randn(2, 2, 17, 17)
    small = DenseNet(4, (2, 2), 6, bn_size=2, num_classes=3, in_channels=2, small_inputs=True, stem_stride=2)
    assert small.features.conv0.stride == (2, 2) and small(x).shape == (2, 3)


def test_init_follows_torchvision():
    torch.manual_seed(0)
    model = DenseNet(16, (2, 3), 32, num_classes=10)
    conv = model.features.denseblock2.denselayer3.conv1                  # fan_in = 32 + 2 * 16 ... after transition
    fan_in = conv.weight[0].numel()
    assert abs(conv.weight.std().item() / math.sqrt(2.0 / fan_in) - 1) < 0.1
    stem = model.features.conv0                                          # 32 x 3 x 7 x 7 = 4,704 weights
    assert abs(stem.weight.std().item() / math.sqrt(2.0 / 147) - 1) < 0.05
    norms = [m for m in model.modules() if type(m).__name__ == "BatchNorm2d"]
    assert norms and all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in norms)
    assert torch.all(model.classifier.bias == 0) and model.classifier.weight.abs().sum() > 0


def _small_stem_reference(growth_rate, block_config, num_init_features, bn_size, num_classes, in_channels, stride,
                          drop_rate=0.0):
    reference = torchvision.models.DenseNet(growth_rate, block_config, num_init_features, bn_size, drop_rate,
                                            num_classes)
    reference.features.conv0 = nn.Conv2d(in_channels, num_init_features, 3, stride=stride, padding=1, bias=False)
    del reference.features.norm0, reference.features.relu0, reference.features.pool0
    return reference


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("memory_efficient", [False, True])
@pytest.mark.parametrize("drop_rate", [0.0, 0.3])
def test_imagenet_stem_matches_torchvision_in_train_and_eval(train, memory_efficient, drop_rate):
    """Outputs, BatchNorm running statistics, input and parameter gradients, with dropout on and off.

    With dropout on both models draw the same masks under the same seed: our Dropout calls bernoulli_ on
    empty_like(new maps), as torch's does, and the new maps are contiguous in both (bernoulli_ fills in memory order).
    """
    torch.manual_seed(0)
    ours = DenseNet(8, (2, 3), 16, bn_size=2, drop_rate=drop_rate, num_classes=5,
                    memory_efficient=memory_efficient).double()
    reference = _randomize(torchvision.models.DenseNet(8, (2, 3), 16, 2, drop_rate, 5).double(),
                           torch.Generator().manual_seed(2))
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    report = assert_same_module(ours, reference, x, train=train, rtol=1e-9, atol=1e-10)
    names = [row[0] for row in report.rows]
    assert "grad features.conv0.weight" in names and "grad input[0]" in names
    assert any("running_mean" in name for name in names)


def test_small_stem_matches_torchvision_with_the_same_stem():
    torch.manual_seed(0)
    ours = DenseNet(6, (2, 2, 3), 12, bn_size=4, drop_rate=0.2, num_classes=10, in_channels=1, small_inputs=True,
                    stem_stride=2).double()
    reference = _randomize(_small_stem_reference(6, (2, 2, 3), 12, 4, 10, 1, 2, drop_rate=0.2).double(),
                           torch.Generator().manual_seed(3))
    x = torch.randn(6, 1, 28, 28, dtype=torch.float64)
    for train in (True, False):
        report = assert_same_module(ours, reference, x, train=train, rtol=1e-9, atol=1e-10)
        assert len(report.rows) > 50
    # the masks matter: another seed gives other logits in training mode
    ours.train()
    torch.manual_seed(0)
    first = ours(x)
    torch.manual_seed(1)
    assert not torch.allclose(first, ours(x))


def test_memory_efficient_gives_identical_outputs_gradients_and_buffers():
    """Checkpointing recomputes the same numbers; norm1's running statistics are updated once, not twice."""
    torch.manual_seed(0)
    plain = DenseNet(6, (3, 2), 12, bn_size=2, num_classes=4).double()
    efficient = DenseNet(6, (3, 2), 12, bn_size=2, num_classes=4, memory_efficient=True).double()
    _randomize(plain, torch.Generator().manual_seed(4))
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    report = assert_same_module(efficient, plain, x, train=True, rtol=0, atol=0)
    assert all(exact for _, exact, _ in report.rows)
    assert efficient.features.denseblock1.denselayer2.norm1.num_batches_tracked.item() == 5 + 1
    # in eval mode with an input that needs a gradient the checkpoint is used too
    report = assert_same_module(efficient, plain, x, train=False, rtol=0, atol=0)
    assert all(exact for _, exact, _ in report.rows)
    # without gradients no checkpoint is made (torch.no_grad) and the result is the same
    with torch.no_grad():
        torch.testing.assert_close(efficient(x), plain(x), rtol=0, atol=0)


def test_memory_efficient_keeps_fewer_activations():
    kept = {}
    for efficient in (False, True):
        block = DenseBlock(8, 16, 4, 8, 0.0, memory_efficient=efficient)
        x = torch.randn(4, 16, 8, 8, requires_grad=True)
        parameters = {p.untyped_storage().data_ptr() for p in block.parameters()}
        storages = {}

        def pack(tensor):
            storage = tensor.untyped_storage()
            if tensor.dim() > 1 and storage.data_ptr() not in parameters:
                storages[storage.data_ptr()] = storage.nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            block(x)
        kept[efficient] = sum(storages.values())
    per_map = 4 * 8 * 8 * 4
    L, k0, k, b = 8, 16, 8, 4
    assert kept[False] == (2 * L * k0 + k * L * (L - 1) + 2 * b * k * L) * per_map
    assert kept[True] == (k0 + (L - 1) * k + 2 * b * k * L) * per_map


def test_dropout_acts_in_training_only():
    torch.manual_seed(0)
    layer = DenseLayer(8, 16, 2, drop_rate=0.5)
    x = torch.randn(4, 8, 6, 6)
    layer.train()
    out = layer([x])
    zeros = (out == 0).float().mean().item()
    assert 0.4 < zeros < 0.6
    layer.eval()
    torch.testing.assert_close(layer([x]), layer([x]), rtol=0, atol=0)
    assert (layer([x]) == 0).float().mean().item() < 0.05


def test_bad_input_and_arguments():
    model = DenseNet(4, (2, 2), 8, bn_size=2, num_classes=10, in_channels=1, small_inputs=True)
    with pytest.raises(ValueError, match=r"DenseNet expected input \(N, 1, H, W\), got \(2, 3, 28, 28\)"):
        model(torch.randn(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"DenseNet expected input \(N, 1, H, W\), got \(1, 28, 28\)"):
        model(torch.randn(1, 28, 28))
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="nothing is downloaded"):
        densenet121(weights="DEFAULT")
    with pytest.raises(ValueError, match="block_config to be a non-empty sequence"):
        DenseNet(block_config=())
    with pytest.raises(ValueError, match="every entry of block_config to be a positive int, got 0"):
        DenseNet(block_config=(2, 0))
    with pytest.raises(ValueError, match="growth_rate to be a positive int, got 0"):
        DenseNet(growth_rate=0)
    with pytest.raises(ValueError, match=r"drop_rate in \[0, 1\), got 1.0"):
        DenseNet(drop_rate=1.0)
    with pytest.raises(ValueError, match=r"compression \(theta\) in \(0, 1\], got 1.5"):
        DenseNet(compression=1.5)
    with pytest.raises(ValueError, match="stem_stride applies to the small_inputs stem only"):
        DenseNet(stem_stride=2)


def test_convert_legacy_state_dict():
    model = DenseNet(4, (2, 2), 8, bn_size=2, num_classes=3)
    current = model.state_dict()
    legacy = {re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", key): value
              for key, value in current.items() if not key.endswith("num_batches_tracked")}
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    assert "features.denseblock1.denselayer1.conv.2.weight" in legacy
    converted = convert_legacy_state_dict(legacy)
    assert list(converted) == list(current)
    for key, value in converted.items():
        if key.endswith("num_batches_tracked"):
            assert value.item() == 0
        else:
            assert value is current[key]
    DenseNet(4, (2, 2), 8, bn_size=2, num_classes=3).load_state_dict(converted, strict=True)
    # a current state_dict passes through unchanged
    again = convert_legacy_state_dict(current)
    assert list(again) == list(current) and all(again[k] is current[k] for k in current)


@pytest.mark.parametrize("name", list(CONSTRUCTORS))
def test_pretrained_checkpoint_when_cached(name):
    """Runs only where torchvision's published checkpoint is already in the torch hub cache (never downloads)."""
    weights = getattr(torchvision.models, name.replace("densenet", "DenseNet") + "_Weights").IMAGENET1K_V1
    path = Path(torch.hub.get_dir()) / "checkpoints" / weights.url.rsplit("/", 1)[-1]
    if not path.exists():
        pytest.skip(f"no cached checkpoint at {path} (offline)")
    state = convert_legacy_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    ours = CONSTRUCTORS[name]().eval()
    ours.load_state_dict(state, strict=True)
    reference = getattr(torchvision.models, name)(weights=weights).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-4, atol=1e-4)
