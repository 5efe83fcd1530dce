from __future__ import annotations

import collections
import os
import pickle
import random
import subprocess
import sys

import numpy as np
import pytest

from river_torchrec.nn import key_table
from river_torchrec.nn.key_table import KeyTable, key_fingerprint


def _random_ops(table: KeyTable, n_ops: int, seed: int) -> collections.OrderedDict:
    """Apply the same random inserts, refreshes, removals and evictions to ``table`` and to an
    ``OrderedDict``; return the reference."""
    rng = random.Random(seed)
    ref: collections.OrderedDict = collections.OrderedDict()
    next_row = 1
    for _ in range(n_ops):
        op = rng.random()
        if op < 0.55 or not ref:
            key = ("f" + str(rng.randrange(3)), f"v{rng.randrange(4000)}")
            if key in ref:
                continue
            assert table.get(key) is None
            table.insert(key, next_row)
            ref[key] = next_row
            next_row += 1
        elif op < 0.75:
            key = rng.choice(list(ref))
            table.move_to_end(key)
            ref.move_to_end(key)
        elif op < 0.9:
            key = rng.choice(list(ref))
            assert table.pop(key) == ref.pop(key)
        else:
            assert table.popitem(last=False) == ref.popitem(last=False)
    return ref


def test_matches_an_ordered_dict_under_random_operations():
    table = KeyTable(track_order=True)
    ref = _random_ops(table, 6_000, seed=0)
    assert list(table.items()) == list(ref.items())
    assert len(table) == len(ref)
    for key, row in ref.items():
        assert table.get(key) == row and key in table
    absent = [("f0", f"w{i}") for i in range(50)]
    assert all(table.get(k) is None and k not in table for k in absent)
    keys = list(ref) + absent
    assert table.find_many(keys).tolist() == [ref.get(k, 0) for k in keys]


def test_clustered_fingerprints_probe_and_delete_correctly(monkeypatch):
    # Every fingerprint lands on home slot 0 of the index: one long probe cluster that wraps,
    # which exercises linear probing, the vectorised paths and backward-shift deletion.
    fps = {}

    def clustered(f, v):
        return fps.setdefault((f, v), 1024 * (len(fps) + 1))

    monkeypatch.setattr(key_table, "key_fingerprint", clustered)
    monkeypatch.setattr(key_table, "fingerprints", lambda keys: np.array([clustered(*k) for k in keys], dtype=np.uint64))
    table = KeyTable(track_order=True)
    ref = _random_ops(table, 1_500, seed=1)
    assert list(table.items()) == list(ref.items())
    keys = list(ref) + [("f1", "nowhere")]
    assert table.find_many(keys).tolist() == [ref.get(k, 0) for k in keys]
    batch = [("g", f"b{i}") for i in range(300)]
    table.add_many(batch, range(10_000, 10_300))
    assert table.find_many(batch).tolist() == list(range(10_000, 10_300))
    assert [table.get(k) for k in ref] == list(ref.values())


def test_keys_of_every_kind_come_back_exactly():
    odd = "\udcff surrogate é"
    keys = [
        ("user", "u1"), ("user", ""), ("user", odd), ("price", None), ("flag", True), ("flag", False),
        ("n", 3), ("n", 3.5), (7, "7"), (("a", 1), "x"), ("user", "é" * 70_000), ("user", "True"),
    ]
    table = KeyTable()
    table.add_many(keys[:6], range(1, 7))
    for i, k in enumerate(keys[6:], start=7):
        table.insert(k, i)
    assert list(table.items()) == [(k, i) for i, k in enumerate(keys, start=1)]
    assert all(type(a[1]) is type(b[1]) for a, b in zip(table.keys(), keys))
    assert table.get(("user", True)) is None and table.get(("flag", "True")) is None
    restored = pickle.loads(pickle.dumps(table))
    assert list(restored.items()) == list(table.items())
    assert restored.find_many(keys).tolist() == list(range(1, len(keys) + 1))


def test_pickles_hold_the_keys_not_the_index_or_spare_capacity():
    table = KeyTable()
    table.add_many([("f", f"v{i:03d}") for i in range(100)], range(1, 101))
    data = pickle.dumps(table)
    assert len(data) < 101 * 20 + 100 * 4 + 2_000  # 20 bytes per row and the values' bytes
    restored = pickle.loads(data)
    assert restored.find_many([("f", f"v{i:03d}") for i in range(101)]).tolist() == [*range(1, 101), 0]
    restored.add_many([("f", f"w{i}") for i in range(2_000)], range(101, 2_101))  # grows again
    assert restored.get(("f", "v050")) == 51 and restored.get(("f", "w1999")) == 2_100
    assert pickle.dumps(pickle.loads(data)) == data


def test_lookups_leave_the_pickle_unchanged():
    table = KeyTable.from_items([(("f", f"v{i}"), i + 1) for i in range(100)])
    before = pickle.dumps(table)
    for i in range(150):
        table.get(("f", f"v{i}"))
    table.find_many([("f", f"v{i}") for i in range(200)])
    assert pickle.dumps(table) == before


def test_removed_key_bytes_are_compacted():
    table = KeyTable(track_order=True)
    for i in range(40_000):
        table.insert(("f", f"value-{i:08d}"), i % 2_000 + 1 if i < 2_000 else table.popitem(last=False)[1])
    assert len(table) == 2_000
    # 2,000 live keys of 14 bytes; without compaction 40,000 keys' bytes would pile up.
    assert table._n_bytes <= 2 * table._live_bytes and table._live_bytes == 2_000 * 14
    assert [k for k, _ in table.items()] == [("f", f"value-{i:08d}") for i in range(38_000, 40_000)]


def test_arrays_cost_about_thirty_bytes_per_key_plus_the_value():
    n = 200_000
    table = KeyTable()
    table.add_many([("id", f"{i:08d}") for i in range(n)], range(1, n + 1))
    per_key_rows = (table._fp.itemsize + table._loc.itemsize + table._meta.itemsize)  # per row
    assert per_key_rows == 20
    assert table._index.nbytes / n <= 4 / 0.35
    assert table._live_bytes == 8 * n
    # Row arrays double: at most twice the rows in use, of which only the used ones are written.
    assert len(table._fp) <= 2 * (n + 1)


def test_batch_fingerprints_equal_one_at_a_time():
    keys = [("user", "u1"), ("user", "é\udcff"), (3, "3"), ("p", None), ("b", True), ("n", 2), ("user", "")]
    assert key_table.fingerprints(keys).tolist() == [key_fingerprint(*k) for k in keys]


def test_fingerprints_are_stable_across_processes_and_hash_seeds():
    code = "from river_torchrec.nn.key_table import key_fingerprint as k; print(k('user_id', 'u42'), k('p', None), k(3, True))"
    outs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        outs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout)
    assert outs == {f"{key_fingerprint('user_id', 'u42')} {key_fingerprint('p', None)} {key_fingerprint(3, True)}\n"}


def test_bad_rows_are_rejected_and_change_nothing():
    table = KeyTable()
    table.insert(("f", "a"), 1)
    before = pickle.dumps(table)
    with pytest.raises(ValueError, match=r"rows of keys must be >= 1 \(row 0 is the padding row\)"):
        table.insert(("f", "b"), 0)
    with pytest.raises(ValueError, match=r"rows of keys must be >= 1 \(row 0 is the padding row\)"):
        table.add_many([("f", "c")], [0])
    assert pickle.dumps(table) == before
    with pytest.raises(KeyError):
        table.pop(("f", "zzz"))
    with pytest.raises(ValueError, match="this KeyTable does not track order"):
        table.move_to_end(("f", "a"))


def test_find_many_on_an_empty_table_and_no_keys():
    table = KeyTable()
    assert table.find_many([("f", "a")]).tolist() == [0]
    table.insert(("f", "a"), 5)
    assert table.find_many([]).tolist() == []
    assert np.asarray(table.find_many([("f", "a")])).dtype == np.int64
