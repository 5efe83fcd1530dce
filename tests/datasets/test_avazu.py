"""Avazu reader, on small made-up files."""

from __future__ import annotations

import gzip
import pathlib
import re

import pytest
from river.datasets import base

from river_torchrec.datasets import Avazu

HEADER = (
    "id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,"
    "app_category,device_id,device_ip,device_model,device_type,device_conn_type,"
    "C14,C15,C16,C17,C18,C19,C20,C21"
)


def _row(rid: str, click: str, hour: str, site: str = "5a5a5a5a") -> str:
    fields = [rid, click, hour, "1001", "0", site, "d0d0d0d0", "c0c0c0c0", "a1a1a1a1",
              "a2a2a2a2", "a3a3a3a3", "e1e1e1e1", "e2e2e2e2", "e3e3e3e3", "1", "0",
              "111", "222", "33", "4444", "5", "66", "-1", "77"]
    return ",".join(fields) + "\n"


# 2014-10-21 was a Tuesday and 2014-10-25 a Saturday.
ROWS = [
    _row("1000000000000000001", "0", "14102100"),
    _row("1000000000000000002", "1", "14102107", site=""),
    _row("1000000000000000003", "0", "14102523"),
]


def _write(path: pathlib.Path, text: str) -> pathlib.Path:
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["train.csv", "train.csv.gz", "train.gz"])
def test_reads_plain_and_gzip(tmp_path: pathlib.Path, name: str) -> None:
    data = list(Avazu(_write(tmp_path / name, HEADER + "\n" + "".join(ROWS))))
    assert [y for _, y in data] == [False, True, False]
    x0, x1, x2 = (x for x, _ in data)
    assert "id" not in x0 and "click" not in x0
    assert len(x0) == 24
    assert (x0["hour"], x0["hour_of_day"], x0["weekday"]) == ("14102100", "00", "Tue")
    assert (x1["hour_of_day"], x1["weekday"]) == ("07", "Tue")
    assert (x2["hour_of_day"], x2["weekday"]) == ("23", "Sat")
    assert "site_id" not in x1  # empty value -> missing key
    assert x0["banner_pos"] == "0" and x0["C21"] == "77"
    for x, y in data:
        assert type(y) is bool
        assert all(type(v) is str for v in x.values())


def test_keep_id_and_metadata(tmp_path: pathlib.Path) -> None:
    path = _write(tmp_path / "train.csv", HEADER + "\n" + "".join(ROWS))
    plain, with_id = Avazu(path), Avazu(path, keep_id=True)
    assert plain.task == base.BINARY_CLF
    assert (plain.n_features, with_id.n_features) == (24, 25)
    assert next(iter(with_id))[0]["id"] == "1000000000000000001"
    assert list(plain) == list(plain)


def test_columns_matched_by_name(tmp_path: pathlib.Path) -> None:
    text = "hour,site_id,click\n14102100,abc,1\n"
    assert list(Avazu(_write(tmp_path / "t.csv", text))) == [
        ({"hour": "14102100", "site_id": "abc", "hour_of_day": "00", "weekday": "Tue"}, True)
    ]


def test_missing_file(tmp_path: pathlib.Path) -> None:
    with pytest.raises(FileNotFoundError, match="train.csv"):
        Avazu(tmp_path / "train.csv")


@pytest.mark.parametrize(
    "text,line,reason",
    [
        ("", 1, "empty file"),
        ("id,hour,C1\n1,14102100,5\n", 1, "no 'click' column"),
        (HEADER + "\n" + ROWS[0] + "1,0,14102100\n", 3, "expected 24 fields, got 3"),
        (HEADER + "\n" + ROWS[0] + ROWS[1].replace(",1,", ",yes,", 1), 3, "'click'"),
        (HEADER + "\n" + _row("9", "0", "141021"), 2, "YYMMDDHH"),
        (HEADER + "\n" + _row("9", "0", "14133100"), 2, "invalid date"),
        (HEADER + "\n" + ROWS[0] + ROWS[1] + _row("9", "0", "14102124"), 4, "invalid hour"),
    ],
)
def test_malformed_names_file_and_line(
    tmp_path: pathlib.Path, text: str, line: int, reason: str
) -> None:
    dataset = Avazu(_write(tmp_path / "bad.csv.gz", text))
    pattern = re.escape(f"bad.csv.gz, line {line}: ") + ".*" + re.escape(reason)
    with pytest.raises(ValueError, match=pattern):
        list(dataset)
