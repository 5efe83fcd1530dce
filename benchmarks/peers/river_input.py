"""One input for every river and Vowpal Wabbit peer: mixed str/float dicts made numeric.

river's linear models, FM and FFM need numeric features, so a categorical field becomes a
one-hot indicator and a numeric field enters log-scaled, exactly as ``CTRClassifier``'s
default ``numeric="log"`` scales it: ``sign(v) * log1p(|v|)``. Every river peer gets the
same :class:`OneHotLog` output and Vowpal Wabbit gets the same features as text.
"""

from __future__ import annotations

import math
import string
from collections.abc import Hashable

from river import base

__all__ = ["OneHotLog", "VWFormatter", "log_scale"]


def log_scale(v: float) -> float:
    return math.copysign(math.log1p(abs(v)), v)


def _field_name(key: Hashable) -> str:
    # river's FFM takes a feature's field from the text before its first underscore, so
    # underscores inside field names ("user_id", "user_segment") would merge fields.
    return str(key).replace("_", "-")


class OneHotLog(base.Transformer):
    """``{"user_id": "u17", "price": 19.0}`` -> ``{"user-id_u17": 1.0, "price": 3.0}``.

    A ``str`` or ``bool`` value gives the indicator ``"<field>_<value>"`` (the FFM field is
    the part before the underscore), a number gives ``"<field>"`` with its log-scaled value,
    ``None`` gives nothing.

    Examples
    --------
    >>> OneHotLog().transform_one({"user_id": "u1", "price": 0.0, "page": None})
    {'user-id_u1': 1.0, 'price': 0.0}

    """

    def transform_one(self, x: dict) -> dict:
        out = {}
        for key, value in x.items():
            if value is None:
                continue
            field = _field_name(key)
            if isinstance(value, (str, bool)):
                out[f"{field}_{value}"] = 1.0
            else:
                out[field] = log_scale(float(value))
        return out


_NAMESPACES = string.ascii_letters + string.digits
_ESCAPE = str.maketrans({" ": "_", "\t": "_", "|": "!", ":": ";"})


class VWFormatter:
    """Vowpal Wabbit text lines with one single-character namespace per field.

    One namespace per field lets ``-q ::`` cross every pair of fields, as an FM does; VW
    keys interactions on a namespace's first character, hence single characters (62 of
    them, enough for Criteo's 39 fields).

    Examples
    --------
    >>> fmt = VWFormatter()
    >>> fmt.line({"user_id": "u 1", "price": 1.718281828}, True)
    '1 |a u_1 |b v:1'

    """

    def __init__(self) -> None:
        self.namespaces: dict[Hashable, str] = {}

    def _namespace(self, key: Hashable) -> str:
        ns = self.namespaces.get(key)
        if ns is None:
            if len(self.namespaces) >= len(_NAMESPACES):
                raise ValueError(f"more than {len(_NAMESPACES)} fields: no namespace left for {key!r}")
            ns = self.namespaces[key] = _NAMESPACES[len(self.namespaces)]
        return ns

    def line(self, x: dict, y: bool) -> str:
        parts = ["1" if y else "-1"]
        for key, value in x.items():
            if value is None:
                continue
            ns = self._namespace(key)
            if isinstance(value, (str, bool)):
                parts.append(f"|{ns} {str(value).translate(_ESCAPE) or '_'}")
            else:
                parts.append(f"|{ns} v:{log_scale(float(value)):.7g}")
        return " ".join(parts)
