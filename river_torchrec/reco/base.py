"""What every neural ranker shares: events from (user, item, x), feedback, negatives, recommend."""

from __future__ import annotations

import math
import numbers
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from river import reco

from river_torchrec.encoding import parse_features
from river_torchrec.learner import OnlineLearner, binary_label, locked
from river_torchrec.reco.catalogue import Catalogue, check_hashable
from river_torchrec.reco.exploration import Greedy, make_policy, top_k
from river_torchrec.reco.negatives import STRATEGIES, NegativeSampler

__all__ = ["NeuralRanker", "Recommender", "id_value", "USER_FIELD", "ITEM_FIELD"]

#: Field names of the user and item ids in the events the model sees.
USER_FIELD, ITEM_FIELD = "user", "item"

#: ``undeclared_features="auto"``: a key is routed once each side has this many repeated
#: observations (the same item, or the same user, seen again with the key) ...
ROUTE_MIN_REPEATS = 30
#: ... and it is a function of a side when at least this share of that side's repeats
#: carried the value stored before (a little slack for corrected metadata).
ROUTE_AGREEMENT = 0.95
#: A side with this many agreeing repeats decides alone when the other side never repeats.
ROUTE_ALONE = 10 * ROUTE_MIN_REPEATS


def id_value(v: Hashable) -> str:
    """The categorical value of an id: a string as it is, anything else tagged by its type
    (so that user ``5`` is a category, not the number 5, and differs from user ``"5"``)."""
    return v if type(v) is str else f"{type(v).__name__}:{v!r}"


def _as_categories(features: dict) -> dict:
    """Numbers among user or item features as categories (``1997.0`` -> ``"1997"``).

    A number that describes an item or a user (a release year, an age) is one value per
    item or user: as a category it gets an embedding row of its own. As a number it would
    scale one shared row by its (log) value, a near-constant vector about 7.6 times the
    row for years around 2000 that every item carries, whose steps (7.6 times the
    learning rate under Adagrad, which ignores gradient scale) swamp the item's own row.
    Missing values (None, NaN) are left for the caller to handle.
    """
    if not features:
        return features
    out = None
    for key, v in features.items():
        if type(v) is not str and type(v) is not bool and isinstance(v, numbers.Real) and not isinstance(v, np.bool_) and v == v:
            if out is None:
                out = dict(features)
            f = float(v)
            out[key] = str(int(f)) if f.is_integer() and abs(f) < 2**53 else repr(f)
    return features if out is None else out


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 0:
        raise ValueError(f"k must be an int >= 0, got {k!r}")
    return int(k)


class Recommender:
    """``recommend`` over the catalogue, for any ranker with a :class:`Catalogue` in ``_catalogue``.

    A ranker provides ``_catalogue_scores(user, x) -> [N]`` (higher is better) and, for
    Thompson sampling without item vectors, ``_sampled_scores(user, x, rng, scale) -> [N]``
    (rankers with item vectors get the Bayesian last layer of
    :mod:`river_torchrec.reco.exploration`); it may provide a
    faster greedy ``_top_items(user, x, k, seen) -> indices``.
    """

    @property
    def catalogue(self) -> list[Hashable]:
        """The items learned so far, in order of first appearance."""
        return list(self._catalogue.items)

    @locked
    def recommend(
        self,
        user: Hashable,
        k: int = 10,
        x: dict | None = None,
        exclude_seen: bool = True,
        explore: str | Greedy | None = None,
    ) -> list[Hashable]:
        """The ``k`` items to show ``user`` now, best first, from every item learned so far.

        Parameters
        ----------
        user
            The user id (an unknown user gets the model's answer for a new user).
        k
            How many items (fewer when the catalogue holds fewer allowed items).
        x
            Context features (and the user's features, overriding the stored ones).
        exclude_seen
            Leave out the items the user interacted with.
        explore
            ``None`` or ``"greedy"``, ``"epsilon"`` (:class:`~river_torchrec.reco.exploration.EpsilonGreedy`,
            epsilon 0.1), ``"thompson"`` (:class:`~river_torchrec.reco.exploration.ThompsonSampling`)
            or a policy object such as ``UpperConfidenceBound()``
            (:class:`~river_torchrec.reco.exploration.UpperConfidenceBound`; it has no string
            name, so ``"ucb"`` is an error). Exploration draws from the ranker's seeded generator, so a
            ranker built with the same seed and fed the same calls recommends the same lists.

        """
        check_hashable("user", user)
        k = _check_k(k)
        if x is not None and not isinstance(x, dict):
            raise TypeError(f"x must be a dict or None, got {type(x).__name__}")
        policy = make_policy(explore)
        cat = self._catalogue
        n = len(cat)
        if n == 0 or k == 0:
            return []
        seen = cat.seen_indices(user) if exclude_seen else np.zeros(0, dtype=np.int64)
        if type(policy) is Greedy:
            idx = self._top_items(user, x, k, seen)
        else:
            allowed = None
            if len(seen):
                allowed = np.ones(n, dtype=bool)
                allowed[seen] = False
            scores = policy.scores(self, user, x, self._explore_rng)
            idx = policy.pick(scores, k, allowed, self._explore_rng)
        items = cat.items
        return [items[i] for i in idx.tolist()]

    def _top_items(self, user: Hashable, x: dict | None, k: int, seen: np.ndarray) -> np.ndarray:
        scores = np.asarray(self._catalogue_scores(user, x), dtype=np.float64)
        allowed = None
        if len(seen):
            allowed = np.ones(len(scores), dtype=bool)
            allowed[seen] = False
        return top_k(scores, k, allowed)


class _ItemCache:
    """Item-side ``[N, F]`` rows and values (and, for two-tower models, item vectors).

    Derived from the model and the stored item features; rebuilt when needed, never saved
    (a checkpoint or a pickle holds a fresh, empty one).
    """

    def __init__(self) -> None:
        self.ids = np.zeros((0, 0), dtype=np.int64)
        self.vals = np.zeros((0, 0), dtype=np.float32)
        self.ok = np.zeros(0, dtype=bool)
        self.stamp: tuple | None = None
        self.row_item: dict[int, int] = {}
        self.vectors: torch.Tensor | None = None
        self.biases: torch.Tensor | None = None
        self.vec_ok = np.zeros(0, dtype=bool)
        self.index: Any = None

    def __reduce__(self) -> tuple:
        return (_ItemCache, ())

    def __deepcopy__(self, memo: dict) -> _ItemCache:
        return _ItemCache()

    def invalidate(self, indices: Iterable[int] | None = None) -> None:
        if indices is None:
            self.ok[:] = False
            self.vec_ok[:] = False
            return
        for i in indices:
            if i < len(self.ok):
                self.ok[i] = False
            if i < len(self.vec_ok):
                self.vec_ok[i] = False


class NeuralRanker(OnlineLearner, Recommender, reco.base.Ranker):
    """The shared core of :class:`TwoTowerRanker` and :class:`CTRRanker` (not a ranker itself).

    A subclass stores its constructor parameters as attributes (the core's and
    :data:`RANKER_PARAMS`) and calls :meth:`_setup_ranker`. Each interaction becomes a
    feature dict ``{"user": id, **user features, **context, "item": id, **item features}``
    that the core turns into tensors; the latest features of every user and item are kept,
    so ranking and recommending score each candidate with its own features.
    """

    # ------------------------------------------------------------- setup

    def _setup_ranker(self) -> None:
        if self.feedback not in ("implicit", "explicit"):
            raise ValueError(f"feedback must be 'implicit' or 'explicit', got {self.feedback!r}")
        rr = self.rating_range
        if rr is not None:
            if self.feedback != "explicit":
                raise ValueError("rating_range applies to feedback='explicit' only")
            if not (
                isinstance(rr, tuple)
                and len(rr) == 2
                and all(isinstance(r, numbers.Real) and not isinstance(r, bool) and math.isfinite(r) for r in rr)
                and rr[0] < rr[1]
            ):
                raise ValueError(f"rating_range must be a tuple (low, high) of finite numbers with low < high, got {rr!r}")
        n_neg = self.n_negatives
        if isinstance(n_neg, bool) or not isinstance(n_neg, numbers.Integral) or n_neg < 0:
            raise ValueError(f"n_negatives must be an int >= 0, got {n_neg!r}")
        if self.negative_sampling not in STRATEGIES:
            raise ValueError(f"negative_sampling must be one of {list(STRATEGIES)}, got {self.negative_sampling!r}")
        if self.loss not in ("auto", "bce", "bpr"):
            raise ValueError(f"loss must be 'auto', 'bce' or 'bpr', got {self.loss!r}")
        if self.loss == "bpr" and (self.feedback != "implicit" or n_neg < 1):
            raise ValueError("loss='bpr' needs feedback='implicit' and n_negatives >= 1 (it learns from pairs)")
        # "auto": pairs where there are pairs (implicit feedback with sampled negatives), BCE otherwise.
        self._loss = self.loss if self.loss != "auto" else ("bpr" if self.feedback == "implicit" and n_neg >= 1 else "bce")
        for name in ("user_features", "item_features"):
            feats = getattr(self, name) or ()
            if isinstance(feats, str) or not isinstance(feats, Sequence):
                raise TypeError(f"{name} must be a sequence of feature names, got {feats!r}")
            reserved = {USER_FIELD, ITEM_FIELD} & set(feats)
            if reserved:
                raise ValueError(f"{name} must not hold {sorted(reserved)}: those names are the ids' fields")
        if self.side_numeric not in ("category", "value"):
            raise ValueError(f"side_numeric must be 'category' or 'value', got {self.side_numeric!r}")
        if self.undeclared_features not in ("auto", "context"):
            raise ValueError(f"undeclared_features must be 'auto' or 'context', got {self.undeclared_features!r}")
        both = set(self.user_features or ()) & set(self.item_features or ())
        if both:
            raise ValueError(f"{sorted(both, key=repr)} cannot be both user and item features")
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        self._custom_loss = self._loss == "bpr"
        self._setup()
        self._user_set = frozenset(self.user_features or ())
        self._item_set = frozenset(self.item_features or ())
        self._catalogue = Catalogue()
        self._sampler = NegativeSampler(self.negative_sampling)
        self._user_x: dict[Hashable, dict] = {}
        self._item_x: dict[Hashable, dict] = {}
        # undeclared_features="auto": the side learned for each undeclared key ("user",
        # "item" or "context"); for keys not routed yet, [item repeats, item agreements,
        # user repeats, user agreements] and the latest value per item and per user.
        self._routed: dict[str, str] = {}
        self._route_counts: dict[str, list[int]] = {}
        self._pending_item: dict[Hashable, dict] = {}
        self._pending_user: dict[Hashable, dict] = {}
        self._sample_rng = np.random.default_rng(self.seed)
        self._explore_rng = np.random.default_rng(self.seed + 1)
        self._cache = _ItemCache()

    @property
    def is_contextual(self) -> bool:
        return True

    @property
    def _is_stochastic(self) -> bool:
        return True

    def _unit_test_skips(self):
        # river's Ranker skips these: its rankers take ids, not feature dicts.
        return {"check_emerging_features", "check_disappearing_features"}

    # ------------------------------------------------------------- events

    def _label(self, y: Any) -> float:
        """The training label in [0, 1] of a reward ``y``."""
        rr = self.rating_range
        if rr is None:
            return binary_label(y)
        if isinstance(y, (bool, np.bool_)) or not isinstance(y, numbers.Real):
            raise ValueError(f"rating must be a number in {list(rr)}, got {y!r} ({type(y).__name__})")
        f = float(y)
        if not rr[0] <= f <= rr[1]:
            raise ValueError(f"rating must be a number in {list(rr)}, got {y!r}")
        return (f - rr[0]) / (rr[1] - rr[0])

    def _split(self, user: Hashable, item: Hashable, x: dict | None) -> tuple[dict, dict, dict]:
        """User features, item features and context of ``x``, validated (nothing is stored).

        Keys whose side is not known yet (``undeclared_features="auto"``) are left out.
        """
        if x is None:
            return {}, {}, {}
        if not isinstance(x, dict):
            raise TypeError(f"x must be a dict or None, got {type(x).__name__}")
        parse_features(x, self._log_numeric, self._nan_missing)  # raises, naming the field, before anything changes
        return self._partition(user, item, x)[:3]

    def _partition(self, user: Hashable, item: Hashable, x: dict) -> tuple[dict, dict, dict, dict]:
        """``x`` as user features, item features, context and keys of unknown side."""
        ux, ix, ctx, pending = {}, {}, {}, {}
        us, its, routed = self._user_set, self._item_set, self._routed
        auto = self.undeclared_features == "auto"
        for key, v in x.items():
            if key == USER_FIELD or key == ITEM_FIELD:
                own = user if key == USER_FIELD else item
                if v != own:
                    raise ValueError(f"x[{key!r}] is {v!r} but the {key} is {own!r}; the ids are passed as arguments")
                continue
            if key in us:
                ux[key] = v
            elif key in its:
                ix[key] = v
            elif not auto or routed.get(key) == "context":
                ctx[key] = v
            else:
                pending[key] = v
        if self.side_numeric == "category":
            ux, ix = _as_categories(ux), _as_categories(ix)
        return ux, ix, ctx, pending

    def _observe_sides(self, user: Hashable, item: Hashable, pending: dict) -> None:
        """Count, for keys of unknown side, whether their value repeats with the item or the user.

        A key is an item attribute when the same item keeps coming with the value it came
        with before while the same user does not (and the reverse for a user attribute);
        a key that repeats with neither (or, constant, with both) is context. Until then
        the key is kept aside per item and per user, and given to neither tower: learning
        from the chosen item's genre as context and ranking without it is the skew this
        avoids.
        """
        for key, v in pending.items():
            if v is None or v != v:  # missing
                continue
            counts = self._route_counts.setdefault(key, [0, 0, 0, 0])
            for store, owner, at in ((self._pending_item, item, 0), (self._pending_user, user, 2)):
                kept = store.setdefault(owner, {})
                if key in kept:
                    counts[at] += 1
                    counts[at + 1] += kept[key] == v
                kept[key] = v
            side = self._route_side(counts)
            if side is not None:
                self._route(key, side)

    @staticmethod
    def _route_side(counts: list[int]) -> str | None:
        """The side of a key from its repeat counts, or None while the evidence is short."""
        n_item, a_item, n_user, a_user = counts
        m = ROUTE_MIN_REPEATS
        of_item = n_item >= m and a_item >= ROUTE_AGREEMENT * n_item
        of_user = n_user >= m and a_user >= ROUTE_AGREEMENT * n_user
        if of_item and of_user:
            return "context"  # constant (or the stream cannot tell): a context bias, stored nowhere
        if of_item and (n_user >= m or n_item >= ROUTE_ALONE):
            return "item"
        if of_user and (n_item >= m or n_user >= ROUTE_ALONE):
            return "user"
        if n_item >= m and n_user >= m and not (of_item or of_user):
            return "context"
        return None

    def _route(self, key: str, side: str) -> None:
        """Give ``key`` its side for good, moving the values kept aside to the side's store."""
        self._routed[key] = side
        self._route_counts.pop(key, None)
        for store, own, target in ((self._pending_item, "item", self._item_x), (self._pending_user, "user", self._user_x)):
            for owner in list(store):
                kept = store[owner]
                v = kept.pop(key, None)
                if side == own and v is not None:
                    kept_v = {key: v}
                    if self.side_numeric == "category":
                        kept_v = _as_categories(kept_v)
                    target[owner] = self._merge(target.get(owner), kept_v)
                if not kept:
                    del store[owner]
        if side == "item":
            self._item_set = self._item_set | {key}
            self._cache.invalidate()  # stored item features changed
        elif side == "user":
            self._user_set = self._user_set | {key}

    @property
    def feature_sides(self) -> dict[str, str]:
        """The side of every key of ``x`` the ranker knows: ``"user"``, ``"item"``, ``"context"``
        or ``"pending"`` (``undeclared_features="auto"``, evidence still short)."""
        sides = {k: "user" for k in self._user_set}
        sides.update((k, "item") for k in self._item_set)
        sides.update((k, "context") for k, s in self._routed.items() if s == "context")
        sides.update((k, "pending") for k in self._route_counts if k not in sides)
        return sides

    @staticmethod
    def _merge(stored: dict | None, new: dict) -> dict:
        if not new:
            return stored or {}
        out = dict(stored or {})
        for k, v in new.items():
            if v is None or v != v:  # None (or a NaN read as missing) forgets the stored value
                out.pop(k, None)
            else:
                out[k] = v
        return out

    def _user_event(self, user: Hashable, ux: dict, ctx: dict) -> dict:
        return {USER_FIELD: id_value(user), **self._merge(self._user_x.get(user), ux), **ctx}

    def _item_event(self, item: Hashable, ix: dict | None = None) -> dict:
        return {ITEM_FIELD: id_value(item), **self._merge(self._item_x.get(item), ix or {})}

    def _register(self, event: dict) -> None:
        """Give the event's new fields their slots, telling the model which side each is on."""
        enc = self._encoder
        new = [f for f in event if f not in enc.slots]
        if new:
            enc.register(new)
            self.model_.add_fields(len(enc))
            self._fields_added()

    def _fields_added(self) -> None:
        """Hook: the encoder gained fields (the two-tower model learns their sides)."""

    def _is_item_field(self, field: Hashable) -> bool:
        return field == ITEM_FIELD or field in self._item_set

    # ------------------------------------------------------------- learning

    @locked
    def learn_one(self, user: Hashable, item: Hashable, y: Any, x: dict | None = None) -> None:
        """Learn that ``user`` gave ``item`` the feedback ``y`` (in context ``x``).

        ``y`` is a bool or 0/1 (clicks, or implicit feedback), or a rating in
        ``rating_range`` with ``feedback="explicit"``. With ``feedback="implicit"`` a positive
        also learns ``n_negatives`` sampled items the user never interacted with as negatives;
        a 0/False is learned as an observed negative (not with ``loss="bpr"``, which learns
        from pairs only: the item is then only marked as seen).
        """
        check_hashable("user", user)
        check_hashable("item", item)
        label = self._label(y)
        ux, ix, ctx = self._split(user, item, x)
        # Everything is validated: from here on the ranker changes.
        if x and self.undeclared_features == "auto":
            pending = self._partition(user, item, x)[3]
            if pending:
                self._observe_sides(user, item, pending)
                ux, ix, ctx, _ = self._partition(user, item, x)  # some keys may have just been routed
        if ux:
            self._user_x[user] = self._merge(self._user_x.get(user), ux)
        if ix:
            self._item_x[item] = self._merge(self._item_x.get(item), ix)
        cat = self._catalogue
        i = cat.observe(user, item, label)
        self._cache.invalidate([i])
        user_event = self._user_event(user, {}, ctx)
        event = {**user_event, **self._item_event(item)}
        self._register(event)
        if self.feedback == "explicit" or self.n_negatives == 0:
            self._learn_event(event, label, 1.0)
            self._observe_evidence(user, [i])
            return
        if label < 0.5:
            if self._loss != "bpr":
                self._learn_event(event, 0.0, 1.0)
                self._observe_evidence(user, [i])
            return
        self._sampler.observe(i, self._sample_rng)
        negs = self._sampler.sample(len(cat), cat.seen[user], self.n_negatives, self._sample_rng)
        cat.shown[negs] += 1
        events = [(event, 1.0, 1.0)]
        items = cat.items
        events += [({**user_event, **self._item_event(items[j])}, 0.0, 1.0) for j in negs.tolist()]
        parsed = [(parse_features(e, self._log_numeric, self._nan_missing), t, w) for e, t, w in events]
        if self.batch_size == 1:
            self._flush()
            self._learn_events(parsed)
        else:
            # Whole groups enter the buffer, so a BPR step never splits a positive from its negatives.
            self._buffer.extend(parsed)
            if len(self._buffer) >= self.batch_size:
                self._flush()
        self._observe_evidence(user, [i, *negs.tolist()])

    @locked
    def add_items(self, items: Iterable[Hashable], features: Mapping[Hashable, dict] | None = None) -> None:
        """Put items in the catalogue before any interaction with them (cold start).

        Each item gets its embedding rows (freshly initialised) and its features, so
        :meth:`recommend` can show it and :meth:`rank` scores it by its features; nothing is
        learned. ``features`` maps an item to a dict of its ``item_features``.
        """
        items = list(items)
        for item in items:
            check_hashable("item", item)
        features = dict(features or {})
        for item, fx in features.items():
            if not isinstance(fx, dict):
                raise TypeError(f"features of item {item!r} must be a dict, got {type(fx).__name__}")
            if self.undeclared_features == "auto":
                # A feature given per item is an item feature, unless its side is known otherwise.
                unknown = [k for k in fx if k in self._user_set or self._routed.get(k) == "context" or k in (USER_FIELD, ITEM_FIELD)]
            else:
                unknown = [k for k in fx if k not in self._item_set]
            if unknown:
                raise ValueError(f"features of item {item!r} hold {unknown!r}, which are not item features")
            parse_features(fx, self._log_numeric, self._nan_missing)
        # Everything is validated: from here on the ranker changes.
        for key in dict.fromkeys(k for fx in features.values() for k in fx):
            if key not in self._item_set:
                self._route(key, "item")
        cat = self._catalogue
        for item in items:
            fx = features.get(item)
            if fx:
                if self.side_numeric == "category":
                    fx = _as_categories(fx)
                self._item_x[item] = self._merge(self._item_x.get(item), fx)
        for start in range(0, len(items), 65_536):
            part = items[start : start + 65_536]
            events = [self._item_event(item) for item in part]
            fields = {f for e in events for f in e}
            self._register(dict.fromkeys(sorted(fields, key=repr)))
            self._tensors([parse_features(e, self._log_numeric, self._nan_missing) for e in events], learn=True)
            self._cache.invalidate([cat.add(item) for item in part])

    @locked
    def flush(self) -> None:
        """Take a step on the events buffered with ``batch_size > 1`` (no-op when empty)."""
        self._flush()

    def _observe_evidence(self, user: Hashable, indices: list[int]) -> None:
        """Hook: the user's events about these catalogue items were learned (posteriors)."""

    def _objective(self, logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``loss="bce"``: the core's BCE. ``loss="bpr"``: ``-log sigmoid(s_pos - s_neg)`` for
        each negative and the positive before it."""
        if not self._custom_loss:
            return super()._objective(logits, y, w)
        pos = y > 0.5
        group = torch.cumsum(pos.long(), 0) - 1
        neg = ~pos & (group >= 0)
        pos_logits = logits[pos]
        pairs = -F.logsigmoid(pos_logits[group[neg]] - logits[neg]) * w[neg]
        n_pairs = max(int(neg.sum()), 1)
        losses = torch.zeros_like(logits)
        losses = losses.masked_scatter(neg, pairs) if bool(neg.any()) else losses
        # A positive's loss (for a drift-aware scheduler) is the mean of its pairs.
        per_group = torch.zeros(len(pos_logits), dtype=logits.dtype, device=logits.device)
        counts = torch.zeros_like(per_group)
        if bool(neg.any()):
            per_group = per_group.index_add(0, group[neg], pairs)
            counts = counts.index_add(0, group[neg], torch.ones_like(pairs))
        losses = losses.masked_scatter(pos, per_group / counts.clamp(min=1)) if bool(pos.any()) else losses
        return losses, pairs.sum() / n_pairs

    def _objective_grad(self, logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`_objective` of ``loss="bpr"`` and its gradient in the logits, in closed form.

        With ``d = s_pos - s_neg`` and ``P`` pairs, ``d(-log sigmoid d) / d s_neg = sigmoid(-d)``:
        each negative gets ``w sigmoid(s_neg - s_pos) / P`` and its positive minus the sum
        of those (a one-event step pays no autograd graph).
        """
        pos = y > 0.5
        group = torch.cumsum(pos.long(), 0) - 1
        neg = ~pos & (group >= 0)
        n_pos = int(pos.sum())
        losses = torch.zeros_like(logits)
        d_logits = torch.zeros_like(logits)
        if not bool(neg.any()):
            return losses, logits.new_zeros(()), d_logits
        pos_idx = torch.nonzero(pos).squeeze(1)
        g = group[neg]
        diff = logits[pos_idx[g]] - logits[neg]
        wn = w[neg]
        pairs = -F.logsigmoid(diff) * wn
        n_pairs = int(neg.sum())
        d_neg = torch.sigmoid(-diff) * wn / n_pairs
        d_logits[neg] = d_neg
        d_logits.index_add_(0, pos_idx, -torch.zeros(n_pos, dtype=logits.dtype, device=logits.device).index_add_(0, g, d_neg))
        losses[neg] = pairs
        per_group = torch.zeros(n_pos, dtype=logits.dtype, device=logits.device).index_add_(0, g, pairs)
        counts = torch.zeros(n_pos, dtype=logits.dtype, device=logits.device).index_add_(0, g, torch.ones_like(pairs))
        losses[pos_idx] = per_group / counts.clamp(min=1)
        return losses, pairs.sum() / n_pairs, d_logits

    # ------------------------------------------------------------- prediction

    def _to_reward(self, p: float) -> float:
        rr = self.rating_range
        return p if rr is None else rr[0] + p * (rr[1] - rr[0])

    @locked
    def predict_one(self, user: Hashable, item: Hashable, x: dict | None = None) -> float:
        """The predicted feedback: a rating in ``rating_range`` if set, else P(positive)."""
        check_hashable("user", user)
        check_hashable("item", item)
        ux, ix, ctx = self._split(user, item, x)
        event = {**self._user_event(user, ux, ctx), **self._item_event(item, ix)}
        return self._to_reward(self._predict_event(event))

    @locked
    def rank(self, user: Hashable, items: Iterable[Hashable], x: dict | None = None) -> list[Hashable]:
        """``items`` by decreasing predicted feedback, all scored in one batched forward pass.

        ``x`` holds context and user features; each candidate is scored with its own stored
        item features (item features in ``x`` would be ambiguous across candidates and are
        ignored here; :meth:`predict_one` uses them). Ties keep the order of ``items``.
        """
        check_hashable("user", user)
        items = list(items)
        if not items:
            return []
        for item in items:
            check_hashable("item", item)
        ux, ctx = self._user_context(user, x)
        scores = self._score(user, ux, ctx, items)
        order = np.lexsort((np.arange(len(items)), -scores))
        return [items[i] for i in order.tolist()]

    def _user_tensors(self, user: Hashable, ux: dict, ctx: dict) -> tuple[torch.Tensor, torch.Tensor]:
        parsed = parse_features(self._user_event(user, ux, ctx), self._log_numeric, self._nan_missing)
        return self._tensors([parsed], learn=False)

    def _item_tensors(self, indices: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Item-side ``[n, F]`` rows and values of catalogue items (all when ``indices`` is None)."""
        cache, cat, table = self._cache, self._catalogue, self.model_.embedding
        n, n_fields = len(cat), self.model_.n_fields
        if cache.ids.shape[1] < n_fields or cache.ids.shape[0] < n:
            rows = max(n, 2 * cache.ids.shape[0], 16) if cache.ids.shape[0] < n else cache.ids.shape[0]
            ids = np.zeros((rows, n_fields), dtype=np.int64)
            vals = np.zeros((rows, n_fields), dtype=np.float32)
            old_n, old_f = cache.ids.shape
            ids[:old_n, :old_f] = cache.ids
            vals[:old_n, :old_f] = cache.vals
            cache.ids, cache.vals = ids, vals
            ok = np.zeros(rows, dtype=bool)
            ok[: len(cache.ok)] = cache.ok
            cache.ok = ok
        if table.mode == "dynamic" and (table.min_count > 1 or table.max_rows is not None):
            # Rows of keys can change (admission, LRU reuse): any change of the table redoes all.
            stamp = (table._n_draws, len(table._rows), len(table._oov))
            if stamp != cache.stamp:
                cache.stamp = stamp
                cache.invalidate()
                cache.row_item.clear()
        if indices is None:
            stale = np.flatnonzero(~cache.ok[:n])
        else:
            stale = indices[~cache.ok[indices]]
        if len(stale):
            stale = np.unique(stale)
            items = cat.items
            parsed = [parse_features(self._item_event(items[i]), self._log_numeric, self._nan_missing) for i in stale.tolist()]
            ids, vals = self._tensors(parsed, learn=False)
            ids, vals = ids.cpu().numpy(), vals.cpu().numpy()
            cache.ids[stale, : ids.shape[1]] = ids
            cache.vals[stale, : vals.shape[1]] = vals
            cache.ok[stale] = True
            slot = self._encoder.slots.get(ITEM_FIELD)
            if slot is not None:
                for i, row in zip(stale.tolist(), ids[:, slot].tolist()):
                    cache.row_item[row] = i
        if indices is None:
            return cache.ids[:n, :n_fields], cache.vals[:n, :n_fields]
        return cache.ids[indices, :n_fields], cache.vals[indices, :n_fields]

    def _candidate_tensors(self, items: list[Hashable]) -> tuple[np.ndarray, np.ndarray]:
        """Item-side rows and values of any items (the catalogue's from the cache)."""
        idx = self._catalogue.indices(items)
        known = idx >= 0
        n_fields = self.model_.n_fields
        ids = np.zeros((len(items), n_fields), dtype=np.int64)
        vals = np.zeros((len(items), n_fields), dtype=np.float32)
        if known.any():
            ids[known], vals[known] = self._item_tensors(idx[known])
        if not known.all():
            unknown = np.flatnonzero(~known)
            parsed = [parse_features(self._item_event(items[j]), self._log_numeric, self._nan_missing) for j in unknown.tolist()]
            u_ids, u_vals = self._tensors(parsed, learn=False)
            ids[unknown], vals[unknown] = u_ids.cpu().numpy(), u_vals.cpu().numpy()
        return ids, vals

    def _score(self, user: Hashable, ux: dict, ctx: dict, items: list[Hashable]) -> np.ndarray:
        """Scores (logits or probabilities: any increasing function of them) of ``items``."""
        u_ids, u_vals = self._user_tensors(user, ux, ctx)
        ids, vals = self._candidate_tensors(items)
        # The user's and the items' fields use disjoint slots, whose absent entries are 0.
        ids = torch.from_numpy(ids).to(self._device) + u_ids
        vals = torch.from_numpy(vals).to(self._device) + u_vals
        return self._proba(ids, vals)

    def _user_context(self, user: Hashable, x: dict | None) -> tuple[dict, dict]:
        if x is not None and not isinstance(x, dict):
            raise TypeError(f"x must be a dict or None, got {type(x).__name__}")
        ux, _, ctx = self._split(user, None, {k: v for k, v in x.items() if k != ITEM_FIELD} if x else None)
        return ux, ctx

    def _catalogue_scores(self, user: Hashable, x: dict | None) -> np.ndarray:
        ux, ctx = self._user_context(user, x)
        u_ids, u_vals = self._user_tensors(user, ux, ctx)
        ids, vals = self._item_tensors()
        ids = torch.from_numpy(ids).to(self._device) + u_ids
        vals = torch.from_numpy(vals).to(self._device) + u_vals
        p = np.clip(self._proba(ids, vals), 1e-12, 1 - 1e-12)
        return np.log(p) - np.log1p(-p)

    def _item_bias_noise(self, rng: np.random.Generator, scale: float) -> np.ndarray:
        """A draw of each item's logit offset from its Laplace posterior, ``N(0, 1 / (1 + n / 4))``.

        ``n`` counts the events learned about the item; ``p (1 - p) <= 1/4`` makes the
        precision a lower bound, so the draw errs towards exploring.
        """
        shown = self._catalogue.shown[: len(self._catalogue)]
        return scale * rng.standard_normal(len(shown)) / np.sqrt(1.0 + shown / 4.0)

    def _sampled_scores(self, user: Hashable, x: dict | None, rng: np.random.Generator, scale: float) -> np.ndarray:
        return self._catalogue_scores(user, x) + self._item_bias_noise(rng, scale)
