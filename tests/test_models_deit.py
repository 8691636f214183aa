"""common.models.deit (exported from stage4_transformers/04_deit.ipynb) against timm's DeiT.

* Every constructor (deit_{tiny,small,base}_patch16_224 and the _distilled_ variants) with non-default arguments
  (image sizes other than 224, other numbers of classes and channels, qkv without bias): the same seed gives timm's
  initial weights bit for bit; timm's state_dict (random values, nothing downloaded) loads strictly, in the same key
  order; the float64 eval logits agree (the mean of the two heads for the distilled models).
* Training mode with every dropout and stochastic depth, and the pair of outputs of distillation training:
  outputs and every gradient equal timm's from the same RNG state.
* The distillation losses against torch (kl_div, cross_entropy) and their derived gradients; the criterion for
  common.training.train_for; errors that say what was expected and how to fix it.
"""
import pytest
import timm
import torch

from common.checks import assert_same_module
from common.models import deit
from common.models.deit import (deit_distillation_criterion, hard_distillation_loss, soft_distillation_loss,
                                trunc_normal_)

ARGUMENTS = {
    "deit_tiny_patch16_224": dict(img_size=64, num_classes=7),
    "deit_small_patch16_224": dict(img_size=48, num_classes=5, in_chans=1, qkv_bias=False),
    "deit_base_patch16_224": dict(img_size=32, num_classes=3, depth=2),
    "deit_tiny_distilled_patch16_224": dict(img_size=80, num_classes=11, patch_size=8),
    "deit_small_distilled_patch16_224": dict(img_size=32, num_classes=4, in_chans=2, mlp_ratio=2.0),
    "deit_base_distilled_patch16_224": dict(img_size=48, num_classes=6, depth=2),
}
NOISE = dict(drop_rate=0.2, pos_drop_rate=0.1, proj_drop_rate=0.1, attn_drop_rate=0.1, drop_path_rate=0.3)


def _pair(name, seed=0, **extra):
    kwargs = dict(ARGUMENTS[name], **extra)
    torch.manual_seed(seed)
    reference = timm.create_model(name, pretrained=False, **kwargs)
    torch.manual_seed(seed)
    ours = getattr(deit, name)(**kwargs)
    return ours, reference, kwargs


def _images(kwargs, n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    size = kwargs["img_size"]
    return torch.randn(n, kwargs.get("in_chans", 3), size, size, dtype=torch.float64, generator=g)


@pytest.mark.parametrize("name", list(ARGUMENTS))
def test_same_init_strict_load_and_eval_logits(name):
    ours, reference, kwargs = _pair(name)
    ours_state, their_state = ours.state_dict(), reference.state_dict()
    assert list(ours_state) == list(their_state)
    assert all(torch.equal(ours_state[k], t) for k, t in their_state.items()), "initial weights differ"
    torch.manual_seed(5)                                            # other weights than the shared init
    reference = timm.create_model(name, pretrained=False, **kwargs)
    ours.load_state_dict(reference.state_dict(), strict=True)
    ours, reference = ours.double().eval(), reference.double().eval()
    x = _images(kwargs)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", list(ARGUMENTS))
def test_train_mode_with_every_noise(name):
    ours, reference, kwargs = _pair(name, seed=2, **NOISE)
    for module in reference.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    ours, reference = ours.double(), reference.double()
    if ours.distilled:
        ours.set_distilled_training(True)
        reference.set_distilled_training(True)
    report = assert_same_module(ours, reference, _images(kwargs, n=4), train=True, rtol=1e-9, atol=1e-11)
    assert report is not None
    ours.train()
    torch.manual_seed(0)
    a = ours(_images(kwargs, n=4))
    torch.manual_seed(1)
    b = ours(_images(kwargs, n=4))
    a, b = (a[0], b[0]) if ours.distilled else (a, b)
    assert not torch.allclose(a, b), "the noise must depend on the seed"


def test_distilled_outputs_by_mode():
    model = deit.deit_tiny_distilled_patch16_224(img_size=32, num_classes=5, depth=1).double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    model.eval()
    out = model(x)
    features = model.forward_features(x)
    torch.testing.assert_close(out, (model.head(features[:, 0]) + model.head_dist(features[:, 1])) / 2)
    model.train()
    assert isinstance(model(x), torch.Tensor)                        # distilled training not switched on
    model.set_distilled_training(True)
    cls, dist = model(x)
    assert cls.shape == dist.shape == (2, 5)
    model.eval()
    assert isinstance(model(x), torch.Tensor)                        # eval: always the mean


def test_trunc_normal_is_timms():
    from timm.layers import trunc_normal_ as timm_trunc_normal_
    torch.manual_seed(0)
    a = timm_trunc_normal_(torch.empty(1000), std=0.02)
    torch.manual_seed(0)
    b = trunc_normal_(torch.empty(1000), std=0.02)
    assert torch.equal(a, b)
    assert b.abs().max() <= 2.0 and 0.018 < b.std() < 0.022
    c = trunc_normal_(torch.empty(20000), std=1.0)                   # truncated at +-2 standard deviations
    assert c.abs().max() <= 2.0 and 0.85 < c.std() < 0.9             # the std of N(0, 1) cut at +-2 is 0.88


def test_losses_against_torch_and_their_gradients():
    g = torch.Generator().manual_seed(0)
    z_s = torch.randn(7, 10, dtype=torch.float64, generator=g, requires_grad=True)
    z_t = 2 * torch.randn(7, 10, dtype=torch.float64, generator=g)
    tnf = torch.nn.functional
    for tau in (1.0, 3.0):
        soft = soft_distillation_loss(z_s, z_t, tau)
        ref = tau ** 2 * tnf.kl_div(tnf.log_softmax(z_s / tau, -1), tnf.log_softmax(z_t / tau, -1),
                                    reduction="batchmean", log_target=True)
        torch.testing.assert_close(soft, ref)
        (grad,) = torch.autograd.grad(soft, z_s)
        torch.testing.assert_close(grad, tau * (tnf.softmax(z_s / tau, -1) - tnf.softmax(z_t / tau, -1)) / 7)
    hard = hard_distillation_loss(z_s, z_t)
    torch.testing.assert_close(hard, tnf.cross_entropy(z_s, z_t.argmax(-1)))
    (grad,) = torch.autograd.grad(hard, z_s)
    onehot = tnf.one_hot(z_t.argmax(-1), 10).double()
    torch.testing.assert_close(grad, (tnf.softmax(z_s, -1) - onehot) / 7)
    assert soft_distillation_loss(z_t, z_t, 3.0).abs() < 1e-12        # a student equal to its teacher: no loss
    with pytest.raises(ValueError, match="same shape"):
        soft_distillation_loss(z_s, z_t[:, :5])
    with pytest.raises(ValueError, match="same shape"):
        hard_distillation_loss(z_s[:3], z_t)


def test_criterion_combines_label_and_teacher():
    torch.manual_seed(0)
    teacher = torch.nn.Linear(12, 4)
    x, y = torch.randn(5, 12), torch.randint(0, 4, (5,))
    cls, dist = torch.randn(5, 4), torch.randn(5, 4)
    tnf = torch.nn.functional
    with torch.no_grad():
        z_t = teacher(x)
    hard = deit_distillation_criterion(teacher, "hard", alpha=0.5, label_smoothing=0.1)((cls, dist), x, y)
    expected = 0.5 * tnf.cross_entropy(cls, y, label_smoothing=0.1) + 0.5 * tnf.cross_entropy(dist, z_t.argmax(1))
    torch.testing.assert_close(hard, expected)
    soft = deit_distillation_criterion(teacher, "soft", alpha=0.3, tau=2.0, label_smoothing=0.0)((cls, dist), x, y)
    expected = 0.7 * tnf.cross_entropy(cls, y) + 0.3 * soft_distillation_loss(dist, z_t, 2.0)
    torch.testing.assert_close(soft, expected)
    with pytest.raises(TypeError, match="set_distilled_training"):
        deit_distillation_criterion(teacher)(cls, x, y)
    with pytest.raises(ValueError, match="'hard' or 'soft'"):
        deit_distillation_criterion(teacher, kind="medium")
    with pytest.raises(ValueError, match="alpha"):
        deit_distillation_criterion(teacher, alpha=1.5)


@pytest.mark.parametrize("x, error, match", [
    (torch.randn(2, 3, 28, 28), ValueError, "in_chans=3"),
    (torch.randn(2, 1, 32, 32), ValueError, "img_size=32"),
    (torch.randn(1, 28, 28), ValueError, "unsqueeze"),
    (torch.zeros(2, 1, 28, 28, dtype=torch.uint8), TypeError, r"x.float\(\)"),
    (torch.randn(2, 1, 28, 28, dtype=torch.float64), TypeError, "model.to"),
])
def test_bad_input_errors(x, error, match):
    model = deit.deit_tiny_patch16_224(img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=32,
                                       depth=1, num_heads=2)
    with pytest.raises(error, match=match):
        model(x)


def test_bad_arguments():
    with pytest.raises(ValueError, match="patch_size=5"):
        deit.deit_tiny_patch16_224(img_size=28, patch_size=5)
    with pytest.raises(ValueError, match="nothing is downloaded"):
        deit.deit_base_patch16_224(pretrained=True)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        deit.deit_tiny_patch16_224(img_size=32, embed_dim=100)
