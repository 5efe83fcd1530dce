"""The items a ranker has seen, who interacted with what, and how popular each item is (no torch)."""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np

__all__ = ["Catalogue", "check_hashable"]


def check_hashable(name: str, value: object) -> None:
    """A clear ``TypeError`` for an unhashable user or item id."""
    try:
        hash(value)
    except TypeError:
        raise TypeError(f"{name} must be hashable, got {type(value).__name__} ({value!r:.50})") from None


class Catalogue:
    """Items by first appearance, per-user interaction sets and per-item counts.

    Items get dense indices ``0, 1, 2, ...`` in the order they are first learned, so
    per-item arrays (counts here, cached vectors in the rankers) are plain NumPy arrays.

    Attributes
    ----------
    items
        The item ids, by index.
    index
        Item id -> index.
    seen
        User id -> set of indices of the items the user interacted with (any label).
    positives
        Per-item sum of positive feedback (popularity).
    shown
        Per-item number of events learned about the item, sampled negatives included
        (the evidence behind its posterior, for Thompson sampling).

    Examples
    --------
    >>> cat = Catalogue()
    >>> cat.observe("ann", "book", 1.0)
    0
    >>> cat.observe("bob", "pen", 1.0), cat.observe("bob", "book", 1.0)
    (1, 0)
    >>> cat.items, cat.popularity().tolist(), sorted(cat.seen["bob"])
    (['book', 'pen'], [2.0, 1.0], [0, 1])

    """

    def __init__(self) -> None:
        self.items: list[Hashable] = []
        self.index: dict[Hashable, int] = {}
        self.seen: dict[Hashable, set[int]] = {}
        self.positives = np.zeros(16)
        self.shown = np.zeros(16)

    def __len__(self) -> int:
        return len(self.items)

    def add(self, item: Hashable) -> int:
        """The index of ``item``, giving it one if it is new."""
        i = self.index.get(item)
        if i is None:
            i = self.index[item] = len(self.items)
            self.items.append(item)
            if i >= len(self.positives):
                self.positives = np.concatenate([self.positives, np.zeros(len(self.positives))])
                self.shown = np.concatenate([self.shown, np.zeros(len(self.shown))])
        return i

    def observe(self, user: Hashable, item: Hashable, positive: float) -> int:
        """Record that ``user`` interacted with ``item`` (``positive``: its positive feedback)."""
        i = self.add(item)
        self.seen.setdefault(user, set()).add(i)
        self.positives[i] += positive
        self.shown[i] += 1
        return i

    def popularity(self) -> np.ndarray:
        """Positive feedback per item, by index."""
        return self.positives[: len(self.items)]

    def seen_indices(self, user: Hashable) -> np.ndarray:
        """Indices of the items ``user`` interacted with."""
        s = self.seen.get(user)
        return np.fromiter(s, dtype=np.int64, count=len(s)) if s else np.zeros(0, dtype=np.int64)

    def indices(self, items: list[Hashable]) -> np.ndarray:
        """Index of each item, -1 for items not in the catalogue."""
        get = self.index.get
        return np.array([get(i, -1) for i in items], dtype=np.int64)
