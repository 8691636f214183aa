"""The training configuration of every model a notebook trains, kept in one place.

``python -m common.train --recipe stage2_cnn/01_lenet`` runs one of them; a notebook can read its own
with ``recipes.get("stage2_cnn/01_lenet")``. Each entry was copied from the notebook's training cell
(default budget): constructor and arguments, epochs, batch size, optimizer, learning rate and
schedule, weight decay, label smoothing, augmentation, training images. Notebooks re-executed with the
validation split train on ``"train"`` (55,000 images, ``train_split="train"``) and measure the test
set once; those not yet re-executed train on all 60,000 (``train_split="trainval"``) and validated on
the test set. Either way a recipe does the same training and evaluates the test set once, at the
end, so its number is comparable with the ``result:`` line the notebook printed
(``notebook_accuracy``). ``--train-split`` switches between the two.

Fields that a recipe leaves out take :data:`DEFAULTS`.
"""
from __future__ import annotations

import copy
from typing import Dict

__all__ = ["DEFAULTS", "RECIPES", "get", "names"]

#: Every configuration field, with the value ``python -m common.train`` uses when neither the recipe
#: nor the command line sets it.
DEFAULTS: Dict = {
    "model": None,             # a constructor in common.models, e.g. "lenet5", "ResNet", "resnet18"
    "model_args": {},          # its keyword arguments (JSON values; "block": "BasicBlock" names a class)
    "epochs": 10,
    "batch_size": 128,         # the global batch, split over the processes under torchrun
    "optimizer": "adamw",      # "adamw" or "sgd"
    "lr": 1e-3,                # the peak learning rate for "onecycle"
    "momentum": 0.9,           # SGD only
    "nesterov": False,         # SGD only
    "weight_decay": 0.0,
    "decay_1d": True,          # False: no weight decay on 1-d parameters (biases, norm scales and shifts)
    "schedule": "onecycle",    # "onecycle", "cosine" or "none"; stepped every batch
    "pct_start": 0.3,          # OneCycleLR's warm-up fraction
    "label_smoothing": 0.0,
    "crop_padding": 0,         # random crop after padding by this many pixels (0: none)
    "flip": False,             # random horizontal flip
    "train_split": "train",    # "train" (55,000; val held out) or "trainval" (60,000; no val)
    "train_limit": None,       # the first N training images only
    "seed": 0,
    "amp": False,              # mixed precision (CUDA only)
}

_LENET = {
    "notebook": "stage2_cnn/01_lenet", "label": "LeNet-5", "notebook_accuracy": 0.9105,
    "model": "lenet5", "model_args": {},
    "epochs": 12, "batch_size": 128, "optimizer": "adamw", "lr": 1e-2, "weight_decay": 1e-4,
    "schedule": "onecycle", "train_split": "train",
}
_ALEXNET = {
    "notebook": "stage2_cnn/02_alexnet", "label": "AlexNet (small)", "notebook_accuracy": 0.9103,
    "model": "alexnet",
    "model_args": {"num_classes": 10, "in_channels": 1, "stem": "small", "width": 0.25, "hidden": 1024,
                   "pool_size": 2},
    "epochs": 5, "batch_size": 128, "optimizer": "adamw", "lr": 2e-3, "weight_decay": 5e-4,
    "schedule": "onecycle", "label_smoothing": 0.1, "train_split": "train",
}
_VGG = {
    "notebook": "stage2_cnn/03_vgg", "label": "VGG-11-BN (small)", "notebook_accuracy": 0.9268,
    "model": "vgg11_bn",
    "model_args": {"in_channels": 1, "num_classes": 10, "width": 0.375, "num_stages": 3, "pool_size": 3,
                   "hidden_features": 256, "dropout": 0.2, "init_weights": False},
    "epochs": 7, "batch_size": 64, "optimizer": "adamw", "lr": 1e-2, "weight_decay": 0.05,
    "schedule": "onecycle", "train_split": "train",
}
_RESNET = {
    "notebook": "stage3_resnets/01_resnet", "label": "ResNet (small, BasicBlock [1,1,1,1])",
    "notebook_accuracy": 0.9013,
    "model": "ResNet",
    "model_args": {"block": "BasicBlock", "layers": [1, 1, 1, 1], "num_classes": 10, "zero_init_residual": True,
                   "in_channels": 1, "stem": "small", "widths": [16, 32, 64, 128]},
    "epochs": 2, "batch_size": 128, "optimizer": "sgd", "lr": 0.2, "momentum": 0.9, "nesterov": True,
    "weight_decay": 5e-4, "decay_1d": False, "schedule": "onecycle", "pct_start": 0.25,
    "label_smoothing": 0.1, "flip": True, "train_split": "train",
}
_RESNEXT_COMMON = {
    "epochs": 2, "batch_size": 64, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True,
    "weight_decay": 5e-4, "decay_1d": False, "schedule": "onecycle", "pct_start": 0.25,
    "label_smoothing": 0.1, "flip": True, "train_split": "train", "train_limit": 16_000,
}
_RESNEXT_MODEL = {"block": "Bottleneck", "layers": [1, 1, 2], "num_classes": 10, "zero_init_residual": True,
                  "in_channels": 1, "stem": "small", "widths": [8, 16, 32]}
_RESNEXT = {
    "notebook": "stage3_resnets/02_resnext", "label": "ResNeXt 8x16d (small, Bottleneck [1,1,2])",
    "notebook_accuracy": 0.7719,
    "model": "ResNet", "model_args": {**_RESNEXT_MODEL, "groups": 8, "width_per_group": 16}, **_RESNEXT_COMMON,
}
_RESNEXT_BASELINE = {
    "notebook": "stage3_resnets/02_resnext", "label": "ResNet 1x72d (small, Bottleneck [1,1,2])",
    "notebook_accuracy": 0.7586,
    "model": "ResNet", "model_args": {**_RESNEXT_MODEL, "width_per_group": 72}, **_RESNEXT_COMMON,
}
_DENSENET = {
    "notebook": "stage3_resnets/03_densenet", "label": "DenseNet-BC (small)", "notebook_accuracy": 0.9293,
    "model": "DenseNet",
    "model_args": {"growth_rate": 12, "block_config": [2, 4, 6], "num_init_features": 24, "bn_size": 2,
                   "num_classes": 10, "in_channels": 1, "small_inputs": True, "stem_stride": 2},
    "epochs": 9, "batch_size": 128, "optimizer": "sgd", "lr": 0.4, "momentum": 0.9, "nesterov": True,
    "weight_decay": 5e-5, "schedule": "onecycle", "label_smoothing": 0.1, "train_split": "train",
}
_EFFICIENTNET = {
    "notebook": "stage3_resnets/04_efficientnet", "label": "EfficientNet (small)", "notebook_accuracy": 0.8851,
    "model": "efficientnet_b0",
    "model_args": {"in_channels": 1, "stem_stride": 2, "width_mult": 0.25, "depth_mult": 0.5, "num_classes": 10,
                   "dropout": 0.1, "stochastic_depth_prob": 0.1, "stage_strides": [1, 2, 2, 1, 1, 1, 1]},
    "epochs": 3, "batch_size": 256, "optimizer": "adamw", "lr": 1e-2, "weight_decay": 0.05,
    "schedule": "onecycle", "train_split": "train",
}

#: recipe name -> configuration (plus ``notebook``, ``label`` and ``notebook_accuracy``, the test
#: accuracy of the notebook's committed default run).
RECIPES: Dict[str, Dict] = {
    "stage2_cnn/01_lenet": _LENET,
    "stage2_cnn/02_alexnet": _ALEXNET,
    "stage2_cnn/03_vgg": _VGG,
    "stage3_resnets/01_resnet": _RESNET,
    "stage3_resnets/02_resnext": _RESNEXT,
    "stage3_resnets/02_resnext/resnet": _RESNEXT_BASELINE,
    "stage3_resnets/03_densenet": _DENSENET,
    "stage3_resnets/04_efficientnet": _EFFICIENTNET,
}

#: Keys of a recipe that describe it rather than configure the training.
META = ("notebook", "label", "notebook_accuracy")


def names():
    return list(RECIPES)


def get(name: str) -> Dict:
    """The full configuration of recipe ``name``: :data:`DEFAULTS` updated by the recipe (a copy)."""
    if name not in RECIPES:
        import difflib

        close = difflib.get_close_matches(name, RECIPES, n=3, cutoff=0.3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown recipe {name!r}{hint} (known: {', '.join(RECIPES)})")
    return copy.deepcopy({**DEFAULTS, **RECIPES[name]})
