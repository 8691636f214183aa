"""common.models.moco (stage5_selfsupervised/03_moco.ipynb): the momentum update's invariants and closed form, the
queue against collections.deque, InfoNCE against F.cross_entropy and a loop (forward and backward, float64) and its
identity with NT-Xent, grouped / shuffled BatchNorm, the order of one MoCo step; errors."""
import copy
import math
from collections import deque

import pytest
import torch
from torch.nn import functional as F

from common.models.moco import KeyQueue, MoCo, encode_in_groups, info_nce, moco_small, momentum_update_
from common.models.simclr import ConvEncoder, ProjectionHead, nt_xent


def _flat(net):
    return torch.cat([p.detach().flatten() for p in net.parameters()])


# ---------------------------------------------------------------- momentum update

def test_momentum_limits_and_closed_form():
    torch.manual_seed(0)
    query = ConvEncoder(4).double()
    key = ConvEncoder(4).double()
    momentum_update_(key, query, 0.0)
    assert torch.equal(_flat(key), _flat(query))                   # m = 0 copies
    key = ConvEncoder(4).double()
    before = _flat(key).clone()
    momentum_update_(key, query, 1.0)
    assert torch.equal(_flat(key), before)                          # m = 1 freezes
    m, path, start = 0.8, [], _flat(key).clone()
    for _ in range(9):
        with torch.no_grad():
            for p in query.parameters():
                p.add_(torch.randn_like(p))
        path.append(_flat(query).clone())
        momentum_update_(key, query, m)
    t = len(path)
    expected = m ** t * start + (1 - m) * sum(m ** (t - s) * path[s - 1] for s in range(1, t + 1))
    torch.testing.assert_close(_flat(key), expected, rtol=1e-12, atol=1e-12)


def test_momentum_leaves_buffers_and_needs_no_grad():
    torch.manual_seed(1)
    query, key = ConvEncoder(4), ConvEncoder(4)
    query(torch.randn(3, 1, 28, 28))                                # moves the query's running statistics
    buffers = [b.clone() for b in key.buffers()]
    with torch.enable_grad():
        momentum_update_(key, query, 0.5)
    assert all(torch.equal(a, b) for a, b in zip(buffers, key.buffers()))
    assert all(p.grad is None for p in key.parameters())


@pytest.mark.parametrize("momentum", [-0.1, 1.01, True, "0.9"])
def test_momentum_rejects_bad_values(momentum):
    with pytest.raises(ValueError, match="momentum"):
        momentum_update_(ConvEncoder(4), ConvEncoder(4), momentum)


def test_momentum_rejects_other_architecture():
    with pytest.raises(ValueError, match="same architecture"):
        momentum_update_(ConvEncoder(4), ConvEncoder(8), 0.9)


# ---------------------------------------------------------------- queue

@pytest.mark.parametrize("size, pushes", [(5, [2, 2, 2, 3, 1, 5, 4]), (7, [3] * 6), (4, [4, 4, 1, 3]), (1, [1, 1, 1]),
                                          (6, [1] * 13)])
def test_queue_is_fifo_like_a_bounded_deque(size, pushes):
    queue, reference, counter = KeyQueue(size, 2), deque(maxlen=size), 0
    for batch in pushes:
        keys = torch.arange(counter, counter + batch, dtype=torch.float32)[:, None].repeat(1, 2)
        counter += batch
        queue.push(keys)
        reference.extend(keys)
        assert len(queue) == len(reference) <= size
        assert torch.equal(queue.keys(), torch.stack(list(reference)))


def test_queue_state_dict_round_trip_and_detaches():
    queue = KeyQueue(4, 3)
    keys = torch.randn(3, 3, requires_grad=True)
    queue.push(keys)
    queue.push(torch.randn(2, 3))
    assert not queue.keys().requires_grad
    restored = KeyQueue(4, 3)
    restored.load_state_dict(queue.state_dict())
    assert set(queue.state_dict()) == {"memory", "pointer", "count"}
    assert torch.equal(restored.keys(), queue.keys()) and len(restored) == 4


@pytest.mark.parametrize("size, dim", [(0, 3), (4, 0), (2.5, 3), (True, 3)])
def test_queue_rejects_bad_sizes(size, dim):
    with pytest.raises(ValueError, match="positive int"):
        KeyQueue(size, dim)


def test_queue_rejects_bad_pushes():
    queue = KeyQueue(4, 3)
    with pytest.raises(ValueError, match=r"expected keys \(B, 3\)"):
        queue.push(torch.randn(2, 5))
    with pytest.raises(ValueError, match="more than the queue holds"):
        queue.push(torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"expected keys"):
        queue.push(torch.randn(3))


# ---------------------------------------------------------------- InfoNCE

def _loop(query, key, negatives, temperature):
    cos = lambda a, b: (a @ b) / (a.norm() * b.norm())
    total = 0.0
    for q, k in zip(query, key.detach()):
        logits = torch.stack([cos(q, k)] + [cos(q, n) for n in negatives.detach()]) / temperature
        total = total + logits.exp().sum().log() - logits[0]
    return total / query.shape[0]


def _cross_entropy(query, key, negatives, temperature):
    q, k, n = F.normalize(query, dim=1), F.normalize(key.detach(), dim=1), F.normalize(negatives.detach(), dim=1)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ n.T], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(query.shape[0], dtype=torch.long))


@pytest.mark.parametrize("n, k, dim, temperature", [(1, 0, 3, 0.2), (1, 1, 1, 0.5), (4, 2, 2, 0.07),
                                                    (7, 33, 8, 0.2), (16, 64, 32, 1.0), (3, 5, 4, 25.0),
                                                    (5, 257, 16, 0.01)])
def test_info_nce_equals_loop_and_cross_entropy(n, k, dim, temperature):
    torch.manual_seed(n + k)
    query = (torch.randn(n, dim, dtype=torch.float64) * (torch.rand(n, 1, dtype=torch.float64) * 8 + 0.1))
    query.requires_grad_()
    key = torch.randn(n, dim, dtype=torch.float64, requires_grad=True)
    negatives = 4 * torch.randn(k, dim, dtype=torch.float64, requires_grad=True)
    loss, logits = info_nce(query, key, negatives, temperature)
    assert logits.shape == (n, 1 + k)
    grads = torch.autograd.grad(loss, (query, key, negatives), allow_unused=True)
    assert grads[1] is None and grads[2] is None
    for reference in (_loop, _cross_entropy):
        other = reference(query, key, negatives, temperature)
        torch.testing.assert_close(loss, other, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grads[0], torch.autograd.grad(other, query)[0], rtol=1e-10, atol=1e-12)
    assert 0 <= loss.item() <= math.log(1 + k) + 2 / temperature + 1e-9


def test_info_nce_without_negatives_is_zero_and_gradcheck():
    torch.manual_seed(0)
    query = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    key = torch.randn(4, 6, dtype=torch.float64)
    assert info_nce(query, key, torch.zeros(0, 6, dtype=torch.float64))[0].item() == 0.0
    negatives = torch.randn(9, 6, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda q: info_nce(q, key, negatives, 0.3)[0], (query,))


def test_info_nce_identical_key_is_best():
    # a query equal to its key and orthogonal to every negative: the lowest loss of all keys of the same length
    query = torch.eye(4)[:1]
    loss_same = info_nce(query, query.clone(), torch.eye(4)[1:], 0.2)[0]
    loss_other = info_nce(query, torch.eye(4)[1:2], torch.eye(4)[1:], 0.2)[0]
    assert loss_same < loss_other


@pytest.mark.parametrize("n, dim, temperature", [(1, 4, 0.5), (3, 5, 0.1), (10, 8, 0.5)])
def test_nt_xent_is_info_nce_with_in_batch_negatives(n, dim, temperature):
    torch.manual_seed(n)
    z1, z2 = torch.randn(n, dim, dtype=torch.float64), torch.randn(n, dim, dtype=torch.float64)
    views = torch.cat([z1, z2])
    losses = []
    for i in range(2 * n):
        partner = (i + n) % (2 * n)
        rest = [j for j in range(2 * n) if j not in (i, partner)]
        losses.append(info_nce(views[i:i + 1], views[partner:partner + 1], views[rest], temperature)[0])
    torch.testing.assert_close(torch.stack(losses).mean(), nt_xent(z1, z2, temperature), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("call, match", [
    (lambda: info_nce(torch.randn(4, 8), torch.randn(5, 8), torch.randn(3, 8)), "same shape"),
    (lambda: info_nce(torch.randn(4, 8), torch.randn(4, 8), torch.randn(3, 7)), "negatives"),
    (lambda: info_nce(torch.randn(4, 8, 1), torch.randn(4, 8, 1), torch.randn(3, 8)), "float tensor"),
    (lambda: info_nce(torch.ones(4, 8, dtype=torch.long), torch.ones(4, 8), torch.randn(3, 8)), "float tensor"),
    (lambda: info_nce(torch.randn(4, 8), torch.randn(4, 8), torch.randn(3, 8), 0.0), "temperature"),
    (lambda: info_nce(torch.randn(4, 8), torch.randn(4, 8), torch.randn(3, 8), -1.0), "temperature"),
])
def test_info_nce_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------- grouped BatchNorm

def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(ConvEncoder(4), ProjectionHead(16, 8, 6)).double().train()


def test_one_group_is_the_network_in_any_order():
    net, x = _net(), torch.randn(8, 1, 14, 14, dtype=torch.float64)
    permutation = torch.randperm(8)
    torch.testing.assert_close(encode_in_groups(net, x, 1), net(x), rtol=0, atol=0)
    torch.testing.assert_close(encode_in_groups(net, x, 1, permutation), net(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("groups", [2, 4])
def test_groups_have_their_own_statistics_and_shuffle_goes_back(groups):
    net, x = _net(), torch.randn(8, 1, 14, 14, dtype=torch.float64)
    size = 8 // groups
    grouped = encode_in_groups(net, x, groups)
    torch.testing.assert_close(grouped, torch.cat([net(c) for c in x.chunk(groups)]), rtol=0, atol=0)
    assert (grouped - net(x)).abs().max() > 1e-3
    permutation = torch.randperm(8, generator=torch.Generator().manual_seed(groups))
    shuffled = encode_in_groups(net, x, groups, permutation)
    for i in range(8):
        position = int((permutation == i).nonzero())
        chunk = position // size
        expected = net(x[permutation[chunk * size:(chunk + 1) * size]])[position % size]
        torch.testing.assert_close(shuffled[i], expected)
    net.eval()
    torch.testing.assert_close(encode_in_groups(net, x, groups, permutation), net(x), rtol=1e-12, atol=1e-12)


def test_groups_errors():
    net, x = _net(), torch.randn(6, 1, 14, 14, dtype=torch.float64)
    with pytest.raises(ValueError, match="divides the batch of 6"):
        encode_in_groups(net, x, 4)
    with pytest.raises(ValueError, match="divides"):
        encode_in_groups(net, x, 0)
    with pytest.raises(ValueError, match=r"permutation of shape \(6,\)"):
        encode_in_groups(net, x, 2, torch.arange(5))
    with pytest.raises(ValueError, match="expected a batch"):
        encode_in_groups(net, torch.tensor(1.0), 1)


# ---------------------------------------------------------------- MoCo

def test_moco_step_order_and_no_gradient_to_the_keys():
    torch.manual_seed(0)
    model = moco_small(width=4, queue_size=8, momentum=1.0, temperature=0.3)
    assert all(torch.equal(a, b) for a, b in zip(model.encoder.parameters(), model.key_encoder.parameters()))
    assert all(not p.requires_grad for p in list(model.key_encoder.parameters()) + list(model.key_head.parameters()))
    unit = lambda z: z / z.norm(dim=1, keepdim=True)
    for step in range(4):
        x = torch.randn(4, 1, 28, 28)
        before = model.queue.keys().clone()
        queries, keys = model.query(x), model.key(x.flip(-1))
        loss, logits = model(x, x.flip(-1))
        assert logits.shape == (4, 1 + min(4 * step, 8))
        torch.testing.assert_close(logits[:, 1:], unit(queries) @ before.T / 0.3)
        torch.testing.assert_close(logits[:, 0], (unit(queries) * unit(keys)).sum(1) / 0.3)
        torch.testing.assert_close(model.queue.keys()[-4:], unit(keys))
        if step == 0:
            assert loss.item() == 0.0
        loss.backward()
        assert all(p.grad is None for p in model.key_encoder.parameters())
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters()) or step == 0


def test_moco_forward_applies_the_momentum_before_the_keys():
    torch.manual_seed(0)
    model = moco_small(width=4, queue_size=8, momentum=0.5)
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(torch.randn_like(p))
    key_before, query_now = _flat(model.key_encoder).clone(), _flat(model.encoder).clone()
    model(torch.randn(4, 1, 28, 28), torch.randn(4, 1, 28, 28))
    torch.testing.assert_close(_flat(model.key_encoder), 0.5 * key_before + 0.5 * query_now)


def test_moco_shuffle_is_seeded_and_differs_from_unshuffled():
    x = torch.randn(8, 1, 28, 28)
    outputs = []
    for shuffle, seed in ((True, 0), (True, 0), (False, 0)):
        torch.manual_seed(0)
        model = moco_small(width=4, queue_size=16, groups=4, shuffle=shuffle)
        outputs.append(model.key(x, torch.Generator().manual_seed(seed)))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)
    assert (outputs[0] - outputs[2]).abs().max() > 1e-4


def test_moco_trains_and_checkpoints():
    torch.manual_seed(0)
    model = moco_small(width=4, queue_size=16)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(3):
        x = torch.randn(8, 1, 28, 28)
        loss, _ = model(x, x + 0.05 * torch.randn_like(x))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert len(model.queue) == 16 and torch.isfinite(loss)
    state = model.state_dict()
    assert {"queue.memory", "queue.pointer", "queue.count"} <= set(state)
    assert any(k.startswith("key_encoder.") for k in state) and any(k.startswith("key_head.") for k in state)
    clone = moco_small(width=4, queue_size=16)
    clone.load_state_dict(state)
    assert torch.equal(clone.queue.keys(), model.queue.keys())


def test_moco_small_sizes():
    model = moco_small()
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(model.encoder) == 9 * (1 * 32 + 32 * 64 + 64 * 128) + 2 * (32 + 64 + 128)
    assert count(model.key_encoder) == count(model.encoder) and model.queue.memory.shape == (4096, 64)


@pytest.mark.parametrize("kwargs, match", [({"momentum": 1.5}, "momentum"), ({"groups": 0}, "groups"),
                                           ({"queue_size": 0}, "positive int size")])
def test_moco_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        moco_small(width=4, **kwargs)


def test_moco_rejects_mismatched_views():
    model = moco_small(width=4, queue_size=8)
    with pytest.raises(ValueError, match="two views"):
        model(torch.randn(4, 1, 28, 28), torch.randn(3, 1, 28, 28))
    with pytest.raises(ValueError, match="ConvEncoder expected input"):
        model(torch.randn(4, 3, 28, 28), torch.randn(4, 3, 28, 28))
