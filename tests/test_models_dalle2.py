"""common.models.dalle2 (exported from stage6_frontier/03_dalle2) equals diffusers: PriorTransformer and
UnCLIPTextProjModel, keys, outputs and every gradient in float64, over every layout diffusers keeps."""
import inspect
import math

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel as ReferenceTextProj  # noqa: E402

from common.checks import assert_same_module, randomize_  # noqa: E402
from common.models.dalle2 import PriorTransformer, PriorTransformerOutput, UnCLIPTextProjModel  # noqa: E402

torch.set_num_threads(1)
RTOL, ATOL = 1e-9, 1e-10

# name -> (constructor kwargs, input layout): T text tokens (None: no encoder_hidden_states), L noisy image tokens
# (None: hidden_states (N, E)), K text-embedding tokens (None: proj_embedding (N, E')), text width of
# encoder_hidden_states, and whether an attention_mask can be used (the sequence has num_embeddings + 4 tokens)
CONFIGS = {
    # the default layout: T = num_embeddings text tokens, then text embedding, time, image, prd
    "default": (dict(num_attention_heads=2, attention_head_dim=4, num_layers=2, embedding_dim=8, num_embeddings=5,
                     additional_embeddings=4), dict(T=5, L=None, K=None, mask=True)),
    # every optional norm, every width different from its default, odd D = 9 (the sinusoid gets a zero column)
    "norms_dims_odd_width": (dict(num_attention_heads=3, attention_head_dim=3, num_layers=2, embedding_dim=6,
                                  num_embeddings=3, additional_embeddings=4, norm_in_type="layer",
                                  embedding_proj_norm_type="layer", time_embed_dim=10, embedding_proj_dim=7,
                                  clip_embed_dim=5, time_embed_act_fn="gelu"),
                             dict(T=3, L=None, K=None, mask=True)),
    # heads 2 x 4 with the widths changed and only norm_in
    "dims_norm_in": (dict(num_attention_heads=2, attention_head_dim=4, num_layers=1, embedding_dim=6,
                          num_embeddings=3, additional_embeddings=4, norm_in_type="layer", time_embed_dim=12,
                          embedding_proj_dim=5, clip_embed_dim=4, time_embed_act_fn="SiLU"),
                     dict(T=3, L=None, K=None, mask=True)),
    # no text projection: encoder_hidden_states arrive with the inner width D = 8
    "no_encoder_proj": (dict(num_attention_heads=2, attention_head_dim=4, num_layers=1, embedding_dim=6,
                             num_embeddings=5, additional_embeddings=4, encoder_hid_proj_type=None,
                             embedding_proj_norm_type="layer", time_embed_act_fn="mish"),
                        dict(T=5, L=None, K=None, mask=True)),
    # no prd token, additional_embeddings = 3: the output is the image token, (N, 1, clip_embed_dim)
    "no_prd": (dict(num_attention_heads=2, attention_head_dim=4, num_layers=2, embedding_dim=8, num_embeddings=5,
                    additional_embeddings=3, added_emb_type=None, clip_embed_dim=6, time_embed_act_fn="relu"),
               dict(T=5, L=None, K=None, mask=True)),
    # no prd but additional_embeddings = 4: T = num_embeddings + 1 text tokens fill the sequence, and the text
    # mask (num_embeddings wide) covers only the first num_embeddings of them
    "no_prd_one_more_text_token": (dict(num_attention_heads=2, attention_head_dim=4, num_layers=1, embedding_dim=8,
                                        num_embeddings=3, additional_embeddings=4, added_emb_type=None),
                                   dict(T=4, L=None, K=None, mask=True)),
    # proj_embedding with K = 2 tokens: 4 text + 2 + time + image + prd = 9 = num_embeddings + 4 tokens
    "two_embedding_tokens": (dict(num_attention_heads=2, attention_head_dim=4, num_layers=1, embedding_dim=8,
                                  num_embeddings=5, additional_embeddings=4, embedding_proj_dim=3),
                             dict(T=4, L=None, K=2, mask=True)),
    # Shap-E's layout: L noisy tokens, no text tokens, no prd, positional_embedding only over the L tokens
    # (num_embeddings = L, additional_embeddings = 0; diffusers pads it with zeros for the two tokens before)
    "shap_e_tokens": (dict(num_attention_heads=2, attention_head_dim=4, num_layers=2, embedding_dim=6,
                           num_embeddings=4, additional_embeddings=0, time_embed_act_fn="gelu", norm_in_type="layer",
                           embedding_proj_norm_type="layer", encoder_hid_proj_type=None, added_emb_type=None,
                           time_embed_dim=10, embedding_proj_dim=5, clip_embed_dim=7),
                      dict(T=None, L=4, K=None, mask=False)),
    # no text tokens, with the prd token: text embedding, time, image, prd = 1 + 3 tokens; the (N, 1) "text" mask
    # then masks the text-embedding token
    "no_text_tokens_prd": (dict(num_attention_heads=2, attention_head_dim=4, num_layers=1, embedding_dim=8,
                                num_embeddings=1, additional_embeddings=3, encoder_hid_proj_type=None),
                           dict(T=None, L=None, K=None, mask=True)),
}


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial parameters: norm weights near 1, weights ~ N(0, 1/fan_in), the zero-initialised vectors random."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator, dtype=p.dtype)
            if name == "clip_std":
                p.copy_(0.5 + noise.abs())
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            elif p.dim() == 2 and name != "clip_mean":
                p.copy_(noise / math.sqrt(p.shape[1]))
            else:                                        # biases, positional / prd embeddings, clip_mean
                p.copy_(0.5 * noise)


def _pair(config: dict, seed: int = 0):
    """(reference, ours) in float64 with the reference's randomised parameters loaded strictly into ours."""
    torch.manual_seed(seed)
    reference = diffusers.PriorTransformer(**config).double()
    _randomise(reference, seed + 1)
    ours = PriorTransformer(**config).double()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference.eval(), ours.eval()


def _text_mask(batch: int, width: int) -> torch.Tensor:
    """Row 0 masks its last two tokens (none when width 1), row 1 the first (its query sees only masked keys),
    row 2 all of them."""
    mask = torch.ones(batch, width, dtype=torch.bool)
    if width > 1:
        mask[0, max(width - 2, 1):] = False
    if batch > 1:
        mask[1, 0] = False
    if batch > 2:
        mask[2] = False
    return mask


def _inputs(config: dict, layout: dict, batch: int = 3, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    embedding_dim = config["embedding_dim"]
    inner = config["num_attention_heads"] * config["attention_head_dim"]
    proj_dim = config.get("embedding_proj_dim") or embedding_dim
    hidden_shape = (batch, embedding_dim) if layout["L"] is None else (batch, layout["L"], embedding_dim)
    proj_shape = (batch, proj_dim) if layout["K"] is None else (batch, layout["K"], proj_dim)
    inputs = dict(hidden_states=torch.randn(hidden_shape, generator=generator, dtype=torch.float64),
                  proj_embedding=torch.randn(proj_shape, generator=generator, dtype=torch.float64))
    if layout["T"] is not None:
        width = embedding_dim if config.get("encoder_hid_proj_type", "linear") else inner
        inputs["encoder_hidden_states"] = torch.randn(batch, layout["T"], width, generator=generator,
                                                      dtype=torch.float64)
    return inputs


def _run(model, inputs: dict, timestep, attention_mask, cotangents=None):
    """Forward with fresh leaf inputs; with cotangents, backward of a random weighting of the output and of
    post_process_latents(output) (so clip_mean and clip_std get gradients). Returns output, input grads."""
    leaves = {name: t.clone().requires_grad_(True) for name, t in inputs.items()}
    model.zero_grad(set_to_none=True)
    output = model(timestep=timestep, attention_mask=attention_mask, **leaves).predicted_image_embedding
    if cotangents is not None:
        weights_out, weights_post = cotangents
        loss = (output * weights_out).sum() + (model.post_process_latents(output) * weights_post).sum()
        loss.backward()
    return output, {name: t.grad for name, t in leaves.items()}


def _assert_same(reference, ours, inputs, timestep, attention_mask, seed: int = 0):
    ref_out, _ = _run(reference, inputs, timestep, attention_mask)
    generator = torch.Generator().manual_seed(seed)
    cotangents = (torch.randn(ref_out.shape, generator=generator, dtype=torch.float64),
                  torch.randn(ref_out.shape, generator=generator, dtype=torch.float64))
    ref_out, ref_grads = _run(reference, inputs, timestep, attention_mask, cotangents)
    our_out, our_grads = _run(ours, inputs, timestep, attention_mask, cotangents)
    assert our_out.dtype == torch.float64 and our_out.shape == ref_out.shape
    torch.testing.assert_close(our_out, ref_out, rtol=RTOL, atol=ATOL)
    for name, grad in ref_grads.items():
        assert grad is not None and grad.abs().max() > 0, f"input {name} gets no gradient: the check is vacuous"
        torch.testing.assert_close(our_grads[name], grad, rtol=RTOL, atol=ATOL, msg=lambda m: f"grad {name}: {m}")
    ours_params = dict(ours.named_parameters())
    ref_params = dict(reference.named_parameters())
    assert list(ours_params) == list(ref_params)
    for name, p in ref_params.items():
        assert p.grad is not None and p.grad.abs().max() > 0, f"{name} gets no gradient: the check is vacuous"
        torch.testing.assert_close(ours_params[name].grad, p.grad, rtol=RTOL, atol=ATOL,
                                   msg=lambda m: f"grad {name}: {m}")
    return ref_out


def _timesteps(kind: str, batch: int):
    return {"int": 37,
            "float": 37.9,                                        # a Python float is truncated to 37 (as diffusers)
            "tensor0d": torch.tensor(250),
            "tensor1": torch.tensor([5]),
            "tensorN": torch.tensor([0, 999, 421][:batch]),
            "tensorN_float": torch.tensor([0.5, 12.25, 700.75][:batch], dtype=torch.float64)}[kind]


def test_signature_matches_diffusers():
    """The same constructor arguments with the same defaults, and forward's arguments in the same order."""
    def parameters(function):
        return [(p.name, p.default) for p in inspect.signature(function).parameters.values()]

    assert parameters(PriorTransformer.__init__) == parameters(diffusers.PriorTransformer.__init__)
    assert parameters(PriorTransformer.forward) == parameters(diffusers.PriorTransformer.forward)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_state_dict_keys_and_buffer(name):
    config, _ = CONFIGS[name]
    reference, ours = _pair(config)
    assert list(ours.state_dict()) == list(reference.state_dict())        # same keys, same order
    assert "causal_attention_mask" not in ours.state_dict()                 # a non-persistent buffer
    torch.testing.assert_close(ours.causal_attention_mask, reference.causal_attention_mask, rtol=0, atol=0)
    reference.load_state_dict(ours.state_dict(), strict=True)                # and back
    # freshly built (not randomised) models start from the same constants: zero positional / prd / clip vectors
    fresh = PriorTransformer(**config)
    for key in ("positional_embedding", "clip_mean", "clip_std"):
        assert torch.count_nonzero(fresh.state_dict()[key]) == 0


# every layout without a text mask, and with one where the sequence has num_embeddings + additional_embeddings tokens
CASES = [(name, masked) for name, (_, layout) in CONFIGS.items() for masked in (False, True)
         if layout["mask"] or not masked]


@pytest.mark.parametrize("name, masked", CASES)
def test_matches_diffusers(name, masked):
    config, layout = CONFIGS[name]
    reference, ours = _pair(config, seed=len(name))
    inputs = _inputs(config, layout, seed=len(name) + 1)
    mask = _text_mask(3, config["num_embeddings"]) if masked else None
    out = _assert_same(reference, ours, inputs, _timesteps("tensorN", 3), mask)
    if masked:  # the mask (with its causal part) changes the function: the masked check is not the unmasked one
        unmasked, _ = _run(reference, inputs, _timesteps("tensorN", 3), None)
        assert (out - unmasked).abs().max() > 1e-3


def test_soft_mask_checks_the_mask_value():
    """A float mask near 1 gives biases (1 - m) * -10000 of a few units, so the constant -10000 itself is checked
    (with a bool mask any large constant gives the same softmax)."""
    config, layout = CONFIGS["dims_norm_in"]
    reference, ours = _pair(config, seed=9)
    inputs = _inputs(config, layout, seed=10)
    generator = torch.Generator().manual_seed(12)
    soft = 1 - 5e-4 * torch.rand(3, config["num_embeddings"], generator=generator, dtype=torch.float64)
    out = _assert_same(reference, ours, inputs, 17, soft)
    all_true, _ = _run(reference, inputs, 17, torch.ones(3, config["num_embeddings"], dtype=torch.bool))
    assert (out - all_true).abs().max() > 1e-4


@pytest.mark.parametrize("kind", ["int", "float", "tensor0d", "tensor1", "tensorN", "tensorN_float"])
def test_timestep_forms(kind):
    config, layout = CONFIGS["norms_dims_odd_width"]
    reference, ours = _pair(config, seed=3)
    inputs = _inputs(config, layout, seed=4)
    _assert_same(reference, ours, inputs, _timesteps(kind, 3), _text_mask(3, config["num_embeddings"]))


def test_timestep_and_batch_of_one():
    config, layout = CONFIGS["default"]
    reference, ours = _pair(config, seed=5)
    inputs = _inputs(config, layout, batch=1, seed=6)
    out_a = _assert_same(reference, ours, inputs, 3, _text_mask(1, config["num_embeddings"]))
    out_b = _assert_same(reference, ours, inputs, 900, _text_mask(1, config["num_embeddings"]))
    assert (out_a - out_b).abs().max() > 1e-3                               # the timestep matters


def test_float_timestep_is_truncated():
    config, layout = CONFIGS["default"]
    _, ours = _pair(config)
    inputs = _inputs(config, layout)
    with torch.no_grad():
        a = ours(timestep=37.9, **inputs).predicted_image_embedding
        b = ours(timestep=37, **inputs).predicted_image_embedding
        c = ours(timestep=torch.tensor(37.9, dtype=torch.float64), **inputs).predicted_image_embedding
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 0                                           # a float tensor is not truncated


def test_every_learned_vector_matters():
    """positional_embedding and prd_embedding each change the output (they are not inert); that the text mask does
    is checked in test_matches_diffusers."""
    config, layout = CONFIGS["default"]
    _, ours = _pair(config)
    inputs = _inputs(config, layout)
    mask = _text_mask(3, config["num_embeddings"])
    with torch.no_grad():
        base = ours(timestep=10, attention_mask=mask, **inputs).predicted_image_embedding
        for key in ("positional_embedding", "prd_embedding"):
            changed = PriorTransformer(**config).double().eval()
            state = dict(ours.state_dict())
            state[key] = torch.zeros_like(state[key])
            changed.load_state_dict(state, strict=True)
            other = changed(timestep=10, attention_mask=mask, **inputs).predicted_image_embedding
            assert (other - base).abs().max() > 1e-3, key


def test_train_mode_with_dropout():
    """Training mode: the same dropout masks are drawn in the same order, so both still agree."""
    config = dict(CONFIGS["default"][0], dropout=0.3)
    reference, ours = _pair(config, seed=7)
    inputs = _inputs(config, CONFIGS["default"][1], seed=8)
    reference.train()
    ours.train()
    mask = _text_mask(3, config["num_embeddings"])
    torch.manual_seed(11)
    ref_out, _ = _run(reference, inputs, 4, mask)
    torch.manual_seed(11)
    our_out, _ = _run(ours, inputs, 4, mask)
    torch.testing.assert_close(our_out, ref_out, rtol=RTOL, atol=ATOL)
    reference.eval()
    eval_out, _ = _run(reference, inputs, 4, mask)
    assert (eval_out - ref_out).abs().max() > 1e-3                           # dropout really acted


def test_return_dict_and_post_process():
    config, layout = CONFIGS["norms_dims_odd_width"]
    reference, ours = _pair(config)
    inputs = _inputs(config, layout)
    with torch.no_grad():
        output = ours(timestep=3, **inputs)
        assert isinstance(output, PriorTransformerOutput)
        (tuple_out,) = ours(timestep=3, return_dict=False, **inputs)
        torch.testing.assert_close(tuple_out, output.predicted_image_embedding, rtol=0, atol=0)
        latents = torch.randn(4, config["clip_embed_dim"], dtype=torch.float64)
        torch.testing.assert_close(ours.post_process_latents(latents), reference.post_process_latents(latents),
                                   rtol=RTOL, atol=ATOL)


def test_output_shapes():
    for name, expected in (("default", (3, 8)), ("no_prd", (3, 1, 6)), ("shap_e_tokens", (3, 4, 7))):
        config, layout = CONFIGS[name]
        _, ours = _pair(config)
        with torch.no_grad():
            out = ours(timestep=1, **_inputs(config, layout)).predicted_image_embedding
        assert tuple(out.shape) == expected, name


def test_config_errors():
    tiny = dict(num_attention_heads=2, attention_head_dim=4, num_layers=1, embedding_dim=8, num_embeddings=5)
    for bad, pattern in ((dict(norm_in_type="group"), "norm_in_type='group'"),
                         (dict(embedding_proj_norm_type="batch"), "embedding_proj_norm_type='batch'"),
                         (dict(encoder_hid_proj_type="mlp"), "encoder_hid_proj_type='mlp'"),
                         (dict(added_emb_type="clip"), "added_emb_type='clip'"),
                         (dict(time_embed_act_fn="tanh"), "time_embed_act_fn='tanh'"),
                         (dict(num_layers=0), "num_layers"),
                         (dict(num_attention_heads=2.0), "num_attention_heads"),
                         (dict(additional_embeddings=-1), "additional_embeddings"),
                         (dict(dropout=1.5), "dropout"),
                         (dict(clip_embed_dim=-3), "clip_embed_dim")):
        with pytest.raises(ValueError, match=pattern.replace("(", r"\(")):
            PriorTransformer(**{**tiny, **bad})


def test_input_errors():
    config, layout = CONFIGS["default"]
    _, ours = _pair(config)
    good = _inputs(config, layout)
    mask = _text_mask(3, 5)

    def call(**changes):
        kwargs = dict(good, timestep=1, attention_mask=mask)
        kwargs.update(changes)
        return ours(**kwargs)

    with pytest.raises(ValueError, match=r"hidden_states of shape \(N, 8\) or \(N, L, 8\), got \(3,\)"):
        call(hidden_states=torch.randn(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="hidden_states of shape"):
        call(hidden_states=torch.randn(3, 7, dtype=torch.float64))
    with pytest.raises(TypeError, match="floating-point hidden_states, got dtype torch.int64"):
        call(hidden_states=torch.ones(3, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="hidden_states of dtype torch.float64 .the model's., got torch.float32"):
        call(hidden_states=torch.randn(3, 8))
    with pytest.raises(TypeError, match="hidden_states to be a torch.Tensor"):
        call(hidden_states=[[0.0] * 8] * 3)
    with pytest.raises(ValueError, match="proj_embedding with batch size 3"):
        call(proj_embedding=torch.randn(2, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="requires encoder_hidden_states"):
        call(encoder_hidden_states=None)
    with pytest.raises(ValueError, match=r"encoder_hidden_states of shape \(N, T, 8\)"):
        call(encoder_hidden_states=torch.randn(3, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"attention_mask of shape \(N, num_embeddings\) = \(3, 5\), got \(3, 4\)"):
        call(attention_mask=mask[:, :4])
    with pytest.raises(TypeError, match="attention_mask to be a torch.Tensor"):
        call(attention_mask=[[True] * 5] * 3)
    with pytest.raises(ValueError, match=r"timestep as a number or a tensor of shape \(\), \(1,\) or \(3,\)"):
        call(timestep=torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="integer or floating timestep"):
        call(timestep=torch.tensor([True, False, True]))
    with pytest.raises(TypeError, match="timestep to be a number or a tensor, got str"):
        call(timestep="1")
    # 4 text tokens: 8 tokens against 9 positions
    with pytest.raises(ValueError, match="9 positions, the sequence 8 tokens"):
        call(encoder_hidden_states=good["encoder_hidden_states"][:, :4], attention_mask=None)
    with pytest.raises(ValueError, match=r"post_process_latents expected \(\.\.\., 8\)"):
        ours.post_process_latents(torch.randn(3, 5, dtype=torch.float64))


def test_mask_needs_full_sequence():
    """Shap-E's layout (sequence longer than the positional embedding) takes no text mask."""
    config, layout = CONFIGS["shap_e_tokens"]
    _, ours = _pair(config)
    with pytest.raises(ValueError, match="attention_mask needs a sequence of num_embeddings \\+ additional_embeddin"):
        ours(timestep=1, attention_mask=torch.ones(3, 4, dtype=torch.bool), **_inputs(config, layout))


def test_diffusers_rejects_the_same_sequence_mismatch():
    """The length check is no stricter than diffusers': the reference fails on the same input."""
    config, layout = CONFIGS["default"]
    reference, _ = _pair(config)
    inputs = _inputs(config, layout)
    inputs["encoder_hidden_states"] = inputs["encoder_hidden_states"][:, :4]
    with pytest.raises(RuntimeError):
        reference(timestep=1, **inputs)



# ---------------------------------------------------------------------------------------------------------------
# UnCLIPTextProjModel: the decoder's conditioning

PROJ_CONFIGS = {"paper": dict(clip_extra_context_tokens=4, clip_embeddings_dim=8, time_embed_dim=12,
                              cross_attention_dim=6),
                "one_token_odd": dict(clip_extra_context_tokens=1, clip_embeddings_dim=5, time_embed_dim=7,
                                      cross_attention_dim=9),
                "wide_context": dict(clip_extra_context_tokens=3, clip_embeddings_dim=4, time_embed_dim=4,
                                     cross_attention_dim=10)}


def _proj_pair(config, seed=0):
    torch.manual_seed(seed)
    reference = randomize_(ReferenceTextProj(**config), torch.Generator().manual_seed(seed),
                           norm_weights=(0.5, 1.5)).double().eval()
    ours = UnCLIPTextProjModel(**config).double().eval()
    assert list(ours.state_dict()) == list(reference.state_dict())
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


def _proj_inputs(config, batch=3, guidance=False, tokens=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    width, rows = config["clip_embeddings_dim"], 2 * batch if guidance else batch
    return (torch.randn(batch, width, generator=generator, dtype=torch.float64),
            torch.randn(rows, width, generator=generator, dtype=torch.float64),
            torch.randn(rows, tokens, width, generator=generator, dtype=torch.float64))


def _proj_call(guidance):
    return lambda model, image, prompt, states: model(image_embeddings=image, prompt_embeds=prompt,
                                                      text_encoder_hidden_states=states,
                                                      do_classifier_free_guidance=guidance)


def test_text_proj_signature_matches_diffusers():
    def parameters(function):
        return [(p.name, p.default, p.kind) for p in inspect.signature(function).parameters.values()]

    assert parameters(UnCLIPTextProjModel.__init__) == parameters(ReferenceTextProj.__init__)
    assert parameters(UnCLIPTextProjModel.forward) == parameters(ReferenceTextProj.forward)


@pytest.mark.parametrize("guidance", [False, True])
@pytest.mark.parametrize("name", list(PROJ_CONFIGS))
@pytest.mark.parametrize("tokens", [1, 3])
def test_text_proj_matches_diffusers(name, guidance, tokens):
    config = PROJ_CONFIGS[name]
    reference, ours = _proj_pair(config, seed=len(name))
    inputs = _proj_inputs(config, guidance=guidance, tokens=tokens, seed=tokens)
    report = assert_same_module(ours, reference, *inputs, call=_proj_call(guidance), rtol=RTOL, atol=ATOL)
    assert report.max_diff < 1e-12
    context, time_terms = _proj_call(guidance)(ours, *inputs)
    rows = 6 if guidance else 3
    assert context.shape == (rows, config["clip_extra_context_tokens"] + tokens, config["cross_attention_dim"])
    assert time_terms.shape == (rows, config["time_embed_dim"])
    names = [row[0] for row in report.rows]
    assert ("grad learned_classifier_free_guidance_embeddings" in names) == guidance


def test_text_proj_guidance_puts_the_learned_embedding_first():
    config = PROJ_CONFIGS["paper"]
    _, ours = _proj_pair(config)
    image, prompt, states = _proj_inputs(config, guidance=True)
    with torch.no_grad():
        context, time_terms = _proj_call(True)(ours, image, prompt, states)
        null = ours.learned_classifier_free_guidance_embeddings[None].expand(3, -1)
        expected_context, expected_time = _proj_call(False)(ours, torch.cat([null, image]), prompt, states)
    torch.testing.assert_close(context, expected_context, rtol=0, atol=0)
    torch.testing.assert_close(time_terms, expected_time, rtol=0, atol=0)
    assert torch.count_nonzero(UnCLIPTextProjModel(**config).learned_classifier_free_guidance_embeddings) == 0


def test_text_proj_extra_tokens_interleave_the_projection():
    """Token k of the extra context holds outputs k, k + K, k + 2K, ... of the projection (diffusers' reshape to
    (d, K) and transpose); reading contiguous blocks would be a different function of the same weights."""
    config = PROJ_CONFIGS["paper"]
    _, ours = _proj_pair(config)
    image, prompt, states = _proj_inputs(config)
    with torch.no_grad():
        extra = _proj_call(False)(ours, image, prompt, states)[0][:, :4]
        projected = ours.clip_extra_context_tokens_proj(image)                 # (3, 4 * 6)
    for k in range(4):
        torch.testing.assert_close(extra[:, k], projected[:, k::4], rtol=0, atol=0)
    assert (projected.reshape(3, 4, 6) - extra).abs().max() > 1e-2


def test_text_proj_errors():
    with pytest.raises(ValueError, match="time_embed_dim to be a positive int, got 0"):
        UnCLIPTextProjModel(time_embed_dim=0, cross_attention_dim=4)
    with pytest.raises(TypeError):
        UnCLIPTextProjModel(4, 8, 12, 6)                                          # keyword-only, as in diffusers
    config = PROJ_CONFIGS["paper"]
    _, ours = _proj_pair(config)
    image, prompt, states = _proj_inputs(config)
    with pytest.raises(ValueError, match=r"image_embeddings of shape \(N, 8\), got \(3, 5\)"):
        _proj_call(False)(ours, image[:, :5], prompt, states)
    with pytest.raises(TypeError, match="prompt_embeds of dtype torch.float64 .the model's., got torch.float32"):
        _proj_call(False)(ours, image, prompt.float(), states)
    with pytest.raises(ValueError, match="batch size 6, got .3, 8.* unconditional half first"):
        _proj_call(True)(ours, image, prompt, states)
    with pytest.raises(ValueError, match=r"text_encoder_hidden_states of shape \(N, S, 8\), got \(3, 8\)"):
        _proj_call(False)(ours, image, prompt, states[:, 0])
