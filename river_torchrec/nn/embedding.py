"""The embedding store behind every CTR model: collisionless and growing, or hashed."""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Hashable, Sequence
from typing import Literal

import numpy as np
import torch
from torch import nn

from river_torchrec.nn.hashing import stable_hash64
from river_torchrec.nn.key_table import KeyTable

__all__ = ["DynamicEmbedding", "PADDING_ROW"]

#: Row 0 is all zeros and never trained: absent fields and unknown values point at it,
#: so they contribute nothing to any model.
PADDING_ROW = 0

Key = tuple[Hashable, Hashable]

#: NumPy types with the layout of each table dtype, for lazily zeroed CPU storage.
_NUMPY_LAYOUT = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.uint16}
#: Rows beyond the initial capacity are drawn in aligned blocks of this many, as handed out.
_DRAW_BLOCK = 4096
#: Capacity at which growth slows from doubling to a quarter more each time.
_GROW_SLOWER = 2**20
#: Plain counters bypass ``nn.Module.__setattr__`` (its checks for parameters, buffers and
#: submodules cost about 1.5 µs a call, on the path of every new key).
_set = object.__setattr__
#: From this many keys on, a learning lookup runs vectorised (when no ``min_count`` or ``max_rows`` applies).
_BATCH_LOOKUP = 64


class DynamicEmbedding(nn.Module):
    """A table of embedding rows addressed by ``(field, value)`` keys.

    Parameters
    ----------
    dim
        Width of a row.
    mode
        ``"dynamic"``: collisionless, as in Monolith. Each new key gets its own row; the
        table grows (see Notes), copying learned rows untouched.
        ``"hash"``: a fixed table of ``n_buckets`` rows; a key's row is a stable 64-bit
        hash of the key modulo ``n_buckets`` (the same in every process and after a restart).
    n_buckets
        Number of rows in ``"hash"`` mode.
    min_count
        ``"dynamic"`` mode: a categorical value shares its field's out-of-vocabulary row
        until it has been seen ``min_count`` times while learning.
    max_rows
        ``"dynamic"`` mode: the most rows the table holds, besides the padding row. When a
        new key needs a row and the table is full, the least recently learned key loses its
        row, which is re-initialised for the newcomer. Out-of-vocabulary rows are pinned.
    init_std
        Standard deviation of the normal initialisation of new rows.
    zero_cols
        The first ``zero_cols`` columns of a new row start at zero: models keep first-order
        (linear) weights there, which conventionally start at zero.
    initial_capacity
        Rows allocated up front in ``"dynamic"`` mode.
    seed
        Seed of the row initialisation; each growth draws from its own derived seed, so
        the table is reproducible and stays picklable.
    dtype
        Storage type of the rows, e.g. ``torch.float16`` to halve memory.

    Notes
    -----
    The vocabulary is a :class:`~river_torchrec.nn.key_table.KeyTable`: 64-bit BLAKE2b
    fingerprints in an open-addressing NumPy index, the keys themselves in flat arrays,
    20 to 26 bytes per key when the value fits a 32-bit word (hashed ids such as
    ``"68fd1e64"``, numbered ones such as ``"u1234"``, ``None``, booleans), plus 1 + its
    UTF-8 length otherwise, instead of about 280 for a ``dict`` of tuples. Ids stay
    collisionless up to fingerprint collisions: two distinct keys share a row with
    probability about ``n**2 / 2**65`` for ``n`` keys (2.7e-8 at 10^6 keys, 2.7% at 10^9).
    Looking a key up is O(1) (hot keys through a bounded dict cache), batches of keys are
    looked up and inserted with vectorised NumPy, and ``max_rows`` recency is an
    ``OrderedDict`` of at most ``max_rows`` row numbers. Looking up for prediction never
    changes the table.

    The table grows into zeroed memory, doubling its capacity up to 2^20 rows and by a
    quarter beyond (updaters keep per-row state for the whole capacity, in zeroed memory
    too), and rows beyond the initial capacity are drawn (initialised) in aligned blocks of
    4,096 as they are handed out, each block from a seed of its own, so a row's initial
    value depends on the seed and the row alone and unused capacity is never written: it
    costs no resident memory. Growing copies the rows into the new capacity, so for a
    moment the old rows (and, at the next step, the updater's old state) are resident
    twice: the peak RSS exceeds the steady one by about one copy of the rows.

    While autograd is on, :meth:`forward` gathers the rows a batch uses into a small leaf
    tensor and records it in ``last_rows``/``last_leaf``: after ``backward`` the updater
    reads one gradient per touched row, and the full table never gets a dense gradient.

    Examples
    --------
    >>> table = DynamicEmbedding(dim=4, seed=1)
    >>> table.lookup([("user", "a"), ("user", "b"), ("user", "a")], learn=True)
    [1, 2, 1]
    >>> table.lookup([("user", "zzz")], learn=False)  # unseen: the padding row
    [0]
    >>> len(table)
    2

    """

    def __init__(
        self,
        dim: int,
        mode: Literal["dynamic", "hash"] = "dynamic",
        *,
        n_buckets: int = 2**20,
        min_count: int = 1,
        max_rows: int | None = None,
        init_std: float = 0.01,
        zero_cols: int = 0,
        initial_capacity: int = 1024,
        seed: int = 42,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if mode not in ("dynamic", "hash"):
            raise ValueError(f"mode must be 'dynamic' or 'hash', got {mode!r}")
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        if max_rows is not None and max_rows < 1:
            raise ValueError(f"max_rows must be >= 1 or None, got {max_rows}")
        if mode == "hash" and n_buckets < 1:
            raise ValueError(f"n_buckets must be >= 1, got {n_buckets}")
        self.dim = dim
        self.mode = mode
        self.n_buckets = n_buckets
        self.min_count = min_count
        self.max_rows = max_rows
        self.init_std = init_std
        self.zero_cols = zero_cols
        self.seed = seed

        self._rows = KeyTable(track_order=max_rows is not None)
        self._oov: dict[Hashable, int] = {}
        self._pending: collections.OrderedDict[Key, int] = collections.OrderedDict()
        self._recycled: list[int] = []
        self._n_draws = 0
        self._next_row = PADDING_ROW + 1
        if mode == "hash":
            capacity = n_buckets + 1
        else:
            capacity = max(2, initial_capacity)
            if max_rows is not None:
                capacity = min(capacity, max_rows + 1)
        weight = torch.empty(capacity, dim, dtype=dtype, device=device)
        self.register_buffer("weight", weight)
        self._init_rows(torch.arange(capacity, device=weight.device))
        self.weight[PADDING_ROW] = 0
        # Rows below this one have been drawn; growth leaves the rest zero until handed out.
        self._init_upto = capacity
        self.last_rows: torch.Tensor | None = None
        self.last_leaf: torch.Tensor | None = None

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        # Pickles from before the KeyTable vocabulary: every allocated row was drawn.
        if "_init_upto" not in self.__dict__:
            self._init_upto = self.capacity
        if isinstance(self._rows, collections.OrderedDict):
            self.set_vocabulary(list(self._rows.items()))

    # ------------------------------------------------------------------ rows

    def __len__(self) -> int:
        """Rows in use, the padding row excluded."""
        if self.mode == "hash":
            return self.n_buckets
        return self._next_row - 1

    @property
    def capacity(self) -> int:
        # Straight from the buffers: ``self.weight`` goes through ``nn.Module.__getattr__``.
        return self._buffers["weight"].shape[0]

    def _draw(self, n: int) -> torch.Tensor:
        # One derived seed per draw keeps the table reproducible without holding a
        # torch.Generator, which cannot be pickled.
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self._n_draws)
        self._n_draws += 1
        fresh = torch.randn(n, self.dim, generator=gen) * self.init_std
        if self.zero_cols:
            fresh[:, : self.zero_cols] = 0
        return fresh

    def _init_rows(self, rows: torch.Tensor) -> None:
        with torch.no_grad():
            fresh = self._draw(len(rows))
            self.weight[rows] = fresh.to(device=self.weight.device, dtype=self.weight.dtype)

    def _zeros(self, n: int) -> torch.Tensor:
        """``n`` zero rows; on CPU in ``calloc``-ed memory, resident only once written."""
        old = self.weight
        layout = _NUMPY_LAYOUT.get(old.dtype)
        if old.device.type != "cpu" or layout is None:
            return torch.zeros(n, self.dim, dtype=old.dtype, device=old.device)
        return torch.from_numpy(np.zeros((n, self.dim), dtype=layout)).view(old.dtype)

    @staticmethod
    def _next_capacity(capacity: int) -> int:
        """Doubling up to 2^20 rows, then a quarter more (in whole blocks): updaters keep
        their per-row state for the whole capacity, so the spare rows stay within 25%."""
        if capacity < _GROW_SLOWER:
            return capacity * 2
        return -(-capacity * 5 // 4 // _DRAW_BLOCK) * _DRAW_BLOCK

    def _grow(self, top: int | None = None) -> None:
        """Grow the capacity (until row ``top`` fits), keeping every row as it is."""
        old = self.capacity
        new = self._next_capacity(old)
        while top is not None and new <= top:
            new = self._next_capacity(new)
        if self.max_rows is not None:
            new = min(new, self.max_rows + 1)
        weight = self._zeros(new)
        weight[:old] = self.weight
        self.weight = weight

    def _block(self, block: int) -> torch.Tensor:
        """The initial values of rows ``[block * _DRAW_BLOCK, (block + 1) * _DRAW_BLOCK)``: a function
        of the seed and the block alone, so a row starts the same however keys were batched."""
        digest = hashlib.blake2b(f"rows\x1f{self.seed}\x1f{block}".encode(), digest_size=8).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)
        fresh = torch.randn(_DRAW_BLOCK, self.dim, generator=gen) * self.init_std
        if self.zero_cols:
            fresh[:, : self.zero_cols] = 0
        return fresh

    def _draw_upto(self, top: int) -> None:
        """Initialise the rows from the first undrawn one to the end of ``top``'s block."""
        # Never below the next fresh row: rows handed out before were drawn already.
        start = max(self._init_upto, self._next_row)
        stop = min(self.capacity, (top // _DRAW_BLOCK + 1) * _DRAW_BLOCK)
        with torch.no_grad():
            for block in range(start // _DRAW_BLOCK, (stop - 1) // _DRAW_BLOCK + 1):
                base = block * _DRAW_BLOCK
                lo, hi = max(start, base), min(stop, base + _DRAW_BLOCK)
                fresh = self._block(block)[lo - base : hi - base]
                self.weight[lo:hi] = fresh.to(device=self.weight.device, dtype=self.weight.dtype)
        _set(self, "_init_upto", stop)

    def _new_row(self) -> int:
        """A free row: the next unused one, or the least recently used one when full."""
        if self.max_rows is not None and self._next_row > self.max_rows:
            if not self._rows:
                return PADDING_ROW
            _, row = self._rows.popitem(last=False)
            self._recycled.append(row)
            return row
        if self._next_row >= self.capacity:
            self._grow()
        row = self._next_row
        if row >= self._init_upto:
            self._draw_upto(row)
        _set(self, "_next_row", row + 1)
        return row

    def _new_rows(self, n: int) -> range:
        """``n`` consecutive fresh rows (no ``max_rows``)."""
        first, top = self._next_row, self._next_row + n - 1
        if top >= self.capacity:
            self._grow(top)
        if top >= self._init_upto:
            self._draw_upto(top)
        _set(self, "_next_row", top + 1)
        return range(first, top + 1)

    def _oov_row(self, field: Hashable) -> int:
        row = self._oov.get(field)
        if row is None:
            row = self._new_row()
            self._oov[field] = row
        return row

    def lookup(
        self, keys: Sequence[Key], learn: bool, counts: Sequence[int] | None = None
    ) -> list[int]:
        """Map ``(field, value)`` keys to row indices.

        Parameters
        ----------
        keys
            ``(field, value)`` pairs; ``value`` is ``None`` for a numeric field's single row.
        learn
            If True, unseen keys get rows (subject to ``min_count`` and ``max_rows``) and the
            recency of seen keys is refreshed. If False, nothing changes: unseen keys map to
            their field's out-of-vocabulary row when it exists, else to the padding row.
        counts
            How many times each key occurs (for ``min_count``), when ``keys`` are the
            distinct keys of a batch; one each by default.

        """
        if self.mode == "hash":
            n = self.n_buckets
            return [1 + stable_hash64(f, v) % n for f, v in keys]

        rows = self._rows
        if not learn:
            oov = self._oov
            if len(keys) >= _BATCH_LOOKUP:
                found = rows.find_many(keys).tolist()
                return [r or oov.get(k[0], PADDING_ROW) for k, r in zip(keys, found)]
            hot, get = rows._cache, rows.get
            return [hot.get(k) or get(k) or oov.get(k[0], PADDING_ROW) for k in keys]
        if len(keys) >= _BATCH_LOOKUP and self.min_count == 1 and self.max_rows is None:
            return self._learn_many(keys)

        out = []
        track_recency = self.max_rows is not None
        # The vocabulary's cache of hot keys first: a dict lookup, no fingerprint.
        hot, get = rows._cache, rows.get
        for i, key in enumerate(keys):
            row = hot.get(key) or get(key)
            if row is not None:
                if track_recency:
                    rows.touch(row)
            elif (
                self.min_count > 1
                and key[1] is not None
                and not self._admit(key, 1 if counts is None else counts[i])
            ):
                row = self._oov_row(key[0])
            else:
                row = self._new_row()
                if row != PADDING_ROW:
                    rows.insert(key, row)
            out.append(row)
        if self._recycled:
            self._init_rows(torch.tensor(self._recycled, device=self.weight.device))
        return out

    def _learn_many(self, keys: Sequence[Key]) -> list[int]:
        """``lookup(keys, learn=True)`` without ``min_count`` and ``max_rows``, vectorised:
        new keys get consecutive rows in the order of their first occurrence."""
        found = self._rows.find_many(keys)
        missing = np.flatnonzero(found == 0)
        if len(missing):
            first: dict[Key, int] = {}
            for i in missing.tolist():
                first.setdefault(keys[i], len(first))
            new_keys = list(first)
            new_rows = np.asarray(self._new_rows(len(new_keys)), dtype=np.int64)
            self._rows.add_many(new_keys, new_rows)
            found[missing] = new_rows[[first[keys[i]] for i in missing.tolist()]]
        return found.tolist()

    def peek(self, keys: Sequence[Key]) -> tuple[list[int], bool]:
        """``lookup(keys, learn=False)`` and whether every key has a row of its own.

        When it does (and ``max_rows`` is None, so that learning does not refresh recency),
        ``lookup(keys, learn=True)`` would return the same rows and change nothing.
        """
        if self.mode == "hash":
            return self.lookup(keys, learn=False), True
        hot, get = self._rows._cache, self._rows.get
        found = [hot.get(k) or get(k) for k in keys]
        if None not in found:
            return found, True
        return self.lookup(keys, learn=False), False

    def _admit(self, key: Key, n: int) -> bool:
        count = self._pending.get(key, 0) + n
        if count >= self.min_count:
            self._pending.pop(key, None)
            return True
        self._pending[key] = count
        self._pending.move_to_end(key)
        # The counts of not-yet-admitted values are bounded like the rows themselves.
        if self.max_rows is not None and len(self._pending) > self.max_rows:
            self._pending.popitem(last=False)
        return False

    def pop_recycled(self) -> list[int]:
        """Rows re-assigned to new keys since the last call; updaters reset their state."""
        recycled, self._recycled = self._recycled, []
        return recycled

    def key_to_row(self) -> dict[Key, int]:
        """A copy of the vocabulary (``"dynamic"`` mode), in recency order with ``max_rows``."""
        return dict(self._rows.items())

    def set_vocabulary(self, rows: Sequence[tuple[Key, int]]) -> None:
        """Replace the vocabulary by ``(key, row)`` pairs (in recency order with ``max_rows``),
        as saved by checkpoints."""
        self._rows = KeyTable.from_items(rows, track_order=self.max_rows is not None)

    # --------------------------------------------------------------- forward

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Gather rows: ``[...]`` long ids -> ``[..., dim]`` float rows."""
        if not torch.is_grad_enabled():
            return self.weight[ids].float()
        rows, inverse = torch.unique(ids, return_inverse=True)
        leaf = self.weight[rows].float().requires_grad_()
        self.last_rows, self.last_leaf = rows, leaf
        return leaf[inverse]

    def release(self) -> None:
        """Forget the rows of the last forward pass (keeps pickles small and clean)."""
        self.last_rows = self.last_leaf = None

    def extra_repr(self) -> str:
        extra = f", n_buckets={self.n_buckets}" if self.mode == "hash" else f", rows={len(self)}"
        return f"dim={self.dim}, mode={self.mode!r}{extra}"
