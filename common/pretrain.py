"""Self-supervised pretraining from the command line: MAE (5.1), SimCLR (5.2) or MoCo v2 (5.3), then kNN and a probe.

Examples::

    python -m common.pretrain --method moco --seconds 600            # MoCo v2 as in 5.3, ten minutes
    python -m common.pretrain --method simclr --steps 2000 --out runs/simclr-long
    python -m common.pretrain --method mae --seconds 600 --batch-size 256 --lr 1.5e-3 --weight-decay 0.05
    python -m common.results runs/                                   # the table of runs (classifiers and these)

The pretraining loop is the notebooks' own: for SimCLR and MoCo the small CNN encoder and projection head of 5.2,
both views made by ``SimCLRAugment`` on the device; for MAE the tiny MAE of 5.1 (``mae_vit_tiny_patch7``, plain-pixel
targets, mask ratio 0.75, random flips, AdamW betas (0.9, 0.95) with no decay on biases, norms and tokens, its
features mean- or class-token-pooled, the pooling chosen on val by kNN as in 5.1). All use AdamW with a linear
warm-up (5%) and a cosine decay over the budget (wall-clock ``--seconds`` or ``--steps``) on the 55,000 ``train``
images without labels. (The defaults of ``--batch-size``, ``--lr`` and ``--weight-decay`` are SimCLR's and MoCo's;
5.1 trained MAE with 256, 1.5e-3 and 0.05.) At the end the frozen encoder is scored
with :mod:`common.probe` exactly as in the notebooks: kNN (k = 20, cosine, T = 0.07) and a linear probe, its
weight decay chosen on ``val``, with the first ``--bank`` train images as memory and probe training set; the test
split is read once, after the choice. The run folder gets ``encoder.pt`` (the encoder's state_dict and the
configuration, loadable with ``torch.load(..., weights_only=True)``) and ``results.json`` (configuration, commit,
torch version, hardware, loss per pass, val and test scores, wall time).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch
from tqdm.auto import tqdm

from . import data
from .models.mae import MAEFeatures, mae_vit_tiny_patch7
from .models.moco import moco_small
from .models.simclr import ConvEncoder, SimCLRAugment, nt_xent, simclr_small
from .probe import extract_features, knn_accuracy, linear_probe, probe_accuracy
from .train import ConfigError, _git_commit, _hardware
from .training import get_device, seed_everything, warmup_cosine

__all__ = ["METHODS", "make_config", "run", "load_encoder", "main"]

METHODS = ("mae", "simclr", "moco")
_TEMPERATURE = {"simclr": 0.5, "moco": 0.2, "mae": None}      # 5.2's choice on val; MoCo v2's; MAE has none


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m common.pretrain", description=__doc__.split("\n")[0])
    parser.add_argument("--method", choices=METHODS, required=True)
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--seconds", type=float, help="wall-clock budget of the pretraining")
    budget.add_argument("--steps", type=int, help="optimizer steps of the pretraining")
    parser.add_argument("--batch-size", type=int, default=128, help="images per step (two views each)")
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--temperature", type=float, default=None, help="default: 0.5 SimCLR, 0.2 MoCo")
    parser.add_argument("--width", type=int, default=32, help="ConvEncoder width (features: 4 x width)")
    parser.add_argument("--queue-size", type=int, default=4096, help="MoCo only")
    parser.add_argument("--momentum", type=float, default=0.99, help="MoCo only")
    parser.add_argument("--groups", type=int, default=1, help="MoCo only: BatchNorm groups (simulated devices)")
    parser.add_argument("--no-shuffle", action="store_true", help="MoCo only: no shuffle-BN across the groups")
    parser.add_argument("--bank", type=int, default=20_000, help="train images used as kNN memory and probe set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--val-limit", type=int, default=None)
    parser.add_argument("--test-limit", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: runs/pretrain-METHOD-TIME)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def make_config(args: argparse.Namespace) -> Dict:
    """The run's configuration as a dict of JSON values, every value checked."""
    config = {"method": args.method, "seconds": args.seconds, "steps": args.steps, "batch_size": args.batch_size,
              "lr": args.lr, "weight_decay": args.weight_decay,
              "temperature": args.temperature if args.temperature is not None else _TEMPERATURE[args.method],
              "width": args.width, "bank": args.bank, "seed": args.seed, "train_limit": args.train_limit,
              "val_limit": args.val_limit, "test_limit": args.test_limit}
    if args.method == "moco":
        config.update(queue_size=args.queue_size, momentum=args.momentum, groups=args.groups,
                      shuffle=not args.no_shuffle)
    if (args.seconds is not None and not args.seconds > 0) or (args.steps is not None and args.steps < 1):
        raise ConfigError(f"the budget must be positive, got --seconds {args.seconds} / --steps {args.steps}")
    for name in ("batch_size", "width", "bank"):
        if name in config and config[name] < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {config[name]}")
    if args.method == "simclr" and config["batch_size"] < 2:
        raise ConfigError("SimCLR needs --batch-size >= 2 (the other images of the batch are its negatives)")
    if args.method == "moco":
        if config["queue_size"] < config["batch_size"]:
            raise ConfigError(f"--queue-size ({config['queue_size']}) must hold at least one batch "
                              f"(--batch-size {config['batch_size']})")
        if not 0 <= config["momentum"] <= 1:
            raise ConfigError(f"--momentum is in [0, 1], got {config['momentum']}")
        if config["groups"] < 1 or config["batch_size"] % config["groups"]:
            raise ConfigError(f"--groups ({config['groups']}) must divide --batch-size ({config['batch_size']})")
    if args.method == "mae":
        config.pop("width")                                   # the tiny MAE's size is fixed (5.1)
        config["mask_ratio"] = 0.75
    elif not config["temperature"] > 0:
        raise ConfigError(f"--temperature must be > 0, got {config['temperature']}")
    return config


def _model(config: Dict):
    if config["method"] == "mae":
        return mae_vit_tiny_patch7(norm_pix_loss=False)
    if config["method"] == "simclr":
        return simclr_small(width=config["width"])
    return moco_small(width=config["width"], queue_size=config["queue_size"], momentum=config["momentum"],
                      temperature=config["temperature"], groups=config["groups"], shuffle=config["shuffle"])


def _pretrain(model, config: Dict, images: torch.Tensor, device, progress: bool) -> Dict:
    augment = SimCLRAugment(mean=data.MEAN, std=data.STD)
    if config["method"] == "mae":                               # 5.1: no decay on biases, norms, tokens
        named = list(model.named_parameters())
        exempt = {n for n, p in named if p.dim() <= 1 or n.endswith(("cls_token", "mask_token"))}
        groups = [{"params": [p for n, p in named if n not in exempt], "weight_decay": config["weight_decay"]},
                  {"params": [p for n, p in named if n in exempt], "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW(groups, lr=config["lr"], betas=(0.9, 0.95))
    else:
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config["lr"],
                                      weight_decay=config["weight_decay"])
    batch = config["batch_size"]
    loader = data.TensorLoader(images, batch_size=batch, shuffle=True, drop_last=True, seed=config["seed"])
    generator = torch.Generator(device=device).manual_seed(config["seed"])
    log = {"loss": [], "pass_loss": [], "pass_seconds": [], "steps": 0}
    total = config["seconds"] if config["seconds"] is not None else config["steps"]
    bar = tqdm(total=round(total), unit="s" if config["seconds"] is not None else "step", disable=not progress,
               desc=f"{config['method']} pretraining")
    start, done = time.perf_counter(), False
    while not done:
        pass_start, losses = time.perf_counter(), []
        for (x,) in loader:
            elapsed = time.perf_counter() - start
            share = elapsed / config["seconds"] if config["seconds"] is not None else log["steps"] / config["steps"]
            if share >= 1:
                done = True
                break
            for group in optimizer.param_groups:
                group["lr"] = config["lr"] * warmup_cosine(share, 0.05)
            x = x.to(device)
            if config["method"] == "mae":                                            # a random flip, then MAE
                flip = torch.rand(x.shape[0], generator=generator, device=device) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
                loss, _, _ = model(x, config["mask_ratio"])
            elif config["method"] == "moco":
                loss, _ = model(augment(x, generator), augment(x, generator), generator)
            else:
                projections = model(torch.cat([augment(x, generator), augment(x, generator)]))   # (2B, d)
                loss = nt_xent(projections[:batch], projections[batch:], config["temperature"])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the loss became {loss.item()} at step {log['steps']}; lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            log["steps"] += 1
            losses.append(loss.item())
            bar.n = min(round(time.perf_counter() - start), round(total)) if config["seconds"] else log["steps"]
            bar.refresh()
        if losses:
            log["pass_loss"].append(sum(losses) / len(losses))
            log["pass_seconds"].append(time.perf_counter() - pass_start)
        log["loss"].extend(losses)
    bar.close()
    log["seconds"] = time.perf_counter() - start
    return log


def run(config: Dict, *, out: Optional[Path] = None, device=None, progress: bool = True) -> Dict:
    """Pretrain, score the frozen encoder (kNN and linear probe, val then test once) and write the run folder."""
    wall_start = time.perf_counter()
    device = torch.device(device) if device is not None else get_device()
    seed_everything(config["seed"])
    train, val, test = data.loaders(batch_size=config["batch_size"], val=True, train_limit=config["train_limit"],
                                    val_limit=config["val_limit"], test_limit=config["test_limit"])
    train_images, train_labels = train.tensors
    if config["bank"] > train_images.shape[0]:
        raise ConfigError(f"--bank ({config['bank']}) is larger than the {train_images.shape[0]} training images")
    if train_images.shape[0] < config["batch_size"]:
        raise ConfigError(f"--batch-size ({config['batch_size']}) is larger than the {train_images.shape[0]} "
                          f"training images")
    out = Path(out) if out is not None else Path("runs") / f"pretrain-{config['method']}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    model = _model(config).to(device)
    log = _pretrain(model, config, train_images, device, progress)
    bank_x, bank_y = train_images[:config["bank"]], train_labels[:config["bank"]]
    (val_x, val_y), (test_x, test_y) = val.tensors, test.tensors
    if config["method"] == "mae":                               # 5.1: the pooling of the features, chosen on val
        pooled = {}
        for pooling in ("mean", "cls"):
            view = MAEFeatures(model.encoder, pooling).eval()
            bank, val_features = (extract_features(view, x, device=device) for x in (bank_x, val_x))
            pooled[pooling] = (knn_accuracy(bank, bank_y, val_features, val_y), view, bank, val_features)
        config["pooling"] = max(pooled, key=lambda name: pooled[name][0])   # ties: mean
        _, encoder, bank, val_features = pooled[config["pooling"]]
    else:
        encoder = model.encoder.eval()
        bank = extract_features(encoder, bank_x, device=device)
        val_features = extract_features(encoder, val_x, device=device)
    probe, report = linear_probe(bank, bank_y, val_features, val_y)
    scores = {"val_knn": knn_accuracy(bank, bank_y, val_features, val_y), "val_probe": report["val_accuracy"],
              "probe_weight_decay": report["weight_decay"]}
    test_features = extract_features(encoder, test_x, device=device)               # the test split, once
    scores.update(test_knn=knn_accuracy(bank, bank_y, test_features, test_y),
                  test_probe=probe_accuracy(probe, test_features, test_y))
    torch.save({"format": "common.pretrain encoder", "config": config, "encoder": model.encoder.state_dict()},
               out / "encoder.pt")
    passes = log["steps"] * config["batch_size"] / train_images.shape[0]
    summary = {
        "config": {**config, "model": ("mae_vit_tiny_patch7 encoder" if config["method"] == "mae"
                                       else f"{config['method']} ConvEncoder(width={config['width']})"),
                   "epochs": f"{passes:.2f} passes"},
        "kind": "pretrain", "status": "finished", "epochs_done": f"{log['steps']} steps",
        "history": {"train_loss": log["pass_loss"], "pass_seconds": log["pass_seconds"]},
        "steps": log["steps"], "pretrain_seconds": log["seconds"], "scores": scores,
        "best": {"val_acc": scores["val_probe"]}, "test_acc": scores["test_probe"],
        "commit": _git_commit(), "torch": torch.__version__, "hardware": _hardware(device, 1),
        "wall_seconds": time.perf_counter() - wall_start,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def load_encoder(path):
    """The pretrained encoder of a run's ``encoder.pt``, in eval mode: the ``ConvEncoder`` (SimCLR, MoCo), or for
    MAE the ``MAEFeatures`` view (images -> pooled features, the pooling chosen on val); a clear error otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (a run folder of python -m common.pretrain has encoder.pt)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:                                            # not a torch file, or not weights only
        raise ValueError(f"{path} is not an encoder checkpoint of python -m common.pretrain ({error})") from None
    if not isinstance(state, dict) or state.get("format") != "common.pretrain encoder":
        raise ValueError(f"{path} is not an encoder checkpoint of python -m common.pretrain")
    if state["config"]["method"] == "mae":
        encoder = mae_vit_tiny_patch7().encoder
        encoder.load_state_dict(state["encoder"])
        return MAEFeatures(encoder, state["config"]["pooling"]).eval()
    encoder = ConvEncoder(state["config"]["width"])
    encoder.load_state_dict(state["encoder"])
    return encoder.eval()


def main(argv: Optional[List[str]] = None) -> Dict:
    args = _parser().parse_args(argv)
    try:
        config = make_config(args)
        summary = run(config, out=args.out, progress=not args.quiet)
    except ConfigError as error:
        raise SystemExit(f"python -m common.pretrain: error: {error}") from None
    s = summary["scores"]
    print(f"{config['method']}: {summary['steps']} steps in {summary['pretrain_seconds']:.0f} s "
          f"({summary['config']['epochs']}); val kNN {s['val_knn']:.2%}, val probe {s['val_probe']:.2%} "
          f"(weight decay {s['probe_weight_decay']:g}); test kNN {s['test_knn']:.2%}, test probe {s['test_probe']:.2%}; "
          f"wall {summary['wall_seconds'] / 60:.1f} min")
    return summary


if __name__ == "__main__":
    main()
