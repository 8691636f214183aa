"""The two budgets of the curriculum, read in one place.

* **default**: what a learner gets in JupyterLab or Colab. Trains long enough
  for the results the README reports (about 10 minutes or less per notebook on
  a 2-core CPU).
* **quick**: ``CVM_QUICK=1`` (the test suite sets it). The same code on a small
  subset and few steps, so that every notebook runs in about a minute; its
  assertions still prove learning, against lower thresholds.

Notebooks never read the environment variable themselves; they ask::

    from common import budget
    EPOCHS = budget.choose(default=10, quick=1)
    TARGET = budget.choose(default=0.88, quick=0.70)

and its last cell prints ``budget.report()``: the budget and the wall time the
notebook took, counted from the setup cell (the first import of this module).
"""
from __future__ import annotations

import os
import time
from typing import TypeVar

__all__ = ["ENV_VAR", "is_quick", "choose", "name", "describe", "start", "elapsed", "report"]

ENV_VAR = "CVM_QUICK"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}

T = TypeVar("T")

_started = time.perf_counter()  # the setup cell's import; start() moves it


def is_quick() -> bool:
    """True when the quick budget is asked for (``CVM_QUICK=1``).

    Read at every call, so a test can switch budgets with ``monkeypatch``.
    An unrecognised value is an error rather than a silent default.
    """
    raw = os.environ.get(ENV_VAR, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ValueError(
        f"{ENV_VAR}={os.environ[ENV_VAR]!r} is not understood: "
        f"set it to 1 for the quick budget, or to 0 / leave it unset for the default budget."
    )


def choose(*, default: T, quick: T) -> T:
    """Return ``quick`` in the quick budget and ``default`` otherwise."""
    return quick if is_quick() else default


def name() -> str:
    """``"quick"`` or ``"default"``."""
    return "quick" if is_quick() else "default"


def describe() -> str:
    """One line for a notebook's setup cell to print."""
    if is_quick():
        return f"budget: quick ({ENV_VAR}=1): small subset, few steps, lower thresholds"
    return f"budget: default (set {ENV_VAR}=1 for the quick run the tests use)"


def start() -> None:
    """Start the notebook's wall clock again (it starts when this module is first imported)."""
    global _started
    _started = time.perf_counter()


def elapsed() -> float:
    """Seconds since the wall clock started (see :func:`start`)."""
    return time.perf_counter() - _started


def report() -> str:
    """The line a notebook's last cell prints: its budget and how long it ran, top to bottom."""
    seconds = elapsed()
    return f"budget: {name()} | wall time from the setup cell to here: {seconds:,.0f} s ({seconds / 60:.1f} min)"
