"""Split a stream of events between workers by key, the same way in every process."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Any

from river_torchrec.nn.hashing import stable_hash64

__all__ = ["shard", "owner"]

Key = str | Callable[[dict], Hashable]

# The field name used in the hash when the key is a callable: any constant works, as long as
# it is the same in every process.
_CALLABLE_FIELD = "__shard_key__"


def owner(value: Hashable, world_size: int, field: str = _CALLABLE_FIELD) -> int:
    """The worker that owns the events whose key is ``value``.

    It is :func:`~river_torchrec.nn.stable_hash64` of ``(field, value)`` modulo
    ``world_size``: the same in every process, on every machine and after a restart, unlike
    Python's salted ``hash``.

    Examples
    --------
    >>> owner("u17", 4, "user_id")
    2
    >>> owner("u17", 4, "user_id") == owner("u17", 4, "user_id")
    True

    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    return stable_hash64(field, value) % world_size


def shard(
    stream: Iterable[tuple[dict, Any]],
    rank: int,
    world_size: int,
    key: Key | None = "user_id",
) -> Iterator[tuple[dict, Any]]:
    """The events of ``stream`` that belong to worker ``rank`` of ``world_size``.

    Every worker iterates over the whole stream and keeps its own share, so the shards are
    disjoint, cover the stream, keep its order, and depend only on the events, not on
    timing. Each worker therefore reads (or generates) the full stream: for very large
    files, split them once by the same rule and give each worker its part.

    Parameters
    ----------
    stream
        An iterable of ``(x, y)`` pairs, e.g. a river dataset.
    rank
        This worker's index, in ``[0, world_size)``.
    world_size
        The number of workers.
    key
        A field name (e.g. ``"user_id"``): an event goes to
        ``stable_hash64(key, x[key]) % world_size``, so all events of one user are learned
        by one worker, which keeps that user's embedding rows local to it between
        synchronisations. A callable ``x -> value`` is hashed likewise. Events whose key
        is absent or ``None`` go round-robin: the ``i``-th such event goes to worker
        ``i % world_size``, counting only keyless events. ``None`` shards every event
        round-robin.

    Examples
    --------
    >>> events = [({"user_id": u, "ad": a}, a == "x") for u, a in
    ...           [("u1", "x"), ("u4", "y"), ("u1", "z"), (None, "x"), ("u5", "x"), (None, "y")]]
    >>> [(x["user_id"], x["ad"]) for x, _ in shard(events, rank=0, world_size=2)]
    [('u1', 'x'), ('u1', 'z'), (None, 'x')]
    >>> [(x["user_id"], x["ad"]) for x, _ in shard(events, rank=1, world_size=2)]
    [('u4', 'y'), ('u5', 'x'), (None, 'y')]

    The events of ``u1`` stayed together, and the two keyless events were dealt one to
    each worker.

    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    if key is None:
        get, field = (lambda x: None), _CALLABLE_FIELD
    elif callable(key):
        get, field = key, _CALLABLE_FIELD
    elif isinstance(key, str):
        get, field = (lambda x: x.get(key)), key
    else:
        raise TypeError(f"key must be a field name, a callable or None, got {key!r}")
    n_keyless = 0
    for event in stream:
        value = get(event[0])
        if value is None:
            mine = n_keyless % world_size == rank
            n_keyless += 1
        else:
            mine = stable_hash64(field, value) % world_size == rank
        if mine:
            yield event
