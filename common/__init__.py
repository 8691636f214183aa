"""Helpers of the computer-vision-from-scratch curriculum.

Hand-written helpers (import what you use)::

    from common import budget, data, training, checks, plots

* ``budget``   - default vs quick run (``CVM_QUICK``), read in one place
* ``data``     - Fashion-MNIST, offline first and MD5-verified; in-memory batching
* ``training`` - ``fit`` / ``evaluate``, device choice, seeding
* ``checks``   - prove a from-scratch piece equal to its reference
* ``plots``    - image grids, training curves, filters, feature maps
* ``export``   - ``python -m common.export``: notebook cells -> ``common.nn`` / ``common.models``
* ``execute``  - ``python -m common.execute``: run a notebook top to bottom and store it clean
* ``results``  - one ``result:`` line per trained model; ``collect()`` gathers them from stored notebooks
* ``complexity`` - parameter and multiply-accumulate counts
* ``train``    - ``python -m common.train``: any classifier or a notebook's recipe, checkpoints, exact resume, torchrun
* ``pretrain`` - ``python -m common.pretrain``: MAE, SimCLR, MoCo v2 (5.1-5.3) or CLIP (6.2), then their scores
* ``captions`` - captioned Fashion-MNIST (stage 6): captions true of their images, held-out combinations,
  a word tokenizer and zero-shot prompts
* ``evaluate`` - ``python -m common.evaluate CHECKPOINT``: test accuracy, per class, confusion matrix, throughput
* ``recipes``  - the notebooks' training configurations, in one place
* ``distributed`` - DistributedDataParallel set-up and the rank-sharded in-memory loader
* ``probe``    - frozen features: weighted kNN (cosine, k=20, T=0.07) and a linear probe with its decay chosen on val

Exported from the notebooks (generated, do not edit): ``common.nn``
(components with torch.nn's names), ``common.nn.functional`` and
``common.models`` (models with torchvision's names).
"""
import importlib
from pathlib import Path

from . import budget

__version__ = "0.1.0"
_HERE = Path(__file__).resolve().parent
_SUBMODULES = tuple(sorted({p.stem for p in _HERE.glob("[a-z]*.py")} |
                           {p.parent.name for p in _HERE.glob("[a-z]*/__init__.py")}))
__all__ = list(_SUBMODULES)


def __getattr__(name):
    """``import common; common.nn.Conv2d``: submodules are imported on first use, so that
    ``import common`` stays cheap (no torch import) and every documented name resolves."""
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'common' has no attribute {name!r}; its submodules are {', '.join(_SUBMODULES)}")


def __dir__():
    return sorted(set(globals()) | set(_SUBMODULES))
