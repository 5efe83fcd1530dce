"""Criteo reader, on small made-up files in every supported layout."""

from __future__ import annotations

import gzip
import pathlib
import re

import pytest
from river.datasets import base

from river_torchrec.datasets import Criteo

HEADER = ["label", *(f"I{i}" for i in range(1, 14)), *(f"C{i}" for i in range(1, 27))]


def _rows() -> list[list[str]]:
    """Three made-up rows: missing numeric and categorical values, a negative count."""
    rows = []
    for r in range(3):
        ints = [str(r * 10 + i) for i in range(13)]
        cats = [f"{r:02x}{i:06x}" for i in range(26)]
        rows.append([str(r % 2), *ints, *cats])
    rows[0][1] = ""  # I1 missing
    rows[1][2] = "-3"  # I2 negative, as Criteo's counts can be
    rows[2][14 + 5] = ""  # C6 missing
    return rows


EXPECTED_Y = [False, True, False]


def _write(path: pathlib.Path, text: str) -> pathlib.Path:
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def _tsv(rows: list[list[str]]) -> str:
    return "".join("\t".join(r) + "\n" for r in rows)


def _csv(rows: list[list[str]], header: list[str] = HEADER) -> str:
    return ",".join(header) + "\n" + "".join(",".join(r) + "\n" for r in rows)


@pytest.fixture
def expected(tmp_path: pathlib.Path) -> list[tuple[dict, bool]]:
    return list(Criteo(_write(tmp_path / "ref.txt", _tsv(_rows()))))


@pytest.mark.parametrize("name", ["train.txt", "dac_sample.txt.gz", "renamed.dat"])
def test_kaggle_tsv(tmp_path: pathlib.Path, name: str) -> None:
    data = list(Criteo(_write(tmp_path / name, _tsv(_rows()))))
    assert [y for _, y in data] == EXPECTED_Y
    x0, x1, x2 = (x for x, _ in data)
    assert "I1" not in x0 and x0["I2"] == 1.0 and len(x0) == 38
    assert x1["I2"] == -3.0
    assert "C6" not in x2 and x2["C1"] == "02000000"
    for x, y in data:
        assert type(y) is bool
        for k, v in x.items():
            assert type(v) is (float if k.startswith("I") else str)


@pytest.mark.parametrize("name", ["criteo.csv", "criteo.csv.gz"])
def test_csv_with_header(tmp_path: pathlib.Path, name: str, expected: list) -> None:
    assert list(Criteo(_write(tmp_path / name, _csv(_rows())))) == expected


def test_csv_with_float_counts_reordered_columns_and_crlf(
    tmp_path: pathlib.Path, expected: list
) -> None:
    # Some exports write counts as floats and order columns their own way.
    order = list(reversed(range(len(HEADER))))
    rows = [[(f"{v}.0" if v and 1 <= i <= 13 else v) for i, v in enumerate(r)] for r in _rows()]
    text = ",".join(HEADER[i] for i in order) + "\r\n"
    text += "".join(",".join(r[i] for i in order) + "\r\n" for r in rows)
    assert list(Criteo(_write(tmp_path / "odd.csv", text))) == expected


def test_dataset_metadata_and_reiteration(tmp_path: pathlib.Path) -> None:
    dataset = Criteo(_write(tmp_path / "train.txt", _tsv(_rows())))
    assert isinstance(dataset, base.Dataset)
    assert dataset.task == base.BINARY_CLF
    assert dataset.n_features == 39
    assert list(dataset) == list(dataset)
    assert "train.txt" in repr(dataset)


def test_empty_file_yields_nothing(tmp_path: pathlib.Path) -> None:
    assert list(Criteo(_write(tmp_path / "empty.txt", ""))) == []
    assert list(Criteo(_write(tmp_path / "header_only.csv", _csv([])))) == []


def test_missing_file(tmp_path: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError, match="train.txt"):
        Criteo(tmp_path / "train.txt")


@pytest.mark.parametrize(
    "fmt,line,mutate,reason",
    [
        ("tsv", 2, lambda r: r.pop(), "expected 40 fields, got 39"),
        ("tsv", 3, lambda r: r.__setitem__(4, "abc"), "'I4'"),
        ("tsv", 1, lambda r: r.__setitem__(0, "2"), "'label'"),
        # In the CSV form, line 1 is the header, so the second data row is line 3.
        ("csv", 3, lambda r: r.append("extra"), "expected 40 fields, got 41"),
        ("csv.gz", 4, lambda r: r.__setitem__(13, "1e"), "'I13'"),
    ],
)
def test_malformed_line_names_file_and_line(
    tmp_path: pathlib.Path, fmt: str, line: int, mutate, reason: str
) -> None:
    rows = _rows()
    data_index = line - 1 if fmt == "tsv" else line - 2
    mutate(rows[data_index])
    name = f"bad.{'txt' if fmt == 'tsv' else fmt}"
    text = _tsv(rows) if fmt == "tsv" else _csv(rows)
    dataset = Criteo(_write(tmp_path / name, text))
    pattern = re.escape(f"{name}, line {line}: ") + ".*" + re.escape(reason)
    with pytest.raises(ValueError, match=pattern):
        list(dataset)
