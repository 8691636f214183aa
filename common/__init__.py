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

Exported from the notebooks (generated, do not edit): ``common.nn``
(components with torch.nn's names), ``common.nn.functional`` and
``common.models`` (models with torchvision's names).
"""
from . import budget

__version__ = "0.1.0"
__all__ = ["budget"]
