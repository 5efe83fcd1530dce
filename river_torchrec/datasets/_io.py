"""Shared plumbing for the file readers: gzip-or-plain opening and precise errors.

Every reader funnels its I/O through this module so that a user who points a loader at a
wrong, truncated or hand-edited file always gets an error that names the file and, where it
makes sense, the 1-based line number. Nothing here downloads anything.

"""

from __future__ import annotations

import csv
import errno
import gzip
import pathlib
import zlib
from collections.abc import Iterable, Iterator
from os import PathLike
from typing import BinaryIO

__all__ = [
    "DataFormatError",
    "StrPath",
    "iter_lines",
    "iter_records",
    "parse_float",
    "parse_int",
    "parse_label",
    "require_file",
]

StrPath = str | PathLike[str]

_GZIP_MAGIC = b"\x1f\x8b"


class DataFormatError(ValueError):
    """A data file is malformed.

    It is a `ValueError`, so callers that only know the standard hierarchy still catch it; the
    `path` and `line` attributes let tooling point at the culprit without parsing the message.

    """

    def __init__(self, path: StrPath, line: int | None, reason: str) -> None:
        self.path = pathlib.Path(path)
        self.line = line
        self.reason = reason
        where = f"{self.path}" if line is None else f"{self.path}, line {line}"
        super().__init__(f"{where}: {reason}")


def require_file(path: StrPath) -> pathlib.Path:
    """Return `path` as a `Path`, or raise `FileNotFoundError` that names it."""
    p = pathlib.Path(path).expanduser()
    if p.is_dir():
        raise IsADirectoryError(errno.EISDIR, "Expected a data file, got a directory", str(p))
    if not p.is_file():
        raise FileNotFoundError(errno.ENOENT, "No such data file", str(p))
    return p


def _is_gzip(path: pathlib.Path) -> bool:
    # Sniff the magic bytes rather than trusting the suffix: renamed or re-exported files
    # are common with these public dumps.
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def _open_binary(path: pathlib.Path) -> BinaryIO:
    if _is_gzip(path):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def iter_lines(path: StrPath, encoding: str = "utf-8") -> Iterator[str]:
    """Yield the lines of a plain or gzip text file, line ends included.

    Lines are split as bytes and decoded one by one, so that a decoding error can be pinned
    to its line (a text-mode reader decodes whole buffers ahead of the line being parsed).
    Decoding and decompression failures are re-raised as `DataFormatError` naming the file
    and the line, because the raw `UnicodeDecodeError`/`EOFError` do not say where.

    """
    p = require_file(path)
    n = 0
    with _open_binary(p) as f:
        while True:
            try:
                raw = f.readline()
            except (EOFError, OSError, zlib.error) as e:
                raise DataFormatError(p, n + 1, f"corrupt or truncated file ({e})") from e
            if not raw:
                return
            n += 1
            try:
                line = raw.decode(encoding)
            except UnicodeDecodeError as e:
                raise DataFormatError(p, n, f"cannot decode as {encoding} ({e.reason})") from e
            yield line


def iter_records(
    path: StrPath,
    delimiter: str,
    encoding: str = "utf-8",
    lines: Iterable[str] | None = None,
) -> Iterator[tuple[int, list[str]]]:
    """Yield `(line_number, fields)` for every non-blank record of a delimited text file.

    Comma-separated files go through the `csv` module because real exports quote fields that
    contain commas (movie titles, for one). Other delimiters are split verbatim, which is both
    faster and what the original tab/pipe dumps expect (they never quote).

    `lines` lets a caller that already peeked at the first line hand the stream back in.

    """
    p = pathlib.Path(path)
    source = iter_lines(p, encoding) if lines is None else lines
    if delimiter == ",":
        reader = csv.reader(source, delimiter=",", strict=True)
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise DataFormatError(p, reader.line_num, f"invalid CSV ({e})") from e
            if fields:
                yield reader.line_num, fields
    else:
        for n, line in enumerate(source, start=1):
            line = line.rstrip("\r\n")
            if line:
                yield n, line.split(delimiter)


def parse_float(value: str, path: StrPath, line: int, column: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise DataFormatError(path, line, f"column {column!r}: expected a number, got {value!r}")


def parse_int(value: str, path: StrPath, line: int, column: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataFormatError(
            path, line, f"column {column!r}: expected an integer, got {value!r}"
        )


_TRUE = frozenset({"1", "1.0", "true", "True"})
_FALSE = frozenset({"0", "0.0", "false", "False"})


def parse_label(value: str, path: StrPath, line: int, column: str) -> bool:
    # Some re-exports write 0/1 labels as floats; anything else is a sign of a shifted column.
    v = value.strip()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise DataFormatError(path, line, f"column {column!r}: expected a 0/1 label, got {value!r}")
