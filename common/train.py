"""Train a classifier of :mod:`common.models` on Fashion-MNIST from the command line.

Examples::

    python -m common.train --recipe stage2_cnn/01_lenet            # a notebook's model, its exact setup
    python -m common.train --list-recipes
    python -m common.train --model resnet18 --model-args '{"in_channels": 1, "num_classes": 10}' \\
        --epochs 5 --optimizer sgd --lr 0.1 --weight-decay 5e-4 --crop-padding 2 --flip
    python -m common.train --resume runs/2026-12-01-120000-lenet5/last.pt
    torchrun --nproc_per_node=2 -m common.train --recipe stage2_cnn/01_lenet   # data-parallel

Data: ``--train-split train`` (the default) trains on the 55,000 images of ``"train"`` and
validates on the 5,000 of ``"val"`` after every epoch (``best.pt`` keeps the best of them);
``--train-split trainval`` trains on all 60,000 and has no validation. The test set is evaluated
once, at the end, on the final weights.

A run writes into its folder (``--out``, default ``runs/<time>-<name>``): ``last.pt`` after every
epoch, ``best.pt`` (best val accuracy), ``results.json`` (configuration, commit, versions,
hardware, metrics per epoch, wall time). ``--resume last.pt`` continues an interrupted run and
ends with the same weights as an uninterrupted one (every state that the next epoch reads is in
the checkpoint: weights, optimizer, scheduler, gradient scaler, the torch/CUDA/Python/NumPy
generators, the data-order and augmentation generators).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import difflib
import functools
import inspect
import json
import os
import platform
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch
from torch import nn
from torch.nn import functional as F

from . import data, recipes
from .distributed import ShardedLoader, cleanup, setup
from .training import History, evaluate, fit, get_device, make_scaler, seed_everything

__all__ = ["CHECKPOINT_FORMAT", "ConfigError", "CheckpointError", "model_names", "build_model", "make_optimizer",
           "make_scheduler", "make_loss", "load_checkpoint", "run", "main"]

CHECKPOINT_FORMAT = "cv-from-scratch/checkpoint"
CHECKPOINT_VERSION = 1
ROOT = Path(__file__).resolve().parent.parent

#: Arguments that name a class of common.models (JSON cannot hold a class): argument -> allowed names.
CLASS_ARGUMENTS = {"block": ("BasicBlock", "Bottleneck")}


class ConfigError(ValueError):
    """A configuration that cannot run; the message says what was given and what is expected."""


class CheckpointError(ValueError):
    """A file that is not a checkpoint written by this project."""


# ----------------------------------------------------------------------------------------- models

def _return_class(obj):
    if inspect.isclass(obj):
        return obj
    try:
        annotation = inspect.signature(obj, eval_str=True).return_annotation
    except (NameError, TypeError, ValueError):
        return None
    return annotation if inspect.isclass(annotation) else None


@functools.lru_cache(maxsize=None)
def model_names() -> tuple:
    """The classifiers of :mod:`common.models`: constructors of a module that takes ``num_classes``."""
    from . import models

    found = []
    for name in dir(models):
        obj = getattr(models, name)
        if name.startswith("_") or not callable(obj):
            continue
        cls = _return_class(obj)
        if cls is None or not issubclass(cls, nn.Module):
            continue
        if "num_classes" in inspect.signature(cls.__init__).parameters:
            found.append(name)
    return tuple(sorted(found, key=str.lower))


def _arguments(constructor) -> tuple:
    """(names the constructor's signature shows, whether it forwards ``**kwargs`` further)."""
    params = inspect.signature(constructor).parameters
    names = {n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)} - {"self"}
    forwards = any(p.kind is p.VAR_KEYWORD for p in params.values())
    cls = _return_class(constructor)
    if forwards and cls is not None and cls is not constructor:
        names |= {n for n in inspect.signature(cls.__init__).parameters if n != "self"}
    return names, forwards


def build_model(name: str, model_args: Optional[Dict] = None) -> nn.Module:
    """``common.models.<name>(**model_args)``, with errors that say what exists and what it takes."""
    from . import models

    model_args = dict(model_args or {})
    known = model_names()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5) or \
            difflib.get_close_matches(name.lower(), [k.lower() for k in known], n=5, cutoff=0.3)
        hint = f" Close names: {', '.join(close)}." if close else ""
        raise ConfigError(f"unknown model {name!r}.{hint} The models are: {', '.join(known)}.")
    constructor = getattr(models, name)
    accepted, forwards = _arguments(constructor)

    def no_such(unknown):
        more = " (it passes **kwargs on, so there may be more)" if forwards else ""
        return ConfigError(f"{name} takes no argument {', '.join(map(repr, unknown))}; it takes: "
                           f"{', '.join(sorted(accepted))}{more}.")

    if not forwards and set(model_args) - accepted:
        raise no_such(sorted(set(model_args) - accepted))
    for key, allowed in CLASS_ARGUMENTS.items():
        if key in model_args:
            if model_args[key] not in allowed:
                raise ConfigError(f"{name}: {key} must name one of {', '.join(allowed)}, got {model_args[key]!r}")
            model_args[key] = getattr(models, model_args[key])
    try:
        model = constructor(**model_args)
    except TypeError as error:
        unexpected = re.search(r"unexpected keyword argument '(\w+)'", str(error))
        if unexpected:
            raise no_such([unexpected.group(1)]) from None
        raise ConfigError(f"{name}(**{json.dumps({k: v for k, v in model_args.items() if k not in CLASS_ARGUMENTS})}) "
                          f"failed: {error}") from error
    except ValueError as error:
        raise ConfigError(f"{name}(**{json.dumps({k: v for k, v in model_args.items() if k not in CLASS_ARGUMENTS})}) "
                          f"failed: {error}") from error
    return model


# ----------------------------------------------------------------------------------------- config

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m common.train", description="Train a common.models classifier on Fashion-MNIST.",
        epilog="A recipe sets every option; options given on the command line override it.")
    what = parser.add_argument_group("what to train")
    what.add_argument("--recipe", help="a notebook's configuration (see --list-recipes)")
    what.add_argument("--list-recipes", action="store_true", help="list the recipes and exit")
    what.add_argument("--list-models", action="store_true", help="list the model constructors and exit")
    what.add_argument("--model", help="a constructor in common.models, e.g. lenet5, resnet18, ResNet")
    what.add_argument("--model-args", help="its keyword arguments as a JSON object, e.g. '{\"in_channels\": 1}'")
    what.add_argument("--resume", metavar="CHECKPOINT", help="continue the run of this last.pt")
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int)
    opt.add_argument("--batch-size", type=int, help="global batch (split over the processes under torchrun)")
    opt.add_argument("--optimizer", choices=["adamw", "sgd"])
    opt.add_argument("--lr", type=float, help="learning rate (the peak for onecycle)")
    opt.add_argument("--momentum", type=float, help="SGD momentum")
    opt.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None)
    opt.add_argument("--weight-decay", type=float)
    opt.add_argument("--decay-1d", action=argparse.BooleanOptionalAction, default=None,
                     help="weight decay on 1-d parameters (biases, norm scales); --no-decay-1d: none")
    opt.add_argument("--schedule", choices=["onecycle", "cosine", "none"])
    opt.add_argument("--pct-start", type=float, help="OneCycleLR's warm-up fraction")
    opt.add_argument("--label-smoothing", type=float)
    opt.add_argument("--crop-padding", type=int, help="random crop after padding by this many pixels")
    opt.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None, help="random horizontal flip")
    opt.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                     help="mixed precision (bfloat16, float16 where bf16 is missing; CUDA only)")
    run = parser.add_argument_group("data and run")
    run.add_argument("--train-split", choices=["train", "trainval"])
    run.add_argument("--train-limit", type=int, help="train on the first N images only (quick runs)")
    run.add_argument("--val-limit", type=int, help="validate on the first N val images only")
    run.add_argument("--test-limit", type=int, help="test on the first N test images only")
    run.add_argument("--seed", type=int)
    run.add_argument("--threads", type=int, help="torch.set_num_threads")
    run.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: the best available)")
    run.add_argument("--out", help="the run's folder (default runs/<time>-<name>)")
    run.add_argument("--stop-after", type=int, metavar="EPOCH",
                     help="stop after this epoch, as if interrupted (resume later with --resume)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    for action in parser._actions:                  # options default to None, so that a recipe's values stay
        if action.dest in recipes.DEFAULTS and action.dest not in ("model", "model_args"):
            default = recipes.DEFAULTS[action.dest]
            shown = "all" if default is None else default
            action.help = f"{action.help + ' ' if action.help else ''}(default: {shown})"
    return parser


#: command-line options that belong to the run, not to the training configuration
_RUN_OPTIONS = ("recipe", "list_recipes", "list_models", "resume", "val_limit", "test_limit", "threads", "device",
                "out", "stop_after", "no_progress")
#: run options kept in the checkpoint, so that --resume evaluates on the same images
_KEPT_OPTIONS = ("val_limit", "test_limit")


def make_config(args: argparse.Namespace) -> Dict:
    """Defaults, updated by the recipe, updated by every option given on the command line."""
    try:
        config = recipes.get(args.recipe) if args.recipe else dict(recipes.DEFAULTS, model_args={})
    except KeyError as error:
        raise ConfigError(error.args[0]) from None
    if args.recipe:
        config["recipe"] = args.recipe
    config.update({key: getattr(args, key) for key in _KEPT_OPTIONS})
    for key, value in vars(args).items():
        if key in _RUN_OPTIONS or value is None:
            continue
        if key == "model_args":
            try:
                value = json.loads(value)
            except json.JSONDecodeError as error:
                raise ConfigError(f"--model-args is not valid JSON ({error.msg} at character {error.pos}): "
                                  f"{value!r}; write an object such as '{{\"in_channels\": 1, \"num_classes\": 10}}'") from None
            if not isinstance(value, dict):
                raise ConfigError(f"--model-args must be a JSON object {{...}}, got {type(value).__name__}: {value!r}")
        config[key] = value
    if args.model and args.recipe and args.model != recipes.get(args.recipe)["model"] and args.model_args is None:
        config["model_args"] = {}
    if not config.get("model"):
        raise ConfigError("say what to train: --model NAME (see --list-models) or --recipe NAME (see --list-recipes)")
    for key, low in (("epochs", 1), ("batch_size", 1)):
        if config[key] < low:
            raise ConfigError(f"--{key.replace('_', '-')} must be at least {low}, got {config[key]}")
    if config["train_limit"] is not None and config["train_limit"] < 1:
        raise ConfigError(f"--train-limit must be positive, got {config['train_limit']}")
    return config


# ----------------------------------------------------------------------------------------- pieces

def make_loss(label_smoothing: float):
    """Cross-entropy, with label smoothing if ``label_smoothing`` > 0."""
    if label_smoothing:
        return functools.partial(F.cross_entropy, label_smoothing=label_smoothing)
    return F.cross_entropy


def make_optimizer(model: nn.Module, config: Dict) -> torch.optim.Optimizer:
    """The optimizer a configuration (e.g. ``recipes.get(name)``) asks for, over ``model``'s parameters."""
    wd = config["weight_decay"]
    if config["decay_1d"]:
        params = model.parameters()
        kwargs = {"weight_decay": wd}
    else:
        params = [{"params": [p for p in model.parameters() if p.dim() > 1], "weight_decay": wd},
                  {"params": [p for p in model.parameters() if p.dim() <= 1], "weight_decay": 0.0}]
        kwargs = {}
    if config["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=config["lr"], momentum=config["momentum"], nesterov=config["nesterov"],
                               **kwargs)
    if config["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=config["lr"], **kwargs)
    raise ConfigError(f"optimizer must be adamw or sgd, got {config['optimizer']!r}")


def make_scheduler(optimizer, config: Dict, steps_per_epoch: int):
    """The per-step learning-rate schedule of a configuration (None for "none")."""
    total = config["epochs"] * steps_per_epoch
    if config["schedule"] == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config["lr"], total_steps=total,
                                                   pct_start=config["pct_start"])
    if config["schedule"] == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if config["schedule"] == "none":
        return None
    raise ConfigError(f"schedule must be onecycle, cosine or none, got {config['schedule']!r}")


def _rng_state(loader, augment) -> Dict:
    state = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
             "data_order": loader.generator.get_state(), "augment": augment.generator.get_state()}
    version, mt, gauss = random.getstate()
    state["python"] = {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss}
    try:
        import numpy

        kind, keys, pos, has_gauss, cached = numpy.random.get_state()
        state["numpy"] = {"kind": kind, "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                          "has_gauss": int(has_gauss), "cached": float(cached)}
    except ImportError:
        pass
    return state


def _set_rng_state(state: Dict, loader, augment) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    loader.generator.set_state(state["data_order"])
    augment.generator.set_state(state["augment"])
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    if "numpy" in state:
        import numpy

        np_state = state["numpy"]
        numpy.random.set_state((np_state["kind"], np_state["keys"].numpy().astype("uint32"), np_state["pos"],
                                np_state["has_gauss"], np_state["cached"]))


def load_checkpoint(path, map_location="cpu") -> Dict:
    """A checkpoint of this project (``weights_only=True``), or a :class:`CheckpointError` saying why not."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same explanation
        raise CheckpointError(f"{path} is not a checkpoint of this project: torch.load(weights_only=True) cannot "
                              f"read it ({type(error).__name__}); it was not written by torch.save, or it holds "
                              f"objects other than tensors and plain values") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        kind = type(checkpoint).__name__
        if isinstance(checkpoint, dict) and checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            kind = "a plain state_dict (parameter name -> tensor) without the configuration to rebuild the model"
        raise CheckpointError(f"{path} is not a checkpoint of this project (written by python -m common.train); "
                              f"it holds {kind}.")
    if checkpoint.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {checkpoint.get('version')}, this code reads "
                              f"version {CHECKPOINT_VERSION}")
    return checkpoint


def _save(obj: Dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _hardware(device: torch.device, world_size: int) -> Dict:
    info = {"device": str(device), "processes": world_size, "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _default_out(config: Dict) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = (config.get("recipe") or config["model"]).replace("/", "-")
    return ROOT / "runs" / f"{stamp}-{name}"


def _log(is_main: bool, *parts) -> None:
    if is_main:
        print(*parts, flush=True)


# ----------------------------------------------------------------------------------------- main

def run(config: Dict, *, out: Optional[Path] = None, resume: Optional[Dict] = None, device=None,
        val_limit: Optional[int] = None, test_limit: Optional[int] = None, stop_after: Optional[int] = None,
        progress: bool = True) -> Dict:
    """Train as ``config`` says; return the summary that ``results.json`` holds (rank 0) or ``{}``."""
    ctx = setup(get_device(device))
    try:
        summary = _run(config, ctx, out, resume, val_limit, test_limit, stop_after, progress)
        if ctx.distributed:
            torch.distributed.barrier()          # the other ranks wait for rank 0's test evaluation and files
        return summary
    finally:
        cleanup()


def _run(config, ctx, out, resume, val_limit, test_limit, stop_after, progress) -> Dict:
    device, main_rank = ctx.device, ctx.is_main
    if config["batch_size"] % ctx.world_size:
        raise ConfigError(f"--batch-size {config['batch_size']} (the global batch) is not a multiple of the "
                          f"{ctx.world_size} processes")
    seed_everything(config["seed"])
    model = build_model(config["model"], config["model_args"])      # built on every rank from the same seed
    model.to(device)
    augment = data.Augment(config["crop_padding"], config["flip"], seed=config["seed"] + 1)
    x_train, y_train = data.fashion_mnist(config["train_split"], limit=config["train_limit"])
    loader_kwargs = dict(batch_size=config["batch_size"], shuffle=True, seed=config["seed"],
                         transform=augment if augment else None)
    if ctx.distributed:
        train_loader = ShardedLoader(x_train, y_train, rank=ctx.rank, world_size=ctx.world_size, **loader_kwargs)
    else:
        train_loader = data.TensorLoader(x_train, y_train, **loader_kwargs)
    val_loader = None
    if config["train_split"] == "train" and main_rank:
        val_loader = data.TensorLoader(*data.fashion_mnist("val", limit=val_limit), batch_size=1000)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config, len(train_loader))
    scaler = make_scaler(device, config["amp"])
    history, start_epoch, wall = History(), 0, 0.0
    best = {"val_acc": None, "epoch": None}
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(resume["scheduler"])
        if scaler is not None and resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        history = History(**resume["history"])
        start_epoch, wall, best = resume["epoch"], resume["wall_seconds"], dict(resume["best"])
    if ctx.distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    inner = model.module if ctx.distributed else model
    out = Path(out) if out is not None else _default_out(config)
    summary = {"config": config, "out": str(out), "git_commit": _git_commit(), "torch": torch.__version__,
               "python": platform.python_version(), "hardware": _hardware(device, ctx.world_size),
               "train_images": train_loader.num_examples}
    if main_rank:
        out.mkdir(parents=True, exist_ok=True)
        _log(True, f"{config.get('recipe') or config['model']}: {train_loader.num_examples:,} {config['train_split']} "
                   f"images, {'val ' + str(val_loader.num_examples) if val_loader else 'no val (trainval)'}, "
                   f"{config['epochs']} epochs, batch {config['batch_size']} on {ctx.world_size} process(es), "
                   f"{device}; writing {out}")
    if config["amp"] and device.type != "cuda":
        _log(main_rank, f"--amp: mixed precision is for CUDA only; on {device.type} this run stays in float32")
    if resume is not None:
        _set_rng_state(resume["rng"], train_loader, augment)   # last: nothing may draw between this and fit
        _log(main_rank, f"resumed after epoch {start_epoch} of {config['epochs']}")
    clock = time.perf_counter()

    def write_results(status: str, extra: Optional[Dict] = None) -> Dict:
        summary.update(status=status, epochs_done=history.epochs, wall_seconds=round(wall + time.perf_counter() - clock, 2),
                       history=dataclasses.asdict(history), best=best, **(extra or {}))
        (out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
        return summary

    def on_epoch_end(epoch: int, hist: History) -> None:
        if not main_rank:
            return
        state = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": config, "epoch": epoch,
                 "model": inner.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict() if scheduler is not None else None,
                 "scaler": scaler.state_dict() if scaler is not None else None,
                 "rng": _rng_state(train_loader, augment), "history": dataclasses.asdict(hist), "best": best,
                 "wall_seconds": wall + time.perf_counter() - clock, "world_size": ctx.world_size}
        if hist.val_acc and (best["val_acc"] is None or hist.val_acc[-1] > best["val_acc"]):
            best.update(val_acc=hist.val_acc[-1], epoch=epoch)
            state["best"] = dict(best)
            _save(state, out / "best.pt")
        _save(state, out / "last.pt")
        write_results("running")

    epochs = config["epochs"] if stop_after is None else min(config["epochs"], stop_after)
    if start_epoch < epochs:
        fit(model, train_loader, epochs=config["epochs"], optimizer=optimizer, scheduler=scheduler,
            loss_fn=make_loss(config["label_smoothing"]), val_loader=val_loader, device=device, amp=config["amp"],
            progress=progress and main_rank, verbose=main_rank, desc=config["model"], start_epoch=start_epoch,
            history=history, scaler=scaler, on_epoch_end=on_epoch_end, stop_epoch=epochs)
    if not main_rank:
        return {}
    if history.epochs < config["epochs"]:
        _log(True, f"stopped after epoch {history.epochs} of {config['epochs']}; continue with "
                   f"python -m common.train --resume {out / 'last.pt'}")
        return write_results("stopped")
    test_loader = data.TensorLoader(*data.fashion_mnist("test", limit=test_limit), batch_size=1000)
    test_loss, test_acc = evaluate(inner, test_loader, device=device, amp=config["amp"])
    extra = {"test_acc": test_acc, "test_loss": test_loss, "test_images": test_loader.num_examples,
             "recipe_unchanged": bool(config.get("recipe")) and test_limit is None
             and _same_training(config, recipes.get(config["recipe"]))}
    line = f"test accuracy {test_acc:.2%} ({test_loader.num_examples:,} images, final weights)"
    if extra["recipe_unchanged"]:
        line += f"; the notebook's run printed {config['notebook_accuracy']:.2%}"
    _log(True, line)
    return write_results("done", extra)


def _same_training(config: Dict, recipe: Dict) -> bool:
    """Whether ``config`` trains exactly as ``recipe`` (only the run options, e.g. threads, may differ)."""
    return all(config.get(key) == value for key, value in recipe.items() if key in recipes.DEFAULTS)


def _list_recipes() -> str:
    rows = [f"{'recipe':<34} {'model':<16} {'epochs':>6} {'batch':>5} {'images':>7} {'notebook acc':>12}"]
    for name in recipes.names():
        r = recipes.get(name)
        images = r["train_limit"] or (60_000 if r["train_split"] == "trainval" else 55_000)
        rows.append(f"{name:<34} {r['model']:<16} {r['epochs']:>6} {r['batch_size']:>5} {images:>7,} "
                    f"{r['notebook_accuracy']:>12.2%}")
    return "\n".join(rows)


def main(argv: Optional[List[str]] = None) -> Dict:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.list_recipes:
        print(_list_recipes())
        return {}
    if args.list_models:
        print("\n".join(model_names()))
        return {}
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.resume:
            checkpoint = load_checkpoint(args.resume)
            given = [k for k, v in vars(args).items() if v is not None and k not in _RUN_OPTIONS]
            if given:
                raise ConfigError(f"--resume continues the checkpoint's configuration; drop {', '.join(given)}")
            out = Path(args.out) if args.out else Path(args.resume).parent
            config = checkpoint["config"]
            limits = {key: getattr(args, key) if getattr(args, key) is not None else config.get(key)
                      for key in _KEPT_OPTIONS}
            return run(config, out=out, resume=checkpoint, device=args.device, stop_after=args.stop_after,
                       progress=not args.no_progress, **limits)
        config = make_config(args)
        build_model(config["model"], config["model_args"])           # fail before loading any data
        return run(config, out=args.out, device=args.device, val_limit=config["val_limit"],
                   test_limit=config["test_limit"], stop_after=args.stop_after, progress=not args.no_progress)
    except (ConfigError, CheckpointError) as error:
        parser.error(str(error))


if __name__ == "__main__":
    main()
