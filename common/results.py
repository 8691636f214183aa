"""One machine-readable line per trained model, and the table that gathers them across notebooks.

A notebook that trains a model ends its experiment with::

    results.record("ResNet (small)", notebook="stage3_resnets/01_resnet", history=history,
                   model=model, input_shape=(1, 1, 28, 28))

which prints ``result: {...}`` (JSON: accuracy, parameters, MACs per image, epochs, seconds per
epoch, training images, budget). ``collect()`` reads those lines back from the *stored outputs* of
the committed notebooks, so a comparison table at the end of a stage quotes exactly what the
earlier notebooks printed in their default-budget runs, never a number typed in by hand.

The runs of ``python -m common.train`` each leave a ``results.json`` in their folder;
``python -m common.results [RUNS_DIR]`` (default ``runs/``) prints a table of them.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

from . import budget

__all__ = ["PREFIX", "record", "collect", "table", "read_runs", "runs_table", "main"]

PREFIX = "result: "
ROOT = Path(__file__).resolve().parent.parent
FIELDS = ("model", "notebook", "accuracy", "parameters", "macs", "epochs", "epoch_seconds", "train_images", "budget")


def record(name: str, *, notebook: str, history, model, input_shape: Sequence[int],
           train_images: int, test_accuracy: Optional[float] = None) -> Dict:
    """Print the result line of one trained model and return it as a dict.

    ``test_accuracy`` is the accuracy on the test set, measured once after training (with the val
    split, the history's validation accuracies are *not* test accuracies). Without it, the last
    validation accuracy of ``history`` (:class:`common.training.History`) is quoted: what the
    notebooks written before the val split do, validating on the test set. Parameters and MACs
    are measured on ``model`` by :mod:`common.complexity`.
    """
    from .complexity import profile

    if test_accuracy is None:
        if not history.val_acc:
            raise ValueError(f"record({name!r}): no test accuracy (pass test_accuracy=..., or a history "
                             f"validated on the test set)")
        test_accuracy = history.final_val_acc
    if not 0.0 <= float(test_accuracy) <= 1.0:
        raise ValueError(f"record({name!r}): test_accuracy is a fraction in [0, 1], got {test_accuracy}")
    size = profile(model, input_shape)
    line = {
        "model": name,
        "notebook": notebook,
        "accuracy": round(float(test_accuracy), 4),
        "parameters": size.parameters,
        "macs": size.macs,
        "epochs": history.epochs,
        "epoch_seconds": round(sum(history.seconds) / max(history.epochs, 1), 1),
        "train_images": int(train_images),
        "budget": budget.name(),
    }
    print(PREFIX + json.dumps(line))
    return line


def _lines(notebook: Path) -> Iterable[str]:
    for cell in json.loads(notebook.read_text(encoding="utf-8")).get("cells", []):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                text = output.get("text", "")
                yield from ("".join(text) if isinstance(text, list) else text).splitlines()


def collect(paths: Optional[Iterable[Path]] = None) -> List[Dict]:
    """Every ``result:`` line in the stored outputs of ``paths`` (default: all stage notebooks, in order)."""
    if paths is None:
        paths = sorted(ROOT.glob("stage*/*.ipynb"))
    found = []
    for path in paths:
        for line in _lines(Path(path)):
            if line.startswith(PREFIX):
                try:
                    entry = json.loads(line[len(PREFIX):])
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}: unreadable result line {line!r}: {error}") from None
                missing = [f for f in FIELDS if f not in entry]
                if missing:
                    raise ValueError(f"{path}: result line lacks {missing}: {line!r}")
                found.append(entry)
    return found


def table(entries: Sequence[Dict]) -> str:
    """A fixed-width table: model, notebook, test accuracy, parameters, MACs, epochs, seconds per epoch, images.

    The first two columns are as wide as their longest entry, so long names keep the columns aligned."""
    model_width = max([len("model")] + [len(e["model"]) for e in entries])
    notebook_width = max([len("notebook")] + [len(e["notebook"]) for e in entries])
    header = (f"{'model':<{model_width}} {'notebook':<{notebook_width}} {'test acc':>8} {'params':>10} {'MACs':>9} "
              f"{'epochs':>6} {'s/epoch':>7} {'images':>7}")
    rows = [header, "-" * len(header)]
    for e in entries:
        rows.append(f"{e['model']:<{model_width}} {e['notebook']:<{notebook_width}} {e['accuracy']:>8.2%} "
                    f"{e['parameters']:>10,} {e['macs'] / 1e6:>8.2f}M {e['epochs']:>6} {e['epoch_seconds']:>7.1f} "
                    f"{e['train_images']:>7,}")
    return "\n".join(rows)


def read_runs(runs_dir) -> List[Dict]:
    """The ``results.json`` of every run folder under ``runs_dir`` (any depth), oldest first."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"{runs_dir} is not a folder of runs (python -m common.train writes them)")
    found = []
    for path in sorted(runs_dir.rglob("results.json")):
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: unreadable results file: {error}") from None
        if not isinstance(entry, dict) or "config" not in entry or "history" not in entry:
            raise ValueError(f"{path}: not a results.json of python -m common.train (no config/history)")
        entry["run"] = str(path.parent.relative_to(runs_dir)) if path.parent != runs_dir else path.parent.name
        found.append(entry)
    return found


def runs_table(entries: Sequence[Dict]) -> str:
    """One row per run: folder, recipe or model, status, epochs, best val accuracy, test accuracy,
    the notebook's accuracy (for an unchanged recipe), wall time, processes and device."""
    def pct(value):
        return f"{value:.2%}" if value is not None else "-"

    rows = []
    for e in entries:
        config, best = e["config"], e.get("best") or {}
        rows.append((e["run"], config.get("recipe") or config["model"], e.get("status", "?"),
                     f"{e.get('epochs_done', len(e['history']['train_loss']))}/{config['epochs']}",
                     pct(best.get("val_acc")), pct(e.get("test_acc")),
                     pct(config.get("notebook_accuracy")) if e.get("recipe_unchanged") else "-",
                     f"{e.get('wall_seconds', 0) / 60:.1f}", str(e["hardware"]["processes"]),
                     e["hardware"].get("gpu") or e["hardware"]["device"]))
    header = ("run", "recipe/model", "status", "epochs", "best val", "test acc", "notebook", "minutes", "procs",
              "device")
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    left = {0, 1, 2, 9}

    def fmt(row):
        return " ".join(f"{c:<{w}}" if i in left else f"{c:>{w}}" for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    lines = [fmt(header), "-" * len(fmt(header))] + [fmt(r) for r in rows]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m common.results",
                                     description="A table of the runs of python -m common.train.")
    parser.add_argument("runs_dir", nargs="?", default=str(ROOT / "runs"), help="folder of runs (default runs/)")
    args = parser.parse_args(argv)
    try:
        entries = read_runs(args.runs_dir)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    text = runs_table(entries) if entries else f"no runs (results.json) under {args.runs_dir}"
    print(text)
    return text


if __name__ == "__main__":
    main()
