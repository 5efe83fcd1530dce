"""The shared reader plumbing: gzip sniffing and errors that name the file and line."""

from __future__ import annotations

import gzip
import pathlib

import pytest

from river_torchrec.datasets import _io


def test_missing_file_is_named(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "nope.csv.gz"
    with pytest.raises(FileNotFoundError, match="nope.csv.gz"):
        _io.require_file(missing)
    with pytest.raises(FileNotFoundError, match="nope.csv.gz"):
        list(_io.iter_lines(missing))


def test_directory_is_not_a_file(tmp_path: pathlib.Path) -> None:
    with pytest.raises(IsADirectoryError):
        _io.require_file(tmp_path)


def test_gzip_is_sniffed_not_guessed_from_the_name(tmp_path: pathlib.Path) -> None:
    text = "a,b\n1,2\n"
    plain, packed, disguised = tmp_path / "p.csv", tmp_path / "g.csv.gz", tmp_path / "g.csv"
    plain.write_text(text)
    packed.write_bytes(gzip.compress(text.encode()))
    disguised.write_bytes(gzip.compress(text.encode()))
    expected = [(1, ["a", "b"]), (2, ["1", "2"])]
    for path in (plain, packed, disguised):
        assert list(_io.iter_records(path, ",")) == expected


def test_blank_lines_are_skipped_and_line_numbers_kept(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "t.tsv"
    path.write_text("a\tb\r\n\r\nc\td\r\n")
    assert list(_io.iter_records(path, "\t")) == [(1, ["a", "b"]), (3, ["c", "d"])]


def test_quoted_csv_fields(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "q.csv"
    path.write_text('id,title\n1,"Smith, John"\n')
    assert list(_io.iter_records(path, ","))[1] == (2, ["1", "Smith, John"])


def test_undecodable_line_is_located(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(b"a,b\n1,2\n\xff\xfe,3\n")
    with pytest.raises(ValueError, match=r"bad\.csv, line 3"):
        list(_io.iter_records(path, ","))


def test_truncated_gzip_names_the_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "cut.csv.gz"
    lines = "".join(f"{i},{i * 7919 % 10007}\n" for i in range(20_000))
    path.write_bytes(gzip.compress(lines.encode())[:2_000])
    with pytest.raises(ValueError, match=r"cut\.csv\.gz"):
        list(_io.iter_lines(path))


def test_data_format_error_carries_location(tmp_path: pathlib.Path) -> None:
    err = _io.DataFormatError(tmp_path / "f.txt", 7, "boom")
    assert isinstance(err, ValueError)
    assert err.line == 7 and err.path.name == "f.txt"
    assert str(err) == f"{tmp_path / 'f.txt'}, line 7: boom"


@pytest.mark.parametrize(
    "value,expected", [("1", True), ("0", False), ("1.0", True), ("0.0", False)]
)
def test_parse_label(value: str, expected: bool) -> None:
    assert _io.parse_label(value, "f", 1, "label") is expected


@pytest.mark.parametrize("value", ["2", "", "yes", "-1"])
def test_parse_label_rejects(value: str) -> None:
    with pytest.raises(ValueError, match="line 4"):
        _io.parse_label(value, "f", 4, "label")
