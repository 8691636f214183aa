"""The judge of 6.4's autoencoder choice runs (README.md): python benchmarks/sd_autoencoder/judge.py SECONDS."""
import sys
from pathlib import Path

import torch

from common import data
from common.captions import captioned_fashion_mnist
from common.models import BasicBlock, ResNet
from common.training import seed_everything, train_for

torch.set_num_threads(1)
seconds = float(sys.argv[1])
train = captioned_fashion_mnist("train", normalize=False)
val = captioned_fashion_mnist("val", normalize=False)
train_images, val_images = train.images * 2 - 1, val.images * 2 - 1                  # [-1, 1]
seed_everything(0)
judge = ResNet(BasicBlock, [1, 1, 1], num_classes=10, in_channels=1, stem="small", widths=(16, 32, 64))
loader = data.TensorLoader(train_images, train.labels, batch_size=128, shuffle=True, drop_last=True)
history = train_for(judge, loader, seconds=seconds, lr=2e-3, verbose=False)
judge.eval()
with torch.no_grad():
    correct = sum((judge(chunk).argmax(1) == labels).sum().item()
                  for chunk, labels in zip(val_images.split(1000), val.labels.split(1000)))
print(f"judge {seconds}s steps {history.steps} val {correct / len(val_images):.4f}")
torch.save(judge.state_dict(), Path(__file__).with_name(f"judge{int(seconds)}.pt"))
