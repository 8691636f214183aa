"""python -m common.pretrain: a tiny MAE, SimCLR, MoCo and CLIP run end to end (results.json, encoder.pt loadable with
weights_only and equal to the scored encoder, listed by common.results), determinism per seed, and clear errors."""
import json

import pytest
import torch

from common import captions, data, pretrain, results
from common.models.clip import l2_normalize
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


def test_tiny_clip_run_scores_and_reloads(tmp_path, capsys):
    out = tmp_path / "clip"
    argv = ["--method", "clip", "--out", str(out), "--steps", "3", "--batch-size", "16", "--train-limit", "256",
            "--val-limit", "300", "--test-limit", "300", "--bank", "128", "--quiet"]
    summary = pretrain.main(argv)
    saved = json.loads((out / "results.json").read_text())
    assert saved["config"]["lr"] == 1e-3 and saved["config"]["weight_decay"] == 0.1        # 6.2's defaults
    assert "width" not in saved["config"] and "temperature" not in saved["config"]
    scores = saved["scores"]
    assert saved["config"]["zero_shot"] == max(scores["val_zero_shot_trials"], key=scores["val_zero_shot_trials"].get)
    assert len(scores["val_zero_shot_trials"]) == 6 and saved["test_acc"] == scores["test_zero_shot"]
    for direction in ("text_to_image", "image_to_text"):
        recalls = scores["test_retrieval"][direction]
        assert set(recalls) == {"R@1", "R@5", "R@10"} and 0 <= recalls["R@1"] <= recalls["R@5"] <= recalls["R@10"] <= 1
    assert "test zero-shot" in capsys.readouterr().out
    # the saved model is the one that was scored: its held-out retrieval, recomputed from the file, is the reported one
    model = pretrain.load_encoder(out / "encoder.pt")
    test = captions.captioned_fashion_mnist("test", limit=300)
    held = test.attributes["held_out"]
    with torch.no_grad():
        units = l2_normalize(model.encode_image(test.images[held]))
    recomputed = pretrain.clip_retrieval(model, units, test.attributes["combo"][held], "cpu")
    assert recomputed == scores["test_retrieval"]
    assert summary["steps"] == 3 and "clip" in results.runs_table(results.read_runs(tmp_path))


def test_method_defaults_stay_those_of_the_notebooks():
    args = pretrain._parser().parse_args(["--method", "moco", "--steps", "1"])
    config = pretrain.make_config(args)
    assert config["lr"] == 5e-3 and config["weight_decay"] == 1e-4 and config["temperature"] == 0.2


def test_train_clip_trains_the_small_clip_and_checks_its_budget():
    from common.captions import captioned_fashion_mnist
    from common.pretrain import train_clip
    pairs = captioned_fashion_mnist("train", limit=256)
    model, log = train_clip(pairs, steps=3, batch_size=64, device="cpu", progress=False)
    assert log["steps"] == 3 and len(log["loss"]) == 3 and not model.training
    again, _ = train_clip(pairs, steps=3, batch_size=64, device="cpu", progress=False)
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), f"same seed, same model: {name} differs"
    for kwargs, message in (({}, "exactly one budget"), ({"steps": 1, "seconds": 1.0}, "exactly one budget"),
                            ({"steps": 0}, "must be positive"), ({"steps": 1, "batch_size": 257}, "batch_size")):
        with pytest.raises(ValueError, match=message):
            train_clip(pairs, progress=False, **kwargs)
    with pytest.raises(TypeError, match="Captioned"):
        train_clip(pairs.images, steps=1)
