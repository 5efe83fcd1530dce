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
    monkeypatch.setattr(key_table, "_PLACE_CHUNK", 7)  # index rebuilds in many passes
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
        table.insert(("f", f"value-{i:08d}-x"), i % 2_000 + 1 if i < 2_000 else table.popitem(last=False)[1])
    assert len(table) == 2_000
    # 2,000 live log entries of 1 + 16 bytes; without compaction 40,000 would pile up.
    assert table._n_bytes <= 2 * table._live_bytes and table._live_bytes == 2_000 * 17
    assert [k for k, _ in table.items()] == [("f", f"value-{i:08d}-x") for i in range(38_000, 40_000)]


def _structure_bytes(table: KeyTable, n: int) -> float:
    """Bytes per key of the per-row arrays' written part, the index and the log."""
    per_row = table._fp.itemsize + table._loc.itemsize + table._meta.itemsize
    return per_row + table._index.nbytes / n + table._n_bytes / n


@pytest.mark.parametrize(
    "make, log_bytes",
    [
        (lambda i: f"id{i}", 0),  # the field's prefix and a number: in the 4-byte word
        (lambda i: f"{i:08d}", 0),  # 8 digits: hexadecimal-looking, in the word
        (lambda i: f"{(i * 2654435761) % 2**32:08x}", 0),  # Criteo's and Avazu's hashed ids
        (lambda i: f"u{i:07d}", 0),  # zero-padded to the field's width
        (lambda i: f"user-{i}-x", None),  # in the log: 1 byte of length + the UTF-8 bytes
    ],
)
def test_bytes_per_key_follow_the_stated_layout(make, log_bytes):
    n = 100_000
    table = KeyTable()
    keys = [("id", make(i)) for i in range(n)]
    table.add_many(keys, range(1, n + 1))
    assert (table._fp.itemsize, table._loc.itemsize, table._meta.itemsize) == (8, 4, 2)
    expected_log = sum(1 + len(v) for _, v in keys) if log_bytes is None else log_bytes
    assert table._n_bytes == table._live_bytes == expected_log
    # 2^18 index slots of 4 bytes for 100,000 keys (38% full): 10.5 bytes per key.
    assert len(table._index) == 2**18
    assert _structure_bytes(table, n) == pytest.approx(14 + 4 * 2**18 / n + expected_log / n)
    # Row arrays double: at most twice the rows in use, of which only the used ones are written.
    assert len(table._fp) <= 2 * (n + 1)
    probe = random.Random(3).sample(range(n), 1_000)
    assert table.find_many([keys[i] for i in probe]).tolist() == [i + 1 for i in probe]
    assert [table._key(i + 1) for i in probe] == [keys[i] for i in probe]


def test_values_that_look_like_numbers_keep_their_exact_text():
    # Each value must come back as it went in, whatever kind its word chose.
    values = [
        "u1", "u01", "u001", "u0", "u00", "u", "u4294967295", "u4294967296", "u99999999999",
        "1", "0", "007", "12345678", "ABCDEF01", "abcdef01", "0x12ab34", "+1234567", "1_234567",
        " 1234567", "\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668", "v1", "u1x", "é7", "\udcff1",
    ]
    table = KeyTable()
    keys = [("f", v) for v in values] + [("g", v) for v in reversed(values)]
    table.add_many(keys[:20], range(1, 21))
    for i, k in enumerate(keys[20:], start=21):
        table.insert(k, i)
    assert list(table.keys()) == keys
    assert table.find_many(keys).tolist() == list(range(1, len(keys) + 1))
    restored = pickle.loads(pickle.dumps(table))
    assert list(restored.items()) == list(table.items())


def test_a_pickle_of_the_first_layout_loads():
    keys = [("user", "u1"), ("user", "é\udcff"), ("p", None), ("b", True), ("b", False), ("n", 3), ("user", "")]
    # What the first layout pickled: int32 field * 8 + kind (-1: no key), uint64 offset | length << 48.
    data = bytearray()
    loc = np.zeros(len(keys) + 2, dtype=np.uint64)
    meta = np.full(len(keys) + 2, -1, dtype=np.int32)
    kinds = {None: 1, False: 2, True: 3}
    fields: list = []
    for row, (f, v) in enumerate(keys, start=1):
        if f not in fields:
            fields.append(f)
        fid = fields.index(f)
        if type(v) is str:
            b = v.encode("utf-8", "surrogatepass")
            loc[row] = len(data) | (len(b) << 48)
            data += b
            meta[row] = fid * 8
        else:
            meta[row] = fid * 8 + (4 if type(v) is int and type(v) is not bool else kinds[v])
    new = KeyTable(track_order=True)
    state = {
        "track_order": True, "_index": None, "_mask": 1023, "_n": len(keys),
        "_fp": np.concatenate([[0], key_table.fingerprints(keys), [0]]).astype(np.uint64), "_loc": loc, "_meta": meta,
        "_bytes": data, "_n_bytes": len(data), "_live_bytes": len(data), "_fields": fields,
        "_field_ids": {f: i for i, f in enumerate(fields)}, "_other": {6: 3},
        "_order": collections.OrderedDict((r, None) for r in [3, 1, 2, 4, 5, 6, 7]), "_cache": {}, "_absent": {},
    }
    new.__setstate__(state)
    order = [3, 1, 2, 4, 5, 6, 7]
    assert list(new.items()) == [(keys[r - 1], r) for r in order]
    assert new.find_many(keys).tolist() == list(range(1, len(keys) + 1))
    assert new.popitem(last=False) == (("p", None), 3)


def test_field_ids_and_log_offsets_widen_past_their_small_types(monkeypatch):
    monkeypatch.setattr(key_table, "_FIELDS_U16", 3)
    monkeypatch.setattr(key_table, "_LOC32_LIMIT", 100)
    table = KeyTable()
    keys = [(f"f{i}", f"long value {i} -") for i in range(10)]
    table.add_many(keys[:5], range(1, 6))
    for i, k in enumerate(keys[5:], start=6):
        table.insert(k, i)
    assert table._meta.dtype == np.uint32 and table._loc.dtype == np.uint64
    assert list(table.keys()) == keys
    assert table.find_many(keys).tolist() == list(range(1, 11))
    assert list(pickle.loads(pickle.dumps(table)).items()) == list(table.items())


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


def test_lookups_of_random_keys_match_a_dict():
    rng = random.Random(11)
    makers = [
        lambda i: f"{rng.getrandbits(32):08x}", lambda i: f"id{rng.randrange(10**9)}",
        lambda i: f"c{rng.randrange(10**6):06d}", lambda i: f"word-{rng.randrange(10**6)}-é", lambda i: None,
    ]
    ref: dict = {}
    while len(ref) < 100_000:
        field = rng.randrange(12)
        key = (f"f{field}", makers[field % 5](len(ref)))
        ref.setdefault(key, len(ref) + 1)
    keys = list(ref)
    table = KeyTable()
    table.add_many(keys[:60_000], range(1, 60_001))
    for k in keys[60_000:62_000]:
        table.insert(k, ref[k])
    table.add_many(keys[62_000:], range(62_001, 100_001))
    absent = [("f0", f"{i:08x}z") for i in range(2_000)] + [("f1", f"id{10**9 + i}") for i in range(2_000)]
    probe = keys + absent
    rng.shuffle(probe)
    assert table.find_many(probe).tolist() == [ref.get(k, 0) for k in probe]
    assert [table.get(k) for k in probe[:5_000]] == [ref.get(k) for k in probe[:5_000]]
    assert dict(table.items()) == ref
