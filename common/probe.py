"""Evaluating frozen features: a weighted k-nearest-neighbour classifier and a linear probe.

A self-supervised encoder is judged by what a very simple classifier can read off its features, with
the encoder frozen (stage 5)::

    from common.probe import extract_features, knn_accuracy, linear_probe, probe_accuracy

    train_x, train_y = extract_features(encoder, train_loader)        # (N, D) float32, (N,) int64
    val_x, val_y = extract_features(encoder, val_loader)
    knn_accuracy(train_x, train_y, val_x, val_y)                       # cosine, k = 20, T = 0.07
    probe, report = linear_probe(train_x, train_y, val_x, val_y)      # weight decay chosen on val
    probe_accuracy(probe, val_x, val_y)

The same helpers measure the baselines (raw pixels as features, a randomly initialised encoder, the
encoder trained with labels), so that every number in a comparison comes from one procedure.

* :func:`knn_classify`: cosine similarity between L2-normalised features, the ``k`` most similar
  training features vote for their labels with weight ``exp(similarity / temperature)``: the weighted
  kNN of Wu, Xiong, Yu & Lin, *Unsupervised Feature Learning via Non-Parametric Instance
  Discrimination* (CVPR 2018, arXiv:1805.01978), who used k = 200; k = 20 with temperature 0.07 is the
  setting of later work (e.g. DINO, Caron et al. 2021, arXiv:2104.14294).
* :func:`linear_probe`: multinomial logistic regression (a :class:`common.nn.Linear` layer and the
  cross-entropy) on features standardised with the training features' mean and standard deviation,
  minimised full-batch by L-BFGS from zero weights. The objective
  ``mean cross-entropy + weight_decay / 2 * ||W||^2`` (the bias is not decayed) is convex, so the
  result does not depend on a seed or on the order of the data: the same inputs give the same probe.
  One probe per weight decay; the one with the highest val accuracy is returned (ties: the larger
  decay, the simpler model).
"""
from __future__ import annotations

import math
import time
from typing import Dict, Iterable, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .nn import Linear

__all__ = ["knn_classify", "knn_accuracy", "LinearProbe", "linear_probe", "probe_accuracy", "extract_features"]


def _check_features(name: str, features, what: str) -> None:
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"{name}: {what} must be a torch.Tensor (N, D), got {type(features).__name__}")
    if features.dim() != 2:
        fix = "; flatten them first with features.flatten(1)" if features.dim() > 2 else ""
        raise ValueError(f"{name}: {what} must be a 2-D tensor (N, D) of feature vectors, got shape "
                         f"{tuple(features.shape)}{fix}")
    if not features.is_floating_point():
        raise TypeError(f"{name}: {what} must be floating point, got {features.dtype}; convert with .float()")
    if features.shape[0] == 0:
        raise ValueError(f"{name}: {what} is empty (shape {tuple(features.shape)})")


def _check_labels(name: str, labels, features: torch.Tensor, what: str, num_classes: int) -> None:
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1:
        got = f"shape {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"{name}: {what} must be a 1-D tensor (N,) of class indices, got {got}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"{name}: {what} must be an integer tensor, got {labels.dtype}; convert with .long()")
    if labels.shape[0] != features.shape[0]:
        raise ValueError(f"{name}: {what} has {labels.shape[0]} entries but its features have {features.shape[0]} "
                         f"rows (shape {tuple(features.shape)}); pass one label per feature vector")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise ValueError(f"{name}: {what} must lie in 0..{num_classes - 1} (num_classes={num_classes}), found "
                         f"values from {low} to {high}; pass num_classes={high + 1} if there are more classes")


def _check_same_width(name: str, reference: torch.Tensor, other: torch.Tensor, what: str) -> None:
    if other.shape[1] != reference.shape[1]:
        raise ValueError(f"{name}: {what} have {other.shape[1]} dimensions but the training features have "
                         f"{reference.shape[1]} (shapes {tuple(reference.shape)} and {tuple(other.shape)}); both "
                         f"must come from the same encoder")


@torch.no_grad()
def knn_classify(train_features: torch.Tensor, train_labels: torch.Tensor, query_features: torch.Tensor,
                 k: int = 20, temperature: float = 0.07, num_classes: int = 10,
                 batch_size: int = 1024) -> torch.Tensor:
    """Predicted labels (M,) of ``query_features`` (M, D) by a similarity-weighted vote of their k nearest
    neighbours among ``train_features`` (N, D) with ``train_labels`` (N,).

    Every feature vector is L2-normalised, so the similarity of a query q and a training feature x is the
    cosine s = q.x / (|q| |x|). The k most similar training features each add ``exp(s / temperature)`` to the
    score of their class (Wu et al. 2018, instance discrimination); the class with the highest score wins.
    A small temperature lets the nearest neighbours dominate; a large one tends to the unweighted majority
    vote. Queries are processed ``batch_size`` at a time (memory: batch_size x N similarities). Ties between
    classes go to the lower class index.
    """
    name = "knn_classify"
    _check_features(name, train_features, "train_features")
    _check_features(name, query_features, "query_features")
    _check_same_width(name, train_features, query_features, "query_features")
    _check_labels(name, train_labels, train_features, "train_labels", num_classes)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{name}: k must be a positive int, got {k!r}")
    if k > train_features.shape[0]:
        raise ValueError(f"{name}: k={k} neighbours were asked for but there are only {train_features.shape[0]} "
                         f"training features; lower k to at most {train_features.shape[0]}")
    if not temperature > 0:
        raise ValueError(f"{name}: temperature must be positive, got {temperature}")
    if batch_size < 1:
        raise ValueError(f"{name}: batch_size must be positive, got {batch_size}")
    dtype = torch.promote_types(train_features.dtype, query_features.dtype)
    device = train_features.device
    bank = train_features.to(dtype)
    bank = bank / bank.norm(dim=1, keepdim=True).clamp_min(1e-12)             # (N, D), unit rows
    labels = train_labels.to(device)
    predictions = []
    for start in range(0, query_features.shape[0], batch_size):
        query = query_features[start:start + batch_size].to(device, dtype)
        query = query / query.norm(dim=1, keepdim=True).clamp_min(1e-12)     # (B, D)
        similarity = query @ bank.T                                          # (B, N) cosines
        top_similarity, top_index = similarity.topk(k, dim=1)                # (B, k) each
        weights = (top_similarity / temperature).exp()                       # (B, k)
        votes = torch.zeros(query.shape[0], num_classes, dtype=dtype, device=device)
        votes.scatter_add_(1, labels[top_index], weights)                    # (B, C): summed weight per class
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions).to(train_labels.device)


def knn_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor, query_features: torch.Tensor,
                 query_labels: torch.Tensor, k: int = 20, temperature: float = 0.07, num_classes: int = 10,
                 batch_size: int = 1024) -> float:
    """The share of ``query_labels`` that :func:`knn_classify` predicts correctly (a float in [0, 1])."""
    _check_features("knn_accuracy", query_features, "query_features")
    _check_labels("knn_accuracy", query_labels, query_features, "query_labels", num_classes)
    predicted = knn_classify(train_features, train_labels, query_features, k=k, temperature=temperature,
                             num_classes=num_classes, batch_size=batch_size)
    return (predicted == query_labels).double().mean().item()


class LinearProbe(nn.Module):
    """Logits (N, C) of features (N, D): standardise with the stored training mean and std, then a Linear."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, num_classes: int) -> None:
        super().__init__()
        if mean.dim() != 1 or mean.shape != std.shape:
            raise ValueError(f"LinearProbe expected mean and std of shape (D,), got {tuple(mean.shape)} and "
                             f"{tuple(std.shape)}")
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone())
        self.linear = Linear(mean.shape[0], num_classes, dtype=mean.dtype, device=mean.device)

    def standardize(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean) / self.std                           # (N, D)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        _check_features("LinearProbe", features, "features")
        if features.shape[1] != self.mean.shape[0]:
            raise ValueError(f"LinearProbe expected features with {self.mean.shape[0]} dimensions (those it was "
                             f"trained on), got shape {tuple(features.shape)}")
        return self.linear(self.standardize(features.to(self.mean.dtype)))  # (N, C)


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean of -log softmax(logits)[label]: logsumexp minus the label's logit."""
    return (logits.logsumexp(dim=1) - logits.gather(1, labels[:, None])[:, 0]).mean()


def _objective(probe: LinearProbe, standardized: torch.Tensor, labels: torch.Tensor, weight_decay: float):
    logits = probe.linear(standardized)
    return _cross_entropy(logits, labels) + 0.5 * weight_decay * probe.linear.weight.pow(2).sum()


@torch.no_grad()
def probe_accuracy(probe: LinearProbe, features: torch.Tensor, labels: torch.Tensor,
                   batch_size: int = 8192) -> float:
    """The share of ``labels`` (N,) that ``probe`` predicts correctly from ``features`` (N, D)."""
    _check_features("probe_accuracy", features, "features")
    _check_labels("probe_accuracy", labels, features, "labels", probe.linear.out_features)
    correct = 0
    for start in range(0, features.shape[0], batch_size):
        batch = features[start:start + batch_size].to(probe.mean.device)
        correct += (probe(batch).argmax(dim=1).cpu() == labels[start:start + batch_size].cpu()).sum().item()
    return correct / features.shape[0]


def linear_probe(train_features: torch.Tensor, train_labels: torch.Tensor, val_features: torch.Tensor,
                 val_labels: torch.Tensor, weight_decays: Sequence[float] = (1e-2, 1e-3, 1e-4, 1e-5),
                 max_iter: int = 100, num_classes: int = 10, dtype: torch.dtype = torch.float32,
                 verbose: bool = False) -> Tuple[LinearProbe, Dict]:
    """A linear classifier on frozen features, its weight decay chosen on the val features.

    The features are standardised with the mean and standard deviation of ``train_features`` (N, D)
    (a standard deviation below 1% of the mean one is raised to that floor, so a near-constant input such
    as a border pixel is not blown up). For each ``weight_decays`` value, from the largest to the smallest,
    L-BFGS (strong-Wolfe line search, at most ``max_iter`` iterations over the full batch) minimises
    ``mean cross-entropy + weight_decay / 2 * ||W||_F^2``, starting from the previous decay's solution (the
    first from zero weights; the objective is convex, so the start only changes how fast it converges).
    Returns ``(probe, report)``: the :class:`LinearProbe` with the best accuracy on ``val_features`` (M, D)
    (ties: the larger decay), and a dict with the chosen ``weight_decay``, its ``val_accuracy`` and
    ``trials``: for each decay its train and val accuracy, final objective, gradient norm (near zero when
    converged), iterations and seconds. Nothing random is involved: the same inputs give the same probe.
    """
    name = "linear_probe"
    _check_features(name, train_features, "train_features")
    _check_features(name, val_features, "val_features")
    _check_same_width(name, train_features, val_features, "val_features")
    _check_labels(name, train_labels, train_features, "train_labels", num_classes)
    _check_labels(name, val_labels, val_features, "val_labels", num_classes)
    decays = sorted({float(d) for d in weight_decays}, reverse=True)
    if not decays or min(decays) < 0:
        raise ValueError(f"{name}: weight_decays must be one or more values >= 0, got {weight_decays!r}")
    if max_iter < 1:
        raise ValueError(f"{name}: max_iter must be positive, got {max_iter}")
    train = train_features.to(dtype)
    labels = train_labels.to(train.device).long()
    mean, std = train.mean(dim=0), train.std(dim=0)
    std = std.clamp_min(0.01 * std.mean().item() + 1e-12)                      # (D,)
    probe = LinearProbe(mean, std, num_classes)
    with torch.no_grad():
        probe.linear.weight.zero_()
        probe.linear.bias.zero_()
    standardized = probe.standardize(train)                                    # (N, D)
    trials, best, best_state = [], None, None
    for weight_decay in decays:
        start = time.perf_counter()
        optimizer = torch.optim.LBFGS(probe.linear.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                                      line_search_fn="strong_wolfe", tolerance_grad=1e-6, tolerance_change=1e-10)

        def closure():
            optimizer.zero_grad()
            loss = _objective(probe, standardized, labels, weight_decay)
            loss.backward()
            return loss

        optimizer.step(closure)
        optimizer.zero_grad()
        loss = _objective(probe, standardized, labels, weight_decay)
        gradients = torch.autograd.grad(loss, list(probe.linear.parameters()))
        trial = {"weight_decay": weight_decay,
                 "train_accuracy": probe_accuracy(probe, train_features, train_labels),
                 "val_accuracy": probe_accuracy(probe, val_features, val_labels),
                 "objective": loss.item(),
                 "gradient_norm": math.sqrt(sum(g.pow(2).sum().item() for g in gradients)),
                 "iterations": optimizer.state[optimizer._params[0]].get("n_iter", 0),
                 "seconds": time.perf_counter() - start}
        trials.append(trial)
        if verbose:
            print(f"linear probe, weight decay {weight_decay:.0e}: train {trial['train_accuracy']:.2%}, val "
                  f"{trial['val_accuracy']:.2%} ({trial['iterations']} L-BFGS iterations, {trial['seconds']:.1f} s)")
        if best is None or trial["val_accuracy"] > best["val_accuracy"]:     # strict: ties keep the larger decay
            best, best_state = trial, {k: v.clone() for k, v in probe.state_dict().items()}
    chosen = LinearProbe(mean, std, num_classes)
    chosen.load_state_dict(best_state)
    chosen.requires_grad_(False)
    report = {"weight_decay": best["weight_decay"], "val_accuracy": best["val_accuracy"], "trials": trials}
    return chosen, report


@torch.no_grad()
def extract_features(encoder: nn.Module, source: Union[torch.Tensor, Iterable], *, batch_size: int = 1024,
                     device: Optional[torch.device] = None):
    """The encoder's outputs, flattened to (N, D) float32 on the CPU, in eval mode and without gradients.

    ``source`` is a tensor of inputs (N, ...), fed ``batch_size`` at a time, which returns the features;
    or a loader of ``(x, y)`` batches (e.g. :class:`common.data.TensorLoader`), which returns
    ``(features, labels)``. The encoder's training mode is restored afterwards.
    """
    if not isinstance(encoder, nn.Module):
        raise TypeError(f"extract_features expected an nn.Module encoder, got {type(encoder).__name__}")
    parameter = next(encoder.parameters(), None)
    device = device or (parameter.device if parameter is not None else torch.device("cpu"))
    was_training = encoder.training
    encoder.eval()
    try:
        if isinstance(source, torch.Tensor):
            if source.dim() < 2 or source.shape[0] == 0:
                raise ValueError(f"extract_features expected a batch of inputs (N, ...), got shape "
                                 f"{tuple(source.shape)}")
            return torch.cat([encoder(source[i:i + batch_size].to(device)).flatten(1).float().cpu()
                              for i in range(0, source.shape[0], batch_size)])
        features, labels = [], []
        for batch in source:
            if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                raise ValueError("extract_features expected a loader of (inputs, labels) batches, or a tensor of "
                                 "inputs")
            features.append(encoder(batch[0].to(device)).flatten(1).float().cpu())
            labels.append(batch[1].cpu())
        if not features:
            raise ValueError("extract_features got an empty loader")
        return torch.cat(features), torch.cat(labels)
    finally:
        encoder.train(was_training)
