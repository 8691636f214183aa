"""common.nn.transformer (stage1_advanced/03_transformer.ipynb) against torch.nn.

Embedding vs nn.Embedding; PositionalEncoding vs the closed form written out
independently; TransformerEncoderLayer / TransformerEncoder vs torch's with
copied weights (both load directions), forward and every gradient, over norm
placement, activation, batch_first, masks, bias, dtype, eval and train mode
(dropout > 0 under one seed: the attention's output gets torch's memory layout); the error
messages. Comparisons run with grad enabled: under no_grad in eval mode torch
takes a fused "fast path" whose numbers differ slightly (tested separately).
"""
import itertools
import math
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from common.checks import assert_same_module, gradcheck
from common.nn import Embedding, PositionalEncoding, TransformerEncoder, TransformerEncoderLayer
from common.nn import LayerNorm
from common.nn.transformer import _EmbeddingFunction, _torch_layout

TIGHT = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-4, atol=1e-5)}


# ----------------------------------------------------------------------------- Embedding

@pytest.mark.parametrize("padding_idx, scale_grad_by_freq, dtype, index_shape", [
    (None, False, torch.float32, (5,)),
    (0, False, torch.float64, (3, 4)),
    (-1, False, torch.float32, (2, 3, 4)),
    (3, True, torch.float64, (4, 6)),
    (None, True, torch.float32, ()),
    (7, False, torch.float64, (0,)),
])
def test_embedding_matches_torch(padding_idx, scale_grad_by_freq, dtype, index_shape):
    torch.manual_seed(0)
    ref = nn.Embedding(9, 5, padding_idx=padding_idx, scale_grad_by_freq=scale_grad_by_freq, dtype=dtype)
    ours = Embedding(9, 5, padding_idx=padding_idx, scale_grad_by_freq=scale_grad_by_freq, dtype=dtype)
    assert ours.padding_idx == ref.padding_idx
    indices = torch.randint(0, 9, index_shape)
    if indices.numel():
        indices.view(-1)[0] = ref.padding_idx if padding_idx is not None else 2   # a repeated / padding row
        indices.view(-1)[-1] = indices.view(-1)[0]
    assert_same_module(ours, ref, indices, **TIGHT[dtype])
    if padding_idx is not None:
        assert torch.count_nonzero(ours.weight.grad[ours.padding_idx]) == 0


def test_embedding_int32_indices_and_state_dict_both_ways():
    ref = nn.Embedding(6, 3)
    ours = Embedding(6, 3)
    ref.load_state_dict(ours.state_dict())
    indices = torch.tensor([[0, 5, 5], [1, 2, 3]], dtype=torch.int32)
    torch.testing.assert_close(ours(indices), ref(indices), rtol=0, atol=0)
    assert set(ours.state_dict()) == {"weight"}


def test_embedding_init_is_standard_normal_with_zero_padding_row():
    torch.manual_seed(0)
    emb = Embedding(2000, 64, padding_idx=1)
    assert torch.count_nonzero(emb.weight[1]) == 0
    rest = torch.cat([emb.weight[:1], emb.weight[2:]]).detach()
    assert abs(rest.mean().item()) < 0.01 and abs(rest.std().item() - 1.0) < 0.01


def test_embedding_max_norm_renormalises_like_torch():
    torch.manual_seed(0)
    ref = nn.Embedding(8, 4, max_norm=1.5, norm_type=2.0)
    ours = Embedding(8, 4, max_norm=1.5, norm_type=2.0)
    indices = torch.tensor([[1, 2, 2], [7, 0, 1]])
    before = ref.weight.detach().clone()
    assert (before[indices.unique()].norm(dim=1) > 1.5).any()          # something to rescale
    assert_same_module(ours, ref, indices)
    torch.testing.assert_close(ours.weight, ref.weight)            # the rows were rescaled in place alike
    used = ours.weight[indices.unique()].norm(dim=1)
    assert (used <= 1.5 + 1e-5).all()
    unused = torch.tensor([3, 4, 5, 6])
    assert torch.equal(ours.weight[unused].detach(), before[unused])   # rows not looked up are untouched


def test_embedding_from_pretrained():
    table = torch.randn(4, 3)
    ours = Embedding.from_pretrained(table)
    ref = nn.Embedding.from_pretrained(table)
    assert not ours.weight.requires_grad
    torch.testing.assert_close(ours(torch.tensor([3, 0])), ref(torch.tensor([3, 0])))
    assert Embedding.from_pretrained(table, freeze=False).weight.requires_grad


def test_embedding_backward_gradcheck():
    """The scatter-add backward is the true gradient (repeated rows add up). padding_idx and
    scale_grad_by_freq change it on purpose, so those are compared with torch above instead."""
    indices = torch.tensor([[0, 2, 1], [2, 2, 4]])

    def lookup(weight):
        return _EmbeddingFunction.apply(weight, indices, None, False)

    assert gradcheck(lookup, torch.randn(5, 3))
    weight = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    _EmbeddingFunction.apply(weight, indices, 2, True).sum().backward()
    expected = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0], dtype=torch.float64)   # row 2 padding; 1/count each
    torch.testing.assert_close(weight.grad, expected.unsqueeze(1).expand(5, 3))


def test_embedding_errors():
    emb = Embedding(5, 2)
    with pytest.raises(TypeError, match="integer indices.*got torch.float32"):
        emb(torch.zeros(3))
    with pytest.raises(IndexError, match=r"in \[0, 5\).*\[0, 5\]"):
        emb(torch.tensor([0, 5]))
    with pytest.raises(IndexError, match=r"\[-1, 1\]"):
        emb(torch.tensor([-1, 1]))
    with pytest.raises(ValueError, match="padding_idx"):
        Embedding(5, 2, padding_idx=5)
    with pytest.raises(ValueError, match="_weight must have shape"):
        Embedding(5, 2, _weight=torch.zeros(5, 3))
    with pytest.raises(NotImplementedError, match="sparse"):
        Embedding(5, 2, sparse=True)


# ----------------------------------------------------------------------------- PositionalEncoding

def _closed_form(max_len, d_model):
    """PE written out one entry at a time, straight from the paper's formula."""
    table = torch.zeros(max_len, d_model, dtype=torch.float64)
    for pos in range(max_len):
        for i in range(d_model):
            angle = pos / 10000 ** (2 * (i // 2) / d_model)
            table[pos, i] = math.sin(angle) if i % 2 == 0 else math.cos(angle)
    return table


@pytest.mark.parametrize("d_model", [1, 2, 7, 16])
def test_positional_table_is_the_closed_form(d_model):
    pe = PositionalEncoding(d_model, max_len=50)
    torch.testing.assert_close(pe.pe.double(), _closed_form(50, d_model), rtol=0, atol=1e-6)
    torch.testing.assert_close(PositionalEncoding._table(50, d_model, 10000.0).double(),
                               _closed_form(50, d_model), rtol=0, atol=1e-6)
    assert pe.state_dict() == {} and pe.pe.shape == (50, d_model)


@pytest.mark.parametrize("batch_first", [False, True])
def test_positional_encoding_adds_by_position(batch_first):
    pe = PositionalEncoding(6, max_len=20, batch_first=batch_first)
    x = torch.randn((3, 11, 6) if batch_first else (11, 3, 6), dtype=torch.float64)
    out = pe(x)
    table = _closed_form(11, 6)
    for n in range(3):
        got = out[n] - x[n] if batch_first else out[:, n] - x[:, n]
        torch.testing.assert_close(got, table, rtol=0, atol=1e-6)
    unbatched = torch.randn(11, 6)
    torch.testing.assert_close(pe(unbatched) - unbatched, table.float(), rtol=0, atol=1e-6)


def test_positional_encoding_dropout_train_and_eval():
    torch.manual_seed(0)
    pe = PositionalEncoding(8, max_len=40, dropout=0.5, batch_first=True)
    x = torch.randn(50, 40, 8)
    pe.eval()
    torch.testing.assert_close(pe(x), x + pe.pe)
    pe.train()
    out = pe(x)
    zero_fraction = (out == 0).float().mean().item()
    assert 0.45 < zero_fraction < 0.55
    kept = out != 0
    torch.testing.assert_close(out[kept], 2 * (x + pe.pe)[kept])


def test_relative_position_is_a_rotation():
    d_model, table = 8, _closed_form(64, 8)
    for k in (1, 5, 17):
        frequencies = 10000 ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
        rotation = torch.zeros(d_model, d_model, dtype=torch.float64)
        for i, w in enumerate(frequencies):
            c, s = math.cos(k * w), math.sin(k * w)
            rotation[2 * i: 2 * i + 2, 2 * i: 2 * i + 2] = torch.tensor([[c, s], [-s, c]])
        torch.testing.assert_close(table[k:] , table[:-k] @ rotation.T)   # PE(p + k) = M_k PE(p) for every p


def test_positional_encoding_errors():
    pe = PositionalEncoding(4, max_len=10, batch_first=True)
    with pytest.raises(ValueError, match=r"\(N, L, E\) or \(L, E\) with E = 4, got shape \(2, 3, 5\)"):
        pe(torch.zeros(2, 3, 5))
    with pytest.raises(ValueError, match="length 11 > max_len=10"):
        pe(torch.zeros(2, 11, 4))
    with pytest.raises(TypeError, match="floating-point"):
        pe(torch.zeros(2, 3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(L, N, E\)"):
        PositionalEncoding(4)(torch.zeros(1, 2, 3, 4))


# ----------------------------------------------------------------------------- the encoder layer

L, N, E, H, FF = 7, 3, 12, 3, 20


def _layers(norm_first, batch_first, activation="relu", dropout=0.0, bias=True, dtype=torch.float64, nhead=H):
    torch.manual_seed(0)
    kwargs = dict(dim_feedforward=FF, dropout=dropout, activation=activation, batch_first=batch_first,
                  norm_first=norm_first, bias=bias, dtype=dtype)
    ours, ref = TransformerEncoderLayer(E, nhead, **kwargs), nn.TransformerEncoderLayer(E, nhead, **kwargs)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def _source(batch_first, dtype, length=L):
    return torch.randn((N, length, E) if batch_first else (length, N, E), dtype=dtype)


def _masks(dtype, length=L):
    generator = torch.Generator().manual_seed(1)
    blocked = torch.rand(length, length, generator=generator) < 0.4
    blocked.fill_diagonal_(False)                                      # every query keeps one key
    padding = torch.zeros(N, length, dtype=torch.bool)
    padding[0, -2:] = True
    padding[2, -1] = True
    float_mask = torch.randn(length, length, generator=generator, dtype=dtype)
    per_head = torch.rand(N * H, length, length, generator=generator) < 0.3
    per_head[:, torch.arange(length), torch.arange(length)] = False
    causal = torch.ones(length, length, dtype=torch.bool).triu(1)
    return {
        "none": {},
        "bool src_mask": {"src_mask": blocked},
        "float src_mask": {"src_mask": float_mask},
        "per-head src_mask": {"src_mask": per_head},
        "bool padding": {"src_key_padding_mask": padding},
        "float padding": {"src_key_padding_mask": torch.zeros(N, length, dtype=dtype).masked_fill(padding, -1e4)},
        "both": {"src_mask": blocked, "src_key_padding_mask": padding},
        "causal hint": {"src_mask": causal, "is_causal": True},
    }


GRID = list(itertools.product([False, True], [False, True], ["relu", "gelu"]))


@pytest.mark.parametrize("norm_first, batch_first, activation", GRID)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_layer_matches_torch(norm_first, batch_first, activation, dtype):
    ours, ref = _layers(norm_first, batch_first, activation, dtype=dtype)
    src = _source(batch_first, dtype)
    for name, masks in _masks(dtype).items():
        for train in (True, False):
            report = assert_same_module(ours, ref, src, forward_kwargs=masks, train=train,
                                        title=f"{name}, train={train}", **TIGHT[dtype])
            assert len(report.rows) == 2 + 12                          # output, grad input, 12 parameter grads


@pytest.mark.parametrize("norm_first", [False, True])
def test_layer_eval_mode_dropout_and_state_dict_both_ways(norm_first):
    ours, ref = _layers(norm_first, True, dropout=0.3)
    src = _source(True, torch.float64)
    assert_same_module(ours, ref, src, train=False, **TIGHT[torch.float64])       # torch -> ours
    theirs = nn.TransformerEncoderLayer(E, H, FF, dropout=0.3, norm_first=norm_first, batch_first=True,
                                        dtype=torch.float64)
    theirs.load_state_dict(ours.state_dict())                                      # ours -> torch
    ours.eval(), theirs.eval()
    with torch.enable_grad():
        torch.testing.assert_close(ours(src), theirs(src.requires_grad_()), **TIGHT[torch.float64])
    assert list(ours.state_dict()) == list(ref.state_dict())


@pytest.mark.parametrize("norm_first, batch_first, activation", GRID)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_layer_train_mode_with_dropout_matches_torch_under_one_seed(norm_first, batch_first, activation, dtype):
    # four dropouts (attention weights, after attention, inside and after the feed-forward) draw torch's masks
    ours, ref = _layers(norm_first, batch_first, activation, dropout=0.3, dtype=dtype)
    src = _source(batch_first, dtype)
    for name, masks in _masks(dtype).items():
        for seed in (0, 1):
            torch.manual_seed(seed)
            assert_same_module(ours, ref, src, forward_kwargs=masks, train=True, title=f"{name}, seed {seed}",
                               **TIGHT[dtype])


@pytest.mark.parametrize("batch_first", [False, True])
def test_attention_output_gets_torchs_memory_layout_before_dropout(batch_first):
    ours, ref = _layers(False, batch_first)
    src = _source(batch_first, torch.float64)
    theirs = ref.self_attn(src, src, src, need_weights=False)[0]
    mine = _torch_layout(ours.self_attn(src, src, src, need_weights=False)[0], batch_first)
    assert mine.stride() == theirs.stride()
    torch.testing.assert_close(mine, theirs, **TIGHT[torch.float64])


def test_train_mode_stack_and_unbatched_with_dropout_match_torch():
    torch.manual_seed(0)
    kwargs = dict(dim_feedforward=FF, dropout=0.2, batch_first=True, norm_first=True, dtype=torch.float64)
    ours = TransformerEncoder(TransformerEncoderLayer(E, H, **kwargs), 3, norm=LayerNorm(E, dtype=torch.float64))
    ref = nn.TransformerEncoder(nn.TransformerEncoderLayer(E, H, **kwargs), 3, enable_nested_tensor=False,
                                norm=nn.LayerNorm(E, dtype=torch.float64))
    for parameter in ref.parameters():
        nn.init.normal_(parameter, std=0.2)
    padding = _masks(torch.float64)["bool padding"]["src_key_padding_mask"]
    assert_same_module(ours, ref, _source(True, torch.float64), forward_kwargs={"src_key_padding_mask": padding},
                       train=True, **TIGHT[torch.float64])
    for batch_first in (False, True):
        layer, reference = _layers(False, batch_first, dropout=0.4)
        assert_same_module(layer, reference, torch.randn(L, E, dtype=torch.float64), train=True,
                           **TIGHT[torch.float64])


def test_layer_train_mode_dropout_is_active():
    ours, _ = _layers(False, True, dropout=0.5)
    ours.train()
    src = _source(True, torch.float64)
    assert not torch.allclose(ours(src), ours(src))                    # a different mask each call
    ours.eval()
    torch.testing.assert_close(ours(src), ours(src), rtol=0, atol=0)


@pytest.mark.parametrize("norm_first", [False, True])
def test_layer_without_bias_and_with_callable_activation(norm_first):
    ours, ref = _layers(norm_first, False, activation=F.silu, bias=False)
    assert "linear1.bias" not in ours.state_dict() and "norm1.bias" not in ours.state_dict()
    assert_same_module(ours, ref, _source(False, torch.float64), forward_kwargs=_masks(torch.float64)["both"],
                       train=True, **TIGHT[torch.float64])


@pytest.mark.parametrize("batch_first", [False, True])
def test_layer_unbatched_input(batch_first):
    ours, ref = _layers(True, batch_first)
    src = torch.randn(L, E, dtype=torch.float64)
    padding = torch.zeros(L, dtype=torch.bool)
    padding[-2:] = True
    assert_same_module(ours, ref, src, forward_kwargs={"src_key_padding_mask": padding}, train=True,
                       **TIGHT[torch.float64])
    per_head = torch.rand(H, L, L) < 0.3
    per_head[:, range(L), range(L)] = False
    assert_same_module(ours, ref, src, forward_kwargs={"src_mask": per_head}, train=True, **TIGHT[torch.float64])


def test_layer_causal_flag_without_mask_builds_the_causal_mask():
    ours, ref = _layers(False, True)
    src = _source(True, torch.float64)
    causal = torch.ones(L, L, dtype=torch.bool).triu(1)
    torch.testing.assert_close(ours(src, is_causal=True), ref(src, src_mask=causal), **TIGHT[torch.float64])
    out = ours(src, is_causal=True)
    changed = src.clone()
    changed[:, -1] += 1.0                                              # the future cannot change the past
    torch.testing.assert_close(ours(changed, is_causal=True)[:, :-1], out[:, :-1], rtol=0, atol=1e-12)


def test_layer_fast_path_agrees_under_no_grad():
    ours, ref = _layers(False, True, dtype=torch.float32, nhead=2)      # torch's fused path wants even heads
    ours.eval(), ref.eval()
    src = _source(True, torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(ours(src), ref(src), rtol=1e-4, atol=1e-5)


def test_layer_errors():
    with pytest.raises(ValueError, match="d_model divisible by nhead, got d_model=10, nhead=3"):
        TransformerEncoderLayer(10, 3)
    with pytest.raises(ValueError, match="activation should be 'relu', 'gelu' or a callable, got 'tanh'"):
        TransformerEncoderLayer(8, 2, activation="tanh")
    layer = TransformerEncoderLayer(8, 2, 16, batch_first=True)
    with pytest.raises(ValueError, match=r"expected src \(N, L, E\) or \(L, E\) with E = d_model = 8, got shape \(2, 5, 6\)"):
        layer(torch.zeros(2, 5, 6))
    with pytest.raises(ValueError, match=r"src_mask must have shape \(5, 5\) or \(4, 5, 5\).*got \(4, 4\)"):
        layer(torch.zeros(2, 5, 8), src_mask=torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"src_key_padding_mask must have shape \(2, 5\).*got \(5, 2\)"):
        layer(torch.zeros(2, 5, 8), src_key_padding_mask=torch.zeros(5, 2, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool or floating-point.*torch.int64"):
        layer(torch.zeros(2, 5, 8), src_mask=torch.zeros(5, 5, dtype=torch.long))
    with pytest.raises(TypeError, match="floating-point src"):
        layer(torch.zeros(2, 5, 8, dtype=torch.long))
    seq_first = TransformerEncoderLayer(8, 2, 16)
    with pytest.raises(ValueError, match=r"src_key_padding_mask must have shape \(2, 5\)"):
        seq_first(torch.zeros(5, 2, 8), src_key_padding_mask=torch.zeros(5, 2, dtype=torch.bool))


# ----------------------------------------------------------------------------- the encoder

@pytest.mark.parametrize("norm_first, batch_first, num_layers, final_norm", [
    (False, False, 1, False), (False, True, 3, False), (True, True, 3, True), (True, False, 2, True),
])
def test_encoder_matches_torch(norm_first, batch_first, num_layers, final_norm):
    torch.manual_seed(0)
    kwargs = dict(dim_feedforward=FF, dropout=0.0, batch_first=batch_first, norm_first=norm_first,
                  activation="gelu", dtype=torch.float64)
    ours = TransformerEncoder(TransformerEncoderLayer(E, H, **kwargs), num_layers,
                              norm=LayerNorm(E, dtype=torch.float64) if final_norm else None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                                # torch's nested-tensor notice
        ref = nn.TransformerEncoder(nn.TransformerEncoderLayer(E, H, **kwargs), num_layers,
                                    norm=nn.LayerNorm(E, dtype=torch.float64) if final_norm else None)
    for layer in ref.layers:                                           # torch's copies start equal: make them differ
        for p in layer.parameters():
            nn.init.normal_(p, std=0.2)
    assert list(ours.state_dict()) == list(ref.state_dict())
    src = _source(batch_first, torch.float64)
    masks = _masks(torch.float64)
    for name in ("none", "both", "float src_mask", "bool padding"):
        kw = {("mask" if k == "src_mask" else k): v for k, v in masks[name].items()}
        for train in (True, False):
            assert_same_module(ours, ref, src, forward_kwargs=kw, train=train, title=name,
                               **TIGHT[torch.float64])
    theirs = nn.TransformerEncoder(nn.TransformerEncoderLayer(E, H, **kwargs), num_layers,
                                   norm=nn.LayerNorm(E, dtype=torch.float64) if final_norm else None,
                                   enable_nested_tensor=False)
    theirs.load_state_dict(ours.state_dict())                          # ours -> torch
    torch.testing.assert_close(theirs(src.requires_grad_()), ours(src), **TIGHT[torch.float64])


def test_encoder_layers_are_independent_deep_copies():
    layer = TransformerEncoderLayer(8, 2, 16)
    encoder = TransformerEncoder(layer, 3)
    pointers = {p.data_ptr() for block in encoder.layers for p in block.parameters()}
    assert len(pointers) == 3 * len(list(layer.parameters()))
    assert all(block is not layer for block in encoder.layers)
    assert sorted({k.split(".")[1] for k in encoder.state_dict()}) == ["0", "1", "2"]


def test_encoder_no_grad_padding_agrees_off_the_padding():
    """torch's eval fast path (no_grad, batch_first, padding) returns zeros at padded positions; ours
    computes them. Everywhere else the two agree."""
    torch.manual_seed(0)
    ours = TransformerEncoder(TransformerEncoderLayer(E, 2, FF, batch_first=True), 2)
    ref = nn.TransformerEncoder(nn.TransformerEncoderLayer(E, 2, FF, batch_first=True), 2)
    ours.load_state_dict(ref.state_dict())
    ours.eval(), ref.eval()
    src = _source(True, torch.float32)
    padding = torch.zeros(N, L, dtype=torch.bool)
    padding[0, -3:] = True
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")                                # torch's nested-tensor prototype notice
        a, b = ours(src, src_key_padding_mask=padding), ref(src, src_key_padding_mask=padding)
    assert torch.count_nonzero(b[padding]) == 0                        # torch's fast path zeroes padded positions
    torch.testing.assert_close(a[~padding], b[~padding], rtol=1e-4, atol=1e-5)


def test_encoder_errors():
    with pytest.raises(ValueError, match="num_layers >= 1, got 0"):
        TransformerEncoder(TransformerEncoderLayer(8, 2, 16), 0)
    with pytest.raises(TypeError, match="nn.Module encoder_layer, got int"):
        TransformerEncoder(3, 2)
    encoder = TransformerEncoder(TransformerEncoderLayer(8, 2, 16), 2)
    with pytest.raises(ValueError, match=r"src_mask must have shape \(5, 5\)"):
        encoder(torch.zeros(5, 2, 8), mask=torch.zeros(6, 6))
