"""A stable 64-bit hash for (field, value) pairs.

Python's built-in ``hash`` of a ``str`` is salted per process (PYTHONHASHSEED), so a
model that addressed rows with it would see a different table after every restart.
BLAKE2b is in the standard library, fast for short keys, and identical everywhere.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable

__all__ = ["stable_hash64"]


def _key_bytes(field: Hashable, value: Hashable) -> bytes:
    # The type tag keeps the string "True" and the boolean True apart, and the
    # unit separator keeps ("ab", "c") apart from ("a", "bc").
    return f"{field}\x1f{type(value).__name__}\x1f{value}".encode("utf-8", "surrogatepass")


def stable_hash64(field: Hashable, value: Hashable) -> int:
    """Return an unsigned 64-bit hash of ``(field, value)`` that never changes.

    Parameters
    ----------
    field
        The feature name.
    value
        The feature value (``None`` stands for "the numeric row of this field").

    Examples
    --------
    >>> stable_hash64("user_id", "u1") == stable_hash64("user_id", "u1")
    True
    >>> stable_hash64("user_id", "u1") != stable_hash64("item_id", "u1")
    True
    >>> stable_hash64("flag", True) != stable_hash64("flag", "True")
    True

    """
    digest = hashlib.blake2b(_key_bytes(field, value), digest_size=8).digest()
    return int.from_bytes(digest, "little")
