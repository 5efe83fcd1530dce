"""Updaters: per-event cost against table size, and a learning-rate sweep of progressive LogLoss.

Run ``python benchmarks/bench_updaters.py`` (``--quick`` for a smoke run). Two markdown
tables are printed:

1. The median time of one ``learn_one`` of a DeepFM (``batch_size=1``, hashed embeddings)
   with a table of 2**10 and of 2**22 rows, for every updater of
   :mod:`river_torchrec.optim` and for ``torch.optim.Adam`` applied to the full table (the
   eager dense way). An updater that touches only the rows an event uses costs the same
   whatever the table size (ratio near 1); the dense baseline's cost grows with the table.
2. The progressive (predict, then learn) LogLoss and AUC of a DeepFM with each updater at a
   few learning rates, on ``SyntheticCTR`` and on the Criteo sample when ``--data`` holds
   it (numeric Criteo counts enter as ``sign(v) * log1p(|v|)``), and the best rate of each
   updater (lowest mean LogLoss over the datasets): the recommended defaults.
"""

from __future__ import annotations

import argparse
import inspect
import math
import pathlib
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import torch
from river import metrics
from sklearn.metrics import roc_auc_score

from river_torchrec import CTRClassifier, datasets, optim
from river_torchrec.optim import Updater

REPO = pathlib.Path(__file__).resolve().parents[1]

#: Learning rates of the sweep (FTRL's is alpha).
SWEEP = {
    "ogd": (0.0003, 0.001, 0.003, 0.01, 0.03),
    "osgd": (0.0003, 0.001, 0.003, 0.01, 0.03),
    "adam": (0.0003, 0.001, 0.003, 0.01),
    "adagrad": (0.003, 0.01, 0.02, 0.03, 0.1),
    "rowwise_adagrad": (0.003, 0.01, 0.02, 0.03, 0.1),
    "ftrl": (0.01, 0.03, 0.05, 0.1),
}

# The classifier log-scales numeric features itself when it can ("numeric" parameter);
# otherwise the benchmark does it, so heavy-tailed Criteo counts never enter raw.
_CLASSIFIER_LOGS = "numeric" in inspect.signature(CTRClassifier).parameters


def log_numeric(x: dict) -> dict:
    if _CLASSIFIER_LOGS:
        return x
    return {k: math.copysign(math.log1p(abs(v)), v) if isinstance(v, float) else v for k, v in x.items()}


class DenseTorchAdam(Updater):
    """``torch.optim.Adam`` on whole tensors: the table gets a dense gradient, zero off the batch.

    Only a baseline for the timing table: it steps every row of the table at every event,
    which is what an eager optimizer over an ``nn.Embedding`` weight does.
    """

    def __init__(self, lr: float = 0.001) -> None:
        super().__init__(lr=lr)
        self._optims: dict[str, tuple[int, torch.optim.Adam, torch.nn.Parameter]] = {}

    def _torch_step(self, name: str, tensor: torch.Tensor, grad: torch.Tensor, lr: float) -> None:
        entry = self._optims.get(name)
        if entry is None or entry[0] != tensor.data_ptr() or entry[2].shape != tensor.shape:
            # A parameter sharing the tensor's storage: the torch optimizer updates it in place.
            param = torch.nn.Parameter(tensor, requires_grad=False)
            entry = (tensor.data_ptr(), torch.optim.Adam([param], lr=lr), param)
            self._optims[name] = entry
        _, opt, param = entry
        param.grad = grad
        opt.step()

    def _dense_step(self, name: str, param: torch.Tensor, grad: torch.Tensor, lr: float) -> None:
        self._torch_step(name, param, grad, lr)

    def _sparse_step(self, name: str, table: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor, lr: float) -> None:
        full = torch.zeros_like(table)
        full[rows] = grad
        self._torch_step(name, table, full, lr)


UPDATERS: dict[str, Callable[[], Updater]] = {
    "ogd": optim.OGD,
    "osgd": optim.OSGD,
    "adam": optim.Adam,
    "adagrad": optim.Adagrad,
    "rowwise_adagrad": optim.RowWiseAdagrad,
    "ftrl": optim.FTRLProximal,
    "torch.optim.Adam, full table": DenseTorchAdam,
}


def time_learn_one(make: Callable[[], Updater], n_buckets: int, events: list, n_warm: int, n_timed: int) -> float:
    """Median seconds of one ``learn_one`` once the model and the updater's state are warm."""
    model = CTRClassifier(
        model="deepfm", embeddings="hash", n_buckets=n_buckets, batch_size=1, optimizer=make(), seed=1
    )
    for x, y in events[:n_warm]:
        model.learn_one(x, y)
    times = []
    for x, y in events[n_warm : n_warm + n_timed]:
        start = time.perf_counter()
        model.learn_one(x, y)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timing_table(args: argparse.Namespace) -> str:
    small, large = (2**10, 2**14) if args.quick else (2**10, 2**22)
    n_warm, n_timed, repeats = (50, 100, 2) if args.quick else (300, 1000, args.repeats)
    events = [(log_numeric(x), y) for x, y in datasets.SyntheticCTR(n_events=n_warm + n_timed, seed=7)]
    lines = [
        f"| updater | median µs/event, 2^{int(math.log2(small))} rows | median µs/event, "
        f"2^{int(math.log2(large))} rows | ratio |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, make in UPDATERS.items():
        dense = make is DenseTorchAdam
        # The dense baseline costs a pass over the whole table per event: fewer events do.
        warm, timed = (5, 20) if dense else (n_warm, n_timed)
        medians = {
            size: statistics.median(time_learn_one(make, size, events, warm, timed) for _ in range(repeats))
            for size in (small, large)
        }
        ratio = medians[large] / medians[small]
        lines.append(f"| {name} | {medians[small] * 1e6:,.0f} | {medians[large] * 1e6:,.0f} | {ratio:.2f} |")
        print(lines[-1], file=sys.stderr, flush=True)
    return "\n".join(lines)


def progressive(updater: Updater, stream: list) -> tuple[float, float] | int:
    """Progressive LogLoss and AUC of a DeepFM learning ``stream`` one event at a time.

    A run whose predictions stop being finite has diverged: the index of that event is
    returned instead.
    """
    model = CTRClassifier(model="deepfm", optimizer=updater, seed=1)
    logloss, probas, labels = metrics.LogLoss(), [], []
    for i, (x, y) in enumerate(stream):
        p = model.predict_proba_one(x)
        if not math.isfinite(p[True]):
            return i
        logloss.update(y, p)
        probas.append(p[True])
        labels.append(y)
        model.learn_one(x, y)
    return logloss.get(), roc_auc_score(labels, probas)


def sweep_table(args: argparse.Namespace) -> tuple[str, str]:
    n_synthetic = 500 if args.quick else args.events
    streams = {f"SyntheticCTR ({n_synthetic:,})": list(datasets.SyntheticCTR(n_events=n_synthetic, seed=1))}
    criteo_path = pathlib.Path(args.data) / "criteo_dac_head10k.csv.gz"
    if criteo_path.exists():
        criteo = list(datasets.Criteo(criteo_path))
        streams[f"Criteo sample ({(500 if args.quick else len(criteo)):,})"] = criteo[:500] if args.quick else criteo
    else:
        print(f"skipping Criteo: {criteo_path} not found")
    streams = {name: [(log_numeric(x), y) for x, y in s] for name, s in streams.items()}

    head = "| updater | lr | " + " | ".join(f"{n} LogLoss | {n} AUC" for n in streams) + " |"
    lines = [head, "|" + " --- |" * 2 + " ---: |" * (2 * len(streams))]
    best: dict[str, tuple[float, float]] = {}
    for name, rates in SWEEP.items():
        if args.updaters and name not in args.updaters:
            continue
        for lr in rates[1:2] if args.quick else rates:
            with warnings.catch_warnings():
                # Steps rejected for non-finite gradients warn once each; divergence is reported below.
                warnings.simplefilter("ignore", RuntimeWarning)
                scores = [progressive(optim.make_updater(name, lr=lr), s) for s in streams.values()]
            diverged = any(isinstance(score, int) for score in scores)
            mean_loss = math.inf if diverged else statistics.mean(loss for loss, _ in scores)
            if name not in best or mean_loss < best[name][1]:
                best[name] = (lr, mean_loss)
            cells = " | ".join(
                f"diverged at event {score:,} | -" if isinstance(score, int) else f"{score[0]:.4f} | {score[1]:.4f}"
                for score in scores
            )
            lines.append(f"| {name} | {lr:g} | {cells} |")
            print(lines[-1], file=sys.stderr, flush=True)
    ranked = sorted(best.items(), key=lambda kv: kv[1][1])
    summary = ["| updater | best lr | mean LogLoss |", "| --- | ---: | ---: |"]
    summary += [
        f"| {name} | {lr:g} | {loss:.4f} |" if math.isfinite(loss) else f"| {name} | - | diverged at every rate |"
        for name, (lr, loss) in ranked
    ]
    return "\n".join(lines), "\n".join(summary)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: small tables and streams")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="folder of the data samples")
    parser.add_argument("--events", type=int, default=20_000, help="SyntheticCTR events of the sweep")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (median taken)")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument(
        "--updaters", type=lambda s: s.split(","), default=None, help="comma-separated subset of the sweep"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)

    if not args.skip_timing:
        print("\n### Per-event learn_one time, DeepFM, hashed table (median of repeats)\n")
        print("\n" + timing_table(args))
    if not args.skip_sweep:
        print("\n### Progressive validation, DeepFM, one updater and learning rate per row\n")
        table, summary = sweep_table(args)
        print("\n" + table)
        print("\n### Best learning rate per updater (lowest mean LogLoss)\n")
        print(summary)


if __name__ == "__main__":
    main()
