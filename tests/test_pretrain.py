"""python -m common.pretrain: a tiny MAE, SimCLR and MoCo run end to end (results.json, encoder.pt loadable with
weights_only and equal to the scored encoder, listed by common.results), determinism per seed, and clear errors."""
import json

import pytest
import torch

from common import data, pretrain, results
from common.probe import extract_features, knn_accuracy

TINY = ["--steps", "3", "--batch-size", "16", "--train-limit", "256", "--val-limit", "64", "--test-limit", "64",
        "--bank", "128", "--width", "4", "--quiet"]


@pytest.mark.parametrize("method, extra", [("simclr", []), ("moco", ["--queue-size", "32", "--groups", "2"])])
def test_tiny_run_writes_a_loadable_encoder_and_results(tmp_path, method, extra, capsys):
    out = tmp_path / method
    summary = pretrain.main(["--method", method, "--out", str(out)] + TINY + extra)
    assert summary["steps"] == 3 and summary["status"] == "finished"
    saved = json.loads((out / "results.json").read_text())
    assert saved["config"]["method"] == method and saved["torch"] == torch.__version__
    for key in ("val_knn", "val_probe", "test_knn", "test_probe"):
        assert 0.0 <= saved["scores"][key] <= 1.0
    assert saved["test_acc"] == saved["scores"]["test_probe"]
    encoder = pretrain.load_encoder(out / "encoder.pt")
    state = torch.load(out / "encoder.pt", weights_only=True)
    assert state["config"]["width"] == 4 and set(encoder.state_dict()) == set(state["encoder"])
    assert extract_features(encoder, torch.randn(5, 1, 28, 28)).shape == (5, 16)
    # the saved encoder is the one that was scored: its test kNN, recomputed from the file, is the reported one
    train, _, test = data.loaders(batch_size=16, val=True, train_limit=256, val_limit=64, test_limit=64)
    (bank_x, bank_y), (test_x, test_y) = train.tensors, test.tensors
    recomputed = knn_accuracy(extract_features(encoder, bank_x[:128]), bank_y[:128], extract_features(encoder, test_x),
                              test_y)
    assert recomputed == saved["scores"]["test_knn"]
    assert "test probe" in capsys.readouterr().out
    table = results.runs_table(results.read_runs(tmp_path))
    assert method in table and "finished" in table


def test_same_seed_same_encoder(tmp_path):
    states = []
    for name in ("a", "b"):
        pretrain.main(["--method", "moco", "--queue-size", "32", "--out", str(tmp_path / name)] + TINY)
        states.append(torch.load(tmp_path / name / "encoder.pt", weights_only=True)["encoder"])
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@pytest.mark.parametrize("argv, message", [
    (["--method", "moco", "--queue-size", "8"], "must hold at least one batch"),
    (["--method", "moco", "--groups", "3"], "must divide --batch-size"),
    (["--method", "moco", "--momentum", "1.5"], "--momentum is in"),
    (["--method", "simclr", "--bank", "100000"], "larger than the 256 training images"),
    (["--method", "simclr", "--temperature", "0"], "--temperature must be > 0"),
])
def test_bad_configurations_say_what_is_wrong(tmp_path, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        pretrain.main(["--out", str(tmp_path / "x")] + TINY + argv)
    assert message in str(exit_info.value)


def test_argument_errors(capsys):
    with pytest.raises(SystemExit):
        pretrain.main(["--method", "byol", "--steps", "1"])
    assert "invalid choice: 'byol'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        pretrain.main(["--method", "moco", "--steps", "1", "--seconds", "2"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_load_encoder_refuses_other_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        pretrain.load_encoder(tmp_path / "missing.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not an encoder checkpoint"):
        pretrain.load_encoder(tmp_path / "text.pt")
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an encoder checkpoint"):
        pretrain.load_encoder(tmp_path / "other.pt")


def test_tiny_mae_run_chooses_a_pooling_and_reloads(tmp_path):
    out = tmp_path / "mae"
    summary = pretrain.main(["--method", "mae", "--out", str(out)] + TINY)
    assert summary["config"]["pooling"] in ("mean", "cls") and summary["config"]["mask_ratio"] == 0.75
    features = pretrain.load_encoder(out / "encoder.pt")
    x = torch.randn(5, 1, 28, 28)
    assert extract_features(features, x).shape == (5, 128)
    saved = json.loads((out / "results.json").read_text())
    assert saved["config"]["model"] == "mae_vit_tiny_patch7 encoder" and 0 <= saved["test_acc"] <= 1
