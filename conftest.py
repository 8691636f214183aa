"""Test configuration: the quick budget, one thread per process, headless figures.

Every notebook kernel that nbval starts inherits this process's environment,
so what is set here reaches the notebooks too:

* ``CVM_QUICK=1`` (unless already set: ``CVM_QUICK=0 pytest`` runs the
  default budget);
* one BLAS/OpenMP thread per process: pytest-xdist runs two workers, each
  driving a kernel; without this, two kernels fighting over two cores made
  ``-n 2`` slower than a serial run;
* ``MPLBACKEND=Agg`` (figures are not rendered to PNG) plus an IPython startup
  file that closes all figures after every cell.

At the end a table gives each notebook's wall time.
"""
from __future__ import annotations

import os
import tempfile
from collections import defaultdict
from pathlib import Path

import pytest

_STARTUP = '''\
import warnings
warnings.filterwarnings("ignore", message=".*non-interactive.*cannot be shown")
warnings.filterwarnings("ignore", message=".*FigureCanvasAgg is non-interactive.*")


def _cvm_close_figures(*_):
    import sys
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


get_ipython().events.register("post_run_cell", _cvm_close_figures)
'''

_notebook_seconds: dict = defaultdict(float)


def pytest_configure(config):
    os.environ.setdefault("CVM_QUICK", "1")
    os.environ["MPLBACKEND"] = "Agg"
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    if "CVM_TEST_IPYTHONDIR" not in os.environ:  # the controller makes it; xdist workers inherit it
        ipython_dir = Path(tempfile.mkdtemp(prefix="cvm-ipython-"))
        startup = ipython_dir / "profile_default" / "startup"
        startup.mkdir(parents=True)
        (startup / "00-cvm-tests.py").write_text(_STARTUP)
        os.environ["CVM_TEST_IPYTHONDIR"] = str(ipython_dir)
    os.environ["IPYTHONDIR"] = os.environ["CVM_TEST_IPYTHONDIR"]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per core, at most 4 (each holds a kernel and a dataset copy)."""
    return max(1, min(os.cpu_count() or 1, 4))


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::", 1)[0]
    if path.endswith(".ipynb"):
        _notebook_seconds[path] += report.duration


def pytest_terminal_summary(terminalreporter):
    if not _notebook_seconds:
        return
    terminalreporter.section("notebook wall time (quick budget)")
    for path, seconds in sorted(_notebook_seconds.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"{seconds:7.1f} s  {path}")
    terminalreporter.write_line(f"{sum(_notebook_seconds.values()):7.1f} s  in all")
