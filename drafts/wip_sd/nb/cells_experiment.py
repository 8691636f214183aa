# Code and markdown of 6.4's experiment (builder part): a FIRST DRAFT, never executed.
# L1_TARGET, LOSS_TARGET and SAMPLE_TARGET are left undefined on purpose: they are set from measured runs and their
# seed spread when the notebook is assembled; KL_WEIGHT, the budgets and the sizes are placeholders to be chosen on
# val; the markdown's descriptions of figures and checks hold only once those cells have run.
DATA_MD = r"""## 7. Captioned Fashion-MNIST and the text encoder

The data are 6.2's: every training image carries a caption that is true of it by construction ("a sandal, small,
rotated left, at the top"), 300 distinct captions in training and 60 more held out, seen only on val and test
images. Pixels are mapped to $[-1, 1]$, Stable Diffusion's convention (the autoencoder's output range).

**The text encoder** is 6.2's CLIP, trained here for a short budget with 6.2's recipe (`common.pretrain.train_clip`)
and then frozen. Like Stable Diffusion, the U-Net reads not CLIP's one pooled vector but the text tower's **token
states** after its final LayerNorm: 16 vectors of width 128 per caption (open_clip's `output_tokens`), of which the
first few carry the words (the tower is causal: state $i$ has read tokens $0..i$). The empty caption "" (start and
end tokens only) is the condition for the unconditional model. There are only 361 distinct captions, so their
states are computed once, as a table `(361, 16, 128)`.
"""

DATA_CODE = r"""TRAIN_LIMIT = budget.choose(default=None, quick=2_000)            # None: all 55,000 training images
VAL_LIMIT = budget.choose(default=None, quick=1_000)
CLIP_SECONDS = budget.choose(default=90, quick=4)                  # wall-clock seconds of CLIP training
train = captioned_fashion_mnist("train", limit=TRAIN_LIMIT, normalize=False)
val = captioned_fashion_mnist("val", limit=VAL_LIMIT, normalize=False)
to_model_range = lambda images: images * 2 - 1                    # [0, 1] -> [-1, 1]
train_images, val_images = to_model_range(train.images), to_model_range(val.images)     # (N, 1, 28, 28)
print(f"train {len(train):,} images, val {len(val):,}; pixels in [{train_images.min():.0f}, {train_images.max():.0f}]")

text_encoder, clip_log = train_clip(train, seconds=CLIP_SECONDS, device=device, progress=True)
text_encoder.requires_grad_(False)
EMPTY = len(CAPTIONS)                                              # index of "" in the table: the null condition


@torch.no_grad()
def caption_states(model, texts):
    # The text tower's token states after ln_final, (len(texts), 16, width): the U-Net's encoder_hidden_states.
    model.text_output_tokens = True                                # open_clip's output_tokens: (pooled, tokens)
    _, tokens = model.encode_text(tokenize(texts).to(device))
    model.text_output_tokens = False
    return tokens


state_table = caption_states(text_encoder, list(CAPTIONS) + [""])       # (361, 16, 128)
print(f"CLIP: {clip_log['steps']} steps in {clip_log['seconds']:.0f} s, loss {sum(clip_log['loss'][:10]) / 10:.2f} "
      f"-> {sum(clip_log['loss'][-20:]) / 20:.2f}; caption states {tuple(state_table.shape)}")
"""

LOOP_CODE = r"""def train_for_seconds(model, step_loss, seconds, lr, desc, weight_decay=0.0):
    # AdamW for `seconds` of wall-clock time, warm-up then cosine over the budget; step_loss() -> (loss, extras).
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    log, start = {"loss": [], "extras": [], "steps": 0}, time.perf_counter()
    with tqdm(total=round(seconds), desc=desc, unit="s", leave=False) as bar:
        while (share := (time.perf_counter() - start) / seconds) < 1:
            for group in optimizer.param_groups:
                group["lr"] = lr * warmup_cosine(share, 0.05)
            loss, extras = step_loss()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: the loss became {loss.item()} at step {log['steps']}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            log["loss"].append(loss.item())
            log["extras"].append(extras)
            log["steps"] += 1
            bar.n = min(round(time.perf_counter() - start), round(seconds))
            bar.refresh()
    log["seconds"] = time.perf_counter() - start
    return log


def random_batches(count, batch_size, seed):
    # Endless random mini-batches of indices into a set of `count` examples (each pass a fresh permutation).
    order = torch.Generator().manual_seed(seed)
    while True:
        permutation = torch.randperm(count, generator=order)
        for begin in range(0, count - batch_size + 1, batch_size):
            yield permutation[begin:begin + batch_size]
"""

AE_MD = r"""## 8. Training the autoencoder

Stable Diffusion's autoencoder was trained with an L1 reconstruction loss, a perceptual loss (LPIPS), a patch
discriminator and the KL term with weight $10^{-6}$. At 28 x 28 the perceptual and adversarial terms matter less
(and LPIPS needs a pretrained network, which this course does not download), so here the loss is the L1 distance
plus $\lambda$ times the KL, both per pixel:

$$\mathcal L_\text{AE} = \frac{1}{HW}\sum |x - D(z)| + \lambda\,\frac{1}{HW}\,\mathrm{KL}\big(q(z \mid x)\,\|\,
\mathcal N(0, I)\big), \qquad z \sim q(z \mid x).$$

(With sums instead of means, as in SD's code, the weight is the same number.) The architecture: three levels of
16, 32 and 32 channels, one ResNet block per level (two in the decoder), GroupNorm with 8 groups, the mid block's
self-attention over the 7 x 7 latent positions, 4 latent channels. **The KL weight's effect** is shown first, with
three short runs of equal time; then the autoencoder the diffusion model uses is trained for longer.
"""

AE_CODE = r"""AE_CONFIG = dict(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 3,
                 up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(16, 32, 32), layers_per_block=1,
                 latent_channels=4, norm_num_groups=8)
AE_BATCH = 64


def autoencoder_step(autoencoder, images, kl_weight, generator):
    posterior = autoencoder.encode(images).latent_dist
    reconstruction = autoencoder.decode(posterior.sample(generator=generator)).sample
    l1 = (reconstruction - images).abs().mean()
    kl = posterior.kl().mean() / images[0].numel()                     # nats per pixel
    return l1 + kl_weight * kl, {"l1": l1.item(), "kl": kl.item()}


def train_autoencoder(kl_weight, seconds, seed=0, lr=2e-3):
    seed_everything(seed)
    autoencoder = AutoencoderKL(**AE_CONFIG).to(device)
    batches, noise = random_batches(len(train_images), AE_BATCH, seed), torch.Generator(device).manual_seed(seed)
    step = lambda: autoencoder_step(autoencoder, train_images[next(batches)].to(device), kl_weight, noise)
    log = train_for_seconds(autoencoder, step, seconds, lr, desc=f"autoencoder, KL weight {kl_weight:g}")
    return autoencoder.eval(), log


@torch.no_grad()
def autoencoder_scores(autoencoder, images):
    # Val reconstruction from the posterior mean, the KL per latent value, the spread of the latent means.
    posterior = autoencoder.encode(images.to(device)).latent_dist
    reconstruction = autoencoder.decode(posterior.mode()).sample.clamp(-1, 1)
    return {"l1": (reconstruction - images.to(device)).abs().mean().item(),
            "kl per latent": posterior.kl().mean().item() / posterior.mean[0].numel(),
            "latent std": posterior.mean.std().item(), "posterior std": posterior.std.mean().item()}
"""

KL_SWEEP_CODE = r"""KL_WEIGHTS = (1e-6, 1e-3, 1e-1)
SWEEP_SECONDS = budget.choose(default=20, quick=2)
sweep = {}
for kl_weight in KL_WEIGHTS:
    autoencoder, log = train_autoencoder(kl_weight, SWEEP_SECONDS)
    sweep[kl_weight] = {"steps": log["steps"], **autoencoder_scores(autoencoder, val_images[:1000])}
print(f"{SWEEP_SECONDS} s each, val (1,000 images):")
print(f"{'KL weight':>10} {'steps':>6} {'L1':>7} {'KL/latent':>10} {'latent std':>11} {'posterior std':>14}")
for kl_weight, row in sweep.items():
    print(f"{kl_weight:>10g} {row['steps']:>6} {row['l1']:>7.4f} {row['kl per latent']:>10.3f} "
          f"{row['latent std']:>11.3f} {row['posterior std']:>14.3f}")
assert sweep[KL_WEIGHTS[-1]]["kl per latent"] < sweep[KL_WEIGHTS[0]]["kl per latent"], \
    "a larger KL weight must give a smaller KL"
"""

CLASSIFIER_MD = r"""## 9. The judge: a ResNet trained on captioned images

Generated images are scored by a classifier that never saw them: 3.1's small ResNet (BasicBlock, three stages of
16, 32 and 64 channels, a 3x3 stem), trained here on the captioned training images (the same transformations as
the captions describe) in the model range $[-1, 1]$. Its accuracy on real val images is the ceiling of what it can
confirm; its accuracy on the autoencoder's reconstructions of val shows what the decoder alone costs.
"""

CLASSIFIER_CODE = r"""CLASSIFIER_SECONDS = budget.choose(default=90, quick=4)
seed_everything(0)
judge = ResNet(BasicBlock, [1, 1, 1], num_classes=10, in_channels=1, stem="small", widths=(16, 32, 64))
judge_loader = data.TensorLoader(train_images, train.labels, batch_size=128, shuffle=True, drop_last=True)
judge_history = train_for(judge, judge_loader, seconds=CLASSIFIER_SECONDS, lr=2e-3, device=device, verbose=False)
judge.eval()


@torch.no_grad()
def judge_outputs(images):
    # (predicted class (N,), penultimate features (N, 64)) of images in [-1, 1], in chunks.
    classes, features = [], []
    for chunk in images.split(1000):
        pooled = []
        handle = judge.avgpool.register_forward_hook(lambda module, args, out: pooled.append(out.flatten(1)))
        classes.append(judge(chunk.to(device)).argmax(1).cpu())
        handle.remove()
        features.append(pooled[0].cpu())
    return torch.cat(classes), torch.cat(features).double()
"""

LATENT_CODE = r"""AE_SECONDS = budget.choose(default=100, quick=5)
KL_WEIGHT = 1e-3
autoencoder, autoencoder_log = train_autoencoder(KL_WEIGHT, AE_SECONDS)
autoencoder.requires_grad_(False)
scores = autoencoder_scores(autoencoder, val_images[:1000])
print(f"autoencoder: {count_parameters(autoencoder):,} parameters, {autoencoder_log['steps']} steps of {AE_BATCH} in "
      f"{autoencoder_log['seconds']:.0f} s; val L1 {scores['l1']:.4f} (pixels in [-1, 1]), "
      f"KL {scores['kl per latent']:.3f} nats per latent value")
assert scores["l1"] < L1_TARGET, f"reconstruction L1 {scores['l1']:.4f} >= {L1_TARGET}"

DIFFUSION_IMAGES = budget.choose(default=20_000, quick=1_000)      # the images the diffusion model trains on


@torch.no_grad()
def encode_all(images):
    # Posterior means and standard deviations of the latents, (N, 4, 7, 7) each, in chunks.
    posteriors = [autoencoder.encode(chunk.to(device)).latent_dist for chunk in images.split(1000)]
    return torch.cat([p.mean.cpu() for p in posteriors]), torch.cat([p.std.cpu() for p in posteriors])


latent_mean, latent_std = encode_all(train_images[:DIFFUSION_IMAGES])
latent_captions = train.attributes["combo"][:DIFFUSION_IMAGES]
draws = latent_mean + latent_std * torch.randn(latent_mean.shape, generator=torch.Generator().manual_seed(0))
scaling_factor = 1 / draws.std().item()                           # SD's 0.18215, measured here the same way
print(f"latents {tuple(latent_mean.shape)}: std of a draw {draws.std():.3f} -> scaling_factor {scaling_factor:.4f}")
"""

UNET_MD = r"""## 10. Training the latent diffusion model

The U-Net works on the 7 x 7 x 4 latents: two levels (32 and 64 channels, 7 x 7 and 4 x 4), one ResNet block per
level, a spatial transformer with cross-attention to the caption's 16 token states at the first level and in the mid
block, 4 heads. Each training step takes a batch of latents $z_0$ (a fresh draw from each image's posterior, times
the scaling factor), replaces the caption by the empty one with probability 0.1 (what makes guidance possible),
draws $t$ and $\varepsilon$, forms $z_t$ with the scheduler's `add_noise`, and regresses $\varepsilon$
($\mathcal L_\text{simple}$). The schedule is Stable Diffusion's: `scaled_linear` from 0.00085 to 0.012, $T = 1000$.
"""

UNET_CODE = r"""UNET_SECONDS = budget.choose(default=300, quick=8)
UNET_BATCH, UNET_LR, DROP_CAPTION = 128, 1e-3, 0.1
SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
UNET_CONFIG = dict(sample_size=7, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
                   down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                   up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=state_table.shape[-1],
                   attention_head_dim=4, norm_num_groups=16)
noise_scheduler = DDPMScheduler(**SCHEDULE)
seed_everything(0)
unet = UNet2DConditionModel(**UNET_CONFIG).to(device)
batches, draw = random_batches(DIFFUSION_IMAGES, UNET_BATCH, seed=0), torch.Generator().manual_seed(0)


def diffusion_step():
    batch = next(batches)
    latents = (latent_mean[batch] + latent_std[batch] * torch.randn(latent_std[batch].shape, generator=draw)) \
        * scaling_factor                                              # (B, 4, 7, 7), about unit variance
    caption_ids = latent_captions[batch].clone()
    caption_ids[torch.rand(len(batch), generator=draw) < DROP_CAPTION] = EMPTY       # the unconditional share
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(batch),), generator=draw)
    noise = torch.randn(latents.shape, generator=draw)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    predicted = unet(noisy.to(device), timesteps.to(device), state_table[caption_ids.to(device)]).sample
    return ((predicted - noise.to(device)) ** 2).mean(), {"t": timesteps}


unet_log = train_for_seconds(unet, diffusion_step, UNET_SECONDS, UNET_LR, desc="U-Net")
unet.eval()
passes = unet_log["steps"] * UNET_BATCH / DIFFUSION_IMAGES
print(f"U-Net: {count_parameters(unet):,} parameters; {unet_log['steps']} steps of {UNET_BATCH} in "
      f"{unet_log['seconds']:.0f} s ({passes:.1f} passes over {DIFFUSION_IMAGES:,} latents); loss "
      f"{sum(unet_log['loss'][:20]) / 20:.3f} (first 20 steps) -> {sum(unet_log['loss'][-50:]) / 50:.3f} (last 50)")
assert sum(unet_log["loss"][-50:]) / 50 < LOSS_TARGET, "the noise-prediction loss must fall well below 1 (chance)"
"""

SAMPLE_CODE = r"""SAMPLER = dict(**SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)    # SD's DDIM settings
SAMPLING_STEPS = budget.choose(default=20, quick=5)


@torch.no_grad()
def generate(caption_ids, guidance, steps=SAMPLING_STEPS, seed=0, keep_trajectory=False, chunk=250):
    # DDIM (eta = 0) with classifier-free guidance: images in [-1, 1], (N, 1, 28, 28) [, the x0 estimates per step].
    sampler = DDIMScheduler(**SAMPLER)
    sampler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn((len(caption_ids), 4, 7, 7), generator=generator).to(device)     # z_T ~ N(0, I)
    images, trajectory = [], []
    for begin in range(0, len(caption_ids), chunk):
        z = latents[begin:begin + chunk]
        context = torch.cat([state_table[caption_ids[begin:begin + chunk].to(device)],
                             state_table[EMPTY].expand(len(z), -1, -1)])            # (2n, 16, 128)
        estimates = []
        for t in sampler.timesteps:
            conditional, unconditional = unet(torch.cat([z, z]), t, context).sample.chunk(2)
            guided = unconditional + guidance * (conditional - unconditional)
            out = sampler.step(guided, t, z)
            z = out.prev_sample
            if keep_trajectory:
                estimates.append(out.pred_original_sample)
        images.append(autoencoder.decode(z / scaling_factor).sample.clamp(-1, 1).cpu())
        if keep_trajectory:
            trajectory.append(torch.stack([autoencoder.decode(e / scaling_factor).sample.clamp(-1, 1).cpu()
                                           for e in estimates], 1))               # (n, steps, 1, 28, 28)
    return (torch.cat(images), torch.cat(trajectory)) if keep_trajectory else torch.cat(images)
"""

ATTRIBUTE_CODE = r"""def measure_attributes(images):
    # What the pixels say, for images in [-1, 1] (N, 1, 28, 28): size, contrast, and the centre of mass of the ink.
    pixels = (images[:, 0] + 1) / 2                                    # (N, 28, 28) in [0, 1]
    brightest = pixels.flatten(1).amax(1)
    ink = pixels > 0.25 * brightest[:, None, None]                     # (N, 28, 28) bool
    rows, cols = ink.any(2), ink.any(1)                                # (N, 28) each
    extent = lambda lines: lines.float().sum(1)                        # inked rows / columns (objects are solid)
    mass = pixels * ink
    coords = torch.arange(28, dtype=pixels.dtype) + 0.5
    total = mass.flatten(1).sum(1).clamp_min(1e-8)
    centre = torch.stack([(mass.sum(2) * coords).sum(1) / total, (mass.sum(1) * coords).sum(1) / total], 1)
    return {"small": torch.maximum(extent(rows), extent(cols)) <= 17, "faint": brightest < (FAINT + 1) / 2,
            "centre": centre}                                          # centre (N, 2): row, column


calibration = measure_attributes(train_images[:5_000])                 # typical centre of each position (train)
small_train = train.attributes["size"][:5_000] == 1
position_centres = torch.stack([calibration["centre"][small_train & (train.attributes["position"][:5_000] == p)]
                                .mean(0) for p in range(len(POSITIONS))])               # (5, 2)


def attribute_agreement(images, attributes):
    # The share of images whose measured size, contrast and (for small ones) position agree with their caption.
    measured = measure_attributes(images)
    small = attributes["size"] == 1
    nearest = torch.cdist(measured["centre"], position_centres).argmin(1)
    return {"size": (measured["small"] == small).float().mean().item(),
            "contrast": (measured["faint"] == (attributes["contrast"] == 1)).float().mean().item(),
            "position": (nearest[small] == attributes["position"][small]).float().mean().item()}


print("measurements on real val images agree with their captions:",
      {name: f"{value:.2%}" for name, value in attribute_agreement(val_images, val.attributes).items()})
"""

SWEEP_CODE = r"""GUIDANCE_SCALES = budget.choose(default=(1.0, 2.0, 3.0, 5.0, 8.0), quick=(1.0, 4.0))
SWEEP_SAMPLES = budget.choose(default=500, quick=100)
real_classes, real_features = judge_outputs(val_images)
judge_val_accuracy = (real_classes == val.labels).float().mean().item()
reference = real_features[SWEEP_SAMPLES:2 * SWEEP_SAMPLES]            # real val images other than the captions'
fd_floor = frechet_distance(real_features[:SWEEP_SAMPLES], reference)
sweep_captions, sweep_labels = val.attributes["combo"][:SWEEP_SAMPLES], val.labels[:SWEEP_SAMPLES]
guidance_rows = {}
for scale in tqdm(GUIDANCE_SCALES, desc="guidance sweep", leave=False):
    samples = generate(sweep_captions, scale)
    classes, features = judge_outputs(samples)
    guidance_rows[scale] = {"accuracy": (classes == sweep_labels).float().mean().item(),
                            "fd": frechet_distance(features, reference), "samples": samples,
                            **attribute_agreement(samples, {k: v[:SWEEP_SAMPLES] for k, v in val.attributes.items()})}
reconstructed = autoencoder.decode(autoencoder.encode(val_images[:SWEEP_SAMPLES].to(device)).latent_dist.mode()).sample
reconstruction_accuracy = (judge_outputs(reconstructed.clamp(-1, 1))[0] == sweep_labels).float().mean().item()
print(f"judge on real val images: {judge_val_accuracy:.2%}; on their autoencoder reconstructions: "
      f"{reconstruction_accuracy:.2%}; FD between two sets of {SWEEP_SAMPLES} real val images: {fd_floor:.2f}")
print(f"{'guidance':>8} {'class accuracy':>15} {'FD':>7} {'size':>7} {'contrast':>9} {'position':>9}")
for scale, row in guidance_rows.items():
    print(f"{scale:>8g} {row['accuracy']:>15.2%} {row['fd']:>7.2f} {row['size']:>7.2%} {row['contrast']:>9.2%} "
          f"{row['position']:>9.2%}")
CHOSEN_SCALE = max(guidance_rows, key=lambda scale: guidance_rows[scale]["accuracy"])      # chosen on val
print(f"chosen on val: guidance {CHOSEN_SCALE:g}")
"""

TEST_CODE = r"""TEST_SAMPLES = budget.choose(default=1_000, quick=200)
test = captioned_fashion_mnist("test", normalize=False)            # the test split, used once, here
test_images = to_model_range(test.images)
test_captions, test_labels = test.attributes["combo"][:TEST_SAMPLES], test.labels[:TEST_SAMPLES]
test_samples = generate(test_captions, CHOSEN_SCALE, seed=1)
test_classes, test_features = judge_outputs(test_samples)
correct = test_classes == test_labels
held = test.attributes["held_out"][:TEST_SAMPLES]
test_fd = frechet_distance(test_features, judge_outputs(test_images[TEST_SAMPLES:2 * TEST_SAMPLES])[1])
test_fd_floor = frechet_distance(judge_outputs(test_images[:TEST_SAMPLES])[1],
                                 judge_outputs(test_images[TEST_SAMPLES:2 * TEST_SAMPLES])[1])
test_attributes = attribute_agreement(test_samples, {k: v[:TEST_SAMPLES] for k, v in test.attributes.items()})
judge_test = (judge_outputs(test_images)[0] == test.labels).float().mean().item()
print(f"test, {TEST_SAMPLES:,} captions of test images, guidance {CHOSEN_SCALE:g}, {SAMPLING_STEPS} DDIM steps:")
print(f"  class accuracy of the samples {correct.float().mean():.2%} (judge on the real test images: {judge_test:.2%})")
print(f"  of which {int(held.sum())} held-out captions (never trained on): {correct[held].float().mean():.2%}; "
      f"the others {correct[~held].float().mean():.2%}")
print(f"  FD to {TEST_SAMPLES:,} other real test images {test_fd:.2f} (two real sets: {test_fd_floor:.2f})")
print("  attributes measured in the samples agree with the caption:",
      {name: f"{value:.2%}" for name, value in test_attributes.items()})
assert correct.float().mean() >= SAMPLE_TARGET, f"class accuracy {correct.float().mean():.2%} < {SAMPLE_TARGET:.0%}"
"""

TRAJECTORY_CODE = r"""SHOWN = [CAPTIONS.index(text) for text in ("a trouser, large", "a sneaker, small, at the top",
                                              "a bag, large, rotated left", "an ankle boot, small, faint, on the left",
                                              "a dress, large, faint", "a sandal, small, rotated right, in the centre")]
shown_ids = torch.tensor(SHOWN)
trajectories = {scale: generate(shown_ids, scale, seed=2, keep_trajectory=True) for scale in GUIDANCE_SCALES}
final, steps_x0 = trajectories[CHOSEN_SCALE]                          # (6, 1, 28, 28), (6, steps, 1, 28, 28)
picks = torch.linspace(0, steps_x0.shape[1] - 1, 6).round().long()
fig, axes = plt.subplots(len(SHOWN), len(picks) + 1, figsize=(9, 9.5), dpi=80)
for row, caption_id in enumerate(SHOWN):
    for col, step in enumerate(picks):
        axes[row, col].imshow(steps_x0[row, step, 0], cmap="gray", vmin=-1, vmax=1)
        if row == 0:
            axes[row, col].set_title(f"step {step + 1}: x0 estimate", fontsize=8)
    axes[row, -1].imshow(final[row, 0], cmap="gray", vmin=-1, vmax=1)
    axes[row, -1].set_title(CAPTIONS[caption_id].replace(", ", ",\n", 1), fontsize=7)
for ax in axes.flat:
    ax.axis("off")
fig.suptitle(f"DDIM trajectory at guidance {CHOSEN_SCALE:g}: the decoded estimate of the clean latent at each step")
plt.tight_layout()
plt.show()
"""

FIGURE_SWEEP_CODE = r"""scales = list(guidance_rows)
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6), dpi=80)
left.plot(scales, [guidance_rows[s]["accuracy"] for s in scales], marker="o", label="samples")
left.axhline(judge_val_accuracy, color="gray", linestyle=":", label="real val images")
left.axhline(reconstruction_accuracy, color="tab:green", linestyle="--", label="autoencoder reconstructions")
left.set_xlabel("guidance scale w")
left.set_ylabel("class accuracy (the judge)")
left.set_title("Fidelity: does the judge see the caption's class?")
left.legend(fontsize=8)
right.plot([guidance_rows[s]["fd"] for s in scales], [guidance_rows[s]["accuracy"] for s in scales], marker="o")
for s in scales:
    right.annotate(f"w={s:g}", (guidance_rows[s]["fd"], guidance_rows[s]["accuracy"]), fontsize=8,
                   textcoords="offset points", xytext=(4, 4))
right.axvline(fd_floor, color="gray", linestyle=":", label="FD of two real sets")
right.set_xlabel(f"Fréchet distance to real val images ({SWEEP_SAMPLES} each)")
right.set_ylabel("class accuracy")
right.set_title("The quality-diversity trade-off")
right.legend(fontsize=8)
plt.tight_layout()
plt.show()

fig, axes = plt.subplots(len(scales), 10, figsize=(10, 1.1 * len(scales) + 0.6), dpi=80)
first_of_class = [int((sweep_labels == k).nonzero()[0]) for k in range(10)]
for row, s in enumerate(scales):
    for col, index in enumerate(first_of_class):
        axes[row, col].imshow(guidance_rows[s]["samples"][index, 0], cmap="gray", vmin=-1, vmax=1)
        axes[row, col].set_xticks([])
        axes[row, col].set_yticks([])
        if row == 0:
            axes[row, col].set_title(CLASS_WORDS[sweep_labels[index]], fontsize=8)
    axes[row, 0].set_ylabel(f"w={s:g}", fontsize=8)
fig.suptitle("One val caption per class, the same starting noise, rising guidance (top to bottom)")
plt.tight_layout()
plt.show()
"""

WIDGET_CODE = r"""def explore(guidance=CHOSEN_SCALE, step=SAMPLING_STEPS):
    # The x0 estimates after `step` DDIM steps, for the six captions above, at one guidance scale of the sweep.
    _, steps_x0 = trajectories[guidance]
    fig, axes = plt.subplots(1, len(SHOWN), figsize=(10, 2.2), dpi=80)
    for ax, caption_id, image in zip(axes, SHOWN, steps_x0[:, step - 1, 0]):
        ax.imshow(image, cmap="gray", vmin=-1, vmax=1)
        ax.set_title(CAPTIONS[caption_id].replace(", ", ",\n", 1), fontsize=7)
        ax.axis("off")
    fig.suptitle(f"guidance {guidance:g}, after step {step} of {SAMPLING_STEPS}", fontsize=9)
    plt.show()


explore(guidance=GUIDANCE_SCALES[0], step=max(1, SAMPLING_STEPS // 4))      # the static view: early, no guidance
widgets.interact(explore, guidance=list(GUIDANCE_SCALES),
                 step=widgets.IntSlider(value=SAMPLING_STEPS, min=1, max=SAMPLING_STEPS));
"""

EXERCISES_MD = r"""## 13. Exercises

1. **$v$ by hand.** For the training schedule at $t = 600$, write $v$ from $x_0$ and $\varepsilon$, then recover
   both from $(x_t, v)$ and compare with `noise_scheduler.get_velocity`. *Hint:* $x_0 = \sqrt{\bar\alpha_t}\,x_t -
   \sqrt{1-\bar\alpha_t}\,v$ and $\varepsilon = \sqrt{\bar\alpha_t}\,v + \sqrt{1-\bar\alpha_t}\,x_t$ (rotate the pair
   $(x_0, \varepsilon)$ by the angle $\phi_t$ with $\cos\phi_t = \sqrt{\bar\alpha_t}$); the check below compares.
2. **Stochastic sampling.** Generate the sweep's 500 val captions at the chosen guidance with DDIM $\eta = 1$
   (pass `eta=1.0` and a `generator` to `sampler.step`; copy `generate`) and compare the class accuracy and the FD
   with $\eta = 0$. *Hint:* with 20 steps the stochastic sampler's noise is large per step; the deterministic one
   needs fewer steps for the same quality, which is why DDIM is the default.
3. **The unconditional model.** Guidance $w = 0$ samples from $p(z)$, the model that saw the empty caption in a
   tenth of its steps. Generate 500 images with $w = 0$ and histogram the judge's classes: is every class
   generated? *Hint:* `generate(torch.full((500,), EMPTY), 0.0)`; a class the unconditional model never draws
   would be one that guidance has to create from the conditional term alone.
4. **Counting Stable Diffusion.** Build SD v1.5's U-Net from our class on the meta device (`with
   torch.device("meta"):`) with `block_out_channels=(320, 640, 1280, 1280)`, `cross_attention_dim=768`, the
   default block types, `layers_per_block=2`, `attention_head_dim=8`, `sample_size=64`, and count its parameters.
   How many sit in the spatial transformers? *Hint:* `sum(p.numel() for n, p in unet.named_parameters() if
   "attentions" in n)`; the check below knows the total.
"""

EXERCISE1_CODE = r"""# Exercise 1: x0 and the noise recovered from (x_t, v).
recovered = None             # a pair (x0, noise) computed from x_t and v by the hint's formulas

x0, noise_draw = torch.randn(3, 4, 7, 7, dtype=torch.float64), torch.randn(3, 4, 7, 7, dtype=torch.float64)
t600 = torch.full((3,), 600)
x_t = noise_scheduler.add_noise(x0, noise_draw, t600)
v = noise_scheduler.get_velocity(x0, noise_draw, t600)
if recovered is None:
    print("Exercise 1 is not attempted yet.")
else:
    torch.testing.assert_close(recovered[0], x0)
    torch.testing.assert_close(recovered[1], noise_draw)
    print("correct: (x0, noise) recovered from (x_t, v)")
"""

EXERCISE4_CODE = r"""# Exercise 4: the parameters of Stable Diffusion v1.5's U-Net, counted from our class.
sd_unet_parameters = None    # an int

if sd_unet_parameters is None:
    print("Exercise 4 is not attempted yet.")
else:
    assert sd_unet_parameters == 859_520_964, f"{sd_unet_parameters:,}: check the configuration"
    print(f"correct: {sd_unet_parameters:,} parameters")
"""
