"""One U-Net run of 6.4 on prepare.py's latents: python benchmarks/sd_unet/unet.py BATCH LR SECONDS [THREADS]."""
import json
import sys
import time
from pathlib import Path

import torch

from common.captions import CAPTIONS, captioned_fashion_mnist
from common.models import AutoencoderKL, BasicBlock, DDIMScheduler, DDPMScheduler, ResNet, UNet2DConditionModel
from common.training import seed_everything, warmup_cosine

batch_size, lr, seconds = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
torch.set_num_threads(int(sys.argv[4]) if len(sys.argv) > 4 else 1)
prepared = torch.load(Path(__file__).with_name("prepared.pt"))
states, mean, std, combo = prepared["states"], prepared["mean"], prepared["std"], prepared["combo"]
ae = AutoencoderKL(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 3,
                   up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(16, 32, 32), layers_per_block=1,
                   latent_channels=4, norm_num_groups=8)
ae.load_state_dict(prepared["ae"])
ae.eval()
judge = ResNet(BasicBlock, [1, 1, 1], num_classes=10, in_channels=1, stem="small", widths=(16, 32, 64))
judge.load_state_dict(prepared["judge"])
judge.eval()
draw = torch.Generator().manual_seed(0)
scale = 1 / (mean + std * torch.randn(mean.shape, generator=draw)).std().item()
schedule = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
noise_scheduler = DDPMScheduler(**schedule)
seed_everything(0)
unet = UNet2DConditionModel(sample_size=7, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                            layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=128,
                            attention_head_dim=4, norm_num_groups=16)
optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
empty, steps, losses, start = len(CAPTIONS), 0, [], time.perf_counter()
while (share := (time.perf_counter() - start) / seconds) < 1:
    for group in optimizer.param_groups:
        group["lr"] = lr * warmup_cosine(share, 0.05)
    batch = torch.randint(0, len(mean), (batch_size,), generator=draw)
    latents = (mean[batch] + std[batch] * torch.randn(std[batch].shape, generator=draw)) * scale
    ids = combo[batch].clone()
    ids[torch.rand(batch_size, generator=draw) < 0.1] = empty
    t = torch.randint(0, 1000, (batch_size,), generator=draw)
    noise = torch.randn(latents.shape, generator=draw)
    loss = ((unet(noise_scheduler.add_noise(latents, noise, t), t, states[ids]).sample - noise) ** 2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    losses.append(loss.item())
    steps += 1
unet.eval()
val = captioned_fashion_mnist("val", limit=500, normalize=False)
sampler = DDIMScheduler(**schedule, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
sampler.set_timesteps(20)
result = {"batch": batch_size, "lr": lr, "seconds": seconds, "steps": steps, "last_loss": sum(losses[-50:]) / 50}
with torch.no_grad():
    for guidance in (2.0, 3.0, 5.0):
        z = torch.randn((500, 4, 7, 7), generator=torch.Generator().manual_seed(0))
        context = torch.cat([states[val.attributes["combo"]], states[empty].expand(500, -1, -1)])
        for t in sampler.timesteps:
            conditional, unconditional = unet(torch.cat([z, z]), t, context).sample.chunk(2)
            z = sampler.step(unconditional + guidance * (conditional - unconditional), t, z).prev_sample
        images = ae.decode(z / scale).sample.clamp(-1, 1)
        result[f"val accuracy at w={guidance:g}"] = (judge(images).argmax(1) == val.labels).float().mean().item()
print(json.dumps(result))
