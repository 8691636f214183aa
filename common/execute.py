"""Run notebooks top to bottom in a fresh kernel and store them clean.

    python -m common.execute stage0_components/01_activations.ipynb [...]

This is how the committed notebooks are produced: the default budget (it
refuses to run with ``CVM_QUICK=1`` unless ``--quick`` is given, which then
writes nothing), execution counts 1..n, and only the metadata a reader needs
(kernelspec and language name): no widget state, no per-cell timing, no
transient progress-bar widgets (each epoch's printed line stays).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

__all__ = ["clean", "run", "main"]

_WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
_KEEP_CELL_METADATA = {"tags"}
_TQDM_TEXT = re.compile(r"\d+%\|.*\| *\d+/\d+ \[|^HBox\(")  # "epoch 1/3:  40%|####  | 94/235 [..."


def clean(nb) -> None:
    """Minimal metadata; progress-bar widget outputs dropped (in place)."""
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for cell in nb.cells:
        cell.metadata = {k: v for k, v in cell.metadata.items() if k in _KEEP_CELL_METADATA}
        if cell.cell_type != "code":
            continue
        kept = []
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if _WIDGET_MIME in data and _TQDM_TEXT.search("".join(data.get("text/plain", ""))):
                continue  # a tqdm bar: live in Jupyter, noise in the stored file
            kept.append(output)
        cell.outputs = kept


def run(path: Path, *, timeout: int = 1800, write: bool = True) -> float:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    seconds = time.perf_counter() - start
    clean(nb)
    if write:
        nbformat.write(nb, path)
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m common.execute", description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--quick", action="store_true", help="run in the quick budget and do not write")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell (default 1800)")
    args = parser.parse_args(argv)
    if args.quick:
        os.environ["CVM_QUICK"] = "1"
    elif os.environ.get("CVM_QUICK", "").strip() not in ("", "0"):
        parser.error("CVM_QUICK is set: committed notebooks are run in the default budget "
                     "(unset it, or pass --quick to try a quick run without writing)")
    for path in args.notebooks:
        seconds = run(path, timeout=args.timeout, write=not args.quick)
        print(f"{path}: ran in {seconds:.0f} s" + ("" if args.quick else ", stored"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
