"""Pretraining from the command line: MAE (5.1), SimCLR (5.2), MoCo v2 (5.3) or CLIP (6.2), then scores.

Examples::

    python -m common.pretrain --method moco --seconds 600            # MoCo v2 as in 5.3, ten minutes
    python -m common.pretrain --method simclr --steps 2000 --out runs/simclr-long
    python -m common.pretrain --method mae --seconds 600 --batch-size 256 --lr 1.5e-3 --weight-decay 0.05
    python -m common.pretrain --method clip --seconds 900                 # 6.2's small CLIP, fifteen minutes
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

CLIP trains 6.2's ``clip_tiny`` on captioned Fashion-MNIST (:mod:`common.captions`, the ``train`` split's pairs)
with 6.2's recipe (AdamW betas (0.9, 0.98), eps 1e-6, decay on matrices only, the learned temperature clamped at
100; ``--lr`` 1e-3 and ``--weight-decay`` 0.1 by default for this method). It is scored as in 6.2: zero-shot
classification with the prompt set and rule (mean of unit vectors, or probabilities summed per class) chosen on
``val``, retrieval of the held-out captions (text to image and image to text, R@1/5/10) and a linear probe of the
image features; ``encoder.pt`` holds the whole CLIP, and :func:`load_encoder` gives it back.
The training alone, without the scores, is :func:`train_clip` (for notebooks that condition on a trained CLIP).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch
from tqdm.auto import tqdm

from . import captions, data
from .models.clip import CLIP, clamp_logit_scale_, clip_loss, clip_tiny, l2_normalize, recall_at_k, zero_shot_classifier
from .models.mae import MAEFeatures, mae_vit_tiny_patch7
from .models.moco import moco_small
from .models.simclr import ConvEncoder, SimCLRAugment, nt_xent, simclr_small
from .probe import extract_features, knn_accuracy, linear_probe, probe_accuracy
from .train import ConfigError, _git_commit, _hardware
from .training import get_device, seed_everything, warmup_cosine

__all__ = ["METHODS", "make_config", "run", "train_clip", "load_encoder", "main"]

METHODS = ("mae", "simclr", "moco", "clip")
_TEMPERATURE = {"simclr": 0.5, "moco": 0.2, "mae": None, "clip": None}   # 5.2's; MoCo v2's; MAE none; CLIP learns it
_LR = {"clip": 1e-3}                                          # 6.2's; the others default to 5.2's 5e-3
_WEIGHT_DECAY = {"clip": 0.1}                                 # 6.2's; the others default to 5.2's 1e-4


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m common.pretrain", description=__doc__.split("\n")[0])
    parser.add_argument("--method", choices=METHODS, required=True)
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--seconds", type=float, help="wall-clock budget of the pretraining")
    budget.add_argument("--steps", type=int, help="optimizer steps of the pretraining")
    parser.add_argument("--batch-size", type=int, default=128, help="images per step (two views each)")
    parser.add_argument("--lr", type=float, default=None, help="default 5e-3 (CLIP: 1e-3)")
    parser.add_argument("--weight-decay", type=float, default=None, help="default 1e-4 (CLIP: 0.1)")
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
              "lr": args.lr if args.lr is not None else _LR.get(args.method, 5e-3),
              "weight_decay": args.weight_decay if args.weight_decay is not None
              else _WEIGHT_DECAY.get(args.method, 1e-4),
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
    elif args.method == "clip":
        config.pop("width")                                   # 6.2's clip_tiny sizes
        config.pop("temperature")                             # learned, from 1 / 0.07
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

    def step_loss(x):
        x = x.to(device)
        if config["method"] == "mae":                                            # a random flip, then MAE
            flip = torch.rand(x.shape[0], generator=generator, device=device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            return model(x, config["mask_ratio"])[0]
        if config["method"] == "moco":
            return model(augment(x, generator), augment(x, generator), generator)[0]
        projections = model(torch.cat([augment(x, generator), augment(x, generator)]))      # (2B, d)
        return nt_xent(projections[:batch], projections[batch:], config["temperature"])

    return _loop(optimizer, loader, config, step_loss, progress)


def _loop(optimizer, loader, config: Dict, step_loss, progress: bool, after_step=None) -> Dict:
    """The loop of every method: ``step_loss(*batch)`` -> loss, AdamW with warm-up and cosine over the budget
    (wall-clock seconds or steps), ``after_step()`` after each optimiser step; returns the log of losses."""
    log = {"loss": [], "pass_loss": [], "pass_seconds": [], "steps": 0}
    total = config["seconds"] if config["seconds"] is not None else config["steps"]
    bar = tqdm(total=round(total), unit="s" if config["seconds"] is not None else "step", disable=not progress,
               desc=f"{config['method']} pretraining")
    start, done = time.perf_counter(), False
    while not done:
        pass_start, losses = time.perf_counter(), []
        for batch in loader:
            elapsed = time.perf_counter() - start
            share = elapsed / config["seconds"] if config["seconds"] is not None else log["steps"] / config["steps"]
            if share >= 1:
                done = True
                break
            for group in optimizer.param_groups:
                group["lr"] = config["lr"] * warmup_cosine(share, 0.05)
            loss = step_loss(*batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the loss became {loss.item()} at step {log['steps']}; lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step()
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



_CLIP_EMBEDDINGS = ("positional_embedding", "class_embedding", "token_embedding.weight")


def _pretrain_clip(model: CLIP, config: Dict, pairs, device, progress: bool) -> Dict:
    """6.2's loop: batches of (image, caption) pairs, the symmetric loss, the scale clamped after each step."""
    named = list(model.named_parameters())
    exempt = {n for n, p in named if p.dim() < 2 or n.endswith(_CLIP_EMBEDDINGS)}
    groups = [{"params": [p for n, p in named if n not in exempt], "weight_decay": config["weight_decay"]},
              {"params": [p for n, p in named if n in exempt], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=config["lr"], betas=(0.9, 0.98), eps=1e-6)
    tokens = captions.tokenize(pairs.captions)                                       # (N, 16)
    loader = data.TensorLoader(pairs.images, tokens, batch_size=config["batch_size"], shuffle=True, drop_last=True,
                               seed=config["seed"])
    step_loss = lambda images, text: clip_loss(*model(images.to(device), text.to(device)))
    return _loop(optimizer, loader, config, step_loss, progress, after_step=lambda: clamp_logit_scale_(model))


#: 6.2's prompt sets: the bare class, common.captions.TEMPLATES, and the 36 attribute captions of a class.
CLIP_PROMPT_SETS = {"bare class": ("{a} {c}",), "templates": captions.TEMPLATES,
                    "attribute captions": tuple(captions.CAPTIONS[j].replace("a t-shirt", "{a} {c}", 1)
                                                for j in range(len(captions.CAPTIONS) // len(captions.CLASS_WORDS)))}


@torch.no_grad()
def _image_units(model: CLIP, images: torch.Tensor, device) -> torch.Tensor:
    return torch.cat([l2_normalize(model.encode_image(images[i:i + 1000].to(device))).cpu()
                      for i in range(0, images.shape[0], 1000)])


@torch.no_grad()
def _zero_shot(model: CLIP, units: torch.Tensor, templates, rule: str, device) -> torch.Tensor:
    """Class predictions: 'mean' = CLIP's ensemble of unit prompt vectors, 'marginal' = summed probabilities."""
    class_prompts = captions.prompts(templates)
    if rule == "mean":
        return (units @ zero_shot_classifier(model, class_prompts, captions.tokenize).cpu().T).argmax(dim=1)
    prompt_units = l2_normalize(model.encode_text(captions.tokenize(sum(class_prompts, [])).to(device))).cpu()
    probabilities = (model.logit_scale.exp().item() * units @ prompt_units.T).softmax(dim=1)
    return probabilities.reshape(units.shape[0], len(class_prompts), -1).sum(dim=2).argmax(dim=1)


@torch.no_grad()
def clip_retrieval(model: CLIP, units: torch.Tensor, combos: torch.Tensor, device) -> Dict:
    """R@1/5/10 of the held-out captions present in ``combos`` (caption ids of the images ``units``): text to image,
    and image to text among those captions; a hit is an image (a caption) equal to the query's caption."""
    queries = sorted(set(combos.tolist()))
    text = l2_normalize(model.encode_text(captions.tokenize([captions.CAPTIONS[c] for c in queries]).to(device))).cpu()
    relevant = torch.tensor(queries)[:, None] == combos[None, :]                    # (Q, G)
    similarity = text @ units.T
    named = lambda recalls: {f"R@{k}": value for k, value in recalls.items()}
    return {"text_to_image": named(recall_at_k(similarity, relevant)),
            "image_to_text": named(recall_at_k(similarity.T, relevant.T))}


def train_clip(pairs, *, seconds: Optional[float] = None, steps: Optional[int] = None, batch_size: int = 128,
               lr: float = _LR["clip"], weight_decay: float = _WEIGHT_DECAY["clip"], seed: int = 0, device=None,
               progress: bool = True):
    """6.2's ``clip_tiny`` trained on ``pairs`` (a :class:`common.captions.Captioned`) with 6.2's recipe, for
    ``seconds`` of wall-clock time or ``steps`` optimizer steps (exactly one): ``(model in eval mode, log)``, the
    log holding the loss of every step, ``steps`` and ``seconds``. For notebooks that need a trained CLIP (6.3, 6.4)."""
    if (seconds is None) == (steps is None):
        raise ValueError(f"train_clip needs exactly one budget, seconds=... or steps=..., got {seconds}, {steps}")
    if (seconds is not None and not seconds > 0) or (steps is not None and steps < 1):
        raise ValueError(f"the budget must be positive, got seconds={seconds}, steps={steps}")
    if not isinstance(pairs, captions.Captioned):
        raise TypeError(f"pairs must be a common.captions.Captioned, got {type(pairs).__name__}")
    if not 1 <= batch_size <= len(pairs):
        raise ValueError(f"batch_size must be in 1..{len(pairs)} (the number of pairs), got {batch_size}")
    device = torch.device(device) if device is not None else get_device()
    seed_everything(seed)
    model = clip_tiny(len(captions.VOCAB), captions.CONTEXT_LENGTH).to(device)
    config = {"method": "clip", "seconds": seconds, "steps": steps, "batch_size": batch_size, "lr": lr,
              "weight_decay": weight_decay, "seed": seed}
    log = _pretrain_clip(model, config, pairs, device, progress)
    return model.eval(), log


def _run_clip(config: Dict, out: Path, device, progress: bool) -> Dict:
    pairs = captions.captioned_fashion_mnist("train", limit=config["train_limit"])
    val = captions.captioned_fashion_mnist("val", limit=config["val_limit"])
    if config["bank"] > len(pairs) or config["batch_size"] > len(pairs):
        raise ConfigError(f"--bank ({config['bank']}) and --batch-size ({config['batch_size']}) must not exceed the "
                          f"{len(pairs)} training images")
    model, log = train_clip(pairs, seconds=config["seconds"], steps=config["steps"], batch_size=config["batch_size"],
                            lr=config["lr"], weight_decay=config["weight_decay"], seed=config["seed"], device=device,
                            progress=progress)
    val_units = _image_units(model, val.images, device)
    accuracy = lambda templates, rule: (_zero_shot(model, val_units, templates, rule, device)
                                        == val.labels).float().mean().item()
    trials = {f"{name}, {rule}": accuracy(templates, rule)
              for name, templates in CLIP_PROMPT_SETS.items() for rule in ("mean", "marginal")}
    config["zero_shot"] = max(trials, key=trials.get)                                 # chosen on val
    prompt_set, rule = config["zero_shot"].rsplit(", ", 1)
    bank = extract_features(model.visual, pairs.images[:config["bank"]], device=device)
    probe, report = linear_probe(bank, pairs.labels[:config["bank"]], extract_features(model.visual, val.images,
                                                                                        device=device), val.labels)
    scores = {"val_zero_shot": trials[config["zero_shot"]], "val_zero_shot_trials": trials,
              "val_probe": report["val_accuracy"], "probe_weight_decay": report["weight_decay"]}
    test = captions.captioned_fashion_mnist("test", limit=config["test_limit"])     # the test split, once
    test_units = _image_units(model, test.images, device)
    held = test.attributes["held_out"]
    scores.update(test_zero_shot=(_zero_shot(model, test_units, CLIP_PROMPT_SETS[prompt_set], rule, device)
                                  == test.labels).float().mean().item(),
                  test_retrieval=clip_retrieval(model, test_units[held], test.attributes["combo"][held], device),
                  test_probe=probe_accuracy(probe, extract_features(model.visual, test.images, device=device),
                                            test.labels))
    torch.save({"format": "common.pretrain encoder", "config": config, "encoder": model.state_dict()},
               out / "encoder.pt")
    return {"log": log, "scores": scores, "train_images": len(pairs), "model": "clip_tiny (6.2)",
            "val_acc": scores["val_zero_shot"], "test_acc": scores["test_zero_shot"]}


def run(config: Dict, *, out: Optional[Path] = None, device=None, progress: bool = True) -> Dict:
    """Pretrain, score the frozen encoder (kNN and linear probe; CLIP: zero-shot, retrieval and probe), val then test
    once, and write the run folder."""
    wall_start = time.perf_counter()
    device = torch.device(device) if device is not None else get_device()
    seed_everything(config["seed"])
    if config["method"] == "clip":
        out = Path(out) if out is not None else Path("runs") / f"pretrain-clip-{time.strftime('%Y%m%d-%H%M%S')}"
        out.mkdir(parents=True, exist_ok=True)
        return _summarise(config, out, _run_clip(config, out, device, progress), device, wall_start)
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
    model_name = ("mae_vit_tiny_patch7 encoder" if config["method"] == "mae"
                  else f"{config['method']} ConvEncoder(width={config['width']})")
    outcome = {"log": log, "scores": scores, "train_images": train_images.shape[0], "model": model_name,
               "val_acc": scores["val_probe"], "test_acc": scores["test_probe"]}
    return _summarise(config, out, outcome, device, wall_start)


def _summarise(config: Dict, out: Path, outcome: Dict, device, wall_start: float) -> Dict:
    """results.json of a run (the layout common.results reads), written to ``out`` and returned."""
    log = outcome["log"]
    passes = log["steps"] * config["batch_size"] / outcome["train_images"]
    summary = {
        "config": {**config, "model": outcome["model"], "epochs": f"{passes:.2f} passes"},
        "kind": "pretrain", "status": "finished", "epochs_done": f"{log['steps']} steps",
        "history": {"train_loss": log["pass_loss"], "pass_seconds": log["pass_seconds"]},
        "steps": log["steps"], "pretrain_seconds": log["seconds"], "scores": outcome["scores"],
        "best": {"val_acc": outcome["val_acc"]}, "test_acc": outcome["test_acc"],
        "commit": _git_commit(), "torch": torch.__version__, "hardware": _hardware(device, 1),
        "wall_seconds": time.perf_counter() - wall_start,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def load_encoder(path):
    """The pretrained encoder of a run's ``encoder.pt``, in eval mode: the ``ConvEncoder`` (SimCLR, MoCo), for
    MAE the ``MAEFeatures`` view (images -> pooled features, the pooling chosen on val), for CLIP the whole ``CLIP``
    (its ``visual`` is the image encoder); a clear error otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (a run folder of python -m common.pretrain has encoder.pt)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:                                            # not a torch file, or not weights only
        raise ValueError(f"{path} is not an encoder checkpoint of python -m common.pretrain ({error})") from None
    if not isinstance(state, dict) or state.get("format") != "common.pretrain encoder":
        raise ValueError(f"{path} is not an encoder checkpoint of python -m common.pretrain")
    if state["config"]["method"] == "clip":
        model = clip_tiny(len(captions.VOCAB), captions.CONTEXT_LENGTH)
        model.load_state_dict(state["encoder"])
        return model.eval()
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
    head = (f"{config['method']}: {summary['steps']} steps in {summary['pretrain_seconds']:.0f} s "
            f"({summary['config']['epochs']}); ")
    if config["method"] == "clip":
        recall = s["test_retrieval"]
        print(head + f"val zero-shot {s['val_zero_shot']:.2%} ({config['zero_shot']}, chosen on val); test zero-shot "
              f"{s['test_zero_shot']:.2%}; held-out captions, text to image R@1 {recall['text_to_image']['R@1']:.2%}, "
              f"R@5 {recall['text_to_image']['R@5']:.2%}; image to text R@1 {recall['image_to_text']['R@1']:.2%}; "
              f"test probe {s['test_probe']:.2%}; wall {summary['wall_seconds'] / 60:.1f} min")
    else:
        print(head + f"val kNN {s['val_knn']:.2%}, val probe {s['val_probe']:.2%} (weight decay "
              f"{s['probe_weight_decay']:g}); test kNN {s['test_knn']:.2%}, test probe {s['test_probe']:.2%}; "
              f"wall {summary['wall_seconds'] / 60:.1f} min")
    return summary


if __name__ == "__main__":
    main()
