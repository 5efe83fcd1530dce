"""An approximate maximum-inner-product index over item vectors (faiss), kept in sync as they move."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["FaissIndex", "import_faiss"]


def import_faiss() -> Any:
    """The ``faiss`` module, or an ``ImportError`` naming the extra that installs it."""
    try:
        import faiss
    except ImportError:
        raise ImportError(
            "index='faiss' needs the faiss package: pip install 'river-torchrec[faiss]' (or faiss-cpu)"
        ) from None
    return faiss


class FaissIndex:
    """An inverted-file (IVF) index answering the top-k of ``b_i + <u, v_i>``, kept in sync.

    The score of a two-tower model is an inner product of ``[v_i, b_i]`` with ``[u, 1]``.
    Inverted files cluster well under L2 but poorly under inner products, so each row
    ``x`` is stored as ``[x, sqrt(M^2 - |x|^2)]`` (all rows then have norm ``M``, the largest
    norm at training time with a margin) and the query as ``[q, 0]``: the nearest row in L2
    is the largest inner product (Bachrach et al., 2014). Items whose vectors moved are
    removed and re-added (a hash-table direct map makes that ``O(1)`` per item); the
    centroids are re-trained when the catalogue has doubled, when as many updates as items
    have accumulated since the last training, or when a vector outgrows ``M``.

    Parameters
    ----------
    nlist
        Number of inverted lists; ``None``: ``sqrt(n)`` at training time.
    nprobe
        Lists scanned per query (more: higher recall, slower).
    min_items
        Below this many items the exact scan is as fast: :meth:`sync` builds nothing.
    seed
        Seed of the training sample.

    Examples
    --------
    >>> import numpy as np
    >>> import pytest
    >>> faiss = pytest.importorskip("faiss")
    >>> rng = np.random.default_rng(0)
    >>> v, b = rng.standard_normal((2000, 8)).astype("float32"), np.zeros(2000, "float32")
    >>> index = FaissIndex(nlist=16, nprobe=16, min_items=0)
    >>> index.sync(v, b, np.arange(2000))
    >>> u = rng.standard_normal(8).astype("float32")
    >>> index.search(u, 5, np.zeros(0, dtype=np.int64)).tolist() == np.argsort(-(v @ u))[:5].tolist()
    True

    """

    def __init__(self, nlist: int | None = None, nprobe: int = 32, min_items: int = 20_000, seed: int = 0) -> None:
        self.faiss = import_faiss()
        self.nlist = nlist
        self.nprobe = nprobe
        self.min_items = min_items
        self.seed = seed
        self.index: Any = None
        self.max_norm = 0.0
        self.n_trained = 0
        self.n_indexed = 0
        self.n_updates = 0

    def _rows(self, vectors: np.ndarray, biases: np.ndarray) -> np.ndarray:
        x = np.concatenate([vectors, biases[:, None]], axis=1).astype(np.float32)
        sq = np.einsum("ij,ij->i", x, x)
        extra = np.sqrt(np.maximum(self.max_norm**2 - sq, 0.0)).astype(np.float32)
        return np.ascontiguousarray(np.concatenate([x, extra[:, None]], axis=1))

    def _train(self, vectors: np.ndarray, biases: np.ndarray) -> None:
        faiss = self.faiss
        n, d = len(vectors), vectors.shape[1] + 2
        norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors) + biases**2)
        self.max_norm = 1.25 * float(norms.max()) + 1e-6
        rows = self._rows(vectors, biases)
        nlist = self.nlist or max(1, min(int(math.sqrt(n)), n // 39))
        quantizer = faiss.IndexFlatL2(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_L2)
        index.cp.niter = 10
        index.cp.seed = self.seed
        rng = np.random.default_rng(self.seed)
        sample = rows if n <= 64 * nlist else rows[rng.choice(n, 64 * nlist, replace=False)]
        index.train(sample)
        index.set_direct_map_type(faiss.DirectMap.Hashtable)
        index.nprobe = min(self.nprobe, nlist)
        index.add_with_ids(rows, np.arange(n, dtype=np.int64))
        self.index, self.n_trained, self.n_indexed, self.n_updates = index, n, n, 0

    def sync(self, vectors: np.ndarray, biases: np.ndarray, changed: np.ndarray) -> None:
        """Bring the index up to date: ``vectors``/``biases`` of all ``n`` items, ``changed`` the
        indices whose rows moved (or are new) since the last call."""
        n = len(vectors)
        if n < self.min_items:
            return
        changed = np.asarray(changed, dtype=np.int64)
        retrain = self.index is None or n >= 2 * self.n_trained or self.n_updates + len(changed) >= self.n_trained
        if not retrain and len(changed):
            norms = np.sqrt(np.einsum("ij,ij->i", vectors[changed], vectors[changed]) + biases[changed] ** 2)
            retrain = bool(norms.max() > self.max_norm)
        if retrain:
            self._train(vectors, biases)
            return
        if len(changed):
            old = changed[changed < self.n_indexed]
            if len(old):
                self.index.remove_ids(old)
            self.index.add_with_ids(self._rows(vectors[changed], biases[changed]), changed)
            self.n_indexed = max(self.n_indexed, int(changed.max()) + 1)
            self.n_updates += len(changed)

    def search(self, u: np.ndarray, k: int, seen: np.ndarray) -> np.ndarray:
        """The (approximately) ``k`` best items for the user vector ``u``, none of them in ``seen``."""
        query = np.concatenate([u, [1.0, 0.0]]).astype(np.float32)[None, :]
        _, found = self.index.search(query, k + len(seen))
        found = found[0]
        found = found[found >= 0]
        if len(seen):
            found = found[~np.isin(found, seen)]
        return found[:k]
