"""6.4's text encoder, autoencoder and judge, trained as the notebook trains them, saved for unet.py."""
import time
from pathlib import Path

import torch

from common import data
from common.captions import CAPTIONS, captioned_fashion_mnist, tokenize
from common.models import AutoencoderKL, BasicBlock, ResNet
from common.pretrain import train_clip
from common.training import seed_everything, train_for, warmup_cosine

HERE = Path(__file__).parent
train = captioned_fashion_mnist("train", normalize=False)
val = captioned_fashion_mnist("val", normalize=False)
train_images, val_images = train.images * 2 - 1, val.images * 2 - 1
clip, _ = train_clip(captioned_fashion_mnist("train"), seconds=70, progress=False)
clip.text_output_tokens = True
with torch.no_grad():
    states = clip.encode_text(tokenize(list(CAPTIONS) + [""]))[1]          # (361, 16, 128)

seed_everything(0)
ae = AutoencoderKL(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 3,
                   up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(16, 32, 32), layers_per_block=1,
                   latent_channels=4, norm_num_groups=8)
optimizer = torch.optim.AdamW(ae.parameters(), lr=2e-3, weight_decay=0.0)
order, noise = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
start, seconds = time.perf_counter(), 200
while (share := (time.perf_counter() - start) / seconds) < 1:
    for group in optimizer.param_groups:
        group["lr"] = 2e-3 * warmup_cosine(share, 0.05)
    x = train_images[torch.randint(0, len(train_images), (16,), generator=order)]
    posterior = ae.encode(x).latent_dist
    loss = (ae.decode(posterior.sample(generator=noise)).sample - x).abs().mean() + 1e-3 * posterior.kl().mean() / 784
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
ae.eval()
with torch.no_grad():
    posteriors = [ae.encode(chunk).latent_dist for chunk in train_images[:20_000].split(1000)]
    mean, std = torch.cat([p.mean for p in posteriors]), torch.cat([p.std for p in posteriors])

seed_everything(0)
judge = ResNet(BasicBlock, [1, 1, 1], num_classes=10, in_channels=1, stem="small", widths=(16, 32, 64))
train_for(judge, data.TensorLoader(train_images, train.labels, batch_size=128, shuffle=True, drop_last=True),
          seconds=90, lr=2e-3, verbose=False)
torch.save({"states": states, "ae": ae.state_dict(), "judge": judge.eval().state_dict(), "mean": mean, "std": std,
            "combo": train.attributes["combo"][:20_000]}, HERE / "prepared.pt")
print("saved")
