"""Reader for MovieLens 100K ratings, framed as a time-ordered implicit-feedback stream."""

from __future__ import annotations

import errno
import pathlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from river.datasets import base

from . import _io

__all__ = ["MovieLens100K"]

GENRES = (
    "unknown",
    "action",
    "adventure",
    "animation",
    "childrens",
    "comedy",
    "crime",
    "documentary",
    "drama",
    "fantasy",
    "film_noir",
    "horror",
    "musical",
    "mystery",
    "romance",
    "sci_fi",
    "thriller",
    "war",
    "western",
)
FEATURES = (
    "user_id",
    "item_id",
    "timestamp",
    "age",
    "gender",
    "occupation",
    "zip_prefix",
    "release_year",
    "genres",
)
ZIP_PREFIX_LEN = 3
#: The user and item side features of `MovieLens100K.interactions` (everything but ids and time).
USER_FEATURES = ("age", "gender", "occupation", "zip_prefix")
ITEM_FEATURES = ("release_year", "genres")
SIDE_FEATURES = USER_FEATURES + ITEM_FEATURES

_CSV_STEMS = ("movielens100k_ratings", "movielens100k_users", "movielens100k_items")
_GROUPLENS = ("u.data", "u.user", "u.item")
_RATING_COLUMNS = ("user_id", "item_id", "rating", "timestamp")
_USER_COLUMNS = ("user_id", "age", "gender", "occupation", "zip_code")
_ITEM_COLUMNS = ("item_id", "title", "release_date", "video_release_date", "imdb_url")


@dataclass(frozen=True)
class _Layout:
    """Where the three files are and how they are encoded."""

    ratings: pathlib.Path
    users: pathlib.Path
    items: pathlib.Path
    grouplens: bool


class MovieLens100K(base.FileDataset):
    """MovieLens 100K ratings as a click-like stream, read from local files.

    100,000 ratings (1 to 5) from 943 users on 1,682 movies, collected by GroupLens between
    September 1997 and April 1998. A rating at or above `threshold` counts as a positive
    ("the user liked it"), which turns explicit ratings into the binary feedback that CTR
    models learn from. Events are yielded in timestamp order (a stable sort, so ties keep the
    file order), because progressive validation on a shuffled stream would leak the future.
    Nothing is downloaded: the GroupLens terms forbid redistribution, so you supply the files.

    Two layouts are understood:

    * The GroupLens `ml-100k` folder: `u.data` (tab-separated `user item rating timestamp`),
      `u.user` (`user|age|gender|occupation|zip`) and `u.item` (pipe-separated, Latin-1, five
      descriptive fields then 19 genre flags), all without a header.
    * A CSV export with header lines: `movielens100k_ratings.csv` (`user_id,item_id,rating,
      timestamp`), `movielens100k_users.csv` (`user_id,age,gender,occupation,zip_code`) and
      `movielens100k_items.csv` (`item_id,title,release_date,video_release_date,imdb_url`,
      then `genre_unknown`..`genre_western`), each plain or gzip-compressed (`.csv.gz`).

    `path` may be the folder, or the ratings file itself (`u.data` or
    `movielens100k_ratings.csv[.gz]`); the user and item files are looked up beside it. All
    three files are required.

    Each sample is `(x, y)` with `y = rating >= threshold` and

    * `user_id`, `item_id`: `str`; `timestamp`: `int` (Unix seconds);
    * user side: `age` (`float`), `gender`, `occupation`, `zip_prefix` (the first three
      characters of the zip code, a coarse region; full zips are near-unique per user and so
      add nothing beyond `user_id`);
    * item side: `release_year` (`float`) and `genres`, all the movie's genres joined by `"|"`
      in GroupLens' order (e.g. `"animation|childrens|comedy"`). A single string keeps the
      schema flat; models that want one feature per genre can split it on `"|"`.

    The rating itself is not a feature (it would leak the label). A missing value (an empty
    field, a movie without release date or genre, a user or item absent from its side file)
    leaves the key out of `x`.

    Parameters
    ----------
    path
        The folder holding the files, or the ratings file.
    threshold
        Smallest rating that counts as a positive.

    Raises
    ------
    FileNotFoundError
        At construction, if one of the three files cannot be found; the message names it.
    ValueError
        While iterating, if a line is malformed (wrong column count, a non-numeric rating,
        age, timestamp or id, a genre flag other than 0/1, an unparsable release date). The
        message names the file and the 1-based line.

    Examples
    --------

    A made-up miniature in the GroupLens layout:

    >>> import pathlib, shutil, tempfile
    >>> from river_torchrec.datasets import MovieLens100K

    >>> tmp = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (tmp / "u.data").write_text("1\\t10\\t5\\t900000200\\n2\\t10\\t2\\t900000100\\n")
    >>> _ = (tmp / "u.user").write_text("1|30|F|writer|12345\\n2|41|M|doctor|98765\\n")
    >>> flags = ["0"] * 19
    >>> flags[3] = flags[5] = "1"
    >>> _ = (tmp / "u.item").write_text(
    ...     "|".join(["10", "Made Up (1996)", "01-Jan-1996", "", "", *flags]) + "\\n"
    ... )

    >>> for x, y in MovieLens100K(tmp):
    ...     print(x, y)
    {'user_id': '2', 'item_id': '10', 'timestamp': 900000100, 'age': 41.0, 'gender': 'M',
     'occupation': 'doctor', 'zip_prefix': '987', 'release_year': 1996.0,
     'genres': 'animation|comedy'} False
    {'user_id': '1', 'item_id': '10', 'timestamp': 900000200, 'age': 30.0, 'gender': 'F',
     'occupation': 'writer', 'zip_prefix': '123', 'release_year': 1996.0,
     'genres': 'animation|comedy'} True

    >>> shutil.rmtree(tmp)

    References
    ----------
    [^1]: F. Maxwell Harper and Joseph A. Konstan. 2015. The MovieLens Datasets: History and
          Context. ACM Transactions on Interactive Intelligent Systems 5, 4, Article 19.

    """

    def __init__(self, path: _io.StrPath, threshold: float = 4) -> None:
        layout = _resolve(pathlib.Path(path).expanduser())
        super().__init__(
            filename=layout.ratings.name,
            directory=layout.ratings.parent,
            task=base.BINARY_CLF,
            n_features=len(FEATURES),
        )
        self.threshold = threshold
        self._layout = layout

    def __iter__(self) -> Iterator[tuple[dict[str, str | int | float], bool]]:
        layout = self._layout
        users = _read_users(layout)
        items = _read_items(layout)
        ratings = _read_ratings(layout)
        # sorted() is stable, so equal timestamps keep the file order, as documented.
        ratings.sort(key=lambda r: r[3])
        threshold = self.threshold
        for user, item, rating, timestamp in ratings:
            x: dict[str, str | int | float] = {
                "user_id": user,
                "item_id": item,
                "timestamp": timestamp,
            }
            x.update(users.get(user, ()))
            x.update(items.get(item, ()))
            yield x, rating >= threshold

    def interactions(
        self, rating: bool = False, features: Sequence[str] | None = None
    ) -> Iterator[tuple[str, str, bool | float, dict[str, str | int | float]]]:
        """The same events as `(user, item, y, x)` interactions, for rankers.

        `user` and `item` are the ids; `y` is `rating >= threshold` (or, with `rating`, the
        rating itself, for rankers of explicit feedback); `x` holds the side features of the
        user (`age`, `gender`, `occupation`, `zip_prefix`) and of the item
        (`release_year`, `genres`), or only the keys named in `features` (the `timestamp`
        is left out unless named). Missing values leave their key out, as in `x` above.
        When ranking, the item's own features must not be part of the context (they would
        give the chosen item away): pass `ITEM_FEATURES` to
        `river_torchrec.evaluate.evaluate_ranking(item_features=...)`.

        Examples
        --------

        >>> import pathlib, shutil, tempfile
        >>> from river_torchrec.datasets import MovieLens100K

        >>> tmp = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (tmp / "u.data").write_text("1\\t10\\t5\\t900000200\\n")
        >>> _ = (tmp / "u.user").write_text("1|30|F|writer|12345\\n")
        >>> _ = (tmp / "u.item").write_text("|".join(["10", "Up", "01-Jan-1996", "", "",
        ...                                           *["0"] * 8, "1", *["0"] * 10]) + "\\n")
        >>> next(MovieLens100K(tmp).interactions())
        ('1', '10', True, {'age': 30.0, 'gender': 'F', 'occupation': 'writer',
         'zip_prefix': '123', 'release_year': 1996.0, 'genres': 'drama'})
        >>> next(MovieLens100K(tmp).interactions(rating=True, features=["genres"]))
        ('1', '10', 5.0, {'genres': 'drama'})
        >>> shutil.rmtree(tmp)

        """
        keep = set(SIDE_FEATURES if features is None else features)
        unknown = keep - set(FEATURES)
        if unknown:
            raise ValueError(
                f"unknown MovieLens features {sorted(unknown)}; choose from {list(FEATURES)}"
            )
        threshold = self.threshold
        for (user, item, value, timestamp), (users, items) in self._rows():
            x: dict[str, str | int | float] = {"timestamp": timestamp} if "timestamp" in keep else {}
            for k, v in (*users.get(user, {}).items(), *items.get(item, {}).items()):
                if k in keep:
                    x[k] = v
            yield user, item, (value if rating else value >= threshold), x

    def _rows(self) -> Iterator[tuple[tuple[str, str, float, int], tuple[dict, dict]]]:
        layout = self._layout
        users = _read_users(layout)
        items = _read_items(layout)
        ratings = _read_ratings(layout)
        ratings.sort(key=lambda r: r[3])
        side = (users, items)
        for row in ratings:
            yield row, side


def _resolve(path: pathlib.Path) -> _Layout:
    ratings: pathlib.Path | None
    if path.is_dir():
        folder = path
        if (folder / _GROUPLENS[0]).is_file():
            ratings, grouplens = folder / _GROUPLENS[0], True
        elif (ratings := _find_csv(folder, _CSV_STEMS[0])) is not None:
            grouplens = False
        else:
            raise FileNotFoundError(
                errno.ENOENT,
                f"No MovieLens ratings file ({_GROUPLENS[0]} or {_CSV_STEMS[0]}.csv[.gz]) in",
                str(folder),
            )
    else:
        ratings = _io.require_file(path)
        folder = path.parent
        # Anything that is not a CSV is taken for the GroupLens layout, so a renamed u.data
        # still finds its u.user and u.item neighbours.
        grouplens = not path.name.lower().removesuffix(".gz").endswith(".csv")

    if grouplens:
        users, items = (_io.require_file(folder / n) for n in _GROUPLENS[1:])
    else:
        side = []
        for stem in _CSV_STEMS[1:]:
            found = _find_csv(folder, stem)
            if found is None:
                missing = str(folder / f"{stem}.csv")
                raise FileNotFoundError(errno.ENOENT, "No such data file (nor .csv.gz)", missing)
            side.append(found)
        users, items = side
    return _Layout(ratings=ratings, users=users, items=items, grouplens=grouplens)


def _find_csv(folder: pathlib.Path, stem: str) -> pathlib.Path | None:
    for name in (f"{stem}.csv.gz", f"{stem}.csv"):
        if (folder / name).is_file():
            return folder / name
    return None


def _records(
    path: pathlib.Path, grouplens: bool, delimiter: str, columns: tuple[str, ...], encoding: str
) -> Iterator[tuple[int, list[str]]]:
    """Yield data records, checking the CSV header against the expected leading columns."""
    if grouplens:
        yield from _io.iter_records(path, delimiter, encoding=encoding)
        return
    records = _io.iter_records(path, ",")
    head = next(records, None)
    if head is None:
        raise _io.DataFormatError(path, 1, "empty file, expected a header line")
    line, header = head
    names = tuple(h.strip() for h in header[: len(columns)])
    if names != columns:
        raise _io.DataFormatError(
            path, line, f"expected a header starting with {','.join(columns)}"
        )
    yield from records


def _check_width(path: pathlib.Path, line: int, fields: list[str], n: int) -> None:
    if len(fields) != n:
        raise _io.DataFormatError(path, line, f"expected {n} fields, got {len(fields)}")


def _read_ratings(layout: _Layout) -> list[tuple[str, str, float, int]]:
    path = layout.ratings
    out = []
    for line, f in _records(path, layout.grouplens, "\t", _RATING_COLUMNS, "utf-8"):
        _check_width(path, line, f, 4)
        user, item = _parse_id(f[0], path, line, "user_id"), _parse_id(f[1], path, line, "item_id")
        rating = _io.parse_float(f[2], path, line, "rating")
        timestamp = _io.parse_int(f[3], path, line, "timestamp")
        out.append((user, item, rating, timestamp))
    return out


def _read_users(layout: _Layout) -> dict[str, dict[str, str | float]]:
    path = layout.users
    out: dict[str, dict[str, str | float]] = {}
    for line, f in _records(path, layout.grouplens, "|", _USER_COLUMNS, "utf-8"):
        _check_width(path, line, f, 5)
        user = _parse_id(f[0], path, line, "user_id")
        side: dict[str, str | float] = {}
        if f[1]:
            side["age"] = _io.parse_float(f[1], path, line, "age")
        if f[2]:
            side["gender"] = f[2]
        if f[3]:
            side["occupation"] = f[3]
        if zip_code := f[4].strip():
            side["zip_prefix"] = zip_code[:ZIP_PREFIX_LEN]
        out[user] = side
    return out


def _read_items(layout: _Layout) -> dict[str, dict[str, str | float]]:
    path = layout.items
    # GroupLens ships u.item in Latin-1 (a few accented titles); the CSV export is UTF-8.
    encoding = "latin-1" if layout.grouplens else "utf-8"
    n_fields = len(_ITEM_COLUMNS) + len(GENRES)
    out: dict[str, dict[str, str | float]] = {}
    for line, f in _records(path, layout.grouplens, "|", _ITEM_COLUMNS, encoding):
        _check_width(path, line, f, n_fields)
        item = _parse_id(f[0], path, line, "item_id")
        side: dict[str, str | float] = {}
        if release := f[2].strip():
            year = release[-4:]
            if not year.isdigit():
                raise _io.DataFormatError(
                    path, line, f"column 'release_date': expected DD-Mon-YYYY, got {release!r}"
                )
            side["release_year"] = float(year)
        genres = []
        for name, flag in zip(GENRES, f[len(_ITEM_COLUMNS) :]):
            if _io.parse_label(flag, path, line, f"genre_{name}"):
                genres.append(name)
        if genres:
            side["genres"] = "|".join(genres)
        out[item] = side
    return out


def _parse_id(value: str, path: pathlib.Path, line: int, column: str) -> str:
    # Ids are kept as strings (categorical), but must be integers in both layouts; normalising
    # through int() makes "007" and "7" the same user, as GroupLens intends.
    return str(_io.parse_int(value.strip(), path, line, column))
