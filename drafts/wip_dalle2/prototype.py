"""A first measurement for 6.3 (not the notebook): a DALL-E 2 decoder and prior at Fashion-MNIST scale.

Reuses benchmarks/sd_unet/prepared.pt (6.4's autoencoder, judge and the first 20,000 training latents; run
benchmarks/sd_unet/prepare.py first). Trains a small CLIP (70 s); a decoder U-Net conditioned on the CLIP image
embedding, added to the time embedding (class_embed_type="projection") and as 4 extra context tokens; and a
PriorTransformer from text to image embedding (x0 prediction). Scores 500 val captions by the judge: (a) through the
prior, (b) the text embedding fed to the decoder directly (the paper's ablation), (c) the val images' own image
embeddings (variations). Run from the repository root: python drafts/wip_dalle2/prototype.py [DECODER_S PRIOR_S CLIP_S]
"""
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common.captions import CAPTIONS, captioned_fashion_mnist, tokenize  # noqa: E402
from common.models import (AutoencoderKL, BasicBlock, DDIMScheduler, DDPMScheduler, ResNet,  # noqa: E402
                           UNet2DConditionModel, l2_normalize)
from common.nn import Linear  # noqa: E402
from common.pretrain import train_clip  # noqa: E402
from common.training import seed_everything, warmup_cosine  # noqa: E402
from wip_dalle2.prior import PriorTransformer  # noqa: E402

DECODER_SECONDS, PRIOR_SECONDS, CLIP_SECONDS = map(float, sys.argv[1:4]) if len(sys.argv) > 3 else (200.0, 60.0, 70.0)
prepared = torch.load(Path("benchmarks/sd_unet/prepared.pt"))
autoencoder = AutoencoderKL(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 3,
                            up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(16, 32, 32),
                            layers_per_block=1, latent_channels=4, norm_num_groups=8)
autoencoder.load_state_dict(prepared["ae"])
autoencoder.eval()
judge = ResNet(BasicBlock, [1, 1, 1], num_classes=10, in_channels=1, stem="small", widths=(16, 32, 64))
judge.load_state_dict(prepared["judge"])
judge.eval()
mean, std, combo = prepared["mean"], prepared["std"], prepared["combo"]
draw = torch.Generator().manual_seed(0)
scale = 1 / (mean + std * torch.randn(mean.shape, generator=draw)).std().item()

clip, _ = train_clip(captioned_fashion_mnist("train"), seconds=CLIP_SECONDS, progress=False)
clip.requires_grad_(False)
with torch.no_grad():
    train_norm = captioned_fashion_mnist("train", limit=20_000).images
    image_embeddings = torch.cat([clip.encode_image(chunk, normalize=True) for chunk in train_norm.split(1000)])
    text_embeddings = clip.encode_text(tokenize(list(CAPTIONS)), normalize=True)           # (360, 128)
    clip.text_output_tokens = True
    text_tokens = clip.encode_text(tokenize(list(CAPTIONS)))[1]                            # (360, 16, 128)
    clip.text_output_tokens = False
WIDTH = image_embeddings.shape[1]
UNIT = WIDTH ** 0.5                     # unit vectors times sqrt(D): about unit variance per coordinate


class Decoder(nn.Module):
    """The U-Net of 6.4 conditioned on an image embedding: added to the time embedding and as 4 context tokens."""

    def __init__(self):
        super().__init__()
        self.tokens = Linear(WIDTH, 4 * WIDTH)
        self.unet = UNet2DConditionModel(
            sample_size=7, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=WIDTH, attention_head_dim=4, norm_num_groups=16, class_embed_type="projection",
            projection_class_embeddings_input_dim=WIDTH)

    def forward(self, latents, t, embedding):                  # embedding (N, D), zeros for "no condition"
        context = self.tokens(embedding).view(-1, 4, WIDTH)
        return self.unet(latents, t, context, class_labels=embedding).sample


def train_for_seconds(model, step_loss, seconds, lr):
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    start, steps, losses = time.perf_counter(), 0, []
    while (share := (time.perf_counter() - start) / seconds) < 1:
        for group in optimizer.param_groups:
            group["lr"] = lr * warmup_cosine(share, 0.05)
        loss = step_loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        steps += 1
    return steps, sum(losses[-50:]) / len(losses[-50:])


schedule = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
noise_scheduler = DDPMScheduler(**schedule)
seed_everything(0)
decoder = Decoder()


def decoder_step():
    batch = torch.randint(0, len(mean), (64,), generator=draw)
    latents = (mean[batch] + std[batch] * torch.randn(std[batch].shape, generator=draw)) * scale
    condition = image_embeddings[batch] * (torch.rand(64, 1, generator=draw) >= 0.1)          # 10% dropped
    t = torch.randint(0, 1000, (64,), generator=draw)
    noise = torch.randn(latents.shape, generator=draw)
    return ((decoder(noise_scheduler.add_noise(latents, noise, t), t, condition) - noise) ** 2).mean()


decoder_log = train_for_seconds(decoder, decoder_step, DECODER_SECONDS, 2e-3)
decoder.eval()

prior_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="sample",
                                clip_sample=False)
seed_everything(0)
prior = PriorTransformer(num_attention_heads=4, attention_head_dim=32, num_layers=4, embedding_dim=WIDTH,
                         num_embeddings=text_tokens.shape[1], additional_embeddings=4)


def prior_step():
    batch = torch.randint(0, len(image_embeddings), (128,), generator=draw)
    target = image_embeddings[batch] * UNIT
    t = torch.randint(0, 1000, (128,), generator=draw)
    noisy = prior_scheduler.add_noise(target, torch.randn(target.shape, generator=draw), t)
    captions_ = combo[batch]
    out = prior(noisy, t, text_embeddings[captions_], encoder_hidden_states=text_tokens[captions_]).predicted_image_embedding
    return ((out - target) ** 2).mean()


prior_log = train_for_seconds(prior, prior_step, PRIOR_SECONDS, 1e-3)
prior.eval()

val = captioned_fashion_mnist("val", limit=500)
val_ids = val.attributes["combo"]


@torch.no_grad()
def sample_prior(ids, steps=20):
    sampler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="sample",
                            clip_sample=False)
    sampler.set_timesteps(steps)
    z = torch.randn((len(ids), WIDTH), generator=torch.Generator().manual_seed(3))
    for t in sampler.timesteps:
        x0 = prior(z, t, text_embeddings[ids], encoder_hidden_states=text_tokens[ids]).predicted_image_embedding
        z = sampler.step(x0, t, z).prev_sample
    return l2_normalize(z)


@torch.no_grad()
def decode(embeddings, guidance=3.0, steps=20):
    sampler = DDIMScheduler(**schedule, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    sampler.set_timesteps(steps)
    z = torch.randn((len(embeddings), 4, 7, 7), generator=torch.Generator().manual_seed(0))
    both = torch.cat([embeddings, torch.zeros_like(embeddings)])
    for t in sampler.timesteps:
        conditional, unconditional = decoder(torch.cat([z, z]), t, both).chunk(2)
        z = sampler.step(unconditional + guidance * (conditional - unconditional), t, z).prev_sample
    return autoencoder.decode(z / scale).sample.clamp(-1, 1)


with torch.no_grad():
    val_image_embeddings = clip.encode_image(val.images, normalize=True)
    prior_embeddings = sample_prior(val_ids)
result = {"decoder_steps": decoder_log, "prior_steps": prior_log,
          "prior cosine to the true image embedding": (prior_embeddings * val_image_embeddings).sum(1).mean().item(),
          "text cosine to the true image embedding": (text_embeddings[val_ids] * val_image_embeddings).sum(1).mean().item()}
for name, embeddings in (("prior", prior_embeddings), ("text directly", text_embeddings[val_ids]),
                         ("variations of val images", val_image_embeddings)):
    for guidance in (1.0, 3.0):
        images = decode(embeddings, guidance)
        result[f"{name}, w={guidance:g}"] = (judge(images).argmax(1) == val.labels).float().mean().item()
print(json.dumps(result, indent=1))
