"""common.models.attention_vision: CBAM, the non-local block and local self-attention (stage4 01_attention_in_vision).

No built-in implements CBAM or local self-attention, so each block is checked against a second formulation written
here with other operations (forward and backward, float64), by gradcheck, and by properties a wrong block breaks;
the non-local block against torch's scaled_dot_product_attention on its reshaped projections.
"""
import math

import pytest
import torch

from common import checks
from common.complexity import profile
from common.models.attention_vision import (CBAM, ChannelAttention, LocalAttentionBlock, LocalSelfAttention2d,
                                            NonLocalBlock, SpatialAttention, neighbourhood_mask)
from common.models.efficientnet import SqueezeExcitation


def _same_forward_backward(ours, reference, tensors, seed=0):
    out_ours, out_ref = ours(), reference()
    torch.testing.assert_close(out_ours, out_ref, rtol=1e-10, atol=1e-12)
    cotangent = torch.randn(out_ref.shape, dtype=out_ref.dtype, generator=torch.Generator().manual_seed(seed))
    grads_ours = torch.autograd.grad(out_ours, tensors, cotangent, allow_unused=True)
    grads_ref = torch.autograd.grad(out_ref, tensors, cotangent, allow_unused=True)
    for index, (a, b) in enumerate(zip(grads_ours, grads_ref)):
        assert (a is None) == (b is None), f"gradient {index} exists on one side only"
        if b is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def _with_parameters(module):
    names = [name for name, _ in module.named_parameters()]
    return lambda x, *params: torch.func.functional_call(module, dict(zip(names, params)), (x,))


# ----------------------------------------------------------------------------------------------------- CBAM
def _cbam_reference(x, block):
    """CBAM with other operations: sums, sort for the max, matrix products, 1/(1+exp(-t)), the conv tap by tap."""
    ca, sa = block.channel_gate, block.spatial_gate
    N, C, H, W = x.shape
    sigma = lambda t: 1.0 / (1.0 + torch.exp(-t))

    def mlp(z):
        hidden = z @ ca.fc1.weight.T + ca.fc1.bias
        return (hidden * (hidden > 0)) @ ca.fc2.weight.T + ca.fc2.bias

    average = x.sum(dim=(2, 3)) / (H * W)
    maximum = x.reshape(N, C, -1).sort(dim=2).values[..., -1]
    x = x * sigma(mlp(average) + mlp(maximum))[:, :, None, None]
    pooled = torch.stack([x.sum(1) / C, x.sort(dim=1).values[:, -1]], dim=1)     # (N, 2, H, W)
    k = sa.conv.weight.shape[-1]
    padded = torch.zeros(N, 2, H + k - 1, W + k - 1, dtype=x.dtype)
    padded[:, :, k // 2:k // 2 + H, k // 2:k // 2 + W] = pooled
    logit = sum(sa.conv.weight[0, c, a, b] * padded[:, c, a:a + H, b:b + W]
                for c in range(2) for a in range(k) for b in range(k))
    return x * sigma(logit)[:, None]


@pytest.mark.parametrize("channels, reduction, kernel, size", [(12, 4, 7, (9, 7)), (10, 3, 3, (5, 11)),
                                                                (6, 16, 7, (3, 3)), (1, 1, 5, (1, 8))])
def test_cbam_matches_an_independent_formulation(channels, reduction, kernel, size):
    generator = torch.Generator().manual_seed(channels)
    block = CBAM(channels, reduction, kernel).double()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.5, generator=generator)
    x = torch.randn(3, channels, *size, dtype=torch.float64, generator=generator, requires_grad=True)
    _same_forward_backward(lambda: block(x), lambda: _cbam_reference(x, block), [x, *block.parameters()])


def test_cbam_gradcheck():
    block = CBAM(4, 2, 3).double()
    x = torch.randn(2, 4, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    checks.gradcheck(_with_parameters(block), x, *block.parameters(), title="CBAM")


def test_cbam_gates_invariances_and_the_link_to_squeeze_excitation():
    generator = torch.Generator().manual_seed(1)
    block = CBAM(16, 4).double()
    x = torch.randn(2, 16, 6, 5, dtype=torch.float64, generator=generator)
    pixels, channels = torch.randperm(30, generator=generator), torch.randperm(16, generator=generator)
    gate = block.channel_gate(x)
    torch.testing.assert_close(block.channel_gate(x.flatten(2)[:, :, pixels].reshape(x.shape)), gate)
    torch.testing.assert_close(block.spatial_gate(x[:, channels]), block.spatial_gate(x))
    assert gate.shape == (2, 16, 1, 1) and block.spatial_gate(x).shape == (2, 1, 6, 5)
    # a spatially varying map does change the spatial gate when its pixels move (the check above can fail)
    assert not torch.allclose(block.spatial_gate(x.flatten(2)[:, :, pixels].reshape(x.shape)), block.spatial_gate(x))
    se = SqueezeExcitation(16, 4).double()
    with torch.no_grad():
        for mine, theirs in ((block.channel_gate.fc1, se.fc1), (block.channel_gate.fc2, se.fc2)):
            mine.weight.copy_(theirs.weight[:, :, 0, 0])
            mine.bias.copy_(theirs.bias)
    average_only = 1 / (1 + torch.exp(-block.channel_gate.mlp(x.mean(dim=(2, 3)))))
    torch.testing.assert_close(average_only[:, :, None, None], se._scale(x))


def test_cbam_cost_is_counted():
    assert profile(CBAM(64, 8), (1, 64, 14, 14)).macs == 4 * 64 * 8 + 2 * 49 * 14 * 14


# -------------------------------------------------------------------------------------------- non-local block
def _non_local_reference(block, x):
    N, _, H, W = x.shape
    theta, phi, g = (conv(x).flatten(2).transpose(1, 2) for conv in (block.theta, block.phi, block.g))
    y = torch.nn.functional.scaled_dot_product_attention(theta, phi, g, scale=1.0)
    return x + block.bn(block.W_z(y.transpose(1, 2).reshape(N, -1, H, W)))


@pytest.mark.parametrize("channels, inter, size, train", [(6, 3, (5, 7), True), (8, 5, (4, 9), False),
                                                          (5, None, (1, 6), True), (3, 7, (3, 3), False)])
def test_non_local_matches_scaled_dot_product_attention(channels, inter, size, train):
    generator = torch.Generator().manual_seed(channels)
    block = NonLocalBlock(channels, inter).double().train(train)
    with torch.no_grad():
        block.bn.weight.uniform_(0.5, 1.5, generator=generator)
        block.bn.bias.uniform_(-0.5, 0.5, generator=generator)
        block.bn.running_mean.uniform_(-0.5, 0.5, generator=generator)
        block.bn.running_var.uniform_(0.5, 1.5, generator=generator)
    x = torch.randn(2, channels, *size, dtype=torch.float64, generator=generator, requires_grad=True)
    _same_forward_backward(lambda: block(x), lambda: _non_local_reference(block, x), [x, *block.parameters()])
    weights = block.attention(x)
    assert weights.shape == (2, size[0] * size[1], size[0] * size[1])
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, size[0] * size[1], dtype=torch.float64))


def test_non_local_gradcheck():
    block = NonLocalBlock(4, 3).double().eval()
    with torch.no_grad():
        block.bn.weight.fill_(0.7)
    x = torch.randn(2, 4, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    checks.gradcheck(_with_parameters(block), x, *block.parameters(), title="NonLocalBlock")


@pytest.mark.parametrize("make", [lambda: NonLocalBlock(16), lambda: LocalAttentionBlock(16, 5, 2)])
@pytest.mark.parametrize("train", [True, False])
def test_blocks_start_as_the_identity(make, train):
    block = make().train(train)
    x = torch.randn(4, 16, 7, 6, requires_grad=True)
    z = block(x)
    assert torch.equal(z, x)
    cotangent = torch.randn(z.shape)
    z.backward(cotangent)
    assert torch.equal(x.grad, cotangent)                  # the branch passes no gradient back while gamma = 0
    moving = sorted(name for name, p in block.named_parameters() if p.grad is not None and p.grad.abs().max() > 0)
    assert moving == ["bn.bias", "bn.weight"], moving


def test_non_local_cost_is_counted():
    for side in (5, 14):
        hw = side * side
        assert profile(NonLocalBlock(32), (1, 32, side, side)).macs == 4 * hw * 32 * 16 + 2 * hw ** 2 * 16


# ------------------------------------------------------------------------------------ local self-attention
def _masked_global_reference(layer, x, use_mask=True):
    N, _, H, W = x.shape
    heads, d, p = layer.heads, layer.head_dim, layer.kernel_size // 2
    Q, K, V = (conv(x).reshape(N, heads, d, H * W).transpose(2, 3) for conv in (layer.query, layer.key, layer.value))
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    dy = ys.flatten()[None, :] - ys.flatten()[:, None]
    dx = xs.flatten()[None, :] - xs.flatten()[:, None]
    allowed = (dy.abs() <= p) & (dx.abs() <= p)
    r = torch.cat([layer.row_embedding[:, (dy + p).clamp(0, 2 * p)],
                   layer.column_embedding[:, (dx + p).clamp(0, 2 * p)]], dim=-1)       # (heads, HW, HW, d)
    bias = torch.einsum("nhpd,hpqd->nhpq", Q, r) / math.sqrt(d)
    if use_mask:
        bias = bias.masked_fill(~allowed, float("-inf"))
    else:
        assert allowed.all()
    Y = torch.nn.functional.scaled_dot_product_attention(Q, K, V, attn_mask=bias)
    return Y.transpose(2, 3).reshape(N, heads * d, H, W)


@pytest.mark.parametrize("c_in, c_out, k, heads, size", [(6, 8, 3, 2, (5, 7)), (5, 6, 5, 1, (6, 4)),
                                                         (4, 12, 7, 3, (9, 8)), (3, 4, 3, 1, (1, 5)),
                                                         (2, 4, 9, 2, (2, 3))])
def test_local_attention_is_masked_global_attention(c_in, c_out, k, heads, size):
    generator = torch.Generator().manual_seed(k + c_in)
    layer = LocalSelfAttention2d(c_in, c_out, k, heads).double()
    x = torch.randn(2, c_in, *size, dtype=torch.float64, generator=generator, requires_grad=True)
    _same_forward_backward(lambda: layer(x), lambda: _masked_global_reference(layer, x), [x, *layer.parameters()])


def test_a_kernel_covering_the_map_is_global_attention():
    H, W = 4, 6
    layer = LocalSelfAttention2d(5, 8, 2 * max(H, W) - 1, 2).double()
    x = torch.randn(2, 5, H, W, dtype=torch.float64, requires_grad=True)
    assert neighbourhood_mask(H, W, layer.kernel_size).sum(0).eq(H * W).all()
    assert not neighbourhood_mask(H, W, layer.kernel_size - 2).sum(0).eq(H * W).all()
    _same_forward_backward(lambda: layer(x), lambda: _masked_global_reference(layer, x, use_mask=False),
                           [x, *layer.parameters()])
    with torch.no_grad():
        layer.row_embedding.zero_()
        layer.column_embedding.zero_()
    Q, K, V = (conv(x).reshape(2, 2, 4, H * W).transpose(2, 3) for conv in (layer.query, layer.key, layer.value))
    plain = torch.nn.functional.scaled_dot_product_attention(Q, K, V).transpose(2, 3).reshape(2, 8, H, W)
    _same_forward_backward(lambda: layer(x), lambda: plain, [x, layer.query.weight, layer.key.weight])


def test_neighbourhood_mask_by_counting():
    mask = neighbourhood_mask(5, 4, 3)                     # (9, 5, 4)
    assert mask.shape == (9, 5, 4)
    counts = mask.sum(0)
    assert counts[0, 0] == 4 and counts[0, 1] == 6 and counts[2, 2] == 9 and counts[4, 3] == 4
    assert mask[4].all()                                   # the centre (offset 0, 0) is always inside
    assert not mask[0, 0, 0] and mask[8, 0, 0]             # offset (-1, -1) leaves the corner, (+1, +1) does not


def test_local_attention_gradcheck_and_cost():
    layer = LocalSelfAttention2d(3, 4, 3, 2).double()
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    checks.gradcheck(_with_parameters(layer), x, *layer.parameters(), title="LocalSelfAttention2d")
    assert profile(LocalSelfAttention2d(8, 6, 5, 1), (1, 8, 7, 9)).macs == 3 * 63 * 8 * 6 + 3 * 63 * 25 * 6
    assert profile(LocalAttentionBlock(32, 7), (1, 32, 14, 14)).macs == 4 * 196 * 32 * 16 + 3 * 196 * 49 * 16


def test_relative_embedding_layout():
    layer = LocalSelfAttention2d(4, 8, 3, 2)
    r = layer.relative_embedding()                          # (heads, d, k*k)
    assert r.shape == (2, 4, 9)
    a, b = 2, 0                                             # neighbour m = a k + b: offset (+1, -1)
    torch.testing.assert_close(r[1, :, a * 3 + b], torch.cat([layer.row_embedding[1, a], layer.column_embedding[1, b]]))


# ----------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("call, words", [
    (lambda: CBAM(8)(torch.randn(8, 5, 5)), "unsqueeze(0)"),
    (lambda: CBAM(8)(torch.randn(2, 4, 5, 5)), "channels=4"),
    (lambda: CBAM(8)(torch.zeros(2, 8, 5, 5, dtype=torch.long)), "x.float()"),
    (lambda: CBAM(8)("image"), "torch.Tensor"),
    (lambda: CBAM(0), "positive int"),
    (lambda: SpatialAttention(4), "odd kernel_size"),
    (lambda: ChannelAttention(8, reduction=0), "reduction"),
    (lambda: NonLocalBlock(8)(torch.randn(2, 8, 5)), "(N, C, H, W)"),
    (lambda: NonLocalBlock(8, inter_channels=0), "inter_channels"),
    (lambda: LocalSelfAttention2d(8, 8, 4), "odd kernel_size"),
    (lambda: LocalSelfAttention2d(8, 6, 3, heads=2), "even head size"),
    (lambda: LocalSelfAttention2d(8, 8, 3, heads=3), "divisible by heads"),
    (lambda: LocalAttentionBlock(8, 3)(torch.randn(1, 6, 4, 4)), "channels=6"),
])
def test_bad_input_errors_say_what_and_how(call, words):
    with pytest.raises(ValueError, match=None) as info:
        call()
    assert words in str(info.value), str(info.value)
