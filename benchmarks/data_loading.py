"""One epoch of Fashion-MNIST batches: common.data.TensorLoader against torch's DataLoader.

    python benchmarks/data_loading.py

Three ways to get shuffled batches of 256 normalised images, fetching only
(no model), so the number is the loader's own cost per epoch:

* ``TensorLoader``: indexes whole batches of the in-memory tensor;
* ``DataLoader(TensorDataset)``: the same tensors, collated item by item;
* ``DataLoader(torchvision FashionMNIST)``: the usual tutorial pipeline, a PIL
  image per item through ``ToTensor`` and ``Normalize`` (the files are
  decompressed into a temporary folder in torchvision's layout; no download).

Median of 3 epochs each, alternating.
"""
import gzip
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from common import data


def epoch_seconds(loader) -> float:
    start = time.perf_counter()
    for images, labels in loader:
        pass
    return time.perf_counter() - start


def torchvision_dataset(folder: Path):
    from torchvision import datasets, transforms

    raw = folder / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in data.FILES:
        source = next(d for d in data.search_dirs() if (d / f"{name}.gz").exists() or (d / name).exists())
        blob = (source / f"{name}.gz").read_bytes() if (source / f"{name}.gz").exists() else None
        (raw / name).write_bytes(gzip.decompress(blob) if blob else (source / name).read_bytes())
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((data.MEAN,), (data.STD,))])
    return datasets.FashionMNIST(str(folder), train=True, transform=transform, download=False)


def main():
    x, y = data.fashion_mnist("train")
    tmp = tempfile.TemporaryDirectory()
    loaders = {
        "TensorLoader": data.TensorLoader(x, y, batch_size=256, shuffle=True),
        "DataLoader(TensorDataset)": DataLoader(TensorDataset(x, y), batch_size=256, shuffle=True),
        "DataLoader(torchvision FashionMNIST)": DataLoader(torchvision_dataset(Path(tmp.name)), batch_size=256,
                                                           shuffle=True),
    }
    times = {name: [] for name in loaders}
    for _ in range(3):
        for name, loader in loaders.items():
            times[name].append(epoch_seconds(loader))
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; one epoch of 60,000 images, batch 256\n")
    print("| loader | seconds per epoch |")
    print("|---|---:|")
    for name, seconds in medians.items():
        print(f"| {name} | {seconds:.3f} |")
    for name in list(medians)[1:]:
        print(f"\n{name} takes {medians[name] / medians['TensorLoader']:.0f}x as long as TensorLoader", end="")
    print()
    tmp.cleanup()


if __name__ == "__main__":
    main()
