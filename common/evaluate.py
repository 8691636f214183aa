"""Evaluate a checkpoint of ``python -m common.train`` on the Fashion-MNIST test set.

    python -m common.evaluate runs/<run>/best.pt [--split test|val] [--limit N] [--png confusion.png]

prints the accuracy, the accuracy of each class, the confusion matrix (rows: true class, columns:
predicted) and the throughput (images per second, inference in eval mode, batches of
``--batch-size``), and saves the confusion matrix as a PNG (default: next to the checkpoint,
``<name>-confusion-<split>.png``). A file that is not a checkpoint of this project (another
program's file, a plain ``state_dict``, a missing path) is refused with a message saying so.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

from . import data
from .train import CheckpointError, ConfigError, build_model, load_checkpoint
from .training import get_device

__all__ = ["evaluate_checkpoint", "confusion_matrix", "format_report", "main"]


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(num_classes, num_classes)`` counts: row = true class, column = predicted class."""
    flat = labels.long() * num_classes + predictions.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


@torch.no_grad()
def evaluate_checkpoint(path, *, split: str = "test", limit: Optional[int] = None, batch_size: int = 1000,
                        device=None) -> Dict:
    checkpoint = load_checkpoint(path)
    config = checkpoint["config"]
    model = build_model(config["model"], config["model_args"])
    model.load_state_dict(checkpoint["model"])
    device = get_device(device)
    model.to(device).eval()
    images, labels = data.fashion_mnist(split, limit=limit)
    predictions = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for i in range(0, images.shape[0], batch_size):
        logits = model(images[i:i + batch_size].to(device))
        predictions.append(logits.argmax(dim=1).cpu())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    predictions = torch.cat(predictions)
    matrix = confusion_matrix(labels, predictions, len(data.CLASSES))
    per_class = (matrix.diag().double() / matrix.sum(dim=1).clamp(min=1)).tolist()
    return {"checkpoint": str(path), "epoch": checkpoint["epoch"], "model": config["model"], "split": split,
            "images": int(labels.shape[0]), "accuracy": (predictions == labels).double().mean().item(),
            "per_class": dict(zip(data.CLASSES, per_class)), "confusion": matrix.tolist(),
            "images_per_second": labels.shape[0] / seconds, "device": str(device), "batch_size": batch_size,
            "threads": torch.get_num_threads()}


def format_report(report: Dict) -> str:
    lines = [f"{report['checkpoint']} (epoch {report['epoch']}, {report['model']}): {report['split']} accuracy "
             f"{report['accuracy']:.2%} on {report['images']:,} images",
             f"throughput: {report['images_per_second']:,.0f} images/s ({report['device']}, batch "
             f"{report['batch_size']}, {report['threads']} threads)", "", "per class:"]
    lines += [f"  {name:<12} {acc:>7.2%}" for name, acc in report["per_class"].items()]
    short = [name.split("/")[0][:7] for name in data.CLASSES]
    lines += ["", "confusion matrix (rows: true class, columns: predicted):",
              " " * 13 + " ".join(f"{s:>7}" for s in short)]
    for name, row in zip(data.CLASSES, report["confusion"]):
        lines.append(f"  {name:<11}" + " ".join(f"{count:>7}" for count in row))
    return "\n".join(lines)


def save_confusion_png(report: Dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = torch.tensor(report["confusion"])
    fig, ax = plt.subplots(figsize=(6.5, 5.5), dpi=80)
    im = ax.imshow(matrix, cmap="Blues")
    ticks = range(len(data.CLASSES))
    ax.set_xticks(ticks, data.CLASSES, rotation=45, ha="right")
    ax.set_yticks(ticks, data.CLASSES)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{report['model']}: {report['split']} accuracy {report['accuracy']:.2%}")
    for i in ticks:
        for j in ticks:
            ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: Optional[List[str]] = None) -> Dict:
    parser = argparse.ArgumentParser(prog="python -m common.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="best.pt or last.pt of a run of python -m common.train")
    parser.add_argument("--split", default="test", choices=list(data.SPLITS))
    parser.add_argument("--limit", type=int, help="the first N images of the split only")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--device", help="cpu, cuda, ... (default: the best available)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--png", help="where to save the confusion matrix (default: next to the checkpoint)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        report = evaluate_checkpoint(args.checkpoint, split=args.split, limit=args.limit, batch_size=args.batch_size,
                                     device=args.device)
    except (CheckpointError, ConfigError) as error:
        parser.error(str(error))
    print(format_report(report))
    path = Path(args.checkpoint)
    png = Path(args.png) if args.png else path.with_name(f"{path.stem}-confusion-{args.split}.png")
    report["png"] = str(save_confusion_png(report, png))
    print(f"\nconfusion matrix saved to {png}")
    return report


if __name__ == "__main__":
    main()
