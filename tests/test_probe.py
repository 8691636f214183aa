"""common.probe: the weighted kNN classifier, the linear probe and feature extraction, on features whose answer
is known.

* kNN: well-separated Gaussian clusters are classified without error; a hand-computed case where the
  similarity-weighted vote and the unweighted majority disagree, with the temperature at which the winner
  flips (T* = (s1 - s0) / ln 2) located on both sides; cosine, not dot product (norms do not matter); an
  independent plain-Python loop agrees on random features; batching changes nothing.
* Linear probe: clusters give 100% val accuracy; the weight decay is chosen on val in two constructed cases
  with opposite answers (imbalanced separable data needs a small decay; pure noise needs a large one, which
  falls back to the class prior); the result satisfies the optimality condition of the convex objective
  (gradient computed here by hand, with torch's softmax); the same inputs give the same probe.
* extract_features: eval mode, no gradient, batched = unbatched, training mode restored.
* Errors for bad input name what was expected and what came.
"""
import math

import pytest
import torch
from torch import nn

from common.probe import (LinearProbe, extract_features, knn_accuracy, knn_classify, linear_probe,
                          probe_accuracy)


def clusters(per_class, num_classes=10, dim=16, spread=0.1, seed=0):
    """Gaussian clusters around random unit directions: features (C * per_class, dim), labels."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(123))
    centres = 3 * centres / centres.norm(dim=1, keepdim=True)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    features = centres[labels] + spread * torch.randn(labels.shape[0], dim, generator=generator)
    return features, labels


def at_cosine(cosine, norm):
    """A 2-D vector of length `norm` whose cosine with (1, 0) is `cosine`."""
    return [norm * cosine, norm * math.sqrt(1 - cosine ** 2)]


# ----------------------------------------------------------------------------------------------- kNN
def test_knn_separated_clusters_are_all_correct():
    train_x, train_y = clusters(30)
    query_x, query_y = clusters(10, seed=1)
    assert knn_accuracy(train_x, train_y, query_x, query_y) == 1.0


def test_knn_weighted_vote_against_majority_hand_computed():
    # two class-0 neighbours at cosine 0.5, one class-1 neighbour at cosine 0.99, a far class-2 point;
    # the norms differ wildly, so a dot product (instead of the cosine) would rank them differently
    train = torch.tensor([at_cosine(0.5, 10.0), at_cosine(0.5, 7.0), at_cosine(0.99, 0.1), at_cosine(-0.9, 50.0)])
    labels = torch.tensor([0, 0, 1, 2])
    query = torch.tensor([[2.0, 0.0]])
    # class 1 wins iff exp(0.99 / T) > 2 exp(0.5 / T), i.e. T < 0.49 / ln 2 = 0.7069
    flip = 0.49 / math.log(2)
    assert knn_classify(train, labels, query, k=3, temperature=0.07).item() == 1          # weighted: nearest wins
    assert knn_classify(train, labels, query, k=3, temperature=flip * 0.98).item() == 1
    assert knn_classify(train, labels, query, k=3, temperature=flip * 1.02).item() == 0   # majority takes over
    assert knn_classify(train, labels, query, k=3, temperature=100.0).item() == 0
    assert knn_classify(train, labels, query, k=1).item() == 1                            # the single nearest
    assert knn_classify(train, labels, query, k=4, temperature=100.0).item() == 0         # class 2 is 1 of 4


def test_knn_against_a_plain_loop():
    generator = torch.Generator().manual_seed(3)
    train_x, train_y = torch.randn(60, 5, generator=generator), torch.randint(0, 4, (60,), generator=generator)
    query_x = torch.randn(25, 5, generator=generator)
    k, temperature = 7, 0.3
    expected = []
    for q in query_x.tolist():
        cosines = []
        for x, y in zip(train_x.tolist(), train_y.tolist()):
            dot = sum(a * b for a, b in zip(q, x))
            cosines.append((dot / math.sqrt(sum(a * a for a in q) * sum(b * b for b in x)), y))
        votes = [0.0] * 4
        for cosine, y in sorted(cosines, reverse=True)[:k]:
            votes[y] += math.exp(cosine / temperature)
        expected.append(max(range(4), key=lambda c: (votes[c], -c)))
    got = knn_classify(train_x, train_y, query_x, k=k, temperature=temperature, num_classes=4, batch_size=4)
    assert got.tolist() == expected
    unbatched = knn_classify(train_x, train_y, query_x, k=k, temperature=temperature, num_classes=4,
                             batch_size=1000)
    assert torch.equal(got, unbatched)


@pytest.mark.parametrize("call, message", [
    (lambda x, y, q: knn_classify(x, y, q[:, :3]), "have 3 dimensions but the training features have 4"),
    (lambda x, y, q: knn_classify(x, y[:-1], q), "has 29 entries but its features have 30"),
    (lambda x, y, q: knn_classify(x, y, q, k=31), "only 30 training features; lower k"),
    (lambda x, y, q: knn_classify(x, y, q, k=0), "k must be a positive int"),
    (lambda x, y, q: knn_classify(x, y + 5, q, num_classes=10), "must lie in 0..9"),
    (lambda x, y, q: knn_classify(x, y - 1, q), "must lie in 0..9"),
    (lambda x, y, q: knn_classify(x, y.float(), q), "must be an integer tensor"),
    (lambda x, y, q: knn_classify(x[:, :, None], y, q), "2-D tensor (N, D)"),
    (lambda x, y, q: knn_classify(x, y, q, temperature=0.0), "temperature must be positive"),
    (lambda x, y, q: knn_accuracy(x, y, q, y[:5]), "has 5 entries but its features have 10"),
])
def test_knn_errors(call, message):
    generator = torch.Generator().manual_seed(0)
    train_x, train_y = torch.randn(30, 4, generator=generator), torch.randint(0, 10, (30,), generator=generator)
    query_x = torch.randn(10, 4, generator=generator)
    with pytest.raises((ValueError, TypeError), match=None) as error:
        call(train_x, train_y, query_x)
    assert message in str(error.value), str(error.value)


# ---------------------------------------------------------------------------------------- linear probe
def test_probe_separated_clusters_and_standardisation():
    train_x, train_y = clusters(30)
    val_x, val_y = clusters(10, seed=1)
    probe, report = linear_probe(train_x * 50 + 7, train_y, val_x * 50 + 7, val_y,        # scale and shift:
                                 weight_decays=(1e-2, 1e-4), max_iter=50)                # standardised
    assert report["val_accuracy"] == 1.0
    assert probe_accuracy(probe, val_x * 50 + 7, val_y) == 1.0
    torch.testing.assert_close(probe.mean, (train_x * 50 + 7).mean(dim=0))
    assert [t["weight_decay"] for t in report["trials"]] == sorted(t["weight_decay"] for t in report["trials"])[::-1]


def test_probe_picks_the_small_decay_when_the_classes_are_imbalanced():
    # separable, 90:10 in train, 50:50 in val: a huge decay flattens W and the bias predicts class 0 everywhere
    generator = torch.Generator().manual_seed(0)
    train_y = torch.tensor([0] * 90 + [1] * 10)
    val_y = torch.tensor([0] * 50 + [1] * 50)
    shift = torch.tensor([3.0, 0.0])
    train_x = (2 * train_y[:, None] - 1) * shift + 0.5 * torch.randn(100, 2, generator=generator)
    val_x = (2 * val_y[:, None] - 1) * shift + 0.5 * torch.randn(100, 2, generator=generator)
    probe, report = linear_probe(train_x, train_y, val_x, val_y, weight_decays=(1e3, 1e-4), num_classes=2)
    by_decay = {t["weight_decay"]: t["val_accuracy"] for t in report["trials"]}
    assert by_decay == {1e3: 0.5, 1e-4: 1.0}, by_decay
    assert report["weight_decay"] == 1e-4 and probe_accuracy(probe, val_x, val_y) == 1.0


def test_probe_picks_the_large_decay_on_pure_noise():
    # no information in the features: a small decay memorises the 60 training points in 100 dimensions and
    # predicts the minority class on some val points; a large one falls back to the prior (80% class 0)
    generator = torch.Generator().manual_seed(1)
    train_x, val_x = torch.randn(60, 100, generator=generator), torch.randn(500, 100, generator=generator)
    train_y, val_y = torch.tensor([0] * 48 + [1] * 12), torch.tensor([0] * 400 + [1] * 100)
    probe, report = linear_probe(train_x, train_y, val_x, val_y, weight_decays=(1e-4, 10.0), num_classes=2)
    by_decay = {t["weight_decay"]: t for t in report["trials"]}
    assert by_decay[1e-4]["train_accuracy"] == 1.0 and by_decay[1e-4]["val_accuracy"] < 0.75
    assert by_decay[10.0]["val_accuracy"] == 0.8
    assert report["weight_decay"] == 10.0


def test_probe_is_the_optimum_and_deterministic():
    train_x, train_y = clusters(20, num_classes=4, dim=6, spread=2.0)
    val_x, val_y = clusters(10, num_classes=4, dim=6, spread=2.0, seed=1)
    probe, report = linear_probe(train_x.double(), train_y, val_x.double(), val_y, weight_decays=(1e-2,),
                                 num_classes=4, dtype=torch.float64, max_iter=200)
    # the gradient of mean CE + wd/2 |W|^2, by hand: (softmax(Z) - onehot)^T X / N + wd W, and the bias' mean
    standard = (train_x.double() - probe.mean) / probe.std
    residual = torch.softmax(probe.linear(standard), dim=1) - nn.functional.one_hot(train_y, 4).double()
    grad_weight = residual.T @ standard / train_x.shape[0] + 1e-2 * probe.linear.weight
    assert grad_weight.abs().max() < 1e-6 and residual.mean(dim=0).abs().max() < 1e-6
    assert 0.5 < report["trials"][0]["train_accuracy"] < 1.0                   # overlapping: a real optimum
    again, _ = linear_probe(train_x.double(), train_y, val_x.double(), val_y, weight_decays=(1e-2,),
                            num_classes=4, dtype=torch.float64, max_iter=200)
    assert all(torch.equal(a, b) for a, b in zip(probe.state_dict().values(), again.state_dict().values()))


@pytest.mark.parametrize("call, message", [
    (lambda x, y: linear_probe(x, y, x[:, :2], y), "val_features have 2 dimensions"),
    (lambda x, y: linear_probe(x, y, x, y[:3]), "val_labels has 3 entries"),
    (lambda x, y: linear_probe(x, y + 9, x, y), "must lie in 0..9"),
    (lambda x, y: linear_probe(x, y, x, y, weight_decays=()), "one or more values >= 0"),
    (lambda x, y: linear_probe(x.long(), y, x, y), "must be floating point"),
    (lambda x, y: probe_accuracy(linear_probe(x, y, x, y, max_iter=2)[0], x[:, :3], y), "expected features with 4"),
])
def test_probe_errors(call, message):
    x, y = torch.randn(20, 4, generator=torch.Generator().manual_seed(0)), torch.arange(20) % 10
    with pytest.raises((ValueError, TypeError)) as error:
        call(x, y)
    assert message in str(error.value), str(error.value)


def test_linear_probe_module_checks_its_buffers():
    with pytest.raises(ValueError, match="mean and std of shape"):
        LinearProbe(torch.zeros(3), torch.ones(4), 10)


# ----------------------------------------------------------------------------------------- extraction
def test_extract_features_eval_mode_no_grad_batched():
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.Dropout(0.5), nn.BatchNorm1d(5))
    encoder.train()
    encoder(torch.randn(16, 3, 2, 2))                                # moves the running statistics
    images, labels = torch.randn(23, 3, 2, 2), torch.arange(23) % 10
    features = extract_features(encoder, images, batch_size=4)
    assert encoder.training, "the training mode must be restored"
    assert features.shape == (23, 5) and not features.requires_grad and features.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(features, encoder.eval()(images))  # eval: no dropout, running statistics
    encoder.train()
    loader = [(images[i:i + 5], labels[i:i + 5]) for i in range(0, 23, 5)]
    from_loader, from_loader_labels = extract_features(encoder, loader)
    torch.testing.assert_close(from_loader, features)
    assert torch.equal(from_loader_labels, labels)
    with pytest.raises(ValueError, match="empty loader"):
        extract_features(encoder, [])
    with pytest.raises(ValueError, match=r"\(inputs, labels\) batches"):
        extract_features(encoder, [images])
