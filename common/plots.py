"""Figures every notebook uses: image grids, training curves, filters, feature maps.

Each function returns the ``matplotlib`` figure (call ``plt.show()`` or let
Jupyter display it). Sizes and dpi are modest so stored notebooks stay small.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence, Union

import matplotlib.pyplot as plt
import torch

from .data import CLASSES, MEAN, STD
from .training import History

__all__ = ["show_images", "plot_history", "show_filters", "show_feature_maps"]

DPI = 80


def _grid(n: int, ncols: int, scale: float, title: Optional[str]):
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(scale * ncols, scale * nrows + (0.4 if title else 0)),
                             dpi=DPI, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    return fig, axes


def _as_images(images: torch.Tensor) -> torch.Tensor:
    """(N, H, W) or (N, 1|3, H, W) -> (N, H, W[, 3]) float on the CPU."""
    images = images.detach().cpu().float()
    if images.dim() == 4:
        if images.shape[1] == 1:
            images = images[:, 0]
        elif images.shape[1] == 3:
            images = images.permute(0, 2, 3, 1)
        else:
            raise ValueError(f"images need 1 or 3 channels, got shape {tuple(images.shape)}")
    elif images.dim() != 3:
        raise ValueError(f"images must be (N, H, W) or (N, C, H, W), got shape {tuple(images.shape)}")
    return images


def show_images(images: torch.Tensor, labels: Optional[Sequence[int]] = None,
                predictions: Optional[Sequence[int]] = None, *, class_names: Sequence[str] = CLASSES,
                ncols: int = 8, scale: float = 1.3, title: Optional[str] = None, normalized: bool = True,
                cmap: str = "gray"):
    """A grid of images with their class names; predictions that differ from the label in red.

    ``normalized=True`` undoes :func:`common.data.fashion_mnist`'s normalisation for display.
    """
    images = _as_images(images)
    if normalized:
        images = images * STD + MEAN
    fig, axes = _grid(len(images), ncols, scale, title)
    for i, (ax, image) in enumerate(zip(axes.flat, images)):
        ax.imshow(image.clamp(0, 1).numpy(), cmap=cmap, vmin=0, vmax=1)
        caption, color = "", "black"
        if labels is not None:
            caption = class_names[int(labels[i])]
        if predictions is not None:
            guess = class_names[int(predictions[i])]
            if labels is not None and int(predictions[i]) != int(labels[i]):
                caption, color = f"{guess}\n(true: {caption})", "red"
            else:
                caption = guess
        if caption:
            ax.set_title(caption, fontsize=8, color=color)
    fig.tight_layout()
    return fig


def plot_history(histories: Union[History, Mapping[str, History]], *, title: Optional[str] = None):
    """Loss and accuracy per epoch; several runs (a dict name -> History) share the axes."""
    if isinstance(histories, History):
        histories = {"": histories}
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=DPI)
    for name, history in histories.items():
        epochs = range(1, history.epochs + 1)
        prefix = f"{name} " if name else ""
        line, = ax_loss.plot(epochs, history.train_loss, "-o", ms=3, label=f"{prefix}train")
        ax_acc.plot(epochs, history.train_acc, "-o", ms=3, color=line.get_color(), label=f"{prefix}train")
        if history.val_loss:
            ax_loss.plot(epochs, history.val_loss, "--s", ms=3, color=line.get_color(), label=f"{prefix}val")
            ax_acc.plot(epochs, history.val_acc, "--s", ms=3, color=line.get_color(), label=f"{prefix}val")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def show_filters(weight: torch.Tensor, *, ncols: int = 8, scale: float = 1.0, title: Optional[str] = "filters"):
    """Convolution kernels ``(C_out, C_in, k, k)``: the first input channel of each, own colour scale, 0 grey."""
    if weight.dim() != 4:
        raise ValueError(f"weight must be (C_out, C_in, kH, kW), got shape {tuple(weight.shape)}")
    kernels = weight.detach().cpu().float()[:, 0]
    fig, axes = _grid(len(kernels), ncols, scale, title)
    for i, (ax, kernel) in enumerate(zip(axes.flat, kernels)):
        bound = kernel.abs().max().item() or 1.0
        ax.imshow(kernel.numpy(), cmap="RdBu_r", vmin=-bound, vmax=bound)
        ax.set_title(str(i), fontsize=7)
    fig.tight_layout()
    return fig


def show_feature_maps(maps: torch.Tensor, *, ncols: int = 8, scale: float = 1.0, limit: int = 32,
                      title: Optional[str] = "feature maps"):
    """The channels of one activation ``(C, H, W)`` (or ``(1, C, H, W)``), first ``limit`` of them."""
    maps = maps.detach().cpu().float()
    if maps.dim() == 4:
        if maps.shape[0] != 1:
            raise ValueError(f"pass the maps of one image, got a batch of {maps.shape[0]}")
        maps = maps[0]
    if maps.dim() != 3:
        raise ValueError(f"maps must be (C, H, W), got shape {tuple(maps.shape)}")
    maps = maps[:limit]
    fig, axes = _grid(len(maps), ncols, scale, title)
    for i, (ax, fmap) in enumerate(zip(axes.flat, maps)):
        ax.imshow(fmap.numpy(), cmap="viridis")
        ax.set_title(str(i), fontsize=7)
    fig.tight_layout()
    return fig
