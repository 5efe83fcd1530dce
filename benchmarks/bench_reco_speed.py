"""Serving and learning speed of the rankers of :mod:`river_torchrec.reco`.

Run ``python benchmarks/bench_reco_speed.py`` (``--quick`` for a smoke run, ``--runs 3``,
``--items 1000000``, ``--calls 300``). One process, one torch thread
(``torch.set_num_threads(1)``), CPU. Every figure is the median over ``--runs`` runs, each
run timing ``--calls`` calls after a warm-up; p50/p99 are per-call latencies.

* **rank 1,000**: ``rank(user, 1,000 candidates)`` of a ``TwoTowerRanker`` and a
  ``CTRRanker(model="deepfm")`` (the defaults), trained on a synthetic stream of 943 users
  and 1,682 items (the shape of MovieLens-100K, whose data this benchmark does not need),
  against river's ``reco.BiasedMF``, whose ``rank`` calls ``predict_one`` per item.
* **recommend 1,682**: ``recommend(user, k=10)`` over the whole catalogue, seen items
  excluded. ``serve``: calls with no learning in between; ``after learn``: each call follows
  a ``learn_one``, so it pays the incremental refresh of the cached item vectors.
* **recommend 1M**: a ``TwoTowerRanker`` whose catalogue holds ``--items`` items
  (``add_items``), whose item vectors are set to clustered vectors (64 clusters, the shape
  of trained embeddings; random vectors are the worst case of any index), exact scan vs
  ``index="faiss"`` (IVF, ``sqrt(n)`` lists, ``nprobe=32``). ``recall@10``: share of the
  exact top 10 the index returns, over the timed calls. ``after learn``: each call follows
  a ``learn_one`` (the index re-adds the moved items).
* **learn**: ``learn_one`` positives per second of the rankers with their defaults (the
  two-tower's ``n_negatives`` sampled negatives, DeepFM's 4, all in one step), vs river's
  ``BiasedMF.learn_one`` (one event, no negatives).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

from river_torchrec.reco import CTRRanker, MostPopular, TwoTowerRanker

N_USERS, N_ITEMS = 943, 1682


def _stream(n: int, seed: int) -> list[tuple[str, str]]:
    """Users with one of 20 tastes, each taste favouring 100 items (Zipf-like popularity)."""
    rng = np.random.default_rng(seed)
    taste = rng.integers(20, size=N_USERS)
    favourites = rng.integers(N_ITEMS, size=(20, 100))
    pop = 1.0 / np.arange(1, N_ITEMS + 1)
    pop /= pop.sum()
    out = []
    for _ in range(n):
        u = int(rng.integers(N_USERS))
        i = int(favourites[taste[u], rng.integers(100)]) if rng.random() < 0.7 else int(rng.choice(N_ITEMS, p=pop))
        out.append((f"u{u}", f"i{i}"))
    return out


def _latencies(fn: Callable[[int], object], calls: int, before: Callable[[int], object] | None = None) -> tuple:
    """Per-call CPU times and wall-clock times of ``fn(c)`` (``before(c)`` runs untimed first)."""
    cpu, wall = [], []
    for c in range(calls):
        if before is not None:
            before(c)
        t, tc = time.perf_counter(), time.thread_time()
        fn(c)
        cpu.append(time.thread_time() - tc)
        wall.append(time.perf_counter() - t)
    return cpu, wall


def _record(out: dict, key: str, lat: tuple) -> None:
    cpu, wall = lat
    out[f"{key}/p50"], out[f"{key}/p99"] = _p(cpu, 50), _p(cpu, 99)
    out[f"{key}/wall50"], out[f"{key}/wall99"] = _p(wall, 50), _p(wall, 99)


def _p(lat: list[float], q: float) -> float:
    return float(np.percentile(lat, q)) * 1e3


def _median_runs(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def _trained(model, events: list[tuple[str, str]]):
    for u, i in events:
        model.learn_one(u, i, True)
    return model


def bench_rank_and_recommend(args, seed: int) -> dict:
    from river import optim, reco

    events = _stream(args.warmup, seed)
    rng = np.random.default_rng(seed + 1)
    out = {}
    models = {
        "two-tower": _trained(TwoTowerRanker(seed=seed), events),
        "deepfm": _trained(CTRRanker(model="deepfm", seed=seed), events),
        "river BiasedMF": _trained(
            reco.BiasedMF(n_factors=10, bias_optimizer=optim.SGD(0.025), latent_optimizer=optim.SGD(0.05), seed=seed),
            [(u, i) for u, i in events],
        ),
        "most-popular": _trained(MostPopular(), events),
    }
    users = [f"u{u}" for u in rng.integers(N_USERS, size=args.calls)]
    catalogue = models["two-tower"].catalogue
    candidates = [list(rng.choice(catalogue, size=min(1000, len(catalogue)), replace=False)) for _ in range(args.calls)]
    for name, model in models.items():
        cand_sets = [set(c) for c in candidates] if name == "river BiasedMF" else candidates
        model.rank(users[0], cand_sets[0])
        _record(out, f"rank/{name}", _latencies(lambda c: model.rank(users[c], cand_sets[c]), args.calls))
    for name in ("two-tower", "deepfm", "most-popular"):
        model = models[name]
        model.recommend(users[0], k=10)
        _record(out, f"rec/{name}/serve", _latencies(lambda c: model.recommend(users[c], k=10), args.calls))
        more = _stream(args.calls, seed + 7)
        lat = _latencies(lambda c: model.recommend(users[c], k=10), args.calls, lambda c: model.learn_one(*more[c], True))
        _record(out, f"rec/{name}/learn", lat)
    return out


def bench_learn(args, seed: int) -> dict:
    from river import optim, reco

    events = _stream(args.learn_events, seed)
    out = {}
    makers = {
        "two-tower": lambda: TwoTowerRanker(seed=seed),
        "deepfm": lambda: CTRRanker(model="deepfm", seed=seed),
        "river BiasedMF": lambda: reco.BiasedMF(n_factors=10, latent_optimizer=optim.SGD(0.05), seed=seed),
    }
    for name, make in makers.items():
        model = make()
        _trained(model, events[: len(events) // 5])  # warm-up: tables and catalogue in place
        rest = events[len(events) // 5 :]
        t, tc = time.perf_counter(), time.thread_time()
        _trained(model, rest)
        out[f"learn/{name}"] = len(rest) / (time.thread_time() - tc)
        out[f"learn/{name}/wall"] = len(rest) / (time.perf_counter() - t)
    return out


def _clustered(n: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((64, k)) * 0.3
    return (centers[rng.integers(64, size=n)] + 0.1 * rng.standard_normal((n, k))).astype(np.float32)


def _big_catalogue(args, seed: int, index: str) -> TwoTowerRanker:
    model = TwoTowerRanker(index=index, seed=seed)
    model.add_items([f"i{j}" for j in range(args.items)])
    for u, i in _stream(args.warmup // 5, seed):
        model.learn_one(u, i, True)
    # Trained-like vectors (random ones are every index's worst case, and untrained ones tie):
    # write clustered vectors and small random biases into the item and user id rows.
    table = model.model_.embedding
    rng = np.random.default_rng(seed + 5)
    for field, keys in (("item", [f"i{j}" for j in range(args.items)]), ("user", [f"u{u}" for u in range(N_USERS)])):
        rows = torch.tensor(table.lookup([(field, k) for k in keys], learn=False))
        with torch.no_grad():
            table.weight[rows, 1:] = torch.from_numpy(_clustered(len(keys), model.embedding_dim, seed + len(field)))
            table.weight[rows, 0] = torch.from_numpy((0.1 * rng.standard_normal(len(keys))).astype(np.float32))
    model._cache.vec_ok[:] = False  # (no vectors are cached yet; this keeps it so)
    return model


def bench_big(args, seed: int) -> dict:
    rng = np.random.default_rng(seed + 2)
    users = [f"u{u}" for u in rng.integers(N_USERS, size=args.calls)]
    out = {}
    exact = _big_catalogue(args, seed, "exact")
    t = time.perf_counter()
    exact.recommend(users[0], k=10)
    out["big/exact/build_s"] = time.perf_counter() - t
    truth = []
    _record(out, "big/exact", _latencies(lambda c: truth.append(exact.recommend(users[c], k=10)), args.calls))
    try:
        import faiss  # noqa: F401
    except ImportError:
        return out
    approx = _big_catalogue(args, seed, "faiss")
    t = time.perf_counter()
    approx.recommend(users[0], k=10)
    out["big/faiss/build_s"] = time.perf_counter() - t
    found = []
    _record(out, "big/faiss", _latencies(lambda c: found.append(approx.recommend(users[c], k=10)), args.calls))
    out["big/faiss/recall"] = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)]))
    more = _stream(args.calls, seed + 9)
    for name, model in (("exact", exact), ("faiss", approx)):
        lat = _latencies(lambda c: model.recommend(users[c], k=10), args.calls, lambda c: model.learn_one(*more[c], True))
        _record(out, f"big/{name}/learn", lat)
    return out


def _table(res: dict, args) -> str:
    head = f"median of {args.runs} runs x {args.calls} calls; CPU time per call, wall-clock in the last columns"
    lines = [f"### rank of 1,000 candidates (ms; {head})", ""]
    lines += ["| model | p50 | p99 | p50 vs river BiasedMF | wall p50 | wall p99 |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    base = res["rank/river BiasedMF/p50"]
    for name in ("two-tower", "deepfm", "most-popular", "river BiasedMF"):
        r = [res[f"rank/{name}/{m}"] for m in ("p50", "p99", "wall50", "wall99")]
        lines.append(f"| {name} | {r[0]:.3f} | {r[1]:.3f} | {base / r[0]:.1f}x faster | {r[2]:.3f} | {r[3]:.3f} |")
    lines += ["", f"### recommend(k=10) over {N_ITEMS:,} items (ms; {head})", ""]
    lines += ["| model | serve p50 | serve p99 | after learn p50 | after learn p99 | wall serve p99 | wall after learn p99 |"]
    lines += ["| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in ("two-tower", "deepfm", "most-popular"):
        r = [res[f"rec/{name}/{m}"] for m in ("serve/p50", "serve/p99", "learn/p50", "learn/p99", "serve/wall99", "learn/wall99")]
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in r) + " |")
    lines += ["", f"### two-tower recommend(k=10) over {args.items:,} items (ms; {head})", ""]
    lines += ["| index | build s | serve p50 | serve p99 | after learn p50 | after learn p99 | wall serve p99 | recall@10 vs exact |"]
    lines += ["| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in ("exact", "faiss"):
        if f"big/{name}/p50" not in res:
            lines.append(f"| {name} | (faiss not installed) | | | | | | |")
            continue
        recall = f"{res['big/faiss/recall']:.3f}" if name == "faiss" else "1 (reference)"
        r = [res[f"big/{name}/{m}"] for m in ("p50", "p99", "learn/p50", "learn/p99", "wall99")]
        lines.append(f"| {name} | {res[f'big/{name}/build_s']:.1f} | " + " | ".join(f"{v:.3f}" for v in r) + f" | {recall} |")
    lines += ["", f"### learn_one, positives per CPU second (defaults: {TwoTowerRanker().n_negatives} sampled negatives each for the two-tower, {CTRRanker().n_negatives} for DeepFM)", ""]
    lines += ["| model | positives/s | vs river BiasedMF | wall-clock positives/s |", "| --- | ---: | ---: | ---: |"]
    base = res["learn/river BiasedMF"]
    for name in ("two-tower", "deepfm", "river BiasedMF"):
        v = res[f"learn/{name}"]
        lines.append(f"| {name} | {v:,.0f} | {v / base:.2f}x | {res[f'learn/{name}/wall']:,.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: small sizes, one run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--warmup", type=int, default=10_000, help="events learned before timing rank/recommend")
    parser.add_argument("--learn-events", type=int, default=5_000)
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.calls, args.items, args.warmup, args.learn_events = 1, 20, 25_000, 500, 250
    torch.set_num_threads(1)
    runs = []
    for r in range(args.runs):
        res = {}
        res.update(bench_rank_and_recommend(args, seed=r))
        res.update(bench_learn(args, seed=r))
        res.update(bench_big(args, seed=r))
        runs.append(res)
        print(f"run {r + 1}/{args.runs} done", file=sys.stderr, flush=True)
    res = _median_runs(runs)
    print(_table(res, args))
    return res


if __name__ == "__main__":
    main()
