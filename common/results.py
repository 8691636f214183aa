"""One machine-readable line per trained model, and the table that gathers them across notebooks.

A notebook that trains a model ends its experiment with::

    results.record("ResNet (small)", notebook="stage3_resnets/01_resnet", history=history,
                   model=model, input_shape=(1, 1, 28, 28))

which prints ``result: {...}`` (JSON: accuracy, parameters, MACs per image, epochs, seconds per
epoch, training images, budget). ``collect()`` reads those lines back from the *stored outputs* of
the committed notebooks, so a comparison table at the end of a stage quotes exactly what the
earlier notebooks printed in their default-budget runs, never a number typed in by hand.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

from . import budget

__all__ = ["PREFIX", "record", "collect", "table"]

PREFIX = "result: "
ROOT = Path(__file__).resolve().parent.parent
FIELDS = ("model", "notebook", "accuracy", "parameters", "macs", "epochs", "epoch_seconds", "train_images", "budget")


def record(name: str, *, notebook: str, history, model, input_shape: Sequence[int],
           train_images: int) -> Dict:
    """Print the result line of one trained model and return it as a dict.

    ``history`` is the :class:`common.training.History` of the run (its last validation accuracy is the
    test accuracy quoted); parameters and MACs are measured on ``model`` by :mod:`common.complexity`.
    """
    from .complexity import profile

    if not history.val_acc:
        raise ValueError(f"record({name!r}): the history has no test accuracy (train with val_loader=...)")
    size = profile(model, input_shape)
    line = {
        "model": name,
        "notebook": notebook,
        "accuracy": round(float(history.final_val_acc), 4),
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
