"""common.models.mae (exported from stage5_selfsupervised/01_mae.ipynb).

No library in our dependencies implements MAE, so every piece is proved by an independent property that can fail:

* random_masking: kept and removed indices partition the tokens, the mask is 0 exactly where tokens are kept,
  un-shuffling restores the input, every sample removes exactly L - int(L (1 - r)) tokens (also for L = 49),
  the smallest noise values are kept, errors for impossible ratios and bad shapes.
* get_2d_sincos_pos_embed: equal to MAE's reference recipe re-derived in NumPy (meshgrid(w, h), the first half of
  the channels from grid[0], i.e. the column), dot products that depend only on the offset, the class row zero.
* patchify against torch.nn.functional.unfold, unpatchify its inverse.
* The encoder sees only the visible patches (bit-identical output whatever the removed ones contain); the decoder
  puts each visible token back at its place and the mask token elsewhere; the loss equals a hand-written loop over
  the removed patches (plain and normalised targets) with zero gradient on visible ones; every parameter gets a
  gradient; gradcheck in float64 through the whole model; state_dict round trip.
* mae_vit_base_patch16's encoder has torchvision vit_b_16's parameters less its learned positions and its head.
* Errors that say what was expected and how to fix it.
"""
import math

import numpy as np
import pytest
import torch
import torchvision
from torch.nn import functional as F

from common.models.mae import (MAEClassifier, MAEFeatures, MaskedAutoencoderViT, get_2d_sincos_pos_embed,
                               mae_vit_base_patch16, mae_vit_tiny_patch7, patchify, random_masking, unpatchify)


def small(**kwargs):
    """A tiny MAE in float64: 12x12 images, 3 channels, 4x4 patches (9 tokens), width 16."""
    config = dict(img_size=12, patch_size=4, in_chans=3, embed_dim=16, depth=2, num_heads=2, decoder_embed_dim=8,
                  decoder_depth=1, decoder_num_heads=2, mlp_ratio=2.0)
    torch.manual_seed(0)
    return MaskedAutoencoderViT(**{**config, **kwargs}).double()


@pytest.mark.parametrize("length, ratio", [(16, 0.75), (49, 0.75), (49, 0.5), (10, 0.7), (7, 0.0)])
def test_random_masking_invariants(length, ratio):
    torch.manual_seed(length)
    tokens = torch.randn(5, length, 3)
    kept, mask, ids_restore, ids_keep = random_masking(tokens, ratio)
    keep = int(length * (1 - ratio))
    ids_shuffle = ids_restore.argsort(dim=1)
    assert torch.equal(ids_shuffle[:, :keep], ids_keep)
    for n in range(5):
        assert sorted(ids_shuffle[n].tolist()) == list(range(length))                     # a permutation
        assert set(ids_keep[n].tolist()).isdisjoint(ids_shuffle[n, keep:].tolist())        # partition
        assert (mask[n] == 0).nonzero().flatten().tolist() == sorted(ids_keep[n].tolist())
        assert torch.equal(kept[n], tokens[n, ids_keep[n]])
    assert torch.equal(mask.sum(dim=1), torch.full((5,), float(length - keep)))             # exact per sample
    removed = tokens.gather(1, ids_shuffle[:, keep:, None].expand(-1, -1, 3))
    restored = torch.cat([kept, removed], dim=1).gather(1, ids_restore[:, :, None].expand(-1, -1, 3))
    assert torch.equal(restored, tokens)


def test_random_masking_keeps_the_smallest_noise():
    noise = torch.tensor([[0.7, 0.2, 0.9, 0.1, 0.5, 0.3]])
    _, mask, _, ids_keep = random_masking(torch.zeros(1, 6, 2), 0.5, noise)
    assert ids_keep.tolist() == [[3, 1, 5]] and mask.tolist() == [[1, 0, 1, 0, 1, 0]]


@pytest.mark.parametrize("call, message", [
    (lambda: random_masking(torch.zeros(2, 16, 4), 1.0), "mask_ratio in [0, 1)"),
    (lambda: random_masking(torch.zeros(2, 16, 4), -0.1), "mask_ratio in [0, 1)"),
    (lambda: random_masking(torch.zeros(2, 3, 4), 0.8), "keeps int(3"),
    (lambda: random_masking(torch.zeros(2, 16), 0.5), "tokens (N, L, D)"),
    (lambda: random_masking(torch.zeros(2, 16, 4), 0.5, torch.rand(2, 15)), "noise of shape (2, 16)"),
])
def test_random_masking_errors(call, message):
    with pytest.raises(ValueError) as error:
        call()
    assert message in str(error.value), str(error.value)


def reference_sincos(embed_dim, grid_size):
    """MAE's recipe as published (NumPy): grid = meshgrid(grid_w, grid_h); emb_h from grid[0], emb_w from grid[1]."""
    grid_h, grid_w = np.arange(grid_size, dtype=np.float64), np.arange(grid_size, dtype=np.float64)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape(2, 1, grid_size, grid_size)

    def one_d(dim, pos):
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)


@pytest.mark.parametrize("embed_dim, grid_size", [(16, 4), (64, 7), (12, 3), (768, 14)])
def test_sincos_against_the_reference_recipe(embed_dim, grid_size):
    ours = get_2d_sincos_pos_embed(embed_dim, grid_size, cls_token=True)
    assert ours.shape == (1 + grid_size ** 2, embed_dim) and torch.equal(ours[0], torch.zeros(embed_dim))
    np.testing.assert_allclose(ours[1:].numpy(), reference_sincos(embed_dim, grid_size), rtol=0, atol=1e-12)


def test_sincos_dot_products_depend_on_the_offset_only():
    table = get_2d_sincos_pos_embed(32, 6)                                       # (36, 32)
    rows, cols = torch.arange(36) // 6, torch.arange(36) % 6
    gram = table @ table.T
    for a in range(36):
        for b in range(36):
            same = (rows == rows[a] - rows[b] + rows[0]) & (cols == cols[a] - cols[b] + cols[0])  # offset from 0
            if same.any():
                assert abs(gram[a, b] - gram[same.nonzero()[0, 0], 0]) < 1e-10
    assert torch.allclose(gram.diagonal(), torch.full((36,), 16.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="divisible by 4"):
        get_2d_sincos_pos_embed(30, 4)


def test_patchify_against_unfold_and_inverse():
    images = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    ours = patchify(images, 4)                                                   # (2, 9, 48)
    reference = F.unfold(images, kernel_size=4, stride=4).transpose(1, 2)        # channel-major inside a patch
    torch.testing.assert_close(ours.reshape(2, 9, 4, 4, 3).permute(0, 1, 4, 2, 3).reshape(2, 9, 48), reference)
    assert torch.equal(unpatchify(ours, 4, 3), images)
    with pytest.raises(ValueError, match="unpatchify expected"):
        unpatchify(ours[:, :8], 4, 3)


def test_encoder_sees_only_the_visible_patches():
    model = small().eval()
    images = torch.randn(3, 3, 12, 12, dtype=torch.float64)
    noise = torch.rand(3, 9)
    latent, mask, _ = model.encoder(images, 0.75, noise)                         # keeps int(9 * 0.25) = 2
    assert latent.shape == (3, 3, 16) and torch.equal(mask.sum(1), torch.full((3,), 7.0, dtype=torch.float64))
    removed = unpatchify(mask[:, :, None].expand(-1, -1, 48), 4, 3).bool()
    assert torch.equal(model.encoder(torch.where(removed, 100 * torch.randn_like(images), images), 0.75, noise)[0],
                       latent)
    assert not torch.allclose(model.encoder(torch.where(removed, images, -images), 0.75, noise)[0], latent)
    in_order = torch.linspace(0, 0.9, 9).expand(3, -1)                           # keeps all, in order
    torch.testing.assert_close(model.encoder(images, 0.0, in_order)[0], model.encoder(images)[0])


def test_decoder_places_tokens_and_mask_token():
    model = small().eval()
    images = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    latent, mask, ids_restore = model.encoder(images, 0.5, torch.rand(2, 9))
    seen = {}
    handle = model.decoder_blocks[0].register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    model.forward_decoder(latent, ids_restore)
    handle.remove()
    embedded, positions = model.decoder_embed(latent), model.decoder_pos_embed[0]
    torch.testing.assert_close(seen["x"][:, 0], embedded[:, 0] + positions[0])   # the class token
    for n in range(2):
        for rank, place in enumerate(ids_restore[n].argsort()[:4].tolist()):
            torch.testing.assert_close(seen["x"][n, 1 + place], embedded[n, 1 + rank] + positions[1 + place])
        for place in (mask[n] == 1).nonzero().flatten().tolist():
            torch.testing.assert_close(seen["x"][n, 1 + place], model.mask_token[0, 0] + positions[1 + place])


@pytest.mark.parametrize("norm_pix", [False, True])
def test_loss_on_removed_patches_only(norm_pix):
    model = small(norm_pix_loss=norm_pix)
    images = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    loss, pred, mask = model(images, 0.75, torch.rand(2, 9))
    pred = pred.detach().requires_grad_()
    loss = model.forward_loss(images, pred, mask)
    target = patchify(images, 4)
    if norm_pix:
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    by_hand = [((pred[n, l] - target[n, l]) ** 2).mean() for n in range(2) for l in range(9) if mask[n, l] == 1]
    torch.testing.assert_close(loss, sum(by_hand) / len(by_hand))
    loss.backward()
    assert torch.all(pred.grad[mask == 0] == 0) and torch.all(pred.grad[mask == 1].abs().sum(-1) > 0)


def test_every_parameter_learns_and_gradcheck():
    model = small()
    loss, _, _ = model(torch.randn(2, 3, 12, 12, dtype=torch.float64), 0.75)
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    tiny = small(embed_dim=8, depth=1, decoder_embed_dim=4, in_chans=1, img_size=8)     # 4 patches
    noise = torch.rand(1, 4)
    images = torch.randn(1, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: tiny(x, 0.5, noise)[0], (images,))


def test_state_dict_round_trip_and_classifier():
    model = small()
    copy = MaskedAutoencoderViT(img_size=12, patch_size=4, in_chans=3, embed_dim=16, depth=2, num_heads=2,
                                decoder_embed_dim=8, decoder_depth=1, decoder_num_heads=2, mlp_ratio=2.0).double()
    copy.load_state_dict(model.state_dict(), strict=True)
    images, noise = torch.randn(2, 3, 12, 12, dtype=torch.float64), torch.rand(2, 9)
    assert torch.equal(copy(images, 0.75, noise)[0], model(images, 0.75, noise)[0])
    assert "encoder.pos_embed" in model.state_dict() and "encoder.pos_embed" not in dict(model.named_parameters())
    classifier = MAEClassifier(model.encoder, num_classes=7).double()
    assert classifier(images).shape == (2, 7)
    assert MAEFeatures(model.encoder, "cls")(images).shape == (2, 16)
    torch.testing.assert_close(MAEFeatures(model.encoder, "mean")(images), model.encoder(images)[0][:, 1:].mean(1))


def test_base_encoder_has_vit_b_16_parameters_without_positions_and_head():
    with torch.device("meta"):
        mae = mae_vit_base_patch16()
        vit = torchvision.models.vit_b_16()
    ours = sum(p.numel() for p in mae.encoder.parameters())
    theirs = sum(p.numel() for p in vit.parameters()) - vit.encoder.pos_embedding.numel() - sum(
        p.numel() for p in vit.heads.parameters())
    assert ours == theirs, (ours, theirs)
    assert mae.encoder.pos_embed.shape == (1, 197, 768) and mae.decoder_pos_embed.shape == (1, 197, 512)


@pytest.mark.parametrize("call, message", [
    (lambda m: m.encoder(torch.zeros(1, 28, 28)), "add the batch dimension with x.unsqueeze(0)"),
    (lambda m: m.encoder(torch.zeros(1, 3, 28, 28)), "build the model with in_chans=3"),
    (lambda m: m.encoder(torch.zeros(1, 1, 32, 32)), "build the model with img_size=32"),
    (lambda m: m.encoder(torch.zeros(1, 1, 28, 28, dtype=torch.uint8)), "x.float()"),
    (lambda m: m(torch.zeros(1, 1, 28, 28), 0.0), "mask_ratio must be > 0"),
    (lambda m: m.encoder.forward_features(torch.zeros(1, 1, 28, 28), "max"), "'mean' or 'cls'"),
    (lambda m: mae_vit_tiny_patch7(patch_size=5), "divisible by patch_size"),
])
def test_errors(call, message):
    torch.manual_seed(0)
    model = mae_vit_tiny_patch7()
    with pytest.raises((ValueError, TypeError)) as error:
        call(model)
    assert message in str(error.value), str(error.value)
