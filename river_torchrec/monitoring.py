"""Calibration and per-segment monitoring of a live CTR model: ECE, reliability diagrams, rolling metrics.

A model can rank well (high AUC) and still mislead a bidder by predicting 8% where 4% click,
or serve one device or user group much worse than the rest. This module measures that from
stored ``(label, prediction)`` pairs, with exact metrics only (scikit-learn's
``roc_auc_score`` on the stored predictions, never a streaming approximation):

* :func:`expected_calibration_error` and :func:`reliability_table`: predictions binned by
  value (``"uniform"``) or into equal-count bins (``"quantile"``, better with rare clicks,
  where uniform bins above 0.3 are nearly empty);
* :func:`plot_reliability`: the reliability diagram (predicted vs observed click rate per
  bin, with the bins' counts) as a PNG;
* :func:`segment_report`: events, click rate, mean prediction, LogLoss, AUC and ECE per value
  of a segment field (device, user group...), so unfairness or drift on one segment shows;
* :class:`RollingMonitor`: fed one event at a time, it writes the metrics of the trailing
  window (overall and per segment) every ``every`` events to a CSV file and, if the
  optional ``tensorboard`` package is installed, to TensorBoard.

Examples
--------
>>> import numpy as np
>>> from river_torchrec.monitoring import expected_calibration_error, segment_report
>>> y = np.array([0, 0, 1, 1, 0, 1, 0, 0])
>>> p = np.array([0.1, 0.2, 0.8, 0.7, 0.3, 0.9, 0.2, 0.6])
>>> round(expected_calibration_error(y, p, n_bins=2), 4)
0.1
>>> report = segment_report(y, p, ["ios", "ios", "ios", "web", "web", "web", "web", "web"])
>>> report[["segment", "events", "clicks", "auc"]].to_dict("records")
[{'segment': 'web', 'events': 5, 'clicks': 2, 'auc': 1.0}, {'segment': 'ios', 'events': 3, 'clicks': 1, 'auc': 1.0}]

"""

from __future__ import annotations

import collections
import csv
import math
import os
import pathlib
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "RollingMonitor",
    "expected_calibration_error",
    "log_loss",
    "plot_reliability",
    "reliability_table",
    "roc_auc",
    "segment_report",
]

_STRATEGIES = ("uniform", "quantile")


def _arrays(y: Any, p: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=float).ravel()
    p = np.asarray(p, dtype=float).ravel()
    if len(y) != len(p):
        raise ValueError(f"y has {len(y)} labels but p has {len(p)} predictions")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0/1 or bool")
    if not np.all((p >= 0) & (p <= 1)):
        raise ValueError("predictions must be probabilities in [0, 1] (NaN is not one)")
    return y, p


def log_loss(y: Any, p: Any) -> float:
    """Mean binary log loss, predictions clipped to [1e-15, 1 - 1e-15] as river and scikit-learn do."""
    y, p = _arrays(y, p)
    if not len(y):
        return float("nan")
    p = np.clip(p, 1e-15, 1 - 1e-15)
    return float(np.mean(np.where(y == 1, -np.log(p), -np.log1p(-p))))


def roc_auc(y: Any, p: Any) -> float:
    """Exact ROC AUC (scikit-learn's), NaN when only one class is present."""
    from sklearn.metrics import roc_auc_score

    y, p = _arrays(y, p)
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, p))


def _bin_edges(p: np.ndarray, n_bins: int, strategy: str) -> np.ndarray:
    if not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    if strategy not in _STRATEGIES:
        raise ValueError(f"strategy must be one of {_STRATEGIES}, got {strategy!r}")
    if strategy == "uniform" or not len(p):
        return np.linspace(0.0, 1.0, n_bins + 1)
    edges = np.unique(np.quantile(p, np.linspace(0.0, 1.0, n_bins + 1)))
    edges[0], edges[-1] = 0.0, 1.0
    return edges


def reliability_table(y: Any, p: Any, n_bins: int = 10, strategy: str = "uniform") -> pd.DataFrame:
    """One row per non-empty bin: ``lower``, ``upper``, ``events``, ``mean_predicted``, ``observed_rate``.

    A prediction on an inner edge goes to the bin above; 1.0 goes to the last bin.
    """
    y, p = _arrays(y, p)
    edges = _bin_edges(p, n_bins, strategy)
    index = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, len(edges) - 2)
    rows = []
    for b in range(len(edges) - 1):
        mask = index == b
        if mask.any():
            rows.append((edges[b], edges[b + 1], int(mask.sum()), float(p[mask].mean()), float(y[mask].mean())))
    return pd.DataFrame(rows, columns=["lower", "upper", "events", "mean_predicted", "observed_rate"])


def expected_calibration_error(y: Any, p: Any, n_bins: int = 10, strategy: str = "uniform") -> float:
    """ECE: the event-weighted mean over bins of ``|mean predicted - observed click rate|``.

    0 for a calibrated model; NaN for no events.
    """
    table = reliability_table(y, p, n_bins, strategy)
    if not len(table):
        return float("nan")
    gap = (table["mean_predicted"] - table["observed_rate"]).abs()
    return float((gap * table["events"]).sum() / table["events"].sum())


def plot_reliability(
    y: Any,
    p: Any,
    path: str | os.PathLike,
    n_bins: int = 10,
    strategy: str = "quantile",
    title: str | None = None,
    groups: dict[str, tuple[Any, Any]] | None = None,
    label: str = "all events",
) -> None:
    """Write the reliability diagram of ``p`` (named ``label``) and of each ``groups`` entry
    (name -> ``(y, p)``: segments, other models) to a PNG, with the events per bin below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {label: (y, p), **(groups or {})}
    fig, (ax, ax_n) = plt.subplots(2, 1, figsize=(6.5, 7), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    top = 0.0
    for name, (gy, gp) in curves.items():
        table = reliability_table(gy, gp, n_bins, strategy)
        ece = expected_calibration_error(gy, gp, n_bins, strategy)
        ax.plot(table["mean_predicted"], table["observed_rate"], marker="o", lw=1.5, label=f"{name}: ECE {ece:.4f}")
        ax_n.plot(table["mean_predicted"], table["events"], marker=".", lw=1.0)
        top = max(top, float(table[["mean_predicted", "observed_rate"]].to_numpy().max(initial=0.0)))
    top = min(1.0, top * 1.1 + 0.01)
    ax.plot([0, top], [0, top], color="black", ls="--", lw=1.0, label="perfect calibration")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_ylabel("observed click rate")
    ax.set_title(title or f"Reliability diagram ({strategy} bins, {n_bins})", fontsize=11)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(True, alpha=0.3)
    ax_n.set_ylabel("events per bin")
    ax_n.set_xlabel("mean predicted click probability")
    ax_n.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def segment_report(
    y: Any, p: Any, segments: Sequence[Hashable], n_bins: int = 10, strategy: str = "quantile"
) -> pd.DataFrame:
    """Per value of ``segments`` (one per event; None is its own segment): metrics of its events.

    Columns: ``segment``, ``events``, ``clicks``, ``click_rate``, ``mean_predicted``,
    ``logloss``, ``auc`` (exact, NaN with one class), ``ece``; largest segments first.
    """
    y, p = _arrays(y, p)
    segments = list(segments)
    if len(segments) != len(y):
        raise ValueError(f"y has {len(y)} labels but segments has {len(segments)} values")
    codes, uniques = pd.factorize(pd.Series(segments, dtype=object), use_na_sentinel=False)
    rows = []
    for k, value in enumerate(uniques):
        mask = codes == k
        sy, sp = y[mask], p[mask]
        rows.append({
            "segment": value,
            "events": int(mask.sum()),
            "clicks": int(sy.sum()),
            "click_rate": float(sy.mean()),
            "mean_predicted": float(sp.mean()),
            "logloss": log_loss(sy, sp),
            "auc": roc_auc(sy, sp),
            "ece": expected_calibration_error(sy, sp, n_bins, strategy),
        })
    out = pd.DataFrame(rows, columns=["segment", "events", "clicks", "click_rate", "mean_predicted", "logloss", "auc", "ece"])
    return out.sort_values("events", ascending=False, kind="stable").reset_index(drop=True)


class RollingMonitor:
    """Metrics of the trailing ``window`` events, written every ``every`` events to CSV / TensorBoard.

    Each row of the CSV holds ``event`` (events seen so far), ``segment`` (``"*"`` for all
    events, else a segment value with at least one event in the window), ``events``,
    ``click_rate``, ``mean_predicted``, ``logloss``, ``auc`` and ``ece`` of the window.
    The file is flushed after every write, so a crashed run keeps what it wrote.

    Parameters
    ----------
    csv_path
        Where to write the CSV (None: no CSV; :attr:`rows` still collects the rows).
    window
        Trailing events the metrics cover.
    every
        Events between two writes.
    n_bins, strategy
        Bins of the windows' ECE.
    tensorboard_dir
        A TensorBoard log directory (``torch.utils.tensorboard``; needs the ``tensorboard``
        package): scalars ``logloss/<segment>``, ``auc/<segment>``, ``ece/<segment>``.
    max_segments
        Segments written per row, the most frequent in the window first.

    Examples
    --------
    >>> from river_torchrec.monitoring import RollingMonitor
    >>> monitor = RollingMonitor(window=4, every=4)
    >>> for y, p, s in [(0, .1, "a"), (1, .8, "b"), (0, .3, "a"), (1, .6, "a"), (0, .2, "b")]:
    ...     monitor.update(y, p, s)
    >>> [(r["event"], r["segment"], r["events"], r["auc"]) for r in monitor.rows]
    [(4, '*', 4, 1.0), (4, 'a', 3, 1.0), (4, 'b', 1, nan)]

    """

    FIELDS = ("event", "segment", "events", "click_rate", "mean_predicted", "logloss", "auc", "ece")

    def __init__(
        self,
        csv_path: str | os.PathLike | None = None,
        window: int = 1000,
        every: int = 1000,
        n_bins: int = 10,
        strategy: str = "quantile",
        tensorboard_dir: str | os.PathLike | None = None,
        max_segments: int = 20,
    ) -> None:
        for name, value in (("window", window), ("every", every), ("max_segments", max_segments)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if strategy not in _STRATEGIES:
            raise ValueError(f"strategy must be one of {_STRATEGIES}, got {strategy!r}")
        self.window, self.every, self.n_bins, self.strategy = window, every, n_bins, strategy
        self.max_segments = max_segments
        self._events: collections.deque = collections.deque(maxlen=window)
        self.n_seen = 0
        self.rows: list[dict] = []
        self._file = self._csv = None
        if csv_path is not None:
            path = pathlib.Path(csv_path)
            self._file = path.open("w", newline="")
            self._csv = csv.DictWriter(self._file, fieldnames=self.FIELDS)
            self._csv.writeheader()
            self._file.flush()
        self._tb = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError(
                    "tensorboard_dir needs the optional 'tensorboard' package (pip install tensorboard); "
                    f"without it, use csv_path ({e})"
                ) from None
            self._tb = SummaryWriter(log_dir=str(tensorboard_dir))

    def update(self, y: Any, p: float, segment: Hashable = None) -> None:
        """Record one event's label and the prediction made before it was learned."""
        y = float(y)
        p = float(p)
        if y not in (0.0, 1.0):
            raise ValueError(f"label must be 0/1 or bool, got {y!r}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"prediction must be a probability in [0, 1], got {p!r}")
        self._events.append((y, p, segment))
        self.n_seen += 1
        if self.n_seen % self.every == 0:
            self.write()

    def _metrics(self, y: np.ndarray, p: np.ndarray) -> dict:
        return {
            "events": len(y),
            "click_rate": float(y.mean()),
            "mean_predicted": float(p.mean()),
            "logloss": log_loss(y, p),
            "auc": roc_auc(y, p),
            "ece": expected_calibration_error(y, p, self.n_bins, self.strategy),
        }

    def write(self) -> None:
        """Write the current window's rows now (``update`` calls it every ``every`` events)."""
        if not self._events:
            return
        y = np.fromiter((e[0] for e in self._events), dtype=float, count=len(self._events))
        p = np.fromiter((e[1] for e in self._events), dtype=float, count=len(self._events))
        rows = [{"event": self.n_seen, "segment": "*", **self._metrics(y, p)}]
        segs = [e[2] for e in self._events]
        if any(s is not None for s in segs):
            counts = collections.Counter(segs)
            for value, _ in counts.most_common(self.max_segments):
                mask = np.fromiter((s == value for s in segs), dtype=bool, count=len(segs))
                rows.append({"event": self.n_seen, "segment": value, **self._metrics(y[mask], p[mask])})
        self.rows.extend(rows)
        if self._csv is not None:
            self._csv.writerows(rows)
            self._file.flush()
        if self._tb is not None:
            for row in rows:
                for metric in ("logloss", "auc", "ece"):
                    if not math.isnan(row[metric]):
                        self._tb.add_scalar(f"{metric}/{row['segment']}", row[metric], self.n_seen)
            self._tb.flush()

    def close(self) -> None:
        """Close the CSV file and the TensorBoard writer."""
        if self._file is not None:
            self._file.close()
            self._file = self._csv = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> RollingMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _markdown(frame: pd.DataFrame) -> str:
    cells = [[str(c) for c in frame.columns]] + [
        [f"{v:.4f}" if isinstance(v, float) else str(v) for v in row] for row in frame.itertuples(index=False)
    ]
    widths = [max(len(r[k]) for r in cells) for k in range(len(cells[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def cli_report(args: Any, results: Sequence[Any], dataset: Any) -> None:
    """The monitoring part of ``river-torchrec evaluate``: ``--calibration``, ``--segment``, ``--metrics-csv``.

    ``results`` are the command's :class:`~river_torchrec.cli.EvaluationResult` s (labels and
    predictions of every event); the segment values are read again from ``dataset``.
    """
    if not results:
        return
    n = results[0].n_events
    segments = None
    if args.segment is not None:
        segments = []
        for x, _ in dataset:
            if len(segments) >= n:
                break
            segments.append(x.get(args.segment))
        if all(s is None for s in segments):
            print(f"note: no event has the field {args.segment!r}; every event is in the segment None")
    bins = args.calibration_bins
    for r in results:
        ece = expected_calibration_error(r.y, r.proba, bins, "quantile")
        print(f"\n{r.name}: expected calibration error {ece:.4f} ({bins} equal-count bins), "
              f"mean prediction {r.proba.mean():.4f} vs click rate {r.y.mean():.4f}")
        if segments is not None:
            report = segment_report(r.y, r.proba, segments, bins, "quantile")
            shown = report.head(args.max_segments)
            print(f"\nper {args.segment!r} (largest {len(shown)} of {len(report)} segments):\n")
            print(_markdown(shown))
    if args.calibration is not None:
        groups = {r.name: (r.y, r.proba) for r in results}
        first = next(iter(groups))
        y, p = groups.pop(first)
        plot_reliability(y, p, args.calibration, bins, "quantile",
                         title=f"Reliability diagram, {n:,} progressive predictions", groups=groups, label=first)
        print(f"reliability diagram written to {args.calibration}")
    if args.metrics_csv is not None or args.tensorboard is not None:
        path = None if args.metrics_csv is None else pathlib.Path(args.metrics_csv)
        for r in results:
            target = path
            if path is not None and len(results) > 1:
                target = path.with_name(f"{path.stem}.{r.name}{path.suffix}")
            with RollingMonitor(target, window=args.window, every=max(1, args.window // 5), n_bins=bins,
                                tensorboard_dir=None if args.tensorboard is None else pathlib.Path(args.tensorboard) / r.name) as mon:
                segs = segments if segments is not None else [None] * n
                for y, p, s in zip(r.y.tolist(), r.proba.tolist(), segs):
                    mon.update(y, p, s)
                if mon.n_seen % mon.every:
                    mon.write()
            print(f"rolling metrics written to {target or args.tensorboard}")
