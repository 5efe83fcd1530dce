"""Ranking quality of online recommenders: full-catalogue test-then-learn HitRate@10 and NDCG@10.

Run ``python benchmarks/bench_reco.py`` (``--quick`` for a smoke run; ``--data PATH``,
default ``<repo>/../shared/data``; ``--only movielens,synthetic``; ``--grid-events N``;
``--ours NAME=PARAMS`` to add configurations of our rankers; ``--plot-dir DIR``; ``--tuned``
to skip the baselines' grids and reuse the configurations they chose last time).

Protocol (``river_torchrec.evaluate.evaluate_ranking``, ``mode="full"``): for every positive
interaction, in stream order, each model ranks every item seen so far that the user has not
interacted with; the position of the item the user actually chose gives HitRate@10,
NDCG@10 and MRR (exact, one relevant item per query); then every model learns the event.
An item never seen before cannot be recommended: a miss for everyone.

Streams:

* MovieLens-100K in time order (from ``--data``; skipped when absent): 100,000 ratings,
  positives ``rating >= 4`` (55,375 queries). Every rating is an event the models learn
  from, with ``y = rating >= 4`` (so low ratings are explicit negatives), and ``x`` holds
  the user's age, gender, occupation, zip prefix and the movie's year and genres.
* ``SyntheticInteractions(n_events=20_000)``: 1,000 users with latent tastes choosing among
  500 Zipf-popular items, all users' tastes redrawn at event 10,000. Its oracle row ranks by
  the true choice probabilities (the Bayes-optimal ranking); ours is reported as a fraction
  of it.

Models:

* ``MostPopular``: the most-popular-so-far baseline (positive counts).
* river ``reco.BiasedMF`` and ``reco.FunkMF``, each tuned by the grid printed first (on the
  first ``--grid-events`` events of the same stream, which favours them): factors, SGD
  learning rate, and whether each positive is followed by sampled negatives (``neg=2``: two
  items the user has not interacted with, learned as ``y=0``; without them a
  matrix factorisation fed positive-only data learns that everything is liked).
* ``flurs`` (when installed): incremental MF (Vinagre et al. 2014) and BPR-MF, both
  positive-only, tuned the same way.
* ours: ``TwoTowerRanker()`` with its defaults (the recommended default), fed ``x`` as it
  comes, nothing declared: the ranker routes each key to the user side, the item side or
  the context (``undeclared_features="auto"``); plus any ``--ours`` configurations
  (``side:True`` declares the stream's user and item features instead).

Every model is seeded; the numbers are one deterministic run. ``events/s`` is the model's own
time (ranking every query plus learning every event) on one thread.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import sys
import time
from collections.abc import Callable, Hashable, Iterable
from typing import Any

import numpy as np

from river_torchrec.datasets import MovieLens100K, SyntheticInteractions
from river_torchrec.evaluate import RankingReport, evaluate_ranking

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
DATASETS = ("movielens", "synthetic")


# --------------------------------------------------------------------------- baselines


class RiverWithNegatives:
    """A river MF ranker that also learns `n` sampled non-interacted items as `y=0` per positive.

    Ranking reads the model's item parameters from NumPy arrays refreshed after every
    update of an item (river's own `rank` calls `predict_one` per item): the same scores as
    `predict_one`, in one product.
    """

    def __init__(self, model: Any, n_negatives: int, seed: int = 0) -> None:
        self.model = model
        self.n_negatives = n_negatives
        self._rng = np.random.default_rng(seed)
        self._items: list[Hashable] = []
        self._row: dict[Hashable, int] = {}
        self._seen: dict[Hashable, set[Hashable]] = {}
        self._bias = np.zeros(64)
        self._latent = np.zeros((64, getattr(model, "n_factors", 0)))

    def _learn(self, user: Hashable, item: Hashable, y: float, x: dict | None) -> None:
        m = self.model
        m.learn_one(user, item, y, x)
        row = self._row[item]
        if hasattr(m, "i_biases"):
            self._bias[row] = m.i_biases[item]
        if hasattr(m, "i_latents"):
            self._latent[row] = m.i_latents[item]

    def learn_one(self, user: Hashable, item: Hashable, y: Any, x: dict | None = None) -> None:
        if item not in self._row:
            self._row[item] = len(self._items)
            self._items.append(item)
            if len(self._items) > len(self._bias):
                self._bias = np.concatenate([self._bias, np.zeros_like(self._bias)])
                self._latent = np.concatenate([self._latent, np.zeros_like(self._latent)])
        self._learn(user, item, float(y), x)
        seen = self._seen.setdefault(user, set())
        seen.add(item)
        if y and self.n_negatives and len(self._items) > len(seen):
            drawn = 0
            for _ in range(20 * self.n_negatives):
                other = self._items[int(self._rng.integers(len(self._items)))]
                if other not in seen:
                    self._learn(user, other, 0.0, x)
                    drawn += 1
                    if drawn == self.n_negatives:
                        break

    def rank(self, user: Hashable, items: Iterable[Hashable], x: dict | None = None) -> list:
        items = list(items)
        m = self.model
        rows = np.fromiter((self._row[i] for i in items), np.int64, len(items))
        scores = np.zeros(len(items))
        if hasattr(m, "i_biases"):
            scores += m.global_mean.get() + m.u_biases[user] + self._bias[rows]
        if hasattr(m, "i_latents") and items:
            scores += self._latent[rows] @ m.u_latents[user]
        return [items[j] for j in np.argsort(-scores, kind="stable")]


class FlursRanker:
    """A flurs recommender (positive-only) behind river's ranker API.

    flurs learns from positive events only (its MF turns every value into 1); other events
    just register the item. Like flurs' own evaluator, the user's known items are updated
    before each model update (BPR draws its negative among the others).
    """

    def __init__(self, kind: str, seed: int = 0, **params: Any) -> None:
        from flurs.data.entity import Event, Item, User
        from flurs.recommender import BPRMFRecommender, MFRecommender

        np.random.seed(seed)  # flurs draws initial vectors and BPR negatives from np.random
        self._Event, self._User, self._Item = Event, User, Item
        self.rec = (MFRecommender if kind == "mf" else BPRMFRecommender)(**params)
        self.rec.initialize()
        self.kind = kind
        self._users: dict[Hashable, Any] = {}
        self._items: dict[Hashable, Any] = {}

    def _user(self, user: Hashable) -> Any:
        u = self._users.get(user)
        if u is None:
            u = self._users[user] = self._User(len(self._users))
            self.rec.register(u)
        return u

    def _item(self, item: Hashable) -> Any:
        i = self._items.get(item)
        if i is None:
            i = self._items[item] = self._Item(len(self._items))
            self.rec.register(i)
        return i

    def learn_one(self, user: Hashable, item: Hashable, y: Any, x: dict | None = None) -> None:
        u, i = self._user(user), self._item(item)
        if y:
            known = self.rec.users[u.index]["known_items"]
            known.add(i.index)
            # BPR needs an item the user does not know yet to contrast with.
            if self.kind == "mf" or len(known) < self.rec.n_item:
                self.rec.update(self._Event(u, i, 1.0))

    def rank(self, user: Hashable, items: Iterable[Hashable], x: dict | None = None) -> list:
        items = list(items)
        u = self._user(user)
        idx = np.fromiter((self._items[i].index for i in items), np.int64, len(items))
        scores = self.rec.score(u, idx)
        # flurs' MF scores |1 - prediction| (lower is better), BPR the prediction itself.
        order = np.argsort(scores if self.kind == "mf" else -scores, kind="stable")
        return [items[j] for j in order]


#: The configurations the grids chose on the first 10,000 events of each stream (the run of
#: 2026-12-03 in benchmarks/README.md); ``--tuned`` uses them instead of rerunning the grids.
TUNED = {
    "movielens": {
        "BiasedMF": "BiasedMF factors=10 lr=0.01 neg=2",
        "FunkMF": "FunkMF factors=32 lr=0.05 neg=0",
        "flurs MF": "flurs MF k=40 lr=0.03",
        "flurs BPR-MF": "flurs BPR-MF k=40 lr=0.003",
    },
    "synthetic": {
        "BiasedMF": "BiasedMF factors=10 lr=0.01 neg=2",
        "FunkMF": "FunkMF factors=32 lr=0.05 neg=0",
        "flurs MF": "flurs MF k=20 lr=0.03",
        "flurs BPR-MF": "flurs BPR-MF k=40 lr=0.03",
    },
}


def _flurs_available() -> bool:
    try:
        import flurs  # noqa: F401
    except ImportError:
        return False
    return True


def river_grid(name: str) -> dict[str, Callable[[], Any]]:
    from river import optim, reco

    grid: dict[str, Callable[[], Any]] = {}
    for factors in (10, 32):
        for lr in (0.01, 0.05):
            for neg in (0, 2):
                label = f"{name} factors={factors} lr={lr} neg={neg}"

                def make(factors=factors, lr=lr, neg=neg) -> Any:
                    if name == "BiasedMF":
                        model = reco.BiasedMF(
                            n_factors=factors, bias_optimizer=optim.SGD(lr),
                            latent_optimizer=optim.SGD(lr), l2_latent=0.01, seed=1,
                        )
                    else:
                        model = reco.FunkMF(n_factors=factors, optimizer=optim.SGD(lr),
                                            l2=0.01, seed=1)
                    return RiverWithNegatives(model, neg, seed=1) if neg else model

                grid[label] = make
    return grid


def flurs_grid(kind: str) -> dict[str, Callable[[], Any]]:
    grid: dict[str, Callable[[], Any]] = {}
    for k in (20, 40):
        for lr in (0.003, 0.01, 0.03):
            label = f"flurs {'MF' if kind == 'mf' else 'BPR-MF'} k={k} lr={lr}"
            grid[label] = lambda k=k, lr=lr: FlursRanker(kind, seed=1, k=k, learn_rate=lr, l2_reg=0.01)
    return grid


class IdsOnly:
    """A ranker that never sees `x`: user and item ids only."""

    def __init__(self, ranker: Any) -> None:
        self.ranker = ranker

    def learn_one(self, user: Hashable, item: Hashable, y: Any, x: dict | None = None) -> None:
        self.ranker.learn_one(user, item, y)

    def rank(self, user: Hashable, items: Iterable[Hashable], x: dict | None = None) -> list:
        return self.ranker.rank(user, items)


def ours_factory(params: dict[str, Any], side: dict[str, tuple[str, ...]]) -> Callable[[], Any]:
    """`class` picks the ranker (default TwoTowerRanker); `side: True` declares the stream's
    user and item features; `ids: True` hides `x`; everything else goes to the constructor."""

    def make() -> Any:
        from river_torchrec import reco

        params_ = dict(params)
        cls = getattr(reco, params_.pop("class", "TwoTowerRanker"))
        ids_only = params_.pop("ids", False)
        if params_.pop("side", False):
            params_.update(user_features=side["user_features"], item_features=side["item_features"])
        model = cls(**params_)
        return IdsOnly(model) if ids_only else model

    return make


def _parse_ours(specs: list[str]) -> dict[str, dict[str, Any]]:
    """`name=key:value,key:value` (values parsed as Python literals when they are)."""
    import ast

    out = {}
    for spec in specs:
        name, _, body = spec.partition("=")
        params: dict[str, Any] = {}
        for pair in filter(None, body.split(";")):
            key, _, value = pair.partition(":")
            try:
                params[key.strip()] = ast.literal_eval(value.strip())
            except (ValueError, SyntaxError):
                params[key.strip()] = value.strip()
        out[name.strip()] = params
    return out


# --------------------------------------------------------------------------- streams


def load_stream(dataset: str, data: pathlib.Path, quick: bool) -> dict[str, Any]:
    """Events, marks for plots, side-feature keys and the oracle factory (synthetic only)."""
    if dataset == "movielens":
        from river_torchrec.datasets import movielens

        events = list(MovieLens100K(data).interactions())
        if quick:
            events = events[:3_000]
        return {"events": events, "marks": [], "oracle": None,
                "user_features": movielens.USER_FEATURES, "item_features": movielens.ITEM_FEATURES}
    stream = SyntheticInteractions(n_events=2_000 if quick else 20_000,
                                   n_users=200 if quick else 1_000,
                                   n_items=100 if quick else 500, seed=42)
    return {"events": list(stream), "marks": [stream.shift_at], "oracle": stream.oracle,
            "user_features": stream.user_features, "item_features": stream.item_features}


def _has_movielens(data: pathlib.Path) -> bool:
    try:
        MovieLens100K(data)
    except FileNotFoundError:
        return False
    return True


# --------------------------------------------------------------------------- runs


def tune(events: list, grid: dict[str, Callable[[], Any]], n_events: int,
         item_features: Iterable[str]) -> tuple[str, RankingReport]:
    report = evaluate_ranking(events[:n_events], {name: make() for name, make in grid.items()},
                              item_features=item_features)
    best = max(report, key=lambda name: (report[name].hit_rate, report[name].ndcg))
    return best, report


def grid_table(report: RankingReport, best: str) -> str:
    lines = ["| configuration | HitRate@10 | NDCG@10 |", "| --- | ---: | ---: |"]
    for name, r in report.items():
        mark = " **(best)**" if name == best else ""
        lines.append(f"| {name}{mark} | {r.hit_rate:.4f} | {r.ndcg:.4f} |")
    return "\n".join(lines)


def summary_table(report: RankingReport, ours: list[str], baselines: list[str],
                  oracle: str | None) -> str:
    best_hr = max(report[b].hit_rate for b in baselines)
    best_ndcg = max(report[b].ndcg for b in baselines)
    head = "| model | HitRate@10 | NDCG@10 | MRR | coverage@10 | events/s | HR vs best baseline | NDCG vs best baseline |"
    if oracle:
        head += " HR / oracle |"
    lines = [head, "| --- " * (head.count("|") - 1) + "|"]
    for name, r in report.items():
        hr_ratio = f"{r.hit_rate / best_hr:.2f}x" if best_hr > 0 else "-"
        nd_ratio = f"{r.ndcg / best_ndcg:.2f}x" if best_ndcg > 0 else "-"
        row = (f"| {name} | {r.hit_rate:.4f} | {r.ndcg:.4f} | {r.mrr:.4f} | {r.coverage:.3f} | "
               f"{r.events_per_second:,.0f} | {hr_ratio} | {nd_ratio} |")
        if oracle:
            row += f" {r.hit_rate / report[oracle].hit_rate:.3f} |"
        lines.append(row)
    return "\n".join(lines)


def run_dataset(dataset: str, args: argparse.Namespace) -> None:
    stream = load_stream(dataset, args.data, args.quick)
    events, marks, oracle = stream["events"], stream["marks"], stream["oracle"]
    side = {"user_features": stream["user_features"], "item_features": stream["item_features"]}
    n_grid = min(args.grid_events, len(events)) if not args.quick else len(events) // 2
    print(f"\n## {dataset}: {len(events):,} events\n")

    chosen: dict[str, Callable[[], Any]] = {}
    grids = {"BiasedMF": river_grid("BiasedMF"), "FunkMF": river_grid("FunkMF")}
    if _flurs_available():
        grids["flurs MF"] = flurs_grid("mf")
        grids["flurs BPR-MF"] = flurs_grid("bpr")
    else:
        print("flurs is not installed (`pip install flurs`): its rows are skipped.\n")
    for family, grid in grids.items():
        if args.tuned and not args.quick:
            best = TUNED[dataset][family]
            print(f"### {family}: {best} (chosen by the grid of the last full run; --tuned)\n")
            chosen[f"river {best}" if family in ("BiasedMF", "FunkMF") else best] = grid[best]
            continue
        start = time.perf_counter()
        best, report = tune(events, grid, n_grid, side["item_features"])
        print(f"### {family} grid (first {n_grid:,} events, {time.perf_counter() - start:.0f} s)\n")
        print(grid_table(report, best) + "\n")
        chosen[f"river {best}" if family in ("BiasedMF", "FunkMF") else best] = grid[best]

    ours = {"ours: TwoTowerRanker() (default)": ours_factory({}, side)}
    for name, params in _parse_ours(args.ours).items():
        ours[f"ours: {name}"] = ours_factory(params, side)

    from river_torchrec import reco

    models: dict[str, Any] = {}
    if oracle is not None:
        models["oracle (true preferences)"] = oracle()
    models["MostPopular"] = reco.MostPopular()
    models.update((name, make()) for name, make in chosen.items())
    models.update((name, make()) for name, make in ours.items())
    start = time.perf_counter()
    report = evaluate_ranking(events, models, marks=marks, window=args.window,
                              progress=args.progress, item_features=side["item_features"])
    print(f"### {dataset}: full stream ({time.perf_counter() - start:.0f} s)\n")
    print(report.label + f"; {report.n_queries:,} queries, {report.n_cold:,} cold items "
          f"counted as misses.\n")
    baselines = ["MostPopular", *chosen]
    oracle_name = "oracle (true preferences)" if oracle is not None else None
    print(summary_table(report, list(ours), baselines, oracle_name) + "\n")
    for name in ours:
        r = report[name]
        best = max(baselines, key=lambda b: report[b].hit_rate)
        verdict = "met" if (r.hit_rate >= 1.25 * report[best].hit_rate
                            and r.ndcg >= 1.25 * max(report[b].ndcg for b in baselines)) else "missed"
        print(f"- target (>= 1.25x best baseline on HitRate@10 and NDCG@10) for {name}: {verdict}")
    if args.plot_dir is not None:
        args.plot_dir.mkdir(parents=True, exist_ok=True)
        path = args.plot_dir / f"reco_rolling_{dataset}.png"
        report.plot(str(path), metric="hit_rate", window=args.window)
        print(f"\nrolling HitRate@10 plot: {path}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=pathlib.Path, default=DEFAULT_DATA,
                    help="folder with the MovieLens-100K files (skipped when absent)")
    ap.add_argument("--only", default=",".join(DATASETS), help="comma-separated subset of movielens,synthetic")
    ap.add_argument("--quick", action="store_true", help="small streams (smoke run)")
    ap.add_argument("--grid-events", type=int, default=20_000, help="prefix used to tune the baselines")
    ap.add_argument("--tuned", action="store_true",
                    help="skip the baselines' grids and use the configurations they chose in the "
                         "last full run (TUNED in this script)")
    ap.add_argument("--window", type=int, default=2_000, help="window of the rolling curves (queries)")
    ap.add_argument("--ours", action="append", default=[],
                    help="extra configuration of ours: NAME=key:value;key:value (e.g. "
                         "'bpr=loss:\"bpr\"'; class:CTRRanker selects another ranker, side:True "
                         "declares the stream's side features, ids:True hides x)")
    ap.add_argument("--plot-dir", type=pathlib.Path, default=None, help="write reco_rolling_<dataset>.png here")
    ap.add_argument("--progress", action="store_true", help="progress bar on the full runs")
    args = ap.parse_args(argv)
    args.only = [d.strip() for d in args.only.split(",") if d.strip()]
    unknown = set(args.only) - set(DATASETS)
    if unknown:
        ap.error(f"unknown datasets {sorted(unknown)}; choose from {', '.join(DATASETS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(1)
    print("# Ranking quality: full-catalogue test-then-learn\n")
    for dataset in args.only:
        if dataset == "movielens" and not _has_movielens(args.data):
            print(f"\nMovieLens-100K not found under {args.data}: skipped.")
            continue
        run_dataset(dataset, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
