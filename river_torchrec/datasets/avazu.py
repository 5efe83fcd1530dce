"""Reader for the Avazu mobile-ad click logs (Kaggle 2014)."""

from __future__ import annotations

import datetime
import pathlib
from collections.abc import Iterator

from river.datasets import base

from . import _io

__all__ = ["Avazu"]

LABEL = "click"
ID = "id"
HOUR = "hour"
DERIVED = ("hour_of_day", "weekday")
# Avazu's train.csv columns after `id` and `click`; used only to state n_features up front.
FEATURE_COLUMNS = (
    "hour",
    "C1",
    "banner_pos",
    "site_id",
    "site_domain",
    "site_category",
    "app_id",
    "app_domain",
    "app_category",
    "device_id",
    "device_ip",
    "device_model",
    "device_type",
    "device_conn_type",
    "C14",
    "C15",
    "C16",
    "C17",
    "C18",
    "C19",
    "C20",
    "C21",
)
# Fixed English names rather than strftime("%a"), which follows the process locale.
_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


class Avazu(base.FileDataset):
    """Avazu mobile-ad click logs, read from a local file.

    Ten days of mobile ad impressions (October 2014) from Avazu's Kaggle "Click-Through Rate
    Prediction" competition, ordered by hour. Nothing is downloaded: the competition rules
    grant no redistribution right, so you supply `train.csv` (plain or gzip-compressed,
    detected from the file's magic bytes).

    The file is comma-separated with a header line (`id,click,hour,C1,banner_pos,site_id,...,
    C21`); columns are matched by name, so extra or reordered columns are fine as long as
    `click` and `hour` are present.

    Each sample is `(x, y)` where `y` is the `click` column as a `bool` and every other column
    is a categorical `str` feature, integer codes such as `banner_pos` or `C14` included
    (they are identifiers, not quantities). Two features are derived from `hour` (which is
    `YYMMDDHH` and is kept as is): `hour_of_day` (`"00"`..`"23"`) and `weekday` (`"Mon"`..
    `"Sun"`), because the raw `hour` value never repeats across days and so cannot carry the
    daily and weekly cycles by itself. An empty value leaves its key out of `x`.

    The `id` column is dropped by default: it is unique per impression, so as a feature it
    only bloats embedding tables and one-hot encoders without ever generalising.

    Parameters
    ----------
    path
        The data file.
    keep_id
        Keep the `id` column as a feature (useful only to join predictions back to rows).

    Raises
    ------
    FileNotFoundError
        If `path` does not exist (raised at construction, naming the file).
    ValueError
        While iterating, if the header lacks `click` or `hour`, or a line is malformed (wrong
        column count, a `click` other than 0/1, an `hour` that is not a valid `YYMMDDHH`).
        The message names the file and the 1-based line.

    Examples
    --------

    >>> import pathlib, shutil, tempfile
    >>> from river_torchrec.datasets import Avazu

    >>> tmp = pathlib.Path(tempfile.mkdtemp())
    >>> path = tmp / "train.csv"
    >>> _ = path.write_text(
    ...     "id,click,hour,C1,banner_pos,site_id\\n"
    ...     "123,0,14102815,1001,0,abcd1234\\n"
    ...     "456,1,14102816,1001,1,\\n"
    ... )

    >>> for x, y in Avazu(path):
    ...     print(x, y)
    {'hour': '14102815', 'C1': '1001', 'banner_pos': '0', 'site_id': 'abcd1234',
     'hour_of_day': '15', 'weekday': 'Tue'} False
    {'hour': '14102816', 'C1': '1001', 'banner_pos': '1',
     'hour_of_day': '16', 'weekday': 'Tue'} True

    >>> shutil.rmtree(tmp)

    References
    ----------
    [^1]: [Avazu, Click-Through Rate Prediction (Kaggle, 2014)](https://www.kaggle.com/c/avazu-ctr-prediction)

    """

    def __init__(self, path: _io.StrPath, keep_id: bool = False) -> None:
        p = _io.require_file(path)
        super().__init__(
            filename=p.name,
            directory=p.parent,
            task=base.BINARY_CLF,
            n_features=len(FEATURE_COLUMNS) + len(DERIVED) + int(keep_id),
        )
        self.keep_id = keep_id

    def __iter__(self) -> Iterator[tuple[dict[str, str], bool]]:
        path: pathlib.Path = self.path
        records = _io.iter_records(path, ",")
        head = next(records, None)
        if head is None:
            raise _io.DataFormatError(path, 1, "empty file, expected a header line")
        line, header = head
        names = [h.strip() for h in header]
        for required in (LABEL, HOUR):
            if required not in names:
                raise _io.DataFormatError(path, line, f"header has no {required!r} column")
        label_idx = names.index(LABEL)
        hour_idx = names.index(HOUR)
        features = [
            (n, i)
            for i, n in enumerate(names)
            if i != label_idx and (self.keep_id or n != ID)
        ]
        n_fields = len(names)
        # The data is ordered by hour, so consecutive rows share it: caching avoids
        # re-parsing the same date thousands of times.
        derived_cache: dict[str, tuple[str, str]] = {}

        for line, fields in records:
            if len(fields) != n_fields:
                raise _io.DataFormatError(
                    path, line, f"expected {n_fields} fields, got {len(fields)}"
                )
            y = _io.parse_label(fields[label_idx], path, line, LABEL)
            x = {n: fields[i] for n, i in features if fields[i]}
            hour = fields[hour_idx]
            derived = derived_cache.get(hour)
            if derived is None:
                derived = derived_cache[hour] = _derive_time(hour, path, line)
            x["hour_of_day"], x["weekday"] = derived
            yield x, y


def _derive_time(hour: str, path: pathlib.Path, line: int) -> tuple[str, str]:
    if len(hour) != 8 or not hour.isdigit():
        raise _io.DataFormatError(path, line, f"column 'hour': expected YYMMDDHH, got {hour!r}")
    yy, mm, dd, hh = (int(hour[i : i + 2]) for i in range(0, 8, 2))
    try:
        day = datetime.date(2000 + yy, mm, dd)
    except ValueError:
        raise _io.DataFormatError(path, line, f"column 'hour': invalid date in {hour!r}")
    if hh > 23:
        raise _io.DataFormatError(path, line, f"column 'hour': invalid hour in {hour!r}")
    return hour[6:8], _WEEKDAYS[day.weekday()]
