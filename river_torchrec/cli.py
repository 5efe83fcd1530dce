"""The ``river-torchrec`` command: progressive validation of CTR models on a click stream.

``river-torchrec`` with no arguments runs the default demo: river's
``LogisticRegression`` and ``FMClassifier`` against our DeepFM on a synthetic stream whose
concept changes abruptly half-way. ``river-torchrec evaluate --help`` lists the options.

Every model sees the same events in the same order. For each event the model first
predicts, then learns once the label has arrived (``--delay``), exactly as
:func:`river.evaluate.progressive_val_score` does, so the LogLoss printed here is the one
river would report. The predictions are kept, which gives the exact ROC AUC
(:func:`sklearn.metrics.roc_auc_score`) and the rolling curves of ``--plot``.

"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import math
import os
import pathlib
import re
import sys
import textwrap
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_MODELS",
    "DEFAULT_N",
    "EvaluationResult",
    "build_parser",
    "main",
    "parse_args",
    "progressive_evaluation",
    "rolling_metrics",
    "scheduler_classes",
]

#: Models of the default demo (``river-torchrec`` with no arguments).
DEFAULT_MODELS = ("river-lr", "river-fm", "deepfm")
#: Events of the default demo: enough for DeepFM to pull ahead, and for the abrupt drift
#: at the middle to show, while the whole demo stays under two minutes on two CPU cores.
DEFAULT_N = 20_000

#: River models compared against ours, with the preprocessing they need (see ``_river_peer``).
RIVER_PEERS = {
    "river-lr": "river.linear_model.LogisticRegression",
    "river-fm": "river.facto.FMClassifier",
}
DATASETS = ("synthetic", "criteo", "avazu", "movielens")
DRIFTS = ("abrupt", "gradual", "recurring", "none")
# File names looked for when --data is a folder (the Kaggle names, then common exports).
_DATA_FILES = {
    "criteo": ("train.txt", "train.txt.gz", "dac_sample.txt", "criteo*.csv*", "criteo*.txt*"),
    "avazu": ("train.csv", "train.csv.gz", "train.gz", "avazu*.csv*"),
}
_MEMORY_SAMPLE_EVERY = 256
_PRETTY = {
    "river-lr": "river LogisticRegression",
    "river-fm": "river FMClassifier",
    "lr": "LR (river-torchrec)",
    "fm": "FM (river-torchrec)",
    "deepfm": "DeepFM (river-torchrec)",
    "widedeep": "Wide&Deep (river-torchrec)",
    "dcnv2": "DCN-v2 (river-torchrec)",
}


# --------------------------------------------------------------------------- options


#: Names the command offers, written out so that ``--help`` and ``--version`` answer
#: without importing torch (a second or more); ``tests/test_cli_edges.py`` holds them equal
#: to the installed ``river_torchrec.nn.MODELS``, ``river_torchrec.optim.UPDATERS`` and
#: :func:`scheduler_classes`.
OUR_MODELS = ("dcnv2", "deepfm", "fm", "lr", "widedeep")
UPDATER_NAMES = ("adagrad", "adam", "ftrl", "ogd", "osgd", "rowwise_adagrad", "sgd")
SCHEDULER_NAMES = ("constant", "cosine-restarts", "drift-aware", "exponential-decay", "inverse-sqrt")


def _our_models() -> list[str]:
    return list(OUR_MODELS)


def _kebab(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", name).lower()


def scheduler_classes() -> dict[str, type]:
    """The schedulers of :mod:`river_torchrec.optim.schedulers`, by command-line name.

    Names are the class names in kebab case without an ``LR`` suffix (``InverseSqrt`` is
    ``inverse-sqrt``, ``DriftAwareLR`` is ``drift-aware``), found at run time so that the
    command offers exactly the schedulers the installed version has.

    Examples
    --------
    >>> from river_torchrec.cli import scheduler_classes
    >>> scheduler_classes()["constant"].__name__
    'Constant'

    """
    from river_torchrec.optim import schedulers

    out = {}
    for attr in schedulers.__all__:
        cls = getattr(schedulers, attr)
        if isinstance(cls, type) and issubclass(cls, schedulers.Scheduler) and cls is not schedulers.Scheduler:
            out[re.sub(r"-lr$", "", _kebab(attr))] = cls
    return out


def _updater_names() -> list[str]:
    return list(UPDATER_NAMES)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a number between 0 and 1 (exclusive), got {text}")
    return value


def _add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    ours = _our_models()
    models = [*ours, *RIVER_PEERS]
    p.add_argument(
        "--model",
        action="append",
        choices=models,
        metavar="NAME",
        help=(
            f"a model to evaluate, repeatable; ours: {', '.join(ours)}; river's: "
            + ", ".join(f"{k} ({v})" for k, v in RIVER_PEERS.items())
            + f" (default: {' '.join(DEFAULT_MODELS)})"
        ),
    )
    p.add_argument(
        "--task",
        default="click",
        choices=("click", "rank"),
        help=(
            "click: progressive validation of CTR models (default); rank: test-then-learn "
            "HitRate@10/NDCG@10/MRR of recommenders (see river_torchrec.cli_rank)"
        ),
    )
    p.add_argument(
        "--ranker",
        action="append",
        choices=("most-popular", "river-biasedmf", "river-funkmf", "two-tower", "deepfm-ranker", "fm-ranker"),
        metavar="NAME",
        help="with --task rank, a ranker to evaluate, repeatable (default: most-popular river-biasedmf two-tower)",
    )
    p.add_argument(
        "--optimizer",
        default="adagrad",
        choices=_updater_names(),
        help="updater of our models (default: adagrad, CTRClassifier's); river's models keep their own SGD",
    )
    p.add_argument("--lr", type=float, default=None, help="learning rate of our models (default: the updater's)")
    p.add_argument(
        "--scheduler",
        default=None,
        choices=SCHEDULER_NAMES,
        help="learning-rate scheduler of our models, with its default settings (default: none)",
    )
    p.add_argument(
        "--vs-constant",
        action="store_true",
        help=(
            "with --scheduler, also run each of our models at a constant rate, to show what the "
            "scheduler changes (the scheduled run is named MODEL+SCHEDULER)"
        ),
    )
    p.add_argument(
        "--drift-delta",
        type=_probability,
        default=None,
        metavar="DELTA",
        help=(
            "sensitivity of the drift-aware scheduler's detector, river's ADWIN(delta=DELTA): "
            "larger fires sooner after a change but also on noise (default: ADWIN's 0.002)"
        ),
    )
    p.add_argument("--dataset", default="synthetic", choices=DATASETS, help="the stream (default: synthetic)")
    p.add_argument(
        "--data",
        type=pathlib.Path,
        default=None,
        metavar="PATH",
        help="file or folder of the criteo, avazu or movielens data (nothing is downloaded)",
    )
    p.add_argument(
        "--drift",
        default="abrupt",
        choices=DRIFTS,
        help="concept drift of the synthetic stream (default: abrupt, at the middle; ignored by file datasets)",
    )
    p.add_argument("--n-users", type=_positive_int, default=None, help="users of the synthetic stream (default: 1000)")
    p.add_argument("--n-items", type=_positive_int, default=None, help="items of the synthetic stream (default: 500)")
    p.add_argument(
        "--positive-rate",
        type=_probability,
        default=None,
        metavar="RATE",
        help="mean click rate of the synthetic stream (default: 0.1)",
    )
    p.add_argument(
        "--interaction-scale",
        type=_positive_float,
        default=None,
        metavar="SCALE",
        help="strength of the user x item effects of the synthetic stream (default: 1.0)",
    )
    p.add_argument("--n", type=_positive_int, default=DEFAULT_N, help=f"events to evaluate on (default: {DEFAULT_N})")
    p.add_argument("--device", default="cpu", help="device of our models: cpu, cuda, mps or auto (default: cpu)")
    p.add_argument(
        "--delay",
        type=_non_negative_int,
        default=0,
        help=(
            "label delay in events, as river's progressive_val_score(delay=K): the label of "
            "event i is learned just before event i+K is predicted (0 and 1: no delay)"
        ),
    )
    p.add_argument(
        "--batch-size", type=_positive_int, default=1, help="events per gradient step of our models (default: 1)"
    )
    p.add_argument("--seed", type=int, default=42, help="seed of the stream and of the models (default: 42)")
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        help=(
            "torch CPU threads (default: 1): a step on one event is too small to gain from "
            "more, and waking idle threads for each one costs more than the step on a busy machine"
        ),
    )
    p.add_argument(
        "--window",
        type=_positive_int,
        default=1000,
        help="events per window of the rolling curves of --plot (default: 1000)",
    )
    p.add_argument("--plot", type=pathlib.Path, default=None, metavar="PNG", help="write the rolling curves to PNG")
    p.add_argument("--json", type=pathlib.Path, default=None, metavar="FILE", help="write every model's metrics to FILE")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    # Crash-safe runs and monitoring (issue 15): river_torchrec.stream_checkpoint, .monitoring.
    p.add_argument("--checkpoint-every", type=_positive_int, default=None, metavar="N",
                   help="save each of our models, with its stream position and predictions, every N events")
    p.add_argument("--checkpoint", type=pathlib.Path, default=pathlib.Path("river-torchrec-checkpoints"),
                   metavar="DIR", help="folder of the --checkpoint-every checkpoints, one per model (default: %(default)s)")
    p.add_argument("--resume", action="store_true",
                   help="continue the runs checkpointed in --checkpoint: each event is learned exactly once")
    p.add_argument("--calibration", type=pathlib.Path, default=None, metavar="PNG",
                   help="write every model's reliability diagram to PNG (the ECE is printed in any case)")
    p.add_argument("--calibration-bins", type=_positive_int, default=10, metavar="K",
                   help="equal-count bins of the ECE and the reliability diagram (default: 10)")
    p.add_argument("--segment", default=None, metavar="FIELD",
                   help="report events, click rate, LogLoss, exact AUC and ECE per value of FIELD")
    p.add_argument("--max-segments", type=_positive_int, default=20, metavar="K",
                   help="largest segments shown per model (default: 20)")
    p.add_argument("--metrics-csv", type=pathlib.Path, default=None, metavar="FILE",
                   help="write rolling metrics (--window events, overall and per --segment) to FILE")
    p.add_argument("--tensorboard", type=pathlib.Path, default=None, metavar="DIR",
                   help="also stream the rolling metrics to TensorBoard logs in DIR (needs the tensorboard package)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``river-torchrec``."""
    parser = argparse.ArgumentParser(
        prog="river-torchrec",
        description=(
            "Progressive validation of online CTR models. Without a command, runs "
            "'evaluate' with its defaults: river's LogisticRegression and FMClassifier "
            f"against our DeepFM on {DEFAULT_N:,} synthetic events with an abrupt drift."
        ),
        epilog=(
            "The options of 'evaluate' work without the word 'evaluate': "
            "'river-torchrec --model fm --n 5000' is 'river-torchrec evaluate --model fm --n 5000'. "
            "'river-torchrec evaluate --help' lists them."
        ),
    )
    from river_torchrec import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    evaluate = commands.add_parser(
        "evaluate",
        help="predict then learn on every event of a stream, and compare the models",
        description=(
            "Each model predicts every event before learning its label (progressive "
            "validation). Prints LogLoss, exact ROC AUC, events per second and memory."
        ),
    )
    _add_evaluate_arguments(evaluate)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line; no command, or options alone, mean ``evaluate``.

    Examples
    --------
    >>> from river_torchrec.cli import parse_args
    >>> args = parse_args([])
    >>> args.command, args.model, args.dataset, args.drift
    ('evaluate', ['river-lr', 'river-fm', 'deepfm'], 'synthetic', 'abrupt')

    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv = ["evaluate", *argv]
    args = build_parser().parse_args(argv)
    if args.command == "evaluate" and not args.model:
        args.model = list(DEFAULT_MODELS)
    return args


# --------------------------------------------------------------------------- stream


@dataclasses.dataclass
class StreamInfo:
    """What the report and the plot say about the stream.

    ``length`` is the number of events the stream will give (at most ``--n``) when it is
    known before reading it: the progress bars' total; None gives open-ended bars.
    """

    name: str
    n_events: int
    drift_points: list[int]
    oracle_proba: np.ndarray | None = None
    length: int | None = None
    #: Why and where the stream stopped before its end (a malformed record), if it did.
    stopped_early: str | None = None


class CommandError(Exception):
    """A mistake in the command or its input, reported as one line ``river-torchrec: error: ...``."""


class StoppedEarly:
    """Iterate a dataset, ending it cleanly at a malformed record and remembering where.

    A reader raises :class:`~river_torchrec.datasets.DataFormatError` (naming the file and
    line) when it meets a record it cannot parse: the pass then ends with the events read so
    far, and ``error`` and ``n_good`` keep what stopped it and after how many events (the
    later passes of the other models stop before that record).
    """

    def __init__(self, dataset: Iterable) -> None:
        self.dataset = dataset
        self.error: Exception | None = None
        self.n_good = 0

    def __iter__(self) -> Iterator:
        from river_torchrec.datasets._io import DataFormatError

        n_read = 0
        events = iter(self.dataset)
        while True:
            try:
                event = next(events)
            except StopIteration:
                return
            except (DataFormatError, OSError) as e:
                self.error, self.n_good = e, n_read
                return
            n_read += 1
            yield event


def _count_records(path: pathlib.Path, cap: int) -> int | None:
    """Records of a plain or gzip text file (lines, less a header), counting at most ``cap``.

    Counting newlines in blocks reads a gigabyte a second or so, and stops once ``cap``
    records are seen, so the progress bar's total costs little even on a full Criteo log.
    None when the file cannot be read to the end (the evaluation will say why).
    """
    from river_torchrec.datasets._io import _open_binary

    try:
        with _open_binary(path) as f:
            first = f.readline()
            if not first:
                return 0
            # Data rows of these logs start with a digit (a label or an id); headers do not.
            n = 1 if first[:1].isdigit() else 0
            last = first
            while n < cap:
                block = f.read(1 << 20)
                if not block:
                    break
                n += block.count(b"\n")
                last = block
            if last and not last.endswith(b"\n") and n < cap:
                n += 1  # a last line without its newline
    except (OSError, EOFError, ValueError):
        return None
    return min(n, cap)


def _find_file(dataset: str, data: pathlib.Path) -> pathlib.Path:
    if data.is_file():
        return data
    if data.is_dir():
        for pattern in _DATA_FILES[dataset]:
            found = sorted(data.glob(pattern))
            if found:
                return found[0]
        raise FileNotFoundError(
            f"no {dataset} file in {data} (looked for {', '.join(_DATA_FILES[dataset])}); pass the file itself"
        )
    raise FileNotFoundError(f"--data {data} does not exist")


def make_stream(args: argparse.Namespace) -> tuple[Any, StreamInfo]:
    """The dataset of ``--dataset`` (an iterable of ``(x, y)``, iterable again) and its description."""
    from river_torchrec import datasets

    if args.dataset == "synthetic":
        drift = None if args.drift == "none" else args.drift
        shape = {
            k: getattr(args, k)
            for k in ("n_users", "n_items", "positive_rate", "interaction_scale")
            if getattr(args, k, None) is not None
        }
        ds = datasets.SyntheticCTR(n_events=args.n, drift=drift, seed=args.seed, **shape)
        oracle = np.fromiter((p for _, _, p in ds.iter_with_proba()), dtype=float, count=args.n)
        words = {"n_users": "{:g} users", "n_items": "{:g} items", "positive_rate": "click rate {:g}",
                 "interaction_scale": "interaction scale {:g}"}
        label = "SyntheticCTR" + (f" ({', '.join(words[k].format(v) for k, v in shape.items())})" if shape else "")
        label += f", {drift} drift" if drift else ", no drift"
        return ds, StreamInfo(label, args.n, list(ds.drift_points), oracle, length=args.n)
    if args.data is None:
        raise CommandError(
            f"--dataset {args.dataset} needs --data PATH: the {args.dataset} data may "
            "not be redistributed, so it is never downloaded; point --data at your copy"
        )
    try:
        if args.dataset == "movielens":
            ds = datasets.MovieLens100K(args.data)
            name = "MovieLens 100K"
            path = ds.path
        else:
            path = _find_file(args.dataset, args.data)
            ds = datasets.Criteo(path) if args.dataset == "criteo" else datasets.Avazu(path)
            name = f"{type(ds).__name__} ({path.name})"
    except (OSError, ValueError) as e:
        raise CommandError(str(e)) from None
    return ds, StreamInfo(name, args.n, [], length=_count_records(pathlib.Path(path), args.n))


# --------------------------------------------------------------------------- models


def _categorical(x: dict) -> dict:
    return {k: v for k, v in x.items() if isinstance(v, (str, bool))}


def _numeric(x: dict) -> dict:
    return {k: v for k, v in x.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _river_peer(name: str, seed: int):
    """A river model behind one-hot encoding (str, bool) and standard scaling (numbers)."""
    from river import compose, facto, linear_model, preprocessing

    # drop_zeros: without it the one-hot encoder emits a 0 for every value ever seen,
    # which makes every event as wide as the vocabulary (FMClassifier then crawls).
    prep = compose.TransformerUnion(
        compose.FuncTransformer(_categorical) | preprocessing.OneHotEncoder(drop_zeros=True),
        compose.FuncTransformer(_numeric) | preprocessing.StandardScaler(),
    )
    if name == "river-lr":
        return prep | linear_model.LogisticRegression()
    return prep | facto.FMClassifier(n_factors=8, seed=seed)


def make_scheduler(name: str | None, args: argparse.Namespace) -> Any:
    """The scheduler ``name`` with its defaults (``--drift-delta`` sets a drift-aware one's ADWIN)."""
    if name is None:
        return None
    cls = scheduler_classes()[name]
    if name == "drift-aware" and args.drift_delta is not None:
        from river import drift

        return cls(detector=drift.ADWIN(delta=args.drift_delta))
    return cls()


def runs(args: argparse.Namespace) -> list[tuple[str, str, str | None]]:
    """``(result name, --model name, scheduler name or None)`` of every run, in order.

    With ``--vs-constant``, each of our models runs twice: at a constant rate under its
    own name, and with ``--scheduler`` as ``MODEL+SCHEDULER``.
    """
    out = []
    for name in args.model:
        if name in RIVER_PEERS or args.scheduler is None:
            out.append((name, name, None if name in RIVER_PEERS else args.scheduler))
        elif args.vs_constant:
            out += [(name, name, None), (f"{name}+{args.scheduler}", name, args.scheduler)]
        else:
            out.append((name, name, args.scheduler))
    return out


def make_model(name: str, args: argparse.Namespace, scheduler: str | None = "default") -> tuple[Any, Any]:
    """``(estimator, scheduler or None)`` for a ``--model`` name (``scheduler``: ``--scheduler``'s by default)."""
    if name in RIVER_PEERS:
        return _river_peer(name, args.seed), None
    from river_torchrec import CTRClassifier

    scheduler = make_scheduler(args.scheduler if scheduler == "default" else scheduler, args)
    model = CTRClassifier(
        model=name,
        optimizer=args.optimizer,
        lr=args.lr,
        scheduler=scheduler,
        batch_size=args.batch_size,
        device=args.device,
        seed=args.seed,
    )
    return model, scheduler


# --------------------------------------------------------------------------- evaluation


def _rss_bytes() -> int | None:
    """Resident set size of this process, or None where it cannot be read."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        pass
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


@dataclasses.dataclass
class EvaluationResult:
    """What :func:`progressive_evaluation` measured for one model.

    ``proba[i]`` is the probability of a click predicted for event ``i`` before its label
    was learned; ``y[i]`` is that label. ``multiplier[i]`` is the scheduler's multiplier
    after event ``i`` was processed (empty without a scheduler), ``drift_alarms`` the
    events whose loss made a drift-aware scheduler fire.
    """

    name: str
    y: np.ndarray
    proba: np.ndarray
    logloss: float
    seconds: float
    peak_rss_delta: int | None
    multiplier: np.ndarray
    drift_alarms: list[int]

    @property
    def n_events(self) -> int:
        return len(self.y)

    @property
    def roc_auc(self) -> float:
        """Exact ROC AUC of all the stored predictions (NaN when one class is missing)."""
        from sklearn.metrics import roc_auc_score

        if len(np.unique(self.y)) < 2:
            return float("nan")
        return float(roc_auc_score(self.y, self.proba))

    @property
    def events_per_s(self) -> float:
        return self.n_events / self.seconds if self.seconds > 0 else float("nan")


def progressive_evaluation(
    model: Any,
    stream: Iterable,
    delay: int = 0,
    n: int | None = None,
    scheduler: Any = None,
    name: str = "",
    progress: Any = None,
) -> EvaluationResult:
    """Predict, then learn, every event of ``stream``; keep every prediction.

    This is :func:`river.evaluate.progressive_val_score` with an integer ``delay``: the
    label of event ``i`` is learned (and scored) just before event ``i + delay`` is
    predicted, and the labels still pending at the end are learned last, so the LogLoss
    is exactly the one river reports. Only the time spent in ``predict_proba_one`` and
    ``learn_one`` counts in ``seconds``. The memory is the growth of the process's
    resident set size (RSS) over its value before the loop, sampled every 256 events: it
    includes what the model allocates (weights, optimizer state, vocabularies), and is
    approximate since freed memory is not always given back to the system.

    Parameters
    ----------
    model
        A river classifier (or pipeline) with ``predict_proba_one`` and ``learn_one``.
    stream
        An iterable of ``(x, y)`` pairs, ``y`` a bool or 0/1.
    delay
        Label delay in events; 0 (or 1) learns each event before predicting the next.
    n
        Stop after this many events (None: the whole stream).
    scheduler
        The model's learning-rate scheduler, if any: its multiplier is recorded after every
        event, and its ``drifts_`` (a ``DriftAwareLR``'s alarms) at the end.
    name
        Name of the model in the result.
    progress
        Something with ``update(1)`` (a tqdm bar), called once per event.

    Examples
    --------
    >>> from river import evaluate, linear_model, metrics
    >>> from river_torchrec.cli import progressive_evaluation
    >>> from river_torchrec.datasets import SyntheticCTR
    >>> stream = [({k: v for k, v in x.items() if isinstance(v, float)}, y)
    ...           for x, y in SyntheticCTR(n_events=300, seed=1)]
    >>> result = progressive_evaluation(linear_model.LogisticRegression(), stream, delay=5)
    >>> river_score = evaluate.progressive_val_score(
    ...     stream, linear_model.LogisticRegression(), metrics.LogLoss(), delay=5)
    >>> result.logloss == river_score.get()
    True

    """
    from river import metrics

    metric = metrics.LogLoss()
    labels: list[bool] = []
    probas: list[float] = []
    mults: list[float] = []
    pending: collections.deque = collections.deque()
    predict, learn = model.predict_proba_one, model.learn_one
    alarms_source = getattr(scheduler, "drifts_", None)
    rss0 = _rss_bytes()
    peak = rss0
    elapsed = 0.0
    clock = time.perf_counter

    def release(j: int, x: dict, y: Any, y_pred: Any) -> None:
        if y_pred is not None and y_pred != {}:
            metric.update(y, y_pred)
        learn(x, y)
        labels[j] = bool(y)

    events: Iterator = iter(stream) if n is None else (e for _, e in zip(range(n), stream))
    for i, (x, y) in enumerate(events):
        labels.append(False)
        t0 = clock()
        while pending and pending[0][0] + delay <= i:
            release(*pending.popleft())
        y_pred = predict(x)
        if delay == 0:
            release(i, x, y, y_pred)
        else:
            pending.append((i, x, y, y_pred))
        elapsed += clock() - t0
        probas.append(float(y_pred.get(True, 0.0)) if isinstance(y_pred, dict) else float("nan"))
        if scheduler is not None:
            mults.append(float(scheduler.multiplier()))
        if progress is not None:
            progress.update(1)
        if rss0 is not None and i % _MEMORY_SAMPLE_EVERY == 0:
            peak = max(peak, _rss_bytes() or 0)
    t0 = clock()
    while pending:
        release(*pending.popleft())
    if hasattr(model, "flush"):
        model.flush()
    elapsed += clock() - t0
    if rss0 is not None:
        peak = max(peak, _rss_bytes() or 0)
    return EvaluationResult(
        name=name,
        y=np.asarray(labels, dtype=bool),
        proba=np.asarray(probas, dtype=float),
        logloss=float(metric.get()),
        seconds=elapsed,
        peak_rss_delta=None if rss0 is None else peak - rss0,
        multiplier=np.asarray(mults, dtype=float),
        drift_alarms=[int(a) for a in alarms_source] if alarms_source is not None else [],
    )


def rolling_metrics(
    y: np.ndarray, proba: np.ndarray, window: int, stride: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LogLoss and exact ROC AUC over trailing windows of ``window`` events.

    Returns ``(ends, logloss, auc)``: the window ``[max(end - window, 0), end)`` for each
    ``end`` (every ``stride`` events, ``window // 5`` by default, and the last event), so
    the first windows are shorter. A window with one class only has a NaN AUC.

    Examples
    --------
    >>> import numpy as np
    >>> from river_torchrec.cli import rolling_metrics
    >>> y = np.array([0, 1, 0, 1, 1, 0, 0, 1], dtype=bool)
    >>> p = np.array([0.2, 0.8, 0.3, 0.7, 0.4, 0.6, 0.1, 0.9])
    >>> ends, loss, auc = rolling_metrics(y, p, window=4, stride=4)
    >>> ends.tolist(), auc.tolist()
    ([4, 8], [1.0, 0.75])

    """
    from sklearn.metrics import roc_auc_score

    stride = stride or max(1, window // 5)
    n = len(y)
    p = np.clip(proba, 1e-15, 1 - 1e-15)
    losses = np.where(y, -np.log(p), -np.log1p(-p))
    cum = np.concatenate([[0.0], np.cumsum(losses)])
    ends = np.arange(min(stride, n), n + 1, stride) if n else np.zeros(0, dtype=int)
    if len(ends) and ends[-1] != n:
        ends = np.append(ends, n)
    starts = np.maximum(ends - window, 0)
    logloss = (cum[ends] - cum[starts]) / np.maximum(ends - starts, 1)
    auc = np.full(len(ends), np.nan)
    for k, (a, b) in enumerate(zip(starts, ends)):
        if y[a:b].any() and not y[a:b].all():
            auc[k] = roc_auc_score(y[a:b], proba[a:b])
    return ends, logloss, auc


# --------------------------------------------------------------------------- report


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 2**20:.1f} MiB"


def format_table(
    results: Sequence[EvaluationResult], oracle_logloss: float | None = None, oracle_auc: float | None = None
) -> str:
    """The final table, in markdown (with an oracle row when its LogLoss is given)."""
    rows = [
        (r.name, f"{r.logloss:.4f}", f"{r.roc_auc:.4f}", f"{r.events_per_s:,.0f}", _fmt_bytes(r.peak_rss_delta))
        for r in results
    ]
    if oracle_logloss is not None:
        auc = "" if oracle_auc is None else f"{oracle_auc:.4f}"
        rows.append(("oracle (true probabilities)", f"{oracle_logloss:.4f}", auc, "", ""))
    header = ("model", "LogLoss", "ROC AUC", "events/s", "peak RSS growth")
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    right = (False, True, True, True, True)

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if r else ("-" * (w + 2)) for w, r in zip(widths, right)) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def _oracle_logloss(y: np.ndarray, oracle: np.ndarray) -> float:
    p = np.clip(oracle[: len(y)], 1e-15, 1 - 1e-15)
    return float(np.mean(np.where(y, -np.log(p), -np.log1p(-p))))


def _oracle_auc(y: np.ndarray, oracle: np.ndarray) -> float:
    """Exact ROC AUC of the true probabilities (NaN when one class is missing)."""
    from sklearn.metrics import roc_auc_score

    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, oracle[: len(y)]))


def _json_float(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def to_json(
    args: argparse.Namespace, info: StreamInfo, results: Sequence[EvaluationResult], window: int
) -> dict[str, Any]:
    """Every model's metrics, its rolling curves and the configuration, as plain JSON types."""
    from river_torchrec import __version__

    config = {k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in vars(args).items()}
    out: dict[str, Any] = {
        "river_torchrec_version": __version__,
        "config": config,
        "stream": {"name": info.name, "n_events": info.n_events, "drift_points": info.drift_points},
        "memory_measure": "growth of the process RSS over its value before the model's loop, sampled every "
        f"{_MEMORY_SAMPLE_EVERY} events",
        "rolling_window": window,
        "models": {},
    }
    if info.oracle_proba is not None and results:
        out["stream"]["oracle_logloss"] = _oracle_logloss(results[0].y, info.oracle_proba)
        out["stream"]["oracle_roc_auc"] = _json_float(_oracle_auc(results[0].y, info.oracle_proba))
    if info.stopped_early is not None:
        out["stream"]["stopped_early"] = info.stopped_early
    for r in results:
        ends, loss, auc = rolling_metrics(r.y, r.proba, window)
        out["models"][r.name] = {
            "logloss": _json_float(r.logloss),
            "roc_auc": _json_float(r.roc_auc),
            "events_per_s": _json_float(r.events_per_s),
            "seconds": r.seconds,
            "peak_rss_growth_bytes": r.peak_rss_delta,
            "n_events": r.n_events,
            "click_rate": _json_float(float(r.y.mean())) if r.n_events else None,
            "drift_alarms": r.drift_alarms,
            "rolling": {
                "end": ends.tolist(),
                "logloss": [_json_float(v) for v in loss],
                "roc_auc": [_json_float(v) for v in auc],
            },
        }
        if len(r.multiplier):
            # The scheduler's multiplier after the last event of each rolling window.
            out["models"][r.name]["rolling"]["lr_multiplier"] = [float(r.multiplier[e - 1]) for e in ends]
    return out


# --------------------------------------------------------------------------- plot


def plot(
    results: Sequence[EvaluationResult],
    info: StreamInfo,
    path: pathlib.Path,
    window: int,
    scheduler: str | None = None,
) -> None:
    """Rolling LogLoss and ROC AUC of every model (and the learning-rate multiplier) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    with_lr = any(len(r.multiplier) for r in results)
    n_rows = 3 if with_lr else 2
    heights = [3, 3, 1.6] if with_lr else [3, 3]
    fig, axes = plt.subplots(
        n_rows, 1, figsize=(11, 2.6 * sum(heights) / 3 + 1.6), sharex=True,
        gridspec_kw={"height_ratios": heights},
    )
    ax_loss, ax_auc = axes[0], axes[1]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    # Runs that agree for a while (the same model with and without a scheduler, before its
    # first alarm) draw the same curve: each later line is thinner and dashed, so the
    # earlier one still shows around it.
    styles = [("-", 2.8), ("--", 1.9), ("-.", 1.5), (":", 1.5)]
    for k, r in enumerate(results):
        color = colors[k % len(colors)]
        ls, lw = styles[k % len(styles)]
        ends, loss, auc = rolling_metrics(r.y, r.proba, window)
        base, _, sched = r.name.partition("+")
        pretty = _PRETTY.get(base, base) + (f", {sched} rate" if sched else "")
        ax_loss.plot(ends, loss, color=color, lw=lw, ls=ls, label=f"{pretty}: LogLoss {r.logloss:.4f}, AUC {r.roc_auc:.4f}")
        ax_auc.plot(ends, auc, color=color, lw=lw, ls=ls)
        for a, alarm in enumerate(r.drift_alarms):
            for ax in axes:
                ax.axvline(alarm, color=color, ls=":", lw=1.3, label=f"drift alarm ({r.name})" if a == 0 and ax is ax_loss else None)
        if with_lr and len(r.multiplier):
            axes[2].plot(np.arange(1, len(r.multiplier) + 1), r.multiplier, color=color, lw=lw, ls=ls)

    if info.oracle_proba is not None and results:
        y = results[0].y
        ends, loss, auc = rolling_metrics(y, info.oracle_proba[: len(y)], window)
        oracle = _oracle_logloss(y, info.oracle_proba)
        oracle_auc = _oracle_auc(y, info.oracle_proba)
        ax_loss.plot(
            ends, loss, color="black", lw=1.0, ls="--",
            label=f"oracle (true click probabilities): LogLoss {oracle:.4f}, AUC {oracle_auc:.4f}",
        )
        ax_auc.plot(ends, auc, color="black", lw=1.0, ls="--")

    for d, point in enumerate(info.drift_points):
        for ax in axes:
            ax.axvline(point, color="crimson", ls="--", lw=1.2, alpha=0.8, label="concept drift" if d == 0 and ax is ax_loss else None)

    for point in info.drift_points:
        ax_loss.annotate(
            f"drift at {point:,}", xy=(point, 1.0), xycoords=("data", "axes fraction"),
            xytext=(3, -3), textcoords="offset points", ha="left", va="top", fontsize=8.5, color="crimson",
        )
    ax_loss.set_ylabel("LogLoss\n(lower is better)")
    ax_auc.set_ylabel("ROC AUC\n(higher is better)")
    for ax in axes:
        ax.grid(True, alpha=0.3)
    if with_lr:
        axes[2].set_ylabel("learning-rate\nmultiplier")
        axes[2].set_title(f"scheduler of our models: {scheduler}", fontsize=9, loc="left")
    axes[-1].set_xlabel("event")
    axes[-1].xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    title = f"Progressive validation on {info.name}: {results[0].n_events if results else 0:,} events"
    fig.suptitle("\n".join(textwrap.wrap(title, 95)), fontsize=13)
    ax_loss.set_title(
        f"each point: the trailing {window:,} events (fewer at the start); "
        "every prediction was made before its label was learned",
        fontsize=9,
        loc="left",
    )
    # The legend goes under the axes, where it cannot hide a curve.
    handles, labels = ax_loss.get_legend_handles_labels()
    n_legend_rows = math.ceil(len(labels) / 2)
    height = fig.get_figheight()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, (0.1 + 0.25 * n_legend_rows) / height, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def _check_options(args: argparse.Namespace) -> None:
    """Refuse, before anything runs, options that cannot work together or on this machine."""
    if args.vs_constant and args.scheduler is None:
        raise CommandError("--vs-constant compares a --scheduler with a constant rate: give --scheduler too")
    if args.drift_delta is not None and args.scheduler != "drift-aware":
        raise CommandError("--drift-delta sets the detector of --scheduler drift-aware: give --scheduler drift-aware")
    if any(name not in RIVER_PEERS for name in args.model):
        _check_device(args.device)
    for option, path in (("--plot", args.plot), ("--json", args.json)):
        if path is not None:
            _prepare_output(option, path)


def _check_device(device: str) -> None:
    if device in ("auto", "cpu"):
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise CommandError(f"--device {device}: not a device; expected cpu, cuda, cuda:N, mps or auto") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "was built without CUDA" if torch.version.cuda is None else "finds no CUDA GPU"
            raise CommandError(
                f"--device {device}: this PyTorch ({torch.__version__}) {build}; use --device cpu "
                "(or auto), or install a CUDA build of torch"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CommandError(f"--device {device}: there are {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise CommandError(f"--device {device}: MPS is not available here; use --device cpu (or auto)")


def _prepare_output(option: str, path: pathlib.Path) -> None:
    """Create the folder of an output file now, so that a bad path fails before the run, not after."""
    if path.is_dir():
        raise CommandError(f"{option} {path}: is a folder; give a file name")
    blocker = next((a for a in path.parents if a.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise CommandError(f"{option} {path}: {blocker} is a file, not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CommandError(f"{option} {path}: cannot create its folder ({e.strerror or e})") from None
    if not os.access(path.parent, os.W_OK):
        raise CommandError(f"{option} {path}: the folder {path.parent} is not writable")


def evaluate_command(args: argparse.Namespace) -> int:
    _check_options(args)
    dataset, info = make_stream(args)
    stream = StoppedEarly(dataset)
    # A wrong or empty file is reported now, before torch is imported and any model is built.
    if next(iter(stream), None) is None:
        _no_events(stream, info, args)
    import torch
    from tqdm.auto import tqdm

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _evaluate(args, tqdm, stream, info)
    finally:
        torch.set_num_threads(threads)


def _no_events(stream: StoppedEarly, info: StreamInfo, args: argparse.Namespace) -> None:
    if stream.error is not None:
        line = getattr(stream.error, "line", None)
        hint = f" (is --data a {args.dataset} file?)" if line is not None and line <= 2 else ""
        raise CommandError(f"{stream.error}{hint}")
    raise CommandError(f"{info.name} holds no events (an empty file, or a header alone)")


def _stopped_early_message(stream: StoppedEarly, what: str) -> str:
    e = stream.error
    return f"{what} event {stream.n_good + 1:,} could not be read: {e}"


def _evaluate(args: argparse.Namespace, tqdm: Any, stream: StoppedEarly, info: StreamInfo) -> int:
    results = []
    n, total = args.n, info.length
    for name, model_name, scheduler_name in runs(args):
        model, scheduler = make_model(model_name, args, scheduler_name)
        with tqdm(total=total, desc=f"{name:>10}", unit="ev", disable=args.quiet, file=sys.stderr) as bar:
            if args.checkpoint_every is not None:
                from river_torchrec.stream_checkpoint import checkpointed_evaluation

                result = checkpointed_evaluation(model, stream, args, name, bar)
            else:
                result = progressive_evaluation(
                    model, stream, delay=args.delay, n=n, scheduler=scheduler, name=name, progress=bar
                )
        del model
        if not results:
            if result.n_events == 0:  # the file changed since it was first read
                _no_events(stream, info, args)
            # Every model sees exactly the events the first one saw.
            n = total = result.n_events
        results.append(result)
    stopped = None
    if stream.error is not None or results[0].n_events < args.n:
        info.n_events = results[0].n_events
        if stream.error is not None:
            stopped = info.stopped_early = _stopped_early_message(
                stream, f"stopped early after {info.n_events:,} events:"
            )
        else:
            print(f"the stream ended after {info.n_events:,} events", file=sys.stderr)

    oracle = oracle_auc = None
    if info.oracle_proba is not None:
        oracle = _oracle_logloss(results[0].y, info.oracle_proba)
        oracle_auc = _oracle_auc(results[0].y, info.oracle_proba)
    print(f"\nProgressive validation on {info.name}, {info.n_events:,} events"
          + (f", label delay {args.delay}" if args.delay > 1 else "")
          + (" (stopped early: see below)" if stopped else ""))
    print(format_table(results, oracle, oracle_auc))
    print("peak RSS growth: resident memory added while the model ran, sampled (approximate).")
    window = max(1, min(args.window, max(info.n_events // 5, 1)))
    if args.json is not None:
        args.json.write_text(json.dumps(to_json(args, info, results, window), indent=2) + "\n")
        print(f"metrics written to {args.json}")
    if args.plot is not None:
        plot(results, info, args.plot, window, args.scheduler)
        print(f"plot written to {args.plot}")
    if args.segment is not None or args.calibration is not None or args.metrics_csv is not None or args.tensorboard is not None:
        from river_torchrec.monitoring import cli_report

        cli_report(args, results, stream.dataset)
    if stopped:
        print(f"river-torchrec: error: {stopped}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``river-torchrec`` console script.

    Returns the exit status: 0, 1 after an error in the command or its data (reported as
    one line ``river-torchrec: error: ...`` on stderr, never a traceback), 2 for a usage
    error (argparse's).
    """
    args = parse_args(argv)
    if args.command == "evaluate":
        try:
            if args.task == "rank":
                from river_torchrec.cli_rank import rank_command

                return rank_command(args)
            return evaluate_command(args)
        except CommandError as e:
            print(f"river-torchrec: error: {e}", file=sys.stderr)
            return 1
    build_parser().print_help()
    return 2
