"""The two-tower ranker: user and item vectors, retrieval by one matrix-vector product."""

from __future__ import annotations

import numbers
from collections.abc import Hashable, Sequence

import numpy as np
import torch

from river_torchrec.nn.two_tower import TwoTower
from river_torchrec.optim import Updater
from river_torchrec.optim.schedulers import Scheduler
from river_torchrec.reco.base import ITEM_FIELD, NeuralRanker
from river_torchrec.reco.index import FaissIndex, import_faiss

__all__ = ["TwoTowerRanker"]

_CHUNK = 65_536


class TwoTowerRanker(NeuralRanker):
    """An online two-tower recommender (user tower, item tower, dot product plus biases).

    The user tower sums the embeddings of the user id, the user's features and the context;
    the item tower those of the item id and the item's features (:class:`~river_torchrec.nn.TwoTower`).
    The score is ``b + b_user + b_item + <u, v>``, where the biases are the first-order
    weights of the fields: with uniform negatives the item bias learns the item's
    popularity, and the dot product learns who likes what on top of it.

    Parameters
    ----------
    feedback
        ``"implicit"``: positive-only feedback (views, clicks, purchases, ratings above a
        threshold); each positive is learned with ``n_negatives`` sampled negatives.
        ``"explicit"``: every label is learned as it is (clicks 0/1, or ratings with
        ``rating_range``).
    rating_range
        ``(low, high)`` of explicit ratings: a rating ``r`` is learned as the soft label
        ``(r - low) / (high - low)`` by binary cross-entropy, and :meth:`predict_one`
        returns ``low + p (high - low)``. None: labels are bools or 0/1.
    n_negatives
        Sampled negatives per positive (``feedback="implicit"``); never an item the user
        interacted with.
    negative_sampling
        ``"uniform"`` over the catalogue or ``"popularity"`` (proportional to positives).
    loss
        ``"bpr"``: Bayesian personalised ranking, ``-log sigmoid(s_pos - s_neg)`` per
        (positive, negative) pair (needs ``feedback="implicit"``). ``"bce"``: binary
        cross-entropy of the positive and of each negative, mean over the group. ``"auto"``
        (the default): BPR with ``feedback="implicit"`` and sampled negatives, BCE otherwise.
    user_features
        Keys of ``x`` that describe the user (e.g. age, occupation): remembered per user
        (the latest value of each) and fed to the user tower on every later call.
    item_features
        Keys of ``x`` that describe the item (e.g. genres, year): remembered per item, so
        :meth:`rank` and :meth:`recommend` score each candidate with its own features.
    undeclared_features
        What becomes of the other keys of ``x``. ``"auto"`` (the default): each key's side is
        learned from the stream. While a key's value keeps repeating with the same item
        (at least 95% of the times an item comes back, over 30 such returns) and not with
        the same user, it is an item feature; the reverse makes it a user feature; a key
        that repeats with neither (or, constant, with both) is context. Until its side is
        known a key is kept aside per item and per user and given to neither tower; once
        known, the values kept aside become the items' (or users') stored features, so
        every candidate is scored with its own. This removes the train/serve skew of
        taking the chosen item's genre for context: learned with it, ranked without it.
        :attr:`feature_sides` shows the sides. ``"context"``: every undeclared key is
        context, used by the call that passes it, never stored.
    side_numeric
        ``"category"`` (the default): a number among the user or item features (a release
        year, an age) is stored as a category of its own (``1997.0`` -> ``"1997"``), with an
        embedding row per value. ``"value"``: the core's numeric encoding, one row scaled
        by the (log) number, which for years near 2000 is a vector about 7.6 times a row
        that every item carries and that moves 7.6 times faster than the ids' rows.
    side_weight
        Weight of each side feature's embedding in its tower's sum, next to the id's
        (weight 1): below 1, the user's and the item's own rows dominate their vectors
        and the shared feature rows, which every event of a whole segment moves, count less.
    embedding_dim
        Width of the user and item vectors.
    hidden_units
        Hidden layers of each tower's residual MLP; ``()`` (the default) is a linear tower.
        Towers make every step move every item vector, so the cached item matrix is then
        recomputed in full after each step (``O(N)`` per :meth:`recommend` that follows one).
    init_std
        Standard deviation of new embedding rows.
    index
        ``"exact"``: :meth:`recommend` scores every item with one matrix-vector product over
        the cached item vectors (the reference). ``"faiss"``: an IVF inner-product index
        (:class:`~river_torchrec.reco.index.FaissIndex`, needs the ``faiss`` extra) for
        catalogues of 20,000 items or more, kept in sync as vectors move.
    nprobe
        Inverted lists the faiss index scans per query.
    embeddings, n_buckets, min_count, max_rows, optimizer, lr, scheduler, batch_size, device, seed, model_params, numeric, embedding_dtype, clip_numeric, missing
        As for :class:`~river_torchrec.CTRClassifier`.

    Notes
    -----
    **Defaults** (64 dimensions, Adagrad at lr 0.15, rows drawn at std 0.01, 8 uniform
    negatives per positive) won a sweep of learning rate, optimizer, width, number and kind
    of negatives on the first 20,000 positives (rating >= 4) of MovieLens-100K in time order,
    by full-catalogue HitRate@10 with seen items excluded. The loss, the routing of ``x`` and
    the side-feature handling were then chosen on the first 20,000 events of MovieLens-100K
    and of ``SyntheticInteractions`` fed as ``benchmarks/bench_reco.py`` feeds them (``x``
    undeclared): BPR beat BCE on MovieLens (HitRate@10 1.19x most-popular against 0.74x at
    ``side_weight=0.3``); numbers as categories beat numbers as values (1.01x against 0.90x
    with BPR and weight 1); and a side weight of 0.1 or 0.3 beat 1 on both streams
    (MovieLens 1.19x / 1.18x / 1.01x, synthetic 1.19x at 0.3 against 1.10x at 1). A
    ``DriftAwareLR(boost=1)`` scheduler, which resets Adagrad's sums on an alarm, hurt on
    both (see ``benchmarks/README.md``).

    :meth:`rank` scores all candidates in one batched computation; :meth:`recommend`
    keeps a matrix of item vectors and biases, recomputing only the rows of items whose
    embedding rows moved since the last call. Exploration (``explore=``): epsilon-greedy,
    Thompson sampling or UCB (:class:`~river_torchrec.reco.exploration.UpperConfidenceBound`)
    on a Bayesian last layer over the cached item vectors (see
    :mod:`river_torchrec.reco.exploration`): one ``d x d`` factorisation and one normal
    draw per item per call. Checkpoints (:meth:`save`/:meth:`load`), pickling,
    updaters, schedulers and bad-input handling are the core's, as for ``CTRClassifier``.

    Examples
    --------
    >>> from river_torchrec.reco import TwoTowerRanker
    >>> model = TwoTowerRanker(embedding_dim=8, seed=1)
    >>> for _ in range(30):
    ...     for user, item in [("ann", "jazz"), ("ann", "blues"), ("bob", "rock"), ("bob", "metal")]:
    ...         model.learn_one(user, item, True)
    >>> model.rank("ann", ["rock", "jazz"])
    ['jazz', 'rock']
    >>> sorted(model.recommend("ann", k=2, exclude_seen=False))
    ['blues', 'jazz']
    >>> sorted(model.recommend("ann", k=2))  # she has seen both of hers
    ['metal', 'rock']

    """

    model = TwoTower
    #: Catalogue size from which ``index="faiss"`` answers :meth:`recommend` (below, the exact
    #: scan is as fast); tests lower it on an instance.
    _faiss_min_items = 20_000

    def __init__(
        self,
        feedback: str = "implicit",
        rating_range: tuple[float, float] | None = None,
        n_negatives: int = 8,
        negative_sampling: str = "uniform",
        loss: str = "auto",
        user_features: Sequence[str] | None = None,
        item_features: Sequence[str] | None = None,
        undeclared_features: str = "auto",
        side_numeric: str = "category",
        side_weight: float = 0.1,
        embedding_dim: int = 64,
        hidden_units: Sequence[int] | None = None,
        init_std: float = 0.01,
        index: str = "exact",
        nprobe: int = 32,
        embeddings: str = "dynamic",
        n_buckets: int = 2**18,
        min_count: int = 1,
        max_rows: int | None = None,
        optimizer: str | Updater = "adagrad",
        lr: float | None = 0.15,
        scheduler: Scheduler | None = None,
        batch_size: int = 1,
        device: str = "cpu",
        seed: int = 42,
        model_params: dict | None = None,
        numeric: str = "log",
        embedding_dtype: str = "float32",
        clip_numeric: float | None = None,
        missing: str = "nan-is-missing",
    ) -> None:
        self.feedback = feedback
        self.rating_range = rating_range
        self.n_negatives = n_negatives
        self.negative_sampling = negative_sampling
        self.loss = loss
        self.user_features = user_features
        self.item_features = item_features
        self.undeclared_features = undeclared_features
        self.side_numeric = side_numeric
        self.side_weight = side_weight
        self.embedding_dim = embedding_dim
        self.hidden_units = hidden_units
        self.init_std = init_std
        self.index = index
        self.nprobe = nprobe
        self.embeddings = embeddings
        self.n_buckets = n_buckets
        self.min_count = min_count
        self.max_rows = max_rows
        self.optimizer = optimizer
        self.lr = lr
        self.scheduler = scheduler
        self.batch_size = batch_size
        self.device = device
        self.seed = seed
        self.model_params = model_params
        self.numeric = numeric
        self.embedding_dtype = embedding_dtype
        self.clip_numeric = clip_numeric
        self.missing = missing
        if index not in ("exact", "faiss"):
            raise ValueError(f"index must be 'exact' or 'faiss', got {index!r}")
        if index == "faiss":
            import_faiss()
        if isinstance(side_weight, bool) or not isinstance(side_weight, numbers.Real) or not 0 < side_weight <= 1e6:
            raise ValueError(f"side_weight must be a number > 0, got {side_weight!r}")
        if not init_std > 0:
            raise ValueError(f"init_std must be > 0, got {init_std!r}")
        self._setup_ranker()
        self._evidence: dict[Hashable, dict[int, float]] = {}

    @classmethod
    def _unit_test_params(cls):
        yield {"embedding_dim": 4, "n_negatives": 2}
        yield {"embedding_dim": 4, "loss": "bpr", "hidden_units": (8,)}

    def _model_kwargs(self) -> dict:
        return {"init_std": self.init_std, **(self.model_params or {})}

    # ------------------------------------------------------------ fields

    def _fields_added(self) -> None:
        slots = self._encoder.slots
        self.model_.set_item_fields([s for f, s in slots.items() if self._is_item_field(f)])
        side = self._user_set | self._item_set
        self.model_.set_field_weights({s: self.side_weight for f, s in slots.items() if f in side})

    # ------------------------------------------------------------ item vectors

    def _after_step(self, ids: torch.Tensor) -> None:
        cache = self._cache
        if cache.vectors is None:
            return
        net = self.model_
        if net.has_towers:
            cache.vec_ok[:] = False
            return
        ids_np = ids.cpu().numpy()
        width = ids_np.shape[1]
        id_slot = self._encoder.slots.get(ITEM_FIELD)
        vec_ok, row_item = cache.vec_ok, cache.row_item
        if id_slot is not None and id_slot < width:
            for row in np.unique(ids_np[:, id_slot]).tolist():
                i = row_item.get(row)
                if i is not None and i < len(vec_ok):
                    vec_ok[i] = False
        feats = [s for s in net.item_fields if s != id_slot and s < width]
        if feats:
            moved = np.unique(ids_np[:, feats])
            moved = moved[moved != 0]
            if len(moved):
                n = min(len(self._catalogue), len(vec_ok), cache.ids.shape[0])
                cols = [s for s in feats if s < cache.ids.shape[1]]
                if cols and n:
                    hit = np.isin(cache.ids[:n, cols], moved).any(axis=1)
                    vec_ok[:n][hit] = False

    def _refresh_vectors(self) -> np.ndarray:
        """Recompute the cached vectors of items that moved; return their indices."""
        cache = self._cache
        n = len(self._catalogue)
        ids, vals = self._item_tensors()  # may invalidate rows whose table keys changed
        k = self.embedding_dim
        if cache.vectors is None or cache.vectors.shape[0] < n:
            cap = max(n, 16, 2 * (0 if cache.vectors is None else cache.vectors.shape[0]))
            vectors = torch.zeros(cap, k, device=self._device)
            biases = torch.zeros(cap, device=self._device)
            vec_ok = np.zeros(cap, dtype=bool)
            if cache.vectors is not None:
                m = cache.vectors.shape[0]
                vectors[:m], biases[:m], vec_ok[:m] = cache.vectors, cache.biases, cache.vec_ok[:m]
            cache.vectors, cache.biases, cache.vec_ok = vectors, biases, vec_ok
        cache.vec_ok[:n] &= cache.ok[:n]
        dirty = np.flatnonzero(~cache.vec_ok[:n])
        if len(dirty):
            net = self.model_
            with torch.inference_mode():
                for start in range(0, len(dirty), _CHUNK):
                    part = dirty[start : start + _CHUNK]
                    _, _, v, vb = net.split(
                        torch.from_numpy(ids[part]).to(self._device), torch.from_numpy(vals[part]).to(self._device)
                    )
                    t = torch.from_numpy(part).to(self._device)
                    cache.vectors[t], cache.biases[t] = v, vb
            cache.vec_ok[dirty] = True
        return dirty

    def _user_vector(self, user: Hashable, x: dict | None) -> tuple[torch.Tensor, float]:
        """The user's vector ``[k]`` and the constant part of the logit (global + user-side biases)."""
        ux, ctx = self._user_context(user, x)
        u_ids, u_vals = self._user_tensors(user, ux, ctx)
        with torch.inference_mode():
            u, ub, _, _ = self.model_.split(u_ids, u_vals)
            const = float(self.model_.bias) + float(ub[0])
        return u[0], const

    def item_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """The ``[N, k]`` item vectors and ``[N]`` item biases of the catalogue, by index."""
        with self._lock:
            self._refresh_vectors()
            n = len(self._catalogue)
            return self._cache.vectors[:n].cpu().numpy().copy(), self._cache.biases[:n].cpu().numpy().copy()

    def _score(self, user: Hashable, ux: dict, ctx: dict, items: list[Hashable]) -> np.ndarray:
        """Logits of ``items``: cached vectors for catalogue items, one split pass for the others."""
        idx = self._catalogue.indices(items)
        known = idx >= 0
        self._refresh_vectors()
        u_ids, u_vals = self._user_tensors(user, ux, ctx)
        net, cache = self.model_, self._cache
        with torch.inference_mode():
            u, ub, _, _ = net.split(u_ids, u_vals)
            u, const = u[0], net.bias + ub[0]
            out = torch.empty(len(items), dtype=torch.float32, device=self._device)
            if known.any():
                t = torch.from_numpy(idx[known]).to(self._device)
                out[torch.from_numpy(np.flatnonzero(known)).to(self._device)] = torch.mv(cache.vectors[t], u) + cache.biases[t]
            if not known.all():
                unknown = np.flatnonzero(~known)
                ids, vals = self._candidate_tensors([items[j] for j in unknown.tolist()])
                _, _, v, vb = net.split(torch.from_numpy(ids).to(self._device), torch.from_numpy(vals).to(self._device))
                out[torch.from_numpy(unknown).to(self._device)] = v @ u + vb
            out += const
        return out.double().cpu().numpy()

    def _catalogue_scores(self, user: Hashable, x: dict | None) -> np.ndarray:
        self._refresh_vectors()
        u, const = self._user_vector(user, x)
        n = len(self._catalogue)
        cache = self._cache
        with torch.inference_mode():
            s = torch.mv(cache.vectors[:n], u) + cache.biases[:n] + const
        return s.double().cpu().numpy()

    def _top_items(self, user: Hashable, x: dict | None, k: int, seen: np.ndarray) -> np.ndarray:
        dirty = self._refresh_vectors()
        u, _ = self._user_vector(user, x)
        n = len(self._catalogue)
        cache = self._cache
        if self.index == "faiss" and n >= self._faiss_min_items:
            if cache.index is None:
                cache.index = FaissIndex(nprobe=self.nprobe, min_items=self._faiss_min_items, seed=self.seed)
                dirty = np.arange(n)
            vectors = cache.vectors[:n].cpu().numpy()
            cache.index.sync(vectors, cache.biases[:n].cpu().numpy(), dirty)
            found = cache.index.search(u.cpu().numpy(), k, seen)
            if len(found) == min(k, n - len(seen)):
                return found
        with torch.inference_mode():
            s = torch.mv(cache.vectors[:n], u) + cache.biases[:n]
            if len(seen):
                s[torch.from_numpy(seen).to(s.device)] = -torch.inf
            kk = min(k, n - len(seen))
            if kk <= 0:
                return np.zeros(0, dtype=np.int64)
            _, idx = torch.topk(s, kk)
        return idx.cpu().numpy()

    # ------------------------------------------------------------ posterior

    def _observe_evidence(self, user: Hashable, indices: list[int]) -> None:
        ev = self._evidence.setdefault(user, {})
        for i in indices:
            ev[i] = ev.get(i, 0.0) + 1.0
