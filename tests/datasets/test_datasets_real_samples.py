"""The loaders on the real sample files, when the machine has them (they are never shipped).

Counts and label rates are those documented in shared/data/README.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from river_torchrec.datasets import Avazu, Criteo, MovieLens100K

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"no sample data at {DATA}")


def _count(dataset) -> tuple[int, int, list[dict]]:
    n = positives = 0
    xs = []
    for x, y in dataset:
        assert type(y) is bool
        n += 1
        positives += y
        if n <= 100:
            xs.append(x)
    return n, positives, xs


def test_criteo_sample() -> None:
    n, positives, xs = _count(Criteo(DATA / "criteo_dac_head10k.csv.gz"))
    assert (n, positives) == (9_999, 2_181)
    assert all(len(x) <= 39 for x in xs)
    assert all(type(v) is float for x in xs for k, v in x.items() if k.startswith("I"))
    assert all(len(v) == 8 for x in xs for k, v in x.items() if k.startswith("C"))


def test_avazu_sample() -> None:
    n, positives, xs = _count(Avazu(DATA / "avazu_head10k.csv.gz"))
    assert (n, positives) == (9_999, 1_706)
    assert all((x["hour_of_day"], x["weekday"]) == ("00", "Tue") for x in xs)
    assert all("id" not in x for x in xs)


@pytest.mark.parametrize(
    "target", ["", "movielens100k_ratings.csv.gz"], ids=["folder", "ratings_file"]
)
def test_movielens_sample(target: str) -> None:
    dataset = MovieLens100K(DATA / target if target else DATA)
    n = positives = 0
    last = -1
    for x, y in dataset:
        n += 1
        positives += y
        assert x["timestamp"] >= last
        last = x["timestamp"]
    assert (n, positives) == (100_000, 55_375)
