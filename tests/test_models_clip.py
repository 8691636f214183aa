"""common.models.clip (exported from stage6_frontier/02_clip.ipynb) against open_clip.

For tiny configurations that turn on every implemented field (rectangular images and patches, average pooling,
layer scale, a biased text projection, QuickGELU, no ln_pre, the final norm after pooling, a learnable logit bias,
'eos' / 'first' / 'last' pooling, no causal mask, one input channel on our side), open_clip's state_dict
(random float64 values) loads strictly, in the same key order, and ``encode_image``, ``encode_text``, the logits and
``forward`` agree in eval mode, outputs and every gradient. open_clip's ``ViT-B-32`` configuration loads strictly
too, with equal features. The loss equals open_clip's ``ClipLoss``, forward and backward, with and without bias;
the text tower is stage 1's pre-norm encoder layer under other names. Bad input raises errors that say what was
expected.
"""
import json
import math
from pathlib import Path

import pytest
import torch

open_clip = pytest.importorskip("open_clip")
from open_clip.loss import ClipLoss as OpenClipLoss          # noqa: E402
from open_clip.model import CLIP as OpenCLIP                 # noqa: E402

from common.checks import assert_same_function, assert_same_module, load_reference_state   # noqa: E402
from common.models.clip import (CLIP, CLIPTextCfg, CLIPVisionCfg, ClipLoss, PatchDropout, causal_mask,  # noqa: E402
                                clamp_logit_scale_, clip_loss, clip_tiny, l2_normalize, recall_at_k,
                                text_global_pool, zero_shot_classifier)
from common.nn import TransformerEncoderLayer                 # noqa: E402
from _weights import randomize_                                # noqa: E402

VISION = dict(layers=2, width=32, head_width=8, patch_size=4, image_size=16)
TEXT = dict(context_length=7, vocab_size=23, width=24, heads=3, layers=2)

# name: (embed_dim, vision_cfg, text_cfg, CLIP keyword arguments)
CONFIGS = {
    "default": (16, VISION, TEXT, {}),
    "rectangular-avg-layerscale": (12, dict(VISION, image_size=(16, 12), patch_size=(4, 3), pool_type="avg",
                                            ls_init_value=0.3, mlp_ratio=2.0),
                                   dict(TEXT, ls_init_value=0.5, proj_bias=True, mlp_ratio=3.0), {}),
    "quickgelu-no-ln-pre-final-ln": (8, dict(VISION, no_ln_pre=True, final_ln_after_pool=True, layers=3),
                                     dict(TEXT, pool_type="eos", eos_id=5, layers=1),
                                     dict(quick_gelu=True, init_logit_scale=1.5, init_logit_bias=-2.0)),
    "bidirectional-first": (16, dict(VISION, layers=1), dict(TEXT, no_causal_mask=True, pool_type="first"),
                            dict(nonscalar_logit_scale=True)),
    "last-pool": (16, VISION, dict(TEXT, pool_type="last"), {}),
}


def _pair(name, dtype=torch.float64, seed=0):
    embed_dim, vision, text, kwargs = CONFIGS[name]
    torch.manual_seed(seed)
    reference = OpenCLIP(embed_dim, vision, text, **kwargs).to(dtype)
    randomize_(reference, torch.Generator().manual_seed(seed), norm_weights=(0.5, 1.5))
    with torch.no_grad():                 # keep the temperature in the range the model trains in
        reference.logit_scale.fill_(kwargs.get("init_logit_scale", math.log(1 / 0.07)))
    mine = CLIP(embed_dim, vision, text, **kwargs).to(dtype)
    return mine, reference


def _inputs(vision, text, n=5, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    size = vision["image_size"] if isinstance(vision["image_size"], tuple) else (vision["image_size"],) * 2
    images = torch.randn(n, 3, *size, generator=g, dtype=dtype)
    tokens = torch.randint(1, text["vocab_size"], (n, text["context_length"]), generator=g)
    tokens[:, -2:] = 0                                   # padding after the end token, as the tokenizer writes
    return images, tokens


@pytest.mark.parametrize("name", CONFIGS)
def test_keys_load_strictly_in_order(name):
    mine, reference = _pair(name)
    assert list(mine.state_dict()) == list(reference.state_dict())
    load_reference_state(mine, reference)
    assert sum(p.numel() for p in mine.parameters()) == sum(p.numel() for p in reference.parameters())


@pytest.mark.parametrize("name", CONFIGS)
def test_eval_features_and_logits_agree(name):
    mine, reference = _pair(name)
    load_reference_state(mine, reference)
    mine.eval(), reference.eval()
    images, tokens = _inputs(CONFIGS[name][1], CONFIGS[name][2])
    with torch.no_grad():
        for normalize in (False, True):
            expected = reference.encode_image(images, normalize=normalize)
            assert expected.abs().max() > 1e-2
            torch.testing.assert_close(mine.encode_image(images, normalize=normalize), expected, rtol=1e-10,
                                       atol=1e-10)
            torch.testing.assert_close(mine.encode_text(tokens, normalize=normalize),
                                       reference.encode_text(tokens, normalize=normalize), rtol=1e-10, atol=1e-10)
        for a, b in zip(mine.get_logits(images, tokens), reference.get_logits(images, tokens)):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", CONFIGS)
def test_forward_and_gradients_agree(name):
    mine, reference = _pair(name)
    images, tokens = _inputs(CONFIGS[name][1], CONFIGS[name][2])
    report = assert_same_module(mine, reference, images, tokens, train=True, rtol=1e-9, atol=1e-10)
    assert report is not None


def test_output_dict_matches():
    mine, reference = _pair("quickgelu-no-ln-pre-final-ln")
    mine.output_dict = reference.output_dict = True
    images, tokens = _inputs(CONFIGS["quickgelu-no-ln-pre-final-ln"][1], CONFIGS["quickgelu-no-ln-pre-final-ln"][2])
    load_reference_state(mine, reference)
    ours, theirs = mine.eval()(images, tokens), reference.eval()(images, tokens)
    assert ours.keys() == theirs.keys() == {"image_features", "text_features", "logit_scale", "logit_bias"}
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-10, atol=1e-10)


def test_grey_images_with_one_channel():
    """in_channels=1 is ours alone: the same model as open_clip's fed the grey image in its first channel,
    with the other two input channels' patch weights zero."""
    embed_dim, vision, text, _ = CONFIGS["default"]
    reference = OpenCLIP(embed_dim, vision, text).double().eval()
    randomize_(reference, torch.Generator().manual_seed(3))
    with torch.no_grad():
        reference.visual.conv1.weight[:, 1:] = 0
    mine = CLIP(embed_dim, dict(vision, in_channels=1), text).double().eval()
    state = reference.state_dict()
    state["visual.conv1.weight"] = state["visual.conv1.weight"][:, :1].clone()
    mine.load_state_dict(state, strict=True)
    grey = torch.randn(4, 1, 16, 16, dtype=torch.float64)
    rgb = torch.cat([grey, torch.randn(4, 2, 16, 16, dtype=torch.float64)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(mine.encode_image(grey), reference.encode_image(rgb), rtol=1e-10, atol=1e-10)


def test_open_clip_vit_b_32_configuration_loads_and_agrees():
    config = json.loads((Path(open_clip.__file__).parent / "model_configs" / "ViT-B-32.json").read_text())
    torch.manual_seed(0)
    reference = OpenCLIP(**config).eval()
    with torch.device("meta"):
        mine = CLIP(**config)
    load_reference_state(mine, reference, assign=True)
    mine.attn_mask = causal_mask(mine.context_length)         # non-persistent buffer: not in the state_dict
    mine.eval()
    assert sum(p.numel() for p in mine.parameters()) == 151_277_313
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 224, 224, generator=g)
    tokens = torch.zeros(2, 77, dtype=torch.long)
    tokens[:, 0] = 49406
    tokens[0, 1:6], tokens[0, 6] = torch.randint(1, 49000, (5,), generator=g), 49407
    tokens[1, 1:12], tokens[1, 12] = torch.randint(1, 49000, (11,), generator=g), 49407
    with torch.no_grad():
        torch.testing.assert_close(mine.encode_image(images), reference.encode_image(images), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(mine.encode_text(tokens), reference.encode_text(tokens), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bias", [None, -1.5])
def test_loss_equals_open_clip(bias):
    g = torch.Generator().manual_seed(0)
    image = l2_normalize(torch.randn(9, 6, generator=g, dtype=torch.float64))
    text = l2_normalize(torch.randn(9, 6, generator=g, dtype=torch.float64))
    scale = torch.tensor(1 / 0.07, dtype=torch.float64)
    inputs = (image, text, scale) if bias is None else (image, text, scale, torch.tensor(bias, dtype=torch.float64))
    report = assert_same_function(clip_loss, OpenClipLoss(), *inputs, rtol=1e-12, atol=1e-12)
    assert report is not None
    assert ClipLoss()(*inputs, output_dict=True).keys() == {"contrastive_loss"}


def test_loss_by_hand():
    """Two pairs, unit vectors at right angles, scale 1: each cross-entropy is log(1 + e^-1)."""
    eye = torch.eye(2, dtype=torch.float64)
    torch.testing.assert_close(clip_loss(eye, eye, 1.0), torch.tensor(math.log(1 + math.exp(-1)), dtype=torch.float64))
    # swapping the texts makes every pair a negative: log(1 + e^1)
    torch.testing.assert_close(clip_loss(eye, eye.flip(0), 1.0),
                               torch.tensor(math.log(1 + math.exp(1)), dtype=torch.float64))


def test_logit_scale_starts_at_1_over_007_and_is_clamped():
    model = clip_tiny(vocab_size=30, context_length=16)
    assert model.logit_scale.exp().item() == pytest.approx(1 / 0.07)
    with torch.no_grad():
        model.logit_scale.fill_(7.0)
    clamp_logit_scale_(model)
    assert model.logit_scale.exp().item() == pytest.approx(100.0)
    with torch.no_grad():
        model.logit_scale.fill_(-3.0)
    clamp_logit_scale_(model)
    assert model.logit_scale.item() == 0.0


def test_text_tower_is_the_stage1_pre_norm_encoder_with_a_causal_mask():
    embed_dim, vision, text, _ = CONFIGS["default"]
    model = CLIP(embed_dim, vision, dict(text, layers=1)).double().eval()
    randomize_(model, torch.Generator().manual_seed(4), norm_weights=(0.5, 1.5))
    block = model.transformer.resblocks[0]
    layer = TransformerEncoderLayer(24, 3, dim_feedforward=96, dropout=0.0, activation="gelu", batch_first=True,
                                    norm_first=True).double().eval()
    names = {"ln_1": "norm1", "attn": "self_attn", "mlp.c_fc": "linear1", "mlp.c_proj": "linear2", "ln_2": "norm2"}
    state = {}
    for key, value in block.state_dict().items():
        prefix = next(p for p in names if key.startswith(p + "."))
        state[names[prefix] + key[len(prefix):]] = value
    layer.load_state_dict(state, strict=True)
    x = torch.randn(3, 7, 24, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(block(x, attn_mask=model.attn_mask), layer(x, src_mask=model.attn_mask),
                                   rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(block(x, attn_mask=model.attn_mask), layer(x, is_causal=True), rtol=1e-12,
                                   atol=1e-12)


def test_causal_mask_and_pooling():
    mask = causal_mask(3)
    assert mask.tolist() == [[0, -math.inf, -math.inf], [0, 0, -math.inf], [0, 0, 0]]
    x = torch.arange(2 * 4 * 1.0).reshape(2, 4, 1)
    text = torch.tensor([[1, 5, 9, 0], [1, 9, 0, 0]])
    assert text_global_pool(x, text, "argmax").flatten().tolist() == [2.0, 5.0]
    assert text_global_pool(x, text, "eos", eos_token_id=9).flatten().tolist() == [2.0, 5.0]
    assert text_global_pool(x, text, "first").flatten().tolist() == [0.0, 4.0]
    assert text_global_pool(x, text, "last").flatten().tolist() == [3.0, 7.0]


def test_changing_a_later_token_leaves_earlier_outputs_alone():
    model = clip_tiny(vocab_size=30, context_length=8).eval()
    model.text_output_tokens = True
    a = torch.tensor([[1, 4, 5, 6, 29, 0, 0, 0]])
    b = a.clone()
    b[0, 3] = 7
    with torch.no_grad():
        _, ta = model.encode_text(a)
        _, tb = model.encode_text(b)
    torch.testing.assert_close(ta[:, :3], tb[:, :3])
    assert not torch.allclose(ta[:, 3:], tb[:, 3:])


def test_patch_dropout_keeps_the_class_token():
    drop = PatchDropout(0.5).train()
    x = torch.randn(3, 17, 4)
    y = drop(x)
    assert y.shape == (3, 9, 4)
    torch.testing.assert_close(y[:, 0], x[:, 0])
    for row in range(3):                                   # every kept token is one of the row's patch tokens
        assert all(any(torch.equal(t, s) for s in x[row, 1:]) for t in y[row, 1:])
    assert drop.eval()(x) is x
    model = clip_tiny(vocab_size=30, context_length=8, vision_layers=1)
    model.visual.patch_dropout = PatchDropout(0.75)
    out = model.train().encode_image(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 128)


def test_zero_shot_classifier_and_recall():
    model = clip_tiny(vocab_size=30, context_length=8).eval()
    tokenize = lambda texts: torch.tensor([[1, 3 + len(t), 29] + [0] * 5 for t in texts])
    weights = zero_shot_classifier(model, [["a", "bb"], ["ccc"], ["dd", "e", "fff"]], tokenize)
    assert weights.shape == (3, 128)
    torch.testing.assert_close(weights.norm(dim=1), torch.ones(3))
    similarity = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.3, 0.8]])
    relevant = torch.tensor([[False, False, True], [True, False, False]])
    assert recall_at_k(similarity, relevant, ks=(1, 2, 3)) == {1: 0.0, 2: 0.5, 3: 1.0}
    with pytest.raises(ValueError, match="no relevant"):
        recall_at_k(similarity, torch.zeros(2, 3, dtype=torch.bool))


def test_configs_accept_open_clip_dataclasses():
    from open_clip.model import CLIPTextCfg as TheirText, CLIPVisionCfg as TheirVision
    model = CLIP(16, TheirVision(**VISION), TheirText(**TEXT))
    assert list(model.state_dict()) == list(OpenCLIP(16, VISION, TEXT).state_dict())
    assert isinstance(model.vision_cfg, CLIPVisionCfg) and isinstance(model.text_cfg, CLIPTextCfg)


@pytest.mark.parametrize("vision, text, error, match", [
    (dict(VISION, attentional_pool=True), TEXT, NotImplementedError, "attentional_pool=True is not implemented"),
    (dict(VISION, layers=(1, 1, 1, 1)), TEXT, NotImplementedError, "ModifiedResNet"),
    (VISION, dict(TEXT, hf_model_name="bert"), NotImplementedError, "hf_model_name"),
    (dict(VISION, colour=True), TEXT, TypeError, "unknown field 'colour'"),
    (dict(VISION, width=30), TEXT, ValueError, "multiple of head_width"),
    (dict(VISION, image_size=18), TEXT, ValueError, "multiple of patch_size"),
    (dict(VISION, pool_type="max"), TEXT, ValueError, "pool_type must be 'tok'"),
    (VISION, dict(TEXT, pool_type="mean"), ValueError, "pool_type must be 'first'"),
    (VISION, dict(TEXT, heads=5), ValueError, "divisible by the number of heads"),
])
def test_bad_configurations_are_refused(vision, text, error, match):
    with pytest.raises(error, match=match):
        CLIP(16, vision, text)


def test_default_valued_unimplemented_fields_are_accepted():
    CLIP(16, dict(VISION, attentional_pool=False, block_type="default", qk_norm=False),
         dict(TEXT, embed_cls=False))


def test_bad_inputs_say_what_was_expected():
    model = CLIP(16, dict(VISION, in_channels=1), TEXT)
    images, tokens = torch.randn(2, 1, 16, 16), torch.randint(0, 23, (2, 7))
    with pytest.raises(ValueError, match=r"expected images \(N, 1, 16, 16\), got shape \(2, 3, 16, 16\)"):
        model.encode_image(torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"expected images \(N, 1, 16, 16\), got shape \(1, 16, 16\)"):
        model.encode_image(images[0])
    with pytest.raises(ValueError, match="expected torch.float32 images"):
        model.encode_image(images.double())
    with pytest.raises(ValueError, match=r"expected token ids \(N, 7\)"):
        model.encode_text(tokens[:, :5])
    with pytest.raises(ValueError, match="integer token ids"):
        model.encode_text(tokens.float())
    with pytest.raises(ValueError, match=r"must lie in 0..22"):
        model.encode_text(tokens + 23)
    with pytest.raises(ValueError, match="same shape"):
        clip_loss(torch.randn(3, 4), torch.randn(2, 4), 1.0)
    with pytest.raises(ValueError, match=r"float tensor \(N, D\)"):
        clip_loss(torch.randn(3), torch.randn(3), 1.0)
    with pytest.raises(ValueError, match=r"probability in \[0, 1\)"):
        PatchDropout(1.0)
