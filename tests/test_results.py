"""common.results: the result line a notebook prints, read back from stored notebooks, and the table."""
import json

import pytest
from torch import nn

from common import results
from common.training import History


def _history(accs=(0.5, 0.8125)):
    return History(train_loss=[1.0] * len(accs), train_acc=list(accs), val_loss=[1.0] * len(accs),
                   val_acc=list(accs), seconds=[10.0, 14.0][:len(accs)])


def _notebook(tmp_path, name, lines):
    cells = [{"cell_type": "markdown", "metadata": {}, "source": ["# title"]},
             {"cell_type": "code", "metadata": {}, "source": ["x = 1"], "execution_count": 1, "outputs": [
                 {"output_type": "stream", "name": "stdout", "text": [line + "\n" for line in lines]}]}]
    path = tmp_path / name
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


def test_record_prints_one_parseable_line_with_measured_size(capsys):
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    entry = results.record("toy", notebook="stageX/00_toy", history=_history(), model=model,
                           input_shape=(1, 2, 2), train_images=640)
    printed = capsys.readouterr().out.strip()
    assert printed.startswith(results.PREFIX)
    assert json.loads(printed[len(results.PREFIX):]) == entry
    assert entry["accuracy"] == 0.8125 and entry["parameters"] == 15 and entry["macs"] == 12
    assert entry["epochs"] == 2 and entry["epoch_seconds"] == 12.0 and entry["train_images"] == 640


def test_record_needs_a_test_accuracy():
    empty = History(train_loss=[1.0], train_acc=[0.5], seconds=[1.0])
    with pytest.raises(ValueError, match="no test accuracy"):
        results.record("toy", notebook="n", history=empty, model=nn.Linear(2, 2), input_shape=(1, 2),
                       train_images=1)


def test_collect_reads_stored_outputs_in_order(tmp_path, capsys):
    model = nn.Linear(2, 2)
    first = results.record("a", notebook="n1", history=_history(), model=model, input_shape=(1, 2), train_images=1)
    second = results.record("b", notebook="n2", history=_history((0.9,)), model=model, input_shape=(1, 2),
                            train_images=2)
    lines = capsys.readouterr().out.splitlines()
    paths = [_notebook(tmp_path, "1.ipynb", ["epoch 1 ...", lines[0]]), _notebook(tmp_path, "2.ipynb", [lines[1]])]
    assert results.collect(paths) == [first, second]
    text = results.table([first, second])
    assert "81.25%" in text and "90.00%" in text and text.count("\n") == 3
    long = dict(first, model="a model with a much longer name than the header", notebook="stage9_x/99_a_long_notebook")
    lines = results.table([first, long]).splitlines()
    assert len({line.index("%") for line in lines[2:]}) == 1, "columns stay aligned with long names"


def test_collect_rejects_broken_lines(tmp_path):
    with pytest.raises(ValueError, match="unreadable"):
        results.collect([_notebook(tmp_path, "bad.ipynb", [results.PREFIX + "{not json"])])
    with pytest.raises(ValueError, match="lacks"):
        results.collect([_notebook(tmp_path, "short.ipynb", [results.PREFIX + '{"model": "x"}'])])


def test_collect_of_the_repository_parses():
    for entry in results.collect():
        assert 0.0 < entry["accuracy"] <= 1.0 and entry["budget"] == "default", entry


def test_record_takes_the_test_accuracy_explicitly(capsys):
    model = nn.Linear(2, 2)
    entry = results.record("toy", notebook="n", history=_history(), model=model, input_shape=(1, 2), train_images=3,
                           test_accuracy=0.7512345)
    assert entry["accuracy"] == 0.7512, "the explicit test accuracy, not the history's last val accuracy"
    no_val = History(train_loss=[1.0], train_acc=[0.5], seconds=[1.0])
    assert results.record("toy", notebook="n", history=no_val, model=model, input_shape=(1, 2), train_images=3,
                          test_accuracy=0.5)["accuracy"] == 0.5
    with pytest.raises(ValueError, match="fraction"):
        results.record("toy", notebook="n", history=no_val, model=model, input_shape=(1, 2), train_images=3,
                       test_accuracy=75.0)
