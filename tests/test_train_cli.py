"""python -m common.train / common.evaluate / common.results: exact resume, checkpoints, recipes, errors.

Every run here is tiny (a few hundred images, 1-2 epochs) so that the file takes seconds.
"""
import json
import random

import pytest
import torch

from common import data, evaluate, recipes, results, train

TINY = ["--train-limit", "192", "--val-limit", "200", "--test-limit", "200", "--batch-size", "64", "--device", "cpu",
        "--no-progress"]
# a small VGG with BatchNorm (buffers) and dropout (torch's global generator), crop+flip augmentation
# (the augmentation generator), SGD with Nesterov momentum (optimizer state) under OneCycle (scheduler state)
SMALL_VGG = ["--model", "vgg11_bn", "--model-args",
             json.dumps({"in_channels": 1, "num_classes": 10, "width": 0.125, "num_stages": 3, "pool_size": 3,
                         "hidden_features": 32, "dropout": 0.5}),
             "--optimizer", "sgd", "--lr", "0.05", "--nesterov", "--weight-decay", "5e-4", "--no-decay-1d",
             "--crop-padding", "2", "--flip", "--label-smoothing", "0.1"]


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


@pytest.mark.parametrize("extra", [[], ["--optimizer", "adamw", "--schedule", "cosine"]], ids=["sgd-onecycle", "adamw-cosine"])
def test_interrupted_and_resumed_run_ends_with_the_same_weights(tmp_path, capsys, extra):
    args = SMALL_VGG + extra + TINY + ["--epochs", "2"]
    straight = train.main(args + ["--out", str(tmp_path / "straight")])
    stopped = train.main(args + ["--out", str(tmp_path / "resumed"), "--stop-after", "1"])
    assert stopped["status"] == "stopped" and stopped["epochs_done"] == 1 and "test_acc" not in stopped
    # the resumed process must not rely on anything left in this one: scramble every generator first
    torch.manual_seed(12345)
    random.seed(6789)
    resumed = train.main(["--resume", str(tmp_path / "resumed" / "last.pt"), "--device", "cpu", "--no-progress"])
    assert "resumed after epoch 1 of 2" in capsys.readouterr().out
    a, b = _state(tmp_path / "straight" / "last.pt"), _state(tmp_path / "resumed" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2
    _assert_same_weights(a["model"], b["model"])                      # parameters and BatchNorm buffers
    assert resumed["history"]["train_loss"] == straight["history"]["train_loss"]
    assert resumed["history"]["val_acc"] == straight["history"]["val_acc"]
    assert resumed["test_acc"] == straight["test_acc"]
    assert resumed["status"] == "done" and len(resumed["history"]["seconds"]) == 2
    assert resumed["test_images"] == 200, "the val and test limits travel in the checkpoint"


def test_checkpoint_contents_and_best(tmp_path):
    summary = train.main(["--model", "lenet5", "--epochs", "2", "--schedule", "none", "--lr", "3e-3"] + TINY
                         + ["--out", str(tmp_path)])
    last, best = _state(tmp_path / "last.pt"), _state(tmp_path / "best.pt")   # weights_only=True loads them
    assert last["format"] == train.CHECKPOINT_FORMAT and last["epoch"] == 2
    assert set(last["rng"]) >= {"torch", "cuda", "python", "data_order", "augment"}
    assert last["config"]["model"] == "lenet5" and last["scheduler"] is None
    assert {"state", "param_groups"} <= set(last["optimizer"])
    val = summary["history"]["val_acc"]
    assert best["epoch"] == 1 + max(range(2), key=lambda i: (val[i], -i)) and best["best"]["val_acc"] == max(val)
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["status"] == "done" and written["test_images"] == 200 and 0 <= written["test_acc"] <= 1
    assert written["torch"] == torch.__version__ and written["hardware"]["processes"] == 1
    assert written["git_commit"] is None or len(written["git_commit"].split("+")[0]) == 40
    assert len(written["history"]["train_loss"]) == 2 and written["wall_seconds"] > 0


def test_trainval_has_no_val_and_no_best(tmp_path):
    summary = train.main(["--model", "lenet5", "--epochs", "1", "--train-split", "trainval"] + TINY
                         + ["--out", str(tmp_path)])
    assert summary["history"]["val_acc"] == [] and not (tmp_path / "best.pt").exists()
    assert (tmp_path / "last.pt").exists() and summary["best"]["val_acc"] is None


def test_recipe_overrides_and_list(tmp_path, capsys):
    train.main(["--list-recipes"])
    listing = capsys.readouterr().out
    assert all(name in listing for name in recipes.names()) and "91.05%" in listing
    summary = train.main(["--recipe", "stage2_cnn/01_lenet", "--epochs", "1"] + TINY + ["--out", str(tmp_path)])
    config = summary["config"]
    assert config["recipe"] == "stage2_cnn/01_lenet" and config["epochs"] == 1 and config["lr"] == 1e-2
    assert config["train_limit"] == 192 and summary["recipe_unchanged"] is False
    assert "the notebook's run printed" not in capsys.readouterr().out     # a changed recipe is not compared


@pytest.mark.parametrize("name", recipes.names())
def test_every_recipe_builds_its_model_and_runs_a_forward(name):
    recipe = recipes.get(name)
    assert set(recipe) <= set(recipes.DEFAULTS) | set(recipes.META), set(recipe) - set(recipes.DEFAULTS)
    torch.manual_seed(0)
    model = train.build_model(recipe["model"], recipe["model_args"]).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 1, 28, 28))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    for choice, allowed in (("optimizer", {"adamw", "sgd"}), ("schedule", {"onecycle", "cosine", "none"}),
                            ("train_split", {"train", "trainval"})):
        assert recipe[choice] in allowed


def test_recipes_quote_the_accuracy_their_notebook_printed():
    printed = {(e["notebook"], e["model"]): e["accuracy"] for e in results.collect()}
    for name in recipes.names():
        recipe = recipes.get(name)
        assert printed[(recipe["notebook"], recipe["label"])] == recipe["notebook_accuracy"], name


def _error(capsys, argv):
    with pytest.raises(SystemExit) as info:
        train.main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


def test_clear_errors(capsys, tmp_path):
    assert "unknown model 'resnet19'" in (err := _error(capsys, ["--model", "resnet19"])) and "resnet18" in err
    err = _error(capsys, ["--model", "lenet5", "--model-args", "{in_channels: 1}"])
    assert "--model-args is not valid JSON" in err and "{in_channels: 1}" in err
    assert "must be a JSON object" in _error(capsys, ["--model", "lenet5", "--model-args", "[1, 2]"])
    err = _error(capsys, ["--model", "lenet5", "--model-args", '{"depth": 3}'])
    assert "lenet5 takes no argument 'depth'" in err and "in_channels" in err
    err = _error(capsys, ["--model", "vgg11_bn", "--model-args", '{"colour": 1}'])
    assert "vgg11_bn takes no argument 'colour'" in err
    assert "BasicBlock, Bottleneck" in _error(capsys, ["--model", "ResNet", "--model-args",
                                                       '{"block": "Basic", "layers": [1, 1, 1, 1]}'])
    assert "say what to train" in _error(capsys, [])
    assert "unknown recipe" in _error(capsys, ["--recipe", "stage2_cnn/01_lenett"])
    assert "no such file" in _error(capsys, ["--resume", str(tmp_path / "missing.pt")])
    (tmp_path / "noise.pt").write_bytes(bytes(range(256)) * 4)
    assert "is not a checkpoint of this project" in _error(capsys, ["--resume", str(tmp_path / "noise.pt")])
    torch.save(train.build_model("lenet5").state_dict(), tmp_path / "plain.pt")
    assert "a plain state_dict" in _error(capsys, ["--resume", str(tmp_path / "plain.pt")])


def test_evaluate_reports_accuracy_confusion_and_refuses_foreign_files(tmp_path, capsys):
    summary = train.main(["--model", "lenet5", "--epochs", "1", "--lr", "3e-3"] + TINY + ["--out", str(tmp_path)])
    capsys.readouterr()
    report = evaluate.main([str(tmp_path / "last.pt"), "--limit", "200", "--device", "cpu"])
    out = capsys.readouterr().out
    assert report["accuracy"] == pytest.approx(summary["test_acc"])            # the same 200 test images
    matrix = torch.tensor(report["confusion"])
    assert matrix.sum() == 200 and matrix.diag().sum() == round(report["accuracy"] * 200)
    labels = data.fashion_mnist("test", limit=200)[1]
    assert matrix.sum(dim=1).tolist() == torch.bincount(labels, minlength=10).tolist()
    assert all(name in out for name in data.CLASSES) and "images/s" in out and report["images_per_second"] > 0
    assert (tmp_path / "last-confusion-test.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for path, message in ((tmp_path / "none.pt", "no such file"), (tmp_path, "no such file")):
        with pytest.raises(SystemExit):
            evaluate.main([str(path)])
        assert message in capsys.readouterr().err
    (tmp_path / "random.pt").write_bytes(torch.randint(0, 256, (512,), dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(SystemExit):
        evaluate.main([str(tmp_path / "random.pt")])
    assert "is not a checkpoint of this project" in capsys.readouterr().err
    torch.save({"model": {"w": torch.zeros(1)}, "epoch": 1}, tmp_path / "other.pt")
    with pytest.raises(SystemExit):
        evaluate.main([str(tmp_path / "other.pt")])
    assert "is not a checkpoint of this project" in capsys.readouterr().err


def test_confusion_matrix_counts():
    labels, predictions = torch.tensor([0, 0, 1, 2, 2, 2]), torch.tensor([0, 1, 1, 2, 0, 2])
    assert evaluate.confusion_matrix(labels, predictions, 3).tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_results_table_of_runs(tmp_path, capsys):
    train.main(["--model", "lenet5", "--epochs", "1"] + TINY + ["--out", str(tmp_path / "runs" / "a")])
    train.main(["--model", "lenet5", "--epochs", "2", "--stop-after", "1"] + TINY + ["--out", str(tmp_path / "runs" / "b")])
    capsys.readouterr()
    text = results.main([str(tmp_path / "runs")])
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["run", "recipe/model", "status"] and len(lines) == 4
    assert lines[2].split()[:4] == ["a", "lenet5", "done", "1/1"] and lines[3].split()[:4] == ["b", "lenet5", "stopped", "1/2"]
    (tmp_path / "runs" / "c").mkdir()
    (tmp_path / "runs" / "c" / "results.json").write_text("{broken")
    with pytest.raises(SystemExit):
        results.main([str(tmp_path / "runs")])
    assert "unreadable results file" in capsys.readouterr().err


def test_recipe_optimizer_and_schedule_are_the_notebooks():
    recipe = recipes.get("stage3_resnets/01_resnet")              # SGD, Nesterov, no decay on 1-d parameters
    model = train.build_model(recipe["model"], recipe["model_args"])
    optimizer = train.make_optimizer(model, recipe)
    assert isinstance(optimizer, torch.optim.SGD) and [g["weight_decay"] for g in optimizer.param_groups] == [5e-4, 0.0]
    decay, no_decay = (g["params"] for g in optimizer.param_groups)
    assert all(p.dim() > 1 for p in decay) and all(p.dim() <= 1 for p in no_decay)
    assert len(decay) + len(no_decay) == len(list(model.parameters()))
    assert optimizer.defaults["nesterov"] and optimizer.defaults["momentum"] == 0.9
    scheduler = train.make_scheduler(optimizer, recipe, steps_per_epoch=430)   # 55,000 images in batches of 128
    assert isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR) and scheduler.total_steps == 430 * recipe["epochs"]
    lenet = recipes.get("stage2_cnn/01_lenet")
    adamw = train.make_optimizer(train.build_model("lenet5"), lenet)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["weight_decay"] == 1e-4 and adamw.defaults["lr"] == 1e-2
    assert train.make_loss(0.0) is torch.nn.functional.cross_entropy
    assert train.make_loss(0.1).keywords == {"label_smoothing": 0.1}
