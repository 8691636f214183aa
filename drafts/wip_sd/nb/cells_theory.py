# Markdown of 6.4's theory sections (builder part; assembled by wip_sd/nb/assemble.py)
HEADER = r"""# 6.4 Stable Diffusion: a noise schedule, an autoencoder, a U-Net with cross-attention, and guidance

**Stage 6: the frontier.** A diffusion model learns to generate by learning to *denoise*: data is destroyed by a
fixed process that adds a little Gaussian noise at each of $T$ steps until nothing is left but noise, and a network
is trained to undo one step at a time. Sampling starts from pure noise and runs the learned reversal. *Latent*
diffusion (Stable Diffusion) does this not on pixels but on the small latent grid of an autoencoder trained first,
which makes every step cheap, and conditions the denoiser on text through cross-attention to a text encoder's token
states; *classifier-free guidance* then trades diversity for fidelity to the caption with one number. This notebook
builds every part with diffusers' argument names and state_dict keys from `common.nn` layers and proves each equal to
diffusers (the two schedulers step by step, the KL autoencoder and the conditional U-Net in outputs and gradients),
then trains the whole pipeline on **captioned Fashion-MNIST** and scores what it generates with a classifier.

**Papers.** Rombach, Blattmann, Lorenz, Esser & Ommer, *High-Resolution Image Synthesis with Latent Diffusion Models*
(CVPR 2022, arXiv:2112.10752), which builds on: Ho, Jain & Abbeel, *Denoising Diffusion Probabilistic Models*
(NeurIPS 2020, arXiv:2006.11239); Song, Meng & Ermon, *Denoising Diffusion Implicit Models* (ICLR 2021,
arXiv:2010.02502); Ho & Salimans, *Classifier-Free Diffusion Guidance* (2022, arXiv:2207.12598); Kingma & Welling,
*Auto-Encoding Variational Bayes* (ICLR 2014, arXiv:1312.6114); Ronneberger, Fischer & Brox, *U-Net* (MICCAI 2015,
arXiv:1505.04597).

**After this notebook you can**
- derive the closed form of the noising process $q(x_t \mid x_0)$, the posterior $q(x_{t-1} \mid x_t, x_0)$ and the
  simple noise-prediction loss, and say what the three parameterisations (noise, $v$, clean image) predict;
- build DDPM's stochastic and DDIM's deterministic samplers and show that DDIM with $\eta = 1$ is DDPM's posterior;
- build a KL autoencoder (ResNet blocks, a mid-block self-attention, a diagonal Gaussian posterior and its KL) and
  a conditional U-Net (sinusoidal time embedding, ResNet blocks, spatial transformers with self- and
  cross-attention), and load diffusers' weights into both;
- train a text-to-image latent diffusion model, sample it with classifier-free guidance, and measure what guidance
  buys (class accuracy of the samples) and what it costs (a Fréchet distance to real images).

**Builds on:** 0.2-0.4 (`Conv2d`, `GroupNorm`, `LayerNorm`, `SiLU`, `GELU`), 1.1 (scaled dot-product attention),
3.1 (the small ResNet, here the judge of the samples), 6.2 (captioned Fashion-MNIST, the CLIP whose text tower
conditions the U-Net). **Leads to:** 6.3 (DALL-E 2 reuses this U-Net and these schedulers, conditioned on a CLIP
image embedding).

**Budget.** The setup cell prints which budget runs; every training phase has a fixed number of wall-clock seconds
(the last cell prints the notebook's total). The quick budget (`CVM_QUICK=1`, set by the test suite) takes about a
minute, with a subset, a few seconds of training and lower thresholds.
"""

FORWARD = r"""## 1. The forward process: noise added step by step, in closed form

Fix $T$ noise levels $\beta_1, \dots, \beta_T \in (0, 1)$ (the *schedule*). The forward process is a Markov chain
that shrinks the image a little and adds a little noise at each step:

$$q(x_t \mid x_{t-1}) = \mathcal N\!\left(\sqrt{1-\beta_t}\, x_{t-1},\ \beta_t I\right), \qquad x_0 \sim \text{data},
\quad x_t \in \mathbb R^{C \times H \times W}.$$

**Derivation of the closed form.** Write $\alpha_t = 1 - \beta_t$ and $\bar\alpha_t = \prod_{s \le t} \alpha_s$.
One step is $x_t = \sqrt{\alpha_t}\, x_{t-1} + \sqrt{1-\alpha_t}\,\varepsilon_t$ with fresh
$\varepsilon_t \sim \mathcal N(0, I)$. Substituting the previous step,
$x_t = \sqrt{\alpha_t\alpha_{t-1}}\, x_{t-2} + \sqrt{\alpha_t(1-\alpha_{t-1})}\,\varepsilon_{t-1} +
\sqrt{1-\alpha_t}\,\varepsilon_t$; the two noises are independent Gaussians, so their sum is one Gaussian whose
variance is the sum of the variances, $\alpha_t - \alpha_t\alpha_{t-1} + 1 - \alpha_t = 1 - \alpha_t\alpha_{t-1}$.
By induction

$$q(x_t \mid x_0) = \mathcal N\!\left(\sqrt{\bar\alpha_t}\, x_0,\ (1-\bar\alpha_t) I\right), \qquad\text{i.e.}\qquad
x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1-\bar\alpha_t}\, \varepsilon, \quad \varepsilon \sim \mathcal N(0, I).$$

Two consequences carry the whole method. Training never runs the chain: a random $t$ and one Gaussian draw give
$x_t$ directly. And the variance is preserved: if $x_0$ has unit variance, so has every $x_t$, since
$\bar\alpha_t + (1 - \bar\alpha_t) = 1$; as $\bar\alpha_T \to 0$, $x_T$ is pure noise, $\mathcal N(0, I)$, which is
where sampling starts. The signal-to-noise ratio $\mathrm{SNR}(t) = \bar\alpha_t / (1 - \bar\alpha_t)$ falls
monotonically from very large to nearly 0.

*Indices.* diffusers counts training timesteps $t = 0, \dots, T-1$, its $t = 0$ being the paper's $t = 1$ (already
one step of noise); "before the first step" is the clean image, $\bar\alpha = 1$. The code below uses diffusers'
convention.

The next cell runs the chain step by step on many samples of one fixed image and compares the empirical mean and
variance of $x_t$ with the closed form (within five standard errors of the estimate).
"""

SCHEDULES = r"""### Schedules

Three schedules are in common use, all with $T = 1000$:

- **linear** (Ho et al.): $\beta_t$ linear from $10^{-4}$ to $0.02$;
- **scaled_linear** (Stable Diffusion): $\sqrt{\beta_t}$ linear from $\sqrt{0.00085}$ to $\sqrt{0.012}$, so
  $\beta_t$ is quadratic in $t$ and smaller at the end: latents keep some signal longer;
- **squaredcos_cap_v2** (Nichol & Dhariwal, 2021, arXiv:2102.09672): $\bar\alpha(u) = \cos^2\!\big(\tfrac{u + s}{1 + s}
  \tfrac{\pi}{2}\big)$ with $s = 0.008$, $\beta_t = \min(1 - \bar\alpha(t/T)/\bar\alpha((t-1)/T),\ 0.999)$: the
  log-SNR falls almost linearly, so fewer steps are wasted at levels where the image is already gone.

The figure shows $\bar\alpha_t$ and $\log \mathrm{SNR}(t)$ for each (from our scheduler, proved equal to diffusers'
below), and what $x_t$ looks like at a few $t$ under the linear schedule.
"""

REVERSE = r"""## 2. Learning the reverse: the posterior, the three parameterisations, the simple loss

The reverse of a small Gaussian step is close to Gaussian, but its mean depends on the whole data distribution.
Given the clean image it is exact. **Derivation.** By Bayes,
$q(x_{t-1} \mid x_t, x_0) \propto q(x_t \mid x_{t-1})\, q(x_{t-1} \mid x_0)$, a product of two Gaussians in
$x_{t-1}$. Collecting the quadratic and linear terms of the exponent,
$-\tfrac12\big[\tfrac{\alpha_t}{\beta_t} + \tfrac{1}{1-\bar\alpha_{t-1}}\big] x_{t-1}^2 +
\big[\tfrac{\sqrt{\alpha_t}}{\beta_t} x_t + \tfrac{\sqrt{\bar\alpha_{t-1}}}{1-\bar\alpha_{t-1}} x_0\big] x_{t-1}$, and
using $\alpha_t(1-\bar\alpha_{t-1}) + \beta_t = 1 - \bar\alpha_t$:

$$q(x_{t-1} \mid x_t, x_0) = \mathcal N\big(\tilde\mu_t, \tilde\beta_t I\big), \qquad
\tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\,\beta_t, \qquad
\tilde\mu_t = \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1-\bar\alpha_t}\, x_0 +
\frac{\sqrt{\alpha_t}\,(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}\, x_t .$$

The network $f_\theta(x_t, t, c)$ (here a U-Net, $c$ the caption) supplies the unknown $x_0$, in one of three
equivalent forms that diffusers calls `prediction_type`:

| `prediction_type` | the network predicts | $\hat x_0$ from it |
|---|---|---|
| `epsilon` (DDPM, Stable Diffusion 1) | the noise $\varepsilon$ | $(x_t - \sqrt{1-\bar\alpha_t}\,\hat\varepsilon)/\sqrt{\bar\alpha_t}$ |
| `sample` | $x_0$ itself | $\hat x_0$ |
| `v_prediction` (Salimans & Ho, 2022, arXiv:2202.00512; SD 2) | $v = \sqrt{\bar\alpha_t}\,\varepsilon - \sqrt{1-\bar\alpha_t}\, x_0$ | $\sqrt{\bar\alpha_t}\, x_t - \sqrt{1-\bar\alpha_t}\,\hat v$ |

Ho et al. showed that the variational bound of the model reduces, up to weights per $t$, to regressing the noise,
and that dropping the weights trains better:

$$\mathcal L_\text{simple} = \mathbb E_{x_0,\, c,\, t \sim \mathcal U\{0..T-1\},\, \varepsilon \sim \mathcal N(0, I)}
\big\| \varepsilon - f_\theta\big(\sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon,\ t,\ c\big)\big\|^2 .$$

Predicting $\varepsilon$ is a regression whose target always has unit variance, whatever $t$; predicting $x_0$ at
large $t$ asks for the image from almost pure noise, and predicting $\varepsilon$ at small $t$ asks for noise that is
hardly there; $v$ interpolates ($\| v \|$ also has unit variance, and $\hat x_0$ stays well conditioned at both ends).
"""

DDIM = r"""## 3. Two samplers: DDPM and DDIM, built and proved

**DDPM** (ancestral sampling) draws $x_{t-1} \sim \mathcal N(\tilde\mu_t(x_t, \hat x_0), \sigma_t^2 I)$ from
$x_T \sim \mathcal N(0, I)$, with $\sigma_t^2 = \tilde\beta_t$ (`fixed_small`) or $\beta_t$ (`fixed_large`), and
$\hat x_0$ optionally clipped to the data range (`clip_sample`). With fewer inference steps than $T$ (say 50), the
step goes from $t$ to the previous *kept* timestep $s$, with $\alpha = \bar\alpha_t / \bar\alpha_s$ and
$\beta = 1 - \alpha$ in the formulas.

**DDIM** (Song et al.) keeps every marginal $q(x_t \mid x_0)$ of the forward process but drops the Markov
assumption. **Derivation.** Ask for a reverse step of the form $x_s = \sqrt{\bar\alpha_s}\,\hat x_0 + k\,
\hat\varepsilon + \sigma z$ with $z \sim \mathcal N(0, I)$ fresh. If $\hat x_0$ and $\hat\varepsilon$ are the true
$x_0$ and $\varepsilon$, then $x_s$ must have the marginal $\mathcal N(\sqrt{\bar\alpha_s}\, x_0, (1-\bar\alpha_s) I)$,
so the two independent noise terms must carry variance $1 - \bar\alpha_s$ together: $k = \sqrt{1 - \bar\alpha_s -
\sigma^2}$. Any $\sigma \in [0, \sqrt{1-\bar\alpha_s}]$ is allowed, and the model trained with $\mathcal L_\text{simple}$
serves them all:

$$x_s = \sqrt{\bar\alpha_s}\,\hat x_0 + \sqrt{1 - \bar\alpha_s - \sigma_t^2}\;\hat\varepsilon + \sigma_t z, \qquad
\sigma_t = \eta\, \sqrt{\tilde\beta_t}, \quad \tilde\beta_t = \frac{1-\bar\alpha_s}{1-\bar\alpha_t}\Big(1 -
\frac{\bar\alpha_t}{\bar\alpha_s}\Big).$$

With $\eta = 0$ sampling is **deterministic**: a fixed map from $x_T$ to the image, which can take large steps (20-50
instead of 1000). With $\eta = 1$ the step is DDPM's: the variance is $\tilde\beta_t$ by construction, and the mean,
after substituting $\hat\varepsilon = (x_t - \sqrt{\bar\alpha_t}\hat x_0)/\sqrt{1-\bar\alpha_t}$, is $\tilde\mu_t$ (a
few lines of algebra; the cell below checks both numerically for every step of the 1000-step schedule).
"""

AUTOENCODER = r"""## 4. The KL autoencoder: where the diffusion happens

Diffusion on pixels spends most of its capacity on imperceptible detail. Rombach et al. first train an autoencoder
that maps an image $x \in \mathbb R^{C \times H \times W}$ to a latent $z \in \mathbb R^{c \times h \times w}$ with
$h = H/f$ (Stable Diffusion: $f = 8$, $c = 4$, a 512 x 512 x 3 image becomes 64 x 64 x 4, 48 times fewer numbers),
and run the diffusion on $z$. Here $f = 4$: a 28 x 28 x 1 image becomes a 7 x 7 x 4 latent (196 numbers for 784).

**Encoder and decoder** (diffusers' `Encoder` / `Decoder`): `conv_in`, then one `DownEncoderBlock2D` per entry of
`block_out_channels` (`layers_per_block` ResNet blocks and, except in the last, a stride-2 convolution), a mid block
(ResNet, single-head self-attention over the $h \cdot w$ positions, ResNet), GroupNorm, SiLU and `conv_out` to
$2c$ channels: a mean and a log-variance per latent value. The decoder mirrors it (`UpDecoderBlock2D`: one more
ResNet block per level, nearest-neighbour upsampling and a convolution).

**The KL term.** The encoder outputs a diagonal Gaussian $q_\phi(z \mid x) = \mathcal N(\mu, \operatorname{diag}
\sigma^2)$; training samples $z = \mu + \sigma \odot \varepsilon$ (the reparameterisation: the gradient flows
through $\mu$ and $\sigma$) and minimises a reconstruction loss plus a small weight $\lambda$ times
$\mathrm{KL}(q_\phi(z \mid x) \,\|\, \mathcal N(0, I))$. **Derivation.** For one coordinate,
$\mathrm{KL} = \mathbb E_q[\log q - \log p] = \mathbb E_q\big[-\tfrac12\log(2\pi\sigma^2) - \tfrac{(z-\mu)^2}{2\sigma^2}
+ \tfrac12\log 2\pi + \tfrac{z^2}{2}\big] = -\tfrac12\log\sigma^2 - \tfrac12 + \tfrac12(\sigma^2 + \mu^2)$, so

$$\mathrm{KL}\big(\mathcal N(\mu, \sigma^2) \,\|\, \mathcal N(0, 1)\big) = \tfrac12\left(\mu^2 + \sigma^2 - 1 - \log
\sigma^2\right),$$

summed over the $c \cdot h \cdot w$ coordinates (diffusers' `DiagonalGaussianDistribution.kl`). Stable Diffusion
uses $\lambda = 10^{-6}$: not a VAE that samples from the prior (the latents are not standard normal), only a
regulariser that keeps the latent scale bounded and the latent space smooth, so that the diffusion model's job is
well posed. The latents are multiplied by a `scaling_factor` (SD: 0.18215, the inverse of their standard deviation
on training images) so that they have about unit variance, as the noise schedule assumes.
"""

UNET = r"""## 5. The U-Net: time, text and image in one network

The denoiser $f_\theta(z_t, t, c)$ is a U-Net (Ronneberger et al.): a down path that halves the resolution and widens
the channels, a mid block, and an up path that mirrors it, each up level concatenating the down path's activations
of its resolution (the skip connections), so that the output has both the global context of the deep levels and
the detail of the shallow ones. Stable Diffusion's (diffusers' `UNet2DConditionModel`) adds three things:

- **The time embedding.** $t$ is an integer; the network gets it as a sinusoidal vector
  $\big[\cos(t\,\omega_k), \sin(t\,\omega_k)\big]_{k < d/2}$ with $\omega_k = 10000^{-k/(d/2 - s)}$ (`freq_shift` $s$,
  `flip_sin_to_cos` puts cosines first), then a two-layer MLP (`TimestepEmbedding`: Linear, SiLU, Linear) to
  $4 \times$ `block_out_channels[0]`. Every ResNet block adds a projection of it to its feature map, one value per
  channel: $h \leftarrow \mathrm{conv}_2(\mathrm{SiLU}(\mathrm{GN}(\mathrm{conv}_1(\mathrm{SiLU}(\mathrm{GN}(x))) +
  W\,\mathrm{SiLU}(e_t))))$ plus the (1x1-projected) input.
- **Spatial transformers** (`Transformer2DModel`) after each ResNet block of the attention levels: GroupNorm, a
  projection to the inner width, then `BasicTransformerBlock`s on the $h \cdot w$ positions as tokens:
  $u \leftarrow u + \mathrm{SelfAttn}(\mathrm{LN}(u))$, $u \leftarrow u + \mathrm{CrossAttn}(\mathrm{LN}(u), e_c)$,
  $u \leftarrow u + \mathrm{GEGLU\,MLP}(\mathrm{LN}(u))$, and a projection back with a residual connection.
- **Cross-attention** is how text enters: queries from the image tokens, keys and values from the caption's token
  states $e_c \in \mathbb R^{L \times d_c}$ (`cross_attention_dim` $d_c$):
  $\mathrm{softmax}\big(Q K^\top / \sqrt{d_h}\big) V$ with $Q = u W_Q$ (N, hw, d), $K = e_c W_K$, $V = e_c W_V$ (N, L, d).
  Each image position chooses which words it listens to.

GEGLU (Shazeer, 2020, arXiv:2002.05202) is a gated MLP: $\mathrm{GEGLU}(u) = (u W_1) \odot \mathrm{GELU}(u W_2)$,
the two halves of one Linear to $2 \times 4d$ (`net.0.proj`), then a Linear back (`net.2`).

*diffusers' naming quirk.* In `UNet2DConditionModel`, the argument `attention_head_dim` is, for historical reasons,
the **number of heads** (and the head width is the channel count divided by it) unless `num_attention_heads` is
given; our class reproduces that, and the proof below uses both forms.
"""

GUIDANCE = r"""## 10. Classifier-free guidance

A conditional model $\hat\varepsilon(z_t, c)$ samples from $p(z \mid c)$, and such samples are often only loosely
about $c$. Guidance sharpens them toward images that make $c$ *likely*. **Derivation.** The noise prediction is a
scaled score: $\hat\varepsilon(z_t, c) \approx -\sqrt{1-\bar\alpha_t}\;\nabla_{z_t}\log p_t(z_t \mid c)$ (the
Gaussian $q(z_t \mid z_0)$ has score $-\varepsilon/\sqrt{1-\bar\alpha_t}$, and the best denoiser averages it over
the $z_0$ that could have produced $z_t$). Aim at the tilted distribution $\tilde p_w(z \mid c) \propto p(z \mid c)\,
p(c \mid z)^{w-1}$, which for $w > 1$ favours images the caption describes well. By Bayes, $\nabla\log p(c \mid z) =
\nabla\log p(z \mid c) - \nabla\log p(z)$, so

$$\nabla\log\tilde p_w(z \mid c) = \nabla\log p(z) + w\,\big(\nabla\log p(z \mid c) - \nabla\log p(z)\big)
\quad\Longrightarrow\quad \hat\varepsilon_w = \hat\varepsilon(z_t, \varnothing) + w\,\big(\hat\varepsilon(z_t, c) -
\hat\varepsilon(z_t, \varnothing)\big).$$

No classifier is needed (Ho & Salimans): the *unconditional* model $\hat\varepsilon(z_t, \varnothing)$ is the same
network given an empty caption, learned by replacing the caption with the empty one in a tenth of the training
examples. $w = 0$ is the unconditional model, $w = 1$ the conditional one, $w > 1$ extrapolates away from the
unconditional prediction. Each sampling step then costs two forward passes (one batch of $2N$). Larger $w$ gives
samples that a classifier recognises more often, and less varied ones: the trade-off measured below.
"""

FRECHET = r"""**Measuring the trade-off.** *Fidelity*: the share of samples that a classifier trained on real captioned images
assigns to the class the caption names. *Diversity and realism*: the Fréchet distance (Heusel et al., 2017,
arXiv:1706.08500; FID uses an Inception network, here the classifier's 64 penultimate features) between Gaussians
fitted to the features of generated and of real images,

$$\mathrm{FD} = \|\mu_g - \mu_r\|^2 + \operatorname{Tr}\!\big(\Sigma_g + \Sigma_r - 2\,(\Sigma_g^{1/2}\Sigma_r
\Sigma_g^{1/2})^{1/2}\big),$$

which is 0 only if the two feature distributions have the same mean and covariance: a sampler that draws every
image of a class the same way has high accuracy and a large FD. (The trace of $(\Sigma_g\Sigma_r)^{1/2}$ is computed
as the sum of square roots of the eigenvalues of the symmetric $\Sigma_g^{1/2}\Sigma_r\Sigma_g^{1/2}$; it is a
statistic, not a layer, so `torch.linalg.eigh` does it.) The FD of a finite sample is biased upward, more for fewer
images, so FDs are compared only at equal sample sizes, and the FD between two disjoint sets of real images of that
size is printed as the floor.
"""
