"""Updaters: torch.optim twins on dense parameters, laziness on rows, growth, clipping, resume."""

from __future__ import annotations

import copy
import math
import pickle
import random

import pytest
import safetensors.torch
import torch

from river_torchrec import CTRClassifier, optim
from river_torchrec.optim import (
    OGD,
    OSGD,
    Adagrad,
    Adam,
    DenseGrad,
    FTRLProximal,
    RowWiseAdagrad,
    SparseGrad,
    Updater,
)

FACTORIES = {
    "ogd": lambda: OGD(lr=0.1),
    "adam": lambda: Adam(lr=0.01, weight_decay=0.01),
    "adagrad": lambda: Adagrad(lr=0.1, initial_accumulator_value=0.1),
    "rowwise_adagrad": lambda: RowWiseAdagrad(lr=0.1, initial_accumulator_value=0.1),
    "ftrl": lambda: FTRLProximal(alpha=0.1, l1=0.001, l2=0.5),
    "osgd": lambda: OSGD(lr=0.1, buffer_size=16, batch_size=4),
}
ALL = sorted(FACTORIES)


def grads_like(shapes, n_steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=gen) for s in shapes] for _ in range(n_steps)]


def state_of(updater: Updater) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in updater.state_dict().items() if isinstance(v, torch.Tensor)}


# ------------------------------------------------------------ torch twins


TWINS = [
    (lambda: OGD(lr=0.1), lambda ps: torch.optim.SGD(ps, lr=0.1)),
    (lambda: Adam(lr=0.01), lambda ps: torch.optim.Adam(ps, lr=0.01)),
    (
        lambda: Adam(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
        lambda ps: torch.optim.Adam(ps, lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
    ),
    (lambda: Adagrad(lr=0.1), lambda ps: torch.optim.Adagrad(ps, lr=0.1)),
    (
        lambda: Adagrad(lr=0.05, eps=1e-3, initial_accumulator_value=0.5),
        lambda ps: torch.optim.Adagrad(ps, lr=0.05, eps=1e-3, initial_accumulator_value=0.5),
    ),
    # Row-wise Adagrad has no rows to share on dense parameters: per-coordinate Adagrad.
    (lambda: RowWiseAdagrad(lr=0.1, eps=1e-10), lambda ps: torch.optim.Adagrad(ps, lr=0.1)),
    (
        lambda: OSGD(lr=0.1, batch_size=1),
        lambda ps: torch.optim.SGD(ps, lr=0.1),
    ),
]


@pytest.mark.parametrize("ours, theirs", TWINS)
def test_dense_step_matches_torch_optim(ours, theirs):
    gen = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (5,), ()]
    params = [torch.randn(s, generator=gen) for s in shapes]
    twins = [torch.nn.Parameter(p.clone()) for p in params]
    updater, opt = ours(), theirs(twins)
    for gs in grads_like(shapes, 20, seed=1):
        updater.step([DenseGrad(f"p{i}", p, g.clone()) for i, (p, g) in enumerate(zip(params, gs))], [])
        for t, g in zip(twins, gs):
            t.grad = g.clone()
        opt.step()
        for p, t in zip(params, twins):
            torch.testing.assert_close(p, t.detach(), rtol=0, atol=1e-6)
    assert updater.n_steps == 20


@pytest.mark.parametrize("ours, theirs", TWINS[:5])
def test_sparse_step_on_every_row_matches_torch_optim(ours, theirs):
    # When every row is touched at every step, the lazy per-row update (with per-row
    # step counts for Adam) is the dense update of the whole table.
    gen = torch.Generator().manual_seed(2)
    table = torch.randn(6, 3, generator=gen)
    twin = torch.nn.Parameter(table.clone())
    updater, opt = ours(), theirs([twin])
    rows = torch.arange(6)
    for (g,) in grads_like([(6, 3)], 20, seed=3):
        updater.step([], [SparseGrad("t", table, rows, g.clone())])
        twin.grad = g.clone()
        opt.step()
        torch.testing.assert_close(table, twin.detach(), rtol=0, atol=1e-6)


def test_clipping_matches_clip_grad_norm_then_torch_adam():
    gen = torch.Generator().manual_seed(4)
    params = [torch.randn(4, 3, generator=gen), torch.randn(3, generator=gen)]
    twins = [torch.nn.Parameter(p.clone()) for p in params]
    updater, opt = Adam(lr=0.05, clip_norm=0.5), torch.optim.Adam(twins, lr=0.05)
    for gs in grads_like([(4, 3), (3,)], 20, seed=5):
        updater.step([DenseGrad(f"p{i}", p, g.clone()) for i, (p, g) in enumerate(zip(params, gs))], [])
        for t, g in zip(twins, gs):
            t.grad = g.clone()
        torch.nn.utils.clip_grad_norm_(twins, max_norm=0.5)
        opt.step()
    for p, t in zip(params, twins):
        torch.testing.assert_close(p, t.detach(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_clipping_uses_the_joint_norm_of_dense_and_sparse_gradients(name):
    gen = torch.Generator().manual_seed(6)
    dense, table = torch.randn(3, generator=gen), torch.randn(5, 2, generator=gen)
    g_dense, g_rows = torch.tensor([3.0, 0.0, 0.0]), torch.tensor([[0.0, 4.0]])  # joint norm 5
    clipped, plain = FACTORIES[name](), FACTORIES[name]()
    clipped.clip_norm = 1.0
    d1, t1, d2, t2 = dense.clone(), table.clone(), dense.clone(), table.clone()
    clipped.step([DenseGrad("d", d1, g_dense.clone())], [SparseGrad("t", t1, torch.tensor([2]), g_rows.clone())])
    plain.step([DenseGrad("d", d2, g_dense / 5)], [SparseGrad("t", t2, torch.tensor([2]), g_rows / 5)])
    torch.testing.assert_close(d1, d2, rtol=0, atol=1e-7)
    torch.testing.assert_close(t1, t2, rtol=0, atol=1e-7)


def test_ogd_closed_form_on_rows():
    table = torch.ones(4, 2)
    OGD(lr=0.5).step([], [SparseGrad("t", table, torch.tensor([1, 3]), torch.tensor([[2.0, 0.0], [0.0, -4.0]]))])
    assert table.tolist() == [[1, 1], [0, 1], [1, 1], [1, 3]]


def test_adam_row_first_touched_late_gets_a_first_step():
    # Each row has its own step count: a row first updated after 50 steps of others
    # moves by lr * sign(g), Adam's first step, not by a damped or undamped amount.
    table = torch.zeros(3, 2)
    updater = Adam(lr=0.01)
    for _ in range(50):
        updater.step([], [SparseGrad("t", table, torch.tensor([1]), torch.tensor([[1.0, -1.0]]))])
    updater.step([], [SparseGrad("t", table, torch.tensor([2]), torch.tensor([[3.0, -0.2]]))])
    torch.testing.assert_close(table[2], torch.tensor([-0.01, 0.01]), rtol=1e-5, atol=0)
    assert updater.state_dict()["t/step"].tolist() == [0, 50, 1]


def test_rowwise_adagrad_closed_form():
    gen = torch.Generator().manual_seed(7)
    table = torch.randn(5, 4, generator=gen)
    start = table.clone()
    updater = RowWiseAdagrad(lr=0.1, eps=1e-8, initial_accumulator_value=0.2)
    g1, g2 = torch.randn(2, 4, generator=gen), torch.randn(1, 4, generator=gen)
    updater.step([], [SparseGrad("t", table, torch.tensor([1, 3]), g1.clone())])
    updater.step([], [SparseGrad("t", table, torch.tensor([3]), g2.clone())])
    s1 = g1.double().square().mean(1)
    s3 = s1[1] + g2.double().square().mean()
    want = start.double()
    want[1] -= 0.1 * g1[0].double() / ((0.2 + s1[0]).sqrt() + 1e-8)
    want[3] -= 0.1 * g1[1].double() / ((0.2 + s1[1]).sqrt() + 1e-8)
    want[3] -= 0.1 * g2[0].double() / ((0.2 + s3).sqrt() + 1e-8)
    torch.testing.assert_close(table.double(), want, rtol=0, atol=1e-6)
    state = updater.state_dict()
    assert state["t/sum_sq_row"].shape == (5,)  # one accumulator per row
    torch.testing.assert_close(state["t/sum_sq_row"].double(), torch.tensor([0, s1[0], 0, s3, 0]).double())


# --------------------------------------------------------------- laziness


@pytest.mark.parametrize("name", ALL)
def test_untouched_rows_and_their_state_do_not_change(name):
    gen = torch.Generator().manual_seed(8)
    table = torch.randn(7, 3, generator=gen)
    updater = FACTORIES[name]()
    updater.step([], [SparseGrad("t", table, torch.tensor([1, 3, 5]), torch.randn(3, 3, generator=gen))])
    weights, state = table.clone(), state_of(updater)
    touched = torch.tensor([2, 3])
    updater.step([], [SparseGrad("t", table, touched, torch.randn(2, 3, generator=gen))])
    untouched = torch.tensor([0, 1, 4, 5, 6])
    assert torch.equal(table[untouched], weights[untouched])
    assert not torch.equal(table[touched], weights[touched])
    for key, before in state.items():
        if key.startswith("t/"):
            assert torch.equal(state_of(updater)[key][untouched], before[untouched]), key


@pytest.mark.parametrize("name", ALL)
def test_recycled_rows_restart_from_fresh_state(name):
    gen = torch.Generator().manual_seed(9)
    table = torch.randn(4, 3, generator=gen)
    updater = FACTORIES[name]()
    for _ in range(3):
        updater.step([], [SparseGrad("t", table, torch.tensor([1, 2]), torch.randn(2, 3, generator=gen))])
    kept = {k: v[1].clone() for k, v in state_of(updater).items() if k.startswith("t/")}
    updater.reset_rows("t", [2])
    fresh_row, g = torch.randn(3, generator=gen), torch.randn(1, 3, generator=gen)
    table[2] = fresh_row
    updater.step([], [SparseGrad("t", table, torch.tensor([2]), g.clone())])

    fresh_table = torch.zeros(4, 3)
    fresh_table[2] = fresh_row
    FACTORIES[name]().step([], [SparseGrad("t", fresh_table, torch.tensor([2]), g.clone())])
    assert torch.equal(table[2], fresh_table[2])
    for key, before in kept.items():
        assert torch.equal(state_of(updater)[key][1], before), key  # row 1 keeps its state


@pytest.mark.parametrize("name", ALL)
def test_growth_keeps_the_state_of_existing_coordinates(name):
    # A twin that never grows sees the same gradients on the old coordinates; as every
    # updater is per coordinate (or per row), the old coordinates must agree exactly.
    gen = torch.Generator().manual_seed(10)
    dense, table = torch.randn(3, 4, generator=gen), torch.randn(5, 2, generator=gen)
    small_d, small_t = dense.clone(), table.clone()
    grower, twin = FACTORIES[name](), FACTORIES[name]()
    for step in range(12):
        if step == 5:  # a first layer gains input columns, the table gains rows
            dense = torch.cat([dense, torch.zeros(3, 2)], dim=1)
            table = torch.cat([table, torch.randn(4, 2, generator=gen)])
        g = torch.randn(dense.shape, generator=gen)
        rows = torch.tensor([1, 3] if step < 5 else [1, 3, 6, 8])
        gt = torch.randn(len(rows), 2, generator=gen)
        grower.step([DenseGrad("d", dense, g.clone())], [SparseGrad("t", table, rows, gt.clone())])
        old = rows < 5
        twin.step([DenseGrad("d", small_d, g[:, :4].clone())], [SparseGrad("t", small_t, rows[old], gt[old].clone())])
        assert torch.equal(dense[:, :4], small_d)
        assert torch.equal(table[:5], small_t)
    state = grower.state_dict()
    assert all(v.shape[0] == 9 for k, v in state.items() if k.startswith("t/"))


def test_adagrad_grown_coordinates_start_from_the_initial_accumulator():
    param = torch.zeros(1)
    updater = Adagrad(lr=1.0, eps=0.0, initial_accumulator_value=3.0)
    updater.step([DenseGrad("p", param, torch.tensor([1.0]))], [])
    param = torch.cat([param, torch.zeros(1)])
    updater.step([DenseGrad("p", param, torch.tensor([0.0, 1.0]))], [])
    assert param[1].item() == pytest.approx(-1 / math.sqrt(3.0 + 1.0))
    updater.reset_state()
    updater.step([DenseGrad("p", param, torch.tensor([0.0, 1.0]))], [])
    assert param[1].item() == pytest.approx(-2 / math.sqrt(4.0))


# ------------------------------------------------ clone, pickle and resume


@pytest.mark.parametrize("name", ALL)
def test_clone_is_fresh_and_pickle_round_trips(name):
    updater = FACTORIES[name]()
    table = torch.randn(4, 2)
    updater.select(torch.tensor([[1, 2]]), torch.ones(1, 2), torch.ones(1), torch.ones(1))
    updater.step(
        [DenseGrad("d", torch.randn(3), torch.randn(3))], [SparseGrad("t", table, torch.tensor([1]), torch.ones(1, 2))]
    )
    restored = pickle.loads(pickle.dumps(updater))
    assert restored.n_steps == 1
    a, b = updater.state_dict(), restored.state_dict()
    assert (name == "ogd" or len(a) > 1) and a.keys() == b.keys()
    assert all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a)
    fresh = updater.clone()
    assert type(fresh) is type(updater) and fresh._get_params() == updater._get_params()
    if name == "osgd":
        assert updater.n_buffered == restored.n_buffered == 1 and fresh.n_buffered == 0
        assert fresh.state_dict().pop("osgd_buffer/counters").tolist() == [0, 0, 0]
    else:
        assert fresh.state_dict() == {"n_steps": 0}
    for params in type(updater)._unit_test_params():
        assert type(updater)(**params).clone()._get_params() == type(updater)(**params)._get_params()


def events(n: int, seed: int):
    """A stream whose fields appear over time (the first layer and the table grow)."""
    rng = random.Random(seed)
    for i in range(n):
        a, b = rng.randrange(8), rng.randrange(8)
        x = {"a": f"a{a}", "b": f"b{b}", "num": rng.random()}
        if i >= n // 3:
            x["late"] = f"l{rng.randrange(4)}"
        yield x, rng.random() < (0.8 if (a + b) % 2 else 0.2)


def safetensors_round_trip(state: dict) -> dict:
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    loaded = safetensors.torch.load(safetensors.torch.save({k: v.contiguous() for k, v in tensors.items()}))
    return {**{k: v for k, v in state.items() if k not in tensors}, **loaded}


@pytest.mark.parametrize("name", ALL)
def test_state_dict_resumes_exactly(name):
    stream = list(events(240, seed=11))
    kwargs = dict(model="deepfm", embedding_dim=4, hidden_units=(8,), seed=3)
    a = CTRClassifier(optimizer=FACTORIES[name](), **kwargs)
    b = CTRClassifier(optimizer=FACTORIES[name](), **kwargs)
    for x, y in stream[:120]:
        a.learn_one(x, y)
        b.learn_one(x, y)
    saved = safetensors_round_trip(b.updater.state_dict())
    # A fresh updater loading the state has it all, counters included...
    fresh = b.updater.clone()
    fresh.load_state_dict(saved)
    full = b.updater.state_dict()
    assert fresh.state_dict().keys() == full.keys()
    assert all(torch.equal(torch.as_tensor(fresh.state_dict()[k]), torch.as_tensor(full[k])) for k in full)
    # ... and the classifier whose updater forgot everything and reloaded it continues
    # exactly as the one that never stopped.
    b.updater.reset_state()
    b.updater.n_steps = 0
    b.updater.load_state_dict(saved)
    for x, y in stream[120:]:
        a.learn_one(x, y)
        b.learn_one(x, y)
    for (na, pa), (nb, pb) in zip(a.model_.state_dict().items(), b.model_.state_dict().items()):
        assert na == nb and torch.equal(pa, pb), na
    assert a.model_.n_fields == 4


@pytest.mark.parametrize("name", ["adagrad", "rowwise_adagrad", "ftrl", "osgd"])
def test_names_build_updaters_with_the_given_learning_rate(name):
    updater = optim.make_updater(name, lr=0.123)
    assert isinstance(updater, optim.UPDATERS[name]) and updater.lr == 0.123
    assert CTRClassifier(model="lr", optimizer=name, lr=0.2).updater.lr == 0.2


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Adagrad(lr=-1.0), "lr"),
        (lambda: Adagrad(eps=-1.0), "eps"),
        (lambda: RowWiseAdagrad(initial_accumulator_value=-1.0), "initial_accumulator_value"),
        (lambda: FTRLProximal(alpha=0.0), "alpha"),
        (lambda: FTRLProximal(l1=-0.1), "l1"),
        (lambda: FTRLProximal(beta=0.0, l2=0.0), "beta and l2"),
        (lambda: OSGD(buffer_size=0), "buffer_size"),
        (lambda: OSGD(batch_size=1.5), "batch_size"),
        (lambda: OGD(clip_norm=0.0), "clip_norm"),
        (lambda: Adam(betas=(0.9, 1.0)), "betas"),
    ],
)
def test_bad_hyper_parameters_are_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_module_state_is_not_shared_between_deep_copies():
    updater = Adagrad()
    p = torch.zeros(2)
    updater.step([DenseGrad("p", p, torch.ones(2))], [])
    twin = copy.deepcopy(updater)
    updater.step([DenseGrad("p", p, torch.ones(2))], [])
    assert twin.state_dict()["p/sum_sq"].tolist() == [1.0, 1.0]
    assert updater.state_dict()["p/sum_sq"].tolist() == [2.0, 2.0]
