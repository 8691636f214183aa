"""common.models.vit (exported from stage4_transformers/02_vit.ipynb) against torchvision.models.

* Every constructor (vit_b_16, vit_b_32, vit_l_16, vit_l_32, vit_h_14) at an image size other than 224 and
  with non-default arguments: torchvision's state_dict (random values, nothing downloaded) loads strictly
  and both give the same float64 eval logits (1e-10). References are built on the meta device, materialised
  in float64 and filled with random values; ours takes their tensors (``assign=True``), so even ViT-H/14
  costs one copy of its weights.
* The same seed gives bit-identical initial weights (torchvision's init scheme), also with a
  representation layer and a convolutional stem.
* Training mode: outputs and every gradient for small configurations; dropout under the same seed.
* Position embeddings: ``interpolate_embeddings`` (bicubic from two resampling matrices, align_corners=True)
  equals torchvision's helper, and an interpolated checkpoint loads into a ViT at the new size and gives
  torchvision's logits there.
* The Fashion-MNIST variants (``in_channels=1``, ``pooling="mean"``) against torchvision's pieces.
* Errors that say what was expected and how to fix it.
"""
import gc
from collections import OrderedDict
from functools import partial

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import vision_transformer as tv_vit

from common.checks import assert_same_logits, assert_same_module
from common.models import (ConvStemConfig, VisionTransformer, interpolate_embeddings, resize_pos_embedding,
                           vit_b_16, vit_b_32,
                           vit_h_14, vit_l_16, vit_l_32)
from common.models.vit import _cubic_weights, _resize_matrix
from common.nn import LayerNorm
from _weights import randomize_

CONSTRUCTORS = {f.__name__: f for f in (vit_b_16, vit_b_32, vit_l_16, vit_l_32, vit_h_14)}

# name -> (image size, our kwargs, torchvision's kwargs): small images, every constructor non-default arguments
ARGUMENTS = {
    "vit_b_16": (32, dict(num_classes=7, dropout=0.1, attention_dropout=0.1),
                 dict(num_classes=7, dropout=0.1, attention_dropout=0.1)),
    "vit_b_32": (64, dict(num_classes=5, representation_size=48), dict(num_classes=5, representation_size=48)),
    "vit_l_16": (48, dict(num_classes=3, norm_layer=partial(LayerNorm, eps=1e-5)),
                 dict(num_classes=3, norm_layer=nn.LayerNorm)),
    "vit_l_32": (32, dict(num_classes=11, representation_size=16), dict(num_classes=11, representation_size=16)),
    "vit_h_14": (28, dict(num_classes=9), dict(num_classes=9)),
}


def _randomize(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Every tensor random, norm scales in [0.5, 1.5]."""
    return randomize_(model, generator, norm_weights=(0.5, 1.5))


def _materialised(reference: nn.Module, seed: int = 0) -> nn.Module:
    return _randomize(reference.to(torch.float64).to_empty(device="cpu"), torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(CONSTRUCTORS))
def test_torchvision_state_dict_loads_and_gives_the_same_logits(name):
    image_size, ours_kwargs, their_kwargs = ARGUMENTS[name]
    with torch.device("meta"):
        reference = getattr(torchvision.models, name)(image_size=image_size, **their_kwargs)
        ours = CONSTRUCTORS[name](image_size=image_size, **ours_kwargs)
    reference = _materialised(reference)
    x = torch.randn(2, 3, image_size, image_size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert_same_logits(ours, reference, x, min_scale=1e-2)
    assert ours.seq_length == reference.seq_length == (image_size // ours.patch_size) ** 2 + 1
    del reference, ours
    gc.collect()


@pytest.mark.parametrize("name", list(CONSTRUCTORS))
def test_default_arguments_and_architecture(name):
    with torch.device("meta"):
        ours = CONSTRUCTORS[name]()
        reference = getattr(torchvision.models, name)()
    assert (ours.image_size, ours.patch_size, ours.hidden_dim, ours.mlp_dim, ours.num_classes) == \
           (reference.image_size, reference.patch_size, reference.hidden_dim, reference.mlp_dim, 1000)
    assert len(ours.encoder.layers) == len(reference.encoder.layers)
    assert ours.encoder.layers[0].self_attention.num_heads == reference.encoder.layers[0].self_attention.num_heads
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == \
           [(k, v.shape) for k, v in reference.state_dict().items()]
    for module in ours.modules():   # only common.nn layers inside (containers from torch.nn are fine)
        if type(module).__module__ != "common.models.vit" and not isinstance(module, nn.Sequential):
            assert type(module).__module__.startswith("common.nn"), type(module)
    assert ours.encoder.layers[0].ln_1.eps == 1e-6


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(num_classes=10, representation_size=24, dropout=0.1),
    dict(conv_stem_configs=[ConvStemConfig(8, 3, 2), ConvStemConfig(16, 3, 2)]),
])
def test_same_seed_gives_bit_identical_initial_weights(kwargs):
    """Truncated-normal patch projection (std sqrt(1/fan_in)), N(0, 0.02) positions, zero class token and head,
    Xavier MLP weights with N(0, 1e-6) biases, MultiheadAttention's and Linear's own init, in torchvision's order."""
    their_kwargs = dict(kwargs)
    if "conv_stem_configs" in kwargs:
        their_kwargs["conv_stem_configs"] = [tv_vit.ConvStemConfig(c.out_channels, c.kernel_size, c.stride)
                                             for c in kwargs["conv_stem_configs"]]
    torch.manual_seed(0)
    reference = tv_vit.VisionTransformer(32, 8, 2, 4, 32, 48, **their_kwargs)
    torch.manual_seed(0)
    ours = VisionTransformer(32, 8, 2, 4, 32, 48, **kwargs)
    theirs = reference.state_dict()
    assert list(ours.state_dict()) == list(theirs)
    differ = [k for k, v in ours.state_dict().items() if not torch.equal(v, theirs[k])]
    assert not differ, differ[:5]
    assert not ours.heads.head.weight.any() and not ours.class_token.any()


def test_bit_identical_initial_weights_of_a_full_constructor():
    torch.manual_seed(3)
    reference = torchvision.models.vit_b_32(image_size=64, num_classes=10)
    torch.manual_seed(3)
    ours = vit_b_32(image_size=64, num_classes=10)
    theirs = reference.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in ours.state_dict().items())


class _ContiguousAttention(nn.MultiheadAttention):
    """torch's MultiheadAttention returning a contiguous output: torch's batch-first path hands back a transposed
    view, and dropout draws its mask in memory order, so without this the two models would drop different
    (equally random) elements of the same tensor. Only the layout changes, not a single value."""

    def forward(self, *args, **kwargs):
        output, weights = super().forward(*args, **kwargs)
        return output.contiguous(), weights


def _small_pair(train_dropout=0.0, attention_dropout=0.0, **kwargs):
    reference = tv_vit.VisionTransformer(20, 5, 2, 2, 12, 20, dropout=train_dropout,
                                         attention_dropout=attention_dropout, num_classes=6, **kwargs).double()
    for block in reference.encoder.layers:
        block.self_attention.__class__ = _ContiguousAttention
    _randomize(reference, torch.Generator().manual_seed(4))
    ours = VisionTransformer(20, 5, 2, 2, 12, 20, dropout=train_dropout, attention_dropout=attention_dropout,
                             num_classes=6, **kwargs).double()
    return ours, reference


@pytest.mark.parametrize("dropout, attention_dropout, kwargs", [
    (0.0, 0.0, {}),
    (0.0, 0.0, dict(representation_size=8)),
    (0.2, 0.0, {}),                  # dropout on the positions-added tokens, after attention, inside the MLP
    (0.0, 0.3, {}),                  # dropout on the attention weights
    (0.1, 0.1, dict(representation_size=8)),
])
def test_train_mode_outputs_and_every_gradient_match(dropout, attention_dropout, kwargs):
    """Same RNG state before both forwards: the same elements are dropped, so outputs and gradients agree."""
    ours, reference = _small_pair(dropout, attention_dropout, **kwargs)
    x = torch.randn(3, 3, 20, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    report = assert_same_module(ours, reference, x, train=True, rtol=1e-9, atol=1e-10)
    names = [row[0] for row in report.rows]
    assert "grad input[0]" in names and "grad class_token" in names and "grad encoder.pos_embedding" in names
    if dropout or attention_dropout:   # the dropout really acts: another seed gives other outputs
        torch.manual_seed(0)
        first = ours(x)
        torch.manual_seed(1)
        assert not torch.allclose(first, ours(x))


def test_eval_mode_with_an_odd_batch_and_non_contiguous_input():
    ours, reference = _small_pair(0.3, 0.3)
    x = torch.randn(20, 20, 3, 5, dtype=torch.float64).permute(3, 2, 0, 1)   # (5, 3, 20, 20), channels-last-like
    assert not x.is_contiguous()
    assert_same_module(ours, reference, x, train=False, rtol=1e-9, atol=1e-10)


def test_empty_batch():
    ours, reference = _small_pair()
    ours.load_state_dict(reference.state_dict())
    assert ours.eval()(torch.zeros(0, 3, 20, 20, dtype=torch.float64)).shape == (0, 6)


def test_convolutional_stem_matches_torchvision_in_train_and_eval():
    configs = [(6, 3, 2), (10, 3, 1)]
    reference = tv_vit.VisionTransformer(16, 2, 1, 2, 8, 12, num_classes=4,
                                         conv_stem_configs=[tv_vit.ConvStemConfig(*c) for c in configs]).double()
    _randomize(reference, torch.Generator().manual_seed(6))
    ours = VisionTransformer(16, 2, 1, 2, 8, 12, num_classes=4,
                             conv_stem_configs=[ConvStemConfig(*c) for c in configs]).double()
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    assert_same_module(ours, reference, x, train=True, rtol=1e-9, atol=1e-10)   # BatchNorm buffers too
    assert_same_module(ours, reference, x, train=False, rtol=1e-9, atol=1e-10)


def test_grey_images_in_channels_1_against_torchvision_with_a_one_channel_projection():
    """The Fashion-MNIST ViT: torchvision's class with its patch projection rebuilt for 1 channel."""
    reference = tv_vit.VisionTransformer(28, 7, 2, 4, 32, 64, num_classes=10)
    reference.conv_proj = nn.Conv2d(1, 32, kernel_size=7, stride=7)
    reference = _randomize(reference.double(), torch.Generator().manual_seed(7))
    ours = VisionTransformer(28, 7, 2, 4, 32, 64, num_classes=10, in_channels=1)
    x = torch.randn(5, 1, 28, 28, dtype=torch.float64)
    assert_same_logits(ours, reference, x, min_scale=1e-2)
    assert_same_module(ours, reference, x, train=True, rtol=1e-9, atol=1e-10)


def test_mean_pooling_is_torchvisions_encoder_on_the_patch_tokens_averaged():
    """pooling="mean": no class token, positions for the 16 patches only, the head reads the mean token."""
    ours = VisionTransformer(16, 4, 2, 2, 12, 20, num_classes=3, pooling="mean").double()
    assert "class_token" not in ours.state_dict() and ours.encoder.pos_embedding.shape == (1, 16, 12)
    encoder = tv_vit.Encoder(16, 2, 2, 12, 20, 0.0, 0.0).double()
    conv, head = nn.Conv2d(3, 12, 4, 4).double(), nn.Linear(12, 3).double()
    for module in (encoder, conv, head):
        _randomize(module, torch.Generator().manual_seed(8))
    ours.load_state_dict({**{f"conv_proj.{k}": v for k, v in conv.state_dict().items()},
                          **{f"encoder.{k}": v for k, v in encoder.state_dict().items()},
                          **{f"heads.head.{k}": v for k, v in head.state_dict().items()}})
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        tokens = conv(x).flatten(2).transpose(1, 2)                 # (3, 16, 12)
        expected = head(encoder.eval()(tokens).mean(dim=1))
        torch.testing.assert_close(ours.eval()(x), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
@pytest.mark.parametrize("old_grid, new_grid", [(7, 12), (7, 4), (14, 16), (5, 1), (1, 3), (6, 6), (2, 9)])
def test_interpolated_position_embeddings_equal_torchvisions_helper(mode, old_grid, new_grid):
    patch = 4
    state = {"encoder.pos_embedding": torch.randn(1, old_grid ** 2 + 1, 10, dtype=torch.float64),
             "heads.head.weight": torch.randn(3, 10, dtype=torch.float64)}
    before = state["encoder.pos_embedding"].clone()
    ours = interpolate_embeddings(new_grid * patch, patch, state, interpolation_mode=mode)
    assert torch.equal(state["encoder.pos_embedding"], before)             # ours leaves its input alone
    theirs = tv_vit.interpolate_embeddings(new_grid * patch, patch, dict(state), interpolation_mode=mode)
    assert ours["encoder.pos_embedding"].shape == (1, new_grid ** 2 + 1, 10)
    torch.testing.assert_close(ours["encoder.pos_embedding"], theirs["encoder.pos_embedding"],
                               rtol=1e-12, atol=1e-12)
    assert torch.equal(ours["encoder.pos_embedding"][:, 0], before[:, 0])   # the class token's is kept


def test_float32_interpolation_and_reset_heads():
    state = {"encoder.pos_embedding": torch.randn(1, 50, 8), "heads.head.weight": torch.randn(3, 8),
             "heads.head.bias": torch.randn(3)}
    ours = interpolate_embeddings(48, 4, state, reset_heads=True)
    theirs = tv_vit.interpolate_embeddings(48, 4, dict(state), reset_heads=True)
    assert list(ours) == list(theirs) == ["encoder.pos_embedding"]
    assert ours["encoder.pos_embedding"].dtype == torch.float32
    torch.testing.assert_close(ours["encoder.pos_embedding"], theirs["encoder.pos_embedding"])


def test_resize_matrices_are_interpolation_operators():
    for mode in ("bicubic", "bilinear"):
        matrix = _resize_matrix(7, 12, mode)
        torch.testing.assert_close(matrix.sum(dim=1), torch.ones(12, dtype=torch.float64))   # constants kept
        assert torch.equal(matrix[0], torch.eye(7, dtype=torch.float64)[0])                  # corners aligned
        assert torch.equal(matrix[-1], torch.eye(7, dtype=torch.float64)[-1])
        torch.testing.assert_close(_resize_matrix(5, 5, mode), torch.eye(5, dtype=torch.float64))
        if mode == "bilinear":                                                              # a ramp is kept
            torch.testing.assert_close(matrix @ torch.arange(7.0, dtype=torch.float64),
                                       torch.linspace(0, 6, 12, dtype=torch.float64))
    with pytest.raises(ValueError, match="'bicubic' or 'bilinear'"):
        _resize_matrix(3, 4, "nearest")


def test_keys_cubic_weights():
    """Taps at offsets -1, 0, 1, 2: they sum to 1; Keys' a = -0.5 would also reproduce a ramp, PyTorch's a = -0.75
    (ours) does not, which is why the comparison with torchvision decides the constant."""
    t = torch.linspace(0, 0.99, 50, dtype=torch.float64)
    offsets = torch.tensor([-1.0, 0.0, 1.0, 2.0], dtype=torch.float64)
    torch.testing.assert_close(_cubic_weights(t).sum(dim=1), torch.ones_like(t))
    torch.testing.assert_close(_cubic_weights(t, a=-0.5) @ offsets, t)
    assert not torch.allclose(_cubic_weights(t) @ offsets, t)
    torch.testing.assert_close(_cubic_weights(torch.zeros(1, dtype=torch.float64)),
                               torch.tensor([[0.0, 1.0, 0.0, 0.0]], dtype=torch.float64))


@pytest.mark.parametrize("name, old_size, new_size", [("vit_b_16", 32, 48), ("vit_b_32", 96, 64)])
def test_an_interpolated_checkpoint_loads_at_the_new_size_and_matches_torchvision(name, old_size, new_size):
    with torch.device("meta"):
        trained = getattr(torchvision.models, name)(image_size=old_size, num_classes=5)
    checkpoint = _materialised(trained).state_dict()
    ours_state = interpolate_embeddings(new_size, trained.patch_size, checkpoint)
    theirs_state = tv_vit.interpolate_embeddings(new_size, trained.patch_size, OrderedDict(checkpoint))
    with torch.device("meta"):
        reference = getattr(torchvision.models, name)(image_size=new_size, num_classes=5)
        ours = CONSTRUCTORS[name](image_size=new_size, num_classes=5)
    reference.load_state_dict(theirs_state, strict=True, assign=True)
    ours.load_state_dict(ours_state, strict=True, assign=True)
    x = torch.randn(2, 3, new_size, new_size, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        expected = reference.eval()(x)
        assert expected.abs().max() > 1e-2
        torch.testing.assert_close(ours.eval()(x), expected, rtol=1e-10, atol=1e-10)
    del trained, checkpoint, reference, ours
    gc.collect()


def test_interpolation_errors():
    with pytest.raises(ValueError, match="not a perfect square"):
        interpolate_embeddings(32, 4, {"encoder.pos_embedding": torch.randn(1, 11, 4)})
    with pytest.raises(ValueError, match="Unexpected position embedding shape"):
        interpolate_embeddings(32, 4, {"encoder.pos_embedding": torch.randn(2, 50, 4)})


def test_errors_say_what_was_expected_and_how_to_fix_it():
    model = VisionTransformer(28, 7, 1, 2, 8, 16, num_classes=10, in_channels=1)
    with pytest.raises(ValueError, match=r"expected 1 input channels, got shape \(2, 3, 28, 28\); build the model "
                                         r"with in_channels=3"):
        model(torch.randn(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"expected 28x28 images, got 32x32 .*image_size=32 .*interpolate_embeddings"):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(TypeError, match=r"floating-point images .* got torch.uint8; convert with x.float\(\)"):
        model(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(TypeError, match=r"dtype torch.float32, got torch.float64"):
        model(torch.zeros(2, 1, 28, 28, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"expected a batch of images \(N, 1, 28, 28\), got shape \(1, 28, 28\); "
                                         r"add the batch dimension"):
        model(torch.zeros(1, 28, 28))
    with pytest.raises(ValueError, match="image_size divisible by patch_size, got image_size=28 and patch_size=8"):
        VisionTransformer(28, 8, 1, 2, 8, 16)
    with pytest.raises(ValueError, match="pooling 'token' or 'mean', got 'max'"):
        VisionTransformer(28, 7, 1, 2, 8, 16, pooling="max")
    with pytest.raises(ValueError, match="weights must be None"):
        vit_b_16(weights="IMAGENET1K_V1")
    with pytest.raises(ValueError, match="expected embed_dim divisible by num_heads"):
        VisionTransformer(28, 7, 1, 3, 8, 16)


def test_interpolating_a_mean_pooled_checkpoint_resamples_every_token():
    """pooling="mean" has no class token: all 16 embeddings form the grid (nothing is kept aside)."""
    small = VisionTransformer(16, 4, 1, 2, 8, 12, num_classes=3, pooling="mean")
    state = interpolate_embeddings(32, 4, small.state_dict())
    assert state["encoder.pos_embedding"].shape == (1, 64, 8)
    expected = resize_pos_embedding(small.encoder.pos_embedding.detach(), 8, num_prefix_tokens=0)
    torch.testing.assert_close(state["encoder.pos_embedding"], expected)
    bigger = VisionTransformer(32, 4, 1, 2, 8, 12, num_classes=3, pooling="mean")
    bigger.load_state_dict(state, strict=True)
    corners = state["encoder.pos_embedding"][0, [0, 7, 56, 63]]         # align_corners: the corners are kept
    torch.testing.assert_close(corners, small.encoder.pos_embedding.detach()[0, [0, 3, 12, 15]])


def test_a_checkpoint_from_before_torchvision_0_13_loads():
    """Old checkpoints name the MLP layers linear_1 / linear_2 and carry no version metadata."""
    reference = _randomize(tv_vit.VisionTransformer(16, 4, 2, 2, 8, 12, num_classes=3).double(),
                           torch.Generator().manual_seed(10))
    legacy = {k.replace("mlp.0.", "mlp.linear_1.").replace("mlp.3.", "mlp.linear_2."): v
              for k, v in reference.state_dict().items()}
    assert any("linear_1" in k for k in legacy)
    ours = VisionTransformer(16, 4, 2, 2, 8, 12, num_classes=3).double()
    ours.load_state_dict(legacy, strict=True)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), reference.eval()(x), rtol=1e-10, atol=1e-10)
