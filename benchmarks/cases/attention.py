"""Benchmark cases for stage1_advanced/01_attention (common.nn.MultiheadAttention, scaled_dot_product_attention)."""
import torch
from torch import nn
from torch.nn import functional as F

import common.nn as ours
from common.nn.functional import scaled_dot_product_attention
from components import Case

# ViT-Tiny-like: 64 images of 8x8 patches + a class token = 65 tokens of 192 features, 3 heads of 64
_BATCH, _TOKENS, _DIM, _HEADS = 64, 65, 192, 3
_NOTE = f"ViT-Tiny-like self-attention, batch {_BATCH}, {_TOKENS} tokens, {_DIM} dim, {_HEADS} heads"


class _SelfAttention(nn.Module):
    """x -> attention(x, x, x): the call a transformer block makes (no weights returned)."""

    def __init__(self, attention: nn.Module):
        super().__init__()
        self.attention = attention

    def forward(self, x):
        return self.attention(x, x, x, need_weights=False)[0]


def _tokens():
    return (torch.randn(_BATCH, _TOKENS, _DIM),)


def _heads():
    shape = (_BATCH, _HEADS, _TOKENS, _DIM // _HEADS)
    return (torch.randn(shape), torch.randn(shape), torch.randn(shape))


# a Fashion-MNIST ViT: 49 patches of 4x4 + a class token = 50 tokens, 3 heads of 64 (ViT-Tiny width)
_VIT_BATCH, _VIT_TOKENS = 128, 50


def _vit_tokens():
    return (torch.randn(_VIT_BATCH, _VIT_TOKENS, _DIM),)


def _vit_heads():
    shape = (_VIT_BATCH, _HEADS, _VIT_TOKENS, _DIM // _HEADS)
    return (torch.randn(shape), torch.randn(shape), torch.randn(shape))


CASES = [
    Case("MultiheadAttention (self)", _NOTE,
         lambda: _SelfAttention(ours.MultiheadAttention(_DIM, _HEADS, batch_first=True)),
         lambda: _SelfAttention(nn.MultiheadAttention(_DIM, _HEADS, batch_first=True)), _tokens),
    Case("scaled_dot_product_attention", f"q, k, v ({_BATCH}, {_HEADS}, {_TOKENS}, {_DIM // _HEADS})",
         lambda: scaled_dot_product_attention, lambda: F.scaled_dot_product_attention, _heads),
    Case("MultiheadAttention (self), 50 tokens", f"Fashion-MNIST ViT, batch {_VIT_BATCH}, {_VIT_TOKENS} tokens, {_DIM} dim",
         lambda: _SelfAttention(ours.MultiheadAttention(_DIM, _HEADS, batch_first=True)),
         lambda: _SelfAttention(nn.MultiheadAttention(_DIM, _HEADS, batch_first=True)), _vit_tokens),
    Case("scaled_dot_product_attention, 50 tokens",
         f"q, k, v ({_VIT_BATCH}, {_HEADS}, {_VIT_TOKENS}, {_DIM // _HEADS})",
         lambda: scaled_dot_product_attention, lambda: F.scaled_dot_product_attention, _vit_heads),
]
