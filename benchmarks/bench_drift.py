"""Learning-rate schedulers under concept drift: recovery speed, LogLoss and false alarms.

Run ``python benchmarks/bench_drift.py`` (``--quick`` for a smoke run, ``--seeds 5``,
``--events 30000``, ``--workers 2``, ``--data PATH``). Every scheduler of
:mod:`river_torchrec.optim.schedulers` with its defaults, plus ``DriftAwareLR`` without the
moment reset, drives a ``CTRClassifier(model="deepfm")`` (its default updater, one step
per event) under progressive validation (predict, then learn, on every event) on:

* ``SyntheticCTR`` with an abrupt drift, a gradual drift (``n_events // 10`` wide) and no
  drift, each at ``--seeds`` seeds (the seed of the stream and of the model). The drift is
  at the middle of the stream. The streams have few ids and strong effects
  (``n_users=200, n_items=50, positive_rate=0.3, interaction_scale=2``), so that the model
  learns the first concept well enough for the drift to matter: on the default
  ``SyntheticCTR`` (10% clicks, 1,000 users, 500 items) a DeepFM has learned so little of
  the drifting item and interaction effects after 15,000 events that the drift hardly
  moves its loss, and every scheduler looks the same.
* MovieLens 100K in time order (``rating >= 4`` is a positive), from ``--data`` when the
  files are there (default: ``<repo>/../shared/data``), one run per scheduler.

Per scheduler, the tables give means (LogLoss) or medians (event counts) over the seeds:

* ``LogLoss``: progressive LogLoss of the whole stream; ``vs Constant``: its mean relative
  difference from ``Constant`` on the same seeds.
* ``LogLoss 5k after``: over the 5,000 events that follow the drift point (the centre of a
  gradual drift).
* ``recovery``: events after the drift point until the 1,000-event rolling *excess* LogLoss
  (the model's loss minus the loss of the stream's true click probabilities, which
  ``SyntheticCTR.iter_with_proba`` gives) is back within 5% of the pre-drift LogLoss of its
  pre-drift level; both pre-drift figures are means over the 5,000 events before the drift
  starts. The excess is used rather than the LogLoss itself because the new concept has a
  Bayes LogLoss of its own: the raw LogLoss may never come back within 5% of its old level,
  or come back at once, whatever the model does (``raw recovery`` shows it, same rule on
  the raw LogLoss). A run that never recovers counts as the rest of the stream; how many
  did not is shown in brackets.
* ``alarms``: mean accepted alarms per run of the drift-aware schedulers; on the streams
  with drift, ``delay`` is the median number of events from the drift point to the first
  alarm at or after it (``-`` if none), and alarms before the drift start are false ones.

Torch uses one thread per process; ``--workers`` processes run the (stream, seed,
scheduler) jobs in parallel.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from river_torchrec import CTRClassifier, datasets
from river_torchrec.optim.schedulers import (
    Constant,
    CosineRestarts,
    DriftAwareLR,
    ExponentialDecay,
    InverseSqrt,
    Scheduler,
)

REPO = pathlib.Path(__file__).resolve().parents[1]

SCHEDULERS: dict[str, Callable[[], Scheduler]] = {
    "Constant": Constant,
    "InverseSqrt": InverseSqrt,
    "ExponentialDecay": ExponentialDecay,
    "CosineRestarts": CosineRestarts,
    "DriftAwareLR": DriftAwareLR,
    "DriftAwareLR (no reset)": lambda: DriftAwareLR(reset_moments=False),
}
DRIFTS = {"abrupt": "abrupt", "gradual": "gradual", "none": None}
STREAM = {"n_users": 200, "n_items": 50, "positive_rate": 0.3, "interaction_scale": 2.0}

WINDOW = 1_000  # rolling window of the recovery criterion
REFERENCE = 5_000  # pre-drift events of the reference level
AFTER = 5_000  # post-drift events of "LogLoss 5k after"
TOLERANCE = 0.05  # "within 5% of the pre-drift LogLoss"
EPS = 1e-15


def _log_loss(p: float, y: bool) -> float:
    p = min(max(p, EPS), 1 - EPS)
    return -math.log(p if y else 1.0 - p)


def _synthetic(drift: str, seed: int, n_events: int) -> datasets.SyntheticCTR:
    return datasets.SyntheticCTR(n_events=n_events, drift=DRIFTS[drift], seed=seed, **STREAM)


def run(job: tuple) -> dict:
    """One progressive-validation run; returns per-event losses and the scheduler's alarms."""
    stream, seed, name, n_events, model, data = job
    torch.set_num_threads(1)
    sched = SCHEDULERS[name]()
    clf = CTRClassifier(model=model, scheduler=sched, seed=seed)
    losses, oracle = [], []
    start = time.perf_counter()
    if stream == "movielens":
        events = ((x, y, None) for x, y in datasets.MovieLens100K(data))
    else:
        events = _synthetic(stream, seed, n_events).iter_with_proba()
    for i, (x, y, p) in enumerate(events):
        if i >= n_events:
            break
        losses.append(_log_loss(clf.predict_proba_one(x)[True], y))
        if p is not None:
            oracle.append(_log_loss(p, y))
        clf.learn_one(x, y)
    return {
        "job": (stream, seed, name),
        "loss": np.asarray(losses),
        "oracle": np.asarray(oracle) if oracle else None,
        "drifts": list(getattr(sched, "drifts_", [])),
        "seconds": time.perf_counter() - start,
    }


def _rolling(values: np.ndarray, window: int) -> np.ndarray:
    """``out[j]`` is the mean of ``values[j : j + window]``."""
    c = np.concatenate([[0.0], np.cumsum(values)])
    return (c[window:] - c[:-window]) / window


def recovery(signal: np.ndarray, loss: np.ndarray, point: int, start: int) -> tuple[int, bool]:
    """Events after ``point`` until the rolling ``signal`` is back within tolerance.

    The reference level of ``signal`` and the LogLoss that sets the tolerance are means
    over the ``REFERENCE`` events before ``start`` (the first event of the drift).
    Returns the count and whether the stream ended first.
    """
    ref = signal[start - REFERENCE : start].mean()
    tol = TOLERANCE * loss[start - REFERENCE : start].mean()
    after = _rolling(signal[point:], WINDOW)  # after[j]: events point + j .. point + j + W - 1
    hits = np.flatnonzero(after <= ref + tol)
    if len(hits):
        return int(hits[0]) + WINDOW, False
    return len(signal) - point, True


def drift_window(stream: str, n_events: int) -> tuple[int, int]:
    """(drift point, first event of the drift) of a synthetic stream."""
    ds = _synthetic(stream, 0, n_events)
    point = ds.drift_points[0]
    start = point - ds.drift_width // 2 if stream == "gradual" else point
    return point, start


def _fmt_events(values: list[tuple[int, bool]]) -> str:
    """Median event count, with how many runs never recovered (counted as the rest of the stream)."""
    med = statistics.median(v for v, _ in values)
    censored = sum(c for _, c in values)
    return f"{med:,.0f}" + (f" ({censored} never)" if censored else "")


def synthetic_table(stream: str, results: list[dict], n_events: int, seeds: list[int]) -> str:
    by = {r["job"]: r for r in results}
    names = [n for n in SCHEDULERS if (stream, seeds[0], n) in by]
    drifting = stream != "none"
    if drifting:
        point, start = drift_window(stream, n_events)
        head = (
            "| scheduler | LogLoss | vs Constant | LogLoss 5k after | recovery | raw recovery "
            "| alarms | false alarms | delay |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|"
        )
    else:
        head = "| scheduler | LogLoss | vs Constant | false alarms |\n|---|---:|---:|---:|"
    rows = [head]
    for name in names:
        runs = [by[(stream, s, name)] for s in seeds]
        base = [by[(stream, s, "Constant")] for s in seeds]
        ll = statistics.mean(r["loss"].mean() for r in runs)
        rel = statistics.mean(r["loss"].mean() / b["loss"].mean() - 1 for r, b in zip(runs, base))
        aware = name.startswith("DriftAwareLR")
        if not drifting:
            alarms = f"{statistics.mean(len(r['drifts']) for r in runs):.1f}" if aware else "-"
            rows.append(f"| {name} | {ll:.4f} | {rel:+.2%} | {alarms} |")
            continue
        after = statistics.mean(r["loss"][point : point + AFTER].mean() for r in runs)
        rec = [recovery(r["loss"] - r["oracle"], r["loss"], point, start) for r in runs]
        raw = [recovery(r["loss"], r["loss"], point, start) for r in runs]
        if aware:
            alarms = f"{statistics.mean(len(r['drifts']) for r in runs):.1f}"
            false = f"{statistics.mean(sum(d < start for d in r['drifts']) for r in runs):.1f}"
            delays = [min((d - point for d in r["drifts"] if d >= point), default=None) for r in runs]
            found = [d for d in delays if d is not None]
            delay = f"{statistics.median(found):,.0f} ({len(found)}/{len(runs)})" if found else "-"
        else:
            alarms = false = delay = "-"
        rows.append(
            f"| {name} | {ll:.4f} | {rel:+.2%} | {after:.4f} | {_fmt_events(rec)} | "
            f"{_fmt_events(raw)} | {alarms} | {false} | {delay} |"
        )
    return "\n".join(rows)


def movielens_table(results: list[dict]) -> str:
    by = {r["job"][2]: r for r in results if r["job"][0] == "movielens"}
    rows = ["| scheduler | LogLoss | vs Constant | alarms |", "|---|---:|---:|---:|"]
    base = by["Constant"]["loss"].mean()
    for name, r in by.items():
        ll = r["loss"].mean()
        alarms = str(len(r["drifts"])) if name.startswith("DriftAwareLR") else "-"
        rows.append(f"| {name} | {ll:.4f} | {ll / base - 1:+.2%} | {alarms} |")
    return "\n".join(rows)


def summary(results: list[dict], n_events: int, seeds: list[int]) -> str:
    """The acceptance figures of the drift-aware defaults against Constant."""
    by = {r["job"]: r for r in results}
    point, start = drift_window("abrupt", n_events)

    def med_recovery(name: str) -> float:
        r = [by[("abrupt", s, name)] for s in seeds]
        return statistics.median(recovery(x["loss"] - x["oracle"], x["loss"], point, start)[0] for x in r)

    const, aware = med_recovery("Constant"), med_recovery("DriftAwareLR")
    stationary = statistics.mean(
        by[("none", s, "DriftAwareLR")]["loss"].mean() / by[("none", s, "Constant")]["loss"].mean() - 1
        for s in seeds
    )
    return (
        f"DriftAwareLR defaults vs Constant: median recovery after the abrupt drift "
        f"{aware:,.0f} vs {const:,.0f} events ({1 - aware / const:.0%} faster); "
        f"LogLoss on the stationary stream {stationary:+.2%}."
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short streams, one seed")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--events", type=int, default=30_000, help="events per synthetic stream")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--model", default="deepfm")
    default_data = REPO.parent / "shared" / "data"
    parser.add_argument("--data", type=pathlib.Path, default=default_data if default_data.exists() else None)
    args = parser.parse_args(argv)

    n_events, seeds, ml_events = args.events, list(range(args.seeds)), 100_000
    if args.quick:
        n_events, seeds, ml_events = 12_000, [0], 5_000
    if n_events < 2 * (REFERENCE + WINDOW):
        parser.error(f"--events must be at least {2 * (REFERENCE + WINDOW)}")

    jobs = []
    movielens = None
    if args.data is not None:
        try:
            datasets.MovieLens100K(args.data)
            movielens = args.data
        except FileNotFoundError as e:
            print(f"MovieLens 100K skipped: {e}", file=sys.stderr)
    if movielens is not None:
        # The longest jobs first, so that the pool ends together.
        jobs += [("movielens", 0, name, ml_events, args.model, movielens) for name in SCHEDULERS]
    jobs += [
        (stream, seed, name, n_events, args.model, None)
        for stream in DRIFTS
        for seed in seeds
        for name in SCHEDULERS
    ]

    start = time.perf_counter()
    results = []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for i, res in enumerate(pool.map(run, jobs), 1):
            results.append(res)
            print(f"[{i}/{len(jobs)}] {res['job']} {res['seconds']:.0f}s", file=sys.stderr, flush=True)
    wall = time.perf_counter() - start

    updater = CTRClassifier(model=args.model).updater
    print(
        f"`CTRClassifier(model={args.model!r})` with {type(updater).__name__}(lr={updater.lr}), "
        f"SyntheticCTR({n_events:,} events, {STREAM}), "
        f"seeds {seeds}; torch {torch.__version__}, {args.workers} worker(s), wall {wall / 60:.1f} min\n"
    )
    for stream in DRIFTS:
        print(f"### SyntheticCTR, drift={DRIFTS[stream]!r}\n")
        print(synthetic_table(stream, results, n_events, seeds))
        print()
    if movielens is not None:
        print(f"### MovieLens 100K, time order, first {ml_events:,} ratings, model seed 0\n")
        print(movielens_table(results))
        print()
    print(summary(results, n_events, seeds))


if __name__ == "__main__":
    main()
