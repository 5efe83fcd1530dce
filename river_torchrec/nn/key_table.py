"""The vocabulary of a collisionless table: ``(field, value)`` keys to rows, in NumPy arrays.

A Python ``dict`` of tuple keys costs about 280 bytes per key (the tuple, the value string
and a dict or ``OrderedDict`` slot), eight times the float32 row it addresses. A
:class:`KeyTable` keeps, per key, a 64-bit fingerprint, a 16-bit field and kind and a
32-bit word holding the value (ids such as ``"68fd1e64"``, ``"u1234"`` or ``"0042"``) or
its place in a byte log, in flat arrays, and finds rows through an open-addressing index
of ``uint32`` row numbers over the fingerprints: 20 to 26 bytes per key, plus 1 + the
UTF-8 length for values that do not fit the word.

Fingerprints are BLAKE2b digests (:func:`key_fingerprint`), the same in every process,
platform and Python version (never the salted built-in ``hash``). Two distinct keys
share a fingerprint, and hence a row, with probability about ``n**2 / 2**65`` for ``n``
keys: 2.7e-8 at 10^6 keys, 2.7e-4 at 10^8, 2.7% at 10^9 (for at least one pair among all
of them). Nothing else about a key is approximate: keys are stored, so iteration gives
them back exactly.
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Hashable, Iterator, Sequence

import numpy as np

__all__ = ["KeyTable", "key_fingerprint", "fingerprints"]

Key = tuple[Hashable, Hashable]

_blake2b = hashlib.blake2b

#: Kinds of keys, in the low bits of ``_meta`` (``field_id * 16 + kind``); 0: no key.
_NO_KEY, _STR, _NONE, _FALSE, _TRUE, _OTHER, _HEX8, _NUM, _NUMW = range(9)
_KIND_BITS = 4
_KIND_MASK = (1 << _KIND_BITS) - 1
#: Field ids that fit a uint16 ``_meta``; beyond, it widens to uint32.
_FIELDS_U16 = 1 << (16 - _KIND_BITS)
#: Log offsets that fit a uint32 ``_loc``; beyond, it widens to uint64.
_LOC32_LIMIT = 2**32 - 1
_U32 = 2**32
_DIGITS = "0123456789"
_HEX = "0123456789abcdef"
#: Version of the layout in pickles (the first one had no ``_version``).
_LAYOUT = 2
#: The index grows (doubles and is rebuilt) beyond this fraction of occupied slots.
_MAX_LOAD = 0.7
#: Keys placed into the index per vectorised pass.
_PLACE_CHUNK = 1 << 18
#: Hot keys are looked up in a plain dict first; it is emptied when it reaches this size.
CACHE_SIZE = 1 << 16


def key_fingerprint(field: Hashable, value: Hashable) -> int:
    """The unsigned 64-bit BLAKE2b fingerprint of a key, stable across processes.

    The type names keep ``("f", "1")`` apart from ``("f", 1)`` and the field ``1`` apart
    from the field ``"1"``; the unit separators keep ``("ab", "c")`` apart from ``("a", "bc")``.

    Examples
    --------
    >>> key_fingerprint("user_id", "u1") == key_fingerprint("user_id", "u1")
    True
    >>> len({key_fingerprint("f", "1"), key_fingerprint("f", 1), key_fingerprint(1, "1")})
    3
    >>> key_fingerprint("user_id", "u1")
    12940247605380977458

    """
    data = f"{type(field).__name__}\x1f{field}\x1f{type(value).__name__}\x1f{value}".encode(
        "utf-8", "surrogatepass"
    )
    return int.from_bytes(_blake2b(data, digest_size=8).digest(), "little")


def fingerprints(keys: Sequence[Key]) -> np.ndarray:
    """:func:`key_fingerprint` of each key, as a ``uint64`` array.

    String values (the usual case) skip the formatting of the field part, done once per field.
    """
    out = np.empty(len(keys), dtype=np.uint64)
    prefixes: dict[Hashable, str] = {}
    from_bytes = int.from_bytes
    for i, (field, value) in enumerate(keys):
        if type(value) is str:
            prefix = prefixes.get(field)
            if prefix is None:
                prefix = prefixes[field] = f"{type(field).__name__}\x1f{field}\x1fstr\x1f"
            data = (prefix + value).encode("utf-8", "surrogatepass")
            out[i] = from_bytes(_blake2b(data, digest_size=8).digest(), "little")
        else:
            out[i] = key_fingerprint(field, value)
    return out


def _grown(a: np.ndarray, n: int) -> np.ndarray:
    """``a`` padded with zeros to length ``n``. ``np.zeros`` maps fresh pages, so the padding
    costs no resident memory until it is written."""
    out = np.zeros(n, dtype=a.dtype)
    out[: len(a)] = a
    return out


def _varint(n: int) -> bytes:
    """``n`` in LEB128: one byte below 128, one more per further 7 bits."""
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _entry(data: bytearray, offset: int) -> tuple[int, int]:
    """Start and length of the value bytes of the log entry at ``offset``."""
    b = data[offset]
    if b < 0x80:
        return offset + 1, b
    n = shift = 0
    while True:
        b = data[offset]
        offset += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return offset, n


def _v1_items(state: dict) -> list[tuple[Key, int]]:
    """The ``(key, row)`` pairs of a pickle of the first layout (int32 ``_meta`` of
    ``field * 8 + kind``, -1 without a key; uint64 ``_loc`` of offset and length)."""
    meta, loc, data = state["_meta"], state["_loc"], state["_bytes"]
    fields, other, order = state["_fields"], state["_other"], state["_order"]
    rows = list(order) if order is not None else np.flatnonzero(meta >= 0).tolist()
    out = []
    for row in rows:
        m = int(meta[row])
        kind = m & 7
        if kind == 0:
            where = int(loc[row])
            start = where & ((1 << 48) - 1)
            value = bytes(data[start : start + (where >> 48)]).decode("utf-8", "surrogatepass")
        else:
            value = (None, False, True, other.get(row))[kind - 1]
        out.append(((fields[m >> 3], value), row))
    return out


class KeyTable:
    """An insertion- (or recency-) ordered map of ``(field, value)`` keys to row numbers.

    It answers the ``OrderedDict`` methods the embedding table uses (``get``, ``in``,
    item assignment, ``pop``, ``move_to_end``, ``popitem(last=False)``, ``items()`` and
    ``len``) and adds :meth:`find_many` / :meth:`add_many` for whole batches of keys.

    Parameters
    ----------
    track_order
        Keep the order in which keys were last refreshed (:meth:`move_to_end`), for
        least-recently-used eviction. Without it, keys come out in the order of their rows.

    Notes
    -----
    Row numbers are at least 1 (row 0 is the embedding table's padding row) and below
    2^32. Per row, in arrays indexed by row number: an 8-byte fingerprint (``_fp``), a
    2-byte field id and kind (``_meta``: ``field * 16 + kind``, 0 without a key; 4 bytes
    once there are more than 4,096 fields) and a 4-byte word (``_loc``) that holds the value
    itself or where its bytes are. Plus 5.7 to 11.4 bytes of index (4-byte slots, 35% to
    70% full): 20 to 26 bytes per key for values that fit the word, which are

    - 8 lowercase hexadecimal digits (``"68fd1e64"``, the hashed ids of Criteo and Avazu);
    - the field's prefix followed by a decimal number below 2^32, either without leading
      zeros or with as many digits as the field's width (``"u1234"``, ``"id0042"``, ``"17"``):
      a field's prefix and width are those of its first value ending in digits;
    - ``None``, ``True`` and ``False``.

    Other strings are appended to a byte log (their UTF-8 length in LEB128, then the
    bytes; 1 + length bytes for values under 128 bytes) and the word holds their offset
    (8 bytes once the log passes 4 GiB). Other values (numbers, tuples, ...) are kept as
    Python objects in a side dict. Every key comes back exactly (:meth:`items`); the kind
    of each key keeps ``"u7"``, ``"u007"`` and ``7`` apart.

    Per-row arrays grow by doubling into zeroed memory, which the operating system backs
    only once it is written, so unused capacity costs address space, not RSS; the log is
    compacted when removed keys' bytes outweigh the live ones (``max_rows`` eviction).
    Pickles hold the keys, not the index or the caches, which are rebuilt on loading;
    pickles of the first layout (8-byte ``_loc``, 4-byte ``_meta``) load too.

    Examples
    --------
    >>> keys = KeyTable()
    >>> keys[("user", "a")] = 1
    >>> keys.add_many([("user", "b"), ("price", None)], [2, 3])
    >>> keys.get(("user", "b")), keys.get(("user", "zzz"))
    (2, None)
    >>> keys.find_many([("price", None), ("user", "a"), ("user", "c")]).tolist()
    [3, 1, 0]
    >>> list(keys.items())
    [(('user', 'a'), 1), (('user', 'b'), 2), (('price', None), 3)]

    """

    def __init__(self, track_order: bool = False) -> None:
        self.track_order = track_order
        self._version = _LAYOUT
        self._index = np.zeros(1024, dtype=np.uint32)
        self._mask = 1023
        self._n = 0
        # Per row, indexed by row number.
        self._fp = np.zeros(1024, dtype=np.uint64)
        self._loc = np.zeros(1024, dtype=np.uint32)
        self._meta = np.zeros(1024, dtype=np.uint16)
        # A bytearray appends in O(1) and grows with realloc, which moves no bytes for
        # large blocks (mremap), so it never holds two copies of the keys.
        self._bytes = bytearray()
        self._n_bytes = 0
        self._live_bytes = 0
        self._fields: list[Hashable] = []
        self._field_ids: dict[Hashable, int] = {}
        # Per field: (prefix, width) of its numbered values, fixed by the first one.
        self._formats: list[tuple[str, int] | None] = []
        self._other: dict[int, Hashable] = {}
        self._order: collections.OrderedDict[int, None] | None = (
            collections.OrderedDict() if track_order else None
        )
        self._cache: dict[Key, int] = {}
        # Keys found absent, with their fingerprints: progressive validation looks a new key
        # up to predict, again to learn, and then inserts it. An entry holds until that very
        # key is inserted, whatever else changes.
        self._absent: dict[Key, int] = {}

    # ------------------------------------------------------------ pickling

    def __getstate__(self) -> dict:
        # The caches and the index are functions of the rest: leaving them (and the unused
        # capacity) out keeps pickles small, and identical before and after a prediction,
        # which fills the caches.
        state = self.__dict__.copy()
        used = np.flatnonzero(self._meta)
        top = int(used[-1]) + 1 if len(used) else 1
        for name in ("_fp", "_loc", "_meta"):
            state[name] = state[name][:top].copy()
        state["_index"] = None
        state["_cache"] = {}
        state["_absent"] = {}
        return state

    def __setstate__(self, state: dict) -> None:
        if state.get("_version") != _LAYOUT:
            fresh = KeyTable.from_items(_v1_items(state), track_order=state["track_order"])
            self.__dict__.update(fresh.__dict__)
            return
        self.__dict__.update(state)
        self._cache = {}
        self._absent = {}
        n = 1024
        while n < len(self._fp):
            n *= 2
        self._fp, self._loc, self._meta = (_grown(a, n) for a in (self._fp, self._loc, self._meta))
        self._bytes = bytearray(self._bytes)
        size = 1024
        while self._n > _MAX_LOAD * size:
            size *= 2
        self._index = np.zeros(size, dtype=np.uint32)
        self._mask = size - 1
        self._place(np.flatnonzero(self._meta))

    # ------------------------------------------------------------ index

    def _slot(self, fp: int) -> int:
        """The index slot holding ``fp``, or the empty slot where it would go."""
        index, fps, mask = self._index.item, self._fp.item, self._mask
        i = fp & mask
        while True:
            row = index(i)
            if row == 0 or fps(row) == fp:
                return i
            i = (i + 1) & mask

    def _place(self, rows: np.ndarray) -> None:
        """Put ``rows`` (whose fingerprints are in ``_fp`` and not yet indexed) into the index."""
        # In chunks: rebuilding the index of 10^7 keys at once would hold about 40 bytes of
        # temporaries per key (positions, pending lists, np.unique), a peak of its own.
        for lo in range(0, len(rows), _PLACE_CHUNK):
            self._place_chunk(rows[lo : lo + _PLACE_CHUNK])

    def _place_chunk(self, rows: np.ndarray) -> None:
        index, mask = self._index, self._mask
        rows = rows.astype(np.uint32, copy=False)
        pos = (self._fp[rows] & np.uint64(mask)).astype(np.int64)
        pending = np.arange(len(rows))
        while len(pending):
            p = pos[pending]
            free = index[p] == 0
            # Among the keys probing the same free slot, the first takes it.
            slots, first = np.unique(p[free], return_index=True)
            winners = pending[free][first]
            index[slots] = rows[winners]
            placed = np.zeros(len(rows), dtype=bool)
            placed[winners] = True
            pending = pending[~placed[pending]]
            pos[pending] = (pos[pending] + 1) & mask

    def _reserve(self, n_more: int) -> None:
        """Double the index until ``n_more`` more keys keep it under the load limit."""
        need = self._n + n_more
        size = len(self._index)
        if need <= _MAX_LOAD * size:
            return
        while need > _MAX_LOAD * size:
            size *= 2
        self._index = np.zeros(size, dtype=np.uint32)
        self._mask = size - 1
        self._place(np.flatnonzero(self._meta))

    def _fit_rows(self, top: int) -> None:
        """Make room for row numbers up to ``top``."""
        n = len(self._fp)
        if top < n:
            return
        while n <= top:
            n *= 2
        if n >= 2**32:
            raise OverflowError("a KeyTable holds row numbers below 2**32")
        self._fp, self._loc, self._meta = (_grown(a, n) for a in (self._fp, self._loc, self._meta))

    def _unindex(self, fp: int) -> None:
        """Remove ``fp`` from the index by backward shifting (no tombstones)."""
        index, fps, mask = self._index, self._fp, self._mask
        i = self._slot(fp)
        index[i] = 0
        j = i
        while True:
            j = (j + 1) & mask
            row = int(index[j])
            if row == 0:
                return
            home = int(fps[row]) & mask
            # The key at j may move back to i unless its home lies cyclically in (i, j].
            if (i < j and not i < home <= j) or (j < i and j < home <= i):
                index[i] = row
                index[j] = 0
                i = j

    # ------------------------------------------------------------ keys

    def _field_id(self, field: Hashable) -> int:
        fid = self._field_ids.get(field)
        if fid is None:
            fid = self._field_ids[field] = len(self._fields)
            self._fields.append(field)
            self._formats.append(None)
            if fid >= _FIELDS_U16 and self._meta.dtype == np.uint16:
                self._meta = self._meta.astype(np.uint32)
        return fid

    def _encode(self, key: Key, row: int) -> tuple[int, int, bytes | None]:
        """``_meta`` and ``_loc`` of a key, and its log entry if its value does not fit
        ``_loc`` (keeping values other than strings, booleans and None aside)."""
        field, value = key
        fid = self._field_ids.get(field)
        if fid is None:
            fid = self._field_id(field)
        base = fid << _KIND_BITS
        if type(value) is str:
            size = len(value)
            # Only lowercase hexadecimal digits: int() also takes upper case, signs, "0x",
            # spaces and underscores, which would not come back as they were.
            if size == 8 and not value.strip(_HEX):
                return base | _HEX8, int(value, 16), None
            head = value.rstrip(_DIGITS)
            width = size - len(head)
            if 0 < width <= 10:
                fmt = self._formats[fid]
                if fmt is None:
                    fmt = self._formats[fid] = (head, width)
                if head == fmt[0]:
                    n = int(value[-width:])
                    if n < _U32:
                        if width == fmt[1]:
                            return base | _NUMW, n, None
                        if width == 1 or value[-width] != "0":  # str(n) == the digits
                            return base | _NUM, n, None
            data = value.encode("utf-8", "surrogatepass")
            n = len(data)
            return base | _STR, 0, (bytes((n,)) + data if n < 0x80 else _varint(n) + data)
        if value is None:
            return base | _NONE, 0, None
        if type(value) is bool:
            return base | (_TRUE if value else _FALSE), 0, None
        self._other[row] = value
        return base | _OTHER, 0, None

    def _append(self, blob: bytes) -> int:
        """Append ``blob`` to the log; its offset."""
        start = self._n_bytes
        if start + len(blob) > _LOC32_LIMIT and self._loc.dtype == np.uint32:
            self._loc = self._loc.astype(np.uint64)
        self._bytes += blob
        self._n_bytes = len(self._bytes)
        self._live_bytes += len(blob)
        return start

    def _store(self, rows: list[int], metas: list[int], locs: list[int], entries: list[bytes | None]) -> None:
        blobs = []
        offset = self._n_bytes
        for i, e in enumerate(entries):
            if e is not None:
                locs[i] = offset
                offset += len(e)
                blobs.append(e)
        if blobs:
            self._append(b"".join(blobs))
        idx = np.asarray(rows, dtype=np.int64)
        self._loc[idx] = locs
        self._meta[idx] = metas

    def _key(self, row: int) -> Key:
        meta = int(self._meta[row])
        fid, kind = meta >> _KIND_BITS, meta & _KIND_MASK
        field = self._fields[fid]
        if kind == _HEX8:
            return (field, f"{self._loc.item(row):08x}")
        if kind == _NUM:
            return (field, self._formats[fid][0] + str(self._loc.item(row)))
        if kind == _NUMW:
            prefix, width = self._formats[fid]
            return (field, f"{prefix}{self._loc.item(row):0{width}d}")
        if kind == _STR:
            data, offset = self._bytes, self._loc.item(row)
            n = data[offset]
            start = offset + 1
            if n >= 0x80:
                start, n = _entry(data, offset)
            return (field, data[start : start + n].decode("utf-8", "surrogatepass"))
        if kind == _NONE:
            return (field, None)
        if kind == _OTHER:
            return (field, self._other[row])
        return (field, kind == _TRUE)

    def _entry_size(self, row: int) -> int:
        """Bytes of the log entry of ``row``, 0 if its value is not in the log."""
        if self._meta.item(row) & _KIND_MASK != _STR:
            return 0
        offset = self._loc.item(row)
        start, n = _entry(self._bytes, offset)
        return start - offset + n

    def _compact(self) -> None:
        """Drop the log entries of removed keys once they outweigh the live ones."""
        live = np.flatnonzero((self._meta & _KIND_MASK) == _STR).tolist()
        old, data = self._bytes, bytearray()
        offsets = []
        for row in live:
            offset = self._loc.item(row)
            start, n = _entry(old, offset)
            offsets.append(len(data))
            data += old[offset : start + n]
        self._bytes, self._n_bytes, self._live_bytes = data, len(data), len(data)
        if live:
            self._loc[np.asarray(live, dtype=np.int64)] = offsets

    # ------------------------------------------------------------ mapping

    def __len__(self) -> int:
        return self._n

    def _find(self, key: Key) -> int:
        """Row of ``key``, 0 if absent (the cache first, then the index)."""
        row = self._cache.get(key)
        if row is not None:
            return row
        absent = self._absent
        if key in absent:
            return 0
        fp = key_fingerprint(*key)
        row = self._index.item(self._slot(fp))
        if row:
            cache = self._cache
            if len(cache) >= CACHE_SIZE:
                cache.clear()
            cache[key] = row
        else:
            if len(absent) >= CACHE_SIZE:
                absent.clear()
            absent[key] = fp
        return row

    def get(self, key: Key, default: int | None = None) -> int | None:
        return self._find(key) or default

    def __contains__(self, key: object) -> bool:
        return type(key) is tuple and len(key) == 2 and self._find(key) != 0

    def __getitem__(self, key: Key) -> int:
        row = self._find(key)
        if not row:
            raise KeyError(key)
        return row

    def __setitem__(self, key: Key, row: int) -> None:
        if self._find(key):
            self.pop(key)
        self.insert(key, row)

    def insert(self, key: Key, row: int) -> None:
        """Add ``key``, which must be absent, with ``row`` (the most recently used)."""
        row = int(row)
        if row < 1:
            raise ValueError("rows of keys must be >= 1 (row 0 is the padding row)")
        fp = self._absent.pop(key, None)
        if fp is None:
            fp = key_fingerprint(*key)
        if row >= len(self._fp):
            self._fit_rows(row)
        if self._n + 1 > _MAX_LOAD * len(self._index):
            self._reserve(1)
        meta, loc, entry = self._encode(key, row)
        if entry is not None:
            loc = self._append(entry)
        self._loc[row] = loc
        self._meta[row] = meta
        self._fp[row] = fp
        self._index[self._slot(fp)] = row
        self._n += 1
        if self._order is not None:
            self._order[row] = None
        cache = self._cache
        if len(cache) >= CACHE_SIZE:
            cache.clear()
        cache[key] = row

    def pop(self, key: Key, *default: int) -> int:
        row = self._find(key)
        if not row:
            if default:
                return default[0]
            raise KeyError(key)
        self._remove_row(row, key)
        return row

    def _remove_row(self, row: int, key: Key) -> None:
        self._unindex(int(self._fp[row]))
        self._cache.pop(key, None)
        self._live_bytes -= self._entry_size(row)
        self._loc[row] = 0
        self._meta[row] = _NO_KEY
        self._other.pop(row, None)
        if self._order is not None:
            self._order.pop(row, None)
        self._n -= 1
        if self._n_bytes > 1 << 16 and self._n_bytes > 2 * self._live_bytes:
            self._compact()

    def move_to_end(self, key: Key) -> None:
        """Mark ``key`` as the most recently used (``track_order`` only)."""
        if self._order is None:
            raise ValueError("this KeyTable does not track order")
        self._order.move_to_end(self[key])

    def touch(self, row: int) -> None:
        """Mark the key of ``row`` as the most recently used (``track_order`` only)."""
        self._order.move_to_end(row)

    def popitem(self, last: bool = True) -> tuple[Key, int]:
        """Remove and return the most (``last``) or least recently used key and its row."""
        if not self._n:
            raise KeyError("popitem(): the table is empty")
        if self._order is not None:
            row = next(reversed(self._order)) if last else next(iter(self._order))
        else:
            used = np.flatnonzero(self._meta)
            row = int(used[-1] if last else used[0])
        key = self._key(row)
        self._remove_row(row, key)
        return key, row

    def rows(self) -> list[int]:
        """Rows in use, in order (recency with ``track_order``, else ascending)."""
        if self._order is not None:
            return list(self._order)
        return np.flatnonzero(self._meta).tolist()

    def items(self) -> Iterator[tuple[Key, int]]:
        rows = self.rows()
        fields, formats, data, other = self._fields, self._formats, self._bytes, self._other
        # In chunks, so that a table of 10^7 keys is not turned into Python ints at once.
        for lo in range(0, len(rows), 1 << 16):
            chunk = rows[lo : lo + (1 << 16)]
            idx = np.asarray(chunk, dtype=np.int64)
            for row, meta, loc in zip(chunk, self._meta[idx].tolist(), self._loc[idx].tolist()):
                fid, kind = meta >> _KIND_BITS, meta & _KIND_MASK
                if kind == _STR:
                    n, start = data[loc], loc + 1
                    if n >= 0x80:
                        start, n = _entry(data, loc)
                    value = data[start : start + n].decode("utf-8", "surrogatepass")
                elif kind == _NUM:
                    value = formats[fid][0] + str(loc)
                elif kind == _HEX8:
                    value = f"{loc:08x}"
                elif kind == _NUMW:
                    prefix, width = formats[fid]
                    value = f"{prefix}{loc:0{width}d}"
                elif kind == _NONE:
                    value = None
                elif kind == _OTHER:
                    value = other[row]
                else:
                    value = kind == _TRUE
                yield (fields[fid], value), row

    def keys(self) -> Iterator[Key]:
        for key, _ in self.items():
            yield key

    def values(self) -> list[int]:
        return self.rows()

    def __iter__(self) -> Iterator[Key]:
        return self.keys()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, KeyTable):
            return list(self.items()) == list(other.items())
        return NotImplemented

    def __repr__(self) -> str:
        return f"KeyTable({self._n:,} keys)"

    # ------------------------------------------------------------ batches

    def find_many(self, keys: Sequence[Key]) -> np.ndarray:
        """Rows of ``keys`` as an ``int64`` array, 0 where a key is absent; changes no order."""
        if not self._n or not len(keys):
            return np.zeros(len(keys), dtype=np.int64)
        cache, absent = self._cache, self._absent
        get = cache.get
        cached = [get(k, 0) for k in keys]
        out = np.array(cached, dtype=np.int64)
        miss = [i for i, r in enumerate(cached) if not r and keys[i] not in absent]
        if not miss:
            return out
        missed = [keys[i] for i in miss]
        fps = fingerprints(missed)
        index, mask = self._index, np.uint64(self._mask)
        pos = fps & mask
        found = np.zeros(len(miss), dtype=np.int64)
        pending = np.arange(len(miss))
        while len(pending):
            rows = index[pos[pending].astype(np.int64)].astype(np.int64)
            occupied = rows != 0
            match = occupied & (self._fp[rows] == fps[pending])
            found[pending[match]] = rows[match]
            pending = pending[occupied & ~match]
            pos[pending] = (pos[pending] + np.uint64(1)) & mask
        out[miss] = found
        rows = found.tolist()
        if len(absent) + len(miss) > CACHE_SIZE:
            absent.clear()
        absent.update((k, fp) for k, fp, r in zip(missed, fps.tolist(), rows) if not r)
        if len(cache) + len(miss) > CACHE_SIZE:
            cache.clear()
        cache.update((k, r) for k, r in zip(missed, rows) if r)
        return out

    def add_many(self, keys: Sequence[Key], rows: Sequence[int] | np.ndarray) -> None:
        """Add keys that are absent and distinct, with their rows (in this order of recency)."""
        if not len(keys):
            return
        rows = [int(r) for r in rows]
        if min(rows) < 1:
            raise ValueError("rows of keys must be >= 1 (row 0 is the padding row)")
        self._fit_rows(max(rows))
        self._reserve(len(keys))
        metas, locs, entries = [], [], []
        encode = self._encode
        for key, row in zip(keys, rows):
            meta, loc, entry = encode(key, row)
            metas.append(meta)
            locs.append(loc)
            entries.append(entry)
        self._store(rows, metas, locs, entries)
        idx = np.asarray(rows, dtype=np.int64)
        absent = self._absent
        known = [absent.pop(k, None) for k in keys] if absent else [None] * len(keys)
        if None in known:
            unknown = [i for i, fp in enumerate(known) if fp is None]
            for i, fp in zip(unknown, fingerprints([keys[i] for i in unknown]).tolist()):
                known[i] = fp
        self._fp[idx] = np.array(known, dtype=np.uint64)
        self._place(idx)
        self._n += len(keys)
        if self._order is not None:
            self._order.update(dict.fromkeys(rows))

    @classmethod
    def from_items(cls, items: Sequence[tuple[Key, int]], track_order: bool = False) -> KeyTable:
        """A table of ``(key, row)`` pairs, in order."""
        table = cls(track_order=track_order)
        items = list(items)
        if items:
            table.add_many([k for k, _ in items], [r for _, r in items])
        return table
