"""common.models.simclr (stage5_selfsupervised/02_simclr.ipynb): NT-Xent against a loop and a cross-entropy,
forward and backward; affine_grid / grid_sample against torch's; the augmentations' invariants; errors; shapes."""
import math

import pytest
import torch
from torch.nn import functional as F

from common.models.simclr import (ConvEncoder, ProjectionHead, SimCLRAugment, adjust_brightness_contrast,
                                  affine_grid, crop_rotate_matrices, erase, grid_sample, hflip, nt_xent,
                                  simclr_small)


def _loop(z1, z2, temperature):
    views = list(torch.cat([z1, z2]))
    n, total = z1.shape[0], 0.0
    for i, anchor in enumerate(views):
        cos = [(anchor @ v) / (anchor.norm() * v.norm()) / temperature for v in views]
        partner = (i + n) % (2 * n)
        total = total + torch.stack([c for k, c in enumerate(cos) if k != i]).exp().sum().log() - cos[partner]
    return total / (2 * n)


def _cross_entropy(z1, z2, temperature):
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    s = z @ z.T / temperature
    logits = s[~torch.eye(2 * n, dtype=torch.bool)].reshape(2 * n, 2 * n - 1)
    return F.cross_entropy(logits, torch.cat([torch.arange(n) + n - 1, torch.arange(n)]))


@pytest.mark.parametrize("n, dim, temperature", [(1, 3, 0.5), (2, 1, 0.07), (6, 5, 0.1), (9, 16, 1.0),
                                                 (4, 4, 25.0), (12, 8, 0.01)])
def test_nt_xent_equals_loop_and_cross_entropy(n, dim, temperature):
    torch.manual_seed(n)
    z1 = (torch.randn(n, dim, dtype=torch.float64) * (torch.rand(n, 1, dtype=torch.float64) * 5 + 0.2)).requires_grad_()
    z2 = torch.randn(n, dim, dtype=torch.float64, requires_grad=True)
    ours = nt_xent(z1, z2, temperature)
    grads = torch.autograd.grad(ours, (z1, z2))
    for reference in (_loop, _cross_entropy):
        theirs = reference(z1, z2, temperature)
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
        for a, b in zip(grads, torch.autograd.grad(theirs, (z1, z2))):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_nt_xent_single_pair_is_zero_and_collapse_is_log():
    assert nt_xent(torch.randn(1, 4), torch.randn(1, 4)).item() == 0.0
    same = torch.ones(5, 3, dtype=torch.float64)
    assert abs(nt_xent(same, same, 0.3).item() - math.log(9)) < 1e-12


@pytest.mark.parametrize("call, words", [
    (lambda: nt_xent(torch.randn(3, 4), torch.randn(2, 4)), "same shape"),
    (lambda: nt_xent(torch.randn(3, 4, 2), torch.randn(3, 4, 2)), "(N, D)"),
    (lambda: nt_xent(torch.randn(3, 4), torch.randn(3, 4), 0.0), "temperature > 0"),
    (lambda: nt_xent(torch.randn(3, 4), torch.randn(3, 4), -1.0), "got -1.0"),
    (lambda: grid_sample(torch.randn(2, 1, 5, 5), torch.randn(3, 5, 5, 2)), "(B, Ho, Wo, 2)"),
    (lambda: affine_grid(torch.randn(2, 3, 3), (2, 1, 4, 4)), "(B, 2, 3)"),
    (lambda: hflip(torch.randn(5, 5)), "(B, C, H, W)"),
    (lambda: SimCLRAugment(crop_scale=(0.5, 0.2)), "crop_scale"),
    (lambda: ConvEncoder(8)(torch.randn(2, 3, 28, 28)), "(N, 1, H, W)"),
])
def test_errors_say_what_was_expected(call, words):
    with pytest.raises(ValueError, match=None) as info:
        call()
    assert words in str(info.value), str(info.value)


@pytest.mark.parametrize("shape, out", [((3, 1, 28, 28), (28, 28)), ((2, 3, 9, 7), (5, 11))])
def test_grid_sample_matches_torch_forward_backward(shape, out):
    torch.manual_seed(0)
    theta = (torch.eye(2, 3, dtype=torch.float64) + 0.5 * torch.randn(shape[0], 2, 3, dtype=torch.float64)).requires_grad_()
    images = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    size = (shape[0], shape[1]) + out
    ours = grid_sample(images, affine_grid(theta, size))
    theirs = F.grid_sample(images, F.affine_grid(theta, size, align_corners=False), align_corners=False)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    upstream = torch.randn_like(ours)
    for a, b in zip(torch.autograd.grad(ours, (images, theta), upstream),
                    torch.autograd.grad(theirs, (images, theta), upstream)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_augmentation_invariants():
    torch.manual_seed(0)
    images = torch.rand(8, 1, 28, 28)
    ones, zeros = torch.ones(8), torch.zeros(8)
    full = grid_sample(images, affine_grid(crop_rotate_matrices(ones, ones, zeros, zeros, zeros), images.shape))
    torch.testing.assert_close(full, images, rtol=0, atol=1e-5)
    turned = grid_sample(images, affine_grid(crop_rotate_matrices(ones, ones, zeros, zeros, ones * math.pi / 2),
                                             images.shape))
    torch.testing.assert_close(turned, images.rot90(1, dims=(2, 3)), rtol=0, atol=1e-5)
    assert torch.equal(hflip(hflip(images)), images)
    mask = torch.tensor([True, False] * 4)
    assert torch.equal(hflip(images, mask)[1], images[1]) and torch.equal(hflip(images, mask)[0], images[0].flip(-1))
    assert torch.equal(adjust_brightness_contrast(images, zeros, ones), images)
    assert torch.equal(erase(images, torch.zeros(8, 4, dtype=torch.long)), images)
    erased = erase(images, torch.tensor([[2, 3, 4, 5]] * 8))
    assert (erased[:, :, 2:6, 3:8] == 0).all() and erased.ne(images).sum() <= 8 * 20
    identity = SimCLRAugment(crop_scale=(1, 1), ratio=(1, 1), degrees=0, flip_p=0, brightness=0, contrast=0,
                             jitter_p=0, erase_p=0, mean=0.3, std=0.4)
    normalised = (images - 0.3) / 0.4
    torch.testing.assert_close(identity(normalised), normalised, rtol=0, atol=1e-5)
    augment = SimCLRAugment(mean=0.3, std=0.4)
    a = augment(normalised, torch.Generator().manual_seed(3))
    b = augment(normalised, torch.Generator().manual_seed(3))
    c = augment(normalised, torch.Generator().manual_seed(4))
    assert a.shape == normalised.shape and torch.equal(a, b) and not torch.equal(a, c)
    pixels = a * 0.4 + 0.3
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6


def test_encoder_head_shapes_and_counts():
    model = simclr_small(width=8, hidden_features=16, out_features=12)
    x = torch.randn(5, 1, 28, 28)
    assert model.encoder(x).shape == (5, 32) and model(x).shape == (5, 12)
    assert sum(p.numel() for p in model.encoder.parameters()) == 9 * (8 + 8 * 16 + 16 * 32) + 2 * (8 + 16 + 32)
    assert ProjectionHead(32, 16, 12)(torch.randn(4, 32)).shape == (4, 12)
    loss = nt_xent(model(x), model(x.flip(-1)), 0.5)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
