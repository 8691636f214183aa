"""One autoencoder run of 6.4's batch-size choice (README.md):
python benchmarks/sd_autoencoder/autoencoder.py NAME KL_WEIGHT BATCH LR SECONDS [BLOCKS [LATENT_CHANNELS]]."""
import json
import sys
import time
from pathlib import Path

import torch

from common.captions import captioned_fashion_mnist
from common.models import AutoencoderKL, BasicBlock, ResNet
from common.training import seed_everything, warmup_cosine

torch.set_num_threads(1)
name, kl_weight, batch_size, lr, seconds = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), \
    float(sys.argv[5])
blocks = tuple(int(width) for width in sys.argv[6].split(",")) if len(sys.argv) > 6 else (16, 32, 32)
latent_channels = int(sys.argv[7]) if len(sys.argv) > 7 else 4
train = captioned_fashion_mnist("train", normalize=False)
val = captioned_fashion_mnist("val", normalize=False)
train_images, val_images = train.images * 2 - 1, val.images * 2 - 1                  # [-1, 1]
config = dict(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 3,
              up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=blocks, layers_per_block=1,
              latent_channels=latent_channels, norm_num_groups=8)
seed_everything(0)
autoencoder = AutoencoderKL(**config)
optimizer = torch.optim.AdamW(autoencoder.parameters(), lr=lr, weight_decay=0.0)
order, noise = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
start, steps = time.perf_counter(), 0
while (share := (time.perf_counter() - start) / seconds) < 1:
    for group in optimizer.param_groups:
        group["lr"] = lr * warmup_cosine(share, 0.05)
    images = train_images[torch.randint(0, len(train_images), (batch_size,), generator=order)]
    posterior = autoencoder.encode(images).latent_dist
    reconstruction = autoencoder.decode(posterior.sample(generator=noise)).sample
    loss = (reconstruction - images).abs().mean() + kl_weight * posterior.kl().mean() / 784
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    steps += 1
autoencoder.eval()
judge = ResNet(BasicBlock, [1, 1, 1], num_classes=10, in_channels=1, stem="small", widths=(16, 32, 64))
judge.load_state_dict(torch.load(Path(__file__).with_name("judge90.pt")))
judge.eval()
with torch.no_grad():
    images, labels = val_images[:2000], val.labels[:2000]
    posterior = autoencoder.encode(images).latent_dist
    reconstruction = autoencoder.decode(posterior.mode()).sample.clamp(-1, 1)
    result = dict(name=name, steps=steps, l1=round((reconstruction - images).abs().mean().item(), 4),
                  judge_rec=(judge(reconstruction).argmax(1) == labels).float().mean().item(),
                  judge_real=(judge(images).argmax(1) == labels).float().mean().item(),
                  post_std=posterior.std.mean().item(), lat_std=posterior.mean.std().item())
print(json.dumps(result))
