"""OSGD: the replay buffer's bound, window, determinism and growth; its steps against OGD."""

from __future__ import annotations

import random

import pandas as pd
import pytest
import torch

from river_torchrec import CTRClassifier
from river_torchrec.optim import OGD, OSGD


def event(i: int, n_fields: int = 2) -> tuple[torch.Tensor, ...]:
    """Event ``i``: its ids and values carry ``i`` so a replayed row can be traced back."""
    ids = torch.full((1, n_fields), i + 1, dtype=torch.long)
    values = torch.full((1, n_fields), float(i))
    return ids, values, torch.tensor([float(i % 2)]), torch.tensor([1.0 + i])


def learn(updater: OSGD, *batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
    selected = updater.select(*batch)
    updater.step([], [])
    return selected


def test_every_new_event_is_learned_with_distinct_recent_ones_and_the_buffer_is_bounded():
    updater = OSGD(buffer_size=10, batch_size=4, seed=3)
    replayed_ages = set()
    for i in range(60):
        ids, values, y, w = learn(updater, *event(i))
        assert len(y) == min(4, 1 + min(i, 10))
        assert values[0, 0] == i and y[0] == i % 2 and w[0] == 1 + i  # the new event comes first
        old = values[1:, 0].tolist()
        assert len(set(old)) == len(old)  # drawn without replacement
        assert all(i - 10 <= j < i for j in old)  # from the sliding window of the last 10
        assert torch.equal(ids[:, 0], values[:, 0].long() + 1) and torch.equal(w, values[:, 0] + 1)
        replayed_ages.update(i - j for j in old)
        assert updater.n_buffered == min(i + 1, 10)
        assert all(len(t) == 10 for t in updater._events.values())
    assert replayed_ages == set(range(1, 11))  # the whole window gets replayed


def test_draws_are_reproducible_and_depend_on_the_seed():
    def run(seed: int) -> list[list[float]]:
        updater = OSGD(buffer_size=20, batch_size=5, seed=seed)
        return [learn(updater, *event(i))[1][:, 0].tolist() for i in range(40)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_a_large_batch_is_not_padded_and_only_its_last_events_are_kept():
    updater = OSGD(buffer_size=5, batch_size=4, seed=0)
    batch = [torch.cat(t) for t in zip(*(event(i) for i in range(8)))]
    ids, values, y, w = learn(updater, *batch)
    assert values[:, 0].tolist() == list(range(8))
    assert sorted(updater._events["values"][:, 0].tolist()) == [3, 4, 5, 6, 7]


def test_growing_fields_pad_stored_events_with_missing_columns():
    updater = OSGD(buffer_size=4, batch_size=3, seed=0)
    learn(updater, *event(0, n_fields=2))
    learn(updater, *event(1, n_fields=2))
    ids, values, y, w = learn(updater, *event(2, n_fields=3))
    assert ids.shape == (3, 3)
    assert ids[0].tolist() == [3, 3, 3]
    assert ids[1:, 2].tolist() == [0, 0] and values[1:, 2].tolist() == [0.0, 0.0]
    assert updater._events["ids"].shape == (4, 3)


def test_events_of_rejected_steps_are_not_replayed():
    updater = OSGD(buffer_size=4, batch_size=3)
    learn(updater, *event(0))
    updater.select(*event(1))  # the classifier rejected this step: no updater.step
    _, values, _, _ = learn(updater, *event(2))
    assert updater.n_buffered == 2 and values[:, 0].tolist() == [2.0, 0.0]


def test_recycled_rows_are_erased_from_stored_events_and_reset_state_empties_the_buffer():
    updater = OSGD(buffer_size=4, batch_size=3)
    learn(updater, torch.tensor([[5, 6]]), torch.tensor([[1.0, 2.0]]), torch.ones(1), torch.ones(1))
    updater.reset_rows("embedding.weight", [6])
    assert updater._events["ids"][0].tolist() == [5, 0]
    assert updater._events["values"][0].tolist() == [1.0, 0.0]
    updater.reset_state()
    assert updater.n_buffered == 0
    ids, _, _, _ = learn(updater, *event(3))
    assert len(ids) == 1


def stream(n: int, seed: int = 0):
    rng = random.Random(seed)
    for _ in range(n):
        a, b = rng.randrange(5), rng.randrange(5)
        yield {"a": f"a{a}", "b": f"b{b}", "num": rng.random()}, rng.random() < (0.8 if a == b else 0.3)


def test_batch_size_one_is_online_gradient_descent():
    events = list(stream(200))
    osgd = CTRClassifier(model="fm", embedding_dim=4, optimizer=OSGD(lr=0.1, batch_size=1))
    ogd = CTRClassifier(model="fm", embedding_dim=4, optimizer=OGD(lr=0.1))
    # Both on the torch path, bit for bit: this compares the updaters (OGD alone would take
    # the NumPy twin, which agrees to 1e-6; see tests/test_numpy_path.py).
    ogd._use_numpy = False
    for x, y in events:
        osgd.learn_one(x, y)
        ogd.learn_one(x, y)
    for (na, a), (nb, b) in zip(osgd.model_.state_dict().items(), ogd.model_.state_dict().items()):
        assert na == nb and torch.equal(a, b), na


def test_a_replay_step_is_one_sgd_step_on_the_mean_loss_of_new_and_replayed_events():
    (x1, y1), (x2, y2) = stream(2, seed=4)
    # batch_size 2 and one buffered event: the second step must replay the first event.
    osgd = CTRClassifier(model="lr", optimizer=OSGD(lr=0.5, batch_size=2), numeric="raw")
    osgd.learn_one(x1, y1)
    osgd.learn_one(x2, y2)
    ogd = CTRClassifier(model="lr", optimizer=OGD(lr=0.5), numeric="raw")
    ogd.learn_one(x1, y1)
    ogd.learn_many(pd.DataFrame([x2, x1]), pd.Series([y2, y1]))
    for x, _ in stream(20, seed=5):
        assert osgd.predict_proba_one(x)[True] == pytest.approx(ogd.predict_proba_one(x)[True], abs=1e-6)
    assert osgd.predict_proba_one(x1)[True] != pytest.approx(0.5, abs=1e-3)
