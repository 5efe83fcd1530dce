"""``river-torchrec evaluate --task rank``: test-then-learn ranking evaluation of recommenders.

Every ranker sees the same interaction stream; before learning each positive, it ranks every
item seen so far that the user has not interacted with (``river_torchrec.evaluate``). The
table gives HitRate@10, NDCG@10, MRR, catalogue coverage and events/s per ranker;
``--plot`` writes the rolling HitRate@10 of each one.

Streams: ``--dataset synthetic`` (default; ``SyntheticInteractions`` with ``--n`` choices,
``--n-users``, ``--n-items``, ``--seed``, a taste shift at the middle, and the oracle row) or
``--dataset movielens --data PATH`` (MovieLens-100K in time order, positives
``rating >= 4``, at most ``--n`` events).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["DEFAULT_RANKERS", "RANKERS", "make_ranker", "rank_command"]

#: Rankers of ``--task rank`` without ``--ranker``.
DEFAULT_RANKERS = ("most-popular", "river-biasedmf", "two-tower")


def _most_popular(args: argparse.Namespace, side: dict[str, tuple[str, ...]]) -> Any:
    from river_torchrec.reco import MostPopular

    return MostPopular()


def _river(cls_name: str) -> Callable[[argparse.Namespace, dict], Any]:
    def make(args: argparse.Namespace, side: dict[str, tuple[str, ...]]) -> Any:
        from river import optim, reco

        # The best of the grid in benchmarks/bench_reco.py without sampled negatives.
        if cls_name == "BiasedMF":
            return reco.BiasedMF(n_factors=10, bias_optimizer=optim.SGD(0.05),
                                 latent_optimizer=optim.SGD(0.05), l2_latent=0.01, seed=args.seed)
        return reco.FunkMF(n_factors=32, optimizer=optim.SGD(0.05), l2=0.01, seed=args.seed)

    return make


def _ours(cls_name: str, **params: Any) -> Callable[[argparse.Namespace, dict], Any]:
    def make(args: argparse.Namespace, side: dict[str, tuple[str, ...]]) -> Any:
        from river_torchrec import reco

        cls = getattr(reco, cls_name)
        # The stream's side features are declared: stored per user and per item, and
        # scored with every candidate (undeclared, they would be taken for context).
        return cls(seed=args.seed, device=args.device, **side, **params)

    return make


#: ``--ranker`` names: (pretty name, factory(args, side features)).
RANKERS: dict[str, tuple[str, Callable[[argparse.Namespace, dict], Any]]] = {
    "most-popular": ("MostPopular", _most_popular),
    "river-biasedmf": ("river BiasedMF", _river("BiasedMF")),
    "river-funkmf": ("river FunkMF", _river("FunkMF")),
    "two-tower": ("TwoTowerRanker (river-torchrec)", _ours("TwoTowerRanker")),
    "deepfm-ranker": ("CTRRanker deepfm (river-torchrec)", _ours("CTRRanker", model="deepfm")),
    "fm-ranker": ("CTRRanker fm (river-torchrec)", _ours("CTRRanker", model="fm")),
}


def make_ranker(name: str, args: argparse.Namespace, side: dict[str, tuple[str, ...]]) -> Any:
    """A fresh ranker for a ``--ranker`` name."""
    return RANKERS[name][1](args, side)


def _command_error(message: str) -> Exception:
    from river_torchrec.cli import CommandError

    return CommandError(message)


def _stream(args: argparse.Namespace) -> tuple[list, dict[str, Any]]:
    from river_torchrec.datasets import MovieLens100K, SyntheticInteractions

    if args.dataset == "synthetic":
        stream = SyntheticInteractions(
            n_events=args.n,
            n_users=args.n_users or 1_000,
            n_items=args.n_items or 500,
            seed=args.seed,
        )
        info = {"name": f"SyntheticInteractions ({args.n:,} choices, taste shift at {stream.shift_at:,})",
                "marks": [stream.shift_at], "oracle": stream.oracle(),
                "user_features": stream.user_features, "item_features": stream.item_features}
        return list(stream), info
    if args.dataset != "movielens":
        raise _command_error(
            f"--task rank works on --dataset synthetic or movielens, not {args.dataset}"
        )
    if args.data is None:
        raise _command_error(
            "--dataset movielens needs --data PATH: the folder with u.data, u.user, u.item "
            "(or movielens100k_*.csv[.gz]); nothing is downloaded"
        )
    from river_torchrec.datasets.movielens import ITEM_FEATURES, USER_FEATURES

    try:
        dataset = MovieLens100K(args.data)
        events = []
        for event in dataset.interactions():
            events.append(event)
            if len(events) >= args.n:
                break
    except (FileNotFoundError, ValueError) as e:
        raise _command_error(str(e)) from None
    if not events:
        raise _command_error(f"{args.data} holds no ratings")
    info = {"name": f"MovieLens-100K ({len(events):,} ratings in time order, positives: rating >= 4)",
            "marks": [], "oracle": None, "user_features": USER_FEATURES,
            "item_features": ITEM_FEATURES}
    return events, info


def rank_command(args: argparse.Namespace) -> int:
    """Run ``evaluate --task rank`` and print the table; returns the exit status."""
    names = list(getattr(args, "ranker", None) or DEFAULT_RANKERS)
    for path in (args.plot, args.json):
        if path is not None and not pathlib.Path(path).parent.exists():
            raise _command_error(f"folder {pathlib.Path(path).parent} does not exist (for {path})")
    events, info = _stream(args)
    import torch

    from river_torchrec.evaluate import evaluate_ranking

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        models: dict[str, Any] = {}
        if info["oracle"] is not None:
            models["oracle (true preferences)"] = info["oracle"]
        side = {"user_features": info["user_features"], "item_features": info["item_features"]}
        for name in names:
            models[RANKERS[name][0]] = make_ranker(name, args, side)
        report = evaluate_ranking(
            events,
            models,
            k=10,
            window=args.window,
            seed=args.seed,
            progress=not args.quiet,
            marks=info["marks"],
            item_features=info["item_features"],
        )
    finally:
        torch.set_num_threads(threads)
    print(f"{info['name']}\n")
    print(report)
    if args.plot is not None:
        report.plot(str(args.plot), metric="hit_rate", window=args.window)
        print(f"\nrolling HitRate@10 written to {args.plot}")
    if args.json is not None:
        out = {
            "stream": info["name"],
            "mode": report.mode,
            "n_events": report.n_events,
            "n_queries": report.n_queries,
            "n_cold": report.n_cold,
            "models": {
                name: {"hit_rate@10": r.hit_rate, "ndcg@10": r.ndcg, "mrr": r.mrr,
                       "coverage@10": r.coverage, "events_per_s": r.events_per_second}
                for name, r in report.items()
            },
        }
        pathlib.Path(args.json).write_text(json.dumps(out, indent=2))
    sys.stdout.flush()
    return 0
