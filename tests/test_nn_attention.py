"""common.nn.attention (stage1_advanced/01_attention.ipynb) against torch.

scaled_dot_product_attention vs torch.nn.functional.scaled_dot_product_attention and
MultiheadAttention vs torch.nn.MultiheadAttention with copied weights (both directions):
outputs, attention weights, gradients of every input, float mask and parameter, over a grid of
configurations; plus the error messages.
"""
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from common.checks import assert_same_function, assert_same_module
from common.nn import MultiheadAttention
from common.nn.functional import scaled_dot_product_attention

# torch warns when key_padding_mask and attn_mask differ in dtype (bool and float): the tests do that on purpose
pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask and attn_mask")

F64 = torch.float64
F32 = torch.float32


def _randn(*shape, dtype=F64, seed=None):
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return torch.randn(*shape, dtype=dtype, generator=generator)


# ----------------------------------------------------------------------------------------------
# scaled_dot_product_attention
# ----------------------------------------------------------------------------------------------

def _random_bool_mask(shape, seed, keep=0.6):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=generator) < keep


SDPA_SHAPES = [
    # (query, key, value) shapes: leading dims, L != S, Ev != E, broadcasting batch dims
    ((2, 3, 4, 8), (2, 3, 5, 8), (2, 3, 5, 6)),
    ((5, 8), (7, 8), (7, 3)),                       # no batch dims
    ((3, 1, 8), (3, 1, 8), (3, 1, 8)),              # L = S = 1
    ((2, 2, 2, 6, 4), (2, 2, 2, 3, 4), (2, 2, 2, 3, 5)),  # 3 leading dims, L > S
    ((2, 3, 4, 8), (1, 3, 6, 8), (1, 3, 6, 8)),     # key/value broadcast over the batch
    ((2, 3, 4, 8), (3, 6, 8), (3, 6, 2)),           # key/value with fewer dims
]


@pytest.mark.parametrize("shapes", SDPA_SHAPES, ids=lambda s: "x".join(map(str, s[0])) + "-" + "x".join(map(str, s[1])))
@pytest.mark.parametrize("mask_kind", ["none", "bool", "bool-broadcast", "float", "float-broadcast", "causal"])
@pytest.mark.parametrize("scale", [None, 0.3])
def test_sdpa_matches_torch_float64(shapes, mask_kind, scale):
    q_shape, k_shape, v_shape = shapes
    query, key, value = _randn(*q_shape, seed=1), _randn(*k_shape, seed=2), _randn(*v_shape, seed=3)
    scores_shape = torch.broadcast_shapes(q_shape[:-2], k_shape[:-2]) + (q_shape[-2], k_shape[-2])
    kwargs = {"scale": scale}
    inputs = [query, key, value]
    if mask_kind == "bool":
        kwargs["attn_mask"] = _random_bool_mask(scores_shape, seed=4)
    elif mask_kind == "bool-broadcast":
        # one row (1, S) for every query and batch element; key 0 always allowed
        kwargs["attn_mask"] = _random_bool_mask((1, scores_shape[-1]), seed=4) | (torch.arange(scores_shape[-1]) == 0)
    elif mask_kind in ("float", "float-broadcast"):
        shape = scores_shape if mask_kind == "float" else (1,) * (len(scores_shape) - 2) + scores_shape[-2:]
        inputs.append(_randn(*shape, seed=5))      # an additive bias: its gradient is compared too
    elif mask_kind == "causal":
        kwargs["is_causal"] = True

    def ours(q, k, v, *mask):
        return scaled_dot_product_attention(q, k, v, *mask, **kwargs)

    def theirs(q, k, v, *mask):
        return F.scaled_dot_product_attention(q, k, v, *mask, **kwargs)

    report = assert_same_function(ours, theirs, *inputs, rtol=1e-10, atol=1e-12)
    assert report.rows and all(diff < 1e-10 for _, _, diff in report.rows)
    assert len(report.rows) == 1 + len(inputs)     # the output and the gradient of every input


@pytest.mark.parametrize("mask_kind", ["none", "bool", "float", "causal"])
def test_sdpa_matches_torch_float32(mask_kind):
    query, key, value = _randn(4, 2, 9, 16, dtype=F32, seed=1), _randn(4, 2, 11, 16, dtype=F32, seed=2), \
        _randn(4, 2, 11, 16, dtype=F32, seed=3)
    kwargs = {}
    if mask_kind == "bool":
        kwargs["attn_mask"] = _random_bool_mask((4, 1, 9, 11), seed=4)
    elif mask_kind == "float":
        kwargs["attn_mask"] = _randn(9, 11, dtype=F32, seed=5)
    elif mask_kind == "causal":
        kwargs["is_causal"] = True
    assert_same_function(scaled_dot_product_attention, F.scaled_dot_product_attention, query, key, value,
                         kwargs=kwargs)


@pytest.mark.parametrize("length, source_length", [(3, 7), (7, 3), (5, 5), (1, 4), (4, 1)])
def test_sdpa_causal_is_top_left_aligned(length, source_length):
    query, key, value = _randn(2, length, 4, seed=1), _randn(2, source_length, 4, seed=2), \
        _randn(2, source_length, 4, seed=3)
    assert_same_function(scaled_dot_product_attention, F.scaled_dot_product_attention, query, key, value,
                         kwargs={"is_causal": True}, rtol=1e-10, atol=1e-12)
    explicit = torch.ones(length, source_length, dtype=torch.bool).tril()
    torch.testing.assert_close(scaled_dot_product_attention(query, key, value, is_causal=True),
                               scaled_dot_product_attention(query, key, value, attn_mask=explicit))


@pytest.mark.parametrize("kind", ["bool", "float"])
def test_sdpa_fully_masked_rows_are_zero_like_torch(kind):
    query, key, value = _randn(2, 3, 4, 8, seed=1), _randn(2, 3, 5, 8, seed=2), _randn(2, 3, 5, 6, seed=3)
    allowed = _random_bool_mask((2, 3, 4, 5), seed=4)
    allowed[0, 1, 2] = False                 # one query that may attend to nothing
    allowed[1, :, 0] = False                 # and the first query of a whole batch element
    mask = allowed if kind == "bool" else torch.zeros(allowed.shape, dtype=F64).masked_fill(~allowed, -math.inf)
    inputs = (query, key, value) if kind == "bool" else (query, key, value, mask)
    kwargs = {"attn_mask": mask} if kind == "bool" else {}
    assert_same_function(scaled_dot_product_attention, F.scaled_dot_product_attention, *inputs, kwargs=kwargs,
                         rtol=1e-10, atol=1e-12)
    output = scaled_dot_product_attention(query, key, value, attn_mask=mask)
    assert torch.isfinite(output).all()
    assert (output[0, 1, 2] == 0).all() and (output[1, :, 0] == 0).all()


def test_sdpa_gradients_of_fully_masked_rows_are_zero_not_nan():
    query = _randn(3, 4, 8, seed=1).requires_grad_()
    key, value = _randn(3, 5, 8, seed=2).requires_grad_(), _randn(3, 5, 8, seed=3).requires_grad_()
    mask = torch.ones(3, 4, 5, dtype=torch.bool)
    mask[:, 1] = False
    scaled_dot_product_attention(query, key, value, attn_mask=mask).sum().backward()
    for tensor in (query, key, value):
        assert torch.isfinite(tensor.grad).all()
    assert (query.grad[:, 1] == 0).all()


def test_sdpa_gqa_matches_torch():
    query, key, value = _randn(2, 6, 4, 8, seed=1), _randn(2, 2, 5, 8, seed=2), _randn(2, 2, 5, 3, seed=3)
    assert_same_function(scaled_dot_product_attention, F.scaled_dot_product_attention, query, key, value,
                         kwargs={"enable_gqa": True, "is_causal": True}, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dropout_p", [0.2, 0.7, 1.0])
def test_sdpa_dropout_draws_the_same_mask_as_torch(dropout_p):
    query, key, value = _randn(2, 3, 6, 8, seed=1), _randn(2, 3, 7, 8, seed=2), _randn(2, 3, 7, 5, seed=3)
    # assert_same_function starts both from the same RNG state: the same elements are dropped
    assert_same_function(scaled_dot_product_attention, F.scaled_dot_product_attention, query, key, value,
                         kwargs={"dropout_p": dropout_p, "attn_mask": _random_bool_mask((6, 7), seed=4)},
                         rtol=1e-10, atol=1e-12)


def test_sdpa_dropout_is_random_and_unbiased():
    query, key, value = _randn(1, 6, 8, seed=1), _randn(1, 7, 8, seed=2), _randn(1, 7, 5, seed=3)
    clean = scaled_dot_product_attention(query, key, value)
    torch.manual_seed(0)
    draws = torch.stack([scaled_dot_product_attention(query, key, value, dropout_p=0.3) for _ in range(4000)])
    assert not torch.allclose(draws[0], draws[1])
    # inverted dropout keeps the expectation: mean of 4000 draws within a few standard errors of the clean output
    standard_error = draws.std(dim=0) / math.sqrt(len(draws))
    assert ((draws.mean(dim=0) - clean).abs() <= 5 * standard_error + 1e-12).all()


def test_sdpa_errors():
    q, k, v = torch.randn(2, 4, 8), torch.randn(2, 5, 8), torch.randn(2, 5, 6)
    with pytest.raises(ValueError, match=r"same E.*\(2, 4, 8\).*\(2, 5, 7\)"):
        scaled_dot_product_attention(q, torch.randn(2, 5, 7), v)
    with pytest.raises(ValueError, match=r"same S.*\(2, 5, 8\).*\(2, 6, 6\)"):
        scaled_dot_product_attention(q, k, torch.randn(2, 6, 6))
    with pytest.raises(ValueError, match=r"at least 2 dimensions.*\(8,\)"):
        scaled_dot_product_attention(torch.randn(8), torch.randn(8), torch.randn(8))
    with pytest.raises(ValueError, match=r"broadcast to the attention scores.*\(2, 4, 5\).*\(3, 5\)"):
        scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(3, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"broadcast to the attention scores.*\(1, 2, 4, 5\)"):
        scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(1, 2, 4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="both attn_mask and is_causal"):
        scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(4, 5, dtype=torch.bool), is_causal=True)
    with pytest.raises(TypeError, match=r"attn_mask of dtype torch.bool or torch.float32.*torch.int64"):
        scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(4, 5, dtype=torch.long))
    with pytest.raises(TypeError, match=r"attn_mask of dtype torch.bool or torch.float32.*torch.float64"):
        scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(4, 5, dtype=F64))
    with pytest.raises(TypeError, match="one dtype"):
        scaled_dot_product_attention(q, k.double(), v)
    with pytest.raises(TypeError, match="floating-point query"):
        scaled_dot_product_attention(q.long(), k, v)
    with pytest.raises(ValueError, match=r"dropout_p in \[0, 1\]"):
        scaled_dot_product_attention(q, k, v, dropout_p=1.5)
    with pytest.raises(ValueError, match="enable_gqa"):
        scaled_dot_product_attention(torch.randn(2, 5, 4, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8),
                                     enable_gqa=True)


# ----------------------------------------------------------------------------------------------
# MultiheadAttention
# ----------------------------------------------------------------------------------------------

def _pair(dtype=F64, seed=0, **kwargs):
    """A torch.nn.MultiheadAttention with random (non-zero) biases and ours, both in dtype."""
    torch.manual_seed(seed)
    theirs = nn.MultiheadAttention(**kwargs, dtype=dtype)
    with torch.no_grad():
        for name, param in theirs.named_parameters():
            if "bias" in name:
                param.normal_(0.0, 0.5)    # torch initialises them to 0: a bug in their use would hide
    ours = MultiheadAttention(**kwargs, dtype=dtype)
    return ours, theirs


def _mha_inputs(batch, length, source_length, embed_dim, kdim, vdim, batch_first, batched, dtype, seed=0,
                self_attention=False):
    def shape(seq, features):
        if not batched:
            return (seq, features)
        return (batch, seq, features) if batch_first else (seq, batch, features)

    query = _randn(*shape(length, embed_dim), dtype=dtype, seed=seed + 1)
    if self_attention:
        return (query,)
    return (query, _randn(*shape(source_length, kdim), dtype=dtype, seed=seed + 2),
            _randn(*shape(source_length, vdim), dtype=dtype, seed=seed + 3))


def _masks(kind, batch, heads, length, source_length, batched, dtype, seed=0):
    """A key_padding_mask and an attn_mask of the kind asked for (MHA convention: bool True = masked out)."""
    generator = torch.Generator().manual_seed(seed)
    padding_shape = (batch, source_length) if batched else (source_length,)
    padding = torch.rand(padding_shape, generator=generator) < 0.3
    padding[..., 0] = False                                        # every query keeps at least one key
    per_head = (batch * heads if batched else heads, length, source_length)
    kpm = attn = None
    if "kpm_bool" in kind:
        kpm = padding
    if "kpm_float" in kind:
        kpm = torch.zeros(padding_shape, dtype=dtype).masked_fill(padding, -math.inf)
        kpm = kpm + 0.5 * torch.rand(padding_shape, generator=generator, dtype=dtype)
    if "attn2d_bool" in kind:
        attn = torch.rand(length, source_length, generator=generator) < 0.3
        attn[:, 0] = False
    if "attn3d_bool" in kind:
        attn = torch.rand(per_head, generator=generator) < 0.3
        attn[..., 0] = False
    if "attn2d_float" in kind:
        attn = torch.randn(length, source_length, generator=generator, dtype=dtype)
    if "attn3d_float" in kind:
        attn = torch.randn(per_head, generator=generator, dtype=dtype)
    if "causal" in kind:
        attn = torch.ones(length, source_length, dtype=torch.bool).triu(1)  # True above the diagonal = masked
    return kpm, attn


MASK_KINDS = ["none", "kpm_bool", "kpm_float", "attn2d_bool", "attn3d_bool", "attn2d_float", "attn3d_float",
              "kpm_bool+attn2d_bool", "kpm_bool+attn3d_float", "kpm_float+attn2d_float", "kpm_float+attn3d_bool"]


def _compare_mha(ours, theirs, inputs, kwargs, *, train=False, rtol=1e-10, atol=1e-12, direction="theirs->ours"):
    """assert_same_module copies the state_dict (either direction) and compares outputs and all gradients."""
    if direction == "ours->theirs":
        assert_same_module(theirs, ours, *inputs, forward_kwargs=kwargs, train=train, rtol=rtol, atol=atol)
        return assert_same_module(ours, theirs, *inputs, forward_kwargs=kwargs, train=train, load_state=False,
                                  rtol=rtol, atol=atol)
    return assert_same_module(ours, theirs, *inputs, forward_kwargs=kwargs, train=train, rtol=rtol, atol=atol)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
@pytest.mark.parametrize("need_weights, average", [(True, True), (True, False), (False, True)])
def test_mha_masks_and_weights(batch_first, mask_kind, need_weights, average):
    batch, heads, embed_dim, length, source_length = 3, 2, 8, 4, 6
    ours, theirs = _pair(embed_dim=embed_dim, num_heads=heads, batch_first=batch_first)
    inputs = _mha_inputs(batch, length, source_length, embed_dim, embed_dim, embed_dim, batch_first, True, F64)
    kpm, attn = _masks(mask_kind, batch, heads, length, source_length, True, F64)
    kwargs = {"key_padding_mask": kpm, "attn_mask": attn, "need_weights": need_weights,
              "average_attn_weights": average}
    report = _compare_mha(ours, theirs, inputs, kwargs)
    names = [row[0] for row in report.rows]
    assert ("output[1]" in names) == need_weights
    assert {"grad input[0]", "grad input[1]", "grad input[2]", "grad in_proj_weight", "grad in_proj_bias",
            "grad out_proj.weight", "grad out_proj.bias"} <= set(names)


@pytest.mark.parametrize("config", [
    dict(kdim=5, vdim=7),
    dict(kdim=5, vdim=7, bias=False),
    dict(kdim=8, vdim=3),
    dict(bias=False),
    dict(add_bias_kv=True),
    dict(add_zero_attn=True),
    dict(add_bias_kv=True, add_zero_attn=True, kdim=6, vdim=6),
    dict(num_heads=1),
    dict(num_heads=4),
    dict(num_heads=8),
], ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("direction", ["theirs->ours", "ours->theirs"])
def test_mha_configurations(config, batched, batch_first, direction):
    config = {"num_heads": 2, **config}
    embed_dim, batch, length, source_length = 8, 2, 5, 3
    kdim, vdim = config.get("kdim", embed_dim), config.get("vdim", embed_dim)
    ours, theirs = _pair(embed_dim=embed_dim, batch_first=batch_first, **config)
    inputs = _mha_inputs(batch, length, source_length, embed_dim, kdim, vdim, batch_first, batched, F64)
    kpm, attn = _masks("kpm_bool+attn3d_float", batch, config["num_heads"], length, source_length, batched, F64)
    for kwargs in ({}, {"key_padding_mask": kpm, "attn_mask": attn, "average_attn_weights": False},
                   {"key_padding_mask": kpm, "need_weights": False}):
        _compare_mha(ours, theirs, inputs, kwargs, direction=direction)
    expected = {"out_proj.weight"} | ({"out_proj.bias", "in_proj_bias"} if config.get("bias", True) else set())
    expected |= {"in_proj_weight"} if kdim == vdim == embed_dim else {"q_proj_weight", "k_proj_weight", "v_proj_weight"}
    expected |= {"bias_k", "bias_v"} if config.get("add_bias_kv") else set()
    assert set(ours.state_dict()) == set(theirs.state_dict()) == expected


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("same_tensor", [True, False])
def test_mha_self_attention(batch_first, same_tensor):
    """query is key is value takes the one-matmul path; the same values as separate tensors must agree."""
    ours, theirs = _pair(embed_dim=12, num_heads=3, batch_first=batch_first)
    (x,) = _mha_inputs(4, 7, 7, 12, 12, 12, batch_first, True, F64, self_attention=True)

    class SelfAttention(nn.Module):
        def __init__(self, attention):
            super().__init__()
            self.attention = attention

        def forward(self, x):
            return self.attention(x, x, x) if same_tensor else self.attention(x, x.clone(), x.clone())

    _compare_mha(SelfAttention(ours), SelfAttention(theirs), (x,), {})


@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("with_padding", [True, False])
@pytest.mark.parametrize("batch_first", [False, True])
def test_mha_is_causal_hint(need_weights, with_padding, batch_first):
    batch, heads, embed_dim, length = 2, 2, 8, 5
    ours, theirs = _pair(embed_dim=embed_dim, num_heads=heads, batch_first=batch_first)
    inputs = _mha_inputs(batch, length, length, embed_dim, embed_dim, embed_dim, batch_first, True, F64)
    kpm, causal = _masks("kpm_bool+causal", batch, heads, length, length, True, F64)
    kwargs = {"attn_mask": causal, "is_causal": True, "need_weights": need_weights,
              "key_padding_mask": kpm if with_padding else None}
    _compare_mha(ours, theirs, inputs, kwargs)


@pytest.mark.parametrize("need_weights", [True, False])
def test_mha_fully_masked_queries_behave_as_torch(need_weights):
    """torch: NaN where the weights are returned (plain softmax), 0 where they are not (SDPA). Ours too."""
    ours, theirs = _pair(embed_dim=8, num_heads=2, batch_first=True)
    inputs = _mha_inputs(2, 4, 5, 8, 8, 8, True, True, F64)
    attn = torch.zeros(4, 5, dtype=torch.bool)
    attn[2] = True                                                 # query 2 may attend to nothing
    kwargs = {"attn_mask": attn, "need_weights": need_weights}
    _compare_mha(ours, theirs, inputs, kwargs)     # outputs and gradients, NaN where torch has NaN
    out_ours, weights_ours = ours(*inputs, **kwargs)
    out_theirs, weights_theirs = theirs(*inputs, **kwargs)
    torch.testing.assert_close(out_ours, out_theirs, equal_nan=True, rtol=1e-10, atol=1e-12)
    assert bool(out_ours[:, 2].isnan().all()) is need_weights
    if need_weights:
        torch.testing.assert_close(weights_ours, weights_theirs, equal_nan=True)
        assert weights_ours[:, 2].isnan().all()
    else:
        assert weights_ours is None and (out_ours[:, 2] == ours.out_proj.bias).all()


@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("batch_first", [False, True])
def test_mha_float32(need_weights, batch_first):
    ours, theirs = _pair(dtype=F32, embed_dim=32, num_heads=4, batch_first=batch_first, kdim=16, vdim=24)
    inputs = _mha_inputs(8, 9, 11, 32, 16, 24, batch_first, True, F32)
    kpm, attn = _masks("kpm_bool+attn2d_float", 8, 4, 9, 11, True, F32)
    _compare_mha(ours, theirs, inputs, {"key_padding_mask": kpm, "attn_mask": attn.float(),
                                        "need_weights": need_weights}, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("need_weights", [True, False])
def test_mha_dropout_train_and_eval(need_weights):
    ours, theirs = _pair(embed_dim=8, num_heads=2, dropout=0.4, batch_first=True)
    inputs = _mha_inputs(3, 5, 6, 8, 8, 8, True, True, F64)
    kpm, _ = _masks("kpm_bool", 3, 2, 5, 6, True, F64)
    kwargs = {"key_padding_mask": kpm, "need_weights": need_weights}
    # training: both start from the same RNG state, so the same attention weights are dropped
    _compare_mha(ours, theirs, inputs, kwargs, train=True)
    # evaluation: no dropout, deterministic
    _compare_mha(ours, theirs, inputs, kwargs, train=False)
    ours.eval()
    first, second = ours(*inputs, **kwargs)[0], ours(*inputs, **kwargs)[0]
    assert torch.equal(first, second)
    ours.train()
    torch.manual_seed(1)
    first = ours(*inputs, **kwargs)[0]
    second = ours(*inputs, **kwargs)[0]
    assert not torch.allclose(first, second)


@pytest.mark.parametrize("kwargs", [
    dict(embed_dim=8, num_heads=2),
    dict(embed_dim=8, num_heads=2, kdim=3, vdim=5, bias=False),
    dict(embed_dim=6, num_heads=3, add_bias_kv=True),
])
def test_mha_same_seed_same_initialisation_as_torch(kwargs):
    torch.manual_seed(123)
    theirs = nn.MultiheadAttention(**kwargs)
    torch.manual_seed(123)
    ours = MultiheadAttention(**kwargs)
    theirs_state = theirs.state_dict()
    for name, tensor in ours.state_dict().items():
        assert torch.equal(tensor, theirs_state[name]), name


def test_mha_attributes():
    ours = MultiheadAttention(12, 3, dropout=0.1, kdim=4, vdim=5, batch_first=True)
    theirs = nn.MultiheadAttention(12, 3, dropout=0.1, kdim=4, vdim=5, batch_first=True)
    for attribute in ("embed_dim", "kdim", "vdim", "num_heads", "head_dim", "dropout", "batch_first",
                      "_qkv_same_embed_dim", "add_zero_attn"):
        assert getattr(ours, attribute) == getattr(theirs, attribute), attribute
    assert ours.in_proj_weight is None and ours.bias_k is None


def test_mha_errors():
    with pytest.raises(ValueError, match=r"divisible by num_heads.*embed_dim=10 and num_heads=3"):
        MultiheadAttention(10, 3)
    with pytest.raises(ValueError, match="greater|> 0"):
        MultiheadAttention(0, 1)
    attention = MultiheadAttention(8, 2, kdim=4, vdim=6)
    q, k, v = torch.randn(5, 2, 8), torch.randn(3, 2, 4), torch.randn(3, 2, 6)
    attention(q, k, v)
    with pytest.raises(ValueError, match=r"query with embed_dim=8.*\(5, 2, 7\)"):
        attention(torch.randn(5, 2, 7), k, v)
    with pytest.raises(ValueError, match=r"key with kdim=4.*\(3, 2, 8\)"):
        attention(q, torch.randn(3, 2, 8), v)
    with pytest.raises(ValueError, match=r"value with vdim=6.*\(3, 2, 4\)"):
        attention(q, k, torch.randn(3, 2, 4))
    with pytest.raises(ValueError, match=r"query \(L, N, E\) or unbatched \(L, E\).*\(1, 5, 2, 8\)"):
        attention(q.unsqueeze(0), k, v)
    with pytest.raises(ValueError, match="key and value with the query's 3 dimensions"):
        attention(q, k[:, 0], v)
    with pytest.raises(ValueError, match="same batch size and source length"):
        attention(q, k, torch.randn(4, 2, 6))
    with pytest.raises(ValueError, match=r"same batch size N in \(L, N, E\)"):
        attention(q, torch.randn(3, 3, 4), torch.randn(3, 3, 6))
    with pytest.raises(ValueError, match=r"key_padding_mask of shape \(2, 3\) \(N, S\) or \(S,\), got \(3, 2\)"):
        attention(q, k, v, key_padding_mask=torch.zeros(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"attn_mask of shape \(5, 3\) \(L, S\) or \(4, 5, 3\) "
                                         r"\(N\*num_heads, L, S\), got \(3, 5\)"):
        attention(q, k, v, attn_mask=torch.zeros(3, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"got \(2, 5, 3\)"):
        attention(q, k, v, attn_mask=torch.zeros(2, 5, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"attn_mask of dtype torch.bool or torch.float32.*torch.int64"):
        attention(q, k, v, attn_mask=torch.zeros(5, 3, dtype=torch.long))
    with pytest.raises(TypeError, match=r"key_padding_mask of dtype torch.bool or torch.float32.*torch.float64"):
        attention(q, k, v, key_padding_mask=torch.zeros(2, 3, dtype=F64))
    with pytest.raises(ValueError, match="is_causal=True without attn_mask"):
        attention(q, k, v, is_causal=True)
    with pytest.raises(TypeError, match="floating-point query"):
        attention(q.long(), k, v)
    with pytest.raises(TypeError, match="dtype"):
        attention(q.double(), k.double(), v.double())   # float64 input, float32 weights
    unbatched = MultiheadAttention(8, 2, batch_first=True)
    with pytest.raises(ValueError, match=r"key_padding_mask of shape \(3,\)"):
        unbatched(torch.randn(5, 8), torch.randn(3, 8), torch.randn(3, 8),
                  key_padding_mask=torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(2, 5, 3\) \(N\*num_heads, L, S\)"):
        unbatched(torch.randn(5, 8), torch.randn(3, 8), torch.randn(3, 8),
                  attn_mask=torch.zeros(4, 5, 3, dtype=torch.bool))
