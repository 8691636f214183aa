# %% module docstring and imports
"""Stable Diffusion from scratch: diffusers' schedulers, KL autoencoder and conditional U-Net on common.nn layers.

Every class keeps diffusers' constructor arguments, defaults and state_dict keys (and its name, except where the
package already has a class of that name), so a diffusers state_dict loads with strict=True and both compute the
same function. In the order the notebook builds them:

- DDPMScheduler, DDIMScheduler: the noise schedule, forward noising and the two samplers;
- ResnetBlock2D, Downsample2D, Upsample2D, CrossAttention (diffusers' Attention), UNetMidBlock2D: the blocks that
  the autoencoder and the U-Net share;
- AutoencoderKL with VAEEncoder, VAEDecoder and DiagonalGaussianDistribution: images <-> latents;
- UNet2DConditionModel with its timestep embedding, transformers (self- and cross-attention) and down / mid / up
  blocks: the denoiser, conditioned on a timestep and on text token states.

Shapes: N batch, C channels, H x W spatial size, L = H * W image tokens, S context (text) tokens, D features.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from types import SimpleNamespace
from typing import List, Optional, Sequence, Union

import torch
from torch import nn

from common.nn import AvgPool2d, Conv2d, Dropout, Embedding, GELU, GroupNorm, Identity, LayerNorm, Linear, ReLU, SiLU
from common.nn.functional import gelu, scaled_dot_product_attention, tanh


# %% option and input checks used by every part
def _refuse(owner: str, option: str, value, supported: str, why: str = "") -> None:
    """Raise the standard error for an option value this re-implementation does not cover."""
    reason = f" ({why})" if why else ""
    raise ValueError(f"{owner}: {option}={value!r} is not supported{reason}; supported: {supported}")


def _check_choice(owner: str, option: str, value, choices, why: str = "") -> None:
    """Refuse `value` unless it is one of `choices`."""
    if value not in choices:
        _refuse(owner, option, value, ", ".join(map(repr, choices)), why)


def _check_default(owner: str, option: str, value, default, why: str = "") -> None:
    """Refuse an option this re-implementation leaves out unless it has its no-op default."""
    if value is default or (default is not None and value is not None and value == default):
        return
    _refuse(owner, option, value, f"only {option}={default!r}", why)


def _check_floating(owner: str, name: str, tensor) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{owner} expected {name} to be a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise TypeError(f"{owner} expected {name} to be a floating-point tensor, got dtype {tensor.dtype}")


def _check_feature_map(owner: str, name: str, tensor, channels: int) -> None:
    """tensor must be a floating (N, channels, H, W) feature map."""
    _check_floating(owner, name, tensor)
    if tensor.dim() != 4 or tensor.shape[1] != channels:
        raise ValueError(f"{owner} expected {name} of shape (N, {channels}, H, W), got {tuple(tensor.shape)}")


def _check_same_shape(owner: str, name: str, tensor, reference_name: str, reference) -> None:
    if tensor.shape != reference.shape:
        raise ValueError(f"{owner}: {name} must have the shape of {reference_name} {tuple(reference.shape)}, "
                         f"got {tuple(tensor.shape)}")


# %% scheduler outputs and configuration
# The noise tables are float32, as in diffusers, and each step's scalar coefficients are computed in float32 in the
# same order, so the schedulers agree with diffusers bit for bit for float32 and float64 samples.
_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
_PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
_TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
_VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log")


@dataclass
class SchedulerOutput:
    """What ``step`` returns: the sample at the previous timestep and the current estimate of x_0."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class SchedulerConfig(dict):
    """A scheduler's constructor arguments, readable as ``config.name`` or ``config["name"]``; read-only."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"scheduler config has no option {name!r}") from None

    def _read_only(self, *args, **kwargs):
        raise TypeError("a scheduler's config is read-only: build a new scheduler with the options you want")

    __setattr__ = __setitem__ = __delitem__ = _read_only
    update = pop = popitem = setdefault = clear = _read_only

    def __reduce__(self):
        return SchedulerConfig, (dict(self),)


# %% noise levels beta_t and the options both samplers share
def _cosine_betas(num_train_timesteps: int, max_beta: float = 0.999) -> torch.Tensor:
    """Glide's cosine schedule: abar(u) = cos^2((u + 0.008) / 1.008 * pi / 2), beta_i = 1 - abar(u_i+1) / abar(u_i)."""
    u = torch.arange(num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps  # (T + 1,) in [0, 1]
    alpha_bar = torch.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
    return betas.clamp(max=max_beta).to(torch.float32)  # capped so that no step destroys the signal entirely


def _rescale_to_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and stretch sqrt(abar) so that it ends at exactly 0 (SNR 0 at t = T-1) but keeps its first value.

    Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Algorithm 1.
    """
    sqrt_alpha_bar = torch.cumprod(1.0 - betas, dim=0).sqrt()  # (T,)
    first, last = sqrt_alpha_bar[0].clone(), sqrt_alpha_bar[-1].clone()
    # affine map sending last -> 0 and first -> first
    sqrt_alpha_bar = (sqrt_alpha_bar - last) * (first / (first - last))
    alpha_bar = sqrt_alpha_bar ** 2
    # undo the cumulative product: alpha_t = abar_t / abar_{t-1}, alpha_0 = abar_0
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas


def _make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas) -> torch.Tensor:
    """The (T,) float32 noise levels beta_t for the configured schedule."""
    if trained_betas is not None:
        betas = torch.as_tensor(trained_betas, dtype=torch.float32).detach().to("cpu").clone()
        if betas.shape != (num_train_timesteps,):
            raise ValueError(f"trained_betas must be one-dimensional with num_train_timesteps={num_train_timesteps} "
                             f"values, got shape {tuple(betas.shape)}")
        return betas
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    if beta_schedule == "scaled_linear":
        # linear in sqrt(beta) (Latent / Stable Diffusion)
        return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=torch.float32) ** 2
    return _cosine_betas(num_train_timesteps)


def _check_schedule_options(owner: str, config: dict) -> None:
    """The options DDPM and DDIM share: the table's length and kind, the output's meaning, the spacing."""
    total = config["num_train_timesteps"]
    if isinstance(total, bool) or not isinstance(total, numbers.Integral) or total < 1:
        raise ValueError(f"{owner}: num_train_timesteps must be a positive integer, got {total!r}")
    if config["trained_betas"] is None:
        _check_choice(owner, "beta_schedule", config["beta_schedule"], _BETA_SCHEDULES)
    _check_choice(owner, "prediction_type", config["prediction_type"], _PREDICTION_TYPES)
    _check_choice(owner, "timestep_spacing", config["timestep_spacing"], _TIMESTEP_SPACINGS)
    _check_default(owner, "thresholding", config["thresholding"], False, "dynamic thresholding")
    offset = config["steps_offset"]
    if isinstance(offset, bool) or not isinstance(offset, numbers.Integral) or offset < 0:
        raise ValueError(f"{owner}: steps_offset must be a non-negative integer, got {offset!r}")


# %% inference timesteps
def _spaced_timesteps(num_train_timesteps: int, num_inference_steps: int, spacing: str, steps_offset: int):
    """The descending int64 timesteps of an inference schedule (Lin et al. 2023, Table 2)."""
    n, total = num_inference_steps, num_train_timesteps
    if spacing == "leading":
        # every (T // n)-th step counted from 0, plus the offset: starts at (n-1)(T//n) + offset, not at T-1
        stride = total // n
        return torch.arange(n - 1, -1, -1, dtype=torch.int64) * stride + steps_offset
    if spacing == "trailing":
        # count down from T by the fractional stride T / n, then subtract 1: always starts at T-1. The step is the
        # one a float arange realises, (T - T/n) - T, so that rounding ties fall the way diffusers' np.arange does.
        step = (total - total / n) - total
        positions = total + torch.arange(n, dtype=torch.float64) * step  # (n,) descending
        return positions.round().to(torch.int64) - 1
    # "linspace": n evenly spaced points from 0 to T-1, ends included, rounded half to even
    if n == 1:
        positions = torch.zeros(1, dtype=torch.float64)
    else:
        positions = torch.arange(n, dtype=torch.float64) * ((total - 1) / (n - 1))
        positions[-1] = total - 1
    return positions.round().to(torch.int64).flip(0)


def _as_int_timestep(timestep) -> int:
    """A timestep given as a Python/NumPy integer or a one-element integer tensor, as a Python int."""
    if isinstance(timestep, torch.Tensor):
        not_integer = timestep.is_floating_point() or timestep.is_complex() or timestep.dtype == torch.bool
        if timestep.numel() != 1 or not_integer:
            raise ValueError(f"timestep must be an integer or a one-element integer tensor, got a tensor of shape "
                             f"{tuple(timestep.shape)} and dtype {timestep.dtype}")
        return int(timestep.item())
    if isinstance(timestep, bool) or not isinstance(timestep, numbers.Integral):
        raise ValueError(f"timestep must be an integer, got {timestep!r}")
    return int(timestep)


# %% Gaussian noise, drawn as diffusers draws it
def _per_sample(values: torch.Tensor, ndim: int) -> torch.Tensor:
    """(B,) or () per-sample scalars -> (B, 1, ..., 1) that broadcast against an ndim-dimensional batch."""
    return values.flatten().reshape((-1,) + (1,) * (ndim - 1))


def _standard_normal(shape, generator, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """N(0, I) noise drawn the way diffusers' ``randn_tensor`` draws it, so the same seeds give the same noise.

    generator: None (global RNG), one torch.Generator, or a list of them, one per batch element (each draws its
    element's slice). A CPU generator for a tensor on another device draws on the CPU and moves the result.
    """
    if isinstance(generator, (list, tuple)) and len(generator) == 1:
        generator = generator[0]
    generators = list(generator) if isinstance(generator, (list, tuple)) else [generator]
    draw_device = device
    for gen in generators:
        if gen is not None and gen.device.type != device.type:
            if gen.device.type != "cpu":
                raise ValueError(f"cannot draw noise for a {device.type} tensor from a {gen.device.type} generator")
            draw_device = torch.device("cpu")
    if len(generators) == 1:
        return torch.randn(tuple(shape), generator=generators[0], device=draw_device, dtype=dtype).to(device)
    if len(generators) != shape[0]:
        raise ValueError(f"a list of generators needs one per batch element: got {len(generators)} generators for "
                         f"a batch of {shape[0]}")
    slice_shape = (1,) + tuple(shape[1:])
    slices = [torch.randn(slice_shape, generator=gen, device=draw_device, dtype=dtype) for gen in generators]
    return torch.cat(slices, dim=0).to(device)


# %% the samplers' shared setup: noise tables and inference schedule
class _ScheduleSetup:
    """The noise tables and the inference schedule that DDPM and DDIM share.

    Forward (noising) process over the training steps t = 0 .. T-1 with noise levels beta_t:

        q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)
        q(x_t | x_0)     = N(sqrt(abar_t) x_0, (1 - abar_t) I),      abar_t = prod_{s <= t} (1 - beta_s)

    Index convention: diffusers' t = 0 is already one noising step (the paper's t = 1); "before t = 0" means
    clean data, abar = 1.
    """

    order = 1  # one model evaluation per step

    def _setup(self, config: dict):
        """Validate the shared options and build betas, alphas, alphas_cumprod and the default timesteps."""
        _check_schedule_options(type(self).__name__, config)
        total = config["num_train_timesteps"]
        self.config = SchedulerConfig(config)

        betas = _make_betas(total, config["beta_start"], config["beta_end"], config["beta_schedule"],
                            config["trained_betas"])
        if config["rescale_betas_zero_snr"]:
            betas = _rescale_to_zero_terminal_snr(betas)
        self.betas = betas                                       # (T,) float32
        self.alphas = 1.0 - betas                                # (T,)
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)  # (T,) abar_t
        self.init_noise_sigma = 1.0                              # x_T ~ N(0, I)
        self.num_inference_steps = None
        self.timesteps = torch.arange(total - 1, -1, -1, dtype=torch.int64)

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """The model sees x_t unscaled in DDPM/DDIM (only sigma-parameterised samplers rescale it)."""
        return sample

    def set_timesteps(self, num_inference_steps: int, device=None):
        """Choose the num_inference_steps descending timesteps that sampling visits."""
        total = self.config.num_train_timesteps
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, numbers.Integral):
            raise ValueError(f"num_inference_steps must be an integer, got {num_inference_steps!r}")
        if not 1 <= num_inference_steps <= total:
            raise ValueError(f"num_inference_steps must be between 1 and num_train_timesteps={total}, "
                             f"got {num_inference_steps}")
        timesteps = _spaced_timesteps(total, int(num_inference_steps), self.config.timestep_spacing,
                                      self.config.steps_offset)
        if int(timesteps[0]) >= total:
            raise ValueError(f"steps_offset={self.config.steps_offset} with {num_inference_steps} 'leading' steps "
                             f"gives timestep {int(timesteps[0])}, past the last training step {total - 1}")
        self.num_inference_steps = int(num_inference_steps)
        self.timesteps = timesteps.to(device)
        self._schedule = timesteps.tolist()

    def _check_timestep(self, timestep) -> int:
        t = _as_int_timestep(timestep)
        total = self.config.num_train_timesteps
        if not 0 <= t < total:
            raise ValueError(f"timestep must be in [0, {total - 1}] (num_train_timesteps={total}), got {t}")
        return t

    def _check_pair(self, name: str, tensor, reference_name: str, reference):
        """Both must be floating tensors, of the same shape."""
        owner = type(self).__name__
        _check_floating(owner, name, tensor)
        _check_floating(owner, reference_name, reference)
        _check_same_shape(owner, name, tensor, reference_name, reference)


# %% forward noising and the three parameterisations
class _NoiseScheduleBase(_ScheduleSetup):
    """Forward noising (add_noise), the v target (get_velocity) and the estimates of x_0 and eps.

    The network's output is read as one of three parameterisations, each giving an estimate of x_0 and of eps:
        "epsilon":       x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
        "sample":        x_0 is the output itself;  eps = (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t)
        "v_prediction":  v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0, hence
                         x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v,   eps = sqrt(abar_t) v + sqrt(1 - abar_t) x_t
    """

    def _x0_and_eps(self, model_output, sample, alpha_prod_t):
        """Estimates of x_0 (clipped to +-clip_sample_range if clip_sample) and eps, per config.prediction_type."""
        beta_prod_t = 1 - alpha_prod_t
        kind = self.config.prediction_type
        if kind == "epsilon":
            pred_epsilon = model_output
            pred_original_sample = (sample - beta_prod_t ** 0.5 * model_output) / alpha_prod_t ** 0.5
        elif kind == "sample":
            pred_original_sample = model_output
            pred_epsilon = (sample - alpha_prod_t ** 0.5 * pred_original_sample) / beta_prod_t ** 0.5
        else:  # "v_prediction"
            pred_original_sample = alpha_prod_t ** 0.5 * sample - beta_prod_t ** 0.5 * model_output
            pred_epsilon = alpha_prod_t ** 0.5 * model_output + beta_prod_t ** 0.5 * sample
        if self.config.clip_sample:
            limit = self.config.clip_sample_range
            pred_original_sample = pred_original_sample.clamp(-limit, limit)
        return pred_original_sample, pred_epsilon

    def _signal_and_noise_scales(self, reference: torch.Tensor, timesteps):
        """sqrt(abar_t) and sqrt(1 - abar_t), shaped (B, 1, ..., 1) like reference, in reference's dtype."""
        if reference.dim() == 0:
            raise ValueError("samples must have a batch dimension, got a 0-dimensional tensor")
        timesteps = torch.as_tensor(timesteps, device=reference.device)
        if timesteps.is_floating_point() or timesteps.is_complex() or timesteps.dtype == torch.bool:
            raise ValueError(f"timesteps must be integers, got dtype {timesteps.dtype}")
        if timesteps.numel() not in (1, reference.shape[0]):
            raise ValueError(f"timesteps must hold one value or one per sample ({reference.shape[0]}), "
                             f"got {timesteps.numel()}")
        total = self.config.num_train_timesteps
        if timesteps.numel() and (int(timesteps.min()) < 0 or int(timesteps.max()) >= total):
            raise ValueError(f"timesteps must be in [0, {total - 1}], got values from {int(timesteps.min())} "
                             f"to {int(timesteps.max())}")
        # note: the table is cast to the sample's dtype *before* the square roots (unlike in step)
        alpha_bar = self.alphas_cumprod.to(device=reference.device, dtype=reference.dtype)[timesteps]
        return _per_sample(alpha_bar ** 0.5, reference.dim()), _per_sample((1 - alpha_bar) ** 0.5, reference.dim())

    def _check_noise_source(self, sample, generator, variance_noise):
        """variance_noise, if given, replaces drawing from `generator`: a floating tensor shaped like sample."""
        if variance_noise is not None:
            if generator is not None:
                raise ValueError("pass either generator or variance_noise, not both")
            self._check_pair("variance_noise", variance_noise, "sample", sample)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """Sample q(x_t | x_0): x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise, one timestep per sample."""
        self._check_pair("noise", noise, "original_samples", original_samples)
        signal_scale, noise_scale = self._signal_and_noise_scales(original_samples, timesteps)  # (B, 1, ..., 1)
        return signal_scale * original_samples + noise_scale * noise

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """The v-prediction target v = sqrt(abar_t) noise - sqrt(1 - abar_t) x_0 (sample is the clean x_0)."""
        self._check_pair("noise", noise, "sample", sample)
        signal_scale, noise_scale = self._signal_and_noise_scales(sample, timesteps)  # (B, 1, ..., 1)
        return signal_scale * noise - noise_scale * sample


# %% DDPM: the jump to the previous timestep and its variance
class _DDPMVariance(_NoiseScheduleBase):
    """The pieces of a DDPM step from timestep t to the previous timestep s of the inference schedule.

    s = t - k when steps are skipped (abar_{-1} = 1). With alpha = abar_t / abar_s and beta = 1 - alpha for that
    jump, the Gaussian posterior q(x_s | x_t, x_0) has
        mean = sqrt(abar_s) beta / (1 - abar_t) x_0 + sqrt(alpha) (1 - abar_s) / (1 - abar_t) x_t
        beta_tilde = (1 - abar_s) / (1 - abar_t) beta         ("fixed_small"; "fixed_large" uses beta instead)
    """

    def previous_timestep(self, timestep) -> int:
        """The timestep after `timestep` in the inference schedule (t - 1 before set_timesteps); -1 at the end."""
        t = self._check_timestep(timestep)
        if self.num_inference_steps is None:
            return t - 1
        if t not in self._schedule:
            raise ValueError(f"timestep {t} is not in the inference schedule set by set_timesteps "
                             f"({self.num_inference_steps} steps: {self._schedule[:3]} ... {self._schedule[-2:]})")
        position = self._schedule.index(t)
        return self._schedule[position + 1] if position + 1 < len(self._schedule) else -1

    def _alpha_bars(self, t: int):
        """abar_t and abar_s for s = the previous timestep (abar = 1 before the first training step)."""
        prev_t = self.previous_timestep(t)
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self._one
        return self.alphas_cumprod[t], alpha_prod_t_prev

    def _get_variance(self, t, predicted_variance=None, variance_type=None) -> torch.Tensor:
        """The step's noise term as diffusers returns it, per variance_type (a 0-d float32 tensor):

        "fixed_small": beta_tilde;  "fixed_small_log": sqrt(beta_tilde) (a std, via exp(log / 2));
        "fixed_large": beta;        "fixed_large_log": log(beta).
        """
        if predicted_variance is not None:
            raise ValueError("predicted_variance is only used by the learned variance types, which are not supported")
        variance_type = self.variance_type if variance_type is None else variance_type
        _check_choice(type(self).__name__, "variance_type", variance_type, _VARIANCE_TYPES)
        alpha_prod_t, alpha_prod_t_prev = self._alpha_bars(self._check_timestep(t))
        current_beta_t = 1 - alpha_prod_t / alpha_prod_t_prev  # beta of the (possibly skipping) jump t -> s
        # posterior variance beta_tilde = (1 - abar_s) / (1 - abar_t) * beta, kept off 0 so that its log exists
        posterior_variance = ((1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * current_beta_t).clamp(min=1e-20)
        if variance_type == "fixed_small":
            return posterior_variance
        if variance_type == "fixed_small_log":
            return torch.exp(0.5 * torch.log(posterior_variance))
        if variance_type == "fixed_large":
            return current_beta_t
        return torch.log(current_beta_t)

    def _noise_std(self, t: int) -> torch.Tensor:
        """Standard deviation of the noise added in the step from t."""
        value = self._get_variance(t)
        if self.variance_type == "fixed_small_log":
            return value  # already a standard deviation
        if self.variance_type == "fixed_large_log":
            # exp(log(beta) / 2) = sqrt(beta). diffusers 0.42 takes sqrt(log(beta)) here, which is NaN.
            return torch.exp(0.5 * value)
        return value ** 0.5


# %% DDPMScheduler
class DDPMScheduler(_DDPMVariance):
    """Ancestral sampling from the DDPM posterior q(x_s | x_t, x_0) (Ho et al. 2020), diffusers' arguments:
    x_s = mean + sqrt(variance) z."""

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, variance_type: str = "fixed_small",
                 clip_sample: bool = True, prediction_type: str = "epsilon", thresholding: bool = False,
                 dynamic_thresholding_ratio: float = 0.995, clip_sample_range: float = 1.0,
                 sample_max_value: float = 1.0, timestep_spacing: str = "leading", steps_offset: int = 0,
                 rescale_betas_zero_snr: bool = False):
        # dynamic_thresholding_ratio and sample_max_value only matter with thresholding=True, which is refused
        learned = "learned" in str(variance_type)
        _check_choice("DDPMScheduler", "variance_type", variance_type, _VARIANCE_TYPES,
                      "learned variances need a model that predicts them" if learned else "")
        self._setup(dict(
            num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
            beta_schedule=beta_schedule, trained_betas=trained_betas, variance_type=variance_type,
            clip_sample=clip_sample, prediction_type=prediction_type, thresholding=thresholding,
            dynamic_thresholding_ratio=dynamic_thresholding_ratio, clip_sample_range=clip_sample_range,
            sample_max_value=sample_max_value, timestep_spacing=timestep_spacing, steps_offset=steps_offset,
            rescale_betas_zero_snr=rescale_betas_zero_snr))
        self.variance_type = variance_type
        self._one = torch.tensor(1.0)  # abar before the first step (clean data)
        self._schedule = None

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None,
             return_dict: bool = True, variance_noise: torch.Tensor | None = None):
        """One ancestral step x_t -> x_s (s = previous_timestep(t)); noise is added only while t > 0.

        variance_noise: optional N(0, I) tensor to use instead of drawing with `generator`.
        """
        self._check_pair("model_output", model_output, "sample", sample)
        t = self._check_timestep(timestep)
        self._check_noise_source(sample, generator, variance_noise)

        alpha_prod_t, alpha_prod_t_prev = self._alpha_bars(t)  # 0-d float32
        beta_prod_t = 1 - alpha_prod_t
        beta_prod_t_prev = 1 - alpha_prod_t_prev
        current_alpha_t = alpha_prod_t / alpha_prod_t_prev  # alpha of the jump t -> s
        current_beta_t = 1 - current_alpha_t

        pred_original_sample, _ = self._x0_and_eps(model_output, sample, alpha_prod_t)

        # posterior mean: sqrt(abar_s) beta / (1 - abar_t) x_0 + sqrt(alpha) (1 - abar_s) / (1 - abar_t) x_t
        original_coefficient = alpha_prod_t_prev ** 0.5 * current_beta_t / beta_prod_t
        current_coefficient = current_alpha_t ** 0.5 * beta_prod_t_prev / beta_prod_t
        prev_sample = original_coefficient * pred_original_sample + current_coefficient * sample

        if t > 0:
            if variance_noise is None:
                variance_noise = _standard_normal(model_output.shape, generator, model_output.device,
                                                  model_output.dtype)
            prev_sample = prev_sample + self._noise_std(t) * variance_noise

        if not return_dict:
            return prev_sample, pred_original_sample
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)


# %% DDIM: the step's variance
class _DDIMVariance(_NoiseScheduleBase):
    """DDIM keeps the marginals q(x_s | x_0) but lets the step's noise be chosen, sigma = eta sqrt(beta_tilde):

        x_s = sqrt(abar_s) x_0 + sqrt(1 - abar_s - sigma^2) eps + sigma z

    eta = 0 is deterministic; eta = 1 gives exactly the DDPM posterior (same mean, variance beta_tilde).
    """

    def _alpha_bar(self, timestep: int) -> torch.Tensor:
        return self.alphas_cumprod[timestep] if timestep >= 0 else self.final_alpha_cumprod

    def _get_variance(self, timestep, prev_timestep) -> torch.Tensor:
        """beta_tilde = (1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s) for the jump t -> s (0-d float32)."""
        alpha_prod_t = self.alphas_cumprod[self._check_timestep(timestep)]
        prev_timestep = _as_int_timestep(prev_timestep)
        if prev_timestep >= self.config.num_train_timesteps:
            raise ValueError(f"prev_timestep must be below num_train_timesteps={self.config.num_train_timesteps}, "
                             f"got {prev_timestep}")
        alpha_prod_t_prev = self._alpha_bar(prev_timestep)
        beta_prod_t = 1 - alpha_prod_t
        beta_prod_t_prev = 1 - alpha_prod_t_prev
        return (beta_prod_t_prev / beta_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)

    def _check_step_arguments(self, model_output, timestep, sample, eta, generator, variance_noise) -> int:
        """Validate a DDIM step's arguments; returns the timestep as an int."""
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step: DDIM's jump size depends on it")
        self._check_pair("model_output", model_output, "sample", sample)
        t = self._check_timestep(timestep)
        if not isinstance(eta, numbers.Real) or eta < 0:
            raise ValueError(f"eta must be a non-negative number, got {eta!r}")
        if eta > 0:
            self._check_noise_source(sample, generator, variance_noise)
        return t


# %% DDIMScheduler
class DDIMScheduler(_DDIMVariance):
    """DDIM sampling (Song et al. 2021) with stochasticity eta, diffusers' arguments."""

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, clip_sample: bool = True,
                 set_alpha_to_one: bool = True, steps_offset: int = 0, prediction_type: str = "epsilon",
                 thresholding: bool = False, dynamic_thresholding_ratio: float = 0.995,
                 clip_sample_range: float = 1.0, sample_max_value: float = 1.0, timestep_spacing: str = "leading",
                 rescale_betas_zero_snr: bool = False):
        # dynamic_thresholding_ratio and sample_max_value only matter with thresholding=True, which is refused
        self._setup(dict(
            num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
            beta_schedule=beta_schedule, trained_betas=trained_betas, clip_sample=clip_sample,
            set_alpha_to_one=set_alpha_to_one, steps_offset=steps_offset, prediction_type=prediction_type,
            thresholding=thresholding, dynamic_thresholding_ratio=dynamic_thresholding_ratio,
            clip_sample_range=clip_sample_range, sample_max_value=sample_max_value,
            timestep_spacing=timestep_spacing, rescale_betas_zero_snr=rescale_betas_zero_snr))
        # abar used after the last step: 1 (clean data) or, with set_alpha_to_one=False, abar_0
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, eta: float = 0.0,
             use_clipped_model_output: bool = False, generator=None, variance_noise: torch.Tensor | None = None,
             return_dict: bool = True):
        """One DDIM step x_t -> x_s with s = t - num_train_timesteps // num_inference_steps (whatever the spacing).

        use_clipped_model_output: re-derive eps from the clipped x_0 (as Glide does) instead of the model's.
        variance_noise: optional N(0, I) tensor to use instead of drawing with `generator` (only used if eta > 0).
        """
        t = self._check_step_arguments(model_output, timestep, sample, eta, generator, variance_noise)
        # a fixed stride back, even when the schedule's own spacing is not uniform (trailing / linspace)
        prev_t = t - self.config.num_train_timesteps // self.num_inference_steps
        alpha_prod_t = self.alphas_cumprod[t]  # 0-d float32
        alpha_prod_t_prev = self._alpha_bar(prev_t)
        beta_prod_t = 1 - alpha_prod_t

        pred_original_sample, pred_epsilon = self._x0_and_eps(model_output, sample, alpha_prod_t)

        # sigma_t = eta * sqrt(beta_tilde)   (DDIM eq. 16)
        std_dev_t = eta * self._get_variance(t, prev_t) ** 0.5
        if use_clipped_model_output:
            pred_epsilon = (sample - alpha_prod_t ** 0.5 * pred_original_sample) / beta_prod_t ** 0.5

        # x_s = sqrt(abar_s) x_0 + sqrt(1 - abar_s - sigma^2) eps + sigma z   (DDIM eq. 12). With eta = 1 and
        # abar_t = 0 (zero terminal SNR) sigma^2 = 1 - abar_s exactly, and rounding can make the difference -6e-8:
        # clamp at 0 where diffusers takes the square root of a negative number and returns NaN.
        direction_variance = (1 - alpha_prod_t_prev - std_dev_t ** 2).clamp(min=0)
        direction_to_sample = direction_variance ** 0.5 * pred_epsilon
        prev_sample = alpha_prod_t_prev ** 0.5 * pred_original_sample + direction_to_sample
        if eta > 0:
            if variance_noise is None:
                variance_noise = _standard_normal(model_output.shape, generator, model_output.device,
                                                  model_output.dtype)
            prev_sample = prev_sample + std_dev_t * variance_noise

        if not return_dict:
            return prev_sample, pred_original_sample
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)


# %% activations by diffusers' names
class _Mish(nn.Module):
    """mish(x) = x * tanh(softplus(x)), softplus(x) = log(1 + e^x)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        # softplus without overflow: log(1 + e^x) = max(x, 0) + log(1 + e^{-|x|})
        softplus = input.clamp(min=0) + torch.log1p(torch.exp(-input.abs()))
        return input * tanh(softplus)


_ACTIVATIONS = {"swish": SiLU, "silu": SiLU, "mish": _Mish, "gelu": GELU, "relu": ReLU}


def get_activation(act_fn: str) -> nn.Module:
    """The activation module for a diffusers activation name (case-insensitive): swish, silu, mish, gelu, relu."""
    if not isinstance(act_fn, str) or act_fn.lower() not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {act_fn!r}; supported: {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[act_fn.lower()]()


# %% ResnetBlock2D's checks
class _ResnetBlockChecks(nn.Module):
    """The option and input checks of ResnetBlock2D (its base class)."""

    @staticmethod
    def _check_options(time_embedding_norm: str, up: bool, down: bool, kernel) -> None:
        owner = "ResnetBlock2D"
        _check_choice(owner, "time_embedding_norm", time_embedding_norm, ("default", "scale_shift"))
        if up or down:
            _refuse(owner, "up" if up else "down", True, "False (resample outside the block)")
        if kernel is not None:
            _refuse(owner, "kernel", kernel, "None (kernel only matters with up/down)")

    def _check_shortcut(self) -> None:
        if self.conv_shortcut is None and self.in_channels != self.conv_2d_out_channels:
            raise ValueError(f"ResnetBlock2D: use_in_shortcut=False needs in_channels == output channels, "
                             f"got {self.in_channels} and {self.conv_2d_out_channels}")

    def _check_inputs(self, input_tensor: torch.Tensor, temb: Optional[torch.Tensor]) -> None:
        owner = "ResnetBlock2D"
        _check_feature_map(owner, "input_tensor", input_tensor, self.in_channels)
        if self.time_emb_proj is None:
            if temb is not None:
                raise ValueError(f"{owner} was built with temb_channels=None, so it takes temb=None; got a tensor "
                                 f"of shape {tuple(temb.shape)}")
            if self.time_embedding_norm == "scale_shift":
                raise ValueError(f"{owner}: time_embedding_norm='scale_shift' needs a time embedding, but "
                                 f"temb_channels=None")
        else:
            if temb is None:
                raise ValueError(f"{owner} expected temb of shape (N, {self.temb_channels}), got None")
            _check_floating(owner, "temb", temb)
            if temb.dim() != 2 or temb.shape[1] != self.temb_channels or temb.shape[0] != input_tensor.shape[0]:
                raise ValueError(f"{owner} expected temb of shape ({input_tensor.shape[0]}, {self.temb_channels}) "
                                 f"(one row per image), got {tuple(temb.shape)}")


# %% ResnetBlock2D
class ResnetBlock2D(_ResnetBlockChecks):
    """diffusers' ResnetBlock2D: a pre-norm residual block, optionally conditioned on a time embedding.

    h = conv1(act(norm1(x))); h = norm2(h + proj(act(temb)))          ("default")
                           or norm2(h) * (1 + scale) + shift         ("scale_shift", [scale, shift] = proj(act(temb)))
    out = (shortcut(x) + conv2(dropout(act(h)))) / output_scale_factor
    """

    def __init__(self, *, in_channels: int, out_channels: Optional[int] = None, conv_shortcut: bool = False,
                 dropout: float = 0.0, temb_channels: Optional[int] = 512, groups: int = 32,
                 groups_out: Optional[int] = None, pre_norm: bool = True, eps: float = 1e-6,
                 non_linearity: str = "swish", skip_time_act: bool = False, time_embedding_norm: str = "default",
                 kernel=None, output_scale_factor: float = 1.0, use_in_shortcut: Optional[bool] = None,
                 up: bool = False, down: bool = False, conv_shortcut_bias: bool = True,
                 conv_2d_out_channels: Optional[int] = None):
        super().__init__()
        self._check_options(time_embedding_norm, up, down, kernel)
        # pre_norm is accepted for compatibility: diffusers ignores it and always normalises first.
        out_channels = in_channels if out_channels is None else out_channels
        groups_out = groups if groups_out is None else groups_out
        conv_2d_out_channels = conv_2d_out_channels or out_channels
        self.in_channels, self.out_channels = in_channels, out_channels
        self.conv_2d_out_channels = conv_2d_out_channels
        self.temb_channels = temb_channels
        self.use_conv_shortcut = conv_shortcut   # stored as diffusers does; the shortcut is a 1x1 conv either way
        self.output_scale_factor = output_scale_factor
        self.time_embedding_norm = time_embedding_norm
        self.skip_time_act = skip_time_act
        self.pre_norm = True
        self.up = self.down = False

        self.norm1 = GroupNorm(num_groups=groups, num_channels=in_channels, eps=eps, affine=True)
        self.conv1 = Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if temb_channels is None:
            self.time_emb_proj = None
        else:
            # "scale_shift" projects to a scale and a shift per channel, stacked along the channels
            projected = 2 * out_channels if time_embedding_norm == "scale_shift" else out_channels
            self.time_emb_proj = Linear(temb_channels, projected)
        self.norm2 = GroupNorm(num_groups=groups_out, num_channels=out_channels, eps=eps, affine=True)
        self.dropout = Dropout(dropout)
        self.conv2 = Conv2d(out_channels, conv_2d_out_channels, kernel_size=3, stride=1, padding=1)
        self.nonlinearity = get_activation(non_linearity)
        self.upsample = self.downsample = None

        # a 1x1 conv on the skip path when the channel count changes (or when asked for)
        self.use_in_shortcut = in_channels != conv_2d_out_channels if use_in_shortcut is None else use_in_shortcut
        self.conv_shortcut = (Conv2d(in_channels, conv_2d_out_channels, kernel_size=1, stride=1, padding=0,
                                     bias=conv_shortcut_bias) if self.use_in_shortcut else None)
        self._check_shortcut()

    def forward(self, input_tensor: torch.Tensor, temb: Optional[torch.Tensor] = None) -> torch.Tensor:
        self._check_inputs(input_tensor, temb)
        hidden = self.conv1(self.nonlinearity(self.norm1(input_tensor)))   # (N, C_out, H, W)
        if self.time_emb_proj is not None:
            if not self.skip_time_act:
                temb = self.nonlinearity(temb)
            temb = self.time_emb_proj(temb)[:, :, None, None]               # (N, C_out or 2 C_out, 1, 1)
        if self.time_embedding_norm == "default":
            if temb is not None:
                hidden = hidden + temb                                      # a per-channel shift
            hidden = self.norm2(hidden)
        else:
            scale, shift = temb.chunk(2, dim=1)                             # each (N, C_out, 1, 1)
            hidden = self.norm2(hidden) * (1 + scale) + shift
        hidden = self.conv2(self.dropout(self.nonlinearity(hidden)))        # (N, C_out2, H, W)
        skip = input_tensor if self.conv_shortcut is None else self.conv_shortcut(input_tensor)
        return (skip + hidden) / self.output_scale_factor


# %% Downsample2D
def _pad_right_bottom(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, H + 1, W + 1): one row of zeros below and one column of zeros on the right."""
    n, c, h, w = x.shape
    x = torch.cat([x, x.new_zeros(n, c, h, 1)], dim=3)                     # (N, C, H, W + 1)
    return torch.cat([x, x.new_zeros(n, c, 1, w + 1)], dim=2)              # (N, C, H + 1, W + 1)


class Downsample2D(nn.Module):
    """Halve the resolution: a stride-2 conv (use_conv) or 2x2 average pooling.

    With use_conv and padding=0 the input is first padded by one zero row/column at the bottom/right
    (asymmetric padding, as in the original LDM code), so the output is floor(H / 2) rows for kernel 3.
    """

    def __init__(self, channels: int, use_conv: bool = False, out_channels: Optional[int] = None,
                 padding: int = 1, name: str = "conv", kernel_size=3, norm_type=None, eps=None,
                 elementwise_affine=None, bias: bool = True):
        super().__init__()
        owner = "Downsample2D"
        _check_default(owner, "norm_type", norm_type, None)
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv, self.padding, self.name = use_conv, padding, name
        self.norm = None
        if use_conv:
            conv = Conv2d(channels, self.out_channels, kernel_size=kernel_size, stride=2, padding=padding, bias=bias)
        else:
            if self.out_channels != channels:
                raise ValueError(f"{owner}: without use_conv the channel count cannot change, got channels="
                                 f"{channels}, out_channels={self.out_channels}")
            conv = AvgPool2d(kernel_size=2, stride=2)
        # diffusers' naming: name="conv" registers the same layer twice (Conv2d_0 first, then conv), so
        # both key prefixes appear in the state_dict; any other name registers it once, as `conv`.
        if name == "conv":
            self.Conv2d_0 = conv
        self.conv = conv

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        _check_feature_map("Downsample2D", "hidden_states", hidden_states, self.channels)
        if self.use_conv and self.padding == 0:
            hidden_states = _pad_right_bottom(hidden_states)
        return self.conv(hidden_states)


# %% nearest-neighbour resizing
def _nearest_source_index(in_size: int, out_size: int, device) -> torch.Tensor:
    """Source row (or column) of each output row under torch's legacy 'nearest' interpolation.

    src = min(floor(dst * (in / out)), in - 1), with the ratio and product in float32 as torch computes them;
    out == in and out == 2 * in are exact special cases (dst and dst // 2).
    """
    destination = torch.arange(out_size, device=device)
    if out_size == in_size:
        return destination
    if out_size == 2 * in_size:
        return destination // 2
    ratio = torch.tensor(in_size, dtype=torch.float32, device=device) / out_size
    source = torch.floor(destination.to(torch.float32) * ratio).to(torch.long)
    return source.clamp(max=in_size - 1)


def _upsample_nearest(x: torch.Tensor, out_height: int, out_width: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, out_height, out_width), each output pixel copying its nearest source pixel."""
    rows = _nearest_source_index(x.shape[2], out_height, x.device)
    cols = _nearest_source_index(x.shape[3], out_width, x.device)
    return x[:, :, rows][:, :, :, cols]


# %% Upsample2D
class Upsample2D(nn.Module):
    """Double the resolution (or resize to output_size) by nearest-neighbour copying, then an optional conv."""

    def __init__(self, channels: int, use_conv: bool = False, use_conv_transpose: bool = False,
                 out_channels: Optional[int] = None, name: str = "conv", kernel_size: Optional[int] = None,
                 padding=1, norm_type=None, eps=None, elementwise_affine=None, bias: bool = True,
                 interpolate: bool = True):
        super().__init__()
        owner = "Upsample2D"
        if use_conv_transpose:
            _refuse(owner, "use_conv_transpose", use_conv_transpose, "False")
        _check_default(owner, "norm_type", norm_type, None)
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv, self.use_conv_transpose = use_conv, False
        self.name, self.interpolate = name, interpolate
        self.norm = None
        conv = None
        if use_conv:
            kernel_size = 3 if kernel_size is None else kernel_size
            conv = Conv2d(channels, self.out_channels, kernel_size=kernel_size, padding=padding, bias=bias)
        # diffusers' naming: the conv is `conv` for name="conv", `Conv2d_0` for any other name
        if name == "conv":
            self.conv = conv
        else:
            self.Conv2d_0 = conv

    def forward(self, hidden_states: torch.Tensor,
                output_size: Optional[Sequence[int]] = None) -> torch.Tensor:
        _check_feature_map("Upsample2D", "hidden_states", hidden_states, self.channels)
        if self.interpolate:
            height, width = hidden_states.shape[2:]
            if output_size is None:
                out_height, out_width = 2 * height, 2 * width
            else:
                if isinstance(output_size, (int, float)) or len(output_size) != 2:
                    raise ValueError(f"Upsample2D expected output_size as (height, width), got {output_size!r}")
                out_height, out_width = (int(size) for size in output_size)
            if out_height < 1 or out_width < 1:
                raise ValueError(f"Upsample2D expected a positive output_size, got {output_size!r}")
            hidden_states = _upsample_nearest(hidden_states, out_height, out_width)
        if self.use_conv:
            hidden_states = (self.conv if self.name == "conv" else self.Conv2d_0)(hidden_states)
        return hidden_states


# %% CrossAttention's options
def _check_attention_options(heads, kv_heads, cross_attention_norm, qk_norm, added_kv_proj_dim, spatial_norm_dim,
                             only_cross_attention, processor, out_context_dim, context_pre_only, pre_only,
                             is_causal, scale_qk, upcast) -> None:
    """Refuse the options of diffusers' Attention that its default processor, AttnProcessor2_0, does not use.

    Ignored, as in AttnProcessor2_0: upcast_attention / upcast_softmax (only the legacy processor upcasts),
    cross_attention_norm_num_groups / added_proj_bias / elementwise_affine (their layers are refused),
    _from_deprecated_attn_block (only changes how old checkpoints are renamed on loading).
    """
    owner = "CrossAttention"
    refused = [("kv_heads", kv_heads, kv_heads not in (None, heads), f"None (or heads={heads})"),
               ("cross_attention_norm", cross_attention_norm, cross_attention_norm is not None, "None"),
               ("qk_norm", qk_norm, qk_norm is not None, "None"),
               ("added_kv_proj_dim", added_kv_proj_dim, added_kv_proj_dim is not None, "None"),
               ("spatial_norm_dim", spatial_norm_dim, spatial_norm_dim is not None, "None"),
               ("only_cross_attention", only_cross_attention, only_cross_attention, "False"),
               ("processor", processor, processor is not None, "None (the default AttnProcessor2_0)"),
               ("out_context_dim", out_context_dim, out_context_dim is not None, "None"),
               ("context_pre_only", context_pre_only, context_pre_only is not None, "None"),
               ("pre_only", pre_only, pre_only, "False"),
               ("is_causal", is_causal, is_causal, "False (AttnProcessor2_0 never masks causally)")]
    for option, value, bad, supported in refused:
        if bad:
            _refuse(owner, option, value, supported)
    if not scale_qk and upcast:
        raise ValueError(f"{owner}: scale_qk=False with upcast_attention/upcast_softmax selects diffusers' "
                         f"legacy AttnProcessor, which is not supported; use scale_qk=True or no upcasting")


# %% CrossAttention's input checks and masks
class _CrossAttentionInputs(nn.Module):
    """The input checks and the mask layout of CrossAttention (its base class)."""

    def _check_inputs(self, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor]) -> None:
        owner = "CrossAttention"
        _check_floating(owner, "hidden_states", hidden_states)
        shape = tuple(hidden_states.shape)
        if hidden_states.dim() == 4:
            if shape[1] != self.query_dim:
                raise ValueError(f"{owner} expected hidden_states (N, {self.query_dim}, H, W) or "
                                 f"(N, L, {self.query_dim}), got {shape}")
            if self.out_dim != self.query_dim:
                raise ValueError(f"{owner}: a 4-D input needs out_dim == query_dim, got {self.out_dim} "
                                 f"and {self.query_dim}")
        elif hidden_states.dim() != 3 or shape[2] != self.query_dim:
            raise ValueError(f"{owner} expected hidden_states (N, L, {self.query_dim}) or "
                             f"(N, {self.query_dim}, H, W), got {shape}")
        if self.residual_connection and self.out_dim != self.query_dim:
            raise ValueError(f"{owner}: residual_connection needs out_dim == query_dim, got {self.out_dim} "
                             f"and {self.query_dim}")
        if encoder_hidden_states is not None:
            _check_floating(owner, "encoder_hidden_states", encoder_hidden_states)
            if (encoder_hidden_states.dim() != 3 or encoder_hidden_states.shape[0] != shape[0]
                    or encoder_hidden_states.shape[2] != self.cross_attention_dim):
                raise ValueError(f"{owner} expected encoder_hidden_states of shape ({shape[0]}, S, "
                                 f"{self.cross_attention_dim}), got {tuple(encoder_hidden_states.shape)}")
            if encoder_hidden_states.dtype != hidden_states.dtype:
                raise TypeError(f"{owner} expected encoder_hidden_states of dtype {hidden_states.dtype}, "
                                f"got {encoder_hidden_states.dtype}")
        elif self.cross_attention_dim != self.query_dim:
            raise ValueError(f"{owner} was built with cross_attention_dim={self.cross_attention_dim} "
                             f"!= query_dim={self.query_dim}: pass encoder_hidden_states")

    def _prepare_mask(self, attention_mask: torch.Tensor, batch: int, length: int, source_length: int,
                      dtype: torch.dtype) -> torch.Tensor:
        """(N, S), (N, 1 or L, S) or (N * heads, 1 or L, S) -> (N, heads, 1 or L, S), as diffusers reshapes it."""
        owner = "CrossAttention"
        if not isinstance(attention_mask, torch.Tensor):
            raise TypeError(f"{owner} expected attention_mask to be a torch.Tensor or None, "
                            f"got {type(attention_mask).__name__}")
        if attention_mask.dtype != torch.bool and attention_mask.dtype != dtype:
            raise TypeError(f"{owner} expected a bool attention_mask (True = may attend) or an additive one of the "
                            f"query's dtype {dtype}, got {attention_mask.dtype}")
        shape = tuple(attention_mask.shape)
        rows_ok = attention_mask.dim() == 2 or (attention_mask.dim() == 3 and shape[1] in (1, length))
        if (attention_mask.dim() not in (2, 3) or not rows_ok or shape[-1] != source_length
                or shape[0] not in (batch, batch * self.heads)):
            raise ValueError(f"{owner} expected attention_mask of shape ({batch}, {source_length}), "
                             f"({batch}, 1 or {length}, {source_length}) or ({batch * self.heads}, 1 or {length}, "
                             f"{source_length}) (batch x heads), got {shape}")
        if shape[0] != batch * self.heads:
            # one mask per sample, shared by its heads: sample b's mask becomes rows b*heads .. b*heads+heads-1
            attention_mask = attention_mask.repeat_interleave(self.heads, dim=0)
        return attention_mask.reshape(batch, self.heads, -1, source_length)      # (N, heads, 1 or L, S)


# %% CrossAttention's forward
class _CrossAttentionForward(_CrossAttentionInputs):
    """The forward of CrossAttention (its base class), diffusers' default processor AttnProcessor2_0.

    x (N, L, C) or (N, C, H, W) (flattened to L = H W tokens); context (N, S, C_ctx), x itself if None.
    x' = group_norm(x) if norm_num_groups; q = x' Wq, k = context Wk, v = context Wv, split into heads;
    out = to_out(softmax(q k^T / sqrt(d_head) + mask) v) (+ x if residual_connection) / rescale_output_factor.
    """

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None, temb: Optional[torch.Tensor] = None) -> torch.Tensor:
        """temb is accepted for diffusers' call signature; it only matters for the (refused) spatial norm."""
        self._check_inputs(hidden_states, encoder_hidden_states)
        residual = hidden_states
        spatial = hidden_states.dim() == 4
        if spatial:
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.reshape(batch, channels, height * width).transpose(1, 2)  # (N, HW, C)
        batch, length, _ = hidden_states.shape
        source_length = length if encoder_hidden_states is None else encoder_hidden_states.shape[1]
        mask = None
        if attention_mask is not None:
            mask = self._prepare_mask(attention_mask, batch, length, source_length, hidden_states.dtype)

        if self.group_norm is not None:
            # GroupNorm wants the channels second: (N, L, C) -> (N, C, L) -> normalise -> (N, L, C)
            hidden_states = self.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states

        def split_heads(tokens: torch.Tensor) -> torch.Tensor:                 # (N, T, heads*d) -> (N, heads, T, d)
            return tokens.reshape(batch, -1, self.heads, self.head_dim).transpose(1, 2)

        query = split_heads(self.to_q(hidden_states))                          # (N, heads, L, d)
        key = split_heads(self.to_k(context))                                  # (N, heads, S, d)
        value = split_heads(self.to_v(context))                                # (N, heads, S, d)
        scale = None if self.scale_qk else 1.0                                 # None: 1/sqrt(d)
        attended = scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0, scale=scale)
        attended = attended.transpose(1, 2).reshape(batch, length, self.heads * self.head_dim)  # (N, L, inner)

        out = self.to_out[1](self.to_out[0](attended))                         # (N, L, out_dim)
        if spatial:
            out = out.transpose(1, 2).reshape(batch, channels, height, width)  # (N, C, H, W)
        if self.residual_connection:
            out = out + residual
        return out / self.rescale_output_factor


# %% CrossAttention
class CrossAttention(_CrossAttentionForward):
    """diffusers' Attention (named CrossAttention in diffusers before 0.13, the name this package uses because
    common.models already has an Attention) with its default processor AttnProcessor2_0: multi-head self- or
    cross-attention on tokens (N, L, C) or on feature maps (N, C, H, W); see the forward above."""

    def __init__(self, query_dim: int, cross_attention_dim: Optional[int] = None, heads: int = 8,
                 kv_heads: Optional[int] = None, dim_head: int = 64, dropout: float = 0.0, bias: bool = False,
                 upcast_attention: bool = False, upcast_softmax: bool = False,
                 cross_attention_norm: Optional[str] = None, cross_attention_norm_num_groups: int = 32,
                 qk_norm: Optional[str] = None, added_kv_proj_dim: Optional[int] = None,
                 added_proj_bias: Optional[bool] = True, norm_num_groups: Optional[int] = None,
                 spatial_norm_dim: Optional[int] = None, out_bias: bool = True, scale_qk: bool = True,
                 only_cross_attention: bool = False, eps: float = 1e-5, rescale_output_factor: float = 1.0,
                 residual_connection: bool = False, _from_deprecated_attn_block: bool = False, processor=None,
                 out_dim: Optional[int] = None, out_context_dim: Optional[int] = None, context_pre_only=None,
                 pre_only: bool = False, elementwise_affine: bool = True, is_causal: bool = False):
        super().__init__()
        _check_attention_options(heads, kv_heads, cross_attention_norm, qk_norm, added_kv_proj_dim,
                                 spatial_norm_dim, only_cross_attention, processor, out_context_dim,
                                 context_pre_only, pre_only, is_causal, scale_qk, upcast_attention or upcast_softmax)
        self.inner_dim = out_dim if out_dim is not None else dim_head * heads
        self.query_dim = query_dim
        self.is_cross_attention = cross_attention_dim is not None
        self.cross_attention_dim = cross_attention_dim if cross_attention_dim is not None else query_dim
        self.out_dim = out_dim if out_dim is not None else query_dim
        self.heads = out_dim // dim_head if out_dim is not None else heads
        if self.heads < 1 or self.inner_dim % self.heads:
            raise ValueError(f"CrossAttention: the inner dimension {self.inner_dim} must split into {self.heads} "
                             f"heads")
        self.head_dim = self.inner_dim // self.heads
        self.use_bias = bias
        self.upcast_attention, self.upcast_softmax = upcast_attention, upcast_softmax
        self.rescale_output_factor = rescale_output_factor
        self.residual_connection = residual_connection
        self.dropout = dropout
        self.scale_qk = scale_qk
        # AttnProcessor2_0 lets SDPA scale by 1/sqrt(head_dim); scale_qk=False (legacy processor) uses 1
        self.scale = dim_head ** -0.5 if scale_qk else 1.0
        self._from_deprecated_attn_block = _from_deprecated_attn_block

        self.group_norm = (GroupNorm(num_channels=query_dim, num_groups=norm_num_groups, eps=eps, affine=True)
                           if norm_num_groups is not None else None)
        self.spatial_norm = None
        self.norm_q = self.norm_k = None
        self.norm_cross = None
        self.to_q = Linear(query_dim, self.inner_dim, bias=bias)
        self.to_k = Linear(self.cross_attention_dim, self.inner_dim, bias=bias)
        self.to_v = Linear(self.cross_attention_dim, self.inner_dim, bias=bias)
        self.to_out = nn.ModuleList([Linear(self.inner_dim, self.out_dim, bias=out_bias), Dropout(dropout)])


# %% UNetMidBlock2D
class UNetMidBlock2D(nn.Module):
    """resnets[0], then num_layers times (attentions[i], resnets[i + 1]), all at in_channels channels.

    The attention is single-resolution spatial self-attention with a residual connection, heads =
    in_channels // attention_head_dim (the VAE: one head of all channels).
    """

    def __init__(self, in_channels: int, temb_channels: Optional[int], dropout: float = 0.0, num_layers: int = 1,
                 resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish",
                 resnet_groups: Optional[int] = 32, attn_groups: Optional[int] = None, resnet_pre_norm: bool = True,
                 add_attention: bool = True, attention_head_dim: Optional[int] = 1,
                 output_scale_factor: float = 1.0):
        super().__init__()
        _check_choice("UNetMidBlock2D", "resnet_time_scale_shift", resnet_time_scale_shift,
                      ("default", "scale_shift"))
        resnet_groups = resnet_groups if resnet_groups is not None else min(in_channels // 4, 32)
        if attn_groups is None:
            # diffusers: the attention gets a GroupNorm only with the "default" time embedding
            attn_groups = resnet_groups if resnet_time_scale_shift == "default" else None
        if attention_head_dim is None:
            attention_head_dim = in_channels            # diffusers' fallback (with a warning): a single head
        self.add_attention = add_attention
        self.in_channels, self.temb_channels = in_channels, temb_channels

        def resnet() -> ResnetBlock2D:
            return ResnetBlock2D(in_channels=in_channels, out_channels=in_channels, temb_channels=temb_channels,
                                 eps=resnet_eps, groups=resnet_groups, dropout=dropout,
                                 time_embedding_norm=resnet_time_scale_shift, non_linearity=resnet_act_fn,
                                 output_scale_factor=output_scale_factor, pre_norm=resnet_pre_norm)

        def attention() -> CrossAttention:
            return CrossAttention(in_channels, heads=in_channels // attention_head_dim, dim_head=attention_head_dim,
                                  rescale_output_factor=output_scale_factor, eps=resnet_eps,
                                  norm_num_groups=attn_groups, residual_connection=True, bias=True,
                                  upcast_softmax=True, _from_deprecated_attn_block=True)

        resnets = [resnet()]
        attentions = []
        for _ in range(num_layers):
            attentions.append(attention() if add_attention else None)   # None entries keep the indices aligned
            resnets.append(resnet())
        self.attentions = nn.ModuleList(attentions)
        self.resnets = nn.ModuleList(resnets)

    def forward(self, hidden_states: torch.Tensor, temb: Optional[torch.Tensor] = None) -> torch.Tensor:
        hidden_states = self.resnets[0](hidden_states, temb)               # (N, C, H, W) throughout
        for attention, resnet in zip(self.attentions, self.resnets[1:]):
            if attention is not None:
                hidden_states = attention(hidden_states)
            hidden_states = resnet(hidden_states, temb)
        return hidden_states


# %% the VAE's down block
# Stable Diffusion's variational autoencoder, diffusers' AutoencoderKL:
# x (N, C_in, H, W) --VAEEncoder--> (N, 2 L, h, w) --quant_conv--> [mean, logvar] = a diagonal Gaussian q(z | x)
# z (N, L, h, w) --post_quant_conv--> --VAEDecoder--> (N, C_out, H', W')
# Each of the len(block_out_channels) - 1 downsamplings maps a side s to floor(s / 2); each upsampling doubles it.
class DownEncoderBlock2D(nn.Module):
    """num_layers ResnetBlock2D (no time embedding), then an optional stride-2 conv downsampler ("op")."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0, num_layers: int = 1,
                 resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish",
                 resnet_groups: int = 32, resnet_pre_norm: bool = True, output_scale_factor: float = 1.0,
                 add_downsample: bool = True, downsample_padding: int = 1):
        super().__init__()
        # without a time embedding only the plain residual block can run
        _check_choice("DownEncoderBlock2D", "resnet_time_scale_shift", resnet_time_scale_shift, ("default",))
        self.resnets = nn.ModuleList([
            ResnetBlock2D(in_channels=in_channels if i == 0 else out_channels, out_channels=out_channels,
                          temb_channels=None, eps=resnet_eps, groups=resnet_groups, dropout=dropout,
                          time_embedding_norm=resnet_time_scale_shift, non_linearity=resnet_act_fn,
                          output_scale_factor=output_scale_factor, pre_norm=resnet_pre_norm)
            for i in range(num_layers)])
        self.downsamplers = (nn.ModuleList([Downsample2D(out_channels, use_conv=True, out_channels=out_channels,
                                                         padding=downsample_padding, name="op")])
                             if add_downsample else None)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            hidden_states = resnet(hidden_states, None)
        for downsampler in self.downsamplers or ():
            hidden_states = downsampler(hidden_states)
        return hidden_states


# %% the VAE's up block
class UpDecoderBlock2D(nn.Module):
    """num_layers ResnetBlock2D, then an optional nearest-2x + 3x3 conv upsampler."""

    def __init__(self, in_channels: int, out_channels: int, resolution_idx: Optional[int] = None,
                 dropout: float = 0.0, num_layers: int = 1, resnet_eps: float = 1e-6,
                 resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish", resnet_groups: int = 32,
                 resnet_pre_norm: bool = True, output_scale_factor: float = 1.0, add_upsample: bool = True,
                 temb_channels: Optional[int] = None):
        super().__init__()
        _check_choice("UpDecoderBlock2D", "resnet_time_scale_shift", resnet_time_scale_shift,
                      ("default", "scale_shift"))
        self.resnets = nn.ModuleList([
            ResnetBlock2D(in_channels=in_channels if i == 0 else out_channels, out_channels=out_channels,
                          temb_channels=temb_channels, eps=resnet_eps, groups=resnet_groups, dropout=dropout,
                          time_embedding_norm=resnet_time_scale_shift, non_linearity=resnet_act_fn,
                          output_scale_factor=output_scale_factor, pre_norm=resnet_pre_norm)
            for i in range(num_layers)])
        self.upsamplers = (nn.ModuleList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)])
                           if add_upsample else None)
        self.resolution_idx = resolution_idx

    def forward(self, hidden_states: torch.Tensor, temb: Optional[torch.Tensor] = None) -> torch.Tensor:
        for resnet in self.resnets:
            hidden_states = resnet(hidden_states, temb)
        for upsampler in self.upsamplers or ():
            hidden_states = upsampler(hidden_states)
        return hidden_states


# %% VAEEncoder
def _check_block_types(owner: str, block_types: Sequence[str], supported: str,
                       block_out_channels: Sequence[int]) -> None:
    """One block type per entry of block_out_channels, each `supported` (diffusers also accepts a "UNetRes"
    prefix, as its get_down_block / get_up_block do)."""
    if len(block_types) != len(block_out_channels) or not block_types:
        raise ValueError(f"{owner} expected one block type per entry of block_out_channels, got "
                         f"{len(block_types)} block types and block_out_channels={tuple(block_out_channels)}")
    for block_type in block_types:
        name = block_type[7:] if block_type.startswith("UNetRes") else block_type
        if name != supported:
            _refuse(owner, "block type", block_type, f"{supported!r} (or 'UNetRes{supported}')")


class VAEEncoder(nn.Module):
    """diffusers' Encoder (renamed: common.models has an Encoder): conv_in -> down blocks (all but the last halve
    the size) -> mid block -> GroupNorm -> SiLU -> conv_out, which gives 2 * out_channels channels (mean and
    log-variance) when double_z."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3,
                 down_block_types: Sequence[str] = ("DownEncoderBlock2D",), block_out_channels: Sequence[int] = (64,),
                 layers_per_block: int = 2, norm_num_groups: int = 32, act_fn: str = "silu", double_z: bool = True,
                 mid_block_add_attention: bool = True):
        super().__init__()
        _check_block_types("VAEEncoder", down_block_types, "DownEncoderBlock2D", block_out_channels)
        self.in_channels = in_channels
        self.layers_per_block = layers_per_block
        self.conv_in = Conv2d(in_channels, block_out_channels[0], kernel_size=3, stride=1, padding=1)
        self.down_blocks = nn.ModuleList()
        output_channel = block_out_channels[0]
        for i in range(len(down_block_types)):
            input_channel, output_channel = output_channel, block_out_channels[i]
            # downsample_padding=0: Downsample2D pads only the bottom/right, as the original LDM code
            self.down_blocks.append(DownEncoderBlock2D(
                in_channels=input_channel, out_channels=output_channel, num_layers=layers_per_block,
                resnet_eps=1e-6, resnet_act_fn=act_fn, resnet_groups=norm_num_groups,
                add_downsample=i < len(block_out_channels) - 1, downsample_padding=0))
        # the mid block's attention has a single head spanning all channels
        self.mid_block = UNetMidBlock2D(in_channels=block_out_channels[-1], temb_channels=None, resnet_eps=1e-6,
                                        resnet_act_fn=act_fn, output_scale_factor=1,
                                        resnet_time_scale_shift="default", resnet_groups=norm_num_groups,
                                        attention_head_dim=block_out_channels[-1],
                                        add_attention=mid_block_add_attention)
        self.conv_norm_out = GroupNorm(num_channels=block_out_channels[-1], num_groups=norm_num_groups, eps=1e-6)
        self.conv_act = SiLU()                       # always SiLU, whatever act_fn is
        self.conv_out = Conv2d(block_out_channels[-1], 2 * out_channels if double_z else out_channels, 3, padding=1)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        _check_feature_map("VAEEncoder", "sample", sample, self.in_channels)
        sample = self.conv_in(sample)                                  # (N, C_0, H, W)
        for down_block in self.down_blocks:
            sample = down_block(sample)                                # (N, C_i, H / 2^i, W / 2^i), floored
        sample = self.mid_block(sample)
        return self.conv_out(self.conv_act(self.conv_norm_out(sample)))


# %% VAEDecoder
class VAEDecoder(nn.Module):
    """diffusers' Decoder (renamed to pair with VAEEncoder): conv_in -> mid block -> up blocks (layers_per_block + 1
    resnets each; all but the last double the size) -> GroupNorm -> SiLU -> conv_out."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3,
                 up_block_types: Sequence[str] = ("UpDecoderBlock2D",), block_out_channels: Sequence[int] = (64,),
                 layers_per_block: int = 2, norm_num_groups: int = 32, act_fn: str = "silu",
                 norm_type: str = "group", mid_block_add_attention: bool = True):
        super().__init__()
        _check_choice("VAEDecoder", "norm_type", norm_type, ("group",))
        _check_block_types("VAEDecoder", up_block_types, "UpDecoderBlock2D", block_out_channels)
        self.in_channels = in_channels
        self.layers_per_block = layers_per_block
        self.conv_in = Conv2d(in_channels, block_out_channels[-1], kernel_size=3, stride=1, padding=1)
        # registered before mid_block (filled after it), which fixes the state_dict order: up_blocks come first
        self.up_blocks = nn.ModuleList()
        self.mid_block = UNetMidBlock2D(in_channels=block_out_channels[-1], temb_channels=None, resnet_eps=1e-6,
                                        resnet_act_fn=act_fn, output_scale_factor=1,
                                        resnet_time_scale_shift="default", resnet_groups=norm_num_groups,
                                        attention_head_dim=block_out_channels[-1],
                                        add_attention=mid_block_add_attention)
        reversed_channels = list(reversed(block_out_channels))
        output_channel = reversed_channels[0]
        for i in range(len(up_block_types)):
            previous_channel, output_channel = output_channel, reversed_channels[i]
            self.up_blocks.append(UpDecoderBlock2D(
                in_channels=previous_channel, out_channels=output_channel, num_layers=layers_per_block + 1,
                resnet_eps=1e-6, resnet_act_fn=act_fn, resnet_groups=norm_num_groups,
                add_upsample=i < len(block_out_channels) - 1, temb_channels=None))
        self.conv_norm_out = GroupNorm(num_channels=block_out_channels[0], num_groups=norm_num_groups, eps=1e-6)
        self.conv_act = SiLU()
        self.conv_out = Conv2d(block_out_channels[0], out_channels, 3, padding=1)

    def forward(self, sample: torch.Tensor, latent_embeds: Optional[torch.Tensor] = None) -> torch.Tensor:
        if latent_embeds is not None:
            raise ValueError("VAEDecoder: latent_embeds is only used with norm_type='spatial', which is not "
                             "supported; pass None")
        _check_feature_map("VAEDecoder", "sample", sample, self.in_channels)
        sample = self.mid_block(self.conv_in(sample))                  # (N, C_last, h, w)
        for up_block in self.up_blocks:
            sample = up_block(sample)                                  # channels reversed, sides doubled
        return self.conv_out(self.conv_act(self.conv_norm_out(sample)))


# %% the posterior q(z | x)
class DiagonalGaussianDistribution:
    """q(z | x) = N(mean, diag(exp(logvar))) from parameters (N, 2 L, h, w) = [mean; logvar] along channels.

    logvar is clamped to [-30, 20] (the gradient is zero where the clamp is active); std = exp(logvar / 2).
    deterministic: std = var = 0, kl and nll are tensor([0.]).
    """

    def __init__(self, parameters: torch.Tensor, deterministic: bool = False):
        owner = "DiagonalGaussianDistribution"
        _check_floating(owner, "parameters", parameters)
        if parameters.dim() != 4 or parameters.shape[1] % 2:
            raise ValueError(f"{owner} expected parameters (N, 2 L, h, w) (mean and logvar stacked along the "
                             f"channels), got shape {tuple(parameters.shape)}")
        self.parameters = parameters
        self.mean, self.logvar = parameters.chunk(2, dim=1)             # each (N, L, h, w)
        self.logvar = self.logvar.clamp(-30.0, 20.0)
        self.deterministic = deterministic
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)
        if deterministic:
            self.var = self.std = torch.zeros_like(self.mean)

    def sample(self, generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None) -> torch.Tensor:
        """z = mean + std * eps, eps ~ N(0, I) (the reparameterisation trick: differentiable in mean and std)."""
        noise = _standard_normal(self.mean.shape, generator, self.parameters.device, self.parameters.dtype)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self, other: Optional["DiagonalGaussianDistribution"] = None) -> torch.Tensor:
        """KL(self || other) per sample, (N,); other=None means N(0, I):
        KL = 1/2 sum(mu^2 + var - 1 - logvar), or 1/2 sum((mu - mu_o)^2 / var_o + var / var_o - 1 - logvar + logvar_o).
        """
        if self.deterministic:
            return torch.Tensor([0.0])
        if other is None:
            terms = self.mean ** 2 + self.var - 1.0 - self.logvar
        else:
            if not isinstance(other, DiagonalGaussianDistribution) or other.mean.shape != self.mean.shape:
                raise ValueError(f"DiagonalGaussianDistribution.kl expected another distribution of mean shape "
                                 f"{tuple(self.mean.shape)}, got {getattr(other, 'mean', other)!r:.80}")
            terms = ((self.mean - other.mean) ** 2 / other.var + self.var / other.var - 1.0
                     - self.logvar + other.logvar)
        return 0.5 * terms.sum(dim=[1, 2, 3])

    def nll(self, sample: torch.Tensor, dims: Sequence[int] = (1, 2, 3)) -> torch.Tensor:
        """-log N(sample; mean, var) summed over dims: 1/2 sum(log(2 pi) + logvar + (sample - mean)^2 / var)."""
        if self.deterministic:
            return torch.Tensor([0.0])
        if not isinstance(sample, torch.Tensor) or sample.shape != self.mean.shape:
            raise ValueError(f"DiagonalGaussianDistribution.nll expected sample of shape {tuple(self.mean.shape)}, "
                             f"got {getattr(sample, 'shape', type(sample).__name__)}")
        log_two_pi = math.log(2.0 * math.pi)
        return 0.5 * (log_two_pi + self.logvar + (sample - self.mean) ** 2 / self.var).sum(dim=list(dims))


# %% the autoencoder's outputs
class _Output:
    """Attribute access plus diffusers' BaseOutput conveniences: out[0], out["name"], out.to_tuple()."""

    def to_tuple(self) -> tuple:
        return tuple(value for value in vars(self).values() if value is not None)

    def __getitem__(self, key):
        return vars(self)[key] if isinstance(key, str) else self.to_tuple()[key]


@dataclass
class AutoencoderKLOutput(_Output):
    latent_dist: DiagonalGaussianDistribution


@dataclass
class DecoderOutput(_Output):
    sample: torch.Tensor
    commit_loss: Optional[torch.Tensor] = None


# %% AutoencoderKL's encode and decode
class _AutoencoderKLCoding(nn.Module):
    """encode and decode of AutoencoderKL (its base class); they read the layers its constructor builds."""

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """x (N, C_in, H, W) -> AutoencoderKLOutput(latent_dist) (or the tuple (latent_dist,))."""
        moments = self.encoder(x)                                      # (N, 2 L, h, w)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        posterior = DiagonalGaussianDistribution(moments)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None):
        """z (N, L, h, w) -> DecoderOutput(sample) (or (sample,)). generator is accepted and unused, as in diffusers."""
        _check_feature_map("AutoencoderKL.decode", "z", z, self.config.latent_channels)
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        decoded = self.decoder(z)                                      # (N, C_out, h 2^k, w 2^k)
        return DecoderOutput(sample=decoded) if return_dict else (decoded,)


# %% AutoencoderKL
class AutoencoderKL(_AutoencoderKLCoding):
    """diffusers' AutoencoderKL: encode -> posterior (DiagonalGaussianDistribution), decode -> image.

    scaling_factor, shift_factor, latents_mean/std, force_upcast and sample_size are configuration only (read by
    pipelines through `.config`); the model itself never applies them. Tiling and slicing are not implemented.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 3,
                 down_block_types: Sequence[str] = ("DownEncoderBlock2D",),
                 up_block_types: Sequence[str] = ("UpDecoderBlock2D",), block_out_channels: Sequence[int] = (64,),
                 layers_per_block: int = 1, act_fn: str = "silu", latent_channels: int = 4,
                 norm_num_groups: int = 32, sample_size: int = 32, scaling_factor: float = 0.18215,
                 shift_factor: Optional[float] = None, latents_mean: Optional[Sequence[float]] = None,
                 latents_std: Optional[Sequence[float]] = None, force_upcast: bool = True,
                 use_quant_conv: bool = True, use_post_quant_conv: bool = True,
                 mid_block_add_attention: bool = True):
        super().__init__()
        self.config = SimpleNamespace(
            in_channels=in_channels, out_channels=out_channels, down_block_types=tuple(down_block_types),
            up_block_types=tuple(up_block_types), block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block, act_fn=act_fn, latent_channels=latent_channels,
            norm_num_groups=norm_num_groups, sample_size=sample_size, scaling_factor=scaling_factor,
            shift_factor=shift_factor, latents_mean=latents_mean, latents_std=latents_std,
            force_upcast=force_upcast, use_quant_conv=use_quant_conv, use_post_quant_conv=use_post_quant_conv,
            mid_block_add_attention=mid_block_add_attention)
        self.encoder = VAEEncoder(in_channels=in_channels, out_channels=latent_channels,
                                  down_block_types=down_block_types, block_out_channels=block_out_channels,
                                  layers_per_block=layers_per_block, act_fn=act_fn, norm_num_groups=norm_num_groups,
                                  double_z=True, mid_block_add_attention=mid_block_add_attention)
        self.decoder = VAEDecoder(in_channels=latent_channels, out_channels=out_channels,
                                  up_block_types=up_block_types, block_out_channels=block_out_channels,
                                  layers_per_block=layers_per_block, norm_num_groups=norm_num_groups,
                                  act_fn=act_fn, mid_block_add_attention=mid_block_add_attention)
        # 1x1 convs on the moments (2 L channels) and on the latent (L channels)
        self.quant_conv = Conv2d(2 * latent_channels, 2 * latent_channels, 1) if use_quant_conv else None
        self.post_quant_conv = Conv2d(latent_channels, latent_channels, 1) if use_post_quant_conv else None

    def forward(self, sample: torch.Tensor, sample_posterior: bool = False, return_dict: bool = True,
                generator: Optional[torch.Generator] = None):
        """Reconstruct: decode(a posterior sample if sample_posterior else its mean)."""
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        decoded = self.decode(z).sample
        return DecoderOutput(sample=decoded) if return_dict else (decoded,)


# %% sinusoidal timestep features
def get_timestep_embedding(timesteps: torch.Tensor, embedding_dim: int, flip_sin_to_cos: bool = False,
                           downscale_freq_shift: float = 1, scale: float = 1, max_period: int = 10000):
    """Sinusoidal features of timesteps (N,) -> (N, embedding_dim), computed in float32 like diffusers.

    With h = embedding_dim // 2 and k = 0 .. h-1:
        freq_k = exp(-ln(max_period) * k / (h - downscale_freq_shift))
        emb    = [sin(scale * t * freq_k) for k] ++ [cos(scale * t * freq_k) for k]     (cos first if flipped)
    and a zero column is appended when embedding_dim is odd.
    """
    if not isinstance(timesteps, torch.Tensor) or timesteps.ndim != 1:
        shape = tuple(timesteps.shape) if isinstance(timesteps, torch.Tensor) else type(timesteps).__name__
        raise ValueError(f"get_timestep_embedding expected timesteps of shape (N,), got {shape}")
    half_dim = embedding_dim // 2
    # the same float32 operations in the same order as diffusers, so the features agree bit for bit
    exponent = -math.log(max_period) * torch.arange(0, half_dim, dtype=torch.float32, device=timesteps.device)
    exponent = exponent / (half_dim - downscale_freq_shift)
    frequencies = torch.exp(exponent)                                   # (h,)
    angles = timesteps[:, None].float() * frequencies[None, :]          # (N, h)
    angles = scale * angles
    sin, cos = torch.sin(angles), torch.cos(angles)
    embedding = torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1)   # (N, 2h)
    if embedding_dim % 2 == 1:
        zeros = embedding.new_zeros(embedding.shape[0], 1)
        embedding = torch.cat([embedding, zeros], dim=-1)               # (N, 2h + 1)
    return embedding


# %% Timesteps and TimestepEmbedding
class Timesteps(nn.Module):
    """Parameter-free sinusoidal timestep features (diffusers' `Timesteps`); the output is always float32."""

    def __init__(self, num_channels: int, flip_sin_to_cos: bool, downscale_freq_shift: float, scale: int = 1):
        super().__init__()
        if num_channels // 2 > 0 and num_channels // 2 == downscale_freq_shift:
            raise ValueError(f"Timesteps: num_channels={num_channels} with downscale_freq_shift="
                             f"{downscale_freq_shift} divides by zero (num_channels // 2 - shift = 0)")
        self.num_channels = num_channels
        self.flip_sin_to_cos = flip_sin_to_cos
        self.downscale_freq_shift = downscale_freq_shift
        self.scale = scale

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        return get_timestep_embedding(timesteps, self.num_channels, flip_sin_to_cos=self.flip_sin_to_cos,
                                      downscale_freq_shift=self.downscale_freq_shift, scale=self.scale)


class TimestepEmbedding(nn.Module):
    """MLP on timestep features: linear_1 -> act -> linear_2 (-> post_act); optional cond_proj of a condition."""

    def __init__(self, in_channels: int, time_embed_dim: int, act_fn: str = "silu", out_dim: int = None,
                 post_act_fn: Optional[str] = None, cond_proj_dim=None, sample_proj_bias=True):
        super().__init__()
        self.linear_1 = Linear(in_channels, time_embed_dim, sample_proj_bias)
        # a condition vector (e.g. a guidance-scale embedding) is projected and added to the input features
        self.cond_proj = Linear(cond_proj_dim, in_channels, bias=False) if cond_proj_dim is not None else None
        self.act = get_activation(act_fn)
        self.linear_2 = Linear(time_embed_dim, out_dim if out_dim is not None else time_embed_dim, sample_proj_bias)
        self.post_act = get_activation(post_act_fn) if post_act_fn is not None else None

    def forward(self, sample: torch.Tensor, condition: Optional[torch.Tensor] = None) -> torch.Tensor:
        if condition is not None:
            if self.cond_proj is None:
                raise ValueError("TimestepEmbedding got a condition but was built without cond_proj_dim")
            sample = sample + self.cond_proj(condition)                 # (N, in_channels)
        sample = self.act(self.linear_1(sample))                        # (N, time_embed_dim)
        sample = self.linear_2(sample)                                  # (N, out_dim)
        if self.post_act is not None:
            sample = self.post_act(sample)
        return sample


# %% the transformer's feed-forward: GELUProjection, GEGLU, FeedForward
class GELUProjection(nn.Module):
    """diffusers' GELU module (renamed: common.nn.GELU is the plain activation): a linear projection followed by
    GELU (exact, or its tanh approximation with approximate="tanh")."""

    def __init__(self, dim_in: int, dim_out: int, approximate: str = "none", bias: bool = True):
        super().__init__()
        _check_choice("GELUProjection", "approximate", approximate, ("none", "tanh"))
        self.proj = Linear(dim_in, dim_out, bias=bias)
        self.approximate = approximate

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return gelu(self.proj(hidden_states), approximate=self.approximate)


class GEGLU(nn.Module):
    """Gated GELU unit: [x_value, x_gate] = proj(x) split in halves, out = x_value * gelu(x_gate)."""

    def __init__(self, dim_in: int, dim_out: int, bias: bool = True):
        super().__init__()
        self.proj = Linear(dim_in, dim_out * 2, bias=bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        projected = self.proj(hidden_states)                            # (..., 2 * dim_out)
        value, gate = projected.chunk(2, dim=-1)                        # (..., dim_out) each, value first
        return value * gelu(gate)


class FeedForward(nn.Module):
    """Transformer MLP: net.0 (projection + activation), net.1 dropout, net.2 linear, [net.3 final dropout]."""

    _PROJECTIONS = {"geglu": lambda d_in, d_out, bias: GEGLU(d_in, d_out, bias=bias),
                    "gelu": lambda d_in, d_out, bias: GELUProjection(d_in, d_out, bias=bias),
                    "gelu-approximate": lambda d_in, d_out, bias: GELUProjection(d_in, d_out, approximate="tanh",
                                                                                 bias=bias)}

    def __init__(self, dim: int, dim_out: Optional[int] = None, mult: int = 4, dropout: float = 0.0,
                 activation_fn: str = "geglu", final_dropout: bool = False, inner_dim=None, bias: bool = True):
        super().__init__()
        _check_choice("FeedForward", "activation_fn", activation_fn, tuple(self._PROJECTIONS))
        inner_dim = int(dim * mult) if inner_dim is None else inner_dim
        dim_out = dim if dim_out is None else dim_out
        layers = [self._PROJECTIONS[activation_fn](dim, inner_dim, bias), Dropout(dropout),
                  Linear(inner_dim, dim_out, bias=bias)]
        if final_dropout:
            layers.append(Dropout(dropout))
        self.net = nn.ModuleList(layers)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            hidden_states = layer(hidden_states)
        return hidden_states


# %% BasicTransformerBlock's forward
class _TransformerBlockForward(nn.Module):
    """The forward of BasicTransformerBlock (its base class): a pre-norm transformer block on tokens (N, L, dim).

    x = x + attn1(norm1(x))                      (attn1 attends to the context instead if only_cross_attention)
    x = x + attn2(norm2(x), context)             (present if cross_attention_dim is set or double_self_attention)
    x = x + ff(norm3(x))
    """

    def forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                encoder_hidden_states: Optional[torch.Tensor] = None,
                encoder_attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if hidden_states.ndim != 3 or hidden_states.shape[-1] != self.dim:
            raise ValueError(f"BasicTransformerBlock expected hidden_states (N, L, {self.dim}), "
                             f"got shape {tuple(hidden_states.shape)}")
        # 1. self-attention (or attention to the context, when only_cross_attention); attention_mask applies here
        context1 = encoder_hidden_states if self.only_cross_attention else None
        normed = self.norm1(hidden_states)                                          # (N, L, D)
        hidden_states = hidden_states + self.attn1(normed, encoder_hidden_states=context1,
                                                   attention_mask=attention_mask)
        # 2. cross-attention to the context (diffusers hands it the context even when attn2 is a self-attention)
        if self.attn2 is not None:
            normed = self.norm2(hidden_states)
            hidden_states = hidden_states + self.attn2(normed, encoder_hidden_states=encoder_hidden_states,
                                                       attention_mask=encoder_attention_mask)
        # 3. feed-forward
        return hidden_states + self.ff(self.norm3(hidden_states))                   # (N, L, D)


# %% BasicTransformerBlock
class BasicTransformerBlock(_TransformerBlockForward):
    """diffusers' BasicTransformerBlock with layer norms: self-attention, cross-attention, feed-forward."""

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int, dropout=0.0,
                 cross_attention_dim: Optional[int] = None, activation_fn: str = "geglu",
                 num_embeds_ada_norm: Optional[int] = None, attention_bias: bool = False,
                 only_cross_attention: bool = False, double_self_attention: bool = False,
                 upcast_attention: bool = False, norm_elementwise_affine: bool = True, norm_type: str = "layer_norm",
                 norm_eps: float = 1e-5, final_dropout: bool = False, attention_type: str = "default",
                 positional_embeddings: Optional[str] = None, num_positional_embeddings: Optional[int] = None,
                 ada_norm_continous_conditioning_embedding_dim: Optional[int] = None,
                 ada_norm_bias: Optional[int] = None, ff_inner_dim: Optional[int] = None, ff_bias: bool = True,
                 attention_out_bias: bool = True):
        super().__init__()
        owner = "BasicTransformerBlock"
        _check_default(owner, "num_embeds_ada_norm", num_embeds_ada_norm, None, "adaptive norms are not implemented")
        _check_choice(owner, "norm_type", norm_type, ("layer_norm",))
        _check_choice(owner, "attention_type", attention_type, ("default",))
        for option, value in (("positional_embeddings", positional_embeddings),
                              ("num_positional_embeddings", num_positional_embeddings),
                              ("ada_norm_continous_conditioning_embedding_dim",
                               ada_norm_continous_conditioning_embedding_dim), ("ada_norm_bias", ada_norm_bias)):
            _check_default(owner, option, value, None)
        if attention_head_dim < 1 or num_attention_heads < 1:
            raise ValueError(f"{owner}: need at least one head of at least one channel, got num_attention_heads="
                             f"{num_attention_heads}, attention_head_dim={attention_head_dim}")
        self.dim = dim
        self.only_cross_attention = only_cross_attention
        self.double_self_attention = double_self_attention
        self.cross_attention_dim = cross_attention_dim

        self.norm1 = LayerNorm(dim, eps=norm_eps, elementwise_affine=norm_elementwise_affine)
        self.attn1 = CrossAttention(query_dim=dim, heads=num_attention_heads, dim_head=attention_head_dim,
                                    dropout=dropout, bias=attention_bias,
                                    cross_attention_dim=cross_attention_dim if only_cross_attention else None,
                                    upcast_attention=upcast_attention, out_bias=attention_out_bias)
        if cross_attention_dim is not None or double_self_attention:
            self.norm2 = LayerNorm(dim, eps=norm_eps, elementwise_affine=norm_elementwise_affine)
            # with double_self_attention attn2 is built as a self-attention (its keys read `dim` features)
            self.attn2 = CrossAttention(query_dim=dim, heads=num_attention_heads, dim_head=attention_head_dim,
                                        dropout=dropout, bias=attention_bias,
                                        cross_attention_dim=None if double_self_attention else cross_attention_dim,
                                        upcast_attention=upcast_attention, out_bias=attention_out_bias)
        else:
            self.norm2 = None
            self.attn2 = None
        self.norm3 = LayerNorm(dim, eps=norm_eps, elementwise_affine=norm_elementwise_affine)
        self.ff = FeedForward(dim, dropout=dropout, activation_fn=activation_fn, final_dropout=final_dropout,
                              inner_dim=ff_inner_dim, bias=ff_bias)


# %% Transformer2DModel's output and masks
@dataclass
class Transformer2DModelOutput:
    """What Transformer2DModel returns with return_dict=True."""
    sample: torch.Tensor


def _mask_to_bias(mask: Optional[torch.Tensor], dtype: torch.dtype, owner: str, name: str, batch: int):
    """A keep(1)/discard(0) mask (N, S) -> an additive bias (N, 1, S): 0 where kept, -10000 where discarded.

    A 3-D tensor is taken to be a bias already (as diffusers does when the U-Net has converted it).
    """
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3) or mask.shape[0] != batch:
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"{owner} expected {name} of shape ({batch}, S) (or a bias ({batch}, 1, S)), got {shape}")
    if mask.ndim == 3:
        return mask
    return ((1 - mask.to(dtype)) * -10000.0).unsqueeze(1)                           # (N, 1, S)


def _check_transformer_2d_options(owner: str, num_vector_embeds, patch_size, sample_size, num_embeds_ada_norm,
                                  caption_channels, interpolation_scale, use_additional_conditions,
                                  norm_type) -> None:
    """Refuse the options of discrete, patched and adaptive-norm inputs (only continuous inputs are built)."""
    continuous = "only continuous inputs are implemented"
    _check_default(owner, "num_vector_embeds", num_vector_embeds, None, continuous)
    _check_default(owner, "patch_size", patch_size, None, continuous)
    _check_default(owner, "sample_size", sample_size, None, "it only matters for discrete or patched inputs")
    _check_default(owner, "num_embeds_ada_norm", num_embeds_ada_norm, None, "adaptive norms are not implemented")
    _check_default(owner, "caption_channels", caption_channels, None)
    _check_default(owner, "interpolation_scale", interpolation_scale, None)
    _check_choice(owner, "use_additional_conditions", use_additional_conditions, (None, False))
    _check_choice(owner, "norm_type", norm_type, ("layer_norm",))


# %% Transformer2DModel's forward
class _Transformer2DForward(nn.Module):
    """The forward of Transformer2DModel (its base class): a transformer on a feature map, with a residual:

    out = x + proj_out(blocks(proj_in(norm(x))))   with x (N, C, H, W) seen as L = H * W tokens.

    proj_in / proj_out are 1x1 convolutions, or linear layers on tokens when use_linear_projection.
    """

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None, encoder_attention_mask: Optional[torch.Tensor] = None,
                return_dict: bool = True):
        _check_floating("Transformer2DModel", "hidden_states", hidden_states)
        if hidden_states.ndim != 4 or hidden_states.shape[1] != self.in_channels:
            raise ValueError(f"Transformer2DModel expected hidden_states (N, {self.in_channels}, H, W), "
                             f"got shape {tuple(hidden_states.shape)}")
        batch, _, height, width = hidden_states.shape
        attention_mask = _mask_to_bias(attention_mask, hidden_states.dtype, "Transformer2DModel",
                                       "attention_mask", batch)
        encoder_attention_mask = _mask_to_bias(encoder_attention_mask, hidden_states.dtype, "Transformer2DModel",
                                               "encoder_attention_mask", batch)
        residual = hidden_states
        hidden_states = self.norm(hidden_states)                                    # (N, C, H, W)
        if self.use_linear_projection:
            tokens = hidden_states.permute(0, 2, 3, 1).reshape(batch, height * width, self.in_channels)
            tokens = self.proj_in(tokens)                                           # (N, L, inner)
        else:
            hidden_states = self.proj_in(hidden_states)                             # (N, inner, H, W)
            tokens = hidden_states.permute(0, 2, 3, 1).reshape(batch, height * width, self.inner_dim)
        for block in self.transformer_blocks:
            tokens = block(tokens, attention_mask=attention_mask, encoder_hidden_states=encoder_hidden_states,
                           encoder_attention_mask=encoder_attention_mask)
        if self.use_linear_projection:
            tokens = self.proj_out(tokens)                                          # (N, L, C)
            output = tokens.reshape(batch, height, width, self.in_channels).permute(0, 3, 1, 2).contiguous()
        else:
            feature_map = tokens.reshape(batch, height, width, self.inner_dim).permute(0, 3, 1, 2).contiguous()
            output = self.proj_out(feature_map)                                     # (N, C, H, W)
        output = output + residual
        return Transformer2DModelOutput(sample=output) if return_dict else (output,)


# %% Transformer2DModel
class Transformer2DModel(_Transformer2DForward):
    """diffusers' Transformer2DModel for continuous inputs (N, in_channels, H, W); see the forward above."""

    def __init__(self, num_attention_heads: int = 16, attention_head_dim: int = 88,
                 in_channels: Optional[int] = None, out_channels: Optional[int] = None, num_layers: int = 1,
                 dropout: float = 0.0, norm_num_groups: int = 32, cross_attention_dim: Optional[int] = None,
                 attention_bias: bool = False, sample_size: Optional[int] = None,
                 num_vector_embeds: Optional[int] = None, patch_size: Optional[int] = None,
                 activation_fn: str = "geglu", num_embeds_ada_norm: Optional[int] = None,
                 use_linear_projection: bool = False, only_cross_attention: bool = False,
                 double_self_attention: bool = False, upcast_attention: bool = False, norm_type: str = "layer_norm",
                 norm_elementwise_affine: bool = True, norm_eps: float = 1e-5, attention_type: str = "default",
                 caption_channels: int = None, interpolation_scale: float = None,
                 use_additional_conditions: Optional[bool] = None):
        super().__init__()
        owner = "Transformer2DModel"
        _check_transformer_2d_options(owner, num_vector_embeds, patch_size, sample_size, num_embeds_ada_norm,
                                      caption_channels, interpolation_scale, use_additional_conditions, norm_type)
        if in_channels is None:
            raise ValueError(f"{owner}: in_channels is required (continuous input (N, in_channels, H, W))")
        if out_channels is not None and out_channels != in_channels:
            raise ValueError(f"{owner}: out_channels={out_channels} must equal in_channels={in_channels} "
                             "(the input is added back to the output)")
        inner_dim = num_attention_heads * attention_head_dim
        if use_linear_projection and inner_dim != in_channels:
            raise ValueError(f"{owner}: with use_linear_projection, num_attention_heads * attention_head_dim "
                             f"({inner_dim}) must equal in_channels ({in_channels}) (diffusers reshapes the "
                             "projected output with inner_dim)")
        self.in_channels = in_channels
        self.out_channels = in_channels
        self.inner_dim = inner_dim
        self.use_linear_projection = use_linear_projection
        self.cross_attention_dim = cross_attention_dim
        # the input GroupNorm uses eps = 1e-6, whatever norm_eps (that one is for the blocks' LayerNorms)
        self.norm = GroupNorm(num_groups=norm_num_groups, num_channels=in_channels, eps=1e-6, affine=True)
        if use_linear_projection:
            self.proj_in = Linear(in_channels, inner_dim)
        else:
            self.proj_in = Conv2d(in_channels, inner_dim, kernel_size=1, stride=1, padding=0)
        self.transformer_blocks = nn.ModuleList([
            BasicTransformerBlock(inner_dim, num_attention_heads, attention_head_dim, dropout=dropout,
                                  cross_attention_dim=cross_attention_dim, activation_fn=activation_fn,
                                  attention_bias=attention_bias, only_cross_attention=only_cross_attention,
                                  double_self_attention=double_self_attention, upcast_attention=upcast_attention,
                                  norm_type=norm_type, norm_elementwise_affine=norm_elementwise_affine,
                                  norm_eps=norm_eps, attention_type=attention_type)
            for _ in range(num_layers)])
        if use_linear_projection:
            self.proj_out = Linear(inner_dim, in_channels)
        else:
            self.proj_out = Conv2d(inner_dim, in_channels, kernel_size=1, stride=1, padding=0)


# %% helpers of the U-Net's blocks
def _check_block_options(owner: str, dual_cross_attention: bool, attention_type: str) -> None:
    _check_default(owner, "dual_cross_attention", dual_cross_attention, False,
                   "DualTransformer2DModel is not implemented")
    _check_choice(owner, "attention_type", attention_type, ("default",))


def _heads_and_width(owner: str, channels: int, num_attention_heads: int) -> int:
    """diffusers gives each transformer num_attention_heads heads of channels // num_attention_heads features."""
    if num_attention_heads < 1 or channels // num_attention_heads < 1:
        raise ValueError(f"{owner}: num_attention_heads={num_attention_heads} must be between 1 and the block's "
                         f"channel count ({channels})")
    return channels // num_attention_heads


def _layers_per_transformer(owner: str, transformer_layers_per_block, num_layers: int) -> list:
    if isinstance(transformer_layers_per_block, int):
        return [transformer_layers_per_block] * num_layers
    layers = list(transformer_layers_per_block)
    if len(layers) < num_layers:
        raise ValueError(f"{owner}: transformer_layers_per_block={transformer_layers_per_block!r} needs "
                         f"{num_layers} entries")
    return layers


def _resnet(in_channels, out_channels, temb_channels, eps, groups, dropout, time_scale_shift, act_fn,
            output_scale_factor, pre_norm, groups_out=None):
    return ResnetBlock2D(in_channels=in_channels, out_channels=out_channels, temb_channels=temb_channels, eps=eps,
                         groups=groups, groups_out=groups_out, dropout=dropout, time_embedding_norm=time_scale_shift,
                         non_linearity=act_fn, output_scale_factor=output_scale_factor, pre_norm=pre_norm)


def _downsamplers(out_channels: int, downsample_padding: int, add_downsample: bool) -> Optional[nn.ModuleList]:
    """The optional stride-2 conv ("op") at the end of a down block."""
    if not add_downsample:
        return None
    return nn.ModuleList([Downsample2D(out_channels, use_conv=True, out_channels=out_channels,
                                       padding=downsample_padding, name="op")])


# %% CrossAttnDownBlock2D
class CrossAttnDownBlock2D(nn.Module):
    """num_layers x (resnet -> transformer), then an optional stride-2 downsampler; every stage's output is kept
    for the skip connections of the up path."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, dropout: float = 0.0,
                 num_layers: int = 1, transformer_layers_per_block=1, resnet_eps: float = 1e-6,
                 resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish", resnet_groups: int = 32,
                 resnet_pre_norm: bool = True, num_attention_heads: int = 1, cross_attention_dim: int = 1280,
                 output_scale_factor: float = 1.0, downsample_padding: int = 1, add_downsample: bool = True,
                 dual_cross_attention: bool = False, use_linear_projection: bool = False,
                 only_cross_attention: bool = False, upcast_attention: bool = False, attention_type: str = "default"):
        super().__init__()
        owner = "CrossAttnDownBlock2D"
        _check_block_options(owner, dual_cross_attention, attention_type)
        head_dim = _heads_and_width(owner, out_channels, num_attention_heads)
        layers = _layers_per_transformer(owner, transformer_layers_per_block, num_layers)
        self.has_cross_attention = True
        self.num_attention_heads = num_attention_heads
        resnets, attentions = [], []
        for i in range(num_layers):
            resnets.append(_resnet(in_channels if i == 0 else out_channels, out_channels, temb_channels, resnet_eps,
                                   resnet_groups, dropout, resnet_time_scale_shift, resnet_act_fn,
                                   output_scale_factor, resnet_pre_norm))
            attentions.append(Transformer2DModel(
                num_attention_heads, head_dim, in_channels=out_channels, num_layers=layers[i],
                cross_attention_dim=cross_attention_dim, norm_num_groups=resnet_groups,
                use_linear_projection=use_linear_projection, only_cross_attention=only_cross_attention,
                upcast_attention=upcast_attention, attention_type=attention_type))
        self.attentions = nn.ModuleList(attentions)
        self.resnets = nn.ModuleList(resnets)
        self.downsamplers = _downsamplers(out_channels, downsample_padding, add_downsample)

    def forward(self, hidden_states: torch.Tensor, temb: Optional[torch.Tensor] = None,
                encoder_hidden_states: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                encoder_attention_mask: Optional[torch.Tensor] = None):
        """-> (hidden_states, the tuple of every stage's output, the downsampled one last)."""
        output_states = ()
        for resnet, attention in zip(self.resnets, self.attentions):
            hidden_states = resnet(hidden_states, temb)                             # (N, C_out, H, W)
            hidden_states = attention(hidden_states, encoder_hidden_states=encoder_hidden_states,
                                      attention_mask=attention_mask, encoder_attention_mask=encoder_attention_mask,
                                      return_dict=False)[0]
            output_states = output_states + (hidden_states,)
        if self.downsamplers is not None:
            for downsampler in self.downsamplers:
                hidden_states = downsampler(hidden_states)                          # (N, C_out, ceil(H/2), ..)
            output_states = output_states + (hidden_states,)
        return hidden_states, output_states


# %% DownBlock2D
class DownBlock2D(nn.Module):
    """num_layers resnets, then an optional stride-2 downsampler; every stage's output is kept for the skips."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, dropout: float = 0.0,
                 num_layers: int = 1, resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default",
                 resnet_act_fn: str = "swish", resnet_groups: int = 32, resnet_pre_norm: bool = True,
                 output_scale_factor: float = 1.0, add_downsample: bool = True, downsample_padding: int = 1):
        super().__init__()
        self.has_cross_attention = False
        self.resnets = nn.ModuleList([
            _resnet(in_channels if i == 0 else out_channels, out_channels, temb_channels, resnet_eps, resnet_groups,
                    dropout, resnet_time_scale_shift, resnet_act_fn, output_scale_factor, resnet_pre_norm)
            for i in range(num_layers)])
        self.downsamplers = _downsamplers(out_channels, downsample_padding, add_downsample)

    def forward(self, hidden_states: torch.Tensor, temb: Optional[torch.Tensor] = None):
        output_states = ()
        for resnet in self.resnets:
            hidden_states = resnet(hidden_states, temb)
            output_states = output_states + (hidden_states,)
        if self.downsamplers is not None:
            for downsampler in self.downsamplers:
                hidden_states = downsampler(hidden_states)
            output_states = output_states + (hidden_states,)
        return hidden_states, output_states


# %% UNetMidBlock2DCrossAttn
class UNetMidBlock2DCrossAttn(nn.Module):
    """resnet, then num_layers x (transformer -> resnet), at the lowest resolution."""

    def __init__(self, in_channels: int, temb_channels: int, out_channels: Optional[int] = None,
                 dropout: float = 0.0, num_layers: int = 1, transformer_layers_per_block=1, resnet_eps: float = 1e-6,
                 resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish", resnet_groups: int = 32,
                 resnet_groups_out: Optional[int] = None, resnet_pre_norm: bool = True, num_attention_heads: int = 1,
                 output_scale_factor: float = 1.0, cross_attention_dim: int = 1280,
                 dual_cross_attention: bool = False, use_linear_projection: bool = False,
                 upcast_attention: bool = False, attention_type: str = "default"):
        super().__init__()
        owner = "UNetMidBlock2DCrossAttn"
        _check_block_options(owner, dual_cross_attention, attention_type)
        out_channels = out_channels or in_channels
        self.in_channels, self.out_channels = in_channels, out_channels
        self.has_cross_attention = True
        self.num_attention_heads = num_attention_heads
        # diffusers: groups default to min(C / 4, 32) when None; the output side uses resnet_groups_out if given
        resnet_groups = resnet_groups if resnet_groups is not None else min(in_channels // 4, 32)
        resnet_groups_out = resnet_groups_out or resnet_groups
        head_dim = _heads_and_width(owner, out_channels, num_attention_heads)
        layers = _layers_per_transformer(owner, transformer_layers_per_block, num_layers)
        resnets = [_resnet(in_channels, out_channels, temb_channels, resnet_eps, resnet_groups, dropout,
                           resnet_time_scale_shift, resnet_act_fn, output_scale_factor, resnet_pre_norm,
                           groups_out=resnet_groups_out)]
        attentions = []
        for i in range(num_layers):
            attentions.append(Transformer2DModel(
                num_attention_heads, head_dim, in_channels=out_channels, num_layers=layers[i],
                cross_attention_dim=cross_attention_dim, norm_num_groups=resnet_groups_out,
                use_linear_projection=use_linear_projection, upcast_attention=upcast_attention,
                attention_type=attention_type))
            resnets.append(_resnet(out_channels, out_channels, temb_channels, resnet_eps, resnet_groups_out, dropout,
                                   resnet_time_scale_shift, resnet_act_fn, output_scale_factor, resnet_pre_norm))
        self.attentions = nn.ModuleList(attentions)
        self.resnets = nn.ModuleList(resnets)

    def forward(self, hidden_states: torch.Tensor, temb: Optional[torch.Tensor] = None,
                encoder_hidden_states: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                encoder_attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        hidden_states = self.resnets[0](hidden_states, temb)
        for attention, resnet in zip(self.attentions, self.resnets[1:]):
            hidden_states = attention(hidden_states, encoder_hidden_states=encoder_hidden_states,
                                      attention_mask=attention_mask, encoder_attention_mask=encoder_attention_mask,
                                      return_dict=False)[0]
            hidden_states = resnet(hidden_states, temb)
        return hidden_states


# %% helpers of the up blocks: resnets that read skips
def _up_resnets(in_channels, prev_output_channel, out_channels, temb_channels, num_layers, resnet_eps,
                resnet_groups, dropout, resnet_time_scale_shift, resnet_act_fn, output_scale_factor, resnet_pre_norm):
    """Resnet i reads its predecessor's output concatenated with one skip tensor.

    The predecessor is the block below (prev_output_channel) for i = 0 and this block (out_channels) after; the
    skip of the last resnet comes from the down block one level further down (in_channels), the others from the
    down block of this level (out_channels).
    """
    resnets = []
    for i in range(num_layers):
        skip_channels = in_channels if i == num_layers - 1 else out_channels
        previous_channels = prev_output_channel if i == 0 else out_channels
        resnets.append(_resnet(previous_channels + skip_channels, out_channels, temb_channels, resnet_eps,
                               resnet_groups, dropout, resnet_time_scale_shift, resnet_act_fn, output_scale_factor,
                               resnet_pre_norm))
    return resnets


def _upsamplers(out_channels: int, add_upsample: bool) -> Optional[nn.ModuleList]:
    """The optional nearest x2 + 3x3 conv at the end of an up block."""
    return nn.ModuleList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)]) if add_upsample else None


def _pop_skip(owner: str, hidden_states: torch.Tensor, res_hidden_states_tuple: tuple):
    """Concatenate the last skip tensor to hidden_states along channels; return it and the remaining skips."""
    if len(res_hidden_states_tuple) == 0:
        raise ValueError(f"{owner}: res_hidden_states_tuple ran out of skip tensors")
    skip = res_hidden_states_tuple[-1]
    if skip.ndim != 4 or skip.shape[0] != hidden_states.shape[0] or skip.shape[2:] != hidden_states.shape[2:]:
        raise ValueError(f"{owner}: a skip tensor of shape {tuple(skip.shape)} does not match hidden_states "
                         f"{tuple(hidden_states.shape)} in batch and spatial size")
    return torch.cat([hidden_states, skip], dim=1), res_hidden_states_tuple[:-1]     # (N, C + C_skip, H, W)


# %% CrossAttnUpBlock2D
class CrossAttnUpBlock2D(nn.Module):
    """num_layers x (concat skip -> resnet -> transformer), then an optional nearest x2 upsampler + conv."""

    def __init__(self, in_channels: int, out_channels: int, prev_output_channel: int, temb_channels: int,
                 resolution_idx: Optional[int] = None, dropout: float = 0.0, num_layers: int = 1,
                 transformer_layers_per_block=1, resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default",
                 resnet_act_fn: str = "swish", resnet_groups: int = 32, resnet_pre_norm: bool = True,
                 num_attention_heads: int = 1, cross_attention_dim: int = 1280, output_scale_factor: float = 1.0,
                 add_upsample: bool = True, dual_cross_attention: bool = False, use_linear_projection: bool = False,
                 only_cross_attention: bool = False, upcast_attention: bool = False, attention_type: str = "default"):
        super().__init__()
        owner = "CrossAttnUpBlock2D"
        _check_block_options(owner, dual_cross_attention, attention_type)
        head_dim = _heads_and_width(owner, out_channels, num_attention_heads)
        layers = _layers_per_transformer(owner, transformer_layers_per_block, num_layers)
        self.has_cross_attention = True
        self.num_attention_heads = num_attention_heads
        self.resolution_idx = resolution_idx
        resnets = _up_resnets(in_channels, prev_output_channel, out_channels, temb_channels, num_layers, resnet_eps,
                              resnet_groups, dropout, resnet_time_scale_shift, resnet_act_fn, output_scale_factor,
                              resnet_pre_norm)
        attentions = [Transformer2DModel(
            num_attention_heads, head_dim, in_channels=out_channels, num_layers=layers[i],
            cross_attention_dim=cross_attention_dim, norm_num_groups=resnet_groups,
            use_linear_projection=use_linear_projection, only_cross_attention=only_cross_attention,
            upcast_attention=upcast_attention, attention_type=attention_type) for i in range(num_layers)]
        self.attentions = nn.ModuleList(attentions)
        self.resnets = nn.ModuleList(resnets)
        self.upsamplers = _upsamplers(out_channels, add_upsample)

    def forward(self, hidden_states: torch.Tensor, res_hidden_states_tuple: tuple,
                temb: Optional[torch.Tensor] = None, encoder_hidden_states: Optional[torch.Tensor] = None,
                upsample_size=None, attention_mask: Optional[torch.Tensor] = None,
                encoder_attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        for resnet, attention in zip(self.resnets, self.attentions):
            hidden_states, res_hidden_states_tuple = _pop_skip("CrossAttnUpBlock2D", hidden_states,
                                                               res_hidden_states_tuple)
            hidden_states = resnet(hidden_states, temb)                             # (N, C_out, H, W)
            hidden_states = attention(hidden_states, encoder_hidden_states=encoder_hidden_states,
                                      attention_mask=attention_mask, encoder_attention_mask=encoder_attention_mask,
                                      return_dict=False)[0]
        if self.upsamplers is not None:
            for upsampler in self.upsamplers:
                hidden_states = upsampler(hidden_states, upsample_size)             # (N, C_out, 2H, 2W) or given
        return hidden_states


# %% UpBlock2D
class UpBlock2D(nn.Module):
    """num_layers x (concat skip -> resnet), then an optional nearest x2 upsampler + conv."""

    def __init__(self, in_channels: int, prev_output_channel: int, out_channels: int, temb_channels: int,
                 resolution_idx: Optional[int] = None, dropout: float = 0.0, num_layers: int = 1,
                 resnet_eps: float = 1e-6, resnet_time_scale_shift: str = "default", resnet_act_fn: str = "swish",
                 resnet_groups: int = 32, resnet_pre_norm: bool = True, output_scale_factor: float = 1.0,
                 add_upsample: bool = True):
        super().__init__()
        self.has_cross_attention = False
        self.resolution_idx = resolution_idx
        self.resnets = nn.ModuleList(_up_resnets(
            in_channels, prev_output_channel, out_channels, temb_channels, num_layers, resnet_eps, resnet_groups,
            dropout, resnet_time_scale_shift, resnet_act_fn, output_scale_factor, resnet_pre_norm))
        self.upsamplers = _upsamplers(out_channels, add_upsample)

    def forward(self, hidden_states: torch.Tensor, res_hidden_states_tuple: tuple,
                temb: Optional[torch.Tensor] = None, upsample_size=None) -> torch.Tensor:
        for resnet in self.resnets:
            hidden_states, res_hidden_states_tuple = _pop_skip("UpBlock2D", hidden_states, res_hidden_states_tuple)
            hidden_states = resnet(hidden_states, temb)
        if self.upsamplers is not None:
            for upsampler in self.upsamplers:
                hidden_states = upsampler(hidden_states, upsample_size)
        return hidden_states


# %% the U-Net's output and the options it refuses
@dataclass
class UNet2DConditionOutput:
    """What UNet2DConditionModel returns with return_dict=True."""
    sample: torch.Tensor


_DOWN_BLOCKS = ("CrossAttnDownBlock2D", "DownBlock2D")
_UP_BLOCKS = ("CrossAttnUpBlock2D", "UpBlock2D")
_MID_BLOCKS = ("UNetMidBlock2DCrossAttn", "UNetMidBlock2D", None)
_CLASS_EMBEDS = (None, "timestep", "identity", "projection", "simple_projection")


def _check_unet_options(c: SimpleNamespace) -> None:
    """Refuse, naming the option, what this U-Net leaves out (c: the constructor's arguments)."""
    owner = "UNet2DConditionModel"
    if c.num_attention_heads is not None:
        raise ValueError(f"{owner}: num_attention_heads must be None (diffusers refuses it too, because of a "
                         "naming issue: attention_head_dim is used as the number of heads)")
    simple_only = "it is only used by Simple* blocks"
    for option, default, why in (
            ("reverse_transformer_layers_per_block", None, ""), ("encoder_hid_dim", None, ""),
            ("encoder_hid_dim_type", None, ""), ("dual_cross_attention", False, ""),
            ("addition_embed_type", None, ""), ("addition_time_embed_dim", None, ""),
            ("addition_embed_type_num_heads", 64, ""), ("resnet_skip_time_act", False, simple_only),
            ("resnet_out_scale_factor", 1.0, simple_only),
            ("mid_block_only_cross_attention", None, "it is only used by UNetMidBlock2DSimpleCrossAttn"),
            ("cross_attention_norm", None, simple_only)):
        _check_default(owner, option, getattr(c, option), default, why)
    _check_choice(owner, "time_embedding_type", c.time_embedding_type, ("positional",))
    _check_choice(owner, "attention_type", c.attention_type, ("default",))
    _check_choice(owner, "mid_block_type", c.mid_block_type, _MID_BLOCKS)
    _check_choice(owner, "class_embed_type", c.class_embed_type, _CLASS_EMBEDS)
    for option, supported in (("down_block_types", _DOWN_BLOCKS), ("up_block_types", _UP_BLOCKS)):
        for block_type in getattr(c, option):
            if block_type not in supported:
                raise ValueError(f"{owner}: {option} contains {block_type!r}, which is not supported; "
                                 f"expected entries from {list(supported)}")
    _check_choice(owner, "resnet_time_scale_shift", c.resnet_time_scale_shift, ("default", "scale_shift"))
    for option in ("act_fn", "time_embedding_act_fn", "timestep_post_act"):
        if getattr(c, option) is not None:
            try:
                get_activation(getattr(c, option))
            except ValueError as error:
                raise ValueError(f"{owner}: {option}={getattr(c, option)!r} is not supported ({error})") from None
    if c.norm_num_groups is None:
        raise ValueError(f"{owner}: norm_num_groups=None is not supported (the chosen blocks need groups)")


# %% the U-Net's per-level options
def _per_block(owner: str, name: str, value, count: int) -> list:
    """An int-or-sequence option as one value per block (diffusers broadcasts a single value)."""
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(f"{owner}: {name} must have one entry per down block ({count}), got {value!r}")
        return list(value)
    return [value] * count


def _unet_levels(c: SimpleNamespace) -> SimpleNamespace:
    """The options given per level (down block i, up block count-1-i), as one list entry per level."""
    owner = "UNet2DConditionModel"
    count = len(c.down_block_types)
    if len(c.up_block_types) != count or len(c.block_out_channels) != count:
        raise ValueError(f"{owner}: down_block_types, up_block_types and block_out_channels must have the same "
                         f"length, got {len(c.down_block_types)}, {len(c.up_block_types)}, "
                         f"{len(c.block_out_channels)}")
    if isinstance(c.transformer_layers_per_block, (list, tuple)) and any(
            isinstance(entry, (list, tuple)) for entry in c.transformer_layers_per_block):
        raise ValueError(f"{owner}: nested transformer_layers_per_block (asymmetric U-Nets) is not supported")
    levels = SimpleNamespace(
        count=count, only_cross=_per_block(owner, "only_cross_attention", c.only_cross_attention, count),
        heads=_per_block(owner, "attention_head_dim", c.attention_head_dim, count),   # the quirk: these are heads
        cross_dims=_per_block(owner, "cross_attention_dim", c.cross_attention_dim, count),
        layers=_per_block(owner, "layers_per_block", c.layers_per_block, count),
        transformer_layers=_per_block(owner, "transformer_layers_per_block", c.transformer_layers_per_block, count))
    for i, channels in enumerate(c.block_out_channels):
        has_attention = (c.down_block_types[i] == "CrossAttnDownBlock2D"
                         or c.up_block_types[count - 1 - i] == "CrossAttnUpBlock2D"
                         or (i == count - 1 and c.mid_block_type == "UNetMidBlock2DCrossAttn"))
        if has_attention and not 1 <= levels.heads[i] <= channels:
            raise ValueError(f"{owner}: attention_head_dim[{i}]={levels.heads[i]} is the number of heads (diffusers' "
                             f"naming) and must be between 1 and block_out_channels[{i}]={channels}")
    return levels


# %% the U-Net's class embedding and down blocks
def _unet_class_embedding(c: SimpleNamespace, time_embed_dim: int) -> Optional[nn.Module]:
    """The class embedding, added to (or concatenated with) the time embedding; None without one."""
    if c.class_embed_type is None and c.num_class_embeds is not None:
        return Embedding(c.num_class_embeds, time_embed_dim)
    if c.class_embed_type == "timestep":
        return TimestepEmbedding(c.block_out_channels[0], time_embed_dim, act_fn=c.act_fn)
    if c.class_embed_type == "identity":
        return Identity(time_embed_dim, time_embed_dim)
    if c.class_embed_type in ("projection", "simple_projection"):
        if c.projection_class_embeddings_input_dim is None:
            raise ValueError(f"UNet2DConditionModel: class_embed_type={c.class_embed_type!r} requires "
                             "projection_class_embeddings_input_dim")
        if c.class_embed_type == "projection":      # an MLP on arbitrary vectors (e.g. a CLIP image embedding)
            return TimestepEmbedding(c.projection_class_embeddings_input_dim, time_embed_dim)
        return Linear(c.projection_class_embeddings_input_dim, time_embed_dim)
    return None


def _unet_down_blocks(c: SimpleNamespace, levels: SimpleNamespace, temb_channels: int) -> nn.ModuleList:
    """Down block i maps block_out_channels[i - 1] to [i] channels and halves the size unless it is the last."""
    blocks = nn.ModuleList([])
    output_channel = c.block_out_channels[0]
    for i, block_type in enumerate(c.down_block_types):
        input_channel, output_channel = output_channel, c.block_out_channels[i]
        block_args = dict(num_layers=levels.layers[i], in_channels=input_channel, out_channels=output_channel,
                          temb_channels=temb_channels, dropout=c.dropout, add_downsample=i < levels.count - 1,
                          resnet_eps=c.norm_eps, resnet_act_fn=c.act_fn, resnet_groups=c.norm_num_groups,
                          downsample_padding=c.downsample_padding, resnet_time_scale_shift=c.resnet_time_scale_shift)
        if block_type == "CrossAttnDownBlock2D":
            blocks.append(CrossAttnDownBlock2D(
                transformer_layers_per_block=levels.transformer_layers[i], num_attention_heads=levels.heads[i],
                cross_attention_dim=levels.cross_dims[i], use_linear_projection=c.use_linear_projection,
                only_cross_attention=levels.only_cross[i], upcast_attention=c.upcast_attention, **block_args))
        else:
            blocks.append(DownBlock2D(**block_args))
    return blocks


# %% the U-Net's mid and up blocks
def _unet_mid_block(c: SimpleNamespace, levels: SimpleNamespace, temb_channels: int) -> Optional[nn.Module]:
    block_args = dict(in_channels=c.block_out_channels[-1], temb_channels=temb_channels, dropout=c.dropout,
                      resnet_eps=c.norm_eps, resnet_act_fn=c.act_fn, resnet_groups=c.norm_num_groups,
                      output_scale_factor=c.mid_block_scale_factor, resnet_time_scale_shift=c.resnet_time_scale_shift)
    if c.mid_block_type == "UNetMidBlock2DCrossAttn":
        # note: the mid block takes no only_cross_attention, so it always self-attends
        return UNetMidBlock2DCrossAttn(
            transformer_layers_per_block=levels.transformer_layers[-1], num_attention_heads=levels.heads[-1],
            cross_attention_dim=levels.cross_dims[-1], use_linear_projection=c.use_linear_projection,
            upcast_attention=c.upcast_attention, **block_args)
    if c.mid_block_type == "UNetMidBlock2D":
        # a single resnet: no attention layers (diffusers builds it with num_layers=0, add_attention=False)
        return UNetMidBlock2D(num_layers=0, add_attention=False, **block_args)
    return None


def _unet_up_blocks(c: SimpleNamespace, levels: SimpleNamespace, temb_channels: int) -> nn.ModuleList:
    """Up block i works at the resolution of down block count-1-i and ends with an upsampler unless it is last."""
    blocks = nn.ModuleList([])
    count = levels.count
    reversed_channels = list(reversed(c.block_out_channels))
    output_channel = reversed_channels[0]
    for i, block_type in enumerate(c.up_block_types):
        level = count - 1 - i                                        # the down block this one mirrors
        prev_output_channel, output_channel = output_channel, reversed_channels[i]
        input_channel = reversed_channels[min(i + 1, count - 1)]
        block_args = dict(num_layers=levels.layers[level] + 1, in_channels=input_channel,
                          out_channels=output_channel, prev_output_channel=prev_output_channel,
                          temb_channels=temb_channels, resolution_idx=i, dropout=c.dropout,
                          add_upsample=i != count - 1, resnet_eps=c.norm_eps, resnet_act_fn=c.act_fn,
                          resnet_groups=c.norm_num_groups, resnet_time_scale_shift=c.resnet_time_scale_shift)
        if block_type == "CrossAttnUpBlock2D":
            blocks.append(CrossAttnUpBlock2D(
                transformer_layers_per_block=levels.transformer_layers[level],
                num_attention_heads=levels.heads[level], cross_attention_dim=levels.cross_dims[level],
                use_linear_projection=c.use_linear_projection, only_cross_attention=levels.only_cross[level],
                upcast_attention=c.upcast_attention, **block_args))
        else:
            blocks.append(UpBlock2D(**block_args))
    return blocks


# %% the U-Net's input checks
class _UNetInputs(nn.Module):
    """The input checks of UNet2DConditionModel (a base class)."""

    @property
    def has_cross_attention(self) -> bool:
        blocks = list(self.down_blocks) + list(self.up_blocks) + [self.mid_block]
        return any(getattr(block, "has_cross_attention", False) for block in blocks)

    def _check_inputs(self, sample, encoder_hidden_states, unsupported: dict) -> None:
        """unsupported: the forward's arguments of features this U-Net leaves out; each must be None (or {})."""
        owner = "UNet2DConditionModel"
        for name, value in unsupported.items():
            if value is not None and not (isinstance(value, dict) and not value):
                raise ValueError(f"{owner}: {name} is not supported; pass None")
        _check_floating(owner, "sample", sample)
        in_channels = self.conv_in.in_channels
        if sample.ndim != 4 or sample.shape[1] != in_channels:
            raise ValueError(f"{owner} expected sample (N, {in_channels}, H, W), got shape {tuple(sample.shape)}")
        if encoder_hidden_states is None:
            if self.has_cross_attention:
                raise ValueError(f"{owner} has cross-attention blocks: encoder_hidden_states "
                                 "(N, S, cross_attention_dim) is required, got None")
            return
        _check_floating(owner, "encoder_hidden_states", encoder_hidden_states)
        if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[0] != sample.shape[0]:
            raise ValueError(f"{owner} expected encoder_hidden_states ({sample.shape[0]}, S, D), "
                             f"got shape {tuple(encoder_hidden_states.shape)}")

    @staticmethod
    def _mask_bias(mask, name: str, tokens: str, batch: int, dtype: torch.dtype):
        """A keep(1)/discard(0) mask (N, S') -> an additive bias (N, 1, S'): 0 kept, -10000 discarded."""
        if mask is None:
            return None
        if not isinstance(mask, torch.Tensor) or mask.ndim != 2 or mask.shape[0] != batch:
            raise ValueError(f"UNet2DConditionModel expected {name} ({batch}, {tokens})")
        return ((1 - mask.to(dtype)) * -10000.0).unsqueeze(1)


# %% the U-Net's time and class embedding
class _UNetEmbedding(_UNetInputs):
    """The timestep (+ class) embedding that UNet2DConditionModel adds inside every resnet (a base class)."""

    def _timesteps(self, sample: torch.Tensor, timestep) -> torch.Tensor:
        """int, float, 0-d or (1,) / (N,) tensor -> (N,) tensor on the sample's device."""
        batch = sample.shape[0]
        if isinstance(timestep, bool) or not isinstance(timestep, (int, float, torch.Tensor)):
            raise ValueError(f"UNet2DConditionModel expected timestep to be an int, a float or a tensor, "
                             f"got {type(timestep).__name__}")
        if not isinstance(timestep, torch.Tensor):
            # a Python float becomes float64 (float32 on MPS, which lacks float64), an int int64; both are then
            # embedded in float32
            dtype = torch.float64 if isinstance(timestep, float) else torch.int64
            if dtype == torch.float64 and sample.device.type == "mps":
                dtype = torch.float32
            timesteps = torch.tensor([timestep], dtype=dtype, device=sample.device)
        elif timestep.ndim == 0:
            timesteps = timestep[None].to(sample.device)
        else:
            timesteps = timestep
        if timesteps.ndim != 1 or timesteps.shape[0] not in (1, batch):
            raise ValueError(f"UNet2DConditionModel expected timestep of shape (), (1,) or ({batch},), "
                             f"got {tuple(timesteps.shape)}")
        return timesteps.expand(batch)                                              # (N,)

    def _class_embedding(self, sample: torch.Tensor, class_labels) -> Optional[torch.Tensor]:
        if self.class_embedding is None:
            if class_labels is not None:
                raise ValueError("UNet2DConditionModel got class_labels but has no class embedding")
            return None
        if class_labels is None:
            raise ValueError(f"UNet2DConditionModel with class_embed_type={self.config.class_embed_type!r} "
                             f"(num_class_embeds={self.config.num_class_embeds}) requires class_labels")
        if not isinstance(class_labels, torch.Tensor) or class_labels.ndim < 1 \
                or class_labels.shape[0] != sample.shape[0]:
            shape = tuple(class_labels.shape) if isinstance(class_labels, torch.Tensor) else type(class_labels)
            raise ValueError(f"UNet2DConditionModel expected class_labels with batch size {sample.shape[0]} first, "
                             f"got {shape}")
        if self.config.class_embed_type == "timestep":
            class_labels = self.time_proj(class_labels).to(dtype=sample.dtype)    # sinusoidal features first
        return self.class_embedding(class_labels).to(dtype=sample.dtype)            # (N, time_embed_dim)

    def _embed(self, sample: torch.Tensor, timestep, class_labels, timestep_cond) -> torch.Tensor:
        """The embedding every resnet receives: MLP(sinusoid(t)) + class embedding (or both concatenated)."""
        # features in float32, cast to the sample's dtype
        t_emb = self.time_proj(self._timesteps(sample, timestep)).to(dtype=sample.dtype)      # (N, C0)
        if timestep_cond is not None and self.time_embedding.cond_proj is None:
            raise ValueError("UNet2DConditionModel got timestep_cond but was built without time_cond_proj_dim")
        emb = self.time_embedding(t_emb, timestep_cond)                                        # (N, T)
        class_emb = self._class_embedding(sample, class_labels)
        if class_emb is not None:
            batch, concat = sample.shape[0], self.config.class_embeddings_concat
            if class_emb.ndim != 2 or class_emb.shape[0] != batch or (not concat and class_emb.shape != emb.shape):
                raise ValueError(f"UNet2DConditionModel: the class embedding has shape {tuple(class_emb.shape)}, "
                                 f"expected ({batch}, {emb.shape[1] if not concat else 'D'})")
            emb = torch.cat([emb, class_emb], dim=-1) if concat else emb + class_emb
        if self.time_embed_act is not None:
            emb = self.time_embed_act(emb)
        return emb


# %% the U-Net's forward
class _UNetForward(_UNetEmbedding):
    """The forward of UNet2DConditionModel (a base class)."""

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: Optional[torch.Tensor],
                class_labels: Optional[torch.Tensor] = None, timestep_cond: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None, cross_attention_kwargs=None, added_cond_kwargs=None,
                down_block_additional_residuals=None, mid_block_additional_residual=None,
                down_intrablock_additional_residuals=None, encoder_attention_mask: Optional[torch.Tensor] = None,
                return_dict: bool = True):
        """sample (N, in_channels, H, W), timestep, encoder_hidden_states (N, S, D) -> (N, out_channels, H, W).

        attention_mask / encoder_attention_mask are keep(1)/discard(0) masks (N, S'); as in diffusers,
        attention_mask goes to each transformer block's FIRST attention (a self-attention unless
        only_cross_attention) and encoder_attention_mask to its cross-attention.
        """
        self._check_inputs(sample, encoder_hidden_states, dict(
            cross_attention_kwargs=cross_attention_kwargs, added_cond_kwargs=added_cond_kwargs,
            down_block_additional_residuals=down_block_additional_residuals,
            mid_block_additional_residual=mid_block_additional_residual,
            down_intrablock_additional_residuals=down_intrablock_additional_residuals))
        batch = sample.shape[0]
        # a size that 2 ** (number of upsamplers) does not divide is rounded up on the way down, so every
        # upsampler is then told the exact size of the skip tensor it must meet
        forward_upsample_size = any(size % 2 ** self.num_upsamplers != 0 for size in sample.shape[-2:])
        upsample_size = None
        attention_mask = self._mask_bias(attention_mask, "attention_mask", "S'", batch, sample.dtype)
        encoder_attention_mask = self._mask_bias(encoder_attention_mask, "encoder_attention_mask", "S", batch,
                                                 sample.dtype)
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0                                               # [0, 1] -> [-1, 1]
        emb = self._embed(sample, timestep, class_labels, timestep_cond)           # (N, T)
        context = dict(encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask,
                       encoder_attention_mask=encoder_attention_mask)

        # down, keeping every stage's output for the skip connections
        sample = self.conv_in(sample)                                               # (N, C0, H, W)
        down_block_res_samples = (sample,)
        for block in self.down_blocks:
            if block.has_cross_attention:
                sample, res_samples = block(sample, temb=emb, **context)
            else:
                sample, res_samples = block(sample, temb=emb)
            down_block_res_samples += res_samples
        if self.mid_block is not None:
            if getattr(self.mid_block, "has_cross_attention", False):
                sample = self.mid_block(sample, emb, **context)
            else:
                sample = self.mid_block(sample, emb)
        # up: each block consumes as many skips as it has resnets, the most recent first
        for i, block in enumerate(self.up_blocks):
            res_samples = down_block_res_samples[-len(block.resnets):]
            down_block_res_samples = down_block_res_samples[:-len(block.resnets)]
            if i < len(self.up_blocks) - 1 and forward_upsample_size:
                upsample_size = down_block_res_samples[-1].shape[2:]               # the next level's (H, W)
            if block.has_cross_attention:
                sample = block(sample, res_samples, temb=emb, upsample_size=upsample_size, **context)
            else:
                sample = block(sample, res_samples, temb=emb, upsample_size=upsample_size)
        sample = self.conv_out(self.conv_act(self.conv_norm_out(sample)))          # (N, out_channels, H, W)
        return UNet2DConditionOutput(sample=sample) if return_dict else (sample,)


# %% UNet2DConditionModel
class UNet2DConditionModel(_UNetForward):
    """diffusers' conditional U-Net: predicts (N, out_channels, H, W) from a noisy sample, a timestep and a context.

    conv_in -> down blocks (keeping skips) -> mid block -> up blocks (consuming skips) -> norm, act, conv_out,
    with the timestep (+ class) embedding added inside every resnet and the context read by every transformer.

    Naming quirk kept from diffusers: `attention_head_dim` is really the NUMBER of heads of each block's
    transformers (each head has channels // attention_head_dim features); `num_attention_heads` must stay None.
    """

    def __init__(self, sample_size=None, in_channels: int = 4, out_channels: int = 4,
                 center_input_sample: bool = False, flip_sin_to_cos: bool = True, freq_shift: int = 0,
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                   "DownBlock2D"),
                 mid_block_type: Optional[str] = "UNetMidBlock2DCrossAttn",
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                 only_cross_attention=False, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                 downsample_padding: int = 1, mid_block_scale_factor: float = 1, dropout: float = 0.0,
                 act_fn: str = "silu", norm_num_groups: Optional[int] = 32, norm_eps: float = 1e-5,
                 cross_attention_dim=1280, transformer_layers_per_block=1, reverse_transformer_layers_per_block=None,
                 encoder_hid_dim: Optional[int] = None, encoder_hid_dim_type: Optional[str] = None,
                 attention_head_dim=8, num_attention_heads=None, dual_cross_attention: bool = False,
                 use_linear_projection: bool = False, class_embed_type: Optional[str] = None,
                 addition_embed_type: Optional[str] = None, addition_time_embed_dim: Optional[int] = None,
                 num_class_embeds: Optional[int] = None, upcast_attention: bool = False,
                 resnet_time_scale_shift: str = "default", resnet_skip_time_act: bool = False,
                 resnet_out_scale_factor: float = 1.0, time_embedding_type: str = "positional",
                 time_embedding_dim: Optional[int] = None, time_embedding_act_fn: Optional[str] = None,
                 timestep_post_act: Optional[str] = None, time_cond_proj_dim: Optional[int] = None,
                 conv_in_kernel: int = 3, conv_out_kernel: int = 3,
                 projection_class_embeddings_input_dim: Optional[int] = None, attention_type: str = "default",
                 class_embeddings_concat: bool = False, mid_block_only_cross_attention: Optional[bool] = None,
                 cross_attention_norm: Optional[str] = None, addition_embed_type_num_heads: int = 64):
        super().__init__()
        self.config = SimpleNamespace(**{name: value for name, value in locals().items()
                                         if name not in ("self", "__class__")})
        self.sample_size = sample_size
        _check_unet_options(self.config)
        levels = _unet_levels(self.config)

        # input
        self.conv_in = Conv2d(in_channels, block_out_channels[0], kernel_size=conv_in_kernel,
                              padding=(conv_in_kernel - 1) // 2)
        # time: sinusoidal features of width C0, then an MLP to time_embed_dim (4 * C0 unless given)
        time_embed_dim = time_embedding_dim or block_out_channels[0] * 4
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], time_embed_dim, act_fn=act_fn,
                                                post_act_fn=timestep_post_act, cond_proj_dim=time_cond_proj_dim)
        self.class_embedding = _unet_class_embedding(self.config, time_embed_dim)
        self.time_embed_act = get_activation(time_embedding_act_fn) if time_embedding_act_fn is not None else None

        # the blocks see a twice wider embedding when the class embedding is concatenated
        blocks_time_embed_dim = time_embed_dim * 2 if class_embeddings_concat else time_embed_dim
        self.down_blocks = _unet_down_blocks(self.config, levels, blocks_time_embed_dim)
        mid_block = _unet_mid_block(self.config, levels, blocks_time_embed_dim)
        self.up_blocks = _unet_up_blocks(self.config, levels, blocks_time_embed_dim)
        self.mid_block = mid_block        # registered after up_blocks, as in diffusers (state_dict order)
        self.num_upsamplers = levels.count - 1

        # output
        self.conv_norm_out = GroupNorm(num_channels=block_out_channels[0], num_groups=norm_num_groups, eps=norm_eps)
        self.conv_act = get_activation(act_fn)
        self.conv_out = Conv2d(block_out_channels[0], out_channels, kernel_size=conv_out_kernel,
                               padding=(conv_out_kernel - 1) // 2)
