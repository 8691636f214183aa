"""DALL-E 2's diffusion prior: diffusers' PriorTransformer from scratch.

The prior (Ramesh et al. 2022, "Hierarchical Text-Conditional Image Generation with CLIP Latents", arXiv 2204.06125)
generates a CLIP *image* embedding from a caption. It is a diffusion model over embedding vectors: at step t it is
given the noisy image embedding z_t and predicts the clean embedding z_0 directly (the paper trains it on
||f(z_t, t, y) - z_0||^2, not on the noise). The denoiser is a decoder-only transformer over a short sequence of
tokens, all of width D = num_attention_heads * attention_head_dim:

    position     token                                       from                                   shape
    0 .. T-1     text tokens (CLIP text encoder's last        encoder_hidden_states_proj(             (N, T, D)
                 hidden states)                                 encoder_hidden_states (N, T, E))
    T            text embedding (CLIP's pooled projection)   embedding_proj(proj_embedding (N, E'))  (N, 1, D)
    T + 1        time embedding                              time_embedding(time_proj(t))            (N, 1, D)
    T + 2        noisy image embedding z_t                   proj_in(hidden_states (N, E))           (N, 1, D)
    T + 3        final query token (diffusers: "prd")        prd_embedding, learned                  (N, 1, D)

with E = embedding_dim, E' = embedding_proj_dim. A learned positional_embedding (1, P, D), P = num_embeddings +
additional_embeddings, is added, so this layout needs T = num_embeddings and additional_embeddings = 4 (the four
tokens after the text). After norm_in (optional), num_layers pre-norm transformer blocks and norm_out, the output at
the final token, mapped by proj_to_clip_embeddings to (N, clip_embed_dim), is the predicted z_0.
post_process_latents undoes the normalisation of CLIP image embeddings: z * clip_std + clip_mean.

Attention mask: only when a text mask (N, num_embeddings) is passed (True = a real token), query i may attend to key
j iff j <= i (causal) and j is a real text token or one of the additional tokens. The mask is additive: 0 where
allowed, -10000 per violated condition (-20000 for a masked future token), the same for every head. -10000 is not
-inf: a query with no allowed key (a masked first token) attends over the keys with the smallest penalty. Without a
text mask the attention is fully bidirectional: diffusers applies the causal mask only together with a text mask.

Variants kept from diffusers: no text tokens (encoder_hidden_states None with encoder_hid_proj_type None), no final
token (added_emb_type None: then every token after the time token is an output, (N, L, clip_embed_dim)), K text
embedding tokens (proj_embedding (N, K, E')), and L noisy tokens (hidden_states (N, L, E), as Shap-E's prior uses)
with a positional_embedding of length L that covers only those tokens (diffusers pads it with zeros for the others).
"""
from dataclasses import dataclass
from numbers import Real
from typing import Optional

import torch
from torch import nn

from common.nn import LayerNorm, Linear

from common.models.stable_diffusion import BasicTransformerBlock, TimestepEmbedding, Timesteps

# time_embed_act_fn values TimestepEmbedding supports here (diffusers lowercases the name)
_TIME_ACTIVATIONS = ("silu", "swish", "mish", "gelu", "relu")
_MASK_VALUE = -10000.0  # diffusers' "minus infinity" for the additive attention mask


@dataclass
class PriorTransformerOutput:
    """predicted_image_embedding: (N, clip_embed_dim) with the prd token, else (N, L, clip_embed_dim)."""

    predicted_image_embedding: torch.Tensor


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"PriorTransformer expected {name} to be a positive int, got {value!r}")
    return value


def _check_choice(name: str, value, choices: tuple):
    if value not in choices:
        raise ValueError(f"PriorTransformer: unsupported {name}={value!r}; supported values are "
                         f"{', '.join(repr(choice) for choice in choices)}")
    return value


class PriorTransformer(nn.Module):
    """diffusers.PriorTransformer: its arguments, state_dict keys and forward."""

    def __init__(self, num_attention_heads: int = 32, attention_head_dim: int = 64, num_layers: int = 20,
                 embedding_dim: int = 768, num_embeddings=77, additional_embeddings=4, dropout: float = 0.0,
                 time_embed_act_fn: str = "silu", norm_in_type: Optional[str] = None,
                 embedding_proj_norm_type: Optional[str] = None, encoder_hid_proj_type: Optional[str] = "linear",
                 added_emb_type: Optional[str] = "prd", time_embed_dim: Optional[int] = None,
                 embedding_proj_dim: Optional[int] = None, clip_embed_dim: Optional[int] = None):
        super().__init__()
        for name, value in (("num_attention_heads", num_attention_heads), ("attention_head_dim", attention_head_dim),
                            ("num_layers", num_layers), ("embedding_dim", embedding_dim),
                            ("num_embeddings", num_embeddings)):
            _check_positive_int(name, value)
        if isinstance(additional_embeddings, bool) or not isinstance(additional_embeddings, int) \
                or additional_embeddings < 0:
            raise ValueError(f"PriorTransformer expected additional_embeddings to be a non-negative int, "
                             f"got {additional_embeddings!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, Real) or not 0.0 <= dropout <= 1.0:
            raise ValueError(f"PriorTransformer expected dropout in [0, 1], got {dropout!r}")
        if not isinstance(time_embed_act_fn, str) or time_embed_act_fn.lower() not in _TIME_ACTIVATIONS:
            raise ValueError(f"PriorTransformer: unsupported time_embed_act_fn={time_embed_act_fn!r}; supported "
                             f"values are {', '.join(repr(name) for name in _TIME_ACTIVATIONS)} (any case)")
        _check_choice("norm_in_type", norm_in_type, (None, "layer"))
        _check_choice("embedding_proj_norm_type", embedding_proj_norm_type, (None, "layer"))
        _check_choice("encoder_hid_proj_type", encoder_hid_proj_type, ("linear", None))
        _check_choice("added_emb_type", added_emb_type, ("prd", None))

        self.num_attention_heads = num_attention_heads
        self.attention_head_dim = attention_head_dim
        inner_dim = num_attention_heads * attention_head_dim                     # D, the token width
        self.inner_dim = inner_dim
        self.num_embeddings = num_embeddings
        self.additional_embeddings = additional_embeddings
        # None (or 0, as in diffusers) selects the default width
        time_embed_dim = time_embed_dim or inner_dim
        embedding_proj_dim = embedding_proj_dim or embedding_dim
        clip_embed_dim = clip_embed_dim or embedding_dim
        for name, value in (("time_embed_dim", time_embed_dim), ("embedding_proj_dim", embedding_proj_dim),
                            ("clip_embed_dim", clip_embed_dim)):
            _check_positive_int(name, value)
        self.embedding_dim = embedding_dim
        self.embedding_proj_dim = embedding_proj_dim
        self.clip_embed_dim = clip_embed_dim

        # the modules in diffusers' order, so that state_dict() lists the keys in the same order
        self.time_proj = Timesteps(inner_dim, True, 0)                           # [cos | sin], no parameters
        self.time_embedding = TimestepEmbedding(inner_dim, time_embed_dim, act_fn=time_embed_act_fn,
                                                out_dim=inner_dim)
        self.proj_in = Linear(embedding_dim, inner_dim)                          # the noisy image embedding
        self.embedding_proj_norm = LayerNorm(embedding_proj_dim) if embedding_proj_norm_type == "layer" else None
        self.embedding_proj = Linear(embedding_proj_dim, inner_dim)              # the pooled text embedding
        self.encoder_hidden_states_proj = Linear(embedding_dim, inner_dim) if encoder_hid_proj_type else None
        sequence_length = num_embeddings + additional_embeddings
        self.positional_embedding = nn.Parameter(torch.zeros(1, sequence_length, inner_dim))
        self.prd_embedding = nn.Parameter(torch.zeros(1, 1, inner_dim)) if added_emb_type == "prd" else None
        self.transformer_blocks = nn.ModuleList([
            BasicTransformerBlock(inner_dim, num_attention_heads, attention_head_dim, dropout=dropout,
                                  activation_fn="gelu", attention_bias=True)
            for _ in range(num_layers)])
        self.norm_in = LayerNorm(inner_dim) if norm_in_type == "layer" else None
        self.norm_out = LayerNorm(inner_dim)
        self.proj_to_clip_embeddings = Linear(inner_dim, clip_embed_dim)
        # causal[i, j] = -10000 for j > i (key after query), else 0; not saved in the state_dict
        causal = torch.full((sequence_length, sequence_length), _MASK_VALUE).triu(1)
        self.register_buffer("causal_attention_mask", causal[None], persistent=False)  # (1, P, P)
        # statistics of CLIP image embeddings, used by post_process_latents
        self.clip_mean = nn.Parameter(torch.zeros(1, clip_embed_dim))
        self.clip_std = nn.Parameter(torch.zeros(1, clip_embed_dim))

    @property
    def dtype(self) -> torch.dtype:
        return self.proj_in.weight.dtype

    # ---------------------------------------------------------------- input checks
    def _check_tensor(self, name: str, tensor, ndims: tuple, features: int, batch: Optional[int],
                      tokens: str = "L") -> None:
        """A floating tensor of the model's dtype, (N, features) and/or (N, tokens, features), batch N."""
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"PriorTransformer expected {name} to be a torch.Tensor, got {type(tensor).__name__}")
        if not tensor.is_floating_point():
            raise TypeError(f"PriorTransformer expected a floating-point {name}, got dtype {tensor.dtype}")
        if tensor.dtype != self.dtype:
            raise TypeError(f"PriorTransformer expected {name} of dtype {self.dtype} (the model's), "
                            f"got {tensor.dtype}")
        layouts = " or ".join(f"({', '.join(['N', tokens][:ndim - 1])}, {features})" for ndim in ndims)
        if tensor.dim() not in ndims or tensor.shape[-1] != features:
            raise ValueError(f"PriorTransformer expected {name} of shape {layouts}, got {tuple(tensor.shape)}")
        if batch is not None and tensor.shape[0] != batch:
            raise ValueError(f"PriorTransformer expected {name} with batch size {batch} (hidden_states'), "
                             f"got {tuple(tensor.shape)}")

    def _timesteps_per_sample(self, timestep, batch: int, device) -> torch.Tensor:
        """An int/float, a 0-d tensor, or a (1,) / (N,) tensor -> (N,) timesteps."""
        if isinstance(timestep, torch.Tensor):
            if timestep.dtype == torch.bool or timestep.is_complex():
                raise TypeError(f"PriorTransformer expected an integer or floating timestep, got {timestep.dtype}")
            if timestep.dim() > 1 or (timestep.dim() == 1 and timestep.shape[0] not in (1, batch)):
                raise ValueError(f"PriorTransformer expected timestep as a number or a tensor of shape (), (1,) "
                                 f"or ({batch},), got shape {tuple(timestep.shape)}")
            timesteps = timestep.reshape(-1).to(device)
        elif isinstance(timestep, Real) and not isinstance(timestep, bool):
            # as in diffusers, a Python number becomes a long tensor: a float timestep is truncated (2.7 -> 2)
            timesteps = torch.tensor([timestep], dtype=torch.long, device=device)
        else:
            raise TypeError(f"PriorTransformer expected timestep to be a number or a tensor, "
                            f"got {type(timestep).__name__}")
        return timesteps * torch.ones(batch, dtype=timesteps.dtype, device=device)  # (N,)

    # ---------------------------------------------------------------- forward
    def _attention_bias(self, text_mask: torch.Tensor, batch: int, sequence_length: int, dtype) -> torch.Tensor:
        """Text mask (N, num_embeddings) -> additive bias (N * heads, P, P), row n * heads + h for head h."""
        if not isinstance(text_mask, torch.Tensor):
            raise TypeError(f"PriorTransformer expected attention_mask to be a torch.Tensor or None, "
                            f"got {type(text_mask).__name__}")
        if text_mask.is_complex():
            raise TypeError(f"PriorTransformer expected a bool (or 0/1) attention_mask, got {text_mask.dtype}")
        if tuple(text_mask.shape) != (batch, self.num_embeddings):
            raise ValueError(f"PriorTransformer expected attention_mask of shape (N, num_embeddings) = "
                             f"({batch}, {self.num_embeddings}), got {tuple(text_mask.shape)}")
        total = self.num_embeddings + self.additional_embeddings
        if sequence_length != total:
            raise ValueError(f"PriorTransformer: an attention_mask needs a sequence of num_embeddings + "
                             f"additional_embeddings = {total} tokens, got {sequence_length}")
        # 0 for a real token, -10000 for a masked one: (1 - m) * -10000, (N, num_embeddings)
        key_bias = (1 - text_mask.to(dtype)) * _MASK_VALUE
        # the additional tokens (text embedding, time, image, prd) are never masked: pad with zeros -> (N, P)
        key_bias = torch.cat([key_bias, key_bias.new_zeros(batch, self.additional_embeddings)], dim=1)
        # bias[n, i, j] = key_bias[n, j] + causal[i, j]   (N, 1, P) + (1, P, P) -> (N, P, P)
        bias = (key_bias[:, None, :] + self.causal_attention_mask).to(dtype)
        return bias.repeat_interleave(self.num_attention_heads, dim=0)              # (N * heads, P, P)

    def forward(self, hidden_states: torch.Tensor, timestep, proj_embedding: torch.Tensor,
                encoder_hidden_states: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                return_dict: bool = True):
        """hidden_states (N, E) or (N, L, E): the noisy image embedding(s) z_t; timestep: a number or (N,);
        proj_embedding (N, E') or (N, K, E'); encoder_hidden_states (N, T, E) (or (N, T, D) without its
        projection); attention_mask (N, num_embeddings), True for a real text token."""
        self._check_tensor("hidden_states", hidden_states, (2, 3), self.embedding_dim, None)
        batch, dtype = hidden_states.shape[0], hidden_states.dtype
        self._check_tensor("proj_embedding", proj_embedding, (2, 3), self.embedding_proj_dim, batch, "K")
        if encoder_hidden_states is None and self.encoder_hidden_states_proj is not None:
            raise ValueError("PriorTransformer with encoder_hid_proj_type='linear' requires encoder_hidden_states")
        if encoder_hidden_states is not None:
            width = self.embedding_dim if self.encoder_hidden_states_proj is not None else self.inner_dim
            self._check_tensor("encoder_hidden_states", encoder_hidden_states, (3,), width, batch, "T")

        # time token: sinusoidal features in float32 (as diffusers computes them), then the MLP in the model's dtype
        timesteps = self._timesteps_per_sample(timestep, batch, hidden_states.device)        # (N,)
        time_tokens = self.time_embedding(self.time_proj(timesteps).to(self.dtype))[:, None]  # (N, 1, D)

        if self.embedding_proj_norm is not None:
            proj_embedding = self.embedding_proj_norm(proj_embedding)
        embedding_tokens = self.embedding_proj(proj_embedding)                                # (N, [K,] D)
        if embedding_tokens.dim() == 2:
            embedding_tokens = embedding_tokens[:, None]                                      # (N, K=1, D)
        image_tokens = self.proj_in(hidden_states)                                            # (N, [L,] D)
        if image_tokens.dim() == 2:
            image_tokens = image_tokens[:, None]                                              # (N, L=1, D)

        tokens = []
        if encoder_hidden_states is not None:
            if self.encoder_hidden_states_proj is not None:
                encoder_hidden_states = self.encoder_hidden_states_proj(encoder_hidden_states)
            tokens.append(encoder_hidden_states)                                              # (N, T, D)
        tokens += [embedding_tokens, time_tokens]
        # tokens before the noisy image tokens: the text tokens, the text-embedding token(s), the time token
        num_before_image = sum(group.shape[1] for group in tokens)                           # T + K + 1
        tokens.append(image_tokens)
        num_prd = 1 if self.prd_embedding is not None else 0
        if self.prd_embedding is not None:
            tokens.append(self.prd_embedding.to(dtype).expand(batch, -1, -1))                 # (N, 1, D)
        sequence = torch.cat(tokens, dim=1)                                                   # (N, S, D)

        positional = self.positional_embedding.to(dtype)                                      # (1, P, D)
        length, positions = sequence.shape[1], positional.shape[1]
        if positions != length:
            # diffusers pads a shorter positional embedding with zeros around the noisy image tokens
            if positions != image_tokens.shape[1]:
                raise ValueError(
                    f"PriorTransformer: positional_embedding has num_embeddings + additional_embeddings = "
                    f"{positions} positions, the sequence {length} tokens ({num_before_image} before "
                    f"{image_tokens.shape[1]} image token(s)); it must cover the whole sequence or exactly the "
                    f"image tokens")
            zeros_before = positional.new_zeros(1, num_before_image, positional.shape[2])
            zeros_after = positional.new_zeros(1, num_prd, positional.shape[2])
            positional = torch.cat([zeros_before, positional, zeros_after], dim=1)            # (1, S, D)
        sequence = sequence + positional

        bias = None
        if attention_mask is not None:
            bias = self._attention_bias(attention_mask, batch, length, dtype)                 # (N * heads, S, S)

        if self.norm_in is not None:
            sequence = self.norm_in(sequence)
        for block in self.transformer_blocks:
            sequence = block(sequence, attention_mask=bias)
        sequence = self.norm_out(sequence)

        if self.prd_embedding is not None:
            outputs = sequence[:, -1]                                                         # (N, D): the prd token
        else:
            outputs = sequence[:, num_before_image:]                                          # (N, L, D)
        predicted = self.proj_to_clip_embeddings(outputs)
        if not return_dict:
            return (predicted,)
        return PriorTransformerOutput(predicted_image_embedding=predicted)

    def post_process_latents(self, prior_latents: torch.Tensor) -> torch.Tensor:
        """Normalised embedding (..., clip_embed_dim) -> CLIP image embedding: z * clip_std + clip_mean."""
        if not isinstance(prior_latents, torch.Tensor) or not prior_latents.is_floating_point():
            raise TypeError("PriorTransformer.post_process_latents expected a floating-point tensor, got "
                            f"{getattr(prior_latents, 'dtype', type(prior_latents).__name__)}")
        if prior_latents.dim() == 0 or prior_latents.shape[-1] != self.clip_embed_dim:
            raise ValueError(f"PriorTransformer.post_process_latents expected (..., {self.clip_embed_dim}), "
                             f"got {tuple(prior_latents.shape)}")
        device = prior_latents.device
        return prior_latents * self.clip_std.to(device) + self.clip_mean.to(device)
