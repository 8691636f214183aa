"""common.models.stable_diffusion (exported from stage6_frontier/04_stable_diffusion.ipynb) against diffusers.

Schedulers: bit-exact (rtol=0, atol=0) against DDPMScheduler / DDIMScheduler: the tables are float32 in both, and
every step computes its scalar coefficients in float32 in the same order, for float32 and float64 samples alike.
Four corner cases where diffusers is wrong are pinned: the spurious -1 timestep of some trailing schedules, the
leading + offset schedule past the table, the NaN of 'fixed_large_log', and the NaN of DDIM at zero terminal SNR.

Models: every diffusers module is built with a seed, all its parameters are redrawn (nothing stays at a zero or one
initialisation, so every path can show a difference), it is converted to float64 and its state_dict is loaded into
ours with strict=True (same keys, same order). Outputs are compared in eval mode, then the gradients of a random
weighting of the output with respect to every floating input and every parameter, by name. The Fréchet distance is
checked against its closed form for diagonal covariances.
"""
import logging
import math

import pytest
import torch
import torch.nn.functional as F

diffusers = pytest.importorskip("diffusers")
from diffusers import DDIMScheduler as RefDDIMScheduler
from diffusers import DDPMScheduler as RefDDPMScheduler
from diffusers import UNet2DConditionModel as RefUNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock as RefBasicTransformerBlock
from diffusers.models.attention import FeedForward as RefFeedForward
from diffusers.models.attention_processor import Attention as RefAttention
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution as RefDiagonalGaussianDistribution
from diffusers.models.downsampling import Downsample2D as RefDownsample2D
from diffusers.models.embeddings import TimestepEmbedding as RefTimestepEmbedding
from diffusers.models.embeddings import Timesteps as RefTimesteps
from diffusers.models.resnet import ResnetBlock2D as RefResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel as RefTransformer2DModel
from diffusers.models.unets import unet_2d_blocks as ref_blocks
from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D as RefUNetMidBlock2D
from diffusers.models.upsampling import Upsample2D as RefUpsample2D
from torch import nn
from torch.testing import assert_close

from common.models import stable_diffusion as sd  # noqa: E402
from common.models.stable_diffusion import (AutoencoderKL, CrossAttention, DDIMScheduler, DDPMScheduler,  # noqa: E402
                                            DiagonalGaussianDistribution, Downsample2D, DownEncoderBlock2D,
                                            ResnetBlock2D, SchedulerOutput, UNetMidBlock2D, Upsample2D, VAEDecoder,
                                            VAEEncoder, frechet_distance)

torch.set_num_threads(1)
logging.getLogger("diffusers").setLevel(logging.ERROR)


# ----------------------------------------------------------------------------------------------------------------
# shared test machinery
# ----------------------------------------------------------------------------------------------------------------

DTYPE = torch.float64
TOL = dict(rtol=1e-11, atol=1e-12)       # observed: about 1e-14 on outputs and gradients


def randn(*shape, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)


def randomise_(module: nn.Module, seed: int) -> nn.Module:
    """Redraw every parameter: norms' weights around 1 and biases around 0; weights ~ N(0, 1/fan_in)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for sub in module.modules():
            is_norm = isinstance(sub, (nn.GroupNorm, nn.LayerNorm))
            for name, parameter in sub.named_parameters(recurse=False):
                noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
                if is_norm:
                    value = 1 + 0.3 * noise if name == "weight" else 0.3 * noise
                elif parameter.ndim >= 2:
                    value = noise / math.sqrt(parameter[0].numel())       # fan_in = in_features (* kernel)
                else:
                    value = 0.3 * noise
                parameter.copy_(value.to(parameter.dtype))
    for name, parameter in module.named_parameters():
        assert bool((parameter != 0).all()), f"{name} kept a zero after randomising"
    return module


def build_pair(reference_class, my_class, config: dict, seed: int = 0):
    """diffusers' module (seeded, randomised) and ours, both float64 in eval mode, with the reference's state_dict
    loaded strictly into ours after checking that the keys and their order agree."""
    torch.manual_seed(seed)
    reference = randomise_(reference_class(**config), seed).to(DTYPE).eval()
    mine = my_class(**config).to(DTYPE).eval()
    assert list(mine.state_dict()) == list(reference.state_dict()), "state_dict keys (or their order) differ"
    mine.load_state_dict(reference.state_dict(), strict=True)
    return reference, mine


def leaves(inputs: dict, differentiable) -> dict:
    """Fresh copies of the inputs; the differentiable ones become leaves that collect gradients."""
    copies = {}
    for name, value in inputs.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().clone().requires_grad_(name in differentiable)
        copies[name] = value
    return copies


def check_same_function(reference: nn.Module, mine: nn.Module, inputs: dict, call=None, seed: int = 0,
                        differentiable=None, unused=()) -> torch.Tensor:
    """Equal eval-mode outputs and equal gradients (inputs and every parameter, by name); returns the output.

    call(module, inputs) -> tensor (default module(**inputs)); differentiable: the inputs to differentiate with
    respect to (default: every floating tensor); unused: prefixes of parameters the output does not depend on (they
    must get no gradient). Every other gradient, and the output, must be non-zero, so that the check can fail.
    """
    call = call or (lambda module, x: module(**x))
    if differentiable is None:
        differentiable = [k for k, v in inputs.items() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    reference_inputs, my_inputs = leaves(inputs, differentiable), leaves(inputs, differentiable)
    expected = call(reference, reference_inputs)
    actual = call(mine, my_inputs)
    assert actual.dtype == expected.dtype == DTYPE
    assert_close(actual, expected, **TOL)
    assert expected.abs().max() > 1e-3, "a vanishing output cannot show a difference"

    weights = torch.randn(expected.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=DTYPE)
    (expected * weights).sum().backward()
    (actual * weights).sum().backward()
    for name in differentiable:
        grad = reference_inputs[name].grad
        assert grad is not None and grad.abs().max() > 0, f"the output ignores input {name}"
        assert_close(my_inputs[name].grad, grad, **TOL, msg=lambda m, name=name: f"{name}: {m}")
    reference_parameters = dict(reference.named_parameters())
    my_parameters = dict(mine.named_parameters())
    assert list(my_parameters) == list(reference_parameters)
    for name, parameter in reference_parameters.items():
        if name.startswith(tuple(unused)):
            assert parameter.grad is None and my_parameters[name].grad is None, name
            continue
        assert parameter.grad is not None and parameter.grad.abs().max() > 0, f"the output ignores {name}"
        assert_close(my_parameters[name].grad, parameter.grad, **TOL, msg=lambda m, name=name: f"grad of {name}: {m}")
    return expected


# ================================================================================================================
# schedulers
# ================================================================================================================

SHAPE = (2, 3, 4, 5)  # (N, C, H, W)
SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def assert_exact(actual, expected, msg=""):
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{msg}\n{m}")


def fake_model(sample: torch.Tensor, t) -> torch.Tensor:
    """A fixed, nonlinear, timestep-dependent stand-in for a denoising network."""
    t = float(t)
    return 0.6 * sample + 0.4 * torch.sin(1.7 * sample + 0.003 * t) + 0.1 * math.cos(0.01 * t)


def sampling_loop(scheduler, num_inference_steps, dtype, seed, **step_kwargs):
    """Run a whole sampling loop with fake_model; returns every prev_sample and pred_original_sample."""
    if num_inference_steps is not None:
        scheduler.set_timesteps(num_inference_steps)
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(SHAPE, generator=generator, dtype=dtype) * scheduler.init_noise_sigma
    outputs = []
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(sample, t)
        out = scheduler.step(fake_model(model_input, t), t, sample, generator=generator, **step_kwargs)
        outputs.append((out.prev_sample, out.pred_original_sample))
        sample = out.prev_sample
    return outputs


def assert_same_loop(ours, reference):
    assert len(ours) == len(reference)
    for i, ((prev, x0), (ref_prev, ref_x0)) in enumerate(zip(ours, reference)):
        assert prev.dtype == ref_prev.dtype
        assert torch.isfinite(prev).all(), f"step {i} is not finite"
        assert_exact(prev, ref_prev, f"prev_sample differs at step {i}")
        assert_exact(x0, ref_x0, f"pred_original_sample differs at step {i}")


# ----------------------------------------------------------------------------------------------------------------
# noise tables and schedules

TABLE_CONFIGS = [
    dict(),
    dict(**SD_BETAS),
    dict(beta_schedule="squaredcos_cap_v2"),
    dict(num_train_timesteps=37, beta_start=0.001, beta_end=0.2),
    dict(num_train_timesteps=37, beta_schedule="squaredcos_cap_v2"),
    dict(num_train_timesteps=250, **SD_BETAS),
    dict(rescale_betas_zero_snr=True, **SD_BETAS),
    dict(rescale_betas_zero_snr=True, beta_schedule="squaredcos_cap_v2"),
    dict(num_train_timesteps=20, trained_betas=torch.linspace(0.01, 0.3, 20, dtype=torch.float64).tolist()),
]


@pytest.mark.parametrize("config", TABLE_CONFIGS)
@pytest.mark.parametrize("ours_cls, reference_cls", [(DDPMScheduler, RefDDPMScheduler),
                                                     (DDIMScheduler, RefDDIMScheduler)])
def test_tables_match(config, ours_cls, reference_cls):
    ours, reference = ours_cls(**config), reference_cls(**config)
    for name in ("betas", "alphas", "alphas_cumprod", "timesteps"):
        assert_exact(getattr(ours, name), getattr(reference, name), name)
    assert ours.init_noise_sigma == reference.init_noise_sigma
    assert len(ours) == len(reference)
    assert ours.num_inference_steps is None
    if ours_cls is DDIMScheduler:
        assert_exact(ours.final_alpha_cumprod, reference.final_alpha_cumprod)
    if config.get("rescale_betas_zero_snr"):
        assert ours.alphas_cumprod[-1] == 0  # zero terminal SNR really reached


def test_cosine_schedule_many_lengths():
    for total in list(range(1, 60)) + [500, 1000, 1234]:
        assert_exact(DDPMScheduler(total, beta_schedule="squaredcos_cap_v2").betas,
                     RefDDPMScheduler(total, beta_schedule="squaredcos_cap_v2").betas, f"T={total}")


def test_schedules_really_differ():
    betas = [DDPMScheduler(**config).betas for config in TABLE_CONFIGS[:3]]
    assert not torch.equal(betas[0], betas[1]) and not torch.equal(betas[1], betas[2])


def test_config_records_the_arguments():
    ours = DDIMScheduler(steps_offset=1, set_alpha_to_one=False, **SD_BETAS)
    reference = RefDDIMScheduler(steps_offset=1, set_alpha_to_one=False, **SD_BETAS)
    for key, value in ours.config.items():
        assert reference.config[key] == value, key
        assert getattr(ours.config, key) == value
    assert set(ours.config) == {k for k in reference.config if not k.startswith("_")}
    assert set(DDPMScheduler().config) == {k for k in RefDDPMScheduler().config if not k.startswith("_")}
    with pytest.raises(TypeError, match="read-only"):
        ours.config.steps_offset = 0
    with pytest.raises(TypeError, match="read-only"):
        ours.config["steps_offset"] = 0


def _timesteps_agree(ours, reference, n):
    """Equal, or diffusers' trailing schedule with its spurious final -1 (np.arange overshoot) and ours without."""
    ours.set_timesteps(n)
    reference.set_timesteps(n)
    mine, theirs = ours.timesteps, reference.timesteps
    assert mine.dtype == theirs.dtype == torch.int64
    assert len(mine) == n
    if len(theirs) == n + 1:
        assert ours.config.timestep_spacing == "trailing" and theirs[-1] == -1, (n, theirs[-3:])
        assert_exact(mine, theirs[:-1], f"n={n}")
        return False
    assert_exact(mine, theirs, f"n={n}")
    return True


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_timesteps_every_step_count(spacing):
    """All n in 1..T for T=1000 and T=37 (most n do not divide T)."""
    for total, offsets in ((1000, (0, 1)), (37, (0, 3))):
        for offset in offsets:
            config = dict(num_train_timesteps=total, timestep_spacing=spacing, steps_offset=offset)
            ours, reference = DDPMScheduler(**config), RefDDPMScheduler(**config)
            exact, refused = [], 0
            for n in range(1, total + 1):
                reference.set_timesteps(n)
                if reference.timesteps[0] >= total:  # leading + offset past the end: we refuse, diffusers doesn't
                    with pytest.raises(ValueError, match="past the last training step"):
                        ours.set_timesteps(n)
                    refused += 1
                    continue
                exact.append(_timesteps_agree(ours, reference, n))
            if spacing == "trailing" and total == 1000:
                assert exact.count(False) == 62  # e.g. n = 61: diffusers appends timestep -1
            else:
                assert all(exact)
            assert refused == (0 if spacing != "leading" or offset == 0 else 1 if total == 1000 else 4)


def test_ddim_timesteps_match_too():
    for spacing in ("leading", "trailing", "linspace"):
        config = dict(timestep_spacing=spacing, steps_offset=1)
        ours, reference = DDIMScheduler(**config), RefDDIMScheduler(**config)
        for n in (1, 3, 7, 10, 50, 333, 999):
            assert _timesteps_agree(ours, reference, n)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_ddpm_previous_timestep(spacing):
    ours, reference = DDPMScheduler(timestep_spacing=spacing), RefDDPMScheduler(timestep_spacing=spacing)
    for t in (999, 500, 1, 0):
        assert ours.previous_timestep(t) == int(reference.previous_timestep(t)) == t - 1
    for n in (7, 10, 33):
        ours.set_timesteps(n)
        reference.set_timesteps(n)
        for t in ours.timesteps:
            assert ours.previous_timestep(t) == int(reference.previous_timestep(t))
        assert ours.previous_timestep(ours.timesteps[-1]) == -1


# ----------------------------------------------------------------------------------------------------------------
# whole sampling loops: the short ones in float32 and float64; each 1000-step loop once (float32 and float64 take
# the same code path, which the short loops already check in both dtypes)

F32, F64 = torch.float32, torch.float64
DDPM_LOOPS = [
    (dict(), 10, F32), (dict(), 10, F64),
    (dict(), None, F64),  # all 1000 training steps, no set_timesteps
    (dict(), 1000, F32),
    (dict(clip_sample=False), 10, F32), (dict(clip_sample=False), 10, F64),
]
for _config, _steps in [
        (dict(prediction_type="v_prediction", clip_sample=False, timestep_spacing="trailing", **SD_BETAS), 7),
        (dict(prediction_type="sample", beta_schedule="squaredcos_cap_v2", timestep_spacing="linspace",
              variance_type="fixed_large"), 13),
        (dict(variance_type="fixed_small_log", steps_offset=1), 33),
        (dict(variance_type="fixed_large", clip_sample_range=2.0, timestep_spacing="trailing"), 30),
        (dict(rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing",
              **SD_BETAS), 20),
        (dict(num_train_timesteps=37, beta_end=0.2, timestep_spacing="linspace", prediction_type="v_prediction"), 11),
        (dict(num_train_timesteps=20, trained_betas=TABLE_CONFIGS[-1]["trained_betas"], clip_sample=False), 6)]:
    DDPM_LOOPS += [(_config, _steps, F32), (_config, _steps, F64)]


@pytest.mark.parametrize("config, steps, dtype", DDPM_LOOPS)
def test_ddpm_sampling_loop(config, steps, dtype):
    ours = sampling_loop(DDPMScheduler(**config), steps, dtype, seed=3)
    reference = sampling_loop(RefDDPMScheduler(**config), steps, dtype, seed=3)
    assert_same_loop(ours, reference)


DDIM_LOOPS = [
    (dict(set_alpha_to_one=False, timestep_spacing="trailing", prediction_type="sample"), 1000, dict(eta=0.5), F64),
]
for _config, _steps, _kwargs in [
        (dict(), 10, dict()),
        (dict(clip_sample=False), 10, dict(eta=1.0)),
        (dict(steps_offset=1, set_alpha_to_one=False, clip_sample=False, **SD_BETAS), 50, dict()),
        (dict(prediction_type="v_prediction", beta_schedule="squaredcos_cap_v2", timestep_spacing="trailing"), 7,
         dict(eta=0.5)),
        (dict(prediction_type="sample", timestep_spacing="linspace", clip_sample_range=1.5), 13, dict(eta=1.0)),
        (dict(rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing",
              clip_sample=False, **SD_BETAS), 25, dict(eta=0.5)),
        (dict(), 20, dict(eta=0.5, use_clipped_model_output=True)),
        (dict(num_train_timesteps=37, beta_end=0.2, timestep_spacing="linspace"), 11, dict(eta=0.5))]:
    DDIM_LOOPS += [(_config, _steps, _kwargs, F32), (_config, _steps, _kwargs, F64)]


@pytest.mark.parametrize("config, steps, step_kwargs, dtype", DDIM_LOOPS)
def test_ddim_sampling_loop(config, steps, step_kwargs, dtype):
    ours = sampling_loop(DDIMScheduler(**config), steps, dtype, seed=5, **step_kwargs)
    reference = sampling_loop(RefDDIMScheduler(**config), steps, dtype, seed=5, **step_kwargs)
    assert_same_loop(ours, reference)


def test_loop_options_really_change_the_result():
    """Clipping, eta, use_clipped_model_output and set_alpha_to_one each change the samples the loops compare."""
    def final(scheduler, **kwargs):
        return sampling_loop(scheduler, 10, torch.float64, seed=5, **kwargs)[-1][0]

    assert not torch.equal(final(DDPMScheduler()), final(DDPMScheduler(clip_sample=False)))
    etas = [final(DDIMScheduler(), eta=eta) for eta in (0.0, 0.5, 1.0)]
    assert not torch.equal(etas[0], etas[1]) and not torch.equal(etas[1], etas[2])
    assert not torch.equal(final(DDIMScheduler(), eta=0.5),
                           final(DDIMScheduler(), eta=0.5, use_clipped_model_output=True))
    assert not torch.equal(final(DDIMScheduler()), final(DDIMScheduler(set_alpha_to_one=False)))
    variances = [final(DDPMScheduler(variance_type=kind)) for kind in ("fixed_small", "fixed_large")]
    assert not torch.equal(*variances)


def test_per_sample_generators_and_global_rng():
    noise_a = [torch.Generator().manual_seed(seed) for seed in (1, 2)]  # one generator per batch element
    noise_b = [torch.Generator().manual_seed(seed) for seed in (1, 2)]
    sample = torch.randn(SHAPE, dtype=torch.float64)
    for ours, reference in ((DDPMScheduler(), RefDDPMScheduler()), (DDIMScheduler(), RefDDIMScheduler())):
        kwargs = dict(eta=0.7) if isinstance(ours, DDIMScheduler) else {}
        ours.set_timesteps(10)
        reference.set_timesteps(10)
        for t in ours.timesteps[:3]:
            mine = ours.step(fake_model(sample, t), t, sample, generator=noise_a, **kwargs).prev_sample
            theirs = reference.step(fake_model(sample, t), t, sample, generator=noise_b, **kwargs).prev_sample
            assert_exact(mine, theirs)
            torch.manual_seed(11)
            mine = ours.step(fake_model(sample, t), t, sample, **kwargs).prev_sample
            torch.manual_seed(11)
            theirs = reference.step(fake_model(sample, t), t, sample, **kwargs).prev_sample
            assert_exact(mine, theirs)


def test_explicit_variance_noise_and_tuple_output():
    sample = torch.randn(SHAPE, dtype=torch.float64)
    noise = torch.randn(SHAPE, dtype=torch.float64)
    ddim, reference = DDIMScheduler(), RefDDIMScheduler()
    ddim.set_timesteps(10)
    reference.set_timesteps(10)
    t = ddim.timesteps[2]
    mine = ddim.step(fake_model(sample, t), t, sample, eta=0.8, variance_noise=noise, return_dict=False)
    theirs = reference.step(fake_model(sample, t), t, sample, eta=0.8, variance_noise=noise, return_dict=False)
    assert isinstance(mine, tuple) and len(mine) == 2
    assert_exact(mine[0], theirs[0])
    assert_exact(mine[1], theirs[1])
    # DDPM: a given variance_noise is exactly what the generator would have drawn
    ddpm = DDPMScheduler()
    ddpm.set_timesteps(10)
    t = ddpm.timesteps[2]
    drawn = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    given = ddpm.step(fake_model(sample, t), t, sample, variance_noise=drawn)
    seeded = ddpm.step(fake_model(sample, t), t, sample, generator=torch.Generator().manual_seed(4))
    assert isinstance(given, SchedulerOutput)
    assert_exact(given.prev_sample, seeded.prev_sample)


def test_ddim_zero_snr_eta_one_diffusers_nan():
    """At abar_t = 0, eta = 1: 1 - abar_s - sigma^2 rounds to -6e-8; diffusers' sqrt gives NaN, ours clamps to 0."""
    config = dict(rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing",
                  clip_sample=False, **SD_BETAS)
    ours = sampling_loop(DDIMScheduler(**config), 25, torch.float64, seed=5, eta=1.0)
    reference = sampling_loop(RefDDIMScheduler(**config), 25, torch.float64, seed=5, eta=1.0)
    assert torch.isnan(reference[0][0]).all()
    assert all(torch.isfinite(prev).all() for prev, _ in ours)
    # from the second step on (abar_t > 0) the formulas agree again: restart diffusers from our first sample
    scheduler = RefDDIMScheduler(**config)
    scheduler.set_timesteps(25)
    generator = torch.Generator().manual_seed(5)
    for _ in range(2):  # advance past the initial sample and the first step's noise
        torch.randn(SHAPE, generator=generator, dtype=torch.float64)
    sample = ours[0][0]
    for i, t in enumerate(scheduler.timesteps[1:], start=1):
        sample = scheduler.step(fake_model(sample, t), t, sample, eta=1.0, generator=generator).prev_sample
        assert_exact(sample, ours[i][0], f"step {i}")


def test_fixed_large_log_diffusers_bug():
    """diffusers' step takes sqrt(log(beta)) for 'fixed_large_log', which is NaN; ours uses exp(log(beta) / 2)."""
    ours = DDPMScheduler(variance_type="fixed_large_log")
    reference = RefDDPMScheduler(variance_type="fixed_large_log")
    large = DDPMScheduler(variance_type="fixed_large")
    for scheduler in (ours, reference, large):
        scheduler.set_timesteps(10)
    for t in ours.timesteps:
        assert_exact(ours._get_variance(t), reference._get_variance(t))  # log(beta) in both
    sample = torch.randn(SHAPE, dtype=torch.float64)
    t = ours.timesteps[3]
    theirs = reference.step(fake_model(sample, t), t, sample, generator=torch.Generator().manual_seed(0))
    assert torch.isnan(theirs.prev_sample).all()
    mine = ours.step(fake_model(sample, t), t, sample, generator=torch.Generator().manual_seed(0))
    via_beta = large.step(fake_model(sample, t), t, sample, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(mine.prev_sample, via_beta.prev_sample, rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------------------------------------------
# variances, add_noise, get_velocity

@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log"])
def test_ddpm_get_variance(variance_type):
    for spacing, steps in (("leading", None), ("leading", 10), ("trailing", 7), ("linspace", 33)):
        config = dict(variance_type=variance_type, timestep_spacing=spacing, steps_offset=1, **SD_BETAS)
        ours, reference = DDPMScheduler(**config), RefDDPMScheduler(**config)
        if steps is not None:
            ours.set_timesteps(steps)
            reference.set_timesteps(steps)
        for t in ours.timesteps[::3].tolist() + [int(ours.timesteps[-1])]:
            assert_exact(ours._get_variance(t), reference._get_variance(t), f"{spacing} t={t}")


def test_ddim_get_variance():
    for set_alpha_to_one in (True, False):
        ours = DDIMScheduler(set_alpha_to_one=set_alpha_to_one)
        reference = RefDDIMScheduler(set_alpha_to_one=set_alpha_to_one)
        for t, prev in ((999, 899), (500, 499), (37, 0), (20, -1), (0, -1), (0, -100)):
            assert_exact(ours._get_variance(t, prev), reference._get_variance(t, prev), f"{t} -> {prev}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("config", [dict(), dict(**SD_BETAS), dict(beta_schedule="squaredcos_cap_v2"),
                                    dict(rescale_betas_zero_snr=True, **SD_BETAS)])
def test_add_noise_and_velocity(config, dtype):
    generator = torch.Generator().manual_seed(0)
    clean = torch.randn(4, 3, 5, 5, generator=generator, dtype=dtype)
    noise = torch.randn(4, 3, 5, 5, generator=generator, dtype=dtype)
    per_sample = torch.tensor([0, 17, 500, 999])
    for ours, reference in ((DDPMScheduler(**config), RefDDPMScheduler(**config)),
                            (DDIMScheduler(**config), RefDDIMScheduler(**config))):
        for timesteps in (per_sample, torch.tensor(321), torch.tensor([999])):
            assert_exact(ours.add_noise(clean, noise, timesteps), reference.add_noise(clean, noise, timesteps))
            assert_exact(ours.get_velocity(clean, noise, timesteps), reference.get_velocity(clean, noise, timesteps))
        flat_clean, flat_noise = clean.flatten(1), noise.flatten(1)  # (N, D) samples broadcast the same way
        assert_exact(ours.add_noise(flat_clean, flat_noise, per_sample),
                     reference.add_noise(flat_clean, flat_noise, per_sample))
    # each sample got its own timestep: the per-sample result differs from one shared timestep
    assert not torch.equal(DDPMScheduler(**config).add_noise(clean, noise, per_sample),
                           DDPMScheduler(**config).add_noise(clean, noise, torch.tensor(500)))


# ----------------------------------------------------------------------------------------------------------------
# the lesson's numerical facts

def test_forward_chain_matches_closed_form():
    """Running x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps step by step gives q(x_t | x_0) of add_noise."""
    scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    num_chains = 10000
    x0 = torch.tensor([1.5, -0.7, 0.0, 0.3], dtype=torch.float64).expand(num_chains, 4)  # (M, 4): four data points
    generator = torch.Generator().manual_seed(0)
    betas = scheduler.betas.double()
    check_at = {0, 10, 100, 400, 999}
    x = x0.clone()
    for t in range(len(scheduler)):
        x = (1 - betas[t]).sqrt() * x + betas[t].sqrt() * torch.randn(x.shape, generator=generator,
                                                                      dtype=torch.float64)
        if t not in check_at:
            continue
        timesteps = torch.full((num_chains,), t)
        mean = scheduler.add_noise(x0, torch.zeros_like(x0), timesteps)[0]  # sqrt(abar_t) x_0
        std = scheduler.add_noise(x0, torch.ones_like(x0), timesteps)[0] - mean  # sqrt(1 - abar_t)
        variance = std ** 2
        # standard errors: of a mean sqrt(var / M); of a Gaussian sample variance var * sqrt(2 / (M - 1))
        mean_tolerance = 5 * (variance / num_chains).sqrt()
        variance_tolerance = 5 * variance * math.sqrt(2 / (num_chains - 1))
        assert ((x.mean(0) - mean).abs() <= mean_tolerance).all(), (t, x.mean(0), mean)
        assert ((x.var(0) - variance).abs() <= variance_tolerance).all(), (t, x.var(0), variance)
        if t == 100:  # the check has teeth: the un-accumulated one-step scale would be far off
            wrong_mean = (1 - betas[t]).sqrt() * x0[0]
            assert ((x.mean(0) - wrong_mean).abs() > mean_tolerance)[:2].all()


def test_ddim_eta_one_is_the_ddpm_posterior():
    """With the full 1000-step schedule, DDIM's sigma^2 / eta^2 is DDPM's beta_tilde, and the steps coincide."""
    ddim, ddpm = DDIMScheduler(clip_sample=False), DDPMScheduler(clip_sample=False, variance_type="fixed_small")
    ddim.set_timesteps(1000)
    ddpm.set_timesteps(1000)
    alpha_bar = ddpm.alphas_cumprod.double()
    betas = ddpm.betas.double()
    for t in range(1, 1000):
        ddim_variance, ddpm_variance = ddim._get_variance(t, t - 1), ddpm._get_variance(t)
        assert_exact(ddim_variance, ddpm_variance, f"t={t}")
        # beta_tilde_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t, in float64 from the float32 tables
        beta_tilde = (1 - alpha_bar[t - 1]) / (1 - alpha_bar[t]) * betas[t]
        # the float32 tables know beta only through 1 - abar_t / abar_{t-1}, whose rounding error is up to one
        # float32 ulp of 1 (1.2e-7) in absolute terms: up to 5e-4 relative when beta ~ 1e-4
        torch.testing.assert_close(ddim_variance.double(), beta_tilde, rtol=0, atol=2.5e-7)
    assert ddim._get_variance(0, -1) == 0  # last step: abar_{-1} = 1, no noise (DDPM clamps it to 1e-20)
    # the steps themselves: from the same x_t with the same z, DDIM(eta=1) and DDPM give the same x_{t-1}. With
    # float32 tables the DDIM coefficient sqrt(1 - abar_{t-1} - sigma^2) loses digits to cancellation near t = 0
    # (errors ~1e-4), so the identity is checked with the tables promoted to float64, where it holds to 1e-10.
    for scheduler in (ddim, ddpm):
        scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()
    ddim.final_alpha_cumprod, ddpm._one = ddim.final_alpha_cumprod.double(), ddpm._one.double()
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(SHAPE, generator=generator, dtype=torch.float64)
    for t in ddim.timesteps:
        z = torch.randn(SHAPE, generator=generator, dtype=torch.float64)
        model_output = fake_model(sample, t)
        via_ddim = ddim.step(model_output, t, sample, eta=1.0, variance_noise=z).prev_sample
        via_ddpm = ddpm.step(model_output, t, sample, variance_noise=z).prev_sample
        torch.testing.assert_close(via_ddim, via_ddpm, rtol=1e-9, atol=1e-10, msg=f"t={int(t)}")
        sample = via_ddpm
    sample_ddim = sample
    deterministic = sampling_loop(DDIMScheduler(clip_sample=False), 1000, torch.float64, seed=0, eta=0.0)[-1][0]
    assert (deterministic - sample_ddim).abs().max() > 0.1  # eta matters: eta = 0 lands elsewhere


# ----------------------------------------------------------------------------------------------------------------
# scheduler errors

@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
def test_bad_scheduler_configs(cls):
    with pytest.raises(ValueError, match="beta_schedule='sigmoid'.*'linear'"):
        cls(beta_schedule="sigmoid")
    with pytest.raises(ValueError, match="prediction_type='noise'.*'epsilon'"):
        cls(prediction_type="noise")
    with pytest.raises(ValueError, match="timestep_spacing='uniform'.*'leading'"):
        cls(timestep_spacing="uniform")
    with pytest.raises(ValueError, match="thresholding=True"):
        cls(thresholding=True)
    with pytest.raises(ValueError, match="trained_betas.*num_train_timesteps=1000"):
        cls(trained_betas=[0.1] * 10)
    with pytest.raises(ValueError, match="num_train_timesteps"):
        cls(num_train_timesteps=0)
    with pytest.raises(ValueError, match="steps_offset"):
        cls(steps_offset=-1)


def test_ddpm_refuses_learned_variances():
    for kind in ("learned", "learned_range"):
        with pytest.raises(ValueError, match=f"variance_type='{kind}'.*'fixed_small'"):
            DDPMScheduler(variance_type=kind)


@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
def test_bad_step_counts(cls):
    scheduler = cls()
    with pytest.raises(ValueError, match="between 1 and num_train_timesteps=1000, got 1001"):
        scheduler.set_timesteps(1001)
    with pytest.raises(ValueError, match="between 1"):
        scheduler.set_timesteps(0)
    with pytest.raises(ValueError, match="integer"):
        scheduler.set_timesteps(10.0)
    # diffusers silently produces timestep 1000 here and fails later with an IndexError
    with pytest.raises(ValueError, match="steps_offset=1 with 1000 'leading' steps gives timestep 1000"):
        cls(steps_offset=1).set_timesteps(1000)


@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
def test_bad_step_inputs(cls):
    scheduler = cls()
    sample = torch.randn(SHAPE)
    if cls is DDIMScheduler:
        with pytest.raises(ValueError, match="set_timesteps"):
            scheduler.step(sample, 10, sample)
    scheduler.set_timesteps(10)
    with pytest.raises(ValueError, match=r"timestep must be in \[0, 999\].*got 1000"):
        scheduler.step(sample, 1000, sample)
    with pytest.raises(ValueError, match=r"timestep must be in \[0, 999\].*got -1"):
        scheduler.step(sample, -1, sample)
    with pytest.raises(ValueError, match="integer"):
        scheduler.step(sample, 10.5, sample)
    with pytest.raises(ValueError, match="one-element integer tensor"):
        scheduler.step(sample, torch.tensor([900, 800]), sample)
    with pytest.raises(ValueError, match=r"model_output must have the shape of sample \(2, 3, 4, 5\), got \(2, 6"):
        scheduler.step(torch.randn(2, 6, 4, 5), 900, sample)
    with pytest.raises(TypeError, match="model_output to be a floating-point tensor"):
        scheduler.step(sample.long(), 900, sample)
    kwargs = dict(eta=0.5) if cls is DDIMScheduler else {}
    with pytest.raises(ValueError, match="either generator or variance_noise"):
        scheduler.step(sample, 900, sample, generator=torch.Generator(), variance_noise=sample, **kwargs)
    with pytest.raises(ValueError, match="variance_noise must have the shape"):
        scheduler.step(sample, 900, sample, variance_noise=sample[:1], **kwargs)
    with pytest.raises(ValueError, match="one per batch element"):
        scheduler.step(sample, 900, sample, generator=[torch.Generator()] * 3, **kwargs)


def test_ddpm_timestep_outside_schedule():
    scheduler = DDPMScheduler()
    scheduler.set_timesteps(10)
    with pytest.raises(ValueError, match="timestep 901 is not in the inference schedule"):
        scheduler.step(torch.randn(SHAPE), 901, torch.randn(SHAPE))
    with pytest.raises(ValueError, match="not in the inference schedule"):
        scheduler.previous_timestep(5)


@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
def test_bad_add_noise_inputs(cls):
    scheduler, clean = cls(), torch.randn(4, 3, 2, 2)
    with pytest.raises(ValueError, match="one value or one per sample \\(4\\), got 3"):
        scheduler.add_noise(clean, clean, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"timesteps must be in \[0, 999\].*to 1000"):
        scheduler.add_noise(clean, clean, torch.tensor([1, 2, 3, 1000]))
    with pytest.raises(ValueError, match="integers"):
        scheduler.get_velocity(clean, clean, torch.tensor([0.5, 1, 2, 3]))
    with pytest.raises(ValueError, match="noise must have the shape of original_samples"):
        scheduler.add_noise(clean, clean[:2], torch.tensor(3))
    with pytest.raises(TypeError, match="original_samples to be a floating-point tensor"):
        scheduler.add_noise(clean.long(), clean, torch.tensor(3))


# ================================================================================================================
# shared blocks: ResnetBlock2D, Downsample2D, Upsample2D, CrossAttention, UNetMidBlock2D
# ================================================================================================================

RESNET_CONFIGS = [
    dict(in_channels=8, temb_channels=16, groups=4),
    dict(in_channels=8, out_channels=12, temb_channels=None, groups=4, groups_out=3, output_scale_factor=2.0),
    dict(in_channels=6, out_channels=8, temb_channels=5, groups=2, time_embedding_norm="scale_shift",
         skip_time_act=True, non_linearity="mish", eps=1e-3),
    dict(in_channels=8, out_channels=8, temb_channels=7, groups=2, use_in_shortcut=True, conv_shortcut_bias=False,
         non_linearity="gelu", conv_2d_out_channels=10),
    dict(in_channels=4, out_channels=6, temb_channels=3, groups=1, non_linearity="relu", dropout=0.3,
         conv_shortcut=True, time_embedding_norm="scale_shift"),
]


@pytest.mark.parametrize("config", RESNET_CONFIGS)
@pytest.mark.parametrize("size", [(7, 7), (5, 6)])
def test_resnet_block(config, size):
    reference, mine = build_pair(RefResnetBlock2D, ResnetBlock2D, config)
    inputs = {"input_tensor": randn(2, config["in_channels"], *size)}
    inputs["temb"] = randn(2, config["temb_channels"], seed=3) if config["temb_channels"] else None
    out = check_same_function(reference, mine, inputs)
    expected_channels = config.get("conv_2d_out_channels") or config.get("out_channels") or config["in_channels"]
    assert out.shape == (2, expected_channels, *size)


def test_resnet_block_time_embedding_matters():
    """A check that could not fail would be useless: temb and scale_shift really change the output."""
    _, mine = build_pair(RefResnetBlock2D, ResnetBlock2D, RESNET_CONFIGS[2])
    x = randn(2, 6, 5, 6)
    with torch.no_grad():
        assert not torch.allclose(mine(x, randn(2, 5, seed=1)), mine(x, randn(2, 5, seed=2)))


def test_resnet_block_errors():
    with pytest.raises(ValueError, match="up"):
        ResnetBlock2D(in_channels=4, groups=2, up=True)
    with pytest.raises(ValueError, match="down"):
        ResnetBlock2D(in_channels=4, groups=2, down=True)
    with pytest.raises(ValueError, match="time_embedding_norm"):
        ResnetBlock2D(in_channels=4, groups=2, time_embedding_norm="spatial")
    with pytest.raises(ValueError, match="activation"):
        ResnetBlock2D(in_channels=4, groups=2, non_linearity="tanh")
    with pytest.raises(ValueError, match="use_in_shortcut=False"):
        ResnetBlock2D(in_channels=4, out_channels=8, groups=2, use_in_shortcut=False)
    block = ResnetBlock2D(in_channels=4, groups=2, temb_channels=3)
    with pytest.raises(ValueError, match=r"\(N, 4, H, W\)"):
        block(torch.randn(2, 5, 4, 4), torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"\(N, 4, H, W\)"):
        block(torch.randn(4, 4, 4), torch.randn(2, 3))
    with pytest.raises(TypeError, match="floating"):
        block(torch.zeros(2, 4, 4, 4, dtype=torch.long), torch.randn(2, 3))
    with pytest.raises(ValueError, match="temb"):
        block(torch.randn(2, 4, 4, 4), None)
    with pytest.raises(ValueError, match="temb"):
        block(torch.randn(2, 4, 4, 4), torch.randn(3, 3))
    no_temb = ResnetBlock2D(in_channels=4, groups=2, temb_channels=None)
    with pytest.raises(ValueError, match="temb_channels=None"):
        no_temb(torch.randn(2, 4, 4, 4), torch.randn(2, 3))
    with pytest.raises(ValueError, match="scale_shift"):
        ResnetBlock2D(in_channels=4, groups=2, temb_channels=None, time_embedding_norm="scale_shift")(
            torch.randn(2, 4, 4, 4), None)


DOWN_CONFIGS = [
    dict(channels=4, use_conv=True),                                            # name="conv": two key aliases
    dict(channels=4, use_conv=True, padding=0, name="op", out_channels=6),      # SD's VAE encoder
    dict(channels=4, use_conv=True, padding=0, name="Conv2d_0", bias=False),
    dict(channels=4, use_conv=True, padding=2, kernel_size=5, name="op"),
    dict(channels=4, use_conv=False),
    dict(channels=4, use_conv=False, name="op"),
]


@pytest.mark.parametrize("config", DOWN_CONFIGS)
@pytest.mark.parametrize("size", [(7, 7), (5, 6), (8, 8)])
def test_downsample(config, size):
    reference, mine = build_pair(RefDownsample2D, Downsample2D, config)
    out = check_same_function(reference, mine, {"hidden_states": randn(2, 4, *size)})
    if config.get("padding", 1) == 0:           # pad (0,1,0,1) then 3x3 stride 2: floor(H / 2)
        assert out.shape[2:] == (size[0] // 2, size[1] // 2)


def test_downsample_key_aliases():
    keys = list(Downsample2D(4, use_conv=True).state_dict())
    assert keys == ["Conv2d_0.weight", "Conv2d_0.bias", "conv.weight", "conv.bias"]
    assert list(Downsample2D(4, use_conv=True, name="op").state_dict()) == ["conv.weight", "conv.bias"]


UP_CONFIGS = [
    dict(channels=4, use_conv=True),
    dict(channels=4, use_conv=True, out_channels=6, name="Conv2d_0"),
    dict(channels=4, use_conv=True, kernel_size=1, padding=0, bias=False),
    dict(channels=4, use_conv=False),
    dict(channels=4, use_conv=True, interpolate=False),
]


@pytest.mark.parametrize("config", UP_CONFIGS)
@pytest.mark.parametrize("size,output_size", [((7, 7), None), ((5, 6), None), ((5, 6), (11, 13)),
                                              ((7, 7), (14, 15)), ((3, 5), (7, 7)), ((5, 6), (5, 6)),
                                              ((6, 7), (9, 10)), ((7, 3), (10, 9))])
def test_upsample(config, size, output_size):
    reference, mine = build_pair(RefUpsample2D, Upsample2D, config)
    out = check_same_function(reference, mine, {"hidden_states": randn(2, 4, *size), "output_size": output_size})
    if config.get("interpolate", True):
        assert tuple(out.shape[2:]) == (output_size or (2 * size[0], 2 * size[1]))


def test_nearest_indices_many_sizes():
    """Every (in, out) pair up to 40: the same rows as torch's F.interpolate(mode="nearest")."""
    for in_size in range(1, 41):
        x = torch.arange(in_size, dtype=torch.float32).view(1, 1, in_size, 1)
        for out_size in range(1, 81):
            expected = F.interpolate(x, size=(out_size, 1), mode="nearest").view(-1).long()
            assert torch.equal(sd._nearest_source_index(in_size, out_size, "cpu"), expected), (in_size, out_size)


def test_resampling_errors():
    with pytest.raises(ValueError, match="norm_type"):
        Downsample2D(4, norm_type="ln_norm", eps=1e-5, elementwise_affine=True)
    with pytest.raises(ValueError, match="norm_type"):
        Upsample2D(4, norm_type="rms_norm", eps=1e-5, elementwise_affine=True)
    with pytest.raises(ValueError, match="use_conv_transpose"):
        Upsample2D(4, use_conv_transpose=True)
    with pytest.raises(ValueError, match="use_conv"):
        Downsample2D(4, use_conv=False, out_channels=8)
    with pytest.raises(ValueError, match=r"\(N, 4, H, W\)"):
        Downsample2D(4, use_conv=True)(torch.randn(1, 3, 6, 6))
    with pytest.raises(ValueError, match=r"\(N, 4, H, W\)"):
        Upsample2D(4)(torch.randn(4, 6, 6))
    with pytest.raises(TypeError, match="floating"):
        Upsample2D(4)(torch.zeros(1, 4, 6, 6, dtype=torch.int32))
    with pytest.raises(ValueError, match="output_size"):
        Upsample2D(4)(torch.randn(1, 4, 6, 6), output_size=(3, 4, 5))


def _bool_mask(shape, seed):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) > 0.4
    mask[..., 0] = True                      # every query keeps at least one key
    return mask


def _additive_mask(shape, seed):
    return torch.where(_bool_mask(shape, seed), 0.0, -10000.0).double() + 0.1 * randn(*shape, seed=seed)


ATTENTION_CASES = {
    # the VAE's mid-block attention: 4-D input, group norm, one head of all channels, residual, rescale
    "vae_spatial": (dict(query_dim=8, heads=1, dim_head=8, norm_num_groups=4, residual_connection=True, bias=True,
                         rescale_output_factor=2.0, eps=1e-6, upcast_softmax=True,
                         _from_deprecated_attn_block=True),
                    lambda: {"hidden_states": randn(2, 8, 5, 6)}),
    "spatial_heads": (dict(query_dim=8, heads=2, dim_head=4, norm_num_groups=2, residual_connection=True),
                      lambda: {"hidden_states": randn(2, 8, 7, 7)}),
    "self_tokens": (dict(query_dim=12, heads=3, dim_head=4),
                    lambda: {"hidden_states": randn(2, 7, 12)}),
    "self_mask_2d_bool": (dict(query_dim=12, heads=3, dim_head=4, bias=True),
                          lambda: {"hidden_states": randn(2, 7, 12), "attention_mask": _bool_mask((2, 7), 1)}),
    "self_mask_full_additive": (dict(query_dim=12, heads=3, dim_head=4),
                                lambda: {"hidden_states": randn(2, 7, 12),
                                         "attention_mask": _additive_mask((2, 7, 7), 2)}),
    "self_mask_per_head": (dict(query_dim=12, heads=3, dim_head=4),
                           lambda: {"hidden_states": randn(2, 7, 12),
                                    "attention_mask": _additive_mask((6, 7, 7), 3)}),
    "cross": (dict(query_dim=12, cross_attention_dim=10, heads=2, dim_head=5, bias=True, out_bias=False),
              lambda: {"hidden_states": randn(2, 9, 12), "encoder_hidden_states": randn(2, 4, 10, seed=5)}),
    "cross_mask": (dict(query_dim=12, cross_attention_dim=10, heads=2, dim_head=5, dropout=0.2),
                   lambda: {"hidden_states": randn(2, 9, 12), "encoder_hidden_states": randn(2, 4, 10, seed=5),
                            "attention_mask": _additive_mask((2, 1, 4), 6)}),
    "cross_bool_mask_spatial": (dict(query_dim=8, cross_attention_dim=6, heads=2, dim_head=3, norm_num_groups=4,
                                     residual_connection=True),
                                lambda: {"hidden_states": randn(2, 8, 5, 6),
                                         "encoder_hidden_states": randn(2, 5, 6, seed=2),
                                         "attention_mask": _bool_mask((2, 1, 5), 7)}),
    "out_dim": (dict(query_dim=8, out_dim=12, dim_head=4),
                lambda: {"hidden_states": randn(2, 6, 8)}),
    "no_scale_qk": (dict(query_dim=8, heads=2, dim_head=4, scale_qk=False),
                    lambda: {"hidden_states": randn(2, 6, 8), "attention_mask": _additive_mask((2, 1, 6), 8)}),
}


@pytest.mark.parametrize("case", list(ATTENTION_CASES))
def test_attention(case):
    config, make_inputs = ATTENTION_CASES[case]
    reference, mine = build_pair(RefAttention, CrossAttention, config)
    check_same_function(reference, mine, make_inputs())


def test_attention_mask_matters():
    config, make_inputs = ATTENTION_CASES["cross_mask"]
    _, mine = build_pair(RefAttention, CrossAttention, config)
    inputs = make_inputs()
    with torch.no_grad():
        masked = mine(**inputs)
        inputs.pop("attention_mask")
        assert not torch.allclose(masked, mine(**inputs))


def test_attention_errors():
    for option in (dict(only_cross_attention=True), dict(spatial_norm_dim=4), dict(cross_attention_norm="layer_norm"),
                   dict(added_kv_proj_dim=4), dict(qk_norm="layer_norm"), dict(kv_heads=1),
                   dict(scale_qk=False, upcast_attention=True)):
        with pytest.raises(ValueError, match=next(iter(option))):
            CrossAttention(8, heads=2, dim_head=4, **option)
    attention = CrossAttention(8, heads=2, dim_head=4)
    with pytest.raises(ValueError, match=r"\(N, L, 8\)"):
        attention(torch.randn(2, 5, 7))
    with pytest.raises(ValueError, match=r"\(N, L, 8\)"):
        attention(torch.randn(5, 8))
    with pytest.raises(TypeError, match="floating"):
        attention(torch.zeros(2, 5, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        attention(torch.randn(2, 5, 8), attention_mask=torch.zeros(2, 1, 4))
    with pytest.raises(ValueError, match="attention_mask"):
        attention(torch.randn(2, 5, 8), attention_mask=torch.zeros(1, 1, 5))
    with pytest.raises(TypeError, match="attention_mask"):
        attention(torch.randn(2, 5, 8), attention_mask=torch.zeros(2, 1, 5, dtype=torch.float64))
    cross = CrossAttention(8, cross_attention_dim=6, heads=2, dim_head=4)
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        cross(torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        cross(torch.randn(2, 5, 8), torch.randn(3, 4, 6))
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        cross(torch.randn(2, 5, 8), torch.randn(2, 4, 8))


MID_CONFIGS = [
    dict(in_channels=8, temb_channels=None, resnet_groups=4, attention_head_dim=8),        # the VAE's
    dict(in_channels=8, temb_channels=16, resnet_groups=2, num_layers=2, attention_head_dim=4),
    dict(in_channels=8, temb_channels=None, resnet_groups=4, add_attention=False, num_layers=2),
    dict(in_channels=8, temb_channels=5, resnet_groups=4, resnet_time_scale_shift="scale_shift",
         attention_head_dim=2, output_scale_factor=2.0),
    dict(in_channels=16, temb_channels=None, resnet_groups=None, attention_head_dim=None, resnet_eps=1e-3,
         attn_groups=2, resnet_act_fn="gelu"),
]


@pytest.mark.parametrize("config", MID_CONFIGS)
@pytest.mark.parametrize("size", [(7, 7), (5, 6)])
def test_mid_block(config, size):
    reference, mine = build_pair(RefUNetMidBlock2D, UNetMidBlock2D, config)
    inputs = {"hidden_states": randn(2, config["in_channels"], *size)}
    inputs["temb"] = randn(2, config["temb_channels"], seed=4) if config["temb_channels"] else None
    check_same_function(reference, mine, inputs)


def test_mid_block_errors():
    with pytest.raises(ValueError, match="resnet_time_scale_shift"):
        UNetMidBlock2D(8, temb_channels=4, resnet_groups=4, resnet_time_scale_shift="spatial")
    block = UNetMidBlock2D(8, temb_channels=None, resnet_groups=4, attention_head_dim=8)
    with pytest.raises(ValueError, match=r"\(N, 8, H, W\)"):
        block(torch.randn(1, 4, 5, 5))


# ================================================================================================================
# the autoencoder
# ================================================================================================================

def _vae_config(blocks=(8, 16), **extra):
    config = dict(in_channels=1, out_channels=1, block_out_channels=blocks, layers_per_block=1, latent_channels=4,
                  norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * len(blocks),
                  up_block_types=("UpDecoderBlock2D",) * len(blocks))
    config.update(extra)
    return config


VAE_CONFIGS = {
    "two_blocks": _vae_config(),
    "three_blocks": _vae_config((8, 16, 16), layers_per_block=2, latent_channels=3),
    "rgb_groups8": _vae_config((8, 16), in_channels=3, out_channels=2, norm_num_groups=8, act_fn="gelu"),
    "no_attention": _vae_config((8, 16, 16), mid_block_add_attention=False),
    "no_quant_convs": _vae_config((8, 16), use_quant_conv=False, use_post_quant_conv=False, latent_channels=3),
    "one_block_prefixed": _vae_config((8,), down_block_types=("UNetResDownEncoderBlock2D",),
                                      up_block_types=("UNetResUpDecoderBlock2D",)),
}
VAE_SIZES = {"16x16": (16, 16), "odd_15x17": (15, 17)}
ENCODER_ONLY = ("decoder.", "post_quant_conv.")        # parameters that encode does not use
DECODER_ONLY = ("encoder.", "quant_conv.")             # and those that decode does not use


def _vae_pair(name):
    return VAE_CONFIGS[name], *build_pair(diffusers.AutoencoderKL, AutoencoderKL, VAE_CONFIGS[name], seed=3)


def _latent_side(side, blocks):
    for _ in range(len(blocks) - 1):          # pad bottom/right by 1, 3x3 stride 2: floor(side / 2)
        side //= 2
    return side


VAE_ENCODE_CASES = [(name, "16x16") for name in VAE_CONFIGS] + [(name, "odd_15x17") for name in
                                                                ("two_blocks", "three_blocks", "rgb_groups8")]


@pytest.mark.parametrize("name,size", VAE_ENCODE_CASES)
def test_vae_encode(name, size):
    config, reference, mine = _vae_pair(name)
    latent = tuple(_latent_side(s, config["block_out_channels"]) for s in VAE_SIZES[size])
    target = randn(2, config["latent_channels"], *latent, seed=9)

    def everything(module, x):
        dist = module.encode(x["x"]).latent_dist
        other = type(dist)(dist.parameters.flip(0))              # a second posterior: the batch reversed
        return torch.cat([dist.mean.flatten(1), dist.logvar.flatten(1), dist.std.flatten(1), dist.var.flatten(1),
                          dist.kl()[:, None], dist.kl(other)[:, None], dist.nll(target)[:, None],
                          dist.nll(target, dims=[2, 3]), dist.mode().flatten(1)], dim=1)

    x = randn(2, config["in_channels"], *VAE_SIZES[size])
    check_same_function(reference, mine, {"x": x}, everything, unused=ENCODER_ONLY)
    assert mine.encode(x).latent_dist.mean.shape == (2, config["latent_channels"], *latent)


def test_vae_latent_size_three_blocks():
    """28x28 -> 14x14 -> 7x7 with three blocks (two downsamplings); 27x29 -> 13x14 -> 6x7."""
    _, reference, mine = _vae_pair("three_blocks")
    for size, latent in (((28, 28), (7, 7)), ((27, 29), (6, 7))):
        with torch.no_grad():
            dist = mine.encode(randn(1, 1, *size)).latent_dist
            assert dist.mean.shape[2:] == latent == reference.encode(randn(1, 1, *size)).latent_dist.mean.shape[2:]
            assert mine.decode(dist.mean).sample.shape[2:] == (4 * latent[0], 4 * latent[1])


@pytest.mark.parametrize("name", list(VAE_CONFIGS))
def test_vae_decode(name):
    config, reference, mine = _vae_pair(name)
    z = randn(2, config["latent_channels"], 4, 3, seed=4)
    check_same_function(reference, mine, {"z": z}, lambda module, x: module.decode(x["z"]).sample,
                        unused=DECODER_ONLY)


@pytest.mark.parametrize("name,size,sample_posterior", [
    ("two_blocks", "16x16", False), ("two_blocks", "odd_15x17", True), ("three_blocks", "16x16", True),
    ("three_blocks", "odd_15x17", False), ("no_quant_convs", "odd_15x17", True), ("rgb_groups8", "16x16", True)])
def test_vae_forward(name, size, sample_posterior):
    config, reference, mine = _vae_pair(name)

    def reconstruct(module, x):
        generator = torch.Generator().manual_seed(7)
        return module(x["sample"], sample_posterior=sample_posterior, generator=generator).sample

    out = check_same_function(reference, mine, {"sample": randn(2, config["in_channels"], *VAE_SIZES[size])},
                              reconstruct)
    assert out.shape[1] == config["out_channels"]


def test_vae_sampling_noise_is_used_and_reproducible():
    _, reference, mine = _vae_pair("two_blocks")
    x = randn(2, 1, 16, 16)
    with torch.no_grad():
        def sample(module, seed):
            return module(x, sample_posterior=True, generator=torch.Generator().manual_seed(seed)).sample
        assert not torch.allclose(sample(mine, 1), sample(mine, 2))
        torch.testing.assert_close(sample(mine, 1), sample(mine, 1), rtol=0, atol=0)
        # a list of generators, one per sample, as diffusers' randn_tensor takes it
        gens = lambda: [torch.Generator().manual_seed(11), torch.Generator().manual_seed(12)]  # noqa: E731
        assert_close(mine.encode(x).latent_dist.sample(gens()), reference.encode(x).latent_dist.sample(gens()), **TOL)
        # return_dict=False gives tuples
        assert isinstance(mine(x, return_dict=False), tuple) and isinstance(mine.encode(x, return_dict=False), tuple)
        torch.testing.assert_close(mine.decode(mine.encode(x)[0].mode(), return_dict=False)[0], mine(x)["sample"])


def test_distribution_clamp_and_deterministic():
    """logvar beyond [-30, 20] is clamped (zero gradient there); deterministic has zero std."""
    parameters = randn(2, 6, 3, 4) * 40                      # many logvars far outside the clamp range
    weighting = randn(2, 3, 3, 4, seed=2)
    target = randn(2, 3, 3, 4, seed=3)
    results = []
    for cls in (DiagonalGaussianDistribution, RefDiagonalGaussianDistribution):
        leaf = parameters.clone().requires_grad_(True)
        dist = cls(leaf)
        sample = dist.sample(torch.Generator().manual_seed(0))
        out = torch.cat([(sample * weighting).flatten(1), dist.kl()[:, None], (dist.logvar * weighting).flatten(1),
                         dist.nll(target)[:, None]], 1)
        out.sum().backward()
        results.append((out.detach(), leaf.grad))
        det = cls(parameters, deterministic=True)
        assert not det.std.any() and not det.var.any()
        assert torch.equal(det.kl(), torch.Tensor([0.0])) and torch.equal(det.nll(target), torch.Tensor([0.0]))
    assert (parameters[:, 3:].abs() > 30).any()
    assert_close(results[0][0], results[1][0], **TOL)
    assert_close(results[0][1], results[1][1], **TOL)


def test_sd_v1_vae_parameter_count():
    """Stable Diffusion v1's VAE configuration: the same keys, shapes and parameter count as diffusers'."""
    blocks = (128, 256, 512, 512)
    config = dict(in_channels=3, out_channels=3, block_out_channels=blocks, layers_per_block=2, latent_channels=4,
                  norm_num_groups=32, down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512)
    with torch.device("meta"):
        mine, reference = AutoencoderKL(**config), diffusers.AutoencoderKL(**config)
    my_shapes = {name: tuple(p.shape) for name, p in mine.state_dict().items()}
    reference_shapes = {name: tuple(p.shape) for name, p in reference.state_dict().items()}
    assert list(my_shapes) == list(reference_shapes) and my_shapes == reference_shapes
    assert sum(p.numel() for p in mine.parameters()) == sum(p.numel() for p in reference.parameters()) == 83_653_863


def test_vae_errors():
    with pytest.raises(ValueError, match="block type"):
        AutoencoderKL(**_vae_config((8,), down_block_types=("AttnDownEncoderBlock2D",)))
    with pytest.raises(ValueError, match="block type"):
        AutoencoderKL(**_vae_config((8,), up_block_types=("AttnUpDecoderBlock2D",)))
    with pytest.raises(ValueError, match="block_out_channels"):
        AutoencoderKL(**_vae_config((8, 16), down_block_types=("DownEncoderBlock2D",)))
    with pytest.raises(ValueError, match="norm_type"):
        VAEDecoder(norm_type="spatial")
    with pytest.raises(ValueError, match="resnet_time_scale_shift"):
        DownEncoderBlock2D(8, 8, resnet_groups=4, resnet_time_scale_shift="scale_shift")
    model = AutoencoderKL(**_vae_config())
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        model.encode(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        model.encode(torch.randn(1, 8, 8))
    with pytest.raises(TypeError, match="floating"):
        model.encode(torch.zeros(1, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(N, 4, H, W\)"):
        model.decode(torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match="block_out_channels"):
        VAEEncoder(down_block_types=("DownEncoderBlock2D",) * 3, block_out_channels=(8, 16), norm_num_groups=4)
    with pytest.raises(ValueError, match="latent_embeds"):
        model.decoder(torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4))
    with pytest.raises(ValueError, match=r"\(N, 2 L, h, w\)"):
        DiagonalGaussianDistribution(torch.randn(1, 3, 4, 4))
    with pytest.raises(TypeError, match="floating"):
        DiagonalGaussianDistribution(torch.zeros(1, 4, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="generator"):
        DiagonalGaussianDistribution(torch.randn(2, 4, 4, 4)).sample([torch.Generator()] * 3)
    assert not hasattr(model, "enable_tiling") and not hasattr(model, "enable_slicing")


# ================================================================================================================
# the U-Net
# ================================================================================================================

@pytest.mark.parametrize("num_channels, flip_sin_to_cos, shift, scale", [
    (8, True, 0, 1), (8, False, 1, 1), (9, True, 1, 1), (7, False, 0, 2.5), (1, True, 0, 1), (320, True, 0, 1)])
def test_timesteps_bit_for_bit(num_channels, flip_sin_to_cos, shift, scale):
    timesteps = [torch.tensor([0, 1, 37, 999]), torch.tensor([0.5, 3.25, 999.0], dtype=torch.float64)]
    for values in timesteps:
        expected = RefTimesteps(num_channels, flip_sin_to_cos, shift, scale)(values)
        actual = sd.Timesteps(num_channels, flip_sin_to_cos, shift, scale)(values)
        assert actual.dtype == expected.dtype == torch.float32     # always float32, whatever the model's dtype
        assert torch.equal(actual, expected)
    if num_channels % 2:
        assert bool((actual[:, -1] == 0).all())                    # the padding column


def test_timesteps_options_matter():
    values = torch.tensor([3, 400])
    base = sd.Timesteps(8, True, 0)(values)
    for other in (sd.Timesteps(8, False, 0), sd.Timesteps(8, True, 1), sd.Timesteps(8, True, 0, scale=2)):
        assert not torch.allclose(other(values), base)


@pytest.mark.parametrize("config, with_condition", [
    (dict(in_channels=6, time_embed_dim=10), False),
    (dict(in_channels=6, time_embed_dim=10, act_fn="mish", out_dim=7, post_act_fn="silu"), False),
    (dict(in_channels=5, time_embed_dim=8, act_fn="gelu", cond_proj_dim=3), True),
    (dict(in_channels=5, time_embed_dim=8, sample_proj_bias=False, post_act_fn="relu"), False)])
def test_timestep_embedding(config, with_condition):
    reference, mine = build_pair(RefTimestepEmbedding, sd.TimestepEmbedding, config, seed=1)
    inputs = {"sample": randn(3, config["in_channels"], seed=2)}
    if with_condition:
        inputs["condition"] = randn(3, config["cond_proj_dim"], seed=3)
    check_same_function(reference, mine, inputs, lambda model, x: model(x["sample"], x.get("condition")))


# ----------------------------------------------------------------------------------------------------------------
# feed-forward, transformer block, Transformer2DModel
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", [
    dict(dim=6), dict(dim=6, activation_fn="gelu", mult=2), dict(dim=6, activation_fn="gelu-approximate"),
    dict(dim=5, dim_out=3, inner_dim=7, bias=False, final_dropout=True, dropout=0.3)])
def test_feed_forward(config):
    reference, mine = build_pair(RefFeedForward, sd.FeedForward, config, seed=4)
    check_same_function(reference, mine, {"x": randn(2, 3, config["dim"], seed=5)}, lambda model, x: model(x["x"]))


TRANSFORMER_BLOCK_CONFIGS = {
    "cross": dict(dim=8, num_attention_heads=2, attention_head_dim=4, cross_attention_dim=6),
    "self_only": dict(dim=8, num_attention_heads=4, attention_head_dim=2),
    "double_self": dict(dim=8, num_attention_heads=2, attention_head_dim=3, double_self_attention=True,
                        attention_bias=True),
    "only_cross": dict(dim=8, num_attention_heads=2, attention_head_dim=4, cross_attention_dim=6,
                       only_cross_attention=True, activation_fn="gelu"),
    "no_affine": dict(dim=6, num_attention_heads=3, attention_head_dim=2, cross_attention_dim=5,
                      norm_elementwise_affine=False, norm_eps=1e-3, ff_inner_dim=10, ff_bias=False,
                      attention_out_bias=False, upcast_attention=True, final_dropout=True),
}


@pytest.mark.parametrize("name", list(TRANSFORMER_BLOCK_CONFIGS))
def test_basic_transformer_block(name):
    config = TRANSFORMER_BLOCK_CONFIGS[name]
    reference, mine = build_pair(RefBasicTransformerBlock, sd.BasicTransformerBlock, config, seed=6)
    inputs = {"hidden_states": randn(2, 5, config["dim"], seed=7)}
    masks = {}                                               # additive biases (N, 1, S), as the U-Net passes them
    context_dim = config.get("cross_attention_dim")
    if context_dim is not None:
        inputs["encoder_hidden_states"] = randn(2, 3, context_dim, seed=8)
        keep = torch.tensor([[1, 1, 0], [1, 0, 1]])
        masks["encoder_attention_mask"] = ((1 - keep.to(DTYPE)) * -10000.0).unsqueeze(1)
        if config.get("only_cross_attention"):
            masks["attention_mask"] = masks["encoder_attention_mask"].flip(-1)
    elif config.get("double_self_attention"):
        inputs["encoder_hidden_states"] = randn(2, 4, config["dim"], seed=8)   # attn2 reads it though "self"
    else:
        keep = torch.tensor([[1, 1, 0, 1, 1], [0, 1, 1, 1, 1]])        # a mask over the 5 tokens as keys
        masks["attention_mask"] = ((1 - keep.to(DTYPE)) * -10000.0).unsqueeze(1)

    def call(model, x):
        return model(x["hidden_states"], encoder_hidden_states=x.get("encoder_hidden_states"), **masks)
    check_same_function(reference, mine, inputs, call)


TRANSFORMER_CONFIGS = {
    "conv": dict(num_attention_heads=2, attention_head_dim=4, in_channels=8, norm_num_groups=4,
                 cross_attention_dim=6),
    "linear_two_layers": dict(num_attention_heads=4, attention_head_dim=2, in_channels=8, norm_num_groups=2,
                              cross_attention_dim=5, use_linear_projection=True, num_layers=2, attention_bias=True),
    "conv_narrow_inner": dict(num_attention_heads=3, attention_head_dim=2, in_channels=8, norm_num_groups=4,
                              cross_attention_dim=6, norm_eps=1e-4, activation_fn="gelu-approximate"),
    "self_only": dict(num_attention_heads=2, attention_head_dim=4, in_channels=8, norm_num_groups=4,
                      out_channels=8, only_cross_attention=False, double_self_attention=True),
}


@pytest.mark.parametrize("name", list(TRANSFORMER_CONFIGS))
def test_transformer_2d(name):
    config = TRANSFORMER_CONFIGS[name]
    reference, mine = build_pair(RefTransformer2DModel, sd.Transformer2DModel, config, seed=9)
    inputs = {"hidden_states": randn(2, config["in_channels"], 3, 4, seed=10)}
    if config.get("cross_attention_dim"):
        inputs["encoder_hidden_states"] = randn(2, 3, config["cross_attention_dim"], seed=11)
    keep = torch.tensor([[1, 0, 1], [1, 1, 0]])      # 2-D keep/discard mask, converted to a bias inside

    def call(model, x):
        context = x.get("encoder_hidden_states")
        mask = keep if context is not None else None
        return model(x["hidden_states"], encoder_hidden_states=context, encoder_attention_mask=mask,
                     return_dict=False)[0]
    check_same_function(reference, mine, inputs, call)
    context = inputs.get("encoder_hidden_states")
    with torch.no_grad():                                   # return_dict=True gives the same tensor in .sample
        returned = mine(inputs["hidden_states"], context, encoder_attention_mask=keep if context is not None else None)
        assert torch.equal(returned.sample, call(mine, inputs))


# ----------------------------------------------------------------------------------------------------------------
# the U-Net's blocks, with options the U-Net itself never sets
# ----------------------------------------------------------------------------------------------------------------

BLOCK_CASES = {
    "cross_attn_down": ("CrossAttnDownBlock2D", dict(
        in_channels=6, out_channels=8, temb_channels=5, num_layers=2, transformer_layers_per_block=(1, 2),
        resnet_groups=2, num_attention_heads=2, cross_attention_dim=4, downsample_padding=0,
        output_scale_factor=1.3, resnet_eps=1e-4, resnet_act_fn="silu"), (5, 7), 0),
    "down": ("DownBlock2D", dict(in_channels=6, out_channels=8, temb_channels=5, num_layers=2, resnet_groups=2,
                                 resnet_time_scale_shift="scale_shift"), (5, 6), 0),
    "mid_cross_attn": ("UNetMidBlock2DCrossAttn", dict(
        in_channels=8, out_channels=12, temb_channels=5, num_layers=2, resnet_groups=4, resnet_groups_out=2,
        num_attention_heads=3, cross_attention_dim=4, use_linear_projection=True, output_scale_factor=0.7),
        (3, 4), 0),
    "cross_attn_up_forced_size": ("CrossAttnUpBlock2D", dict(
        in_channels=6, out_channels=8, prev_output_channel=10, temb_channels=5, num_layers=3, resnet_groups=2,
        num_attention_heads=4, cross_attention_dim=4, only_cross_attention=True), (3, 4), 3),
    "up": ("UpBlock2D", dict(in_channels=6, prev_output_channel=10, out_channels=8, temb_channels=5,
                             num_layers=2, resnet_groups=2, resnet_act_fn="mish"), (3, 4), 2),
}


@pytest.mark.parametrize("name", list(BLOCK_CASES))
def test_unet_blocks(name):
    class_name, config, (height, width), skips = BLOCK_CASES[name]
    reference, mine = build_pair(getattr(ref_blocks, class_name), getattr(sd, class_name), config, seed=12)
    first = config.get("prev_output_channel", config["in_channels"])
    inputs = {"hidden_states": randn(2, first, height, width, seed=13), "temb": randn(2, 5, seed=14)}
    cross = "cross_attention_dim" in config
    if cross:
        inputs["encoder_hidden_states"] = randn(2, 3, config["cross_attention_dim"], seed=15)
    for i in range(skips):                  # consumed last first: the last resnet reads in_channels
        channels = config["in_channels"] if i == 0 else config["out_channels"]
        inputs[f"skip{i}"] = randn(2, channels, height, width, seed=16 + i)

    def call(model, x):
        context = {"encoder_hidden_states": x["encoder_hidden_states"]} if cross else {}
        if skips:
            resolution = {"upsample_size": (5, 7)} if name.endswith("forced_size") else {}
            res_tuple = tuple(x[f"skip{i}"] for i in range(skips))
            return model(x["hidden_states"], res_tuple, temb=x["temb"], **context, **resolution)
        output = model(x["hidden_states"], x["temb"], **context)
        if isinstance(output, tuple):       # down blocks: (hidden_states, every stage's output)
            hidden, states = output
            assert len(states) == len(model.resnets) + 1
            return torch.cat([hidden.flatten()] + [state.flatten() for state in states])
        return output
    output = check_same_function(reference, mine, inputs, call)
    if name.endswith("forced_size"):
        assert output.shape == (2, 8, 5, 7)


# ----------------------------------------------------------------------------------------------------------------
# the U-Net
# ----------------------------------------------------------------------------------------------------------------

TINY = dict(block_out_channels=(8, 16), norm_num_groups=4, cross_attention_dim=6, attention_head_dim=2,
            layers_per_block=1)

UNET_CASES = {
    # two levels, mixed block types, int timestep, in/out channel counts that differ
    "two_levels_8x8": dict(
        config=dict(TINY, in_channels=3, out_channels=5, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
        size=(8, 8), timestep=37),
    # three levels, linear projections, per-block heads and layers, odd 7x7 latents (7 -> 4 -> 2 -> 4 -> 7)
    "three_levels_linear_7x7": dict(
        config=dict(block_out_channels=(8, 16, 16), norm_num_groups=4, cross_attention_dim=12,
                    attention_head_dim=(2, 4, 4), layers_per_block=(1, 2, 1), use_linear_projection=True,
                    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")),
        size=(7, 7), timestep="tensor_float_per_sample"),
    # no mid block, plain block at the top, sin first and shifted frequencies, 6x10, 0-d tensor timestep
    "no_mid_6x10": dict(
        config=dict(TINY, mid_block_type=None, layers_per_block=2, attention_head_dim=4, transformer_layers_per_block=2,
                    flip_sin_to_cos=False, freq_shift=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D")),
        size=(6, 10), timestep="tensor_0d"),
    # 5 heads: channels // 5 = 1 and 3 features per head, so inner_dim (5, 15) != channels (conv projections)
    "odd_heads_cross_only": dict(
        config=dict(TINY, attention_head_dim=5, transformer_layers_per_block=(1, 2), upcast_attention=True,
                    only_cross_attention=(True, False), cross_attention_dim=(6, 6),
                    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D")),
        size=(4, 6), timestep=2.5),
    # only cross-attention everywhere, no mid: attention_mask and encoder_attention_mask both mask the context
    "masks_on_context": dict(
        config=dict(TINY, only_cross_attention=True, mid_block_type=None,
                    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D")),
        size=(4, 4), timestep=11, masks="context"),
    # all transformers at the top level: attention_mask masks image tokens (H * W = 36 of them)
    "masks_on_pixels": dict(
        config=dict(TINY, mid_block_type=None, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
        size=(6, 6), timestep=123, masks="pixels"),
    # image-embedding conditioning (as a DALL-E 2 decoder): an MLP of class_labels added to the time embedding;
    # 9 channels: odd sinusoidal width (zero padded), 3 groups, 3 heads of 3 and 4 features
    "projection_class_9ch": dict(
        config=dict(block_out_channels=(9, 12), norm_num_groups=3, attention_head_dim=3, layers_per_block=1,
                    cross_attention_dim=12, use_linear_projection=True, class_embed_type="projection",
                    projection_class_embeddings_input_dim=5, freq_shift=1,
                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
        size=(7, 5), timestep="tensor_one", class_labels=("float", 5)),
    # the time-embedding options, scale_shift resnets, mish, asymmetric downsampling (padding 0) at 9x9
    "time_options_9x9": dict(
        config=dict(TINY, class_embed_type="timestep", class_embeddings_concat=True, time_embedding_dim=20,
                    time_embedding_act_fn="silu", timestep_post_act="gelu", time_cond_proj_dim=3, conv_in_kernel=1,
                    conv_out_kernel=5, center_input_sample=True, mid_block_scale_factor=1.5, downsample_padding=0,
                    resnet_time_scale_shift="scale_shift", act_fn="mish", norm_eps=1e-3,
                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
        size=(9, 9), timestep="tensor_float_per_sample", class_labels=("timesteps", None), timestep_cond=3),
    "class_ids": dict(
        config=dict(TINY, num_class_embeds=7, mid_block_type="UNetMidBlock2D", layers_per_block=(2, 1),
                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
        size=(8, 8), timestep=5, class_labels=("ids", 7)),
    "identity_class": dict(
        config=dict(TINY, class_embed_type="identity", down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
        size=(8, 8), timestep=5, class_labels=("float", 32)),
    "simple_projection_class": dict(
        config=dict(TINY, class_embed_type="simple_projection", projection_class_embeddings_input_dim=4,
                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
        size=(8, 8), timestep=5, class_labels=("float", 4)),
}


def unet_inputs(case: dict, batch: int = 2, tokens: int = 3, seed: int = 20) -> dict:
    config = case["config"]
    height, width = case["size"]
    cross_dim = config["cross_attention_dim"]
    cross_dim = cross_dim[0] if isinstance(cross_dim, tuple) else cross_dim
    inputs = {"sample": randn(batch, config.get("in_channels", 4), height, width, seed=seed),
              "encoder_hidden_states": randn(batch, tokens, cross_dim, seed=seed + 1)}
    timestep = case["timestep"]
    if timestep == "tensor_float_per_sample":
        timestep = torch.tensor([3.5, 999.0][:batch], dtype=torch.float64)
    elif timestep == "tensor_0d":
        timestep = torch.tensor(500)
    elif timestep == "tensor_one":
        timestep = torch.tensor([250])
    inputs["timestep"] = timestep
    kind, width_ = case.get("class_labels", (None, None))
    if kind == "float":
        inputs["class_labels"] = randn(batch, width_, seed=seed + 2)
    elif kind == "ids":
        inputs["class_labels"] = torch.tensor([3, 6][:batch])
    elif kind == "timesteps":
        inputs["class_labels"] = torch.tensor([17, 640][:batch])
    if case.get("timestep_cond"):
        inputs["timestep_cond"] = randn(batch, case["timestep_cond"], seed=seed + 3)
    if case.get("masks") == "context":
        inputs["attention_mask"] = torch.tensor([[1, 0, 1], [1, 1, 0]][:batch])
        inputs["encoder_attention_mask"] = torch.tensor([[0, 1, 1], [1, 1, 0]][:batch])
    elif case.get("masks") == "pixels":
        keep = torch.ones(batch, height * width, dtype=torch.long)
        keep[0, ::5] = 0
        keep[-1, 3:9] = 0
        inputs["attention_mask"] = keep
        inputs["encoder_attention_mask"] = torch.tensor([[1, 1, 0], [0, 1, 1]][:batch])
    return inputs


def call_unet(model, x):
    extra = {k: x[k] for k in ("class_labels", "timestep_cond", "attention_mask", "encoder_attention_mask") if k in x}
    return model(x["sample"], x["timestep"], x["encoder_hidden_states"], **extra).sample


def differentiable_unet_inputs(inputs: dict) -> list:
    names = ["sample", "encoder_hidden_states", "timestep_cond"]
    if "class_labels" in inputs and inputs["class_labels"].is_floating_point():
        names.append("class_labels")
    return [name for name in names if name in inputs]


@pytest.mark.parametrize("name", list(UNET_CASES))
def test_unet_matches_diffusers(name):
    case = UNET_CASES[name]
    reference, mine = build_pair(RefUNet2DConditionModel, sd.UNet2DConditionModel, case["config"], seed=30)
    inputs = unet_inputs(case)
    output = check_same_function(reference, mine, inputs, call_unet, seed=31,
                                  differentiable=differentiable_unet_inputs(inputs))
    out_channels = case["config"].get("out_channels", 4)
    assert output.shape == (2, out_channels, *case["size"])
    assert mine.num_upsamplers == reference.num_upsamplers
    if "masks" in case:                                     # the masks must matter for the check to mean anything
        unmasked = {k: v for k, v in inputs.items() if not k.endswith("mask")}
        with torch.no_grad():
            assert not torch.allclose(call_unet(mine, unmasked), output, rtol=1e-6, atol=1e-6)


def test_unet_return_tuple_and_batch_one():
    case = UNET_CASES["three_levels_linear_7x7"]
    reference, mine = build_pair(RefUNet2DConditionModel, sd.UNet2DConditionModel, case["config"], seed=32)
    inputs = unet_inputs(case, batch=1, tokens=4)
    with torch.no_grad():
        expected = reference(inputs["sample"], 7, inputs["encoder_hidden_states"]).sample
        tuple_out = mine(inputs["sample"], 7, inputs["encoder_hidden_states"], return_dict=False)
    assert isinstance(tuple_out, tuple) and len(tuple_out) == 1
    assert_close(tuple_out[0], expected, **TOL)


def test_head_count_quirk():
    """attention_head_dim is the number of heads: channels // attention_head_dim features per head."""
    mine = sd.UNet2DConditionModel(**UNET_CASES["three_levels_linear_7x7"]["config"])
    first = mine.down_blocks[0].attentions[0].transformer_blocks[0].attn1
    second = mine.down_blocks[1].attentions[0].transformer_blocks[0].attn2
    assert (first.heads, first.head_dim) == (2, 4) and (second.heads, second.head_dim) == (4, 4)
    assert mine.mid_block.attentions[0].transformer_blocks[0].attn1.heads == 4


def test_unet_checks_can_fail():
    """A perturbed parameter, timestep, context or class label changes the output beyond the tolerance."""
    case = UNET_CASES["projection_class_9ch"]
    reference, mine = build_pair(RefUNet2DConditionModel, sd.UNet2DConditionModel, case["config"], seed=33)
    inputs = unet_inputs(case)
    with torch.no_grad():
        base = call_unet(mine, inputs)
        variants = [dict(inputs, timestep=torch.tensor([251])),
                    dict(inputs, encoder_hidden_states=inputs["encoder_hidden_states"] * 1.01),
                    dict(inputs, class_labels=inputs["class_labels"] * 1.01)]
        for variant in variants:
            assert not torch.allclose(call_unet(mine, variant), base, rtol=1e-6, atol=1e-8)
        to_k = mine.up_blocks[1].attentions[0].transformer_blocks[0].attn2.to_k.weight
        to_k.add_(1e-6)
        assert not torch.allclose(call_unet(mine, inputs), base, **TOL)


def test_stable_diffusion_v1_5_parameter_count():
    config = dict(sample_size=64, cross_attention_dim=768)     # every other option of SD v1.5 is the default
    with torch.device("meta"):
        mine = sd.UNet2DConditionModel(**config)
        reference = RefUNet2DConditionModel(**config)
    assert sum(p.numel() for p in mine.parameters()) == 859_520_964
    assert [(k, v.shape) for k, v in mine.state_dict().items()] == \
        [(k, v.shape) for k, v in reference.state_dict().items()]


# ----------------------------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_unet():
    config = dict(TINY, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), class_embed_type="projection",
                  projection_class_embeddings_input_dim=3)
    return sd.UNet2DConditionModel(**config).to(DTYPE).eval()


def test_unet_bad_inputs(tiny_unet):
    sample, context, labels = randn(2, 4, 8, 8, seed=40), randn(2, 3, 6, seed=41), randn(2, 3, seed=42)
    cases = [
        ((randn(2, 3, 8, 8, seed=1), 1, context), dict(class_labels=labels), r"sample \(N, 4, H, W\)"),
        ((sample[0], 1, context), dict(class_labels=labels), r"sample \(N, 4, H, W\)"),
        ((sample.long(), 1, context), dict(class_labels=labels), "floating-point"),
        ((sample, 1, None), dict(class_labels=labels), "encoder_hidden_states .* is required"),
        ((sample, 1, randn(2, 3, 7, seed=2)), dict(class_labels=labels), r"\(2, S, 6\)"),
        ((sample, 1, randn(1, 3, 6, seed=2)), dict(class_labels=labels), r"encoder_hidden_states \(2, S, D\)"),
        ((sample, torch.tensor([1, 2, 3]), context), dict(class_labels=labels), r"timestep of shape .*\(2,\)"),
        ((sample, torch.ones(2, 1), context), dict(class_labels=labels), "timestep of shape"),
        ((sample, "7", context), dict(class_labels=labels), "timestep to be an int"),
        ((sample, 1, context), {}, "requires class_labels"),
        ((sample, 1, context), dict(class_labels=randn(3, 3, seed=3)), "batch size 2"),
        ((sample, 1, context), dict(class_labels=labels, attention_mask=torch.ones(2, 5)), "attention_mask"),
        ((sample, 1, context), dict(class_labels=labels, encoder_attention_mask=torch.ones(3)), "encoder_attention"),
        ((sample, 1, context), dict(class_labels=labels, timestep_cond=randn(2, 3, seed=4)), "time_cond_proj_dim"),
        ((sample, 1, context), dict(class_labels=labels, cross_attention_kwargs={"scale": 1.0}),
         "cross_attention_kwargs"),
    ]
    for args, kwargs, message in cases:
        with pytest.raises((ValueError, TypeError), match=message):
            tiny_unet(*args, **kwargs)


def test_bad_module_inputs():
    block = sd.BasicTransformerBlock(8, 2, 4, cross_attention_dim=6).to(DTYPE)
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        block(randn(2, 5, 8, seed=1))                           # a cross-attention needs the context
    with pytest.raises(ValueError, match="hidden_states"):
        block(randn(2, 5, 7, seed=1), encoder_hidden_states=randn(2, 3, 6, seed=2))
    transformer = sd.Transformer2DModel(2, 4, in_channels=8, norm_num_groups=4, cross_attention_dim=6).to(DTYPE)
    with pytest.raises(ValueError, match=r"\(N, 8, H, W\)"):
        transformer(randn(2, 4, 3, 3, seed=1), randn(2, 3, 6, seed=2))
    with pytest.raises(ValueError, match="encoder_attention_mask"):
        transformer(randn(2, 8, 3, 3, seed=1), randn(2, 3, 6, seed=2), encoder_attention_mask=torch.ones(1, 3))
    with pytest.raises(ValueError, match=r"timesteps of shape \(N,\)"):
        sd.Timesteps(8, True, 0)(torch.tensor(3))


UNET_REFUSED = [
    dict(num_attention_heads=8), dict(dual_cross_attention=True), dict(addition_embed_type="text"),
    dict(encoder_hid_dim=12), dict(encoder_hid_dim_type="text_proj"), dict(time_embedding_type="fourier"),
    dict(attention_type="gated"), dict(mid_block_type="UNetMidBlock2DSimpleCrossAttn"),
    dict(down_block_types=("SimpleCrossAttnDownBlock2D", "DownBlock2D")),
    dict(up_block_types=("UpBlock2D", "AttnUpBlock2D")), dict(class_embed_type="learned"),
    dict(class_embed_type="projection"), dict(norm_num_groups=None), dict(resnet_skip_time_act=True),
    dict(resnet_out_scale_factor=2.0), dict(cross_attention_norm="group_norm"),
    dict(mid_block_only_cross_attention=True), dict(transformer_layers_per_block=((1, 1), (1, 1))),
    dict(reverse_transformer_layers_per_block=((1, 1), (1, 1))), dict(addition_time_embed_dim=8),
    dict(resnet_time_scale_shift="spatial"), dict(act_fn="tanh"), dict(layers_per_block=(1, 1, 1)),
    dict(block_out_channels=(8, 16, 16)), dict(attention_head_dim=(2, 2, 2)), dict(attention_head_dim=9),
]


@pytest.mark.parametrize("override", UNET_REFUSED, ids=lambda o: next(iter(o)))
def test_unet_refuses_unsupported_options(override):
    config = dict(TINY, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    config.update(override)
    with pytest.raises(ValueError) as error:
        sd.UNet2DConditionModel(**config)
    assert next(iter(override)) in str(error.value)       # the message names the offending option


@pytest.mark.parametrize("build, option", [
    (lambda: sd.BasicTransformerBlock(8, 2, 4, norm_type="ada_norm_zero"), "norm_type"),
    (lambda: sd.BasicTransformerBlock(8, 2, 4, num_embeds_ada_norm=10), "num_embeds_ada_norm"),
    (lambda: sd.BasicTransformerBlock(8, 2, 4, positional_embeddings="sinusoidal"), "positional_embeddings"),
    (lambda: sd.BasicTransformerBlock(8, 2, 4, attention_type="gated"), "attention_type"),
    (lambda: sd.FeedForward(8, activation_fn="swiglu"), "activation_fn"),
    (lambda: sd.Transformer2DModel(2, 4, in_channels=8, patch_size=2), "patch_size"),
    (lambda: sd.Transformer2DModel(2, 4, num_vector_embeds=10), "num_vector_embeds"),
    (lambda: sd.Transformer2DModel(2, 4), "in_channels"),
    (lambda: sd.Transformer2DModel(2, 4, in_channels=8, norm_num_groups=4, out_channels=4), "out_channels"),
    (lambda: sd.Transformer2DModel(3, 2, in_channels=8, norm_num_groups=4, use_linear_projection=True),
     "use_linear_projection"),
    (lambda: sd.CrossAttnDownBlock2D(8, 8, 4, resnet_groups=4, dual_cross_attention=True), "dual_cross"),
    (lambda: sd.CrossAttnUpBlock2D(8, 8, 8, 4, resnet_groups=4, num_attention_heads=9), "num_attention_heads"),
    (lambda: sd.TimestepEmbedding(4, 8, act_fn="tanh"), "activation"),
    (lambda: sd.Timesteps(2, True, 1), "divides by zero"),
])
def test_modules_refuse_unsupported_options(build, option):
    with pytest.raises(ValueError, match=option):
        build()


# ================================================================================================================
# the Fréchet distance
# ================================================================================================================

def _with_diagonal_covariance(count, means, stds, seed):
    """(count, D) features with sample mean `means` and sample covariance exactly diag(stds ** 2)."""
    centred = randn(count, len(means), seed=seed)
    centred -= centred.mean(0)
    columns = torch.linalg.svd(centred, full_matrices=False).U
    return columns * math.sqrt(count - 1) * stds + means


def test_frechet_distance_closed_form_and_invariances():
    means_a, means_b = torch.tensor([0.0, 1.0, -2.0, 0.5, 3.0], dtype=DTYPE), torch.tensor([1.0, 1.0, 0.0, 0.0, -1.0], dtype=DTYPE)
    stds_a, stds_b = torch.tensor([1.0, 2.0, 0.5, 3.0, 0.1], dtype=DTYPE), torch.tensor([2.0, 0.5, 0.5, 1.0, 1.0], dtype=DTYPE)
    set_a = _with_diagonal_covariance(300, means_a, stds_a, seed=0)
    set_b = _with_diagonal_covariance(200, means_b, stds_b, seed=1)
    closed_form = (((means_a - means_b) ** 2).sum() + ((stds_a - stds_b) ** 2).sum()).item()
    assert frechet_distance(set_a, set_b) == pytest.approx(closed_form, abs=1e-9)
    rotation = torch.linalg.qr(randn(5, 5, seed=2)).Q
    assert frechet_distance(set_a @ rotation, set_b @ rotation) == pytest.approx(closed_form, abs=1e-9)
    assert frechet_distance(set_a, set_a) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(set_a.float(), set_b.float()) == pytest.approx(closed_form, rel=1e-4)
    # symmetric, and a shift of one set adds the squared shift
    assert frechet_distance(set_b, set_a) == pytest.approx(closed_form, abs=1e-9)
    shift = torch.tensor([1.0, -2.0, 0.0, 0.0, 0.5], dtype=torch.float64)
    assert frechet_distance(set_a + shift, set_a) == pytest.approx(shift.square().sum().item(), abs=1e-9)


def test_frechet_distance_errors():
    good = torch.randn(10, 4)
    with pytest.raises(ValueError, match=r"float tensor \(N, D\), got shape \(10,\)"):
        frechet_distance(torch.randn(10), good)
    with pytest.raises(ValueError, match="float tensor"):
        frechet_distance(good, torch.zeros(10, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="at least 2 rows in features_b"):
        frechet_distance(good, torch.randn(1, 4))
    with pytest.raises(ValueError, match="feature widths differ, 4 and 5"):
        frechet_distance(good, torch.randn(10, 5))
