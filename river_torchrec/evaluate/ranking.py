"""Test-then-learn evaluation of rankers on an interaction stream."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from . import ranking_metrics
from .scorers import make_scorer

__all__ = ["RankingReport", "RankingResult", "evaluate_ranking", "iter_interactions"]

Mode = Literal["full", "sampled"]
Interaction = tuple[Hashable, Hashable, Any, dict | None]

_METRICS = ("hit_rate", "ndcg", "mrr")


def iter_interactions(stream: Iterable[Any]) -> Iterator[Interaction]:
    """Normalise a stream to `(user, item, y, x)` tuples.

    Accepted events: `(user, item, y, x)`, `(user, item, y)` (no context) and dicts with
    keys `"user"`, `"item"`, `"y"` and optionally `"x"`.

    Examples
    --------

    >>> from river_torchrec.evaluate import iter_interactions
    >>> list(iter_interactions([("u1", "i1", True), {"user": "u2", "item": "i1", "y": 1.0}]))
    [('u1', 'i1', True, None), ('u2', 'i1', 1.0, None)]

    """
    for n, event in enumerate(stream):
        if isinstance(event, dict):
            try:
                yield event["user"], event["item"], event["y"], event.get("x")
            except KeyError as e:
                raise ValueError(
                    f"interaction {n}: a dict needs the keys 'user', 'item' and 'y', "
                    f"missing {e.args[0]!r}"
                ) from None
        elif isinstance(event, tuple) and len(event) in (3, 4):
            yield (*event, None) if len(event) == 3 else event  # type: ignore[misc]
        else:
            raise ValueError(
                f"interaction {n}: expected (user, item, y, x), (user, item, y) or a dict "
                f"with keys 'user', 'item', 'y', got {type(event).__name__}"
            )


@dataclass
class RankingResult:
    """What one ranker scored over the stream.

    All metrics derive from `ranks`, the 1-based position of the relevant item in each
    query's ranking (`inf` for a miss), so they are exact, not estimates.

    Attributes
    ----------
    name
        The ranker's name in the report.
    k
        Cut-off of HitRate@k, NDCG@k and the top-k lists behind coverage.
    ranks
        Position of the relevant item, one entry per query.
    steps
        Index, in the stream, of the event behind each query (for plotting).
    n_recommended
        Distinct items that appeared in at least one top-k list.
    catalogue_size
        Items in the catalogue at the end of the stream.
    n_events
        Events learned from.
    seconds
        Time spent in the ranker (ranking plus learning), excluding the evaluation's own
        bookkeeping.

    """

    name: str
    k: int
    ranks: np.ndarray
    steps: np.ndarray
    n_recommended: int
    catalogue_size: int
    n_events: int
    seconds: float

    @property
    def hit_rate(self) -> float:
        """HitRate@k."""
        return ranking_metrics.hit_rate(self.ranks, self.k)

    @property
    def ndcg(self) -> float:
        """NDCG@k."""
        return ranking_metrics.ndcg(self.ranks, self.k)

    @property
    def mrr(self) -> float:
        """Mean reciprocal rank (full ranking)."""
        return ranking_metrics.mrr(self.ranks)

    @property
    def coverage(self) -> float:
        """Fraction of the final catalogue that appeared in any top-k list."""
        return self.n_recommended / self.catalogue_size if self.catalogue_size else 0.0

    @property
    def events_per_second(self) -> float:
        """Events processed per second of ranker time."""
        return self.n_events / self.seconds if self.seconds > 0 else float("inf")

    def rolling(self, metric: str = "hit_rate", window: int = 1_000) -> np.ndarray:
        """Trailing mean of `metric` over the last `window` queries, one value per query.

        The first `window - 1` values average the queries seen so far.

        Examples
        --------

        >>> import numpy as np
        >>> from river_torchrec.evaluate import RankingResult
        >>> r = RankingResult("m", 10, np.array([1, 20, 1, 1.0]), np.arange(4), 1, 2, 4, 1.0)
        >>> r.rolling("hit_rate", window=2).tolist()
        [1.0, 0.5, 0.5, 1.0]

        """
        if window < 1:
            raise ValueError(f"window must be a positive integer, got {window}")
        values = ranking_metrics.per_query(self.ranks, metric, self.k)
        cum = np.concatenate([[0.0], np.cumsum(values)])
        ends = np.arange(1, len(values) + 1)
        starts = np.maximum(0, ends - window)
        return (cum[ends] - cum[starts]) / (ends - starts)


@dataclass
class RankingReport(Mapping[str, RankingResult]):
    """The results of `evaluate_ranking`: a mapping from ranker name to `RankingResult`.

    `str(report)` is a markdown table; `report.plot(path)` draws rolling curves.

    Attributes
    ----------
    mode
        `"full"` (all catalogue items the user has not interacted with) or `"sampled"`.
    k
        The metrics' cut-off.
    n_events
        Events in the stream.
    n_queries
        Positive events that were ranked (the denominator of every metric).
    n_cold
        Queries whose item was new to the catalogue: counted as misses for every ranker.
    n_repeats
        Positives on an item the user had already interacted with, skipped (a recommender
        that excludes seen items cannot serve them); 0 unless `exclude_seen`.
    n_sampled
        Sampled negatives per query in `"sampled"` mode.

    """

    results: dict[str, RankingResult]
    mode: str
    k: int
    n_events: int
    n_queries: int
    n_cold: int
    n_repeats: int
    exclude_seen: bool
    n_sampled: int = 0
    window: int = 1_000
    marks: list[int] = field(default_factory=list)

    def __getitem__(self, name: str) -> RankingResult:
        return self.results[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    @property
    def label(self) -> str:
        """How the candidates were chosen, for table captions."""
        seen = ", seen items excluded" if self.exclude_seen else ""
        if self.mode == "sampled":
            return (
                f"sampled candidates (the true item + {self.n_sampled} random negatives; "
                f"inflates every score compared with full-catalogue ranking){seen}"
            )
        return f"full catalogue (every item seen so far){seen}"

    def to_markdown(self, digits: int = 4) -> str:
        """The results as a markdown table, one row per ranker."""
        k = self.k
        lines = [
            f"| model | HitRate@{k} | NDCG@{k} | MRR | coverage@{k} | events/s |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, r in self.results.items():
            lines.append(
                f"| {name} | {r.hit_rate:.{digits}f} | {r.ndcg:.{digits}f} | "
                f"{r.mrr:.{digits}f} | {r.coverage:.{digits}f} | {r.events_per_second:,.0f} |"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        head = (
            f"{self.label}: {self.n_queries:,} queries over {self.n_events:,} events "
            f"({self.n_cold:,} cold items counted as misses, {self.n_repeats:,} repeats skipped)"
        )
        return head + "\n\n" + self.to_markdown()

    def plot(
        self,
        path: str | None = None,
        metric: str = "hit_rate",
        window: int | None = None,
        ax: Any = None,
    ) -> Any:
        """Plot each ranker's rolling `metric` against the stream position.

        The `marks` (e.g. a taste shift) are drawn as vertical lines. With `path`, the
        figure is saved there. Returns the matplotlib axes.

        """
        import matplotlib

        if ax is None and path is not None:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        window = window or self.window
        if ax is None:
            _, ax = plt.subplots(figsize=(8, 4.5))
        for name, r in self.results.items():
            ax.plot(r.steps, r.rolling(metric, window), label=name, linewidth=1.2)
        for mark in self.marks:
            ax.axvline(mark, color="grey", linestyle="--", linewidth=1)
        pretty = {"hit_rate": f"HitRate@{self.k}", "ndcg": f"NDCG@{self.k}", "mrr": "MRR"}
        ax.set_xlabel("event")
        ax.set_ylabel(f"rolling {pretty.get(metric, metric)} (last {window:,} queries)")
        ax.set_title(self.label if len(self.label) < 70 else self.label[:67] + "...", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        if path is not None:
            ax.figure.tight_layout()
            ax.figure.savefig(path, dpi=120)
            plt.close(ax.figure)
        return ax


class _Catalogue:
    """Items seen so far, as integer indices, and what each user interacted with."""

    def __init__(self) -> None:
        self.items: list[Hashable] = []
        self.index: dict[Hashable, int] = {}
        self.seen: dict[Hashable, list[int]] = {}
        self.seen_sets: dict[Hashable, set[int]] = {}

    def add(self, user: Hashable, item: Hashable) -> int:
        j = self.index.get(item)
        if j is None:
            j = self.index[item] = len(self.items)
            self.items.append(item)
        if j not in self.seen_sets.setdefault(user, set()):
            self.seen_sets[user].add(j)
            self.seen.setdefault(user, []).append(j)
        return j

    def available(self, user: Hashable, exclude_seen: bool) -> np.ndarray:
        n = len(self.items)
        if not exclude_seen or user not in self.seen:
            return np.arange(n)
        mask = np.ones(n, dtype=bool)
        mask[self.seen[user]] = False
        return np.flatnonzero(mask)


def _names(models: Any) -> dict[str, Any]:
    if isinstance(models, Mapping):
        if not models:
            raise ValueError("models is empty")
        return {str(k): v for k, v in models.items()}
    if isinstance(models, (list, tuple)):
        if not models:
            raise ValueError("models is empty")
        out: dict[str, Any] = {}
        for m in models:
            name, n = type(m).__name__, 2
            while name in out:
                name, n = f"{type(m).__name__} ({n})", n + 1
            out[name] = m
        return out
    return {type(models).__name__: models}


def _length(stream: Any) -> int | None:
    try:
        return len(stream)
    except TypeError:
        n = getattr(stream, "n_samples", None)  # river datasets
        return n if isinstance(n, int) else None


def evaluate_ranking(
    stream: Iterable[Any],
    models: Any,
    k: int = 10,
    mode: Mode = "full",
    n_sampled: int = 100,
    exclude_seen: bool = True,
    is_positive: Callable[[Any], bool] = bool,
    learn: Literal["all", "positives"] = "all",
    window: int = 1_000,
    max_events: int | None = None,
    seed: int = 0,
    progress: bool = False,
    marks: Iterable[int] = (),
    item_features: Iterable[str] = (),
) -> RankingReport:
    """Test-then-learn ranking evaluation of one or several rankers on the same stream.

    For each event `(user, item, y, x)` of the stream, in order: if `y` is a positive
    (`is_positive(y)`), every ranker first ranks the candidates for `user` (with context
    `x`) and the position of `item` in that ranking is recorded; then every ranker learns
    the event with `learn_one(user, item, y, x)`. The rankers all see the same events and the
    same candidates, so their scores compare.

    **Candidates.** `mode="full"` (the default and the honest one) ranks the whole catalogue:
    every item seen so far in the stream. `mode="sampled"` ranks the true item plus
    `n_sampled` items drawn uniformly from the rest of the catalogue, a common shortcut
    that inflates every metric (a ranker only has to beat 100 random items, most of them
    unpopular); the report labels it as such. With `exclude_seen` (default, as a
    recommender would serve), items the user already interacted with are not candidates;
    a positive on such an item (a repeat) is skipped and counted in `n_repeats`. A positive
    on an item new to the catalogue cannot be recommended by anyone: it counts as a miss
    for every ranker (`n_cold`). The candidate order is shuffled for every query (with
    `seed`) so that neither ties nor a ranker that echoes its input order favour old items.

    **No leak from the context.** When the stream's `x` carries features of the event's
    item (its genre, price, ...), name them in `item_features`: they are given to
    `learn_one` (so a ranker can store them per item) but removed from the `x` given to
    `rank`, because at serving time the item the user will choose is not known, and its
    features in the context would give it away. `SyntheticInteractions.item_features` and
    `MovieLens100K`'s `ITEM_FEATURES` list theirs.

    **Rankers.** Any river `reco.base.Ranker` works, ours or river's: the evaluation calls
    `rank(user, candidates, x)` (a list) and `learn_one(user, item, y, x)`. MRR needs the
    relevant item's position in the whole ranking, which is why `rank` is used rather than
    `recommend(user, k)` (whose top-k is `rank`'s first `k` items over the same candidates).
    river's `Baseline`, `BiasedMF` and `FunkMF` rank with one `predict_one` per item, which
    is too slow for full-catalogue runs; for these exact classes the evaluation scores the
    candidates from the model's own parameters in one NumPy product, with the same scores
    and the same order as their `rank`.

    Parameters
    ----------
    stream
        Interactions: `(user, item, y, x)` or `(user, item, y)` tuples, or dicts (see
        `iter_interactions`).
    models
        One ranker, a list of rankers (named by class) or a `{name: ranker}` mapping.
    k
        Cut-off of HitRate@k, NDCG@k and the top-k lists behind catalogue coverage.
    mode
        `"full"` or `"sampled"`.
    n_sampled
        Negatives per query in `"sampled"` mode.
    exclude_seen
        Leave out items the user already interacted with.
    is_positive
        Which labels are positives (queries); `bool` by default, e.g. `lambda r: r >= 4`
        for ratings.
    learn
        `"all"` events, or only `"positives"` (for rankers that learn from positive-only
        feedback and would be confused by explicit negatives).
    window
        Default window of the rolling curves.
    max_events
        Stop after this many events.
    seed
        Seed of the candidate shuffling and sampling.
    progress
        Show a tqdm progress bar.
    marks
        Event indices to mark on plots (e.g. `SyntheticInteractions.shift_at`).
    item_features
        Keys of `x` that describe the event's item, hidden from `rank` (see above).

    Returns
    -------
    RankingReport

    Examples
    --------

    A ranker that always puts the relevant item third scores exactly `HitRate@10 = 1`,
    `NDCG@10 = 1/log2(4) = 0.5` and `MRR = 1/3`:

    >>> from river import reco
    >>> from river_torchrec.evaluate import evaluate_ranking

    >>> class Third(reco.base.Ranker):
    ...     def learn_one(self, user, item, y, x=None):
    ...         pass
    ...     def predict_one(self, user, item, x=None):
    ...         return 0.0
    ...     def rank(self, user, items, x=None):
    ...         others = [i for i in items if i != x["true"]]
    ...         if len(others) == len(items):  # the true item is not a candidate
    ...             return others
    ...         return others[:2] + [x["true"]] + others[2:]

    >>> stream = [(f"u{t}", f"i{t % 5}", True, {"true": f"i{t % 5}"}) for t in range(50)]
    >>> report = evaluate_ranking(stream, Third(), k=10)
    >>> r = report["Third"]
    >>> report.n_queries, report.n_cold, r.hit_rate, r.ndcg, round(r.mrr, 4)
    (50, 5, 0.9, 0.45, 0.3)

    The five cold queries (each item's first appearance) are misses; the other 45 of the
    50 queries hit at rank 3: `0.9 * 1`, `0.9 * 0.5`, `0.9 / 3`.

    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if mode not in ("full", "sampled"):
        raise ValueError(f"mode must be 'full' or 'sampled', got {mode!r}")
    if mode == "sampled" and (not isinstance(n_sampled, int) or n_sampled < 1):
        raise ValueError(f"n_sampled must be a positive integer, got {n_sampled!r}")
    if learn not in ("all", "positives"):
        raise ValueError(f"learn must be 'all' or 'positives', got {learn!r}")
    if window < 1:
        raise ValueError(f"window must be a positive integer, got {window}")
    named = _names(models)
    item_keys = frozenset(item_features)
    for name, model in named.items():
        if not (callable(getattr(model, "rank", None)) and callable(getattr(model, "learn_one", None))):
            raise TypeError(f"model {name!r} is not a ranker: it needs rank() and learn_one()")

    scorers = {name: make_scorer(model) for name, model in named.items()}
    seconds = dict.fromkeys(named, 0.0)
    recommended: dict[str, set[int]] = {name: set() for name in named}
    ranks: dict[str, list[float]] = {name: [] for name in named}
    steps: list[int] = []
    catalogue = _Catalogue()
    rng = np.random.default_rng(seed)
    n_cold = n_repeats = n_events = 0

    events: Iterable[Interaction] = iter_interactions(stream)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        total = _length(stream)
        if max_events is not None:
            total = min(total, max_events) if total is not None else max_events
        events = bar = tqdm(events, total=total, unit="event", desc="ranking")
    perf = time.perf_counter
    try:
        for t, (user, item, y, x) in enumerate(events):
            if max_events is not None and t >= max_events:
                break
            positive = bool(is_positive(y))
            if positive:
                true = catalogue.index.get(item)
                seen = catalogue.seen_sets.get(user, ())
                if true is not None and exclude_seen and true in seen:
                    n_repeats += 1
                elif len(catalogue.items) == 0:
                    n_cold += 1
                    steps.append(t)
                    for name in named:
                        ranks[name].append(math.inf)
                else:
                    candidates = catalogue.available(user, exclude_seen)
                    if mode == "sampled":
                        others = candidates if true is None else candidates[candidates != true]
                        if len(others) > n_sampled:
                            others = rng.choice(others, size=n_sampled, replace=False)
                        candidates = others if true is None else np.append(others, true)
                    candidates = rng.permutation(candidates)
                    if true is None:
                        n_cold += 1
                    steps.append(t)
                    context = x
                    if item_keys and x:
                        context = {key: v for key, v in x.items() if key not in item_keys}
                    for name, scorer in scorers.items():
                        start = perf()
                        rank, top = scorer.rank(user, context, candidates, true, k, catalogue.items)
                        seconds[name] += perf() - start
                        ranks[name].append(rank)
                        recommended[name].update(top)
            if positive or learn == "all":
                for name, scorer in scorers.items():
                    start = perf()
                    scorer.learn(user, item, y, x)
                    seconds[name] += perf() - start
                j = catalogue.add(user, item)
                for scorer in scorers.values():
                    scorer.refresh(j, item, user)
            n_events += 1
    finally:
        if bar is not None:
            bar.close()

    results = {
        name: RankingResult(
            name=name,
            k=k,
            ranks=np.asarray(ranks[name], dtype=float),
            steps=np.asarray(steps, dtype=np.int64),
            n_recommended=len(recommended[name]),
            catalogue_size=len(catalogue.items),
            n_events=n_events,
            seconds=seconds[name],
        )
        for name in named
    }
    return RankingReport(
        results=results,
        mode=mode,
        k=k,
        n_events=n_events,
        n_queries=len(steps),
        n_cold=n_cold,
        n_repeats=n_repeats,
        exclude_seen=exclude_seen,
        n_sampled=n_sampled if mode == "sampled" else 0,
        window=window,
        marks=list(marks),
    )
