from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest
import torch

from river_torchrec.nn import PADDING_ROW, DynamicEmbedding, stable_hash64


def test_new_keys_get_distinct_rows_and_growth_keeps_learned_rows():
    table = DynamicEmbedding(dim=3, initial_capacity=4, seed=0)
    rows = table.lookup([("f", i) for i in range(3)], learn=True)
    assert rows == [1, 2, 3]
    with torch.no_grad():
        table.weight[1:4] = torch.arange(9.0).view(3, 3)
    rows = table.lookup([("f", i) for i in range(3, 40)], learn=True)
    assert rows == list(range(4, 41))
    assert table.capacity == 64  # 4 -> 8 -> 16 -> 32 -> 64
    assert torch.equal(table.weight[1:4], torch.arange(9.0).view(3, 3))
    assert torch.equal(table.weight[PADDING_ROW], torch.zeros(3))
    assert len(table) == 40


def test_prediction_lookup_changes_nothing():
    table = DynamicEmbedding(dim=2, min_count=2, max_rows=3)
    table.lookup([("f", "a"), ("f", "b")], learn=True)
    before = pickle.dumps(table)
    assert table.lookup([("f", "zzz"), ("g", "a")], learn=False) == [table._oov["f"], PADDING_ROW]
    assert pickle.dumps(table) == before


def test_min_count_keeps_rare_values_on_the_field_oov_row():
    table = DynamicEmbedding(dim=2, min_count=3)
    first = table.lookup([("f", "a")], learn=True)
    second = table.lookup([("f", "a"), ("f", "b")], learn=True)
    oov = table._oov["f"]
    assert first == [oov] and second == [oov, oov]
    third = table.lookup([("f", "a")], learn=True)
    assert third[0] != oov
    assert table.lookup([("f", "a")], learn=False) == third
    # Numeric rows are never held back.
    assert table.lookup([("x", None)], learn=True)[0] != table._oov.get("x")


def test_min_count_counts_batched_occurrences():
    table = DynamicEmbedding(dim=2, min_count=3)
    rows = table.lookup([("f", "a"), ("f", "b")], learn=True, counts=[3, 2])
    assert rows[0] != table._oov["f"] and rows[1] == table._oov["f"]


def test_max_rows_evicts_least_recently_used_and_never_exceeds_the_bound():
    table = DynamicEmbedding(dim=2, max_rows=3, initial_capacity=2)
    a, b, c = table.lookup([("f", "a"), ("f", "b"), ("f", "c")], learn=True)
    table.lookup([("f", "a")], learn=True)  # "b" is now the least recently used
    (d,) = table.lookup([("f", "d")], learn=True)
    assert d == b
    assert table.pop_recycled() == [b]
    assert table.lookup([("f", "b")], learn=False) == [PADDING_ROW]
    assert table.lookup([("f", "a"), ("f", "c")], learn=False) == [a, c]
    for i in range(1000):
        table.lookup([("g", i)], learn=True)
        assert len(table) <= 3
        assert table.capacity <= 3 + 1


def test_hash_mode_is_fixed_and_stable():
    table = DynamicEmbedding(dim=2, mode="hash", n_buckets=100)
    rows = table.lookup([("user", "u1"), ("user", "u1"), ("item", "u1")], learn=True)
    assert rows[0] == rows[1] == 1 + stable_hash64("user", "u1") % 100
    assert all(1 <= r <= 100 for r in rows)
    assert table.capacity == 101


def test_stable_hash_is_the_same_in_another_process_with_another_hash_seed():
    code = (
        "from river_torchrec.nn import stable_hash64;"
        "print(stable_hash64('user_id', 'u42'), stable_hash64('price', None), stable_hash64(3, True))"
    )
    outs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        outs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout)
    assert len(outs) == 1
    here = f"{stable_hash64('user_id', 'u42')} {stable_hash64('price', None)} {stable_hash64(3, True)}\n"
    assert outs == {here}


def test_forward_records_touched_rows_for_sparse_updates():
    table = DynamicEmbedding(dim=2)
    rows = table.lookup([("f", "a"), ("f", "b")], learn=True)
    ids = torch.tensor([[rows[1], rows[0]], [rows[1], PADDING_ROW]])
    out = table(ids)
    out.sum().backward()
    assert table.last_rows.tolist() == [0, 1, 2]
    assert table.last_leaf.grad.tolist() == [[1.0, 1.0], [1.0, 1.0], [2.0, 2.0]]
    with torch.no_grad():
        assert torch.equal(table(ids), out.detach())


@pytest.mark.parametrize("kwargs", [{"dim": 0}, {"dim": 2, "mode": "bloom"}, {"dim": 2, "min_count": 0}])
def test_bad_arguments_are_rejected(kwargs):
    with pytest.raises(ValueError):
        DynamicEmbedding(**kwargs)


def _filled(batch: int, n: int = 10_000, seed: int = 3) -> tuple[DynamicEmbedding, list[int]]:
    table = DynamicEmbedding(dim=3, seed=seed, zero_cols=1)
    keys = [("f", f"v{i % (n // 2)}") if i % 3 else ("g", i) for i in range(n)]  # repeats and new keys
    rows = []
    for lo in range(0, n, batch):
        rows += table.lookup(keys[lo : lo + batch], learn=True)
    return table, rows


def test_batched_lookups_give_the_same_rows_and_initial_values_as_one_key_at_a_time():
    one, rows_one = _filled(batch=1)
    big, rows_big = _filled(batch=5_000)  # the vectorised path
    mixed, rows_mixed = _filled(batch=63)  # the per-key loop, in batches
    assert rows_one == rows_big == rows_mixed
    assert one.key_to_row() == big.key_to_row() == mixed.key_to_row()
    used = len(one) + 1
    assert torch.equal(one.weight[:used], big.weight[:used]) and torch.equal(one.weight[:used], mixed.weight[:used])
    drawn = one.weight[1024:used]
    assert torch.all(drawn[:, 0] == 0)  # zero_cols
    assert float(drawn[:, 1:].std()) == pytest.approx(0.01, rel=0.05)


def test_growth_leaves_unused_capacity_zero_until_rows_are_handed_out():
    table = DynamicEmbedding(dim=2, initial_capacity=8, seed=0)
    table.lookup([("f", i) for i in range(5_000)], learn=True)
    assert table.capacity == 8192
    # Rows are drawn in aligned blocks of 4,096 as they are handed out: the rest stays zero.
    assert table._init_upto == 8192 and torch.count_nonzero(table.weight[5_001:]) > 0
    table = DynamicEmbedding(dim=2, initial_capacity=8, seed=0)
    table.lookup([("f", i) for i in range(3_000)], learn=True)
    assert table.capacity == 4096 and table._init_upto == 4096
    before = table.weight[:3_001].clone()
    table.lookup([("f", i) for i in range(3_000, 4_200)], learn=True)
    assert table.capacity == 8192 and table._init_upto == 8192
    assert torch.equal(table.weight[:3_001], before)
    # Row values depend on the seed and the row only: a table grown in one go agrees.
    direct = DynamicEmbedding(dim=2, initial_capacity=8, seed=0)
    direct.lookup([("f", i) for i in range(4_200)], learn=True)
    assert torch.equal(direct.weight[:4_201], table.weight[:4_201])


def test_a_pickle_with_a_dict_vocabulary_loads_into_the_key_table():
    import collections

    table = DynamicEmbedding(dim=2, max_rows=50)
    rows = table.lookup([("f", f"v{i}") for i in range(30)], learn=True)
    table.lookup([("f", "v3")], learn=True)
    order = list(table._rows.items())
    old = pickle.loads(pickle.dumps(table))
    # What a table pickled before the KeyTable vocabulary holds.
    old.__dict__["_rows"] = collections.OrderedDict(order)
    del old.__dict__["_init_upto"]
    restored = pickle.loads(pickle.dumps(old))
    assert list(restored._rows.items()) == order and order[-1] == (("f", "v3"), rows[3])
    assert restored._init_upto == restored.capacity
    assert restored.lookup([("f", "v7"), ("f", "new")], learn=True) == [rows[7], 31]


def test_set_vocabulary_keeps_recency_for_eviction():
    table = DynamicEmbedding(dim=2, max_rows=3)
    a, b, c = table.lookup([("f", "a"), ("f", "b"), ("f", "c")], learn=True)
    table.lookup([("f", "a")], learn=True)
    saved = list(table._rows.items())
    assert saved == [(("f", "b"), b), (("f", "c"), c), (("f", "a"), a)]
    table.set_vocabulary(saved)
    (d,) = table.lookup([("f", "d")], learn=True)
    assert d == b and table.lookup([("f", "b")], learn=False) == [PADDING_ROW]


def _resident() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_updater_state_of_spare_capacity_costs_no_resident_memory():
    import numpy as np

    from river_torchrec.optim.base import _fit
    from river_torchrec.optim.adagrad import Adagrad

    rows, dim = 2**20, 9  # 36 MiB of float32 state
    table = torch.from_numpy(np.zeros((rows, dim), dtype=np.float32))
    updater = Adagrad()
    before = _resident()
    state = updater._buffer("t", "sum_sq", table)
    row_state = updater._row_buffer("t", "sum_sq_row", table)
    # Zeros are calloc-ed: the pages are mapped, not written (torch.zeros would add 40 MiB).
    assert _resident() - before < 6 * 2**20
    assert state.shape == (rows, dim) and state.dtype == torch.float32 and row_state.shape == (rows,)
    assert not state[::4096].any() and not row_state[::4096].any()
    state[:1000] = 1.5
    grown = _fit(state, torch.Size((rows + rows // 4, dim)))
    # Growth copies the written rows and leaves the new tail unwritten and zero.
    assert torch.equal(grown[:1000], state[:1000]) and not grown[1000::4096].any()
    assert updater._buffer("t", "ones", table[:100], fill=1.0).eq(1.0).all()


def test_lazily_zeroed_state_learns_bitwise_like_eager_zeros(monkeypatch):
    import pandas as pd

    from river_torchrec import CTRClassifier
    from river_torchrec.optim import base

    def run() -> tuple[torch.Tensor, dict]:
        model = CTRClassifier(model="fm", seed=3)
        for lo in range(0, 3_000, 500):
            X = pd.DataFrame({"u": [f"u{i % 1_700}" for i in range(lo, lo + 500)], "i": [f"i{i % 37}" for i in range(lo, lo + 500)]})
            model.learn_many(X, pd.Series([i % 3 == 0 for i in range(lo, lo + 500)]))
        for i in range(200):
            model.learn_one({"u": f"u{i}", "i": f"i{i % 5}"}, i % 2 == 0)
        return model.model_.embedding.weight.clone(), model.updater.state_dict()

    lazy_w, lazy_s = run()
    monkeypatch.setattr(base, "_zeros", lambda shape, dtype, device: torch.zeros(shape, dtype=dtype, device=device))
    eager_w, eager_s = run()
    assert torch.equal(lazy_w, eager_w)
    assert lazy_s.keys() == eager_s.keys()
    assert all(torch.equal(lazy_s[k], eager_s[k]) if isinstance(lazy_s[k], torch.Tensor) else lazy_s[k] == eager_s[k] for k in lazy_s)
