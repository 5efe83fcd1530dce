"""Reader for the Criteo Display Advertising Challenge click logs (Kaggle 2014)."""

from __future__ import annotations

import itertools
import pathlib
import re
from collections.abc import Iterator

from river.datasets import base

from . import _io

__all__ = ["Criteo"]

N_NUMERIC = 13
N_CATEGORICAL = 26
NUMERIC_COLUMNS = tuple(f"I{i}" for i in range(1, N_NUMERIC + 1))
CATEGORICAL_COLUMNS = tuple(f"C{i}" for i in range(1, N_CATEGORICAL + 1))
COLUMNS = ("label", *NUMERIC_COLUMNS, *CATEGORICAL_COLUMNS)

_NUMERIC_NAME = re.compile(r"I\d+")


class Criteo(base.FileDataset):
    """Criteo Display Advertising Challenge click logs, read from a local file.

    Each row is one display ad served by Criteo; the label says whether it was clicked. The
    rows are in chronological order, which makes the data a natural progressive-validation
    stream. Nothing is downloaded: the Criteo terms forbid redistribution, so you supply the
    file (`train.txt` or `dac_sample.txt` from Kaggle's `dac.tar.gz`, or a CSV export).

    Two layouts are understood, plain or gzip-compressed (detected from the file's magic
    bytes, not its name):

    * Kaggle's tab-separated form, without a header: `label`, `I1`..`I13`, `C1`..`C26`.
    * A comma-separated form whose first line is the header `label,I1,...,I13,C1,...,C26`.
      Columns are matched by name, so their order does not matter.

    The layout is chosen from the first line (a tab means the Kaggle form; a first field
    named `label` means a header), so the file name is irrelevant.

    Each sample is `(x, y)`: `I*` values become `float` (the integers are counts, and some
    exports write them as `1.0`), `C*` values stay as their hashed hex `str`, and a missing
    (empty) value leaves its key out of `x`, which is what river's sparse-friendly models
    expect. `y` is a `bool`.

    Parameters
    ----------
    path
        The data file.

    Raises
    ------
    FileNotFoundError
        If `path` does not exist (raised at construction, naming the file).
    ValueError
        While iterating, if a line is malformed: wrong column count, a non-numeric `I*`
        value, or a label other than 0/1. The message names the file and the 1-based line.

    Examples
    --------

    A tiny made-up file in Kaggle's tab-separated layout, with missing values:

    >>> import gzip, pathlib, shutil, tempfile
    >>> from river_torchrec.datasets import Criteo

    >>> row = ["1", "5", ""] + ["2"] * 11 + ["aaaaaaaa", ""] + ["bbbbbbbb"] * 24
    >>> tmp = pathlib.Path(tempfile.mkdtemp())
    >>> path = tmp / "train.txt.gz"
    >>> with gzip.open(path, "wt") as f:
    ...     _ = f.write("\\t".join(row) + "\\n")

    >>> dataset = Criteo(path)
    >>> for x, y in dataset:
    ...     print(y, len(x), x["I1"], "I2" in x, x["C1"], "C2" in x)
    True 37 5.0 False aaaaaaaa False

    >>> shutil.rmtree(tmp)

    References
    ----------
    [^1]: [Criteo Labs, Display Advertising Challenge (Kaggle, 2014)](https://www.kaggle.com/c/criteo-display-ad-challenge)

    """

    def __init__(self, path: _io.StrPath) -> None:
        p = _io.require_file(path)
        super().__init__(
            filename=p.name,
            directory=p.parent,
            task=base.BINARY_CLF,
            n_features=N_NUMERIC + N_CATEGORICAL,
        )

    def __iter__(self) -> Iterator[tuple[dict[str, float | str], bool]]:
        path: pathlib.Path = self.path
        lines = _io.iter_lines(path)
        first = next(lines, None)
        if first is None:
            return
        delimiter = "\t" if "\t" in first else ","
        records = _io.iter_records(path, delimiter, lines=itertools.chain([first], lines))

        head = next(records, None)
        if head is None:
            return
        line, fields = head
        # Data rows never contain the literal word "label", so its presence marks a header.
        if any(f.strip().lower() == "label" for f in fields):
            label_idx, numeric, categorical = self._layout_from_header(path, line, fields)
            n_fields = len(fields)
        else:
            label_idx = 0
            numeric = [(name, i) for i, name in enumerate(COLUMNS) if name.startswith("I")]
            categorical = [(name, i) for i, name in enumerate(COLUMNS) if name.startswith("C")]
            n_fields = len(COLUMNS)
            records = itertools.chain([head], records)

        for line, fields in records:
            if len(fields) != n_fields:
                raise _io.DataFormatError(
                    path, line, f"expected {n_fields} fields, got {len(fields)}"
                )
            y = _io.parse_label(fields[label_idx], path, line, "label")
            x: dict[str, float | str] = {}
            for name, i in numeric:
                v = fields[i]
                if v:
                    x[name] = _io.parse_float(v, path, line, name)
            for name, i in categorical:
                v = fields[i]
                if v:
                    x[name] = v
            yield x, y

    @staticmethod
    def _layout_from_header(
        path: pathlib.Path, line: int, header: list[str]
    ) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
        names = [h.strip() for h in header]
        if len(set(names)) != len(names):
            raise _io.DataFormatError(path, line, "duplicate column names in header")
        label_idx = next(i for i, n in enumerate(names) if n.lower() == "label")
        numeric = [(n, i) for i, n in enumerate(names) if _NUMERIC_NAME.fullmatch(n)]
        # Anything that is neither the label nor an I* count is categorical, so a CSV export
        # with extra hashed columns still loads rather than failing on an unknown name.
        categorical = [
            (n, i)
            for i, n in enumerate(names)
            if i != label_idx and not _NUMERIC_NAME.fullmatch(n)
        ]
        return label_idx, numeric, categorical
