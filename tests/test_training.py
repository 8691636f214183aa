import pytest
import torch
from torch import nn

from common import data, training


def _blobs(n=512, seed=0):
    generator = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=generator)
    centres = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.5]])
    x = centres[y] + 0.5 * torch.randn(n, 2, generator=generator)
    return x, y


def test_fit_learns_and_records_history(capsys):
    training.seed_everything(0)
    x, y = _blobs()
    train = data.TensorLoader(x, y, batch_size=64, shuffle=True)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3))
    history = training.fit(model, train, epochs=3, lr=0.05, val_loader=data.TensorLoader(x, y, batch_size=128),
                           progress=False, device=torch.device("cpu"))
    assert history.epochs == 3 and len(history.val_acc) == 3 and len(history.seconds) == 3
    assert history.train_loss[-1] < history.train_loss[0]
    assert history.final_val_acc > 0.9
    assert "epoch  3/3" in capsys.readouterr().out
    loss, acc = training.evaluate(model, data.TensorLoader(x, y, batch_size=100))
    assert acc == pytest.approx(history.final_val_acc) and loss == pytest.approx(history.val_loss[-1], rel=1e-5)
    assert "3 epochs" in str(history)


def test_fit_is_reproducible_with_a_seed():
    def run():
        training.seed_everything(1)
        x, y = _blobs()
        model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 3))
        training.fit(model, data.TensorLoader(x, y, batch_size=32, shuffle=True, seed=1), epochs=1,
                     progress=False, verbose=False, device=torch.device("cpu"))
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    assert torch.equal(run(), run())


def test_fit_steps_the_scheduler_every_batch():
    x, y = _blobs(n=100)
    model = nn.Linear(2, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    training.fit(model, data.TensorLoader(x, y, batch_size=25), epochs=1, optimizer=optimizer,
                 scheduler=scheduler, progress=False, verbose=False, device=torch.device("cpu"))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.5 ** 4)


def test_fit_stops_on_a_diverging_loss():
    x, y = _blobs(n=64)
    x[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="loss became nan"):
        training.fit(nn.Linear(2, 3), data.TensorLoader(x, y, batch_size=64), epochs=1, progress=False,
                     device=torch.device("cpu"))
    with pytest.raises(ValueError, match="epochs"):
        training.fit(nn.Linear(2, 3), [], epochs=0)


def test_device_choice_and_parameter_count():
    device = training.get_device()
    expected = "cuda" if torch.cuda.is_available() else device.type
    assert device.type == expected and device.type in {"cuda", "mps", "cpu"}
    assert training.get_device("cpu") == torch.device("cpu")
    assert training.count_parameters(nn.Linear(4, 3)) == 15


def test_fit_in_pieces_equals_fit_at_once():
    def model_and_loader():
        training.seed_everything(2)
        x, y = _blobs(n=200)
        model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 3))
        return model, data.TensorLoader(x, y, batch_size=32, shuffle=True, seed=4)

    model, loader = model_and_loader()
    whole = training.fit(model, loader, epochs=3, lr=0.05, progress=False, verbose=False, device=torch.device("cpu"))
    other, loader = model_and_loader()
    optimizer = torch.optim.AdamW(other.parameters(), lr=0.05)
    seen = []
    part = training.fit(other, loader, epochs=3, optimizer=optimizer, progress=False, verbose=False,
                        device=torch.device("cpu"), stop_epoch=1, on_epoch_end=lambda e, h: seen.append(e))
    assert part.epochs == 1 and seen == [1]
    part = training.fit(other, loader, epochs=3, optimizer=optimizer, progress=False, verbose=False,
                        device=torch.device("cpu"), start_epoch=1, history=part, on_epoch_end=lambda e, h: seen.append(e))
    assert seen == [1, 2, 3] and part.train_loss == whole.train_loss
    for a, b in zip(model.parameters(), other.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="stop_epoch"):
        training.fit(other, loader, epochs=3, start_epoch=2, stop_epoch=1)


def test_fit_multiplies_a_loaders_loss_weight_into_the_step():
    x, y = _blobs(n=64)

    class Weighted(data.TensorLoader):
        loss_weight = 0.5

    grads = []
    for loader, lr in ((data.TensorLoader(x, y, batch_size=64), 0.5), (Weighted(x, y, batch_size=64), 1.0)):
        torch.manual_seed(0)
        model = nn.Linear(2, 3)
        history = training.fit(model, loader, epochs=1, optimizer=torch.optim.SGD(model.parameters(), lr=lr),
                               progress=False, verbose=False, device=torch.device("cpu"))
        grads.append((model.weight.detach().clone(), history.train_loss[0]))
    torch.testing.assert_close(grads[0][0], grads[1][0])              # half the gradient at twice the lr
    assert grads[0][1] == grads[1][1], "the logged loss is the unweighted one"


def _toy(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] > 0).long()
    return data.TensorLoader(x, y, batch_size=16, shuffle=True, seed=seed)


def test_warmup_cosine_shape():
    from common.training import warmup_cosine
    assert warmup_cosine(0.0, 0.1) == 0.0 and abs(warmup_cosine(0.05, 0.1) - 0.5) < 1e-12
    assert abs(warmup_cosine(0.1, 0.1) - 1.0) < 1e-12 and abs(warmup_cosine(0.55, 0.1) - 0.5) < 1e-12
    assert abs(warmup_cosine(1.0, 0.1)) < 1e-12
    with pytest.raises(ValueError, match="warmup"):
        warmup_cosine(0.5, 1.0)


def test_train_for_steps_is_exact_and_learns():
    from common.training import train_for
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    history = train_for(model, _toy(), steps=20, lr=0.1, val_loader=_toy(seed=1), device=torch.device("cpu"),
                        label_smoothing=0.0)
    assert history.steps == 20 and history.epochs == 4          # 6 batches a pass: 6 + 6 + 6 + 2
    assert history.val_acc[-1] > 0.85 and history.train_loss[-1] < history.train_loss[0]


def test_train_for_decays_only_matrices_and_named_exceptions():
    from common.training import train_for
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    model.register_parameter("pos_embedding", torch.nn.Parameter(torch.zeros(3, 3)))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # lr so small that the gradient step is negligible next to weight decay's shrinking when decay is large
    train_for(model, _toy(), steps=1, lr=1e-9, warmup=0.0, weight_decay=1e6, no_decay=("pos_embedding",),
              device=torch.device("cpu"))
    shrunk = {n for n, p in model.named_parameters() if not torch.allclose(p, before[n], atol=1e-6)}
    assert shrunk == {"0.weight", "1.weight"}, shrunk


def test_train_for_time_budget_and_errors():
    from common.training import train_for
    model = torch.nn.Linear(4, 2)
    history = train_for(model, _toy(), seconds=0.2, device=torch.device("cpu"))
    assert history.steps >= 1 and sum(history.seconds) < 5
    with pytest.raises(ValueError, match="exactly one budget"):
        train_for(model, _toy(), seconds=1.0, steps=3)
    with pytest.raises(ValueError, match="exactly one budget"):
        train_for(model, _toy())
    with pytest.raises(ValueError, match="positive"):
        train_for(model, _toy(), steps=0)


def test_train_for_criterion_replaces_the_loss_and_sees_the_input():
    from common.training import train_for

    class TwoHeads(torch.nn.Module):                 # training output: a pair of logits, as DeiT's
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(4, 2), torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.a(x), self.b(x)

    seen = []

    def criterion(output, x, y):
        seen.append((len(output), x.shape[1]))
        return sum(nn.functional.cross_entropy(logits, y) for logits in output)

    torch.manual_seed(0)
    model = TwoHeads()
    history = train_for(model, _toy(), steps=12, lr=0.1, criterion=criterion, device=torch.device("cpu"))
    assert seen == [(2, 4)] * 12 and history.steps == 12
    assert 0.0 <= history.train_acc[-1] <= 1.0          # accuracy of the heads' mean
    # the same run with the default loss and no smoothing is a different run: the criterion was really used
    torch.manual_seed(0)
    single = torch.nn.Linear(4, 2)
    plain = train_for(single, _toy(), steps=12, lr=0.1, label_smoothing=0.0, device=torch.device("cpu"))
    assert plain.train_loss != history.train_loss


def test_train_loss_for_steps_learns_and_logs():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    x, y = torch.randn(64, 3), torch.randn(64, 1)

    def step_loss():
        loss = ((model(x) - y) ** 2).mean()
        return loss, {"mse": loss.item()}

    first = step_loss()[0].item()
    log = training.train_loss_for(model, step_loss, steps=50, lr=0.05, progress=False)
    assert log["steps"] == 50 and len(log["loss"]) == 50 and log["extras"][0]["mse"] == log["loss"][0]
    assert log["loss"][0] == pytest.approx(first) and log["loss"][-1] < 0.8 * first
    assert not model.training                                       # handed back in eval mode


def test_train_loss_for_time_budget_and_errors():
    model = nn.Linear(2, 1)
    step = lambda: ((model(torch.ones(1, 2))) ** 2).sum()  # noqa: E731
    log = training.train_loss_for(model, lambda: (step(), {}), seconds=0.2, progress=False)
    assert log["steps"] >= 1 and 0.2 <= log["seconds"] < 2
    with pytest.raises(ValueError, match="exactly one budget"):
        training.train_loss_for(model, lambda: (step(), {}), progress=False)
    with pytest.raises(ValueError, match="positive"):
        training.train_loss_for(model, lambda: (step(), {}), steps=0, progress=False)
    with pytest.raises(TypeError, match="scalar tensor"):
        training.train_loss_for(model, lambda: (model(torch.ones(3, 2)), {}), steps=2, progress=False)
    with pytest.raises(FloatingPointError, match="became nan"):
        training.train_loss_for(model, lambda: (step() * float("nan"), {}), steps=2, progress=False)
