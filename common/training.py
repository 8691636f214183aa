"""Training and evaluation: one ``fit`` and one ``evaluate`` for every notebook.

``fit`` shows a ``tqdm.auto`` bar per epoch (a widget in Jupyter, text in a
terminal), prints one line per epoch (that line is what a stored notebook
shows), and returns a :class:`History` that :func:`common.plots.plot_history`
draws.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

__all__ = ["get_device", "seed_everything", "History", "fit", "train_for", "train_loss_for", "warmup_cosine",
           "evaluate", "count_parameters", "make_scaler"]


def get_device(prefer: Optional[str] = None) -> torch.device:
    """CUDA if present, then Apple's MPS, then the CPU (``prefer`` overrides, e.g. ``"cpu"``)."""
    if prefer is not None:
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy (if installed) and torch on every device."""
    random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    with contextlib.suppress(ImportError):
        import numpy

        numpy.random.seed(seed)
    torch.manual_seed(seed)  # also seeds CUDA and MPS


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@dataclass
class History:
    """Per-epoch metrics of one training run."""

    train_loss: list = field(default_factory=list)
    train_acc: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    val_acc: list = field(default_factory=list)
    seconds: list = field(default_factory=list)
    steps: Optional[int] = None      # optimizer steps taken, where a run counts them (train_for)

    @property
    def epochs(self) -> int:
        return len(self.train_loss)

    @property
    def final_val_acc(self) -> float:
        if not self.val_acc:
            raise ValueError("this run had no validation loader")
        return self.val_acc[-1]

    def __str__(self) -> str:
        total = sum(self.seconds)
        last = f"val acc {self.val_acc[-1]:.2%}, " if self.val_acc else ""
        return f"History({self.epochs} epochs, {last}train acc {self.train_acc[-1]:.2%}, {total:.0f} s)"


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def _to(batch, device):
    return [t.to(device, non_blocking=True) for t in batch]


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, *, loss_fn: Callable = F.cross_entropy,
             device: Optional[torch.device] = None, amp: bool = False) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` over ``loader`` (batches of ``(x, y)``), in eval mode."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    for x, y in (_to(b, device) for b in loader):
        with _autocast(device, amp):
            logits = model(x)
        total_loss += loss_fn(logits.float(), y).item() * y.shape[0]
        correct += (logits.argmax(dim=1) == y).sum().item()
        seen += y.shape[0]
    model.train(was_training)
    if seen == 0:
        raise ValueError("evaluate() got an empty loader")
    return total_loss / seen, correct / seen


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel (or DataParallel) wrapper, else ``model``."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def make_scaler(device: torch.device, amp: bool):
    """The gradient scaler ``fit`` uses: float16 autocast on CUDA needs one; bfloat16 and the CPU do not."""
    if amp and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.amp.GradScaler("cuda")
    return None


def _all_reduce_sums(values: list, device: torch.device) -> list:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    backend_device = device if dist.get_backend() == "nccl" else torch.device("cpu")
    total = torch.tensor(values, dtype=torch.float64, device=backend_device)
    dist.all_reduce(total)
    return total.tolist()


def fit(model: nn.Module, train_loader: Iterable, *, epochs: int,
        optimizer: Optional[torch.optim.Optimizer] = None, lr: float = 1e-3,
        loss_fn: Callable = F.cross_entropy, val_loader: Optional[Iterable] = None,
        scheduler=None, device: Optional[torch.device] = None, amp: bool = False,
        progress: bool = True, verbose: bool = True, desc: str = "",
        start_epoch: int = 0, history: Optional[History] = None, scaler=None,
        on_epoch_end: Optional[Callable[[int, History], None]] = None,
        stop_epoch: Optional[int] = None) -> History:
    """Train ``model`` for ``epochs`` and return its :class:`History`.

    * ``optimizer`` defaults to AdamW(lr); ``scheduler`` (optional) is stepped
      after every batch (use schedules defined in steps, e.g. OneCycleLR).
    * ``val_loader`` is evaluated after every epoch.
    * ``amp=True`` uses bfloat16 (float16 with a gradient scaler where bf16 is
      unsupported) autocast on CUDA; it does nothing elsewhere. ``scaler``
      passes that scaler in (see :func:`make_scaler`), e.g. to checkpoint it.
    * Resuming: ``start_epoch`` epochs are already done (the loop runs
      ``start_epoch + 1 .. epochs``) and ``history`` (their metrics) is
      appended to. ``on_epoch_end(epoch, history)`` is called after each epoch
      (checkpointing, early logging). ``stop_epoch`` ends the loop after that
      epoch, as an interruption would (the schedule still spans ``epochs``).
    * Distributed: ``model`` may be a ``DistributedDataParallel``; validation
      runs on the wrapped module (no collective, so it may be given on one rank
      only), the epoch's train loss and accuracy are summed over the ranks, and
      a loader with a ``loss_weight`` attribute (``common.distributed.
      ShardedLoader``) has each batch's loss multiplied by it before the
      backward pass, so that DDP's mean of the ranks' gradients is the gradient
      of the mean over the whole global batch.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if not 0 <= start_epoch <= epochs:
        raise ValueError(f"start_epoch must be in 0..epochs={epochs}, got {start_epoch}")
    stop_epoch = epochs if stop_epoch is None else stop_epoch
    if not start_epoch <= stop_epoch <= epochs:
        raise ValueError(f"stop_epoch must be in start_epoch..epochs = {start_epoch}..{epochs}, got {stop_epoch}")
    device = device or get_device()
    model.to(device)
    optimizer = optimizer or torch.optim.AdamW(model.parameters(), lr=lr)
    if scaler is None:
        scaler = make_scaler(device, amp)
    history = history if history is not None else History()
    for epoch in range(start_epoch + 1, stop_epoch + 1):
        model.train()
        start = time.perf_counter()
        total_loss, correct, seen = 0.0, 0, 0
        bar = tqdm(train_loader, desc=f"{desc} epoch {epoch}/{epochs}".strip(),
                   disable=not progress, leave=False)
        for x, y in (_to(b, device) for b in bar):
            with _autocast(device, amp):
                logits = model(x)
                loss = loss_fn(logits.float(), y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} in epoch {epoch}; lower the learning rate")
            weight = getattr(train_loader, "loss_weight", None)
            step_loss = loss if weight is None else loss * weight
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(step_loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                step_loss.backward()
                optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total_loss += loss.item() * y.shape[0]
            correct += (logits.argmax(dim=1) == y).sum().item()
            seen += y.shape[0]
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False)
        bar.close()
        total_loss, correct, seen = _all_reduce_sums([total_loss, correct, seen], device)
        history.train_loss.append(total_loss / seen)
        history.train_acc.append(correct / seen)
        line = (f"{desc + ' ' if desc else ''}epoch {epoch:>2}/{epochs}: "
                f"train loss {total_loss / seen:.4f}, acc {correct / seen:.2%}")
        if val_loader is not None:
            val_loss, val_acc = evaluate(_unwrap(model), val_loader, loss_fn=loss_fn, device=device, amp=amp)
            history.val_loss.append(val_loss)
            history.val_acc.append(val_acc)
            line += f" | val loss {val_loss:.4f}, acc {val_acc:.2%}"
        history.seconds.append(time.perf_counter() - start)
        if verbose:
            print(f"{line} | {history.seconds[-1]:.1f} s", flush=True)
        if on_epoch_end is not None:
            on_epoch_end(epoch, history)
    return history


def warmup_cosine(share: float, warmup: float = 0.05) -> float:
    """The learning-rate factor at ``share`` (0..1) of a budget: linear from 0 over the first ``warmup``,
    then a half cosine from 1 down to 0 at the end."""
    if not 0.0 <= warmup < 1.0:
        raise ValueError(f"warmup is a share of the budget in [0, 1), got {warmup}")
    if share < warmup:
        return share / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (share - warmup) / (1.0 - warmup))))


def train_for(model: nn.Module, train_loader: Iterable, *, seconds: Optional[float] = None,
              steps: Optional[int] = None, lr: float = 2e-3, weight_decay: float = 0.05, warmup: float = 0.05,
              label_smoothing: float = 0.1, no_decay: tuple = (), val_loader: Optional[Iterable] = None,
              device: Optional[torch.device] = None, desc: str = "", verbose: bool = True,
              criterion: Optional[Callable] = None) -> History:
    """AdamW for ``seconds`` of wall-clock time or for ``steps`` optimizer steps (exactly one of the two).

    The learning rate follows :func:`warmup_cosine` in the share of the budget used (elapsed time or steps), so
    a time-limited run anneals to zero whatever the machine's speed. Weight decay applies to the matrices and
    kernels only: not to parameters of one dimension (biases, norm scales) nor to those whose names end with
    one of ``no_decay`` (e.g. ``("class_token", "pos_embedding")``). Cross-entropy with ``label_smoothing``.
    One :class:`History` entry per pass over ``train_loader`` (the last pass is cut short when the budget
    ends), validated on ``val_loader`` after each; ``history.steps`` is the number of steps taken. A time
    budget is the fair currency between models of different cost on one machine; a step budget is the
    reproducible one (the same steps on any machine).

    ``criterion(output, x, y) -> loss`` replaces the cross-entropy (``label_smoothing`` is then unused): for
    losses that need more than the logits, such as distillation from a teacher that sees ``x``. A model may
    return a tuple of logits in training (DeiT's two heads); the training accuracy is then that of their mean.
    """
    if (seconds is None) == (steps is None):
        raise ValueError(f"train_for needs exactly one budget: seconds=... or steps=..., got seconds={seconds}, "
                         f"steps={steps}")
    if (seconds is not None and not seconds > 0) or (steps is not None and steps < 1):
        raise ValueError(f"the budget must be positive, got seconds={seconds}, steps={steps}")
    device = device or get_device()
    model.to(device)
    named = list(model.named_parameters())
    exempt = {name for name, p in named if p.dim() <= 1 or (no_decay and name.endswith(tuple(no_decay)))}
    optimizer = torch.optim.AdamW([{"params": [p for n, p in named if n not in exempt], "weight_decay": weight_decay},
                                   {"params": [p for n, p in named if n in exempt], "weight_decay": 0.0}], lr=lr)
    history, steps_done, start, done = History(), 0, time.perf_counter(), False
    while not done:
        model.train()
        total_loss, correct, seen, pass_start = 0.0, 0, 0, time.perf_counter()
        for x, y in (_to(b, device) for b in train_loader):
            share = steps_done / steps if steps else (time.perf_counter() - start) / seconds
            if share >= 1:
                done = True
                break
            for group in optimizer.param_groups:
                group["lr"] = lr * warmup_cosine(share, warmup)
            output = model(x)
            logits = output if isinstance(output, torch.Tensor) else sum(output) / len(output)
            if criterion is None:
                loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
            else:
                loss = criterion(output, x, y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} after {steps_done} steps; lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps_done += 1
            total_loss += loss.item() * y.shape[0]
            correct += (logits.argmax(dim=1) == y).sum().item()
            seen += y.shape[0]
        if seen == 0:
            if steps_done == 0:
                raise ValueError("train_for got an empty loader")
            break
        history.train_loss.append(total_loss / seen)
        history.train_acc.append(correct / seen)
        line = f"{desc + ' ' if desc else ''}pass {history.epochs}: {seen:,} images, train loss {total_loss / seen:.4f}, " \
               f"acc {correct / seen:.2%}"
        if val_loader is not None:
            val_loss, val_acc = evaluate(model, val_loader, device=device)
            history.val_loss.append(val_loss)
            history.val_acc.append(val_acc)
            line += f" | val loss {val_loss:.4f}, acc {val_acc:.2%}"
        history.seconds.append(time.perf_counter() - pass_start)
        if verbose and desc:
            print(f"{line} | {history.seconds[-1]:.1f} s", flush=True)
    history.steps = steps_done
    return history


def train_loss_for(model: nn.Module, step_loss: Callable[[], tuple], *, seconds: Optional[float] = None,
                   steps: Optional[int] = None, lr: float = 2e-3, weight_decay: float = 0.0, warmup: float = 0.05,
                   desc: str = "", progress: bool = True) -> dict:
    """AdamW on ``model``'s parameters for a budget of ``seconds`` or ``steps``, for any loss.

    :func:`train_for` trains a classifier from a loader; generative models (an autoencoder, a diffusion model, a
    diffusion prior) draw their own batches and compute their own losses. ``step_loss()`` does both and returns
    ``(loss, extras)``: a scalar tensor to minimise and a dict of numbers to log. The learning rate follows
    :func:`warmup_cosine` over the share of the budget used, as in :func:`train_for`; weight decay (default none)
    applies to every parameter. A loss that becomes NaN or infinite raises FloatingPointError. Returns
    ``{"loss": [...], "extras": [...], "steps": int, "seconds": float}``.
    """
    if (seconds is None) == (steps is None):
        raise ValueError(f"train_loss_for needs exactly one budget: seconds=... or steps=..., got seconds={seconds}, "
                         f"steps={steps}")
    if (seconds is not None and not seconds > 0) or (steps is not None and steps < 1):
        raise ValueError(f"the budget must be positive, got seconds={seconds}, steps={steps}")
    if not callable(step_loss):
        raise TypeError(f"train_loss_for expected step_loss to be a function () -> (loss, extras), "
                        f"got {type(step_loss).__name__}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    log, start = {"loss": [], "extras": [], "steps": 0}, time.perf_counter()
    total = seconds if seconds is not None else steps
    model.train()
    with tqdm(total=round(total), desc=desc or None, unit="s" if seconds is not None else "step", leave=False,
              disable=not progress) as bar:
        while (share := ((time.perf_counter() - start) / seconds if seconds is not None
                         else log["steps"] / steps)) < 1:
            for group in optimizer.param_groups:
                group["lr"] = lr * warmup_cosine(share, warmup)
            loss, extras = step_loss()
            if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
                raise TypeError(f"train_loss_for: step_loss() must return (a scalar tensor, a dict), got a loss "
                                f"{type(loss).__name__} of shape {tuple(getattr(loss, 'shape', ()))}")
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc or 'train_loss_for'}: the loss became {loss.item()} at step "
                                         f"{log['steps']}; lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            log["loss"].append(loss.item())
            log["extras"].append(extras)
            log["steps"] += 1
            done = time.perf_counter() - start if seconds is not None else log["steps"]
            bar.n = min(round(done), round(total))
            bar.refresh()
    log["seconds"] = time.perf_counter() - start
    model.eval()
    return log
