"""MovieLens 100K reader, on made-up miniatures of both layouts."""

from __future__ import annotations

import gzip
import pathlib
import re

import pytest
from river.datasets import base

from river_torchrec.datasets import MovieLens100K
from river_torchrec.datasets.movielens import GENRES

# (user, item, rating, timestamp), deliberately not in time order, with a timestamp tie
# (users 2 and 3 at 500) that the stable sort must keep in file order, and a rating by a
# user (9) and on an item (99) that the side files do not know.
RATINGS = [
    (1, 10, 5, 900),
    (2, 20, 3, 500),
    (3, 10, 4, 500),
    (1, 30, 1, 100),
    (9, 99, 4, 700),
]
USERS = [(1, 31, "M", "baker", "12345"), (2, 47, "F", "pilot", "67890"),
         (3, 29, "M", "writer", "Q1W2E")]


def _flags(*names: str) -> list[str]:
    return ["1" if g in names else "0" for g in GENRES]


ITEMS = [
    (10, "Made Up (1993)", "07-Feb-1993", _flags("animation", "childrens", "comedy")),
    (20, "Café, The (1994)", "15-Mar-1994", _flags("drama")),
    (30, "unknown", "", _flags()),  # no date, no genre: keys left out
]

EXPECTED = [
    ({"user_id": "1", "item_id": "30", "timestamp": 100, "age": 31.0, "gender": "M",
      "occupation": "baker", "zip_prefix": "123"}, False),
    ({"user_id": "2", "item_id": "20", "timestamp": 500, "age": 47.0, "gender": "F",
      "occupation": "pilot", "zip_prefix": "678", "release_year": 1994.0,
      "genres": "drama"}, False),
    ({"user_id": "3", "item_id": "10", "timestamp": 500, "age": 29.0, "gender": "M",
      "occupation": "writer", "zip_prefix": "Q1W", "release_year": 1993.0,
      "genres": "animation|childrens|comedy"}, True),
    ({"user_id": "9", "item_id": "99", "timestamp": 700}, True),
    ({"user_id": "1", "item_id": "10", "timestamp": 900, "age": 31.0, "gender": "M",
      "occupation": "baker", "zip_prefix": "123", "release_year": 1993.0,
      "genres": "animation|childrens|comedy"}, True),
]


def _write(path: pathlib.Path, text: str, encoding: str = "utf-8") -> pathlib.Path:
    data = text.encode(encoding)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def _grouplens(folder: pathlib.Path, ratings: list = RATINGS) -> pathlib.Path:
    folder.mkdir(exist_ok=True)
    _write(folder / "u.data", "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ratings))
    _write(folder / "u.user", "".join("|".join(map(str, u)) + "\n" for u in USERS))
    items = "".join(
        "|".join([str(i), title, date, "", f"http://example.invalid/{i}", *flags]) + "\n"
        for i, title, date, flags in ITEMS
    )
    _write(folder / "u.item", items, encoding="latin-1")
    return folder


def _csv_layout(folder: pathlib.Path, suffix: str = ".csv.gz") -> pathlib.Path:
    folder.mkdir(exist_ok=True)
    ratings = "user_id,item_id,rating,timestamp\n" + "".join(
        f"{u},{i},{r},{t}\n" for u, i, r, t in RATINGS
    )
    users = "user_id,age,gender,occupation,zip_code\n" + "".join(
        ",".join(map(str, u)) + "\n" for u in USERS
    )
    header = "item_id,title,release_date,video_release_date,imdb_url," + ",".join(
        f"genre_{g}" for g in GENRES
    )
    items = header + "\n" + "".join(
        ",".join([str(i), f'"{title}"', date, "", f"http://example.invalid/{i}", *flags]) + "\n"
        for i, title, date, flags in ITEMS
    )
    _write(folder / f"movielens100k_ratings{suffix}", ratings)
    _write(folder / f"movielens100k_users{suffix}", users)
    _write(folder / f"movielens100k_items{suffix}", items)
    return folder


def test_grouplens_folder_and_file(tmp_path: pathlib.Path) -> None:
    folder = _grouplens(tmp_path / "ml-100k")
    assert list(MovieLens100K(folder)) == EXPECTED
    assert list(MovieLens100K(folder / "u.data")) == EXPECTED


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_csv_folder_and_file(tmp_path: pathlib.Path, suffix: str) -> None:
    folder = _csv_layout(tmp_path, suffix)
    assert list(MovieLens100K(folder)) == EXPECTED
    assert list(MovieLens100K(folder / f"movielens100k_ratings{suffix}")) == EXPECTED


def test_mixed_compression_side_files(tmp_path: pathlib.Path) -> None:
    folder = _csv_layout(tmp_path, ".csv")
    gz = folder / "movielens100k_users.csv.gz"
    gz.write_bytes(gzip.compress((folder / "movielens100k_users.csv").read_bytes()))
    (folder / "movielens100k_users.csv").unlink()
    assert list(MovieLens100K(folder / "movielens100k_ratings.csv")) == EXPECTED


def test_threshold_types_and_metadata(tmp_path: pathlib.Path) -> None:
    dataset = MovieLens100K(_grouplens(tmp_path), threshold=5)
    assert [y for _, y in dataset] == [False, False, False, False, True]
    assert dataset.task == base.BINARY_CLF and dataset.n_features == 9
    for x, y in dataset:
        assert type(y) is bool and type(x["timestamp"]) is int
        assert type(x["user_id"]) is str and type(x["item_id"]) is str
    assert list(dataset) == list(dataset)


def test_missing_files(tmp_path: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        MovieLens100K(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="u.data"):
        MovieLens100K(tmp_path)  # an empty folder
    folder = _grouplens(tmp_path / "gl")
    (folder / "u.item").unlink()
    with pytest.raises(FileNotFoundError, match=r"u\.item"):
        MovieLens100K(folder)
    folder = _csv_layout(tmp_path / "csv")
    (folder / "movielens100k_users.csv.gz").unlink()
    with pytest.raises(FileNotFoundError, match="movielens100k_users"):
        MovieLens100K(folder)


def _corrupt(path: pathlib.Path, line: int, old: str, new: str, encoding: str = "utf-8") -> None:
    raw = path.read_bytes()
    gz = path.suffix == ".gz"
    lines = (gzip.decompress(raw) if gz else raw).decode(encoding).splitlines(keepends=True)
    assert old in lines[line - 1]
    lines[line - 1] = lines[line - 1].replace(old, new, 1)
    _write(path, "".join(lines), encoding)


@pytest.mark.parametrize(
    "layout,file,line,old,new,reason",
    [
        ("gl", "u.data", 3, "\t4\t", "\tfour\t", "'rating'"),
        ("gl", "u.data", 2, "\t500", "", "expected 4 fields, got 3"),
        ("gl", "u.user", 2, "|47|", "|forty|", "'age'"),
        ("gl", "u.item", 1, "07-Feb-1993", "Jan 95", "'release_date'"),
        ("csv", "movielens100k_items.csv.gz", 3, ",1,", ",2,", "'genre_drama'"),
        ("csv", "movielens100k_ratings.csv.gz", 1, "rating", "score", "header"),
        ("csv", "movielens100k_ratings.csv.gz", 5, "1,30", "x,30", "'user_id'"),
        ("csv", "movielens100k_users.csv.gz", 4, ",writer", "", "expected 5 fields, got 4"),
    ],
)
def test_malformed_names_file_and_line(
    tmp_path: pathlib.Path, layout: str, file: str, line: int, old: str, new: str, reason: str
) -> None:
    folder = _grouplens(tmp_path) if layout == "gl" else _csv_layout(tmp_path)
    _corrupt(folder / file, line, old, new, "latin-1" if file == "u.item" else "utf-8")
    dataset = MovieLens100K(folder)
    pattern = re.escape(f"{file}, line {line}: ") + ".*" + re.escape(reason)
    with pytest.raises(ValueError, match=pattern):
        list(dataset)
