"""Random weights for the reference-equality tests of the models (not a test module: pytest collects test_*.py).

A reference model with its default initialisation hides mistakes: zero biases, unit norm scales and fresh running
statistics make a swapped, ignored or mis-shaped tensor invisible. ``randomize_`` gives every tensor of the
state_dict a value that matters, in place, drawn from the given generator (so each test is reproducible).
"""
from typing import Optional, Tuple

import torch
from torch import nn


def randomize_(model: nn.Module, generator: torch.Generator, *,
               norm_weights: Optional[Tuple[float, float]] = None, batches_tracked: int = 3) -> nn.Module:
    """He-scaled uniform matrices and kernels, random biases and BatchNorm statistics; returns ``model``.

    * matrices and kernels (dim > 1): uniform in +-sqrt(6 / fan_in), fan_in = the elements of one output row,
      a variance of 2 / fan_in, so deep stacks keep their logits of order one;
    * ``running_var``: uniform in [0.5, 1.5]; ``num_batches_tracked``: ``batches_tracked``;
    * 1-D ``weight`` tensors (norm scales): uniform in ``norm_weights``, or, when it is None, like the biases;
    * every other 1-D tensor (biases, ``running_mean``, ...): uniform in [-0.2, 0.2].

    ``uniform_`` in place: about twice as fast as ``randn`` on the largest classifier matrices.
    """
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                tensor.fill_(batches_tracked)
            elif name.endswith("running_var"):
                tensor.uniform_(0.5, 1.5, generator=generator)
            elif tensor.dim() > 1:
                bound = (6.0 / tensor[0].numel()) ** 0.5
                tensor.uniform_(-bound, bound, generator=generator)
            elif norm_weights is not None and name.endswith("weight"):
                tensor.uniform_(*norm_weights, generator=generator)
            else:
                tensor.uniform_(-0.2, 0.2, generator=generator)
    return model
