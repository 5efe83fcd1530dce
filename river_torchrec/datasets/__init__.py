"""River-style click-stream datasets: a synthetic drifting stream and readers for public logs.

Every dataset is an iterable of `(x, y)` pairs, `x` a dict of `str` (categorical) and
`float` (numeric) features and `y` a `bool` click label, as river's own datasets are. The
file readers never download anything: the public click logs they read may not be
redistributed, so the user supplies the files.

"""

from __future__ import annotations

from .avazu import Avazu
from .criteo import Criteo
from .interactions import SyntheticInteractions
from .movielens import MovieLens100K
from .sparse_ctr import RepeatVisits, SparseCTR
from .synthetic import SyntheticCTR

__all__ = ["Avazu", "Criteo", "MovieLens100K", "RepeatVisits", "SparseCTR", "SyntheticCTR"]
