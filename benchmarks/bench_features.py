"""Progressive LogLoss and ROC AUC of DeepFM on raw features vs feature pipelines.

Run ``python benchmarks/bench_features.py`` (``--quick``: 1,000 events per dataset, for a smoke
run). For each stream (``SyntheticCTR(n_events=50_000, drift="abrupt", seed=42)``, always there,
and the Criteo, Avazu and MovieLens-100K samples found under ``--data``), it runs
``CTRClassifier(model="deepfm", seed=42)`` on the raw events ("raw") and behind a few river
pipelines of :mod:`river_torchrec.features` transformers, with progressive validation: on every
event ``predict_proba_one`` and then ``learn_one``. It prints, per stream, a markdown table of
events/s (one run, wall clock of the whole loop, transformers included), progressive LogLoss
(clipped at 1e-15, as river clips), exact ROC AUC (``sklearn.metrics.roc_auc_score`` on the
stored predictions) and the LogLoss difference with the raw row, then the exact pipeline of
each row.

Progressive validation of a pipeline is leakage-free with river 0.26's ``Pipeline``:
``predict_proba_one`` only calls ``transform_one`` on the transformers, and ``learn_one``
transforms each *supervised* step (``DecayedCTREncoder``, and ``FrequencyFilter``,
``TimeContext`` and ``QuantileBinner``, which report ``_supervised = True`` for this reason)
before learning it, so the model learns from the very features it predicted with and no
encoder sees the current label before the prediction. The other steps are stateless.
``compose.learn_during_predict()`` is not used: it is a class-wide switch, and the default is
what users get.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import itertools
import os
import pathlib
import platform
import shlex
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from river import compose

from river_torchrec import CTRClassifier, datasets
from river_torchrec.features import (
    DecayedCTREncoder,
    FeatureCrosser,
    FrequencyFilter,
    LogBucketizer,
    QuantileBinner,
    TimeContext,
)

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from peers.scores import auc, logloss  # noqa: E402
DATASETS = ("synthetic", "criteo", "avazu", "movielens")
QUICK_EVENTS = 1_000
SYNTHETIC_EVENTS = 50_000

# Synthetic stream: the numeric fields, and the two interactions its click model is built from
# (documented in SyntheticCTR's docstring), so the crosses are oracle knowledge there.
SYN_NUMERIC = ("price", "user_activity", "item_age_days", "position_score")
SYN_PAIRS = (("user_segment", "item_category"), ("device", "ad_position"))

# Criteo: 13 integer counts and 26 anonymised hashed categoricals.
CRITEO_INT = tuple(f"I{i}" for i in range(1, 14))
CRITEO_CAT = tuple(f"C{i}" for i in range(1, 27))
# The fields are anonymised, so "plausible" pairs can only be chosen by cardinality: these six
# fields have at most 24 distinct values in the sample, so their crosses repeat often enough to
# be learned from 10k events.
CRITEO_PAIRS = (("C6", "C14"), ("C9", "C17"), ("C20", "C23"))
# The three fields with the most distinct values in the sample (about 5,000 each in 9,999
# rows): an embedding row sees too few events to learn, a smoothed CTR needs fewer.
CRITEO_CTR = ("C3", "C12", "C21")

# Avazu: the sample is a single hour, so hour, hour_of_day and weekday are constant and the
# hour crosses of the issue would be constant too; placement, ad and device crosses instead.
AVAZU_PAIRS = (
    ("site_id", "app_id"),
    ("banner_pos", "site_category", "app_category"),
    ("device_type", "device_conn_type", "C1"),
)
AVAZU_CTR = ("device_ip", "device_model", "site_id", "app_id")
# Fields with over 100 distinct values in the sample.
AVAZU_RARE = (
    "site_id",
    "site_domain",
    "app_id",
    "device_id",
    "device_ip",
    "device_model",
    "C14",
    "C17",
    "C20",
)

# MovieLens: time context from the timestamp, whose raw value is then discarded (TimeContext keeps
# it, and as a numeric feature it only grows); the gaps in seconds are heavy-tailed counts.
ML_GAPS = ("secs_since_user", "secs_since_item")
ML_PAIRS = (
    ("user_id", "genres"),
    ("occupation", "item_id"),
    ("gender", "genres"),
    ("age", "genres"),  # age is a quantile bin by then
)


def cross_names(pairs: Iterable[tuple[str, ...]]) -> tuple[str, ...]:
    return FeatureCrosser(list(pairs)).crossed_names


# ------------------------------------------------------------------ rows


def classifier(seed: int) -> CTRClassifier:
    return CTRClassifier(model="deepfm", seed=seed)


def pipe(*steps: Any) -> Any:
    return compose.Pipeline(*steps)


def _synthetic_rows(seed: int) -> list[tuple[str, Callable[[], Any]]]:
    return [
        ("raw", lambda: classifier(seed)),
        ("quantile bins", lambda: pipe(QuantileBinner(n_bins=10, fields=SYN_NUMERIC), classifier(seed))),
        ("true crosses", lambda: pipe(FeatureCrosser(SYN_PAIRS), classifier(seed))),
        (
            "full",
            lambda: pipe(
                QuantileBinner(n_bins=10, fields=SYN_NUMERIC),
                FeatureCrosser(SYN_PAIRS),
                DecayedCTREncoder(fields=("user_id", "item_id")),
                classifier(seed),
            ),
        ),
    ]


def _criteo_rows(seed: int) -> list[tuple[str, Callable[[], Any]]]:
    rare_fields = CRITEO_CAT + cross_names(CRITEO_PAIRS)
    return [
        ("raw", lambda: classifier(seed)),
        ("log buckets", lambda: pipe(LogBucketizer(fields=CRITEO_INT), classifier(seed))),
        ("quantile bins", lambda: pipe(QuantileBinner(n_bins=10, fields=CRITEO_INT), classifier(seed))),
        (
            "log buckets + rare filter",
            lambda: pipe(
                LogBucketizer(fields=CRITEO_INT),
                FrequencyFilter(min_count=2, fields=CRITEO_CAT),
                classifier(seed),
            ),
        ),
        (
            "full",
            lambda: pipe(
                LogBucketizer(fields=CRITEO_INT),
                FeatureCrosser(CRITEO_PAIRS),
                DecayedCTREncoder(fields=CRITEO_CTR),
                FrequencyFilter(min_count=2, fields=rare_fields),
                classifier(seed),
            ),
        ),
    ]


def _avazu_rows(seed: int) -> list[tuple[str, Callable[[], Any]]]:
    rare_fields = AVAZU_RARE + cross_names(AVAZU_PAIRS)
    return [
        ("raw", lambda: classifier(seed)),
        ("rare filter", lambda: pipe(FrequencyFilter(min_count=2, fields=AVAZU_RARE), classifier(seed))),
        ("CTR encoder", lambda: pipe(DecayedCTREncoder(fields=AVAZU_CTR), classifier(seed))),
        ("crosses", lambda: pipe(FeatureCrosser(AVAZU_PAIRS), classifier(seed))),
        (
            "full",
            lambda: pipe(
                FeatureCrosser(AVAZU_PAIRS),
                DecayedCTREncoder(fields=AVAZU_CTR),
                FrequencyFilter(min_count=2, fields=rare_fields),
                classifier(seed),
            ),
        ),
    ]


def _time_steps() -> list[Any]:
    return [
        TimeContext(timestamp_field="timestamp", user_field="user_id", item_field="item_id"),
        compose.Discard("timestamp"),
        LogBucketizer(fields=ML_GAPS),
    ]


def _movielens_rows(seed: int) -> list[tuple[str, Callable[[], Any]]]:
    return [
        ("raw", lambda: classifier(seed)),
        ("timestamp dropped", lambda: pipe(compose.Discard("timestamp"), classifier(seed))),
        ("time context", lambda: pipe(*_time_steps(), classifier(seed))),
        (
            "CTR encoders",
            lambda: pipe(
                compose.Discard("timestamp"),
                DecayedCTREncoder(fields=("user_id", "item_id")),
                classifier(seed),
            ),
        ),
        (
            "full",
            lambda: pipe(
                *_time_steps(),
                QuantileBinner(n_bins=10, fields=("age", "release_year")),
                FeatureCrosser(ML_PAIRS),
                DecayedCTREncoder(fields=("user_id", "item_id")),
                classifier(seed),
            ),
        ),
    ]


ROWS = {
    "synthetic": _synthetic_rows,
    "criteo": _criteo_rows,
    "avazu": _avazu_rows,
    "movielens": _movielens_rows,
}


# ------------------------------------------------------------------ describing a row


def _abbreviate(value: Any) -> str:
    """Short, exact text of a parameter: the field runs I1..I13 and C1..C26 are written so."""
    if isinstance(value, tuple) and value and all(isinstance(v, str) for v in value):
        for run in (CRITEO_INT, CRITEO_CAT):
            n = len(run)
            if value[:n] == run:
                rest = [repr(v) for v in value[n:]]
                return "(" + ", ".join([f"{run[0]}..{run[-1]}", *rest]) + ")"
    return repr(value)


# Parameters shown even at their default value, because they are the choice the row makes.
ALWAYS_SHOWN: dict[type, tuple[str, ...]] = {
    CTRClassifier: ("model", "seed"),
    QuantileBinner: ("n_bins",),
    FrequencyFilter: ("min_count",),
}


def describe(step: Any) -> str:
    """One line naming a step (or a pipeline) and its parameters that differ from the defaults."""
    if isinstance(step, compose.Pipeline):
        return " | ".join(describe(s) for s in step.steps.values())
    if isinstance(step, compose.Discard):
        return f"Discard({', '.join(map(repr, sorted(step.keys)))})"
    signature = inspect.signature(type(step).__init__)
    shown = []
    for name, param in signature.parameters.items():
        if name == "self" or not hasattr(step, name):
            continue
        value = getattr(step, name)
        always = name in ALWAYS_SHOWN.get(type(step), ())
        if always or param.default is inspect.Parameter.empty or value != param.default:
            shown.append(f"{name}={_abbreviate(value)}")
    return f"{type(step).__name__}({', '.join(shown)})"


# ------------------------------------------------------------------ data


def load_events(name: str, data: pathlib.Path | None, limit: int | None, seed: int) -> tuple[list | None, str]:
    """The events of a dataset and a description, or None and why it is skipped."""
    if name == "synthetic":
        n = min(limit, SYNTHETIC_EVENTS) if limit else SYNTHETIC_EVENTS
        stream: Iterable = datasets.SyntheticCTR(n_events=n, drift="abrupt", seed=seed)
        what = f"SyntheticCTR(n_events={n:,}, drift='abrupt', seed={seed})"
    else:
        if data is None:
            return None, "skipped: no --data folder"
        try:
            if name == "criteo":
                stream = datasets.Criteo(data / "criteo_dac_head10k.csv.gz")
                what = "Criteo DAC sample"
            elif name == "avazu":
                stream = datasets.Avazu(data / "avazu_head10k.csv.gz")
                what = "Avazu sample"
            else:
                stream = datasets.MovieLens100K(data)
                what = "MovieLens-100K, rating >= 4"
        except FileNotFoundError as e:
            return None, f"skipped: {e}"
    events = list(itertools.islice(stream, limit))
    if not events:
        return None, "skipped: no events"
    if limit and name != "synthetic":
        what += f", first {limit:,} events"
    positive = np.mean([y for _, y in events])
    return events, f"{what}: {len(events):,} events, {positive:.1%} positive"


# ------------------------------------------------------------------ measuring


def progressive(model: Any, events: list[tuple[dict, bool]]) -> tuple[np.ndarray, float]:
    """Predictions made before learning each event, and the seconds the loop took."""
    p = np.empty(len(events))
    start = time.perf_counter()
    for i, (x, y) in enumerate(events):
        p[i] = model.predict_proba_one(x).get(True, 0.5)
        model.learn_one(x, y)
    return p, time.perf_counter() - start


def run_dataset(name: str, events: list, seed: int, log: Callable[[str], None]) -> list[dict]:
    y = np.array([float(label) for _, label in events])
    results = []
    for label, make in ROWS[name](seed):
        model = make()
        p, seconds = progressive(model, events)
        row = {
            "pipeline": label,
            "describe": describe(model),
            "eps": len(events) / seconds,
            "logloss": logloss(y, p),
            "auc": auc(y, p),
        }
        results.append(row)
        log(f"  {name} / {label}: LogLoss {row['logloss']:.4f} in {seconds:.1f} s")
    return results


def table(results: list[dict]) -> str:
    base_ll = results[0]["logloss"]
    lines = [
        "| pipeline | events/s | LogLoss | ROC AUC | Δ LogLoss vs raw |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        delta = "baseline" if r is results[0] else f"{r['logloss'] - base_ll:+.4f}"
        lines.append(f"| {r['pipeline']} | {r['eps']:,.0f} | {r['logloss']:.4f} | {r['auc']:.4f} | {delta} |")
    lines.append("")
    lines.extend(f"- {r['pipeline']}: `{r['describe']}`" for r in results)
    return "\n".join(lines)


# ------------------------------------------------------------------ command line


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    default_data = REPO.parent / "shared" / "data"
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--data",
        type=pathlib.Path,
        default=default_data if default_data.exists() else None,
        help="folder of the data samples (default: <repo>/../shared/data when it exists)",
    )
    ap.add_argument("--only", default=",".join(DATASETS), help=f"comma-separated subset of {','.join(DATASETS)}")
    ap.add_argument("--limit", type=int, default=None, help="events per dataset (default: all)")
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_EVENTS:,} events per dataset (smoke run)")
    ap.add_argument("--seed", type=int, default=42, help="seed of the synthetic stream and of the models")
    args = ap.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(args.only) - set(DATASETS))
    if unknown or not args.only:
        ap.error(f"--only: unknown dataset(s) {unknown}; choose from {list(DATASETS)}")
    if args.limit is not None and args.limit < 1:
        ap.error("--limit must be >= 1")
    if args.limit is None and args.quick:
        args.limit = QUICK_EVENTS
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    command = shlex.join(["python", "benchmarks/bench_features.py", *(sys.argv[1:] if argv is None else argv)])
    print(f"# Feature pipelines: `{command}`\n")
    print(
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; nproc {os.cpu_count()}, "
        f"CPU {_cpu_model()!r}; Python {platform.python_version()}, torch {torch.__version__}; "
        "torch.set_num_threads(1); events/s is one run.\n"
    )
    for name in args.only:
        events, what = load_events(name, args.data, args.limit, args.seed)
        print(f"#### {name}: {what}\n")
        if events is None:
            continue
        print(table(run_dataset(name, events, args.seed, log)) + "\n", flush=True)


if __name__ == "__main__":
    main()
