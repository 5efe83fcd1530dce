"""Robustness: how much flipped labels and corrupted numbers cost, with and without the defenses.

Run ``python benchmarks/bench_noise.py`` (``--quick`` for a smoke run). Two markdown tables:

1. Progressive validation (``predict_proba_one``, then ``learn_one``) of a DeepFM on
   ``SyntheticCTR`` twice: on the clean stream, and on a corrupted copy where 5% of the
   labels are flipped and 1% of the numeric values are multiplied by 1e6 (both seeded).
   Both runs are scored against the *clean* labels, so the degradation (noisy LogLoss minus
   clean LogLoss) is what the corruption did to the model, not the noise in the scoring.
   Rows: the undefended estimator (``numeric="raw"``, no clipping), the defaults
   (``numeric="log"``), and the optional defenses (``clip_numeric``, an updater with
   ``clip_norm``). The last column is the degradation as a share of the undefended one.
   (Measured: the log transform of the defaults, and ``clip_numeric`` on raw inputs, cut the
   degradation to a few percent of the undefended one; ``clip_norm`` helps raw inputs less
   and hurts the clean run, because with a 10% click rate it shrinks the large gradients of
   the positives more than those of the negatives.)
2. The cost of the numeric guard of every step (rollback of non-finite steps): the median
   CPU time of one ``learn_one`` (DeepFM, ``batch_size=1``, one thread, on the torch path,
   where the guard lives; the NumPy twin's own time is the last row) with the guard,
   with the test it replaced (finiteness of loss and gradients, no rollback), and with no
   test at all, over interleaved chunks of the same stream.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from sklearn.metrics import log_loss, roc_auc_score

import river_torchrec.classifier as classifier_module
from river_torchrec import CTRClassifier, datasets, optim

FLIP_RATE = 0.05
OUTLIER_RATE = 0.01
OUTLIER_FACTOR = 1e6

CONFIGS: list[tuple[str, Callable[[], dict]]] = [
    ("undefended: numeric='raw'", lambda: {"numeric": "raw"}),
    ("numeric='raw', clip_numeric=10", lambda: {"numeric": "raw", "clip_numeric": 10.0}),
    ("numeric='raw', Adam(clip_norm=10)", lambda: {"numeric": "raw", "optimizer": optim.Adam(clip_norm=10.0)}),
    ("defaults: numeric='log'", lambda: {}),
    ("numeric='log', clip_numeric=10", lambda: {"clip_numeric": 10.0}),
    ("numeric='log', Adam(clip_norm=10)", lambda: {"optimizer": optim.Adam(clip_norm=10.0)}),
]


def corrupt(stream: list, seed: int) -> list:
    """Flip ``FLIP_RATE`` of the labels; multiply ``OUTLIER_RATE`` of the numbers by ``OUTLIER_FACTOR``."""
    rng = random.Random(seed)
    out = []
    for x, y in stream:
        x = {k: v * OUTLIER_FACTOR if isinstance(v, float) and rng.random() < OUTLIER_RATE else v for k, v in x.items()}
        out.append((x, (not y) if rng.random() < FLIP_RATE else y))
    return out


def progressive(params: dict, stream: list, model: str) -> list[float]:
    clf = CTRClassifier(model=model, seed=1, **params)
    preds = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for x, y in stream:
            preds.append(clf.predict_proba_one(x)[True])
            clf.learn_one(x, y)
    return preds


def quality_table(n_events: int, model: str) -> None:
    clean = list(datasets.SyntheticCTR(n_events=n_events, seed=7))
    noisy = corrupt(clean, seed=0)
    labels = [y for _, y in clean]
    print(f"\n### {model}: {n_events:,} events, {FLIP_RATE:.0%} labels flipped, "
          f"{OUTLIER_RATE:.0%} of numeric values x {OUTLIER_FACTOR:g} (scored on the clean labels)\n")
    print("| configuration | clean LogLoss | corrupted LogLoss | degradation | share of undefended | clean AUC | corrupted AUC |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    base = None
    for name, params in CONFIGS:
        p_clean = progressive(params(), clean, model)
        p_noisy = progressive(params(), noisy, model)
        ll_clean, ll_noisy = log_loss(labels, p_clean), log_loss(labels, p_noisy)
        degradation = ll_noisy - ll_clean
        base = degradation if base is None else base
        print(
            f"| {name} | {ll_clean:.4f} | {ll_noisy:.4f} | {degradation:+.4f} | {degradation / base:.0%} "
            f"| {roc_auc_score(labels, p_clean):.4f} | {roc_auc_score(labels, p_noisy):.4f} |",
            flush=True,
        )


class _PreviousTest:
    """The test the guard replaced: finite loss and gradients, checked, nothing to undo."""

    def __init__(self, updater, dense, sparse) -> None:
        grads = [d.grad for d in dense] + [s.grad for s in sparse]
        self._ok = all(bool(torch.isfinite(g).all()) for g in grads)

    def ok(self) -> bool:
        return self._ok

    def restore(self) -> None:
        pass


class _NoTest(_PreviousTest):
    def __init__(self, updater, dense, sparse) -> None:
        self._ok = True


def cost_table(n_chunks: int, chunk: int) -> None:
    # StepGuard guards the torch path; the NumPy twin that one-event CPU steps take by
    # default computes each step out of place and writes it only when it is finite, so it
    # has no guard to swap. The guard rows force the torch path; the last row is the twin.
    twin = "NumPy twin (the default here: out-of-place step, written only when finite)"
    guards = {
        "numeric guard (test + exact rollback)": classifier_module.StepGuard,
        "previous test (loss and gradients, no rollback)": _PreviousTest,
        "no test": _NoTest,
        twin: classifier_module.StepGuard,
    }
    stream = list(datasets.SyntheticCTR(n_events=500 + n_chunks * chunk, seed=1))
    models = {}
    for name, guard in guards.items():
        classifier_module.StepGuard = guard
        models[name] = CTRClassifier(model="deepfm", seed=1)
        models[name]._use_numpy = name == twin
        for x, y in stream[:500]:
            models[name].learn_one(x, y)
    times: dict[str, list[float]] = {name: [] for name in guards}
    try:
        for i in range(n_chunks):
            events = stream[500 + i * chunk : 500 + (i + 1) * chunk]
            order = list(guards) if i % 2 == 0 else list(reversed(guards))
            for name in order:
                classifier_module.StepGuard = guards[name]
                start = time.process_time()
                for x, y in events:
                    models[name].learn_one(x, y)
                times[name].append((time.process_time() - start) / chunk * 1e6)
    finally:
        classifier_module.StepGuard = guards["numeric guard (test + exact rollback)"]
    previous = statistics.median(times["previous test (loss and gradients, no rollback)"])
    print(
        f"\n### Cost of the numeric guard: DeepFM learn_one, batch_size=1, torch path, median of {n_chunks} "
        f"chunks of {chunk}\n"
    )
    print("| step test | learn_one (µs CPU) | vs previous test |")
    print("|---|---:|---:|")
    for name in guards:
        t = statistics.median(times[name])
        print(f"| {name} | {t:.0f} | {t / previous - 1:+.1%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-events", type=int, default=30_000)
    parser.add_argument("--model", default="deepfm")
    parser.add_argument("--quick", action="store_true", help="3,000 events and fewer timing chunks")
    args = parser.parse_args()
    torch.set_num_threads(1)
    n_events = 3_000 if args.quick else args.n_events
    quality_table(n_events, args.model)
    cost_table(n_chunks=6 if args.quick else 30, chunk=200)


if __name__ == "__main__":
    main()
